"""Hearing voices: render DX7 voices through Dexed, measure how loud they are, write WAVs.

Rendering needs the `audio` extra (dexed-py, GPL-3.0, the Python binding of the Dexed engine);
it is imported only when a voice is rendered, so the rest of the package works without it.
Levels are dBFS on Dexed's own scale, where one carrier at output level 99 peaks at 1/8 (-18 dBFS)
and no single voice can clip (six such carriers peak at 0.75).
"""
import csv
import functools
import importlib
import io
import math
import re
import wave
from pathlib import Path

import numpy as np

from neuraldx7_jax import dx7, files, loudness
from neuraldx7_jax.errors import Error

SAMPLE_RATE = 48000  # Hz, the default of every render
SILENCE_DBFS = loudness.SILENCE_DBFS  # a voice whose RMS at C4 is not above this is silent
RELEASE_SECONDS = 0.5  # tail after note-off; at most a third of the render
DEXED_GAIN = 1 / 8  # dexed-py's floats are the engine's int32 / 2**25; Dexed itself plays int32 / 2**28
MAX_SECONDS = 60.0  # longest render accepted
MAX_PLOT = 128  # most voices drawn in one --plot figure
_INSTALL = ('pip install "neuraldx7-jax[audio]" (note: the audio extra brings dexed-py, which is '
            "GPL-3.0 like the Dexed engine it binds)")


def _require(module, package):
    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise Error(f"this needs {package} (module {module!r}), which is not installed: {_INSTALL}") from e


@functools.lru_cache(maxsize=4)
def _synth(sample_rate):
    """One Dexed synth per sample rate; each render starts a fresh note, so reuse is safe."""
    return _require("dexed", "dexed-py").DexedSynth(sample_rate=float(sample_rate))


def _check_range(name, value, low, high):
    if not low <= value <= high:
        raise Error(f"{name} must be in {low}..{high}, got {value}")


def _check_note(note, velocity, seconds, sample_rate):
    _check_range("note", note, 0, 127)
    _check_range("velocity", velocity, 1, 127)
    _check_range("seconds", seconds, 1e-3, MAX_SECONDS)
    _check_range("sample rate", sample_rate, 8000, 192000)


def render(voice, *, note=60, velocity=100, seconds=1.5, sample_rate=SAMPLE_RATE):
    """(155,) voice -> (round(seconds * sample_rate),) float32 mono audio of one note through Dexed.

    The key is held until `RELEASE_SECONDS` (at most a third of the render) before the end, then
    released, so the tail holds the release: a full note and its decay, like a short audition.
    Fields out of range are clamped first (`dx7.clamp`), as the engine does not check them all.
    The output is deterministic and never above 0.75 in magnitude (see `DEXED_GAIN`).
    """
    voice = dx7.check_voices(np.reshape(voice, (1, -1)))[0]
    _check_note(note, velocity, seconds, sample_rate)
    release = min(RELEASE_SECONDS, seconds / 3)
    dexed = _require("dexed", "dexed-py")
    synth = _synth(int(sample_rate))
    synth.load_patch(dexed.Patch.from_raw(dx7.clamp(voice)))
    audio = synth.render(midi_note=int(note), velocity=int(velocity),
                         note_duration=seconds - release, render_duration=seconds)
    return (np.asarray(audio, np.float32) * np.float32(DEXED_GAIN)).astype(np.float32)


def _dbfs(amplitude):
    return 20 * math.log10(amplitude) if amplitude > 0 else -math.inf


def loudness(audio):
    """Audio in [-1, 1] -> {"rms_dbfs", "peak_dbfs"} over the whole array; -inf for digital silence."""
    audio = np.asarray(audio, np.float64)
    if not audio.size:
        raise Error("no audio to measure")
    return {"rms_dbfs": _dbfs(float(np.sqrt(np.mean(audio ** 2)))),
            "peak_dbfs": _dbfs(float(np.max(np.abs(audio))))}


def audible(voices, *, note=60, velocity=100, seconds=1.5, sample_rate=SAMPLE_RATE, threshold_dbfs=SILENCE_DBFS):
    """(N, 155) -> (N,) bool: the RMS of `render(voice, ...)` is above `threshold_dbfs` (C4 by default)."""
    voices = dx7.check_voices(voices)
    return np.array([loudness(render(v, note=note, velocity=velocity, seconds=seconds, sample_rate=sample_rate))["rms_dbfs"] > threshold_dbfs
                     for v in voices], bool)


def audible_fraction(voices, **kwargs):
    """(N, 155) -> the share of the voices that are `audible` (same keyword arguments); N must be > 0."""
    voices = dx7.check_voices(voices)
    if not len(voices):
        raise Error("no voices to listen to")
    return float(np.mean(audible(voices, **kwargs)))


def audibility(voices, training=None, *, limit=1024, seed=0):
    """The `--audio` figures of `evaluate` and `duplicates`: the audible fraction at C4 of (up to
    `limit` of) `voices`, and of a random `limit` of the valid `training` voices for comparison."""
    voices = dx7.check_voices(voices)[:limit]
    out = dict(audible_fraction=audible_fraction(voices), audio_voices=len(voices),
               training_audible_fraction=None)
    if training is not None and len(training):
        pool = training[dx7.is_valid(training)]
        pick = np.random.default_rng(seed).permutation(len(pool))[:limit]
        out["training_audible_fraction"] = audible_fraction(pool[np.sort(pick)])
    return out


def wav_bytes(audio, sample_rate=SAMPLE_RATE):
    """Mono audio in [-1, 1] -> 16-bit PCM WAV bytes (sample = round(x * 32767), clipped)."""
    pcm = np.round(np.clip(np.asarray(audio, np.float64), -1, 1) * 32767).astype("<i2")
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(int(sample_rate))
        w.writeframes(pcm.tobytes())
    return buffer.getvalue()


def write_wav(path, audio, sample_rate=SAMPLE_RATE):
    """Writes mono audio in [-1, 1] as a 16-bit PCM WAV file, atomically."""
    files.write_atomic(path, wav_bytes(audio, sample_rate))


def wav_name(number, voice, width=2):
    """The file name of voice `number` (from 1): e.g. 01_E.PIANO_1.wav; the name keeps [A-Za-z0-9.-]."""
    name = re.sub(r"[^A-Za-z0-9.\-]+", "_", dx7.voice_name(voice)).strip("_.")
    return f"{number:0{width}d}{'_' + name if name else ''}.wav"


def envelope_dbfs(audio, sample_rate=SAMPLE_RATE, window_seconds=0.01):
    """(T,) -> (times (F,), RMS in dBFS of each `window_seconds` frame (F,)), silence floored at -120."""
    hop = max(1, int(round(window_seconds * sample_rate)))
    frames = np.asarray(audio, np.float64)[:len(audio) // hop * hop].reshape(-1, hop)  # (F, hop)
    rms = np.sqrt(np.mean(frames ** 2, axis=1))
    return np.arange(len(frames)) * hop / sample_rate, 20 * np.log10(np.maximum(rms, 1e-6))


def plot_envelopes(path, audios, titles, sample_rate=SAMPLE_RATE, note_off=None):
    """Writes a PNG with each audio's RMS envelope (dBFS over time), the silence line and note-off."""
    _require("matplotlib", "matplotlib")
    from matplotlib.figure import Figure  # no pyplot: leaves the global backend alone

    cols = min(4, len(audios))
    rows = -(-len(audios) // cols)
    fig = Figure(figsize=(3.2 * cols, 2.0 * rows), layout="constrained")
    axes = np.atleast_1d(fig.subplots(rows, cols, sharex=True, sharey=True, squeeze=False)).ravel()
    for ax, audio, title in zip(axes, audios, titles):
        t, level = envelope_dbfs(audio, sample_rate)
        ax.plot(t, level, lw=1)
        ax.axhline(SILENCE_DBFS, color="red", lw=0.6, ls="--")
        if note_off is not None:
            ax.axvline(note_off, color="gray", lw=0.6, ls=":")
        ax.set_title(title, fontsize=8)
        ax.set_ylim(-100, 0)
        ax.tick_params(labelsize=7)
    for ax in axes[len(audios):]:
        ax.set_visible(False)
    fig.supxlabel("seconds (dotted: note-off)", fontsize=8)
    fig.supylabel(f"RMS dBFS, 10 ms (dashed: {SILENCE_DBFS:g})", fontsize=8)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    files.write_atomic(path, buffer.getvalue())


SUMMARY_FIELDS = ("voice", "name", "file", "rms_dbfs", "peak_dbfs", "silent", "out_of_range")


def render_to_dir(voices, numbers, out_dir, *, note=60, velocity=100, seconds=1.5, sample_rate=SAMPLE_RATE,
                  plot=False):
    """Renders each voice to OUT_DIR/NN_NAME.wav and writes OUT_DIR/summary.csv (and envelopes.png).

    voices (N, 155) with their `numbers` (from 1, used in file names). Returns the summary rows
    (dicts with `SUMMARY_FIELDS`) and the PNG's path or None.
    """
    voices = dx7.check_voices(voices)
    if len(numbers) != len(voices):
        raise Error(f"{len(voices)} voices but {len(numbers)} numbers")
    if plot and len(voices) > MAX_PLOT:
        raise Error(f"--plot draws at most {MAX_PLOT} voices, {len(voices)} selected: choose some with --voices")
    _check_note(note, velocity, seconds, sample_rate)
    _require("dexed", "dexed-py")
    if plot:
        _require("matplotlib", "matplotlib")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    width = max(2, len(str(max(numbers, default=1))))
    rows, audios = [], []
    for number, voice in zip(numbers, voices):
        audio = render(voice, note=note, velocity=velocity, seconds=seconds, sample_rate=sample_rate)
        name = wav_name(number, voice, width)
        write_wav(out_dir / name, audio, sample_rate)
        level = loudness(audio)
        rows.append({"voice": number, "name": dx7.voice_name(voice), "file": name, **level,
                     "silent": not level["rms_dbfs"] > SILENCE_DBFS,
                     "out_of_range": " ".join(dx7.out_of_range(voice))})
        audios.append(audio)
    text = io.StringIO()
    writer = csv.DictWriter(text, SUMMARY_FIELDS, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({**row, "rms_dbfs": f"{row['rms_dbfs']:.2f}", "peak_dbfs": f"{row['peak_dbfs']:.2f}",
                         "silent": int(row["silent"])})
    files.write_atomic(out_dir / "summary.csv", text.getvalue().encode())
    png = None
    if plot:
        png = out_dir / "envelopes.png"
        plot_envelopes(png, audios, [f"{r['voice']} {r['name']}" for r in rows], sample_rate,
                       note_off=seconds - min(RELEASE_SECONDS, seconds / 3))
    return rows, png
