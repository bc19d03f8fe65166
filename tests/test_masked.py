"""The masked decoder (`ModelConfig.decoder = "masked"`): what it reads, how it trains, how it
samples, and `mutate`."""
import contextlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import random_voices
from neuraldx7_jax import config, dx7, sample, train
from neuraldx7_jax.errors import Error
from neuraldx7_jax.model import VAE

UNMASK = jax.jit(sample.unmask, static_argnums=(0, 8))


def _logits(model, z, x, hidden):
    return np.asarray(sample.decode_logits(model.config.model, model.params, jnp.asarray(z), jnp.asarray(x, jnp.int32),
                                           jnp.asarray(hidden)))


def test_the_decoder_reads_visible_values_and_nothing_of_hidden_ones(random_masked_model):
    model = random_masked_model
    x = random_voices(4, seed=1).astype(np.int32)
    z = np.random.default_rng(0).normal(size=(4, model.config.model.latent)).astype(np.float32)
    hidden = np.zeros_like(x, bool)
    hidden[:, 10:] = True
    base = _logits(model, z, x, hidden)
    other = x.copy()
    other[:, 10:] = random_voices(4, seed=2)[:, 10:]  # only hidden values change: nothing leaks
    np.testing.assert_array_equal(base, _logits(model, z, other, hidden))
    other = x.copy()
    other[:, 3] = (x[:, 3] + 1) % (dx7.MAX[3] + 1)  # a visible value changes: the rest hears it
    assert np.abs(base[:, 20:] - _logits(model, z, other, hidden)[:, 20:]).max() > 1e-4
    # every value hidden is the voice from z alone: what `decode` gives without values
    alone = np.asarray(sample.decode_logits(model.config.model, model.params, jnp.asarray(z)))
    np.testing.assert_allclose(alone, _logits(model, z, x, np.ones_like(hidden)), atol=1e-6)


def test_random_hidden_hides_a_uniform_count_of_values():
    hidden = np.asarray(train.random_hidden(jax.random.key(0), 20000))
    counts = hidden.sum(-1)
    assert counts.min() >= 1 and counts.max() <= dx7.N_PARAMS
    assert abs(counts.mean() - (dx7.N_PARAMS + 1) / 2) < 2  # uniform on 1..155: mean 78
    assert np.histogram(counts, bins=5, range=(0.5, 155.5))[0].min() > 3500  # each fifth about 4,000
    assert abs(hidden.mean(0) - 0.5).max() < 0.03  # every place equally likely


def test_the_loss_counts_only_hidden_values():
    x = jnp.asarray(random_voices(2, seed=3).astype(np.int32))
    good = jax.nn.one_hot(x, dx7.N_VALUES) * 20.0
    hidden = jnp.zeros(x.shape, bool).at[:, :50].set(True)
    bad = good.at[:, 50:].set(-good[:, 50:])  # every visible value predicted wrong
    out = dict(z0=jnp.zeros((2, 4)), zk=jnp.zeros((2, 4)), mu=jnp.zeros((2, 4)), sigma=jnp.ones((2, 4)),
               log_det=jnp.zeros(2))
    a = train.loss_terms(dict(out, logits=good), x, True, hidden)
    b = train.loss_terms(dict(out, logits=bad), x, True, hidden)
    np.testing.assert_allclose(a["ce"], b["ce"])
    np.testing.assert_allclose(b["accuracy"], 1.0)
    assert float(train.loss_terms(dict(out, logits=bad), x, True)["accuracy"].max()) < 0.4  # all 155 counted


def test_a_masked_decoder_starts_as_the_independent_one_it_extends(random_model):
    cfg = config.override(config.test(), ["model.decoder=masked"])
    merged = train.merge_params(train.init_state(cfg, 0).params, random_model.params)
    z = jnp.asarray(np.random.default_rng(0).normal(size=(3, cfg.model.latent)).astype(np.float32))
    ours = VAE(cfg.model).apply({"params": merged}, z, method="decode")
    theirs = VAE(random_model.config.model).apply({"params": random_model.params}, z, method="decode")
    np.testing.assert_allclose(ours, theirs, atol=1e-6)
    # untrained, what it is shown changes nothing either
    shown = jnp.asarray(random_voices(3, seed=4).astype(np.int32))
    half = jnp.zeros(shown.shape, bool).at[:, ::2].set(True)
    np.testing.assert_allclose(VAE(cfg.model).apply({"params": merged}, z, shown, half, method="decode"), theirs, atol=1e-6)


def test_unmasking_keeps_visible_values_and_draws_the_hidden_ones(random_masked_model):
    model = random_masked_model
    cfg, rng = model.config.model, np.random.default_rng(0)
    z = jnp.asarray(rng.normal(size=(32, cfg.latent)).astype(np.float32))
    x = jnp.asarray(random_voices(32, seed=5).astype(np.int32))
    u, order = (jnp.asarray(rng.uniform(size=(32, dx7.N_PARAMS)).astype(np.float32)) for _ in range(2))
    hidden = jnp.asarray(rng.uniform(size=(32, dx7.N_PARAMS)) < 0.5)

    def run(passes, x, hidden, u):
        return np.asarray(UNMASK(cfg, model.params, z, x, hidden, u, order, 1.0, passes))

    for passes in (1, config.DECODE_PASSES):
        out = run(passes, x, hidden, u)
        assert dx7.is_valid(out).all()
        np.testing.assert_array_equal(out[~hidden], np.asarray(x)[~hidden])
        assert (out[hidden] != np.asarray(x)[hidden]).mean() > 0.5  # redrawn, not copied
    # one pass over a voice wholly hidden is the independent draw from z alone
    everything = jnp.ones(x.shape, bool)
    alone = sample._pick(sample.decode_logits(cfg, model.params, z), u, 1.0)
    np.testing.assert_array_equal(run(1, x, everything, u), np.asarray(alone))
    # by argmax, a latent decodes to one voice: no noise enters
    greedy = sample.decode(model, np.asarray(z), batch=32)
    np.testing.assert_array_equal(greedy, np.asarray(sample.make_decoder(cfg, config.DECODE_PASSES)(model.params, z)))
    np.testing.assert_array_equal(greedy, run(config.DECODE_PASSES, jnp.zeros_like(x), everything, None))


def test_masked_prior_samples_are_reproducible_whatever_the_batch(random_masked_model):
    model = random_masked_model
    a = sample.sample_prior(model, 70, temperature=1.0, seed=2, batch=32)
    np.testing.assert_array_equal(a[:40], sample.sample_prior(model, 40, temperature=1.0, seed=2, batch=64))
    assert dx7.is_valid(a).all() and len(np.unique(a, axis=0)) == 70


@pytest.mark.parametrize("decoder", ["independent", "masked"])
def test_mutants_keep_their_groups_and_differ(decoder, random_model, random_masked_model, shared_data):
    model = random_masked_model if decoder == "masked" else random_model
    source = dx7.load(shared_data / "factory" / "rom1a.syx")[:2]
    mutants, changed = sample.mutate(model, source, amount=0.3, keep=("op1", "algorithm", "lfo"), count=32, seed=4)
    assert mutants.shape == (2, 32, dx7.N_PARAMS) and changed.shape == (2, 32)
    kept = dx7.group_mask(("op1", "algorithm", "lfo", "name"))
    np.testing.assert_array_equal(mutants[:, :, kept], np.repeat(source[:, None, kept], 32, axis=1))
    for voice, theirs in zip(source, mutants):
        assert dx7.is_valid(theirs).all()
        assert not (theirs[:, dx7.NON_NAME] == voice[dx7.NON_NAME]).all(-1).any()
        assert len(np.unique(theirs[:, dx7.NON_NAME], axis=0)) == 32
    assert 0.2 < changed.mean() < 0.4  # `amount` is the expected share changed
    np.testing.assert_array_equal(mutants, sample.mutate(model, source, amount=0.3, keep=("op1", "algorithm", "lfo"),
                                                         count=32, seed=4)[0])
    with pytest.raises(Error, match="amount"):
        sample.mutate(model, source, amount=0.0)


def test_the_mutate_command_writes_cartridges_of_mutants(trained, shared_data, tmp_path, capsys):
    from neuraldx7_jax.cli import main

    work, _ = trained
    rom = shared_data / "factory" / "rom1a.syx"
    code = main(["mutate", f"{rom}:1", "--out", str(tmp_path / "m.syx"), "--amount", "0.3", "--keep", "op1",
                 "algorithm", "--count", "2", "--checkpoint", str(work)])
    out = capsys.readouterr().out
    assert code == 0 and out.count("32 mutants; values changed:") == 2
    source = dx7.load(rom)[0]
    keep = dx7.group_mask(("op1", "algorithm", "name"))
    both = np.concatenate([dx7.load(tmp_path / f"m_00{i}.syx") for i in (1, 2)])
    assert len(both) == 64 and dx7.is_valid(both).all() and (both[:, keep] == source[keep]).all()
    assert len(np.unique(both[:, dx7.NON_NAME], axis=0)) == 64  # all distinct, none the source's
    assert not (both[:, dx7.NON_NAME] == source[dx7.NON_NAME]).all(-1).any()
    code = main(["mutate", str(rom), "--out", str(tmp_path / "f.syx"), "--checkpoint", str(work)])
    assert code == 0 and len(dx7.load(tmp_path / "f.syx")) == 32  # each voice of the file once
    assert [dx7.voice_name(v) for v in dx7.load(tmp_path / "f.syx")] == [dx7.voice_name(v) for v in dx7.load(rom)]
    capsys.readouterr()
    for bad, words in ((["--amount", "0"], "amount"), (["--keep", "op7"], "invalid choice")):
        with pytest.raises(SystemExit) if "op7" in bad else contextlib.nullcontext():
            code = main(["mutate", f"{rom}:1", "--out", str(tmp_path / "x.syx"), *bad, "--checkpoint", str(work)])
            assert code == 2
        assert words in capsys.readouterr().err
    assert not (tmp_path / "x.syx").exists()



@pytest.mark.slow
def test_a_trained_masked_decoder_reads_the_values_it_is_shown():
    """Through the real train step: voices whose OP5 rates, levels and scaling depths copy OP6's
    (11 random values, more than the latent carries early on). Shown OP6 values that disagree with
    the voice z was drawn for, the decoder predicts OP5's hidden values from what it is shown."""
    from neuraldx7_jax import devices

    cfg = config.override(config.test(), ["model.decoder=masked", "train.learning_rate=3e-3", "train.batch_size=32"])
    a = np.arange(11)  # OP6 R1..BP, LD, RD (0..99); OP5's same fields are 21 places on
    x = np.repeat(random_voices(1, seed=0).astype(np.int32), 4096, 0)
    x[:, a] = np.random.default_rng(1).integers(0, 32, (len(x), len(a)))
    x[:, a + 21] = x[:, a]
    mesh = devices.make_mesh(cfg.model)
    state, step = devices.replicate(train.init_state(cfg, 0), mesh), train.make_train_step(cfg, mesh)
    rng = np.random.default_rng(2)
    for _ in range(1000):
        state, _ = step(state, x[rng.integers(0, len(x), 32)], jax.random.key(0))
    shown = x[:256].copy()
    shown[:, a] = (shown[:, a] + 7) % 32
    hidden = np.zeros(shown.shape, bool)
    hidden[:, a + 21] = True
    z = jnp.zeros((256, cfg.model.latent))
    logits = sample.decode_logits(cfg.model, state.params, z, jnp.asarray(shown), jnp.asarray(hidden))
    predicted = np.asarray(logits)[:, a + 21].argmax(-1)
    assert (predicted == shown[:, a]).mean() > 0.8
    figures = train.evaluate(cfg.model, state.params, x[:512])  # what it reads, as training reports it
    assert figures["ce_few_hidden"] < 0.8 * figures["ce"]
