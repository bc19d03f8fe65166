"""The NeuralDX7 attention VAE with triangular Sylvester flows, in flax.linen.

Semantics follow the original PyTorch model exactly under `config.ModelConfig()` defaults
(see `../shared/docs/original-model.md`); departures are named config options.
Shapes: B batch, N = 155 parameters, V = 128 values, F features, H heads,
D = F / H head width, Z latent size, K flows.
"""
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from neuraldx7_jax import dx7
from neuraldx7_jax.config import ModelConfig

N, V = dx7.N_PARAMS, dx7.N_VALUES
NEG_INF = -1e9  # the original's logit for out-of-range values
_SQRT_HALF, _INV_SQRT_2PI = 1.0 / math.sqrt(2.0), 1.0 / math.sqrt(2.0 * math.pi)


@jax.custom_vjp
def gelu(x):
    """Exact (erf) GELU with a hand-written gradient: one fused elementwise pass backwards,
    faster than autodiff's on CPU (docs/performance.md)."""
    return 0.5 * x * (1.0 + jax.lax.erf(x * _SQRT_HALF))


def _gelu_fwd(x):
    return gelu(x), x


def _gelu_bwd(x, g):
    cdf = 0.5 * (1.0 + jax.lax.erf(x * _SQRT_HALF))
    return (g * (cdf + x * jnp.exp(-0.5 * x * x) * _INV_SQRT_2PI),)


gelu.defvjp(_gelu_fwd, _gelu_bwd)


def activation(x, approximate):
    return nn.gelu(x, approximate=True) if approximate else gelu(x)


@jax.custom_vjp
def softmax(x):
    """Softmax over the last axis with the gradient w * (g - sum(g * w)) written out: it saves only
    the output, and is faster than autodiff's in attention on CPU (docs/performance.md)."""
    return jax.nn.softmax(x, axis=-1)


def _softmax_fwd(x):
    w = softmax(x)
    return w, w


def _softmax_bwd(w, g):
    return (w * (g - jnp.sum(g * w, axis=-1, keepdims=True)),)


softmax.defvjp(_softmax_fwd, _softmax_bwd)


def _torch_uniform(fan_in):
    """PyTorch's default init for Linear weights and biases: U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
    bound = 1.0 / math.sqrt(fan_in)
    return lambda key, shape, dtype=jnp.float32: jax.random.uniform(key, shape, dtype, -bound, bound)


class Dense(nn.Module):
    """nn.Dense with PyTorch's default initialisation, so training starts where the original's does.
    Float32 parameters; inputs, matmul and output in `dtype`."""
    features: int
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        init = _torch_uniform(x.shape[-1])
        return nn.Dense(self.features, kernel_init=init, bias_init=init, dtype=self.dtype, name="linear")(x)


class FeedForwardGELU(nn.Module):
    """Dense(in -> 3 in), GELU (in float32), Dense(-> out); matmuls and output in `dtype`."""
    features: int
    approximate: bool = False
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x):
        h = Dense(3 * x.shape[-1], self.dtype, name="fc1")(x).astype(jnp.float32)
        return Dense(self.features, self.dtype, name="fc2")(activation(h, self.approximate))


def positional_table(n, features):
    """(n, F) sinusoid table; row 0 is all zeros, as in the original."""
    j = np.arange(features)
    angle = np.arange(n)[:, None] / np.power(10000.0, 2 * (j // 2) / features)[None, :]
    table = np.where(j % 2 == 0, np.sin(angle), np.cos(angle))
    table[0] = 0.0
    return table.astype(np.float32)


# The original's field order (neuralDX7/constants.py, VOICE_KEYS) in our field names.
_ORIGINAL_OPERATOR = ("R1", "R2", "R3", "R4", "L1", "L2", "L3", "L4", "BP", "LD", "RD",
                      "RC", "LC", "DET", "RS", "KVS", "AMS", "OL", "FC", "MODE", "FF")
_ORIGINAL_GLOBAL = ("PR1", "PR2", "PR3", "PR4", "PL1", "PL2", "PL3", "PL4", "ALG", "OKS", "FB",
                    "LFS", "LFD", "LPMD", "LAMD", "LPMS", "LFW", "LKS", "TRNSP")


def original_order():
    """(N,) the canonical index of the field at each position of the original's order:
    a voice in the original's order is `voice[original_order()]`."""
    index = {p.name: p.index for p in dx7.PARAMS}
    names = [f"OP{op} {name}" for op in range(6, 0, -1) for name in _ORIGINAL_OPERATOR]
    names += [*_ORIGINAL_GLOBAL, *(f"NAME{i}" for i in range(1, 11))]
    return np.array([index[name] for name in names])


def position_table(config):
    """(N, F) the positional table, its rows in the order `config.position_order` names."""
    table = positional_table(N, config.features)
    return table[np.argsort(original_order())] if config.position_order == "original" else table


class Attention(nn.Module):
    """All-to-all multi-head attention with the original's layout and head interleaving."""
    config: ModelConfig

    @nn.compact
    def __call__(self, x_BxNxF):
        cfg, dtype = self.config, jnp.dtype(self.config.compute_dtype)
        qkv = Dense(3 * cfg.features, dtype, name="qkv")(x_BxNxF)
        scale = math.sqrt(cfg.heads if cfg.attention_scale == "heads" else cfg.features // cfg.heads)
        return attention_core(qkv, cfg.heads, scale)


def attention_core(qkv_BxNx3F, heads, scale):
    """softmax(Q K^T / scale) V for every head: (B, N, 3F) -> (B, N, F), the original's feature
    layout (feature = i_d * H + i_h) on both sides. Everything between the QKV matmul and the
    layer's norm (`tools/step_bound.py` times the step without it)."""
    dtype = qkv_BxNx3F.dtype
    b, n, three_f = qkv_BxNx3F.shape
    qkv_BxNxDx3xH = qkv_BxNx3F.reshape(b, n, three_f // 3 // heads, 3, heads)
    # Heads first, (B, H, N, D): batched matmuls in the layout the CPU kernels like best.
    q, k, v = (jnp.transpose(qkv_BxNxDx3xH[..., i, :], (0, 3, 1, 2)) for i in range(3))
    scores_BxHxNxN = jnp.einsum("bhqd,bhkd->bhqk", q, k).astype(jnp.float32) / scale
    weights = softmax(scores_BxHxNxN).astype(dtype)
    y_BxHxNxD = jnp.einsum("bhqk,bhkd->bhqd", weights, v)
    return jnp.transpose(y_BxHxNxD, (0, 2, 3, 1)).reshape(b, n, three_f // 3)


class AttentionLayer(nn.Module):
    """Post-norm layer: LN(Attn(X) + X), then LN_noaffine(FF(X) + X), in the compute dtype."""
    config: ModelConfig

    @nn.compact
    def __call__(self, x):
        cfg, dtype = self.config, jnp.dtype(self.config.compute_dtype)
        x = x.astype(dtype)
        attention = Attention(cfg, name="attention")(x)
        x = nn.LayerNorm(epsilon=1e-5, dtype=dtype, name="attention_norm")(attention + x)
        ff = FeedForwardGELU(cfg.features, cfg.gelu_approximate, dtype, name="feedforward")(x)
        return nn.LayerNorm(epsilon=1e-5, use_scale=False, use_bias=False, dtype=dtype,
                            name="feedforward_norm")(ff + x)


class PositionalFiLM(nn.Module):
    """(sigmoid(g), tanh(b)) = split(Dense(F -> 2F)(P)): the positional gain and bias."""
    config: ModelConfig

    @nn.compact
    def __call__(self):
        table = jnp.asarray(position_table(self.config))
        g, b = jnp.split(Dense(2 * self.config.features, name="p2x")(table), 2, axis=-1)
        return jax.nn.sigmoid(g), jnp.tanh(b)  # (N, F) each


class Encoder(nn.Module):
    """Every layer gets g * X + b as its input, with the same positional g, b."""
    config: ModelConfig

    @nn.compact
    def __call__(self, x_BxNxF):
        g, b = PositionalFiLM(self.config, name="positional")()
        for i in range(self.config.layers):
            x_BxNxF = AttentionLayer(self.config, name=f"layer_{i}")(g[None] * x_BxNxF + b[None])
        return x_BxNxF


class Decoder(nn.Module):
    """Starts from ones, applies the positional FiLM once, then a latent FiLM before each layer."""
    config: ModelConfig

    @nn.compact
    def __call__(self, c_BxNxZ):
        cfg = self.config
        g, b = PositionalFiLM(cfg, name="positional")()
        x = jnp.broadcast_to(g + b, (c_BxNxZ.shape[0], N, cfg.features))  # g * ones + b
        for i in range(cfg.decoder_layers or cfg.layers):
            film = FeedForwardGELU(2 * cfg.features, cfg.gelu_approximate, name=f"film_{i}")(c_BxNxZ)
            g_c, b_c = jnp.split(film, 2, axis=-1)
            x = AttentionLayer(cfg, name=f"layer_{i}")(jax.nn.sigmoid(g_c) * x + jnp.tanh(b_c))
        return x


class Reader(nn.Module):
    """The masked decoder's view of the visible values. Each visible (field j, value) has its own
    E-wide embedding e_j (a hidden field: zero); field i reads r_i = sum_j w_ij * e_j, one learned
    E-vector w_ij per pair of fields, and adds r_i U_i (U_i: E x F, its own) to its features before
    the logits. Each pair learns its coupling directly (a DX7's are mostly within one operator and
    between the same field of different operators), where attention over 155 places has to find
    them first (five candidates fed values that way read nothing of real voices in up to 3,500
    steps; MODEL_CARD.md). w starts at zero: untrained, or with every value hidden, the masked
    decoder computes exactly what the independent one does."""
    config: ModelConfig
    embed: int = 16  # each field's value embedding

    @nn.compact
    def __call__(self, x_BxN, hidden_BxN):
        cfg = self.config
        table = self.param("value_embedding", nn.initializers.normal(1.0), (N, V, self.embed))
        e_BxNxE = jnp.where(hidden_BxN[..., None], 0.0, table[jnp.arange(N)[None], x_BxN])
        w = self.param("coupling", nn.initializers.zeros, (N, N, self.embed))
        read_BxNxE = jnp.einsum("bje,ije->bie", e_BxNxE, w)
        out = self.param("out", nn.initializers.normal(1.0 / math.sqrt(self.embed)), (N, self.embed, cfg.features))
        return jnp.einsum("bie,ief->bif", read_BxNxE, out)


def sylvester_step(z_BxZ, r1_BxZxZ, r2_BxZxZ, b_BxZ, flip):
    """One triangular Sylvester flow: z' = z + tanh(z R2^T + b) R1^T. Returns (z', log|det J|)."""
    zp = z_BxZ[:, ::-1] if flip else z_BxZ
    pre_BxZ = jnp.einsum("bj,bij->bi", zp, r2_BxZxZ) + b_BxZ
    step = jnp.einsum("bj,bij->bi", jnp.tanh(pre_BxZ), r1_BxZxZ)
    z_new = z_BxZ + (step[:, ::-1] if flip else step)
    diag = jnp.diagonal(r1_BxZxZ, axis1=-2, axis2=-1) * jnp.diagonal(r2_BxZxZ, axis1=-2, axis2=-1)
    log_det = jnp.sum(jnp.log(jnp.abs(1.0 + (1.0 - jnp.tanh(pre_BxZ) ** 2) * diag) + 1e-8), axis=-1)
    return z_new, log_det


def flow_matrices(params_BxKxZxZ3):
    """Amortised flow parameters -> (R1, R2, b), each with a leading K axis."""
    p = jnp.moveaxis(params_BxKxZxZ3, 1, 0)  # (K, B, Z, Z + 3)
    diag1, diag2, b, m = jnp.tanh(p[..., 0]), jnp.tanh(p[..., 1]), p[..., 2], p[..., 3:]
    eye = jnp.eye(m.shape[-1], dtype=bool)
    upper = jnp.triu(jnp.ones(m.shape[-2:], dtype=bool), k=1)
    r1 = jnp.where(upper, m, 0.0) + jnp.where(eye, diag1[..., None], 0.0)
    r2 = jnp.where(upper, jnp.swapaxes(m, -1, -2), 0.0) + jnp.where(eye, diag2[..., None], 0.0)
    return r1, r2, b


def apply_flows(z_BxZ, r1, r2, b):
    """All K flows in order (odd ones on the reversed latent). Returns (z_K, summed log-det)."""
    log_det = jnp.zeros(z_BxZ.shape[:1], z_BxZ.dtype)
    for k in range(r1.shape[0]):
        z_BxZ, ld = sylvester_step(z_BxZ, r1[k], r2[k], b[k], flip=k % 2 == 1)
        log_det = log_det + ld
    return z_BxZ, log_det


class VAE(nn.Module):
    """The DX7 VAE. Methods: `encode` (posterior + flow), `decode` (latent -> masked logits),
    and `__call__` (the training forward pass)."""
    config: ModelConfig

    def setup(self):
        cfg = self.config
        self.embedder = nn.Embed(V, cfg.features, embedding_init=nn.initializers.normal(1.0))
        self.latent_encoder = Encoder(cfg)
        self.q_hidden = Dense(2 * cfg.features)
        self.q_out = Dense(2 * cfg.latent)
        self.flow_params = Dense(cfg.flows * cfg.latent * (cfg.latent + 3))
        self.z_to_c = Dense(cfg.latent * N)
        self.decoder = Decoder(cfg)
        if cfg.decoder == "masked":
            self.reader = Reader(cfg)
        self.logits = FeedForwardGELU(V, cfg.gelu_approximate)

    def encode(self, x_BxN, eps_BxZ):
        """Voices and standard-normal noise -> dict(mu, sigma, z0, zk, log_det)."""
        cfg = self.config
        h_BxF = self.latent_encoder(self.embedder(x_BxN)).astype(jnp.float32).mean(axis=-2)
        mu, s = jnp.split(self.q_out(activation(self.q_hidden(h_BxF), cfg.gelu_approximate)),
                          2, axis=-1)
        sigma = jnp.exp(jnp.clip(0.5 * s, -5.0, 4.0))
        z0 = mu + sigma * eps_BxZ
        params = self.flow_params(h_BxF).reshape(-1, cfg.flows, cfg.latent, cfg.latent + 3)
        zk, log_det = apply_flows(z0, *flow_matrices(params))
        return dict(mu=mu, sigma=sigma, z0=z0, zk=zk, log_det=log_det)

    def raw_logits(self, z_BxZ, x_BxN=None, hidden_BxN=None):
        """Latent -> (B, N, V) logits before the value mask (what the training loss sees). The
        masked decoder also reads the values `x_BxN` where `hidden_BxN` is False (None: all
        hidden, the voice from z alone)."""
        rows = z_BxZ.shape[0]
        h_BxNxF = self.decoder(self.z_to_c(z_BxZ).reshape(rows, N, self.config.latent)).astype(jnp.float32)
        if self.config.decoder == "masked":
            if hidden_BxN is None:
                x_BxN, hidden_BxN = jnp.zeros((rows, N), jnp.int32), jnp.ones((rows, N), bool)
            h_BxNxF = h_BxNxF + self.reader(x_BxN, hidden_BxN)
        return self.logits(h_BxNxF)

    def decode(self, z_BxZ, x_BxN=None, hidden_BxN=None):
        """Latent (and, masked decoder, the visible values) -> (B, N, V) logits with out-of-range
        values set to -1e9."""
        return jnp.where(jnp.asarray(dx7.value_mask()), self.raw_logits(z_BxZ, x_BxN, hidden_BxN), NEG_INF)

    def __call__(self, x_BxN, eps_BxZ, hidden_BxN=None):
        """Training forward pass: the posterior, its flow, and the unmasked logits of z_K (the
        masked decoder sees the values of `x_BxN` where `hidden_BxN` is False)."""
        post = self.encode(x_BxN, eps_BxZ)
        return dict(post, logits=self.raw_logits(post["zk"], x_BxN, hidden_BxN))
