"""Studies of a trained model: how unique and novel its samples are (the original's duplicates
study), and how well it scores a set of voices beside a per-parameter marginal baseline.

`duplicates` and `evaluate` are what `neuraldx7 duplicates` and `neuraldx7 evaluate` call.
"""
import time
from pathlib import Path

import jax
import numpy as np
from tqdm import tqdm

from neuraldx7_jax import checkpoint as checkpoint_lib
from neuraldx7_jax import data as data_lib
from neuraldx7_jax import devices, dx7, loudness, names, priors, sample, train
from neuraldx7_jax.config import HEARTBEAT_S, NEW_VOICE_TEMPERATURE
from neuraldx7_jax.errors import Error


def duplicates(checkpoint=None, *, samples=65536, batch=None, temperature=NEW_VOICE_TEMPERATURE, seed=0, data=None, prior=None,
               audio=None, progress=True, distributed=False, coordinator=None, num_processes=None, process_id=None,
               heartbeat_s=HEARTBEAT_S):
    """`duplicates_study` of the model in `checkpoint` (`checkpoint.load`) against its training
    voices (`training_voices`); with `audio` N, also the audible fraction of N of its samples
    rendered in Dexed (`audio.audibility`). Adds `dataset`, `training_voices` (their count, or
    None) and `note` (why novelty is not measured against the voices themselves, or None).
    A multi-process run first joins its processes (`devices.initialize`), shares the samples
    among them, and returns the merged figures in process 0, None in the others."""
    devices.initialize(distributed, coordinator, num_processes, process_id, heartbeat_s)
    model = checkpoint_lib.load(checkpoint)
    training, path, why = training_voices(model, data)
    result = duplicates_study(model, samples, batch=batch, temperature=temperature, seed=seed,
                              training=training, progress=progress, prior=prior)
    if jax.process_index():
        return None
    result.update(dataset=path, note=why, training_voices=None if training is None else len(training))
    if audio:
        from neuraldx7_jax import audio as audio_lib
        voices = sample.sample_prior(model, min(audio, samples), temperature=temperature, seed=seed, prior=prior)
        result.update(audio_lib.audibility(voices, training, limit=audio, seed=seed))
    return result


def evaluate(checkpoint, files, *, data=None, reference=None, audio=None, seed=0):
    """`evaluate_voices` of the voices of `files` (DX7 files, DATASET.npz or DATASET.npz:SPLIT,
    taken as one set) under the model in `checkpoint`, beside its baseline: the counts stored
    with the model, or the training voices of `data` (default: the checkpoint's dataset);
    `reference` (a voice spec) for the marginal distances and the realism figure (`c2st`, with
    `seed`); with `audio` N, the audible fraction of N valid voices rendered in Dexed. Adds
    `dataset` and `note` (why there is no baseline)."""
    model = checkpoint_lib.load(checkpoint)
    voices = np.concatenate([data_lib.load_voices(f) for f in files])
    ref = data_lib.load_voices(reference) if reference else None
    training, path, why = (None, None, None) if data is None and model.training is not None \
        else training_voices(model, data)
    report = evaluate_voices(model, voices, training=training, reference=ref, seed=seed)
    report.update(dataset=path, note=why)
    if audio:
        from neuraldx7_jax import audio as audio_lib
        report.update(audio_lib.audibility(voices[dx7.is_valid(voices)], training, limit=audio))
    return report


def _unique_keys(keys):
    keys = keys[np.lexsort((keys[:, 1], keys[:, 0]))]
    keep = np.ones(len(keys), bool)
    keep[1:] = np.any(keys[1:] != keys[:-1], axis=1)
    return keys[keep]


class DistinctCounter:
    """Counts the distinct rows of a stream by their 128-bit `row_keys`; memory is ~16 bytes per
    distinct row (sorted keys, merged when the new keys outnumber them), never the whole stream."""

    def __init__(self, merge_at=1 << 16):
        self._keys = np.zeros((0, 2), np.uint64)
        self._pending, self._n_pending = [], 0
        self._merge_at = merge_at  # smallest number of new keys worth a merge

    def add(self, rows):
        keys = _unique_keys(data_lib.row_keys(rows))
        self._pending.append(keys)
        self._n_pending += len(keys)
        if self._n_pending >= max(len(self._keys), self._merge_at):
            self._merge()

    def _merge(self):
        if self._pending:
            self._keys = _unique_keys(np.concatenate([self._keys, *self._pending]))
            self._pending, self._n_pending = [], 0

    def __len__(self):
        return len(self.keys())

    def keys(self):
        """(distinct, 2) uint64: the sorted keys of the distinct rows."""
        self._merge()
        return self._keys


class RowSet:
    """Exact membership in a fixed set of rows (e.g. the training voices): a 64-bit key finds
    the candidates, comparing the rows themselves decides."""

    def __init__(self, rows):
        rows = np.ascontiguousarray(rows, np.uint8)
        width = rows.shape[1]
        rows = np.unique(rows.view(np.dtype((np.void, width)))[:, 0]).view(np.uint8).reshape(-1, width)
        keys = data_lib.row_keys(rows)[:, 0]
        order = np.argsort(keys, kind="stable")
        self._keys, self._rows = keys[order], rows[order]

    def __len__(self):
        return len(self._rows)

    def contains(self, rows):
        """(n, k) -> (n,) bool: whether each row is in the set."""
        rows = np.asarray(rows, np.uint8)
        keys = data_lib.row_keys(rows)[:, 0]
        lo = np.searchsorted(self._keys, keys, "left")
        hi = np.searchsorted(self._keys, keys, "right")
        found = np.zeros(len(rows), bool)
        candidates = np.flatnonzero(lo < hi)
        found[candidates] = np.all(self._rows[lo[candidates]] == rows[candidates], axis=1)
        for i in candidates[(hi[candidates] - lo[candidates] > 1) & ~found[candidates]]:
            found[i] = np.any(np.all(self._rows[lo[i]:hi[i]] == rows[i], axis=1))  # 64-bit key collision
        return found


def count_uniqueness(chunks, *, training=None, training_keys=None, across_processes=False):
    """Uniqueness of a stream of (n, 155) voice chunks: samples, distinct (over the 155 values),
    valid, estimated audible (`loudness.estimated_silent`), and given the training voices, novel (no
    training voice equal on the 145 non-name values) and training_copies (equal on all 155);
    given only their `training_keys` (`training_facts`), novel. Fractions are of the samples.
    `across_processes`: each process counted its own chunks; the figures are of them all."""
    distinct = DistinctCounter()
    same_params = RowSet(training[:, dx7.NON_NAME]) if training is not None else None
    same_voice = RowSet(training) if training is not None else None
    n = valid = novel = copies = audible = 0
    for voices in chunks:
        n += len(voices)
        valid += int(dx7.is_valid(voices).sum())
        audible += int((~loudness.estimated_silent(voices)).sum())
        distinct.add(voices)
        if training is not None:
            novel += int((~same_params.contains(voices[:, dx7.NON_NAME])).sum())
            copies += int(same_voice.contains(voices).sum())
        elif training_keys is not None:
            novel += int((~np.isin(data_lib.row_keys(voices[:, dx7.NON_NAME])[:, 0], training_keys)).sum())
    d = len(distinct)
    if across_processes:
        n, valid, novel, copies, audible = (int(v) for v in devices.gather(
            np.array([[n, valid, novel, copies, audible]], np.int64)).sum(0))
        d = len(_unique_keys(devices.gather(distinct.keys())))
    knows_novelty = training is not None or training_keys is not None
    return dict(samples=n, distinct=d, unique_fraction=d / n if n else None,
                valid_fraction=valid / n if n else None,
                estimated_audible_fraction=audible / n if n else None,
                novel=novel if knows_novelty else None,
                novel_fraction=novel / n if n and knows_novelty else None,
                training_copies=copies if training is not None else None)


def training_voices(model, data=None):
    """(train voices or None, dataset path, why None): the checkpoint's training set, or `data`'s."""
    path = data or checkpoint_lib.dataset_path(model)
    if path is None:
        return None, None, "the checkpoint names no dataset; pass --data"
    if data is None and not Path(path).is_file():
        return None, path, f"the checkpoint's dataset {path} is not found; pass --data"
    return data_lib.load_dataset(path)["train"], path, None


def duplicates_study(model, samples, *, batch=None, temperature=NEW_VOICE_TEMPERATURE, seed=0, training=None, progress=True,
                     prior=None):
    """The original's uniqueness study: `samples` voices drawn from `prior` (`prior_of`) and
    counted by `count_uniqueness` (novelty against `training` voices, or else the training keys
    stored with the model), plus timing (`throughput` in samples/s, compilation excluded). In a
    multi-process run each process draws its share of the seed's blocks (`devices.share`) and
    the counts are merged: the figures are one process's."""
    if samples < 1:
        raise Error(f"the sample count must be positive, got {samples}")
    batch = sample.default_batch() if batch is None else batch
    prior = priors.prior_of(model, prior)
    first, mine = devices.share(samples, sample.BLOCK)
    t0 = time.perf_counter()
    draw = dict(temperature=temperature, seed=seed, batch=batch, prior=prior)
    if mine:
        next(sample.sample_prior_chunks(model, min(mine, batch), **draw))  # compiles
    compile_s = time.perf_counter() - t0
    bar = tqdm(total=mine, unit="voice", disable=not progress or jax.process_index() > 0, dynamic_ncols=True,
               leave=False)

    def chunks():
        for voices in sample.sample_prior_chunks(model, mine, first_block=first // sample.BLOCK, **draw):
            yield voices
            bar.update(len(voices))

    keys = model.training["voice_keys"] if training is None and model.training is not None else None
    t0 = time.perf_counter()
    stats = count_uniqueness(chunks(), training=training, training_keys=keys, across_processes=True)
    seconds = time.perf_counter() - t0
    bar.close()
    return dict(stats, throughput=samples / seconds, seconds=seconds, compile_seconds=compile_s,
                temperature=float(temperature), seed=seed, devices=jax.device_count(), prior=prior.name)


def marginal_baseline(counts):
    """(155, 128) per-parameter value probabilities from `value_counts`, Laplace-smoothed over
    in-range values."""
    smoothed = np.where(dx7.value_mask(), np.asarray(counts) + 1.0, 0.0)
    return smoothed / smoothed.sum(-1, keepdims=True)


def baseline_figures(probs, voices):
    """Mode accuracy and CE per parameter (nats) of valid `voices` under per-parameter `probs`."""
    voices = np.asarray(voices, np.int64)
    p = probs[np.arange(dx7.N_PARAMS), voices]  # (n, 155)
    ce = float(-np.log(p).mean())
    return dict(mode_accuracy=float((voices == probs.argmax(-1)).mean()), ce_per_param=ce, neg_elbo_per_param=ce)


def marginal_tv(voices, reference):
    """Total-variation distance between the value histograms of `voices` and `reference`, per
    parameter (155,), in [0, 1]: 0 when both sets use each value of a parameter equally often."""
    a, b = data_lib.value_counts(voices), data_lib.value_counts(reference)
    return 0.5 * np.abs(a / max(len(voices), 1) - b / max(len(reference), 1)).sum(-1)


def nearest_distances(voices, others, *, piece=64):
    """(n,) the Hamming distance over the 145 non-name values from each voice to the nearest of
    `others` (0: a copy of one of them)."""
    a, b = np.asarray(voices)[:, dx7.NON_NAME], np.asarray(others)[:, dx7.NON_NAME]
    return np.concatenate([(a[i:i + piece, None] != b[None]).sum(-1).min(1) for i in range(0, len(a), piece)]
                          or [np.zeros(0, np.int64)])


C2ST_FOLDS = 5


def c2st(voices, reference, *, seed=0, folds=C2ST_FOLDS):
    """The classifier two-sample test: how well scikit-learn's HistGradientBoostingClassifier
    (default settings) tells `voices` from `reference` voices on their 145 non-name values, as
    `folds`-fold cross-validated accuracy; 0.5: indistinguishable, 1: always told apart. Each
    side has as many voices as the smaller set (a random subset of the larger, by `seed`).
    Returns dict(accuracy, folds (each fold's accuracy), voices (per side)), or raises Error
    without scikit-learn (the `realism` extra)."""
    try:
        from sklearn.ensemble import HistGradientBoostingClassifier
        from sklearn.model_selection import StratifiedKFold, cross_val_score
        from threadpoolctl import threadpool_limits
    except ImportError:
        raise Error("the realism figure (C2ST) needs scikit-learn: pip install 'neuraldx7-jax[realism]'") from None
    rng = np.random.default_rng(seed)
    n = min(len(voices), len(reference))
    if n < folds:
        raise Error(f"the realism figure needs at least {folds} voices a side, got {n}")
    a, b = (np.asarray(v)[np.sort(rng.choice(len(v), n, replace=False))][:, dx7.NON_NAME] for v in (voices, reference))
    x, y = np.concatenate([a, b]).astype(np.float32), np.repeat([1, 0], n)
    # One OpenMP thread: beside other busy processes its threads spin and wait (docs/performance.md).
    with threadpool_limits(1, "openmp"):
        scores = cross_val_score(HistGradientBoostingClassifier(random_state=seed), x, y,
                                 cv=StratifiedKFold(folds, shuffle=True, random_state=seed))
    return dict(accuracy=float(scores.mean()), folds=[float(s) for s in scores], voices=n)


def evaluate_voices(model, voices, *, training=None, reference=None, seed=0):
    """Validity of each voice and, over the valid ones: the model's reconstruction accuracy
    (posterior mean, argmax), CE and -ELBO per parameter (nats; `train.evaluate`), beside the
    per-parameter marginal baseline of `training` voices (default: the value counts stored with
    the model; None without either); the estimated audible fraction (`loudness.estimated_silent`);
    the names (`names.name_figures`, distinct names per 32-voice cartridge); given `training`
    voices, the median distance to the nearest of them (`nearest_distances`); and given
    `reference` voices, the mean marginal TV over the 145 non-name parameters and the algorithm's,
    and `c2st` (with `seed`; its `note` instead when it cannot be measured, e.g. without scikit-learn)."""
    voices = dx7.check_voices(voices)
    valid = dx7.is_valid(voices)
    report = dict(count=len(voices), valid=int(valid.sum()),
                  valid_fraction=float(valid.mean()) if len(voices) else None,
                  invalid=[dict(index=int(i) + 1, name=dx7.voice_name(voices[i]),
                                out_of_range=dx7.out_of_range(voices[i])) for i in np.flatnonzero(~valid)],
                  model=None, baseline=None)
    good = voices[valid]
    if not len(good):
        return report
    figures = train.evaluate(model.config.model, model.params, good)
    report["model"] = dict(reconstruction_accuracy=float((sample.reconstruct(model, good) == good).mean()),
                           ce_per_param=figures["ce"], neg_elbo_per_param=figures["neg_elbo_per_param"],
                           kl_per_dim=figures["kl"])
    counts = data_lib.value_counts(training) if training is not None else (
        model.training["value_counts"] if model.training is not None else None)
    if counts is not None:
        report["baseline"] = baseline_figures(marginal_baseline(counts), good)
    report["estimated_audible_fraction"] = float(1 - loudness.estimated_silent(good).mean())
    carts = [names.name_figures(voices[i:i + 32])["distinct_names"] for i in range(0, len(voices) - 31, 32)]
    report["names"] = dict(names.name_figures(voices), distinct_names_per_cartridge=(
        float(np.mean(carts)) if carts else None))
    if training is not None and len(training):
        report["nearest_training_distance_median"] = float(np.median(nearest_distances(good, training)))
    if reference is not None and len(reference):
        tv = marginal_tv(good, reference)
        report["marginal_tv"] = dict(mean=float(tv[dx7.NON_NAME].mean()), algorithm=float(tv[dx7.ALG]),
                                     reference_voices=len(reference))
        try:
            report["c2st"] = c2st(good, reference, seed=seed)
        except Error as e:
            report["c2st"] = dict(accuracy=None, note=str(e))
    return report
