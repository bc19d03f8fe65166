"""Jitted samplers: prior draws (from a `priors.Prior`), decoding
latents, encoding voices, interpolation, variations, mutants. `cartridges` makes and writes
cartridges from them.

Every batched sampler runs fixed-size batches sharded over this process's devices
(`devices.shardings`) and streams them to the host one batch behind the device, so memory stays
bounded whatever the count. Noise is drawn in blocks of BLOCK rows, block i from
`fold_in(key, i)` in one call, so a seed gives the same voices whatever the batch size and the
number of devices, and the first n voices of a longer request are the n voices of a shorter one.
"""
import collections
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

from neuraldx7_jax import data, devices, dx7, priors
from neuraldx7_jax.config import DECODE_PASSES, LIVE_PASSES, MUTATE_AMOUNT, REDRAW_FACTOR, check_seed
from neuraldx7_jax.errors import Error
from neuraldx7_jax.model import VAE

BLOCK = 32  # rows per noise block (one cartridge); block i draws from fold_in(key, i)

PIECE_BYTES = 4 << 20


def piece_rows(model_cfg):
    """Rows per piece on a CPU for this width."""
    return max(1, PIECE_BYTES // (dx7.N_PARAMS * 3 * model_cfg.features * 4))


def decode_logits(model_cfg, params, z_BxZ, x_BxN=None, hidden_BxN=None):
    """Latent (and, masked decoder, the values of `x_BxN` where `hidden_BxN` is False; None: z
    alone) -> (B, N, V) logits with out-of-range values masked."""
    vae = VAE(model_cfg)
    return vae.apply({"params": params}, z_BxZ, x_BxN, hidden_BxN, method=vae.decode)


def unmask(model_cfg, params, z_BxZ, x_BxN, hidden_BxN, u_BxN, order_BxN, temperature, passes):
    """The masked decoder's voices: the hidden values of `x_BxN` drawn in `passes` passes of the
    decoder, each pass fixing a share of those still hidden that grows on a cosine schedule
    (MaskGIT's: few at first, while little is known), every value drawn given z and the values
    fixed before its pass. At a temperature (`u_BxN` uniforms, `_pick`) they are fixed in a random
    order (`order_BxN`: one pass per value would be an exact any-order draw); by argmax (`u_BxN`
    None), most confident first, so a latent decodes to one voice."""
    hidden0 = hidden_BxN
    total = hidden0.sum(-1, keepdims=True)
    rank = jnp.argsort(jnp.argsort(jnp.where(hidden0, order_BxN, 2.0), -1), -1)  # hidden first

    def one_pass(p, carry):
        x, hidden = carry
        logits = decode_logits(model_cfg, params, z_BxZ, x, hidden)
        values = _pick(logits, u_BxN, temperature).astype(x.dtype)
        done = total - jnp.ceil(total * jnp.cos(0.5 * jnp.pi * (p + 1) / passes)).astype(total.dtype)
        if u_BxN is None:  # the most confident hidden values first
            score = jnp.where(hidden, jax.nn.log_softmax(logits, -1).max(-1), -jnp.inf)
            order = jnp.argsort(jnp.argsort(-score, -1), -1)
            fix = hidden & (order < done - (total - hidden.sum(-1, keepdims=True)))
        else:
            fix = hidden & (rank < done)
        return jnp.where(fix, values, x), hidden & ~fix

    x, _ = jax.lax.fori_loop(0, passes, one_pass, (x_BxN, hidden0))
    return x.astype(jnp.uint8)


def make_decoder(model_cfg, passes=LIVE_PASSES):
    """Jitted `(params, z) -> voices (B, 155) uint8` by argmax (the masked decoder in `passes`
    passes): what live control calls."""
    return jax.jit(lambda params, z: _voices(model_cfg, params, z, None, None, 0.0, passes))


def _voices(model_cfg, params, z_BxZ, u_BxN, order_BxN, temperature, passes):
    """Latents -> voices (B, 155) uint8: argmax when `u_BxN` is None, else drawn at `temperature`."""
    if model_cfg.decoder != "masked":
        return _pick(decode_logits(model_cfg, params, z_BxZ), u_BxN, temperature)
    x = jnp.zeros((z_BxZ.shape[0], dx7.N_PARAMS), jnp.int32)
    hidden = jnp.ones(x.shape, bool)
    order = jnp.zeros(x.shape) if order_BxN is None else order_BxN
    return unmask(model_cfg, params, z_BxZ, x, hidden, u_BxN, order, temperature, passes)


def default_batch():
    """Rows per device call when none is given: 256 on CPU (faster than larger calls there), 4096
    on accelerators."""
    return 256 if jax.default_backend() == "cpu" else 4096


def _rows_per_call(count, batch):
    """Rows of one device call: a multiple of BLOCK and of the device count, `batch` rounded up,
    or for fewer voices the power-of-two multiple that holds them (few shapes, few compilations)."""
    batch = default_batch() if batch is None else batch
    if batch < 1:
        raise Error(f"the batch size must be positive, got {batch}")
    step = math.lcm(BLOCK, jax.local_device_count())
    most = -(-batch // step) * step
    return min(most, step * 2 ** math.ceil(math.log2(max(1, -(-count // step)))))


def _key_streams(seed):
    """Independent keys by purpose: prior latents, value sampling, posterior noise."""
    check_seed(seed)
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
    return jnp.minimum(value, jnp.asarray(dx7.MAX, value.dtype)[None]).astype(jnp.uint8)


def _decode_voices(model_cfg, params, z_BxZ, value_key, first_block, temperature, greedy):
    """Latents -> voices, decoded `piece_rows` rows per device at a time on a CPU (`lax.map`: a
    piece's working set stays in cache, faster than whole 1,024-row calls: docs/performance.md), all at once
    elsewhere."""
    u_BxN = order_BxN = None
    if not greedy:
        u_BxN = _block_noise(value_key, first_block, z_BxZ.shape[0] // BLOCK,
                             lambda k: jax.random.uniform(k, (BLOCK, dx7.N_PARAMS)))
        u_BxN = jax.lax.with_sharding_constraint(u_BxN, devices.shardings()[0])
        if model_cfg.decoder == "masked":
            order_BxN = _block_noise(value_key, first_block, z_BxZ.shape[0] // BLOCK,
                                     lambda k: jax.random.uniform(jax.random.fold_in(k, 1), (BLOCK, dx7.N_PARAMS)))
            order_BxN = jax.lax.with_sharding_constraint(order_BxN, devices.shardings()[0])
    per_device = z_BxZ.shape[0] // jax.local_device_count()
    k = devices.pieces(per_device, piece_rows(model_cfg) if jax.default_backend() == "cpu" else per_device)
    parts = tuple(None if a is None else devices.split_rows(a, k) for a in (z_BxZ, u_BxN, order_BxN))
    voices = jax.lax.map(lambda p: _voices(model_cfg, params, *p, temperature, DECODE_PASSES), parts)
    return devices.join_rows(voices)


@functools.lru_cache(maxsize=None)
def _prior_fn(model_cfg, rows, greedy):
    """Jitted `(params, cdf, means, chols, latent_key, value_key, first_block, temperature) -> (z,
    voices)` for `rows` samples z = means[c] + chols[c] @ eps of a mixture (`priors.Prior`; `cdf`:
    its cumulative weights), the component c drawn from its own uniform noise by inverting the CDF
    (one log K search per row, whatever K; one component: the eps alone decide); `greedy`
    (temperature 0) takes the argmax."""
    def fn(params, cdf, means, chols, latent_key, value_key, first_block, temperature):
        eps = _block_noise(latent_key, first_block, rows // BLOCK,
                           lambda k: jax.random.normal(k, (BLOCK, model_cfg.latent)))
        u = _block_noise(jax.random.split(latent_key)[0], first_block, rows // BLOCK,
                         lambda k: jax.random.uniform(k, (BLOCK,)))
        c = jnp.minimum(jnp.searchsorted(cdf, u * cdf[-1], side="right"), cdf.shape[0] - 1)
        z = means[c] + jnp.einsum("bj,bij->bi", eps, chols[c % chols.shape[0]])
        z = jax.lax.with_sharding_constraint(z, devices.shardings()[0])  # (rows, Z)
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
        eps = jax.lax.with_sharding_constraint(spread * eps, devices.shardings()[0])
        out = vae.apply({"params": params}, x_BxN, eps, method=vae.encode)
        return {k: out[k] for k in ("mu", "sigma", "z0", "zk")}
    return jax.jit(fn)


def _replicated(params):
    return jax.device_put(params, devices.shardings()[1])


def _rows_on_devices(array, start, rows):
    """array[start:start + rows], zero-padded to `rows`, split over the devices."""
    part = np.asarray(array[start:start + rows])
    part = np.pad(part, ((0, rows - len(part)),) + ((0, 0),) * (part.ndim - 1))
    return jax.device_put(part, devices.shardings()[0])


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


def sample_prior_chunks(model, count, *, temperature=0.0, seed=0, batch=None, latents=False, prior=None,
                        endless=False, first_block=0):
    """Yields `count` voices z ~ prior -> decoder, as (<= batch, 155) uint8 chunks (with `latents`,
    (z, voices) pairs); `endless` goes on past `count` (then only the call size). `prior`: see
    `priors.prior_of` (default: the posterior prior when the model has one). temperature 0 is argmax, else
    softmax(logits / temperature). The same eps noise under every prior: z = mean + chol @ eps
    (of the drawn component, for a mixture). `first_block` starts the stream at row BLOCK *
    first_block of the seed's (a process's share)."""
    temperature = _check_temperature(temperature)
    prior = priors.prior_of(model, prior)
    rows = _rows_per_call(count, batch)
    fn = _prior_fn(model.config.model, rows, temperature == 0)
    params, keys, t = _replicated(model.params), _key_streams(seed), jnp.float32(temperature)
    mixture = (np.cumsum(prior.weights, dtype=np.float64), prior.means, prior.chols)
    run = functools.partial(fn, params, *(jax.device_put(jnp.asarray(a, jnp.float32), devices.shardings()[1])
                                          for a in mixture), keys["latent"], keys["value"])
    for z, voices in _stream(lambda s: run(first_block + s // BLOCK, t), 1 << 62 if endless else count, rows):
        yield (z, voices) if latents else voices


def sample_prior(model, count, *, temperature=0.0, seed=0, batch=None, prior=None):
    """(count, 155) uint8 voices from the prior; see `sample_prior_chunks`."""
    chunks = list(sample_prior_chunks(model, count, temperature=temperature, seed=seed, batch=batch, prior=prior))
    return np.concatenate(chunks) if chunks else np.zeros((0, dx7.N_PARAMS), np.uint8)


def decode(model, z, *, temperature=0.0, seed=0, batch=None, first_block=0):
    """Latents (B, Z) -> voices (B, 155) uint8 numpy; argmax at temperature 0. Row r uses the
    value noise of row r + BLOCK * first_block of `sample_prior_chunks` with the same seed, so
    decoding its latents gives its voices back."""
    temperature = _check_temperature(temperature)
    z = np.asarray(z, np.float32)
    if z.ndim != 2 or z.shape[1] != model.config.model.latent:
        raise Error(f"expected latents of shape (n, {model.config.model.latent}), got {z.shape}")
    rows = _rows_per_call(len(z), batch)
    fn, params, key = _decode_fn(model.config.model, temperature == 0), _replicated(model.params), _key_streams(seed)
    t = jnp.float32(temperature)
    out = list(_stream(lambda s: fn(params, _rows_on_devices(z, s, rows), key["value"], first_block + s // BLOCK,
                                    t), len(z), rows))
    return np.concatenate(out) if out else np.zeros((0, dx7.N_PARAMS), np.uint8)


def encode(model, voices, *, spread=0.0, seed=0, batch=None):
    """Voices (n, 155) -> dict(mu, sigma, z0, zk) numpy (n, Z): the posterior N(mu, sigma), z0 =
    mu + spread * sigma * eps and its flowed z_K (spread 0: the posterior mean, what decoding uses)."""
    voices = dx7.check_voices(voices).astype(np.int32)
    rows = _rows_per_call(len(voices), batch)
    fn, params, key = _encode_fn(model.config.model), _replicated(model.params), _key_streams(seed)
    out = list(_stream(lambda s: fn(params, _rows_on_devices(voices, s, rows), key["posterior"], s // BLOCK,
                                    jnp.float32(spread)), len(voices), rows))
    if not out:
        return {k: np.zeros((0, model.config.model.latent), np.float32) for k in ("mu", "sigma", "z0", "zk")}
    return {k: np.concatenate([o[k] for o in out]) for k in out[0]}


def training_latents(model, voices, *, draws=priors.PRIOR_DRAWS, seed=0):
    """(n * draws, Z) posterior draws of each of `voices`, flowed: z_K = flow(mu + sigma eps), the
    latents the decoder saw in training (the aggregate posterior)."""
    voices = dx7.check_voices(voices).astype(np.int32)
    if not len(voices):
        raise Error("no voices to fit a prior to")
    return encode(model, np.repeat(voices, draws, axis=0), spread=1.0, seed=seed)["zk"]


def like_prior(model, voices, *, seed=0):
    """The Gaussian density of `voices`' latents (`training_latents`, `priors.LIKE_DRAWS` draws each,
    with a `priors.LIKE_FLOOR` std floor): new voices in their neighbourhood."""
    return priors.fit_prior(training_latents(model, voices, draws=priors.LIKE_DRAWS, seed=seed),
                            floor=priors.LIKE_FLOOR, name="like")


def reconstruct(model, voices, *, batch=None):
    """Voices -> their reconstructions: posterior mean, flowed, decoded by argmax."""
    return decode(model, encode(model, voices, batch=batch)["zk"], batch=batch)


def interpolate(model, voice_a, voice_b, *, steps=32, slerp=False):
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


def variations(model, voice, *, count=32, spread=1.0, seed=0, temperature=0.0, redraw=False):
    """`count` voices around `voice`'s posterior: z0 = mu + spread * sigma * eps, flowed, decoded.
    spread 0 gives the reconstruction `count` times. `redraw` replaces duplicates by further draws
    of the same seed (2, 4, ... REDRAW_FACTOR times the count, the first `count` distinct kept in
    draw order); duplicates remain only when that many draws hold fewer distinct voices."""
    if spread < 0:
        raise Error(f"the spread must be >= 0, got {spread}")

    def draw(n):
        x = np.repeat(np.asarray(voice).reshape(1, -1), n, axis=0)
        return decode(model, encode(model, x, spread=spread, seed=seed)["zk"], temperature=temperature, seed=seed)

    voices, n = draw(count), count
    while redraw and data.count_distinct(voices) < count and n < REDRAW_FACTOR * count:
        n *= 2
        more = draw(n)  # its first rows are the earlier draw's: the noise of row r depends on r only
        _, first = np.unique(more[:, dx7.NON_NAME], axis=0, return_index=True)  # distinct sounds
        first = np.sort(first)
        voices = more[first[:count]] if len(first) >= count else np.concatenate(
            [more[first], more[np.setdiff1d(np.arange(n), first)[:count - len(first)]]])
    return voices


@functools.lru_cache(maxsize=None)
def _mutate_fn(model_cfg, rows):
    """Jitted `(params, x, z, mutable, share, key, first_block) -> voices`: each row's mutable
    values hidden with probability `share` (at least one), then drawn at temperature 1 given z and
    the rest (the masked decoder, `unmask`; the independent decoder draws them from z alone)."""
    def fn(params, x_BxN, z_BxZ, mutable_BxN, share_B, key, first_block):
        noise = _block_noise(key, first_block, rows // BLOCK, lambda k: jax.random.uniform(k, (BLOCK, 3, dx7.N_PARAMS)))
        h, u, order = noise[:, 0], noise[:, 1], noise[:, 2]
        h = jnp.where(mutable_BxN, h, 2.0)
        hidden = (h < share_B[:, None]) | (h <= h.min(-1, keepdims=True))
        x = x_BxN.astype(jnp.int32)
        if model_cfg.decoder != "masked":
            return jnp.where(hidden, _pick(decode_logits(model_cfg, params, z_BxZ), u, 1.0), x).astype(jnp.uint8)
        return unmask(model_cfg, params, z_BxZ, x, hidden, u, order, 1.0, DECODE_PASSES)
    return jax.jit(fn)


MUTATION_ROWS = 64  # mutants drawn per call (a multiple of BLOCK)
MUTATION_DRAWS = 16  # draws per wanted mutant before `mutate` gives up on distinct ones


def mutate(model, voices, *, amount=MUTATE_AMOUNT, keep=(), count=32, seed=0):
    """`count` mutants of each of `voices` (n, 155): about `amount` of each voice's 145 non-name
    values redrawn given the others and the voice's latent (posterior mean, flowed); the values of
    the `keep` groups (`dx7.GROUPS`) and the name never. The share redrawn is set per voice (from a
    first draw) so that on average the share that changes is `amount`: a redrawn value may come
    out as it was. Each voice's mutants differ from it and from each other on the 145 values
    (further draws replace repeats, at most MUTATION_DRAWS per mutant). Returns (mutants
    (n, count, 155), the share of non-name values each changed (n, count))."""
    if not 0.0 < amount <= 1.0:
        raise Error(f"the amount must be in (0, 1], got {amount}")
    voices = dx7.check_voices(voices)
    mutable = ~dx7.group_mask((*keep, "name"))
    if not mutable.any():
        raise Error("--keep holds every group: nothing is left to mutate")
    z = encode(model, voices)["zk"]
    fn, params, key = _mutate_fn(model.config.model, MUTATION_ROWS), _replicated(model.params), _key_streams(seed)
    calls = 1 + -(-MUTATION_DRAWS * count // MUTATION_ROWS)  # per voice, the first calibrates

    def draw(i, share, call):
        rows = (voices[i], z[i], mutable, np.float32(share))
        args = (jax.device_put(np.repeat(np.asarray(a)[None], MUTATION_ROWS, axis=0), devices.shardings()[0]) for a in rows)
        return np.asarray(fn(params, *args, key["value"], (i * calls + call) * (MUTATION_ROWS // BLOCK)))

    def changed(mutants, i):
        return (mutants[:, dx7.NON_NAME] != voices[i, dx7.NON_NAME]).mean(-1)

    all_mutants, all_changed = [], []
    for i in range(len(voices)):
        share = min(1.0, amount * dx7.NON_NAME.stop / mutable[dx7.NON_NAME].sum())
        share = min(1.0, share * amount / max(changed(draw(i, share, 0), i).mean(), 1e-3))
        seen, kept = {voices[i, dx7.NON_NAME].tobytes()}, []
        for call in range(1, calls):
            for v in draw(i, share, call):
                if len(kept) < count and v[dx7.NON_NAME].tobytes() not in seen:
                    seen.add(v[dx7.NON_NAME].tobytes())
                    kept.append(v)
            if len(kept) == count:
                break
        else:
            raise Error(f"voice {i + 1}: only {len(kept)} distinct mutants in {MUTATION_DRAWS * count} draws; "
                        "raise --amount or keep fewer groups")
        mutants = np.stack(kept)
        mutants[:, dx7.NAME] = voices[i, dx7.NAME]
        all_mutants.append(mutants)
        all_changed.append(changed(mutants, i))
    return np.stack(all_mutants), np.stack(all_changed)
