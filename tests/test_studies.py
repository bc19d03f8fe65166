"""The studies: uniqueness and novelty counts, the marginal baseline, C2ST, the training voices."""
import sys

import numpy as np
import pytest

from conftest import random_voices
from neuraldx7_jax import checkpoint, config, data, dx7, sample, studies
from neuraldx7_jax.errors import Error


@pytest.fixture(scope="module")
def model(random_model):
    return random_model


def brute_force(samples, training):
    rows = [bytes(r) for r in samples]
    params = {bytes(r[dx7.NON_NAME]) for r in training}
    whole = {bytes(r) for r in training}
    return dict(samples=len(rows), distinct=len(set(rows)),
                novel=sum(bytes(r[dx7.NON_NAME]) not in params for r in samples),
                training_copies=sum(r in whole for r in rows))


def test_uniqueness_counts_match_brute_force():
    rng = np.random.default_rng(0)
    training = rng.integers(0, 4, (300, dx7.N_PARAMS)).astype(np.uint8)
    training[200:] = training[:100]  # training voices differing only by name
    training[200:, dx7.NAME] = rng.integers(32, 127, (100, 10))
    fresh = rng.integers(0, 4, (500, dx7.N_PARAMS)).astype(np.uint8)
    renamed = training[rng.integers(0, 300, 60)].copy()
    renamed[:, 150] = 200  # same parameters, a name no training voice has
    samples = np.concatenate([fresh, fresh[:80], training[rng.integers(0, 300, 90)], renamed,
                              fresh[rng.integers(0, 500, 100)]])
    samples = samples[rng.permutation(len(samples))]
    samples[:5, 0] = 120  # invalid values count as values
    counts = studies.count_uniqueness(np.array_split(samples, 13), training=training)
    expected = brute_force(samples, training)
    assert {k: counts[k] for k in expected} == expected
    assert expected["training_copies"] == 90 and expected["novel"] <= expected["samples"] - 150
    assert counts["unique_fraction"] == expected["distinct"] / len(samples)
    assert counts["valid_fraction"] == dx7.is_valid(samples).mean()
    assert counts["novel_fraction"] == expected["novel"] / len(samples)
    alone = studies.count_uniqueness([samples])
    assert alone["distinct"] == expected["distinct"] and alone["novel"] is None


def test_distinct_counter_merges_exactly():
    rng = np.random.default_rng(1)
    rows = rng.integers(0, 3, (5000, dx7.N_PARAMS)).astype(np.uint8)
    rows[::7] = rows[0]
    counter = studies.DistinctCounter(merge_at=100)  # many merges
    for part in np.array_split(rows, 50):
        counter.add(part)
    assert len(counter) == len({bytes(r) for r in rows})
    counter.add(rows[:10])
    assert len(counter) == len({bytes(r) for r in rows})


def test_row_set_is_exact_despite_key_collisions(monkeypatch):
    monkeypatch.setattr(data, "_HASH", np.ones_like(data._HASH))  # the key is the row sum
    rows = np.array([[1, 2, 3], [3, 2, 1], [2, 2, 2], [0, 0, 9]], np.uint8)
    members = studies.RowSet(rows[:3])
    np.testing.assert_array_equal(members.contains(np.array([[2, 2, 2], [1, 1, 4], [3, 2, 1], [0, 0, 9]])),
                                  [True, False, True, False])


def test_duplicates_study(model):
    training = sample.sample_prior(model, 64, temperature=1.0, seed=1, batch=32)
    result = studies.duplicates_study(model, 96, batch=32, temperature=1.0, seed=1, training=training,
                                     progress=False)
    assert result["samples"] == 96 and result["valid_fraction"] == 1.0
    assert result["training_copies"] == 64  # the same seed draws the training voices again
    assert result["throughput"] > 0


def test_marginal_baseline():
    rng = np.random.default_rng(2)
    training = rng.integers(0, dx7.MAX.astype(int) + 1, (200, dx7.N_PARAMS)).astype(np.uint8)
    probs = studies.marginal_baseline(data.value_counts(training))
    np.testing.assert_allclose(probs.sum(-1), 1.0)
    assert (probs[~dx7.value_mask()] == 0).all() and (probs[dx7.value_mask()] > 0).all()
    i = 134  # ALG
    np.testing.assert_allclose(probs[i, :32], (np.bincount(training[:, i], minlength=32) + 1) / (200 + 32))
    figures = studies.baseline_figures(probs, training[:50])
    mode = probs.argmax(-1)
    assert figures["mode_accuracy"] == pytest.approx((training[:50] == mode).mean())
    expected_ce = -np.mean([np.log(probs[j, v]) for r in training[:50] for j, v in enumerate(r)])
    assert figures["ce_per_param"] == pytest.approx(expected_ce)


@pytest.mark.slow
def test_c2st_tells_histogram_voices_from_real_ones_but_not_real_from_real(shared_data, sklearn):
    factory = np.concatenate([dx7.load(f) for f in sorted((shared_data / "factory").glob("*.syx"))])
    rng = np.random.default_rng(0)
    order = rng.permutation(len(factory))
    half, other = factory[order[:512]], factory[order[512:]]
    same = studies.c2st(half, other, seed=1)
    assert 0.4 < same["accuracy"] < 0.6 and same["voices"] == 512 and len(same["folds"]) == 5
    assert studies.c2st(half, other, seed=1) == same  # a seed gives the same figure
    # Each value redrawn from its parameter's histogram over the factory voices: right marginals, no joint.
    counts = data.value_counts(factory)
    redrawn = np.stack([rng.choice(dx7.N_VALUES, 256, p=c / c.sum()) for c in counts], 1).astype(np.uint8)
    assert studies.marginal_tv(redrawn, half)[dx7.NON_NAME].mean() < 0.15  # the marginal figure barely sees it
    different = studies.c2st(redrawn, other, seed=1)
    assert different["accuracy"] > 0.8 and different["voices"] == 256  # the larger set is subsampled


def test_c2st_without_scikit_learn_says_what_it_needs(monkeypatch):
    for name in ["sklearn", *(m for m in sys.modules if m.startswith("sklearn."))]:
        monkeypatch.setitem(sys.modules, name, None)  # as if the realism extra were not installed
    with pytest.raises(Error, match=r"needs scikit-learn: pip install 'neuraldx7-jax\[realism\]'"):
        studies.c2st(random_voices(8), random_voices(8, seed=1))


def test_training_voices_when_the_dataset_is_gone(model):
    gone = model._replace(meta=checkpoint.Meta(config.test(), dataset=checkpoint.Dataset("/nonexistent/data.npz", 1, 0)))
    voices, path, why = studies.training_voices(gone)
    assert voices is None and path == "/nonexistent/data.npz" and "not found" in why
    with pytest.raises(Error):
        studies.training_voices(gone, "/nonexistent/other.npz")
