"""Jitted samplers (prior sampling, decoding latents, encoding voices) and the studies built on them.

Every batched sampler runs fixed-size chunks sharded over all devices (the 1-D `data` mesh of
`train.make_mesh`) and streams them to the host one chunk behind the device, so memory stays
bounded whatever the count. Noise is drawn in blocks of BLOCK rows, block i from
`fold_in(key, i)` in one call, so a seed gives the same voices whatever the chunk size and the
number of devices, and the first n voices of a longer request are the n voices of a shorter one.
"""
import collections
import functools
import io
import json
import math
import re
import time
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P
from tqdm import tqdm

from neuraldx7_jax import data, dx7, names, train
from neuraldx7_jax.config import Config
from neuraldx7_jax.errors import Error
from neuraldx7_jax.model import VAE

BUNDLED = Path(__file__).resolve().parent / "bundled"
FEATURES_FILE = "features.json"  # per-dimension latent summary and fitted prior, beside the checkpoints
TRAINING_FILE = "training.npz"  # facts of the training set (no voices), beside the checkpoints
BLOCK = 32  # rows per noise block (one cartridge); block i draws from fold_in(key, i)
CHUNK = None  # rows per device call: None = `default_chunk()`; only speed and memory depend on it
# On a CPU a call decodes its rows in pieces whose feed-forward activations, (rows, N, 3F) float32,
# fit in about this many bytes: 16 rows for `small`, 4 for `original` (docs/performance.md).
PIECE_BYTES = 4 << 20


def piece_rows(model_cfg):
    """Rows per piece on a CPU for this width."""
    return max(1, PIECE_BYTES // (dx7.N_PARAMS * 3 * model_cfg.features * 4))


class Model(NamedTuple):
    """A trained model: its config, parameters, checkpoint metadata, latent features (or None)
    and facts of its training set (or None)."""
    config: Config
    params: Any
    meta: dict
    path: Path
    features: dict | None = None  # features.json: {"mean": [Z], "std": [Z], "prior", "dataset", "count"}
    training: dict | None = None  # training.npz: `data.training_facts` of its training voices


class Prior(NamedTuple):
    """A Gaussian over the decoder's latent z_K: z = mean + chol @ eps with eps ~ N(0, I)."""
    mean: np.ndarray  # (Z,)
    chol: np.ndarray  # (Z, Z) lower-triangular: the covariance is chol @ chol.T
    name: str  # "fitted" (the training set's latents), "standard" (N(0, I)) or "like"


PRIORS = ("fitted", "standard")
LIKE_FLOOR = 0.2  # smallest std of a --like density along any direction (latent units)


def standard_prior(latent):
    """N(0, I), the original's prior."""
    return Prior(np.zeros(latent, np.float32), np.eye(latent, dtype=np.float32), "standard")


def fit_prior(z, floor=0.0, name="fitted"):
    """The Gaussian with the mean and covariance of latents `z` (n, Z), its covariance raised by
    floor**2 * I (so that a handful of points, even one, gives a usable density)."""
    z = np.asarray(z, np.float64)
    if z.ndim != 2 or not len(z) or not np.all(np.isfinite(z)):
        raise Error(f"cannot fit a prior to latents of shape {z.shape}")
    cov = np.cov(z, rowvar=False).reshape(z.shape[1], z.shape[1]) if len(z) > 1 else np.zeros((z.shape[1],) * 2)
    chol = np.linalg.cholesky(cov + (floor ** 2 + 1e-9) * np.eye(z.shape[1]))
    return Prior(z.mean(0).astype(np.float32), chol.astype(np.float32), name)


def prior_of(model, prior=None):
    """The Prior to sample `model` from: a Prior itself, "standard", "fitted" (the density of the
    training set's latents stored with the model), or None: fitted when the model has one."""
    if isinstance(prior, Prior):
        return prior
    if prior not in (None, *PRIORS):
        raise Error(f"unknown prior {prior!r}; choose one of {', '.join(PRIORS)}")
    latent = model.config.model.latent
    stored = (model.features or {}).get("prior")
    if prior == "standard" or (prior is None and stored is None):
        return standard_prior(latent)
    if stored is None:
        raise Error(f"the model in {model.path} has no fitted prior; run `neuraldx7 features "
                    f"--checkpoint {model.path}` (or use --prior standard)")
    mean, cov = np.asarray(stored["mean"], np.float64), np.asarray(stored["cov"], np.float64)
    if mean.shape != (latent,) or cov.shape != (latent, latent) or not np.all(np.isfinite(cov)):
        raise Error(f"{features_path(model.path)}: the fitted prior needs a mean of {latent} numbers "
                    f"and a {latent}x{latent} covariance; run `neuraldx7 features` again")
    try:
        chol = np.linalg.cholesky(cov)
    except np.linalg.LinAlgError:
        raise Error(f"{features_path(model.path)}: the fitted prior's covariance is not positive definite; "
                    "run `neuraldx7 features` again") from None
    return Prior(mean.astype(np.float32), chol.astype(np.float32), "fitted")


def features_path(checkpoint):
    """Where `neuraldx7 features` stores the latent summary of the model in `checkpoint`."""
    return train._checkpoint_dir(checkpoint) / FEATURES_FILE


def training_path(checkpoint):
    """Where the facts of the training set the model needs (`data.training_facts`) are stored."""
    return train._checkpoint_dir(checkpoint) / TRAINING_FILE


def load_model(checkpoint=None):
    """The model in `checkpoint` (a work directory or checkpoints folder), or the bundled one."""
    path = Path(checkpoint) if checkpoint is not None else BUNDLED
    if checkpoint is None and not path.is_dir():
        raise Error("no bundled model in this installation; pass --checkpoint DIR")
    cfg, params, meta = train.load_checkpoint(path)
    features = training = None
    if features_path(path).is_file():
        try:
            features = json.loads(features_path(path).read_text())
        except ValueError:
            raise Error(f"{features_path(path)}: not JSON; run `neuraldx7 features` again") from None
    if training_path(path).is_file():
        training = load_training_facts(training_path(path))
    return Model(cfg, jax.tree.map(jnp.asarray, params), meta, path, features, training)


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


# Sharded, chunked device functions.

@functools.lru_cache(maxsize=None)
def _shardings():
    mesh = train.make_mesh()
    return NamedSharding(mesh, P("data")), NamedSharding(mesh, P())


def default_chunk():
    """Rows per device call when none is given: 256 on CPU (faster than larger calls there), 4096
    on accelerators."""
    return 256 if jax.default_backend() == "cpu" else 4096


def _rows_per_call(count, chunk):
    """Rows of one device call: a multiple of BLOCK and of the device count, `chunk` rounded up,
    or for fewer voices the power-of-two multiple that holds them (few shapes, few compilations)."""
    chunk = default_chunk() if chunk is None else chunk
    if chunk < 1:
        raise Error(f"the batch size must be positive, got {chunk}")
    step = math.lcm(BLOCK, jax.device_count())
    most = -(-chunk // step) * step
    return min(most, step * 2 ** math.ceil(math.log2(max(1, -(-count // step)))))


def _key_streams(seed):
    """Independent keys by purpose: prior latents, value sampling, posterior noise."""
    latent, value, posterior = jax.random.split(jax.random.key(seed), 3)
    return dict(latent=latent, value=value, posterior=posterior)


def _block_noise(key, first_block, blocks, draw):
    """(blocks * BLOCK, ...) noise: block b is `draw(fold_in(key, first_block + b))`."""
    keys = jax.vmap(jax.random.fold_in, (None, 0))(key, first_block + jnp.arange(blocks))
    noise = jax.vmap(draw)(keys)  # (blocks, BLOCK, ...)
    return noise.reshape(-1, *noise.shape[2:])


def _pick(logits_BxNxV, u_BxN, temperature):
    """Voices from masked logits: argmax when `u_BxN` is None, else at `temperature` a draw from
    softmax(logits / T) by inverting its CDF with the uniform `u_BxN` (one per parameter; 128x
    fewer random numbers than Gumbel-max). Out-of-range values have probability 0, never drawn."""
    if u_BxN is None:
        return jnp.argmax(logits_BxNxV, -1).astype(jnp.uint8)
    scaled = (logits_BxNxV - logits_BxNxV.max(-1, keepdims=True)) / temperature  # <= 0: no overflow
    cdf = jnp.cumsum(jnp.exp(scaled), -1)  # unnormalised
    value = jnp.sum(cdf < u_BxN[..., None] * cdf[..., -1:], -1)
    return jnp.minimum(value, jnp.asarray(dx7.MAX, value.dtype)).astype(jnp.uint8)


def _decode_voices(model_cfg, params, z_BxZ, value_key, first_block, temperature, greedy):
    """Latents -> voices, decoded `piece_rows` rows per device at a time on a CPU (`lax.map`: a
    piece's working set stays in cache, about 1.8x faster than whole 1,024-row calls), all at once
    elsewhere."""
    u_BxN = None
    if not greedy:
        u_BxN = _block_noise(value_key, first_block, z_BxZ.shape[0] // BLOCK,
                             lambda k: jax.random.uniform(k, (BLOCK, dx7.N_PARAMS)))
        u_BxN = jax.lax.with_sharding_constraint(u_BxN, _shardings()[0])
    per_device = z_BxZ.shape[0] // jax.device_count()
    k = train.pieces(per_device, piece_rows(model_cfg) if jax.default_backend() == "cpu" else per_device)
    pieces = (train.split_rows(z_BxZ, k), None if greedy else train.split_rows(u_BxN, k))
    voices = jax.lax.map(lambda zu: _pick(decode_logits(model_cfg, params, zu[0]), zu[1], temperature), pieces)
    return train.join_rows(voices)


@functools.lru_cache(maxsize=None)
def _prior_fn(model_cfg, rows, greedy):
    """Jitted `(params, mean, chol, latent_key, value_key, first_block, temperature) -> (z, voices)`
    for `rows` samples z = mean + chol @ eps; `greedy` (temperature 0) takes the argmax."""
    def fn(params, mean, chol, latent_key, value_key, first_block, temperature):
        eps = _block_noise(latent_key, first_block, rows // BLOCK,
                           lambda k: jax.random.normal(k, (BLOCK, model_cfg.latent)))
        z = jax.lax.with_sharding_constraint(mean + eps @ chol.T, _shardings()[0])  # (rows, Z)
        return z, _decode_voices(model_cfg, params, z, value_key, first_block, temperature, greedy)
    return jax.jit(fn)


@functools.lru_cache(maxsize=None)
def _decode_fn(model_cfg, greedy):
    """Jitted `(params, z, value_key, first_block, temperature) -> voices`."""
    def fn(params, z_BxZ, value_key, first_block, temperature):
        return _decode_voices(model_cfg, params, z_BxZ, value_key, first_block, temperature, greedy)
    return jax.jit(fn)


@functools.lru_cache(maxsize=None)
def _encode_fn(model_cfg):
    """Jitted `(params, x, key, first_block, spread) -> dict(mu, sigma, z0, zk)`, eps = spread * noise."""
    vae = VAE(model_cfg)

    def fn(params, x_BxN, key, first_block, spread):
        eps = _block_noise(key, first_block, x_BxN.shape[0] // BLOCK,
                           lambda k: jax.random.normal(k, (BLOCK, model_cfg.latent)))
        eps = jax.lax.with_sharding_constraint(spread * eps, _shardings()[0])
        out = vae.apply({"params": params}, x_BxN, eps, method=vae.encode)
        return {k: out[k] for k in ("mu", "sigma", "z0", "zk")}
    return jax.jit(fn)


def _replicated(params):
    return jax.device_put(params, _shardings()[1])


def _rows_on_devices(array, start, rows):
    """array[start:start + rows], zero-padded to `rows`, split over the devices."""
    part = np.asarray(array[start:start + rows])
    part = np.pad(part, ((0, rows - len(part)),) + ((0, 0),) * (part.ndim - 1))
    return jax.device_put(part, _shardings()[0])


def _stream(run, count, rows):
    """Yields `run(start)` for start = 0, rows, ... < count as numpy, cut to `count` rows in all.
    The next call is dispatched before the host waits for the current one; a caller that stops
    early (closes the generator) waits for that call, so it does not run on behind the caller."""
    pending = collections.deque()
    try:
        for start in range(0, count, rows):
            pending.append((start, run(start)))
            if len(pending) == 2:
                start_, out = pending.popleft()
                yield jax.tree.map(lambda a: np.asarray(a)[:count - start_], out)
        while pending:
            start_, out = pending.popleft()
            yield jax.tree.map(lambda a: np.asarray(a)[:count - start_], out)
    finally:
        jax.block_until_ready([out for _, out in pending])


def _check_temperature(temperature):
    """The temperature the samplers use: a finite number >= 0; one below the smallest normal
    float32 (which the device cannot divide by) is 0, the argmax, in every command."""
    temperature = float(temperature)
    if not temperature >= 0 or math.isinf(temperature):
        raise Error(f"the temperature must be a finite number >= 0, got {temperature}")
    return 0.0 if temperature < np.finfo(np.float32).tiny else temperature


def _check_voices(voices):
    voices = np.asarray(voices)
    if voices.ndim != 2 or voices.shape[1] != dx7.N_PARAMS:
        raise Error(f"expected voices of shape (n, {dx7.N_PARAMS}), got {voices.shape}")
    if voices.size and (voices.min() < 0 or voices.max() >= dx7.N_VALUES):
        raise Error("voice values must be in 0..127")
    return voices.astype(np.int32)


# Public samplers.

def sample_prior_chunks(model, count, temperature=0.0, seed=0, chunk=CHUNK, latents=False, prior=None,
                        endless=False):
    """Yields `count` voices z ~ prior -> decoder, as (<= chunk, 155) uint8 chunks (with `latents`,
    (z, voices) pairs); `endless` goes on past `count` (then only the call size). `prior`: see
    `prior_of` (default: the fitted prior when the model has one). temperature 0 is argmax, else
    softmax(logits / temperature). The same eps noise under every prior: z = mean + chol @ eps."""
    temperature = _check_temperature(temperature)
    prior = prior_of(model, prior)
    rows = _rows_per_call(count, chunk)
    fn = _prior_fn(model.config.model, rows, temperature == 0)
    params, keys, t = _replicated(model.params), _key_streams(seed), jnp.float32(temperature)
    mean, chol = (jax.device_put(jnp.asarray(a), _shardings()[1]) for a in (prior.mean, prior.chol))
    run = functools.partial(fn, params, mean, chol, keys["latent"], keys["value"])
    for z, voices in _stream(lambda s: run(s // BLOCK, t), 1 << 62 if endless else count, rows):
        yield (z, voices) if latents else voices


def sample_prior(model, count, temperature=0.0, seed=0, chunk=CHUNK, prior=None):
    """(count, 155) uint8 voices from the prior; see `sample_prior_chunks`."""
    chunks = list(sample_prior_chunks(model, count, temperature, seed, chunk, prior=prior))
    return np.concatenate(chunks) if chunks else np.zeros((0, dx7.N_PARAMS), np.uint8)


def decode(model, z, temperature=0.0, seed=0, chunk=CHUNK, first_block=0):
    """Latents (B, Z) -> voices (B, 155) uint8 numpy; argmax at temperature 0. Row r uses the
    value noise of row r + BLOCK * first_block of `sample_prior_chunks` with the same seed, so
    decoding its latents gives its voices back."""
    temperature = _check_temperature(temperature)
    z = np.asarray(z, np.float32)
    if z.ndim != 2 or z.shape[1] != model.config.model.latent:
        raise Error(f"expected latents of shape (n, {model.config.model.latent}), got {z.shape}")
    rows = _rows_per_call(len(z), chunk)
    fn, params, key = _decode_fn(model.config.model, temperature == 0), _replicated(model.params), _key_streams(seed)
    t = jnp.float32(temperature)
    out = list(_stream(lambda s: fn(params, _rows_on_devices(z, s, rows), key["value"], first_block + s // BLOCK,
                                    t), len(z), rows))
    return np.concatenate(out) if out else np.zeros((0, dx7.N_PARAMS), np.uint8)


def encode(model, voices, spread=0.0, seed=0, chunk=CHUNK):
    """Voices (n, 155) -> dict(mu, sigma, z0, zk) numpy (n, Z): the posterior N(mu, sigma), z0 =
    mu + spread * sigma * eps and its flowed z_K (spread 0: the posterior mean, what decoding uses)."""
    voices = _check_voices(voices)
    rows = _rows_per_call(len(voices), chunk)
    fn, params, key = _encode_fn(model.config.model), _replicated(model.params), _key_streams(seed)
    out = list(_stream(lambda s: fn(params, _rows_on_devices(voices, s, rows), key["posterior"], s // BLOCK,
                                    jnp.float32(spread)), len(voices), rows))
    if not out:
        return {k: np.zeros((0, model.config.model.latent), np.float32) for k in ("mu", "sigma", "z0", "zk")}
    return {k: np.concatenate([o[k] for o in out]) for k in out[0]}


def reconstruct(model, voices, chunk=CHUNK):
    """Voices -> their reconstructions: posterior mean, flowed, decoded by argmax."""
    return decode(model, encode(model, voices, chunk=chunk)["zk"], chunk=chunk)


def interpolate(model, voice_a, voice_b, steps=32, slerp=False):
    """`steps` voices from A's latent to B's (posterior mean, flowed), linear or spherical;
    the first and last are A's and B's reconstructions. Returns (voices, z)."""
    if steps < 2:
        raise Error(f"interpolation needs at least 2 steps, got {steps}")
    za, zb = encode(model, np.stack([voice_a, voice_b]))["zk"].astype(np.float64)
    t = np.linspace(0.0, 1.0, steps)[:, None]
    cos = za @ zb / max(np.linalg.norm(za) * np.linalg.norm(zb), 1e-12)
    omega = np.arccos(np.clip(cos, -1.0, 1.0))
    if slerp and np.sin(omega) > 1e-6:
        z = (np.sin((1 - t) * omega) * za + np.sin(t * omega) * zb) / np.sin(omega)
    else:
        z = (1 - t) * za + t * zb
    z = z.astype(np.float32)
    z[0], z[-1] = za, zb
    return decode(model, z), z


REDRAW_FACTOR = 16  # `variations(redraw=True)` draws at most this many times the count


def variations(model, voice, count=32, spread=1.0, seed=0, temperature=0.0, redraw=False):
    """`count` voices around `voice`'s posterior: z0 = mu + spread * sigma * eps, flowed, decoded.
    spread 0 gives the reconstruction `count` times. `redraw` replaces duplicates by further draws
    of the same seed (2, 4, ... REDRAW_FACTOR times the count, the first `count` distinct kept in
    draw order); duplicates remain only when that many draws hold fewer distinct voices."""
    if spread < 0:
        raise Error(f"the spread must be >= 0, got {spread}")

    def draw(n):
        x = np.repeat(np.asarray(voice).reshape(1, -1), n, axis=0)
        return decode(model, encode(model, x, spread=spread, seed=seed)["zk"], temperature, seed)

    voices, n = draw(count), count
    while redraw and count_distinct(voices) < count and n < REDRAW_FACTOR * count:
        n *= 2
        more = draw(n)  # its first rows are the earlier draw's: the noise of row r depends on r only
        _, first = np.unique(more, axis=0, return_index=True)
        first = np.sort(first)
        voices = more[first[:count]] if len(first) >= count else np.concatenate(
            [more[first], more[np.setdiff1d(np.arange(n), first)[:count - len(first)]]])
    return voices


def count_distinct(voices):
    """Distinct rows of (n, 155) voices."""
    return len(np.unique(np.asarray(voices), axis=0))


def clean_names(voices):
    """A copy of `voices` whose name characters outside printable ASCII (32..126) are spaces."""
    voices = np.array(voices, np.uint8)
    names = voices[:, dx7.NAME]
    names[(names < 32) | (names > 126)] = 32
    voices[:, dx7.NAME] = names
    return voices


# Voices from files, cartridges to files.

load_voice, load_voices = data.load_voice, data.load_voices  # where the commands look for them


def like_voices(specs, name=None):
    """The voices of `specs` (each a DX7 file, FILE:INDEX, DATASET.npz or DATASET.npz:SPLIT),
    valid ones only, and with `name` (a regular expression) those whose name matches it."""
    import re
    try:
        pattern = re.compile(name) if name is not None else None
    except re.error as e:
        raise Error(f"bad --name pattern {name!r}: {e}") from None
    found = []
    for spec in specs:
        _, sep, tail = spec.rpartition(":")
        voices = load_voice(spec)[None] if sep and tail.strip().isdigit() else load_voices(spec)
        found.append(np.asarray(voices, np.uint8))
    voices = np.concatenate(found) if found else np.zeros((0, dx7.N_PARAMS), np.uint8)
    voices = voices[dx7.is_valid(voices)]
    if pattern is not None:
        voices = voices[[bool(pattern.search(dx7.voice_name(v))) for v in voices]]
    if not len(voices):
        raise Error(f"no valid voices in {', '.join(specs)}" + (f" with a name matching {name!r}" if name else ""))
    return voices


LIKE_DRAWS = 16  # posterior draws per voice for a --like density


def like_prior(model, voices, seed=0):
    """The density of `voices`' latents (`fit_training_prior` with LIKE_DRAWS draws each and a
    LIKE_FLOOR std floor): new voices in their neighbourhood."""
    return fit_training_prior(model, voices, LIKE_DRAWS, LIKE_FLOOR, "like", seed)


def cartridge_paths(out, count):
    """`out` itself for one cartridge, else out_001.syx, out_002.syx, ..."""
    out = Path(out)
    if count == 1:
        return [out]
    width = max(3, len(str(count)))
    return [out.with_name(f"{out.stem}_{i:0{width}d}{out.suffix or '.syx'}") for i in range(1, count + 1)]


def save_voices(out, voices):
    """Writes voices as cartridges in one file, padding to a multiple of 32 by repeating the
    last voice. Returns the number of voices written."""
    voices = clean_names(voices)
    pad = -len(voices) % 32
    voices = np.concatenate([voices, np.repeat(voices[-1:], pad, axis=0)])
    dx7.save_cartridge(out, voices)
    return len(voices)


class Cartridge(NamedTuple):
    """32 voices as `generate` writes them, their latents, and how many candidates were redrawn."""
    z: np.ndarray  # (32, Z) float32
    voices: np.ndarray  # (32, 155) uint8, named
    redrawn: dict  # {"silent": n, "duplicate": n, "training_copy": n}
    rows: np.ndarray  # (32,) each voice's row in the seed's sample stream (its value noise)
    kept: dict  # voices kept although they would be redrawn, by reason (only after MAX_CANDIDATES)


@functools.lru_cache(maxsize=None)
def _name_log_p_fn(model_cfg):
    """Jitted `(params, z) -> (B, 10, 128)` log probabilities of the name values at latent z."""
    return jax.jit(lambda params, z: jax.nn.log_softmax(decode_logits(model_cfg, params, z)[:, dx7.NAME], -1))


def name_voices(model, z, voices):
    """`voices` renamed by `names.name_voices` from their latents `z` (names distinct in order);
    unchanged (printable names) when the model holds no name statistics."""
    if model.training is None or "name_trigrams" not in model.training:
        return clean_names(voices)
    log_p = np.asarray(_name_log_p_fn(model.config.model)(model.params, jnp.asarray(z, jnp.float32)))
    return names.name_voices(voices, log_p, names.log_probabilities(model.training["name_trigrams"]))


MAX_CANDIDATES = 64 * 32  # candidates one cartridge may skip; then it keeps what comes (`cartridges`)


def cartridges(model, count=1, temperature=0.0, seed=0, prior=None, allow_silent=False, chunk=CHUNK):
    """Yields `count` Cartridges drawn from `prior` (`prior_of`) in the order of the seed's
    sample stream: a candidate voice is skipped ("redrawn") when `dx7.estimated_silent` calls
    it silent (unless `allow_silent`), when an earlier voice of this call has the same 145
    non-name values, or when a training voice does (the model's `training` facts). Cartridge i
    depends only on the seed, the prior and the temperature, not on the count or the devices.
    A model that cannot (its argmax voices repeat: a tiny or barely trained model) gets, once a
    cartridge has skipped MAX_CANDIDATES, the next candidates as they come, counted in `kept`."""
    if count < 1:
        raise Error(f"the cartridge count must be positive, got {count}")
    keys = model.training["voice_keys"] if model.training is not None else np.zeros(0, np.uint64)
    seen, redrawn, kept_anyway = set(), dict(silent=0, duplicate=0, training_copy=0), {}
    zs, kept, rows, start = [], [], [], 0
    stream = sample_prior_chunks(model, 64 * count, temperature, seed, chunk, latents=True, prior=prior,
                                 endless=True)
    try:
        for z, voices in stream:
            silent = np.zeros(len(voices), bool) if allow_silent else dx7.estimated_silent(voices)
            key = row_keys(voices[:, dx7.NON_NAME])[:, 0]
            copy = np.isin(key, keys)
            for i in range(len(voices)):
                reason = ("silent" if silent[i] else "duplicate" if int(key[i]) in seen
                          else "training_copy" if copy[i] else None)
                if reason and sum(redrawn.values()) < MAX_CANDIDATES:
                    redrawn[reason] += 1
                    continue
                if reason:
                    kept_anyway[reason] = kept_anyway.get(reason, 0) + 1
                seen.add(int(key[i]))
                zs.append(z[i])
                kept.append(voices[i])
                rows.append(start + i)
                if len(kept) == 32:
                    z32 = np.stack(zs)
                    yield Cartridge(z32, name_voices(model, z32, np.stack(kept)), dict(redrawn), np.array(rows),
                                    kept_anyway)
                    redrawn, kept_anyway = dict.fromkeys(redrawn, 0), {}
                    zs, kept, rows = [], [], []
                    count -= 1
                    if not count:
                        return
            start += len(voices)
    finally:
        stream.close()


def generate_cartridges(model, out, count=1, temperature=0.0, seed=0, chunk=CHUNK, prior=None,
                        allow_silent=False):
    """Writes `count` `cartridges` (see `cartridge_paths`), each as soon as it is complete.
    Yields (path, Cartridge) per cartridge."""
    if count < 1:
        raise Error(f"the cartridge count must be positive, got {count}")
    paths = cartridge_paths(out, count)
    for path, cart in zip(paths, cartridges(model, count, temperature, seed, prior, allow_silent, chunk)):
        dx7.save_cartridge(path, cart.voices)
        yield path, cart


def training_facts(voices):
    """What a model keeps of its training voices, none of them itself: `value_counts` (155, 128)
    int32 (the marginal baseline), `voice_keys` (sorted 64-bit keys of the 145 non-name values:
    generation rejects copies by them) and `name_trigrams` (`names.trigram_counts`)."""
    voices = np.asarray(voices, np.uint8)
    return dict(value_counts=value_counts(voices).astype(np.int32),
                voice_keys=np.unique(row_keys(voices[:, dx7.NON_NAME])[:, 0]),
                name_trigrams=names.trigram_counts(voices), count=np.int64(len(voices)))


_FACTS = dict(value_counts=((dx7.N_PARAMS, dx7.N_VALUES), np.int32), voice_keys=((None,), np.uint64),
              name_trigrams=((None, 4), np.int32), count=((), np.int64))


def load_training_facts(path):
    """The `training_facts` stored at `path` (checked: shapes, types, symbol ranges)."""
    try:
        with np.load(path, allow_pickle=False) as npz:
            facts = {k: npz[k] for k in npz.files}
    except (OSError, ValueError, EOFError) as e:
        raise Error(f"{path}: not a training-facts .npz ({e}); run `neuraldx7 features` again") from None
    for name, (shape, dtype) in _FACTS.items():
        a = facts.get(name)
        if (a is None or a.dtype != dtype or a.ndim != len(shape)
                or any(want is not None and got != want for got, want in zip(a.shape, shape))):
            raise Error(f"{path}: no {name} array of shape {shape} and type {np.dtype(dtype)}; "
                        "run `neuraldx7 features` again")
    tri = facts["name_trigrams"]
    if len(tri) and (tri[:, :2].min() < 0 or tri[:, :2].max() > names.START or tri[:, 2].min() < 0
                     or tri[:, 2].max() >= names.SYMBOLS or tri[:, 3].min() < 0):
        raise Error(f"{path}: name_trigrams out of range; run `neuraldx7 features` again")
    return facts


# Uniqueness and novelty: exact, streaming.

_HASH = np.random.PCG64(0x0D37).random_raw((dx7.N_PARAMS, 2)).astype(np.uint64)  # fixed random multipliers


def row_keys(rows):
    """(n, k <= 155) uint8 -> (n, 2) uint64: sum_i row_i * r_i mod 2^64 with random r_i, twice.
    Distinct rows share a key with probability <= 2^-116 (their difference is < 128 per value)."""
    rows = np.asarray(rows, np.uint8)
    return rows.astype(np.uint64) @ _HASH[:rows.shape[1]]


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
        keys = _unique_keys(row_keys(rows))
        self._pending.append(keys)
        self._n_pending += len(keys)
        if self._n_pending >= max(len(self._keys), self._merge_at):
            self._merge()

    def _merge(self):
        if self._pending:
            self._keys = _unique_keys(np.concatenate([self._keys, *self._pending]))
            self._pending, self._n_pending = [], 0

    def __len__(self):
        self._merge()
        return len(self._keys)


class RowSet:
    """Exact membership in a fixed set of rows (e.g. the training voices): a 64-bit key finds
    the candidates, comparing the rows themselves decides."""

    def __init__(self, rows):
        rows = np.ascontiguousarray(rows, np.uint8)
        width = rows.shape[1]
        rows = np.unique(rows.view(np.dtype((np.void, width)))[:, 0]).view(np.uint8).reshape(-1, width)
        keys = row_keys(rows)[:, 0]
        order = np.argsort(keys, kind="stable")
        self._keys, self._rows = keys[order], rows[order]

    def __len__(self):
        return len(self._rows)

    def contains(self, rows):
        """(n, k) -> (n,) bool: whether each row is in the set."""
        rows = np.asarray(rows, np.uint8)
        keys = row_keys(rows)[:, 0]
        lo = np.searchsorted(self._keys, keys, "left")
        hi = np.searchsorted(self._keys, keys, "right")
        found = np.zeros(len(rows), bool)
        candidates = np.flatnonzero(lo < hi)
        found[candidates] = np.all(self._rows[lo[candidates]] == rows[candidates], axis=1)
        for i in candidates[(hi[candidates] - lo[candidates] > 1) & ~found[candidates]]:
            found[i] = np.any(np.all(self._rows[lo[i]:hi[i]] == rows[i], axis=1))  # 64-bit key collision
        return found


def count_uniqueness(chunks, training=None, training_keys=None):
    """Uniqueness of a stream of (n, 155) voice chunks: samples, distinct (over the 155 values),
    valid, estimated audible (`dx7.estimated_silent`), and given the training voices, novel (no
    training voice equal on the 145 non-name values) and training_copies (equal on all 155);
    given only their `training_keys` (`training_facts`), novel. Fractions are of the samples."""
    distinct = DistinctCounter()
    same_params = RowSet(training[:, dx7.NON_NAME]) if training is not None else None
    same_voice = RowSet(training) if training is not None else None
    n = valid = novel = copies = audible = 0
    for voices in chunks:
        n += len(voices)
        valid += int(dx7.is_valid(voices).sum())
        audible += int((~dx7.estimated_silent(voices)).sum())
        distinct.add(voices)
        if training is not None:
            novel += int((~same_params.contains(voices[:, dx7.NON_NAME])).sum())
            copies += int(same_voice.contains(voices).sum())
        elif training_keys is not None:
            novel += int((~np.isin(row_keys(voices[:, dx7.NON_NAME])[:, 0], training_keys)).sum())
    d = len(distinct)
    knows_novelty = training is not None or training_keys is not None
    return dict(samples=n, distinct=d, unique_fraction=d / n if n else None,
                valid_fraction=valid / n if n else None,
                estimated_audible_fraction=audible / n if n else None,
                novel=novel if knows_novelty else None,
                novel_fraction=novel / n if n and knows_novelty else None,
                training_copies=copies if training is not None else None)


def training_voices(model, data_path=None):
    """(train voices or None, dataset path, why None): the checkpoint's training set, or `data_path`'s."""
    path = data_path or dataset_of(model)
    if path is None:
        return None, None, "the checkpoint names no dataset; pass --data"
    if data_path is None and not Path(path).is_file():
        return None, path, f"the checkpoint's dataset {path} is not found; pass --data"
    return data.load_dataset(path)["train"], path, None


def duplicates_study(model, samples, chunk=CHUNK, temperature=0.0, seed=0, training=None, progress=True,
                     prior=None):
    """The original's uniqueness study: `samples` voices drawn from `prior` (`prior_of`) and
    counted by `count_uniqueness` (novelty against `training` voices, or else the training keys
    stored with the model), plus timing (`throughput` in samples/s, compilation excluded)."""
    if samples < 1:
        raise Error(f"the sample count must be positive, got {samples}")
    chunk = default_chunk() if chunk is None else chunk
    prior = prior_of(model, prior)
    t0 = time.perf_counter()
    next(sample_prior_chunks(model, min(samples, chunk), temperature, seed, chunk, prior=prior))  # compiles
    compile_s = time.perf_counter() - t0
    bar = tqdm(total=samples, unit="voice", disable=not progress, dynamic_ncols=True, leave=False)

    def chunks():
        for voices in sample_prior_chunks(model, samples, temperature, seed, chunk, prior=prior):
            yield voices
            bar.update(len(voices))

    keys = model.training["voice_keys"] if training is None and model.training is not None else None
    t0 = time.perf_counter()
    stats = count_uniqueness(chunks(), training, keys)
    seconds = time.perf_counter() - t0
    bar.close()
    return dict(stats, throughput=samples / seconds, seconds=seconds, compile_seconds=compile_s,
                temperature=float(temperature), seed=seed, devices=jax.device_count(), prior=prior.name)


# Evaluation and latent features.

def value_counts(voices):
    """(155, 128) int64: how often each value of each parameter occurs in `voices`."""
    flat = (np.arange(dx7.N_PARAMS) * dx7.N_VALUES + np.asarray(voices, np.int64)).ravel()
    return np.bincount(flat, minlength=dx7.N_PARAMS * dx7.N_VALUES).reshape(dx7.N_PARAMS, dx7.N_VALUES)


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
    a, b = value_counts(voices), value_counts(reference)
    return 0.5 * np.abs(a / max(len(voices), 1) - b / max(len(reference), 1)).sum(-1)


def nearest_distances(voices, others, chunk=64):
    """(n,) the Hamming distance over the 145 non-name values from each voice to the nearest of
    `others` (0: a copy of one of them)."""
    a, b = np.asarray(voices)[:, dx7.NON_NAME], np.asarray(others)[:, dx7.NON_NAME]
    return np.concatenate([(a[i:i + chunk, None] != b[None]).sum(-1).min(1) for i in range(0, len(a), chunk)]
                          or [np.zeros(0, np.int64)])


def evaluate_voices(model, voices, training=None, reference=None):
    """Validity of each voice and, over the valid ones: the model's reconstruction accuracy
    (posterior mean, argmax), CE and -ELBO per parameter (nats; `train.evaluate`), beside the
    per-parameter marginal baseline of `training` voices (default: the value counts stored with
    the model; None without either); the estimated audible fraction (`dx7.estimated_silent`);
    the names (`names.name_figures`, distinct names per 32-voice cartridge); given `training`
    voices, the median distance to the nearest of them (`nearest_distances`); and given
    `reference` voices, the mean marginal TV over the 145 non-name parameters and the algorithm's."""
    voices = _check_voices(voices).astype(np.uint8)
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
    report["model"] = dict(reconstruction_accuracy=float((reconstruct(model, good) == good).mean()),
                           ce_per_param=figures["ce"], neg_elbo_per_param=figures["neg_elbo_per_param"],
                           kl_per_dim=figures["kl"])
    counts = value_counts(training) if training is not None else (
        model.training["value_counts"] if model.training is not None else None)
    if counts is not None:
        report["baseline"] = baseline_figures(marginal_baseline(counts), good)
    report["estimated_audible_fraction"] = float(1 - dx7.estimated_silent(good).mean())
    carts = [names.name_figures(voices[i:i + 32])["distinct_names"] for i in range(0, len(voices) - 31, 32)]
    report["names"] = dict(names.name_figures(voices), distinct_names_per_cartridge=(
        float(np.mean(carts)) if carts else None))
    if training is not None and len(training):
        report["nearest_training_distance_median"] = float(np.median(nearest_distances(good, training)))
    if reference is not None and len(reference):
        tv = marginal_tv(good, reference)
        report["marginal_tv"] = dict(mean=float(tv[dx7.NON_NAME].mean()), algorithm=float(tv[dx7.ALG]),
                                     reference_voices=len(reference))
    return report


def compute_features(model, voices, chunk=CHUNK):
    """Posterior of every voice, dict(mu, sigma, zk) (n, Z), and the per-dimension mean and std
    of zk, the flowed posterior mean: the decoder's input space, which live control spans."""
    post = encode(model, voices, chunk=chunk)
    return dict(mu=post["mu"], sigma=post["sigma"], zk=post["zk"],
                mean=post["zk"].mean(0), std=post["zk"].std(0))


PRIOR_DRAWS = 1  # posterior draws per training voice that the fitted prior is fitted to


def fit_training_prior(model, voices, draws=PRIOR_DRAWS, floor=0.0, name="fitted", seed=0):
    """`fit_prior` to `draws` posterior draws of each of `voices`, flowed: z_K = flow(mu + sigma
    eps), the latents the decoder saw in training (the aggregate posterior)."""
    voices = _check_voices(voices)
    if not len(voices):
        raise Error("no voices to fit a prior to")
    z = encode(model, np.repeat(voices, draws, axis=0), spread=1.0, seed=seed)["zk"]
    return fit_prior(z, floor, name)


def dataset_of(model):
    """The path of the dataset the model was trained on, as its checkpoint records it, or None."""
    return (model.meta.get("dataset") or {}).get("path")


def write_features(model, data_path=None, out=None, chunk=CHUNK):
    """What the model needs of its data, stored beside its checkpoints: features.json (the
    per-dimension mean and std of every voice's zk, for live control's ranges; the fitted prior)
    and training.npz (`training_facts`). The training voices are the `train` split of a dataset
    .npz (`data_path`, default: the checkpoint's dataset) or all voices of a DX7 file; the
    summary covers both splits. `out` (optional) gets the per-voice arrays. Returns the summary."""
    data_path = data_path or dataset_of(model)
    if data_path is None:
        raise Error("the checkpoint names no dataset; pass --data")
    voices = load_voices(str(data_path))
    training = load_voices(f"{data_path}:train") if str(data_path).lower().endswith(".npz") else voices
    if not len(voices) or not len(training):
        raise Error(f"{data_path}: no voices")
    feats = compute_features(model, voices, chunk)
    if out is not None:
        buffer = io.BytesIO()
        np.savez(buffer, voices=voices, **feats)
        dx7.write_atomic(out, buffer.getvalue())
    prior = fit_training_prior(model, training)
    cov = prior.chol.astype(np.float64) @ prior.chol.T.astype(np.float64)
    summary = dict(mean=feats["mean"].tolist(), std=feats["std"].tolist(), dataset=Path(data_path).name,
                   count=len(voices), prior=dict(mean=prior.mean.tolist(), cov=cov.tolist(),
                                                 voices=len(training), draws=PRIOR_DRAWS))
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **training_facts(training))
    dx7.write_atomic(training_path(model.path), buffer.getvalue())
    dx7.write_atomic(features_path(model.path), json.dumps(summary, indent=1).encode())
    return summary
