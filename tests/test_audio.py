"""Audio: rendering through Dexed, loudness, audibility, and `neuraldx7 render` end to end."""
import csv
import sys
import wave

import numpy as np
import pytest

from neuraldx7_jax import audio, cli, dx7, loudness
from neuraldx7_jax.commands.audio import parse_voices
from neuraldx7_jax.errors import Error

OUTPUT_LEVELS = [16 + 21 * k for k in range(6)]  # OL of op 6 .. op 1


@pytest.fixture(scope="session")
def factory(shared_data):
    """The 1,024 factory voices, in file order."""
    return np.concatenate([dx7.load(p) for p in sorted((shared_data / "factory").glob("*.syx"))])


def read_wav(path):
    """(samples in [-1, 1] as float64, sample rate); checks the file is 16-bit mono."""
    with wave.open(str(path), "rb") as w:
        assert (w.getnchannels(), w.getsampwidth()) == (1, 2)
        pcm = np.frombuffer(w.readframes(w.getnframes()), "<i2")
        return pcm.astype(np.float64) / 32767, w.getframerate()


def db(x):
    return 20 * np.log10(x)


def one_carrier():
    """Algorithm 32, only op 1 sounding at output level 99, every envelope level at 99."""
    voice = np.zeros(dx7.N_PARAMS, np.uint8)
    for k in range(6):
        base = 21 * k
        voice[base:base + 7] = 99  # R1-R4, L1-L3
        voice[base + 8], voice[base + 18], voice[base + 20] = 39, 1, 7  # BP, FC, DET
    voice[OUTPUT_LEVELS] = [0, 0, 0, 0, 0, 99]
    voice[126:134] = [99] * 4 + [50] * 4
    voice[134], voice[144] = 31, 24
    voice[145:155] = list(b"ONE SINE  ")
    return voice


def test_loudness_of_known_signals():
    t = np.arange(48000) / 48000
    sine = np.sin(2 * np.pi * 440 * t)
    level = audio.loudness(sine)
    assert level["peak_dbfs"] == pytest.approx(0, abs=1e-6)
    assert level["rms_dbfs"] == pytest.approx(db(np.sqrt(0.5)), abs=1e-6)
    assert audio.loudness(0.01 * sine)["rms_dbfs"] == pytest.approx(db(np.sqrt(0.5)) - 40, abs=1e-6)
    assert audio.loudness(np.zeros(100)) == {"rms_dbfs": -np.inf, "peak_dbfs": -np.inf}
    with pytest.raises(Error):
        audio.loudness([])


def test_wav_round_trip_and_names(tmp_path):
    x = np.array([0, 0.5, -0.5, 1, -1, 2, -2], np.float32)
    audio.write_wav(tmp_path / "x.wav", x, 22050)
    back, rate = read_wav(tmp_path / "x.wav")
    assert rate == 22050
    np.testing.assert_allclose(back, np.clip(x, -1, 1), atol=1 / 32767)
    voice = np.zeros(dx7.N_PARAMS, np.uint8)
    voice[dx7.NAME] = list(b"E.PIANO 1 ")
    assert audio.wav_name(1, voice) == "01_E.PIANO_1.wav"
    voice[dx7.NAME] = list(b"a/b:*c  d ")
    assert audio.wav_name(7, voice, 3) == "007_a_b_c_d.wav"
    voice[dx7.NAME] = list(b"/////     ")
    assert audio.wav_name(12, voice) == "12.wav"


def test_parse_voices():
    assert parse_voices(None, 3) == [1, 2, 3]
    assert parse_voices("1,5-8", 32) == [1, 5, 6, 7, 8]
    assert parse_voices("3, 1-4", 32) == [3, 1, 2, 4]
    for bad in ("", "a", "0", "3-1", "1-", "-2", "1,,2", "33", "30-40"):
        with pytest.raises(Error, match="--voices"):
            parse_voices(bad, 32)


def test_missing_dexed_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "dexed", None)  # makes `import dexed` fail
    audio._synth.cache_clear()
    with pytest.raises(Error, match=r'pip install "neuraldx7-jax\[audio\]".*GPL-3.0'):
        audio.render(one_carrier())
    audio._synth.cache_clear()


def test_render_shape_scale_and_determinism(dexed):
    voice = one_carrier()
    x = audio.render(voice, seconds=1.5, sample_rate=48000)
    assert x.shape == (72000,) and x.dtype == np.float32
    np.testing.assert_array_equal(x, audio.render(voice))
    # One carrier at full level peaks at 1/8 of full scale, as in the Dexed plugin.
    assert audio.loudness(x)["peak_dbfs"] == pytest.approx(db(audio.DEXED_GAIN), abs=0.1)
    assert audio.render(voice, seconds=0.5, sample_rate=44100).shape == (22050,)
    assert not np.array_equal(audio.render(voice, note=72), x)
    # Held until 0.5 s before the end, then released: the last 10 ms are 20 dB below the note.
    r = audio.render(voice, seconds=1.5)
    assert np.abs(r[-480:]).max() < 0.1 * np.abs(r[:48000]).max()
    with pytest.raises(Error, match="velocity"):
        audio.render(voice, velocity=0)
    with pytest.raises(Error, match="shape"):
        audio.render(voice[:100])


def test_out_of_range_voices_are_clamped(dexed, factory):
    voice = factory[0].copy()
    voice[[0, 20, 142]] = [120, 15, 7]  # R1, DET, LFW out of range
    np.testing.assert_array_equal(audio.render(voice), audio.render(dx7.clamp(voice)))


def test_all_output_levels_zero_is_silent(dexed, factory):
    voice = factory[0].copy()
    voice[OUTPUT_LEVELS] = 0
    x = audio.render(voice)
    assert not np.any(x)
    assert audio.loudness(x)["rms_dbfs"] == -np.inf
    assert audio.audible(np.stack([factory[0], voice])).tolist() == [True, False]


def test_factory_voices_are_audible(dexed, factory):
    assert len(factory) == 1024
    fraction = audio.audible_fraction(factory)
    print(f"audible fraction of the factory voices: {fraction:.4f}")
    # Measured 0.9941 (6 silent: slow-attack effects such as TAKE OFF and EVOLUTION).
    assert fraction >= 0.99


def test_render_command_end_to_end(dexed, shared_data, tmp_path, capsys):
    rom1a = shared_data / "factory" / "rom1a.syx"
    out = tmp_path / "wavs"
    assert cli.main(["render", str(rom1a), "--out-dir", str(out), "--voices", "1-3,32", "--plot"]) == 0
    printed = capsys.readouterr().out
    assert "BRASS   1" in printed and "summary.csv" in printed
    with open(out / "summary.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["voice"] for r in rows] == ["1", "2", "3", "32"]
    assert rows[0]["file"] == "01_BRASS_1.wav"
    voices = dx7.load(rom1a)
    for row in rows:
        x, rate = read_wav(out / row["file"])
        assert rate == 48000 and len(x) == 72000
        rms, peak = db(np.sqrt(np.mean(x ** 2))), db(np.abs(x).max())
        assert float(row["rms_dbfs"]) == pytest.approx(rms, abs=0.02)
        assert float(row["peak_dbfs"]) == pytest.approx(peak, abs=0.02)
        assert row["silent"] == str(int(rms <= audio.SILENCE_DBFS))
        level = audio.loudness(audio.render(voices[int(row["voice"]) - 1]))
        assert level["rms_dbfs"] == pytest.approx(rms, abs=0.02)
    png = (out / "envelopes.png").read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 1000


def test_render_command_errors(shared_data, tmp_path, capsys):
    rom1a = str(shared_data / "factory" / "rom1a.syx")
    assert cli.main(["render", rom1a, "--out-dir", str(tmp_path), "--voices", "2-40"]) == 2
    assert "voice 40 asked for, the file has 32" in capsys.readouterr().err
    junk = tmp_path / "junk.syx"
    junk.write_bytes(b"not a dx7 file")
    assert cli.main(["render", str(junk), "--out-dir", str(tmp_path)]) == 2
    assert "junk.syx" in capsys.readouterr().err
    assert not list(tmp_path.glob("*.wav"))


def _silent_in_dexed(voices):
    return np.array([audio.loudness(audio.render(v))["rms_dbfs"] <= loudness.SILENCE_DBFS for v in voices])


def _precision_recall(truth, estimate):
    hits = int((truth & estimate).sum())
    return hits / max(int(estimate.sum()), 1), hits / max(int(truth.sum()), 1)


@pytest.mark.slow
def test_the_loudness_estimate_tells_silent_voices_as_dexed_does(dexed, shared_data):
    """Precision and recall of "silent" (<= -60 dBFS at C4) of the parameter-only estimate against
    Dexed renders, on 4,000 real voices and on 1,024 samples of the bundled model under N(0, I)
    (which makes many silent ones). Measured when written: real 0.949 / 0.974 (38 silent),
    generated 1.0 / 0.95 (docs/audio.md has the figures and what the estimate leaves out)."""
    from neuraldx7_jax import checkpoint, sample
    real = dx7.load(shared_data / "compact-train.bin")
    real = real[dx7.is_valid(real)][:4000]
    generated = sample.sample_prior(checkpoint.load(None), 1024, seed=0, prior="standard")
    for voices in (real, generated):
        truth = _silent_in_dexed(voices)
        precision, recall = _precision_recall(truth, loudness.estimated_silent(voices))
        assert truth.sum() >= 20 and precision >= 0.9 and recall >= 0.9, (truth.sum(), precision, recall)
