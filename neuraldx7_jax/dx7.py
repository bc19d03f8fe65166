"""The DX7 voice format: the one parameter table, and everything about bytes.

Canonical order is the 155-value unpacked order of the single-voice dump
(operator 6 first), see docs of the DX7 and `../shared/docs/dx7-format.md`.
Knows nothing of JAX.
"""
from typing import NamedTuple

import numpy as np

N_PARAMS = 155  # values of an unpacked voice
N_VALUES = 128  # every value is a 7-bit number
PACKED_SIZE = 128  # bytes of a packed voice


class Param(NamedTuple):
    """One voice parameter: where it lives unpacked (index) and packed (byte, shift, bits)."""
    index: int  # position in the 155-value canonical order
    name: str  # e.g. "OP6 R1", "ALG", "NAME3"
    max: int  # inclusive maximum; the minimum is always 0
    group: str  # "op6".."op1" or "global" or "name"
    byte: int  # byte of the 128-byte packed voice holding it
    shift: int  # lowest bit of the field in that byte
    bits: int  # width of the field in that byte


# Per operator: (name, max, packed byte offset in the 17-byte block, shift, bits).
_OPERATOR = (
    ("R1", 99, 0, 0, 7), ("R2", 99, 1, 0, 7), ("R3", 99, 2, 0, 7), ("R4", 99, 3, 0, 7),
    ("L1", 99, 4, 0, 7), ("L2", 99, 5, 0, 7), ("L3", 99, 6, 0, 7), ("L4", 99, 7, 0, 7),
    ("BP", 99, 8, 0, 7), ("LD", 99, 9, 0, 7), ("RD", 99, 10, 0, 7),
    ("LC", 3, 11, 0, 2), ("RC", 3, 11, 2, 2),
    ("RS", 7, 12, 0, 3), ("AMS", 3, 13, 0, 2), ("KVS", 7, 13, 2, 3),
    ("OL", 99, 14, 0, 7), ("MODE", 1, 15, 0, 1), ("FC", 31, 15, 1, 5), ("FF", 99, 16, 0, 7),
    ("DET", 14, 12, 3, 4),
)
_GLOBAL = (
    ("PR1", 99, 102, 0, 7), ("PR2", 99, 103, 0, 7), ("PR3", 99, 104, 0, 7), ("PR4", 99, 105, 0, 7),
    ("PL1", 99, 106, 0, 7), ("PL2", 99, 107, 0, 7), ("PL3", 99, 108, 0, 7), ("PL4", 99, 109, 0, 7),
    ("ALG", 31, 110, 0, 5), ("FB", 7, 111, 0, 3), ("OKS", 1, 111, 3, 1),
    ("LFS", 99, 112, 0, 7), ("LFD", 99, 113, 0, 7), ("LPMD", 99, 114, 0, 7), ("LAMD", 99, 115, 0, 7),
    ("LKS", 1, 116, 0, 1), ("LFW", 5, 116, 1, 3), ("LPMS", 7, 116, 4, 3),
    ("TRNSP", 48, 117, 0, 7),
) + tuple((f"NAME{i + 1}", 127, 118 + i, 0, 7) for i in range(10))


def _table():
    rows = []
    for op in range(6, 0, -1):
        base = (6 - op) * 17
        for name, mx, off, shift, bits in _OPERATOR:
            rows.append(Param(len(rows), f"OP{op} {name}", mx, f"op{op}", base + off, shift, bits))
    for name, mx, byte, shift, bits in _GLOBAL:
        rows.append(Param(len(rows), name, mx, "name" if name.startswith("NAME") else "global",
                          byte, shift, bits))
    return tuple(rows)


PARAMS = _table()
assert len(PARAMS) == N_PARAMS
MAX = np.array([p.max for p in PARAMS], np.uint8)  # (155,) inclusive maxima
NAME = slice(145, 155)  # the 10 name characters
NON_NAME = slice(0, 145)


def value_mask():
    """(155, 128) bool: True where a value is inside the parameter's range."""
    return np.arange(N_VALUES)[None, :] <= MAX[:, None].astype(np.int64)


def is_valid(voices):
    """(N, 155) -> (N,) bool: every field inside its DX7 range."""
    voices = np.asarray(voices)
    return np.all(voices <= MAX, axis=-1)
