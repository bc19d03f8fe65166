"""Voices in, arrays out: the dataset .npz (build, split, load), shuffled training batches,
voices from files and cartridges to files, and what a model keeps of its training voices.

numpy only. A dataset holds `train` and `validation` (n, 155) uint8 voices in canonical
order, with provenance (`*_source`: file relative to its source root, `*_index`: voice in it).
"""
import hashlib
import io
import json
import re
import zipfile
from pathlib import Path

import numpy as np
from tqdm import tqdm

from neuraldx7_jax import dx7, files, names
from neuraldx7_jax.errors import Error

SUFFIXES = (".syx", ".bin")  # what a directory walk picks up, case-insensitive
SPLITS = ("train", "validation")


def find_files(sources):
    """[(relative path, path)] of the voice files under `sources` (files or directories), sorted."""
    found = {}
    for source in map(Path, sources):
        if source.is_dir():
            paths = [p for p in source.rglob("*") if p.is_file() and p.suffix.lower() in SUFFIXES]
            root = source
        elif source.exists():
            paths, root = [source], source.parent
        else:
            raise Error(f"{source}: no such file or directory")
        for path in paths:  # a file reached twice keeps its smallest name, whatever the order
            entry = (path.relative_to(root).as_posix(), str(path))
            found[path.resolve()] = min(found.get(path.resolve(), entry), entry)
    return sorted(found.values())


def split_hash(voices):
    """(N, 155) -> (N,) uint64: blake2b of each voice's 155 bytes, its place in the split."""
    rows = np.ascontiguousarray(voices, np.uint8)
    return np.array([int.from_bytes(hashlib.blake2b(r.tobytes(), digest_size=8).digest(), "big")
                     for r in rows], np.uint64)


def build_dataset(sources, out, *, validation_fraction=0.05, clamp=False, strict=False, progress=True):
    """Reads every voice under `sources`, keeps valid (or clamped) unique ones, splits, writes `out`.

    A voice goes to validation when its hash / 2**64 < validation_fraction, so the split of a voice
    never depends on the other files. `strict` drops the voices of damaged messages (a wrong or
    missing checksum, wrong framing); either way the summary counts them. Returns the summary
    (also stored in the file).
    """
    if not 0 <= validation_fraction < 1:
        raise Error(f"validation fraction must be in [0, 1), got {validation_fraction}")
    found = find_files(sources)
    chunks, origin, index, damaged, skipped, problems = [], [], [], [], [], []
    dropped = 0
    for f, (rel, path) in enumerate(tqdm(found, desc="reading", unit="file", leave=False,
                                         disable=not progress)):
        voices, intact, reported = dx7.read_file(path)
        at = np.arange(len(voices))
        if strict:
            dropped += int((~intact).sum())
            voices, intact, at = voices[intact], intact[intact], at[intact]
        if not len(voices):
            skipped.append([rel, "; ".join(reported) or f"{path}: no undamaged message (strict)"])
            continue
        problems += reported
        chunks.append(voices)
        origin.append(np.full(len(voices), f))
        index.append(at)
        damaged.append(~intact)
    if not chunks:
        raise Error(f"no DX7 voices found in {', '.join(map(str, sources))}")
    voices, origin, index, damaged = map(np.concatenate, (chunks, origin, index, damaged))

    valid = dx7.is_valid(voices)
    if clamp:
        voices = dx7.clamp(voices)
    else:
        voices, origin, index, damaged = voices[valid], origin[valid], index[valid], damaged[valid]
    rows = np.ascontiguousarray(voices).view(np.dtype((np.void, dx7.N_PARAMS)))[:, 0]
    _, first = np.unique(rows, return_index=True)  # first occurrence in sorted path order
    voices, origin, index, damaged = voices[first], origin[first], index[first], damaged[first]

    h = split_hash(voices)
    is_validation = h / 2.0 ** 64 < validation_fraction
    names = np.array([rel for rel, _ in found])
    arrays = {}
    for split, mask in zip(SPLITS, (~is_validation, is_validation)):
        order = np.flatnonzero(mask)[np.argsort(h[mask], kind="stable")]
        arrays[split] = voices[order]
        arrays[f"{split}_source"] = names[origin[order]]
        arrays[f"{split}_index"] = index[order].astype(np.int32)

    summary = dict(
        sources=[str(s) for s in sources], files_read=len(chunks), files_skipped=skipped,
        problems=problems, voices_found=int(len(valid)), invalid=int((~valid).sum()),
        clamped=int((~valid).sum()) if clamp else 0,
        duplicates=int((len(valid) if clamp else valid.sum()) - len(voices)),
        strict=strict, damaged_dropped=dropped, damaged_kept=int(damaged.sum()),
        train=len(arrays["train"]), validation=len(arrays["validation"]),
        validation_fraction=validation_fraction)
    buffer = io.BytesIO()
    np.savez_compressed(buffer, summary=np.array(json.dumps(summary)), **arrays)
    files.write_atomic(out, buffer.getvalue())
    return summary


def load_dataset(path):
    """The arrays of a dataset .npz (train, validation, provenance) and its build `summary` dict."""
    if Path(path).is_file() and not zipfile.is_zipfile(path):
        raise Error(f"{path}: not a dataset .npz (not a zip archive)")
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {key: npz[key] for key in npz.files}
    except FileNotFoundError:
        raise Error(f"{path}: no such dataset file (build one with `neuraldx7 dataset build`)") from None
    except (OSError, ValueError, zipfile.BadZipFile) as e:
        raise Error(f"{path}: not a dataset .npz ({e})") from None
    for split in SPLITS:
        x = arrays.get(split)
        if not isinstance(x, np.ndarray) or x.dtype != np.uint8 or x.ndim != 2 or x.shape[1] != dx7.N_PARAMS:
            raise Error(f"{path}: not a dataset: no ({split!r}: (n, {dx7.N_PARAMS}) uint8) array")
    try:
        arrays["summary"] = json.loads(str(arrays["summary"])) if "summary" in arrays else {}
    except ValueError:
        raise Error(f"{path}: the dataset's summary is not JSON") from None
    return arrays


def batch_indices(n, batch_size, seed, step):
    """Rows of the training set for `step`: shuffled epochs, stateless, so resuming is exact."""
    per_epoch = n // batch_size
    if per_epoch == 0:
        raise Error(f"the training set has {n} voices, fewer than one batch of {batch_size}")
    epoch, i = divmod(step, per_epoch)
    perm = np.random.default_rng([seed, epoch]).permutation(n)
    return perm[i * batch_size:(i + 1) * batch_size]


def load_voice(spec):
    """One voice from `FILE:INDEX` (any DX7 file) or `DATASET.npz:SPLIT:INDEX`, 1-based."""
    head, sep, index = spec.rpartition(":")
    if not sep or not index.strip().isdigit():
        raise Error(f"{spec}: expected FILE:INDEX or DATASET.npz:SPLIT:INDEX (INDEX from 1)")
    voices = load_voices(head)
    i = int(index)
    if not 1 <= i <= len(voices):
        raise Error(f"{spec}: no voice {i}; {head} holds {len(voices)} (numbered from 1)")
    return voices[i - 1]


def load_voices(spec):
    """Voices from a DX7 file, a dataset `X.npz` (both splits) or `X.npz:SPLIT`."""
    file, sep, split = spec.rpartition(":")
    if sep and split in SPLITS and file.lower().endswith(".npz"):
        return load_dataset(file)[split]
    if spec.lower().endswith(".npz"):
        arrays = load_dataset(spec)
        return np.concatenate([arrays[s] for s in SPLITS])
    return dx7.load(spec)


def count_distinct(voices):
    """Distinct sounds among (n, 155) voices: rows distinct in their 145 non-name values (voices
    that differ only in their names sound the same)."""
    return len(np.unique(np.asarray(voices)[:, dx7.NON_NAME], axis=0))


def clean_names(voices):
    """A copy of `voices` whose name characters outside printable ASCII (32..126) are spaces."""
    voices = np.array(voices, np.uint8)
    chars = voices[:, dx7.NAME]
    chars[(chars < 32) | (chars > 126)] = 32
    voices[:, dx7.NAME] = chars
    return voices


def like_voices(specs, name=None):
    """The voices of `specs` (each a DX7 file, FILE:INDEX, DATASET.npz or DATASET.npz:SPLIT),
    valid ones only, and with `name` (a regular expression) those whose name matches it."""
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


_HASH = np.random.PCG64(0x0D37).random_raw((dx7.N_PARAMS, 2)).astype(np.uint64)  # fixed random multipliers


def row_keys(rows):
    """(n, k <= 155) uint8 -> (n, 2) uint64: sum_i row_i * r_i mod 2^64 with random r_i, twice.
    Distinct rows share a key with probability <= 2^-116 (their difference is < 128 per value)."""
    rows = np.asarray(rows, np.uint8)
    return rows.astype(np.uint64) @ _HASH[:rows.shape[1]]


def value_counts(voices):
    """(155, 128) int64: how often each value of each parameter occurs in `voices`."""
    flat = (np.arange(dx7.N_PARAMS) * dx7.N_VALUES + np.asarray(voices, np.int64)).ravel()
    return np.bincount(flat, minlength=dx7.N_PARAMS * dx7.N_VALUES).reshape(dx7.N_PARAMS, dx7.N_VALUES)


def training_facts(voices):
    """What a model keeps of its training voices, none of them itself: `value_counts` (155, 128)
    int32 (the marginal baseline), `voice_keys` (sorted 64-bit keys of the 145 non-name values:
    generation rejects copies by them) and `name_trigrams` (`names.trigram_counts`)."""
    voices = np.asarray(voices, np.uint8)
    return dict(value_counts=value_counts(voices).astype(np.int32),
                voice_keys=np.unique(row_keys(voices[:, dx7.NON_NAME])[:, 0]),
                name_trigrams=names.trigram_counts(voices), count=np.int64(len(voices)))
