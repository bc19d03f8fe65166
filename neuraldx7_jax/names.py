"""Voice names that read like DX7 names: a character trigram model of the training names, and
names chosen by it together with the VAE's own name logits (a product of the two experts).

numpy only. The VAE decodes the 10 name characters like any other parameter, but its argmax
names are fragments ("  E", "Sa"): a name carries little of the sound, so the decoder learns
little about it. A trigram model of the training set's names knows what names look like
("BRASS 1", "E.PIANO", "STRINGS"); each character's score is the sum of both models' log
probabilities, and a beam search keeps the best names. Names already taken in the cartridge
are skipped, so a cartridge's names are distinct whenever the beam holds enough candidates.
"""
import numpy as np

from neuraldx7_jax import dx7

FIRST, LAST = 32, 126  # printable ASCII: the characters a name may hold
SYMBOLS = LAST - FIRST + 1  # 95
START = SYMBOLS  # the context symbol before a name's first character
LENGTH = dx7.NAME.stop - dx7.NAME.start  # 10
BEAM = 32  # names kept per position by the beam search: a free one for each voice of a cartridge
# Interpolation weights of the trigram, bigram and unigram estimates, and a uniform floor.
WEIGHTS = (0.7, 0.2, 0.09, 0.01)
# Nats added for each character that is not a space: a length prior. The most probable 10
# characters are short names, as spaces follow spaces once a name has ended: without it 21.7% of
# the default cartridges' names had at most two characters ("S", "SY"; real names: 0-1%), mean
# length 3.3 (real: 9.1). At 1.5: 0.4%, 5.3 ("E.PIANO", "SYNBRASS"); at 3 words run together and
# dots pad them ("Brass.Bass", "Piano...11"). The masked decoder's (wise-umber-wren's) sharper
# name logits needed more: at 1.5 2.3% short, at 1.75 0.8%, mean 6.1. The model card has the sweeps.
LETTER_BONUS = 1.75


def symbols(voices):
    """(N, 155) -> (N, 10) int64 name symbols 0..94 (characters outside 32..126 become spaces)."""
    codes = np.asarray(voices)[:, dx7.NAME].astype(np.int64) & 0x7F
    return np.where((codes >= FIRST) & (codes <= LAST), codes - FIRST, 0)


def trigram_counts(voices):
    """(k, 4) int32 rows (a, b, c, count): how often symbol c follows a, b in the names of
    `voices` (a, b = START before a name's first characters). Sparse: only the trigrams seen."""
    s = symbols(voices)
    context = np.concatenate([np.full((len(s), 2), START), s], axis=1)
    grams = np.stack([context[:, i:i + 3] for i in range(LENGTH)], axis=1).reshape(-1, 3)
    unique, counts = np.unique(grams, axis=0, return_counts=True)
    return np.concatenate([unique, counts[:, None]], axis=1).astype(np.int32)


def log_probabilities(counts):
    """(k, 4) trigram counts -> (96, 96, 95) float32 log p(c | a, b), interpolated with the
    bigram and unigram estimates and a uniform floor, so no character is impossible."""
    counts = np.asarray(counts, np.int64).reshape(-1, 4)
    tri = np.zeros((SYMBOLS + 1, SYMBOLS + 1, SYMBOLS))
    np.add.at(tri, (counts[:, 0], counts[:, 1], counts[:, 2]), counts[:, 3])
    bi, uni = tri.sum(0), tri.sum((0, 1))

    def normalised(x):
        total = x.sum(-1, keepdims=True)
        return np.divide(x, total, out=np.full_like(x, 1.0 / SYMBOLS), where=total > 0)

    w3, w2, w1, w0 = WEIGHTS
    p = w3 * normalised(tri) + w2 * normalised(bi)[None] + w1 * normalised(uni) + w0 / SYMBOLS
    return np.log(p).astype(np.float32)


def choose(model_log_p, lm_log_p, taken=()):
    """The name (10 symbols) maximising the summed log probabilities of the VAE (`model_log_p`,
    (10, 95) over the printable characters) and of the trigram model (`lm_log_p`), found by beam
    search, skipping names in `taken` (a set of tuples) while the beam has others. Every
    character but a space scores `LETTER_BONUS` more."""
    bonus = np.where(np.arange(SYMBOLS) == 0, 0.0, LETTER_BONUS)  # symbol 0 is the space
    beams = np.zeros((1, 0), np.int64)
    scores = np.zeros(1)
    for i in range(LENGTH):
        a = beams[:, i - 2] if i >= 2 else np.full(len(beams), START)
        b = beams[:, i - 1] if i >= 1 else np.full(len(beams), START)
        total = scores[:, None] + lm_log_p[a, b] + model_log_p[i][None] + bonus  # (beams, 95)
        best = np.argsort(-total, axis=None, kind="stable")[:BEAM]
        rows, chars = np.unravel_index(best, total.shape)
        beams = np.concatenate([beams[rows], chars[:, None]], axis=1)
        scores = total[rows, chars]
    for name in beams:
        if tuple(name) not in taken:
            return name
    return beams[0]


def name_voices(voices, model_log_p, lm_log_p):
    """A copy of `voices` (N, 155) with names chosen by `choose`, each distinct from the names
    before it when it can be. `model_log_p` (N, 10, 128): the VAE's log probabilities of the
    name values."""
    voices = np.array(voices, np.uint8)
    printable = np.asarray(model_log_p)[..., FIRST:LAST + 1]
    taken = set()
    for n in range(len(voices)):
        name = choose(printable[n], lm_log_p, taken)
        taken.add(tuple(name))
        voices[n, dx7.NAME] = name + FIRST
    return voices


def name_figures(voices):
    """How DX7-like the names of `voices` read: the fraction of distinct names, the fraction
    holding a run of three or more letters, and the fraction of short names, of at most two
    characters that are not spaces. Real voices: 97%, 1.0% (the shared collection's 29,811
    training voices); 99.6%, 0% (Yamaha's 1,024 factory voices)."""
    names = [dx7.voice_name(v) for v in np.asarray(voices)]
    if not names:
        return dict(names=0, distinct_names=None, letter_run_fraction=None, short_name_fraction=None)
    runs = [any(len(part) >= 3 for part in "".join(c if c.isalpha() else " " for c in name).split())
            for name in names]
    return dict(names=len(names), distinct_names=len(set(names)) / len(names),
                letter_run_fraction=float(np.mean(runs)),
                short_name_fraction=float(np.mean([len(name.replace(" ", "")) <= 2 for name in names])))
