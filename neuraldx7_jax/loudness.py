"""A voice's loudness estimated from its parameters alone (no synth, no JAX): the RMS of a held
note and whether a voice is silent, checked against Dexed (docs/audio.md)."""
import numpy as np

from neuraldx7_jax import dx7
from neuraldx7_jax.errors import Error

_CARRIER_MASK = np.array([[op in ops for op in range(1, 7)] for ops in dx7.CARRIERS])  # (32, 6)
_INDEX = {p.name: p.index for p in dx7.PARAMS}
# The DX7's output-level curve below 20 (28 + level above), and its exponential key-scaling curve.
_LOW_LEVELS = np.array([0, 5, 9, 13, 17, 20, 23, 25, 27, 29, 31, 33, 35, 37, 39, 41, 42, 43, 45, 46])
_EXP_SCALING = np.array([0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 11, 14, 16, 19, 23, 27, 33, 39, 47, 56, 66, 80,
                         94, 110, 126, 142, 158, 174, 190, 206, 222, 238, 250])
_BLOCK = 64  # samples per envelope update


def _operator_field(voices, name):
    """(N, 155) -> (N, 6) int64: field `name` of OP1..OP6."""
    return voices[:, [_INDEX[f"OP{op} {name}"] for op in range(1, 7)]]


def _scaled_level(level):
    level = np.asarray(level, np.int64)
    return np.where(level >= 20, 28 + level, _LOW_LEVELS[np.minimum(level, 19)])


def _key_level_scaling(key, f):
    """(N, 6) level offsets (output-level steps of 0.75 dB) of keyboard level scaling at `key`."""
    offset = key - f("BP") - 17  # breakpoint 0 is A-1
    right = offset >= 0
    group = np.where(right, (offset + 1) // 3, (1 - offset) // 3)
    depth, curve = np.where(right, f("RD"), f("LD")), np.where(right, f("RC"), f("LC"))
    linear = (group * depth * 329) >> 12
    exponential = (_EXP_SCALING[np.minimum(group, 32)] * depth * 329) >> 15
    size = np.where((curve == 0) | (curve == 3), linear, exponential)
    return np.where(curve < 2, -size, size)  # curves: -LIN, -EXP, +EXP, +LIN


def estimate_rms_dbfs(voices, note=60, seconds=1.5, release=0.5, sample_rate=48000):
    """(N, 155) -> (N,) the RMS (dBFS on `audio`'s scale) of a note held `seconds - release` and
    rendered `seconds`, estimated from the parameters alone: the carriers' envelope generators
    (rates, levels, rate scaling, the hold of a stage that does not move), output levels and
    keyboard level scaling, run per 64-sample block, and the phase of each carrier's first cycle.
    It ignores what modulators, the LFO and velocity do to the level; fields out of range are
    clamped. Checked against Dexed
    (tests/test_audio.py): "silent" (<= -60 dBFS at C4) is told apart with precision and recall
    >= 0.95 on real and on generated voices. About 10 ms per 1,000 blocks of 1,000 voices."""
    v = np.asarray(voices)
    if v.ndim != 2 or v.shape[1] != dx7.N_PARAMS:
        raise Error(f"expected voices of shape (N, {dx7.N_PARAMS}), got {v.shape}")
    v = np.minimum(v, dx7.MAX).astype(np.int64)  # fields out of range are clamped, as `audio.render` does
    n = len(v)

    def f(name):
        return _operator_field(v, name)

    key = note + v[:, _INDEX["TRNSP"]] - 24
    out = np.clip(_scaled_level(f("OL")) + _key_level_scaling(key[:, None], f), 0, 127) * 32
    rate_scaling = (f("RS") * np.clip(key // 3 - 7, 0, 31)[:, None]) >> 3
    levels = np.stack([f(f"L{i}") for i in range(1, 5)], -1)  # (N, 6, 4)
    rates = np.stack([f(f"R{i}") for i in range(1, 5)], -1)
    target = np.maximum((_scaled_level(levels) >> 1) * 64 + out[..., None] - 4256, 16).astype(np.float64)
    q = np.minimum((rates * 41 >> 6) + rate_scaling[..., None], 63)
    step = (4 + (q & 3)) * 2.0 ** ((q >> 2) - 8) * 44100 / sample_rate  # level units per block
    # A stage whose target is where the level already is still takes its time; so does a first
    # stage to level 0 (shorter). Measured against Dexed, not taken from it.
    static = np.minimum(rates + rate_scaling[..., None], 99)
    per_s = sample_rate / _BLOCK
    full_hold, short_hold = 40 * per_s * 2.0 ** (-static / 6), 40 * per_s * 2.0 ** (-static / 1.5)
    freq = np.where(f("MODE") == 1, 10.0 ** ((f("FC") & 3) + f("FF") / 100),
                    np.where(f("FC") == 0, 0.5, f("FC")) * (1 + f("FF") / 100)
                    * 440.0 * 2 ** ((key[:, None] - 69) / 12))
    w = np.maximum(2 * np.pi * np.minimum(freq, sample_rate / 2) / sample_rate, 1e-9)  # rad/sample
    blocks, key_off = int(seconds * sample_rate) // _BLOCK, int((seconds - release) * sample_rate) // _BLOCK
    rows, ops = np.arange(n)[:, None], np.arange(6)[None, :]
    level, before = np.zeros((n, 6)), np.zeros((n, 6))
    stage = np.zeros((n, 6), np.int64)  # 0..2 moving to L1..L3, 3 sustain/release to L4, 4 done
    hold = np.where(levels[..., 0] == 0, short_hold[..., 0], 0.0)
    energy = np.zeros((n, 6))
    for b in range(blocks):
        if b == key_off:
            stage[:], hold[:] = 3, 0
        s = np.minimum(stage, 3)
        goal, rate = target[rows, ops, s], step[rows, ops, s]
        moving = ((stage < 3) | ((b >= key_off) & (stage == 3))) & (hold <= 0)
        hold -= 1
        up = np.maximum(level, 1716)
        up = np.minimum(up + np.floor((4352 - up) / 256) * rate, goal)  # attack: fast, then slower
        new = np.where(goal > level, up, np.maximum(level - rate, goal))  # decay: linear in dB
        level = np.where(moving, new, level)
        reached = moving & (level == goal)
        advance = reached & (stage < 3)
        stage = np.where(advance, stage + 1, np.where(reached & (stage == 3) & (b >= key_off), 4, stage))
        s = np.minimum(stage, 3)
        hold = np.where(advance & (target[rows, ops, s] == level), full_hold[rows, ops, s], hold)
        # mean square over the block: the level ramps linearly (in dB) from `before` to `level`,
        # times the mean of sin^2 of the carrier over the block (it starts at phase 0)
        span = np.maximum(np.abs(level - before) * (2 * np.log(2) / 256), 1e-9)
        t0 = b * _BLOCK
        sin2 = 0.5 - (np.sin(2 * w * (t0 + _BLOCK)) - np.sin(2 * w * t0)) / (4 * w * _BLOCK)
        energy += 2.0 ** (2 * np.maximum(level, before) / 256 - 36) * -np.expm1(-span) / span * sin2
        before = level
    total = (energy * _CARRIER_MASK[v[:, dx7.ALG] % 32]).sum(-1) / blocks
    return 10 * np.log10(np.maximum(total, 1e-30))


SILENCE_DBFS = -60.0  # a voice whose RMS at C4 (1 s held, 1.5 s rendered) is not above this is silent


def estimated_silent(voices):
    """(N, 155) -> (N,) bool: `estimate_rms_dbfs` at C4 is not above SILENCE_DBFS."""
    return estimate_rms_dbfs(voices) <= SILENCE_DBFS
