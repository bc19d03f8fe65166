import jax
import jax.numpy as jnp
import numpy as np
import pytest

from neuraldx7_jax import config, dx7, model


@pytest.fixture(scope="module")
def tiny():
    cfg = config.test().model
    vae = model.VAE(cfg)
    x = jnp.asarray(np.random.default_rng(0).integers(0, 100, (3, dx7.N_PARAMS)), jnp.int32)
    params = jax.jit(vae.init)(jax.random.key(0), x, jnp.zeros((3, cfg.latent)))
    return cfg, vae, params, x


@pytest.mark.parametrize("jit", [False, True])
def test_shapes_and_dtypes(tiny, jit):
    cfg, vae, params, x = tiny
    eps = jax.random.normal(jax.random.key(1), (3, cfg.latent))
    apply = jax.jit(vae.apply) if jit else vae.apply
    out = apply(params, x, eps)
    assert out["logits"].shape == (3, dx7.N_PARAMS, dx7.N_VALUES)
    assert out["zk"].shape == out["z0"].shape == (3, cfg.latent)
    assert out["log_det"].shape == (3,)
    assert all(v.dtype == jnp.float32 for v in out.values())


def test_flow_log_det_matches_jacobian():
    """The summed log-det of the K flows equals log|det dz_K/dz_0| computed by jax.jacfwd."""
    z_size, flows = 5, 4
    params = jax.random.normal(jax.random.key(2), (1, flows, z_size, z_size + 3))
    r1, r2, b = model.flow_matrices(params)
    z0 = jax.random.normal(jax.random.key(3), (z_size,))

    def f(z):
        return model.apply_flows(z[None], r1, r2, b)[0][0]

    _, log_det = model.apply_flows(z0[None], r1, r2, b)
    _, expected = jnp.linalg.slogdet(jax.jacfwd(f)(z0))
    np.testing.assert_allclose(log_det[0], expected, rtol=1e-4, atol=1e-4)


def test_odd_flows_act_on_the_reversed_latent():
    """A single flipped step equals the unflipped step on reversed inputs, reversed back."""
    z_size = 4
    params = jax.random.normal(jax.random.key(4), (1, 1, z_size, z_size + 3))
    r1, r2, b = model.flow_matrices(params)
    z = jax.random.normal(jax.random.key(5), (1, z_size))
    flipped, ld_flipped = model.sylvester_step(z, r1[0], r2[0], b[0], flip=True)
    plain, ld_plain = model.sylvester_step(z[:, ::-1], r1[0], r2[0], b[0], flip=False)
    np.testing.assert_allclose(flipped, z + (plain - z[:, ::-1])[:, ::-1], rtol=1e-6)
    np.testing.assert_allclose(ld_flipped, ld_plain, rtol=1e-6)


def test_r_matrices_are_upper_triangular_with_tanh_diagonals():
    params = jax.random.normal(jax.random.key(6), (2, 3, 4, 7))
    r1, r2, _ = model.flow_matrices(params)
    assert r1.shape == (3, 2, 4, 4)
    np.testing.assert_array_equal(jnp.tril(r1, -1), 0)
    np.testing.assert_array_equal(jnp.tril(r2, -1), 0)
    np.testing.assert_allclose(jnp.diagonal(r1, axis1=-2, axis2=-1), jnp.tanh(params[..., 0]).swapaxes(0, 1))
    np.testing.assert_allclose(r2[0, 0, 0, 1], params[0, 0, 1, 3])  # strict_upper(M^T)


def test_decode_masks_out_of_range_values(tiny):
    cfg, vae, params, _ = tiny
    z = jax.random.normal(jax.random.key(7), (64, cfg.latent)) * 3
    logits = vae.apply(params, z, method=vae.decode)
    voices = np.asarray(logits.argmax(-1))
    assert dx7.is_valid(voices).all()
    assert np.all(np.asarray(logits)[:, ~dx7.value_mask()] == model.NEG_INF)


def test_positional_table_matches_the_original_formula():
    table = model.positional_table(155, 8)
    assert np.all(table[0] == 0)
    np.testing.assert_allclose(table[3, 2], np.sin(3 / 10000 ** (2 / 8)), rtol=1e-6)
    np.testing.assert_allclose(table[3, 3], np.cos(3 / 10000 ** (2 / 8)), rtol=1e-6)


def test_config_rejects_bad_values():
    with pytest.raises(ValueError, match="multiple of heads"):
        config.ModelConfig(features=10, heads=3)
    with pytest.raises(ValueError, match="attention_scale"):
        config.ModelConfig(attention_scale="bogus")
    with pytest.raises(ValueError, match="compute_dtype"):
        config.ModelConfig(compute_dtype="float16")


@pytest.mark.slow
def test_bfloat16_compute_stays_close_to_float32():
    """Same parameters, matmuls in bfloat16: float32 outputs within bfloat16's rounding."""
    cfg = config.small().model
    x = jnp.asarray(np.random.default_rng(0).integers(0, 100, (4, dx7.N_PARAMS)), jnp.int32)
    eps = jax.random.normal(jax.random.key(1), (4, cfg.latent))
    params = jax.jit(model.VAE(cfg).init)(jax.random.key(0), x, eps)
    half = model.VAE(config.override(config.small(), ["model.compute_dtype=bfloat16"]).model)
    assert "bf16" in jax.jit(half.apply).lower(params, x, eps).as_text()  # it does compute in bf16
    full, out = jax.jit(model.VAE(cfg).apply)(params, x, eps), jax.jit(half.apply)(params, x, eps)
    assert all(v.dtype == jnp.float32 for v in out.values())
    np.testing.assert_allclose(out["logits"], full["logits"], atol=0.05)
    np.testing.assert_allclose(out["mu"], full["mu"], atol=0.01)
    assert float((out["logits"].argmax(-1) == full["logits"].argmax(-1)).mean()) > 0.95


def test_hand_written_gradients_equal_autodiff():
    x = jax.random.normal(jax.random.key(8), (3, 5, 7)) * 3
    g = jax.random.normal(jax.random.key(9), x.shape)
    for ours, reference in [(model.gelu, lambda x: jax.nn.gelu(x, approximate=False)),
                            (model.softmax, lambda x: jax.nn.softmax(x, axis=-1))]:
        np.testing.assert_allclose(ours(x), reference(x), rtol=1e-5, atol=1e-6)
        grad_ours = jax.grad(lambda x: jnp.sum(ours(x) * g))(x)
        grad_ref = jax.grad(lambda x: jnp.sum(reference(x) * g))(x)
        np.testing.assert_allclose(grad_ours, grad_ref, rtol=1e-5, atol=1e-6)
