"""Cartridges: what makes one (no silent voice, no repeat, no copy of a training voice), naming
its voices, and the entry points that write voices to files (`generate`, `interpolate`,
`variations`, `mutate`): each checks its destinations, loads the model and calls `sample`."""
import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from neuraldx7_jax import checkpoint as checkpoint_lib
from neuraldx7_jax import data, dx7, files, loudness, names, priors, sample
from neuraldx7_jax.config import MUTATE_AMOUNT, NEW_VOICE_TEMPERATURE
from neuraldx7_jax.errors import Error


class Cartridge(NamedTuple):
    """32 voices as `generate` writes them, their latents, and how many candidates were redrawn."""
    z: np.ndarray  # (32, Z) float32
    voices: np.ndarray  # (32, 155) uint8, named
    redrawn: dict  # {"silent": n, "duplicate": n, "training_copy": n}
    rows: np.ndarray  # (32,) each voice's row in the seed's sample stream (its value noise)
    kept: dict  # voices kept although they would be redrawn, by reason (only after MAX_CANDIDATES)


@functools.lru_cache(maxsize=None)
def _name_log_p_fn(model_cfg):
    """Jitted `(params, z, voices) -> (B, 10, 128)` log probabilities of the name values at latent
    z (the masked decoder's given the voices' other values)."""
    def fn(params, z, voices):
        hidden = jnp.zeros(voices.shape, bool).at[:, dx7.NAME].set(True)
        return jax.nn.log_softmax(sample.decode_logits(model_cfg, params, z, voices, hidden)[:, dx7.NAME], -1)
    return jax.jit(fn)


def name_voices(model, z, voices):
    """`voices` renamed by `names.name_voices` from their latents `z` (names distinct in order);
    unchanged (printable names) when the model holds no name statistics."""
    if model.training is None or "name_trigrams" not in model.training:
        return data.clean_names(voices)
    log_p = np.asarray(_name_log_p_fn(model.config.model)(model.params, jnp.asarray(z, jnp.float32),
                                                          jnp.asarray(voices, jnp.int32)))
    return names.name_voices(voices, log_p, names.log_probabilities(model.training["name_trigrams"]))


MAX_CANDIDATES = 64 * 32  # candidates one cartridge may skip; then it keeps what comes (`cartridges`)


def cartridges(model, count=1, *, temperature=NEW_VOICE_TEMPERATURE, seed=0, prior=None, allow_silent=False, batch=None):
    """Yields `count` Cartridges drawn from `prior` (`priors.prior_of`) in the order of the seed's
    sample stream: a candidate voice is skipped ("redrawn") when `loudness.estimated_silent` calls
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
    stream = sample.sample_prior_chunks(model, 64 * count, temperature=temperature, seed=seed, batch=batch,
                                        latents=True, prior=prior, endless=True)
    try:
        for z, voices in stream:
            silent = np.zeros(len(voices), bool) if allow_silent else loudness.estimated_silent(voices)
            key = data.row_keys(voices[:, dx7.NON_NAME])[:, 0]
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


def generate_cartridges(model, out, *, count=1, temperature=NEW_VOICE_TEMPERATURE, seed=0, batch=None, prior=None,
                        allow_silent=False):
    """Writes `count` `cartridges` (see `cartridge_paths`), each as soon as it is complete.
    Yields (path, Cartridge) per cartridge."""
    if count < 1:
        raise Error(f"the cartridge count must be positive, got {count}")
    paths = data.cartridge_paths(out, count)
    for path, cart in zip(paths, cartridges(model, count, temperature=temperature, seed=seed, prior=prior,
                                            allow_silent=allow_silent, batch=batch)):
        dx7.save_cartridge(path, cart.voices)
        yield path, cart


class Generation(NamedTuple):
    """What `generate` started: the prior drawn from, how many voices a --like density was fitted
    to (or None), and the cartridges as they are written, (path, Cartridge) each."""
    prior: priors.Prior
    like: int | None
    cartridges: Any


def generate(checkpoint, out, *, count=1, temperature=NEW_VOICE_TEMPERATURE, seed=0, prior=None, like=None, name=None,
             allow_silent=False, batch=None):
    """What `neuraldx7 generate` does: checks the destinations, loads the model
    (`checkpoint_lib.load`), and starts `generate_cartridges` from `prior`, or from the density of the
    voices `like` (`data.like_voices(like, name)`, `sample.like_prior`)."""
    if name is not None and not like:
        raise Error("--name selects among the voices of --like; give --like too")
    if like and prior:
        raise Error("--like and --prior both say where to draw from; give one")
    files.check_writable(*data.cartridge_paths(out, count))
    model = checkpoint_lib.load(checkpoint)
    near = data.like_voices(like, name) if like else None
    prior = sample.like_prior(model, near, seed=seed) if like else priors.prior_of(model, prior)
    return Generation(prior, None if near is None else len(near), generate_cartridges(
        model, out, count=count, temperature=temperature, seed=seed, batch=batch, prior=prior,
        allow_silent=allow_silent))


def write_interpolation(checkpoint, a, b, out, *, steps=32, slerp=False):
    """What `neuraldx7 interpolate` does: `sample.interpolate` between the voices `a` and `b`
    (`data.load_voice` specs) written to `out` (`data.save_voices`). Returns (the voices as
    written, without the padding; how many were written)."""
    files.check_writable(out)
    model = checkpoint_lib.load(checkpoint)
    voices, _ = sample.interpolate(model, data.load_voice(a), data.load_voice(b), steps=steps, slerp=slerp)
    return data.clean_names(voices), data.save_voices(out, voices)


def write_variations(checkpoint, a, out, *, count=32, spread=1.0, seed=0, redraw=False):
    """What `neuraldx7 variations` does: `sample.variations` of the voice `a` (a `data.load_voice`
    spec) written to `out`. Returns the voices as written."""
    if count < 32 or count % 32:
        raise Error(f"--count must be a positive multiple of 32, got {count}")
    files.check_writable(out)
    model = checkpoint_lib.load(checkpoint)
    voices = sample.variations(model, data.load_voice(a), count=count, spread=spread, seed=seed, redraw=redraw)
    data.save_voices(out, voices)
    return data.clean_names(voices)


def write_mutants(checkpoint, source, out, *, amount=MUTATE_AMOUNT, keep=(), count=1, seed=0):
    """What `neuraldx7 mutate` does. `source` FILE:INDEX (or DATASET.npz:SPLIT:INDEX): `count`
    cartridges of 32 mutants of that voice; a DX7 file: `count` cartridges, cartridge c holding
    mutant c of every voice of the file (its first 32). Written to `data.cartridge_paths(out,
    count)`. Returns [(path, voices, share changed per voice)]."""
    if count < 1:
        raise Error(f"the cartridge count must be positive, got {count}")
    paths = data.cartridge_paths(out, count)
    files.check_writable(*paths)
    _, sep, tail = source.rpartition(":")
    one = bool(sep) and tail.strip().isdigit()
    voices = data.load_voice(source)[None] if one else data.load_voices(source)[:32]
    if not len(voices):
        raise Error(f"{source}: no voices to mutate")
    model = checkpoint_lib.load(checkpoint)
    mutants, changed = sample.mutate(model, data.clean_names(voices), amount=amount, keep=keep,
                              count=32 * count if one else count, seed=seed)
    if one:
        carts = zip(mutants[0].reshape(count, 32, -1), changed[0].reshape(count, 32))
    else:
        carts = zip(np.swapaxes(mutants, 0, 1), changed.T)
    written = []
    for path, (cart, share) in zip(paths, carts):
        data.save_voices(path, cart)
        written.append((path, cart, share))
    return written
