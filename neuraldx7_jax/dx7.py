"""The DX7 voice format: the one parameter table, and everything about bytes.

Canonical order is the 155-value unpacked order of the single-voice dump
(operator 6 first), see docs of the DX7 and `../shared/docs/dx7-format.md`.
Knows nothing of JAX.
"""
import collections
import re
import warnings
from pathlib import Path
from typing import NamedTuple

import numpy as np

from neuraldx7_jax import files
from neuraldx7_jax.errors import Error

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
# Groups of parameters by name, as `mutate --keep` names them (op1 is OP1, stored last).
GROUPS = {
    **{f"op{op}": tuple(f"OP{op} {name}" for name in (
        "R1", "R2", "R3", "R4", "L1", "L2", "L3", "L4", "BP", "LD", "RD", "LC", "RC", "RS", "AMS", "KVS",
        "OL", "MODE", "FC", "FF", "DET")) for op in range(1, 7)},
    "algorithm": ("ALG",), "feedback": ("FB",), "lfo": ("LFS", "LFD", "LPMD", "LAMD", "LKS", "LFW", "LPMS"),
    "pitch-eg": ("PR1", "PR2", "PR3", "PR4", "PL1", "PL2", "PL3", "PL4"),
    "name": tuple(f"NAME{i}" for i in range(1, 11)),
}
ALG = next(p.index for p in PARAMS if p.name == "ALG")  # 134: the algorithm, 0..31 (shown 1-32)


def value_mask():
    """(155, 128) bool: True where a value is inside the parameter's range."""
    return np.arange(N_VALUES)[None, :] <= MAX[:, None].astype(np.int64)


def is_valid(voices):
    """(N, 155) -> (N,) bool: every field inside its DX7 range."""
    voices = np.asarray(voices)
    return np.all(voices <= MAX, axis=-1)


def out_of_range(voice):
    """(155,) -> names and values of the fields outside their range, e.g. ["OP6 DET=15"]."""
    voice = np.asarray(voice)
    return [f"{PARAMS[i].name}={voice[i]}" for i in np.flatnonzero(voice > MAX)]


def clamp(voices):
    """(..., 155) -> the same voices with every field clamped into its range."""
    return np.minimum(np.asarray(voices), MAX).astype(np.uint8)


def voice_name(voice):
    """The 10 name characters as printable ASCII (others become spaces), trailing spaces removed."""
    codes = np.asarray(voice)[NAME] & 0x7F
    return "".join(chr(c) if 32 <= c < 127 else " " for c in codes).rstrip()


def voice_line(number, voice):
    """One line of a voice list: number, name, algorithm (1-32), as `info` and the writers print it."""
    return f"{number:4d}  {voice_name(voice):10s}  alg {int(voice[ALG]) + 1:2d}"


def voice_table(voices, first=1):
    """The lines of `voice_line` for `voices`, numbered from `first`, joined."""
    return "\n".join(voice_line(n, v) for n, v in enumerate(voices, first))


_GLOBAL_ROWS = (("pitch EG", ("PR1", "PR2", "PR3", "PR4", "PL1", "PL2", "PL3", "PL4")),
                ("algorithm", ("ALG", "FB", "OKS")), ("LFO", ("LFS", "LFD", "LPMD", "LAMD", "LKS", "LFW", "LPMS")),
                ("transpose", ("TRNSP",)))


def describe_voice(voice):
    """Every parameter of one voice as a librarian shows it: the name, a table of the operator
    parameters (one row per parameter, operators 1-6 in columns), then the global ones. Values are
    the stored ones (ALG 0-31 shows as 1-32); out-of-range values are marked with '!'."""
    voice = np.asarray(voice)
    by_name = {p.name: p for p in PARAMS}

    def cell(p):
        v = int(voice[p.index])
        return f"{v + 1 if p.name == 'ALG' else v}{'!' if v > p.max else ''}"

    lines = [f"name '{voice_name(voice)}'  algorithm {int(voice[134]) + 1}",
             f"{'':6s}" + "".join(f"{f'OP{op}':>6s}" for op in range(1, 7))]
    for name, *_ in _OPERATOR:
        lines.append(f"{name:6s}" + "".join(f"{cell(by_name[f'OP{op} {name}']):>6s}" for op in range(1, 7)))
    for title, names in _GLOBAL_ROWS:
        lines.append(f"{title + ':':11s}" + "  ".join(f"{n} {cell(by_name[n])}" for n in names))
    return "\n".join(lines)


def check_voices(voices):
    """`voices` as (N, 155) uint8, or an Error unless they are whole numbers in 0..127 of that shape."""
    voices = np.asarray(voices)
    if voices.ndim != 2 or voices.shape[1] != N_PARAMS:
        raise Error(f"expected voices of shape (N, {N_PARAMS}), got {voices.shape}")
    if voices.size and (voices.min() < 0 or voices.max() >= N_VALUES or not np.all(voices == np.round(voices))):
        raise Error("voice values must be whole numbers in 0..127")
    return voices.astype(np.uint8)


def pack(voices):
    """(N, 155) -> (N, 128) uint8 packed voices; each field is cut to its bit width, unused bits clear."""
    voices = check_voices(voices)
    packed = np.zeros((len(voices), PACKED_SIZE), np.uint8)
    for p in PARAMS:
        packed[:, p.byte] |= (voices[:, p.index] & ((1 << p.bits) - 1)) << p.shift
    return packed


def unpack(packed):
    """(N, 128) -> (N, 155) uint8; bit 7 and the unused bits are ignored, as the DX7 does."""
    packed = np.asarray(packed, np.uint8)
    if packed.ndim != 2 or packed.shape[1] != PACKED_SIZE:
        raise Error(f"expected packed voices of shape (N, {PACKED_SIZE}), got {packed.shape}")
    voices = np.empty((len(packed), N_PARAMS), np.uint8)
    for p in PARAMS:
        voices[:, p.index] = (packed[:, p.byte] >> p.shift) & ((1 << p.bits) - 1)
    return voices


# The operators (1..6) whose output is heard in each of the 32 algorithms: the carriers.
CARRIERS = ((1, 3), (1, 3), (1, 4), (1, 4), (1, 3, 5), (1, 3, 5), (1, 3), (1, 3), (1, 3), (1, 4),
            (1, 4), (1, 3), (1, 3), (1, 3), (1, 3), (1,), (1,), (1,), (1, 4, 5), (1, 2, 4),
            (1, 2, 4, 5), (1, 3, 4, 5), (1, 2, 4, 5), (1, 2, 3, 4, 5), (1, 2, 3, 4, 5), (1, 2, 4),
            (1, 2, 4), (1, 3, 6), (1, 2, 3, 5), (1, 2, 3, 6), (1, 2, 3, 4, 5), (1, 2, 3, 4, 5, 6))


BULK_HEADER = bytes([0xF0, 0x43, 0x00, 0x09, 0x20, 0x00])  # + channel in byte 2
SINGLE_HEADER = bytes([0xF0, 0x43, 0x00, 0x00, 0x01, 0x1B])
BULK_SIZE = 4104
SINGLE_SIZE = 163
BANK_SIZE = 32 * PACKED_SIZE  # 4096 data bytes of a bulk dump
_HEADER = re.compile(rb"\xf0\x43[\x00-\x0f](?:\x09\x20\x00|\x00\x01\x1b)")


class FormatError(Error):
    """A file (or message) holds no readable DX7 voice."""


class FormatWarning(UserWarning):
    """A problem in a DX7 file that does not stop its voices being read."""


class ChecksumWarning(FormatWarning):
    """A message's checksum is wrong or missing; its voices are kept unless strict."""


def checksum(data):
    """The DX7 SysEx checksum of the data bytes: (-(sum)) & 0x7F."""
    return -int(np.frombuffer(bytes(data), np.uint8).sum(dtype=np.int64)) & 0x7F


def _message(header, data, channel):
    if not 0 <= channel <= 15:
        raise Error(f"MIDI channel must be 0..15, got {channel}")
    return header[:2] + bytes([channel]) + header[3:] + data + bytes([checksum(data), 0xF7])


def cartridge_message(voices, channel=0):
    """(32, 155) -> the 4104-byte 32-voice bulk dump."""
    voices = check_voices(voices)
    if len(voices) != 32:
        raise Error(f"a cartridge holds 32 voices, got {len(voices)}")
    return _message(BULK_HEADER, pack(voices).tobytes(), channel)


def single_voice_message(voice, channel=0):
    """(155,) -> the 163-byte single-voice dump."""
    return _message(SINGLE_HEADER, check_voices(np.reshape(voice, (1, -1)))[0].tobytes(), channel)


PROBLEMS_SHOWN = 10  # problems of one file told in full; the others are counted by kind


class _Problems:
    """The problems of one file: the first PROBLEMS_SHOWN in full, then only a count per kind, so a
    file of a million broken messages gives a short report in little memory."""

    def __init__(self, source):
        self.source, self.shown, self.more = source, [], collections.Counter()
        self.kinds = {}

    def add(self, kind, label, text, count=1):
        """`count` problems of `label` (e.g. "truncated"); `text()` makes the first one's message."""
        while count and len(self.shown) < PROBLEMS_SHOWN:
            self.shown.append((kind, text()))
            count -= 1
        if count:
            self.more[label] += count
            self.kinds.setdefault(label, kind)

    def report(self):
        """[(warning class, text)]: the problems shown, then one line counting the rest."""
        if not self.more:
            return self.shown
        n = sum(self.more.values())
        kind = FormatWarning if len(set(self.kinds.values())) > 1 else next(iter(self.kinds.values()))
        counts = ", ".join(f"{c:,} {label}" for label, c in self.more.most_common())
        return self.shown + [(kind, f"{self.source}: and {n:,} more problems: {counts}")]


def _header_positions(a, n):
    """(positions, single) of every DX7 voice-message header in the first `n` bytes of `a` (padded
    with 6 more), found with numpy: a file of nothing but headers must not cost a Python step, or
    a Python object, per header."""
    where = np.flatnonzero(a[:n] == 0xF0).astype(np.int64 if n >> 31 else np.int32)
    where = where[(a[where + 1] == 0x43) & (a[where + 2] <= 0x0F)]
    third = a[where + 3]
    single = (third == 0x00) & (a[where + 4] == 0x01) & (a[where + 5] == 0x1B)
    bulk = (third == 0x09) & (a[where + 4] == 0x20) & (a[where + 5] == 0x00)
    keep = single | bulk
    return where[keep], single[keep]


def _parse_sysex(data, source):
    """Every DX7 voice message in `data`: (voices, intact per voice, [(warning class, text)]).

    A message is taken where its n data bytes are followed by a checksum byte and F7 (framed),
    whatever headers its data bytes happen to form; otherwise it ends at the next header, and is
    truncated when its data does not fit before it. Intact: framed with the right checksum."""
    padded = np.frombuffer(data + bytes(len(BULK_HEADER)), np.uint8)
    starts, single = _header_positions(padded, len(data))
    sizes = np.where(single, N_PARAMS, BANK_SIZE).astype(starts.dtype)
    ends = starts + len(BULK_HEADER) + sizes  # where the checksum byte belongs
    following = np.concatenate([starts[1:], [len(data)]]).astype(starts.dtype)
    f7 = padded[np.minimum(ends + 1, len(data))] == 0xF7
    taken = f7 | (ends <= following)  # the others are truncated by the next header
    takes = np.flatnonzero(taken)
    chunks, intact, problems = [], [], _Problems(source)
    k = 0  # header number
    while k < len(starts):
        t = np.searchsorted(takes, k)
        j = int(takes[t]) if t < len(takes) else len(starts)
        if j > k:  # headers k..j-1 are truncated by the header after each
            for m in range(k, min(j, k + PROBLEMS_SHOWN)):
                problems.add(FormatWarning, "truncated", lambda m=m: f"{source}: message {m + 1} at byte "
                             f"{starts[m]}: truncated, {following[m] - starts[m] - len(BULK_HEADER)} of "
                             f"{sizes[m]} data bytes")
            problems.add(FormatWarning, "truncated", None, count=max(0, j - k - PROBLEMS_SHOWN))
            k = j
            continue
        i, n, end = int(starts[k]), int(sizes[k]), int(ends[k])
        where = f"{source}: message {k + 1} at byte {i}"
        body = data[end - n:end]
        limit = len(data) if f7[k] else int(following[k])
        tail = data[end:min(end + 2, limit)]
        good = bool(f7[k])
        if not tail or tail[0] == 0xF7:
            problems.add(ChecksumWarning, "missing checksums", lambda: f"{where}: no checksum")
            good = False
        elif tail[0] != checksum(body):
            problems.add(ChecksumWarning, "bad checksums",
                         lambda: f"{where}: checksum {tail[0]:#04x}, expected {checksum(body):#04x}")
            good = False
        elif not f7[k]:
            problems.add(FormatWarning, "missing F7", lambda: f"{where}: no F7 after the checksum")
        raw = np.frombuffer(body, np.uint8)
        voices = raw[None] & 0x7F if single[k] else unpack(raw.reshape(32, PACKED_SIZE))
        chunks.append(voices)
        intact.append(np.full(len(voices), good))
        k = int(np.searchsorted(starts, end + 2 if f7[k] else end))
    if not chunks:
        return np.zeros((0, N_PARAMS), np.uint8), np.zeros(0, bool), problems.report()
    return np.concatenate(chunks), np.concatenate(intact), problems.report()


def _parse(data, source):
    """(voices, intact, problems) of a whole file's bytes; no voices means unreadable."""
    none = np.zeros((0, N_PARAMS), np.uint8), np.zeros(0, bool)
    if not data:
        return *none, [(FormatError, f"{source}: empty file")]
    suffix = Path(str(source)).suffix.lower()
    if _HEADER.match(data) or suffix != ".bin" and (data[0] == 0xF0 or _HEADER.search(data)):
        voices, ok, problems = _parse_sysex(data, source)
        if len(voices) or problems:
            return voices, ok, problems
        if len(data) != BANK_SIZE:
            return *none, [(FormatError, f"{source}: no DX7 voice message in this SysEx data")]
    if len(data) == BANK_SIZE or len(data) % PACKED_SIZE == 0 and suffix != ".syx":
        voices = unpack(np.frombuffer(data, np.uint8).reshape(-1, PACKED_SIZE))
        return voices, np.ones(len(voices), bool), []
    return *none, [(FormatError, f"{source}: not DX7 data ({len(data)} bytes, no DX7 SysEx message, "
                                 f"not a whole number of 128-byte packed voices)")]


def parse(data, source="<bytes>", strict=False):
    """Like `load`, for bytes in memory; `source` names them in messages (its suffix counts, as in `load`)."""
    voices, intact, problems = _parse(bytes(data), source)
    if not len(voices):
        raise FormatError("; ".join(text for _, text in problems))
    for kind, text in problems:
        warnings.warn(text, kind, stacklevel=3)
    return voices[intact] if strict else voices


def load(path, strict=False):
    """Every voice of a .syx (bulk and single dumps, any channel), headerless bank or compact .bin.

    Returns (N, 155) uint8, valid or not. Raises FormatError when the file yields no voice;
    other problems are FormatWarning / ChecksumWarning. strict drops the voices of damaged
    messages (a wrong or missing checksum, no F7 where the message ends).
    """
    return parse(Path(path).read_bytes(), path, strict)


def load_with_warnings(path, strict=False):
    """`load`, with the warnings it gives as text beside the voices (what a command prints):
    (voices, [warning])."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", FormatWarning)
        voices = load(path, strict)
    return voices, [str(w.message) for w in caught]


def read_file(path):
    """Like `load`, never raising: (voices (N, 155) uint8, intact (N,) bool: the voice's message
    is undamaged, problems as text); N = 0 when unreadable."""
    try:
        voices, intact, problems = _parse(Path(path).read_bytes(), path)
    except OSError as e:
        return np.zeros((0, N_PARAMS), np.uint8), np.zeros(0, bool), [f"{path}: {e.strerror or e}"]
    return voices, intact, [text for _, text in problems]


def parse_single_voice(message):
    """A 163-byte single-voice dump -> (155,) uint8 (only masked to 7 bits); a bad checksum warns."""
    message = bytes(message)
    if len(message) != SINGLE_SIZE or not _HEADER.match(message) or message[3] != 0x00:
        raise FormatError(f"not a DX7 single-voice message ({len(message)} bytes)")
    return parse(message, "<single voice>")[0]


def save_cartridge(path, voices, channel=0):
    """Writes N = 32, 64, ... voices as N / 32 concatenated 4104-byte bulk dumps."""
    voices = check_voices(voices)
    if not len(voices) or len(voices) % 32:
        raise Error(f"{path}: a cartridge holds 32 voices; got {len(voices)}, not a multiple of 32")
    files.write_atomic(path, b"".join(cartridge_message(voices[i:i + 32], channel)
                                for i in range(0, len(voices), 32)))


def save_single_voice(path, voice, channel=0):
    """Writes one voice as a 163-byte single-voice dump."""
    files.write_atomic(path, single_voice_message(voice, channel))


def group_mask(groups):
    """(155,) bool: the parameters of the named `GROUPS`."""
    index = {p.name: p.index for p in PARAMS}
    mask = np.zeros(N_PARAMS, bool)
    for group in groups:
        if group not in GROUPS:
            raise Error(f"unknown group {group!r}; choose among {', '.join(GROUPS)}")
        mask[[index[name] for name in GROUPS[group]]] = True
    return mask
