"""Jitted samplers: prior sampling, decoding latents to voices, encoding voices to posteriors."""
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from neuraldx7_jax import train
from neuraldx7_jax.config import Config
from neuraldx7_jax.model import VAE

BUNDLED = Path(__file__).resolve().parent / "bundled"


class Model(NamedTuple):
    """A trained model: its config, parameters, and checkpoint metadata (dataset facts, features)."""
    config: Config
    params: Any
    meta: dict
    path: Path


def load_model(checkpoint=None):
    """The model in `checkpoint` (a work directory or checkpoints folder), or the bundled one."""
    path = Path(checkpoint) if checkpoint is not None else BUNDLED
    cfg, params, meta = train.load_checkpoint(path)
    return Model(cfg, jax.tree.map(jnp.asarray, params), meta, path)


def decode_logits(model_cfg, params, z_BxZ):
    """Latent -> (B, N, V) logits with out-of-range values masked."""
    vae = VAE(model_cfg)
    return vae.apply({"params": params}, z_BxZ, method=vae.decode)


def voices_from_logits(logits_BxNxV, key, temperature):
    """Argmax when temperature == 0, else a sample from softmax(logits / temperature)."""
    if temperature == 0:
        return jnp.argmax(logits_BxNxV, -1).astype(jnp.uint8)
    return jax.random.categorical(key, logits_BxNxV / temperature, -1).astype(jnp.uint8)


def make_decoder(model_cfg):
    """Jitted `(params, z) -> voices (B, 155) uint8`, argmax: what live control calls."""
    return jax.jit(lambda params, z: voices_from_logits(decode_logits(model_cfg, params, z), None, 0))


def decode(model, z, temperature=0.0, seed=0):
    """Host convenience: latents (B, Z) -> voices (B, 155) uint8 numpy."""
    logits = jax.jit(decode_logits, static_argnums=0)(model.config.model, model.params, jnp.asarray(z))
    return np.asarray(voices_from_logits(logits, jax.random.key(seed), temperature))
