import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import make_random_model, random_voices  # noqa: F401  (the subprocess below uses the first)
from neuraldx7_jax import cartridges, data, dx7, priors, sample, studies
from neuraldx7_jax.errors import Error

HERE = Path(__file__).resolve().parent


@pytest.fixture(scope="module")
def model(random_model):
    return random_model


@pytest.fixture(scope="module")
def voices():
    return random_voices(40)


def sampler_outputs(model, voices):
    """What the device-count test compares: prior samples (argmax and T = 1), decoding, encoding.
    Tests use chunks of 32 rows: one shape, one compilation per function."""
    z = np.random.default_rng(1).normal(size=(70, model.config.model.latent)).astype(np.float32)
    return dict(argmax=sample.sample_prior(model, 100, temperature=0.0, seed=3, batch=32),
                warm=sample.sample_prior(model, 100, temperature=1.0, seed=3, batch=32),
                decoded=sample.decode(model, z, temperature=1.0, seed=4, batch=32),
                zk=sample.encode(model, voices, spread=1.0, seed=5, batch=32)["zk"])


def test_prior_samples_are_valid_and_reproducible(model):
    for temperature in (0.0, 1.0, 1000.0):  # at T = 1000 every in-range value is about equally likely
        v = sample.sample_prior(model, 70, temperature=temperature, seed=1, batch=32)
        assert v.shape == (70, dx7.N_PARAMS) and v.dtype == np.uint8
        assert dx7.is_valid(v).all()
        np.testing.assert_array_equal(v, sample.sample_prior(model, 70, temperature=temperature, seed=1, batch=32))
    few = dx7.MAX <= 7
    np.testing.assert_array_equal(v[:, few].max(0), dx7.MAX[few])  # the top values are reached, never passed
    assert not np.array_equal(v, sample.sample_prior(model, 70, temperature=1000.0, seed=2, batch=32))


def test_decoding_in_pieces_changes_nothing(model, monkeypatch):
    """On a CPU a call decodes its rows in pieces (`sample.piece_rows`): the same voices."""
    whole = {t: sample.sample_prior(model, 64, temperature=t, seed=7, batch=64) for t in (0.0, 1.0)}
    four_rows = 4 * dx7.N_PARAMS * 3 * model.config.model.features * 4  # bytes
    monkeypatch.setattr(sample, "PIECE_BYTES", four_rows)
    assert sample.piece_rows(model.config.model) == 4
    sample._prior_fn.cache_clear()  # traced with the default pieces
    try:
        np.testing.assert_array_equal(sample.sample_prior(model, 64, temperature=0.0, seed=7, batch=64), whole[0.0])
        warm = sample.sample_prior(model, 64, temperature=1.0, seed=7, batch=64)
        assert np.mean(warm != whole[1.0]) < 1e-3  # sampled values: equal up to float rounding
    finally:
        sample._prior_fn.cache_clear()


@pytest.mark.slow
def test_chunking_changes_nothing(model):
    """Noise comes in blocks of 32 rows keyed by their index: chunk size and count do not matter."""
    full = sample.sample_prior(model, 100, temperature=1.0, seed=7, batch=64)
    chunks = list(sample.sample_prior_chunks(model, 100, temperature=1.0, seed=7, batch=32))
    assert [len(c) for c in chunks] == [32, 32, 32, 4]
    # calls of other shapes sum in another order: a value whose draw sits on a rounding edge may move
    assert (np.concatenate(chunks) == full).mean() > 0.999
    np.testing.assert_array_equal(sample.sample_prior(model, 33, temperature=1.0, seed=7, batch=64), full[:33])
    for temperature in (0.0, 1.0):  # decoding the prior latents with the same seed gives the voices again
        z, v = next(sample.sample_prior_chunks(model, 32, temperature=temperature, seed=7, latents=True))
        np.testing.assert_array_equal(sample.decode(model, z, temperature=temperature, seed=7), v)


def test_encode_and_reconstruct(model, voices):
    post = sample.encode(model, voices, batch=32)
    assert all(a.shape == (40, model.config.model.latent) for a in post.values())
    np.testing.assert_array_equal(post["z0"], post["mu"])  # spread 0: the posterior mean
    assert (post["sigma"] > 0).all()
    noisy = sample.encode(model, voices, spread=1.0, seed=1, batch=32)
    np.testing.assert_array_equal(noisy["mu"], post["mu"])
    assert not np.allclose(noisy["z0"], post["z0"])
    rec = sample.reconstruct(model, voices, batch=32)
    np.testing.assert_array_equal(rec, sample.decode(model, post["zk"], batch=32))
    with pytest.raises(Error):
        sample.encode(model, np.full((1, 155), 128))


@pytest.mark.parametrize("slerp", [False, True])
def test_interpolation_ends_are_the_reconstructions(model, voices, slerp):
    out, z = sample.interpolate(model, voices[3], voices[9], steps=7, slerp=slerp)
    assert out.shape == (7, dx7.N_PARAMS) and z.shape == (7, model.config.model.latent)
    rec = sample.reconstruct(model, voices[[3, 9]])
    np.testing.assert_array_equal(out[[0, -1]], rec)
    np.testing.assert_array_equal(z[[0, -1]], sample.encode(model, voices[[3, 9]])["zk"])


def test_variations(model, voices):
    same = sample.variations(model, voices[0], count=32, spread=0.0, seed=1)
    np.testing.assert_array_equal(same, np.repeat(sample.reconstruct(model, voices[:1]), 32, axis=0))
    spread = sample.variations(model, voices[0], count=32, spread=3.0, seed=1)
    assert dx7.is_valid(spread).all()
    np.testing.assert_array_equal(spread, sample.variations(model, voices[0], count=32, spread=3.0, seed=1))


@pytest.mark.slow
def test_same_output_on_four_devices(model, voices, tmp_path):
    """The samplers on 4 simulated CPU devices (a subprocess) give what one device gives here."""
    script = (f"import sys, numpy as np, jax; sys.path.insert(0, {str(HERE)!r}); import test_sample as t\n"
              f"assert jax.device_count() == 4\n"
              f"m = t.make_random_model(); v = np.load({str(tmp_path / 'voices.npy')!r})\n"
              f"np.savez({str(tmp_path / 'four.npz')!r}, **t.sampler_outputs(m, v))\n"
              f"list(t.cartridges.generate_cartridges(m, {str(tmp_path / 'four.syx')!r}, count=1, temperature=1.0, seed=9))\n")
    np.save(tmp_path / "voices.npy", voices)
    env = dict(os.environ, JAX_NUM_CPU_DEVICES="4", JAX_PLATFORMS="cpu")
    subprocess.run([sys.executable, "-c", script], check=True, env=env, timeout=300)
    four = np.load(tmp_path / "four.npz")
    for name, one in sampler_outputs(model, voices).items():
        if name == "zk":
            np.testing.assert_allclose(four[name], one, rtol=1e-5, atol=1e-5)  # float sums regroup
        else:
            np.testing.assert_array_equal(four[name], one, err_msg=name)
    list(cartridges.generate_cartridges(model, tmp_path / "one.syx", count=1, temperature=1.0, seed=9))
    assert (tmp_path / "one.syx").read_bytes() == (tmp_path / "four.syx").read_bytes()


@pytest.mark.slow
def test_the_fitted_prior_moves_and_shapes_the_same_noise(model):
    latent = model.config.model.latent
    cov = np.diag(np.arange(1.0, latent + 1)) + 0.3
    fitted = model._replace(features=dict(prior=dict(mean=[2.0] * latent, cov=cov.tolist())))
    eps, _ = next(sample.sample_prior_chunks(model, 64, seed=3, latents=True))  # no prior stored: N(0, I)
    z, voices = next(sample.sample_prior_chunks(fitted, 64, seed=3, latents=True))  # its default: the Gaussian
    np.testing.assert_allclose(z, 2.0 + eps @ np.linalg.cholesky(cov).T, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(voices, sample.decode(model, z))
    standard, _ = next(sample.sample_prior_chunks(fitted, 64, seed=3, latents=True, prior="standard"))
    np.testing.assert_array_equal(standard, eps)
    assert studies.duplicates_study(fitted, 64, progress=False)["prior"] == "gaussian"
    for name in ("gaussian", "mixture"):
        with pytest.raises(Error, match=f"no {name} prior"):
            priors.prior_of(model, name)
    # A mixture stored with the model is the default: each latent is one of its components' (same eps).
    means = np.stack([np.full(latent, -5.0), np.full(latent, 5.0)])
    chols = np.stack([np.eye(latent), 0.5 * np.eye(latent)])
    both = fitted._replace(training=dict(prior_weights=np.array([0.25, 0.75]), prior_means=means, prior_chols=chols))
    z, _ = next(sample.sample_prior_chunks(both, 1024, seed=3, latents=True, batch=1024))
    eps, _ = next(sample.sample_prior_chunks(model, 1024, seed=3, latents=True, batch=1024))
    high = z[:, 0] > 0
    np.testing.assert_allclose(z[high], 5.0 + 0.5 * eps[high], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(z[~high], -5.0 + eps[~high], rtol=1e-5, atol=1e-5)
    assert abs(high.mean() - 0.75) < 0.05 and priors.prior_of(both).name == "mixture"
    gauss, _ = next(sample.sample_prior_chunks(both, 64, seed=3, latents=True, prior="gaussian"))
    np.testing.assert_allclose(gauss, 2.0 + eps[:64] @ np.linalg.cholesky(cov).T, rtol=1e-5, atol=1e-5)
    with pytest.raises(Error, match="training.npz: the mixture prior needs"):
        priors.prior_of(both._replace(training=dict(both.training, prior_weights=np.array([0.5, 0.1]))))


def test_the_posterior_prior_draws_near_the_stored_training_latents(model):
    """Stored training latents are the default prior: each draw is one of them, picked uniformly,
    plus POSTERIOR_BANDWIDTH times their std in each dimension times the same eps as N(0, I)'s."""
    latent = model.config.model.latent
    stored = np.stack([np.full(latent, -5.0), np.zeros(latent), np.full(latent, 5.0)])
    post = model._replace(training=dict(prior_latents=stored))
    z, _ = next(sample.sample_prior_chunks(post, 1024, seed=3, latents=True, batch=1024))
    eps, _ = next(sample.sample_prior_chunks(model, 1024, seed=3, latents=True, batch=1024))
    c = np.argmin(((z[:, None] - stored[None]) ** 2).sum(-1), 1)
    np.testing.assert_allclose(z, stored[c] + priors.POSTERIOR_BANDWIDTH * stored.std(0) * eps, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.bincount(c, minlength=3) / len(c), [1 / 3] * 3, atol=0.05)
    assert priors.prior_of(post).name == "posterior"
    with pytest.raises(Error, match="no mixture prior"):
        priors.prior_of(post, "mixture")
    with pytest.raises(Error, match="training.npz: the posterior prior needs"):
        priors.prior_of(post._replace(training=dict(prior_latents=stored[:, :2])))


def test_fit_prior_recovers_a_gaussian_and_floors_one_point():
    rng = np.random.default_rng(0)
    chol = np.array([[1.0, 0.0], [0.8, 0.5]])
    prior = priors.fit_prior(np.array([3.0, -1.0]) + rng.standard_normal((20000, 2)) @ chol.T)
    np.testing.assert_allclose(prior.means[0], [3.0, -1.0], atol=0.03)
    np.testing.assert_allclose(prior.chols[0] @ prior.chols[0].T, chol @ chol.T, atol=0.03)
    one = priors.fit_prior(np.array([[1.0, 2.0]]), floor=0.2)
    np.testing.assert_allclose(one.chols[0] @ one.chols[0].T, 0.04 * np.eye(2), atol=1e-6)
    with pytest.raises(Error):
        priors.fit_prior(np.zeros((0, 2)))


def test_fit_mixture_finds_the_clusters_a_gaussian_blurs():
    rng = np.random.default_rng(0)
    centres = np.array([[-4.0, 0.0], [4.0, 0.0], [0.0, 6.0]])
    z = np.concatenate([c + s * rng.standard_normal((n, 2)) for c, s, n in zip(centres, (0.5, 1.0, 0.3), (6000, 3000, 1000))])
    mixture, log_likelihood = priors.fit_mixture(z, 3, seed=1)
    order = np.argsort(mixture.means[:, 0] + 10 * mixture.means[:, 1])  # left, right, top
    np.testing.assert_allclose(mixture.means[order], centres, atol=0.1)
    np.testing.assert_allclose(mixture.weights[order], [0.6, 0.3, 0.1], atol=0.01)
    np.testing.assert_allclose(np.linalg.norm(mixture.chols[order], axis=(1, 2)) / np.sqrt(2), [0.5, 1.0, 0.3], rtol=0.05)
    assert log_likelihood > priors.fit_mixture(z, 1)[1] + 1  # one component: far less likely
    assert priors.fit_mixture(z, 3, seed=1)[0].means.tolist() == mixture.means.tolist()  # a seed, one fit


def test_clean_names_and_save_voices(tmp_path):
    v = np.zeros((3, dx7.N_PARAMS), np.uint8)
    v[:, dx7.NAME] = [[65, 0, 31, 32, 126, 127, 66, 10, 90, 97]] * 3
    clean = data.clean_names(v)
    assert dx7.voice_name(clean[0]) == "A   ~ B Za"
    assert v[0, 146] == 0  # the input is not changed
    assert data.save_voices(tmp_path / "p.syx", v) == 32
    back = dx7.load(tmp_path / "p.syx")
    np.testing.assert_array_equal(back, np.concatenate([clean, np.repeat(clean[-1:], 29, axis=0)]))
    assert data.cartridge_paths("x/out.syx", 1) == [Path("x/out.syx")]
    assert data.cartridge_paths("out.syx", 1000)[-1] == Path("out_1000.syx")


def test_load_voice_specs(tmp_path, voices):
    dx7.save_cartridge(tmp_path / "c.syx", voices[:32])
    np.testing.assert_array_equal(data.load_voice(f"{tmp_path / 'c.syx'}:2"), voices[1])
    np.savez(tmp_path / "d.npz", train=voices[:30], validation=voices[30:])
    np.testing.assert_array_equal(data.load_voice(f"{tmp_path / 'd.npz'}:validation:3"), voices[32])
    assert len(data.load_voices(str(tmp_path / "d.npz"))) == 40
    assert len(data.load_voices(f"{tmp_path / 'd.npz'}:train")) == 30
    for bad in (f"{tmp_path / 'c.syx'}", f"{tmp_path / 'c.syx'}:0", f"{tmp_path / 'c.syx'}:33",
                f"{tmp_path / 'nope.syx'}:1"):
        with pytest.raises((Error, OSError)):
            data.load_voice(bad)


@pytest.mark.parametrize("temperature", [1e-40, 1e-45, 1e-37])
def test_a_tiny_temperature_is_the_argmax(model, temperature):
    argmax = sample.sample_prior(model, 32, temperature=0.0, seed=6, batch=32)
    np.testing.assert_array_equal(sample.sample_prior(model, 32, temperature=temperature, seed=6, batch=32), argmax)
    z = np.random.default_rng(2).normal(size=(32, model.config.model.latent)).astype(np.float32)
    np.testing.assert_array_equal(sample.decode(model, z, temperature=temperature, batch=32), sample.decode(model, z, batch=32))


def test_variations_redraw_replaces_duplicates(model, voices):
    plain = sample.variations(model, voices[0], count=32, spread=0.05, seed=3)
    redrawn = sample.variations(model, voices[0], count=32, spread=0.05, seed=3, redraw=True)
    assert data.count_distinct(plain) < 32  # the test needs duplicates to replace
    assert data.count_distinct(redrawn) > data.count_distinct(plain)
    _, first = np.unique(plain, axis=0, return_index=True)
    kept = plain[np.sort(first)]  # the distinct voices of the first draw come first, in order
    np.testing.assert_array_equal(redrawn[:len(kept)], kept)
    once = sample.variations(model, voices[0], count=32, spread=0.0, redraw=True)
    assert data.count_distinct(once) == 1 and len(once) == 32  # nothing else to draw
