import re

import numpy as np

from neuraldx7_jax import dx7, names

NAMES = ["BRASS   1 ", "BRASS   2 ", "STRINGS 1 ", "E.PIANO 1 ", "BASS    1 ", "BASS    2 ", "ORGAN   1 ",
         "FLUTE   1 ", "MARIMBA   ", "HARPSICH 1"]


def voices_named(texts):
    v = np.zeros((len(texts), dx7.N_PARAMS), np.uint8)
    v[:, dx7.NAME] = [[ord(c) for c in t.ljust(10)[:10]] for t in texts]
    return v


def test_trigram_counts_count_every_position():
    counts = names.trigram_counts(voices_named(["AB", "AB"]))
    assert counts[:, 3].sum() == 2 * names.LENGTH
    start, a, b, space = names.START, ord("A") - names.FIRST, ord("B") - names.FIRST, 0
    as_dict = {tuple(r[:3]): r[3] for r in counts}
    assert as_dict[(start, start, a)] == 2 and as_dict[(start, a, b)] == 2 and as_dict[(a, b, space)] == 2
    log_p = names.log_probabilities(counts)
    assert log_p.shape == (names.SYMBOLS + 1, names.SYMBOLS + 1, names.SYMBOLS)
    np.testing.assert_allclose(np.exp(log_p).sum(-1), 1.0, rtol=1e-5)
    assert log_p[start, start].argmax() == a and np.isfinite(log_p).all()


def test_names_follow_the_character_model_and_the_model_logits():
    log_p = names.log_probabilities(names.trigram_counts(voices_named(NAMES * 3)))
    flat = np.zeros((names.LENGTH, names.SYMBOLS))  # a VAE that knows nothing of names
    chosen = "".join(chr(c + names.FIRST) for c in names.choose(flat, log_p))
    words = {w for n in NAMES for w in re.findall("[A-Z]+", n)}
    assert re.match("[A-Z]+", chosen)[0] in words, chosen  # its first word a training name's
    leaning = flat.copy()
    leaning[0, ord("S") - names.FIRST] = 5.0  # the VAE is sure the name starts with S
    assert chr(names.choose(leaning, log_p)[0] + names.FIRST) == "S"


def test_a_cartridge_gets_distinct_names():
    log_p = names.log_probabilities(names.trigram_counts(voices_named(NAMES)))
    same = np.zeros((32, names.LENGTH, dx7.N_VALUES))  # 32 voices whose logits say nothing
    named = names.name_voices(np.zeros((32, dx7.N_PARAMS), np.uint8), same, log_p)
    figures = names.name_figures(named)
    assert figures["distinct_names"] == 1.0 and figures["letter_run_fraction"] > 0.9
    assert named[:, dx7.NON_NAME].max() == 0  # only the names change


def test_name_figures():
    figures = names.name_figures(voices_named(["BRASS 1", "  E", "Sa", "BRASS 1"]))
    assert figures == dict(names=4, distinct_names=0.75, letter_run_fraction=0.5, short_name_fraction=0.5)


def test_real_names_read_like_names(shared_data):
    voices = dx7.load(shared_data / "factory" / "rom1a.syx")
    assert names.name_figures(voices)["letter_run_fraction"] > 0.8
