"""End-to-end runs of the model commands on a tiny model trained here on the factory voices, and
their absl launchers."""
import argparse
import json
import re
import subprocess
import sys

import numpy as np
import pytest

from conftest import ROOT, random_voices
from neuraldx7_jax import cartridges, checkpoint, config, data, dx7, files, priors, sample, studies
from neuraldx7_jax.cli import main
from neuraldx7_jax.commands import generate, options
from neuraldx7_jax.commands import train as train_command


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.mark.slow
def test_generate(trained, tmp_path, capsys):
    work, _ = trained
    code, out, _ = run(capsys, "generate", "--out", tmp_path / "cart.syx", "--count", 2, "--temperature", 1.0,
                       "--seed", 5, "--checkpoint", work)
    assert code == 0
    for name in ("cart_001.syx", "cart_002.syx"):
        assert f"wrote {tmp_path / name}: 32 voices" in out
        voices = dx7.load(tmp_path / name)
        assert dx7.voice_table(voices) in out  # number, name, algorithm: one voice a line
        assert voices.shape == (32, dx7.N_PARAMS) and dx7.is_valid(voices).all()
        assert ((voices[:, dx7.NAME] >= 32) & (voices[:, dx7.NAME] <= 126)).all()
    for again in ("again", "other"):
        run(capsys, "generate", "--out", tmp_path / f"{again}.syx", "--count", 2, "--temperature", 1.0,
            "--seed", 5 if again == "again" else 6, "--checkpoint", work)
    assert (tmp_path / "again_002.syx").read_bytes() == (tmp_path / "cart_002.syx").read_bytes()
    assert (tmp_path / "other_002.syx").read_bytes() != (tmp_path / "cart_002.syx").read_bytes()
    code, _, err = run(capsys, "generate", "--out", tmp_path / "x.syx", "--temperature", -1, "--checkpoint", work)
    assert code == 2 and "temperature" in err


@pytest.mark.slow
def test_interpolate_and_variations(trained, shared_data, tmp_path, capsys):
    work, dataset = trained
    a, b = f"{shared_data / 'factory' / 'rom1a.syx'}:1", f"{dataset}:train:7"
    code, out, _ = run(capsys, "interpolate", a, b, "--out", tmp_path / "i.syx", "--checkpoint", work)
    assert code == 0 and f"wrote {tmp_path / 'i.syx'}: 32 voices" in out
    voices = dx7.load(tmp_path / "i.syx")
    model = checkpoint.load(work)
    ends = data.clean_names(sample.reconstruct(model, np.stack([data.load_voice(a), data.load_voice(b)])))
    np.testing.assert_array_equal(voices[[0, -1]], ends)

    code, out, _ = run(capsys, "interpolate", a, b, "--out", tmp_path / "s.syx", "--steps", 5, "--slerp",
                       "--checkpoint", work)
    short = dx7.load(tmp_path / "s.syx")
    assert code == 0 and len(short) == 32 and "filled up" in out
    np.testing.assert_array_equal(short[[0, 4]], ends)
    assert (short[4:] == ends[1]).all()

    code, _, _ = run(capsys, "variations", a, "--out", tmp_path / "v.syx", "--spread", 0, "--checkpoint", work)
    assert code == 0
    assert (dx7.load(tmp_path / "v.syx") == ends[0]).all()
    code, _, _ = run(capsys, "variations", a, "--out", tmp_path / "w.syx", "--spread", 2, "--seed", 1,
                     "--checkpoint", work)
    assert code == 0 and dx7.is_valid(dx7.load(tmp_path / "w.syx")).all()
    code, out, _ = run(capsys, "variations", a, "--out", tmp_path / "d.syx", "--spread", 0.3, "--checkpoint", work)
    distinct = data.count_distinct(dx7.load(tmp_path / "d.syx"))
    assert code == 0 and f"{distinct} of 32 voices are distinct" in out
    assert distinct == 32 or "--redraw replaces duplicates" in out
    code, out, _ = run(capsys, "variations", a, "--out", tmp_path / "r.syx", "--spread", 0.3, "--redraw",
                       "--checkpoint", work)
    assert code == 0 and data.count_distinct(dx7.load(tmp_path / "r.syx")) >= distinct

    code, _, err = run(capsys, "interpolate", f"{dataset}:train:0", b, "--out", tmp_path / "e.syx",
                       "--checkpoint", work)
    assert code == 2 and "numbered from 1" in err


@pytest.mark.slow
def test_a_tiny_temperature_is_the_argmax_in_generate(trained, tmp_path, capsys):
    work, _ = trained
    answers = [run(capsys, "generate", "--out", tmp_path / "c.syx", "--temperature", t, "--allow-silent",
                   "--checkpoint", work) for t in (0, 1e-40)]
    assert answers[0] == answers[1]  # the same file, or (the tiny model's argmax repeats itself) the same error


@pytest.mark.slow
def test_a_model_without_32_usable_voices_says_what_it_kept(trained, tmp_path, capsys, monkeypatch):
    work, _ = trained
    monkeypatch.setattr(cartridges, "MAX_CANDIDATES", 40)  # a cap the tiny model reaches quickly
    model = checkpoint.load(work)
    every = next(cartridges.cartridges(model, 1, temperature=1.0, seed=1))
    facts = data.training_facts(every.voices)  # as if all it makes were training voices (its prior kept)
    cart = next(cartridges.cartridges(model._replace(training={**model.training, **facts}), 1, temperature=1.0, seed=1))
    assert sum(cart.redrawn.values()) == 40 and sum(cart.kept.values()) > 0 and "training_copy" in cart.kept
    code, out, _ = run(capsys, "generate", "--out", tmp_path / "c.syx", "--temperature", 0, "--checkpoint", work)
    assert code == 0 and ("note: after 40 candidates it kept" in out) == ("redrew 40" in out)


def test_a_bad_destination_fails_before_the_model_loads(tmp_path, capsys):
    (tmp_path / "dir.syx").mkdir()
    (tmp_path / "file").write_bytes(b"")
    missing = tmp_path / "no-such-checkpoint"  # loading it would fail: the destination is checked first
    for argv, named in [(["generate", "--out", "/proc/x.syx"], "/proc/x.syx: cannot write there"),
                        (["generate", "--out", tmp_path / "dir.syx"], f"{tmp_path / 'dir.syx'}: is a directory"),
                        (["generate", "--out", tmp_path / "file" / "x.syx", "--count", 2], "not a directory"),
                        (["interpolate", "a.syx:1", "b.syx:1", "--out", tmp_path / "dir.syx"], "is a directory"),
                        (["variations", "a.syx:1", "--out", tmp_path / "dir.syx"], "is a directory")]:
        code, _, err = run(capsys, *argv, "--checkpoint", missing)
        assert code == 2 and named in err and ".tmp" not in err and "no-such-checkpoint" not in err, err


@pytest.mark.slow
def test_features(trained, tmp_path, capsys):
    work, dataset = trained
    code, out, _ = run(capsys, "features", "--out", tmp_path / "f.npz", "--checkpoint", work)
    assert code == 0 and "features.json" in out
    summary = json.loads(checkpoint.features_path(work).read_text())
    n = sum(len(data.load_dataset(dataset)[s]) for s in data.SPLITS)
    assert summary["count"] == n and summary["dataset"] == dataset.name  # no machine path is stored
    model = checkpoint.load(work / "checkpoints")
    assert model.features == summary
    latent = config.test().model.latent
    prior, gauss = priors.prior_of(model), priors.prior_of(model, "gaussian")
    train_voices = data.load_dataset(dataset)["train"]
    assert prior.name == "posterior" and prior.means.shape == (len(train_voices), latent)  # one per training voice
    mixture = priors.prior_of(model, "mixture")
    assert mixture.means.shape[1:] == (latent,) and mixture.chols.shape[1:] == (latent, latent)
    assert gauss.means.shape == (1, latent) and np.allclose(gauss.chols[0] @ gauss.chols[0].T, summary["prior"]["cov"])
    np.testing.assert_array_equal(model.training["value_counts"], data.value_counts(train_voices))
    assert len(model.training["voice_keys"]) == len(np.unique(train_voices[:, dx7.NON_NAME], axis=0))
    feats = np.load(tmp_path / "f.npz")
    assert feats["zk"].shape == (n, config.test().model.latent)
    np.testing.assert_allclose(feats["mean"], summary["mean"], rtol=1e-6)
    np.testing.assert_allclose(feats["std"], feats["zk"].std(0), rtol=1e-5)


@pytest.mark.slow
def test_duplicates(trained, tmp_path, capsys):
    work, _ = trained
    code, out, _ = run(capsys, "duplicates", "--samples", 100, "--batch", 32, "--temperature", 1.0,
                       "--json", "--checkpoint", work)
    result = json.loads(out)
    assert code == 0 and result["samples"] == 100 and result["valid_fraction"] == 1.0
    assert result["novel_fraction"] is not None and result["training_copies"] >= 0
    assert 0 < result["unique_fraction"] <= 1 and result["throughput"] > 0
    code, out, _ = run(capsys, "duplicates", "--samples", 64, "--batch", 32, "--checkpoint", work)
    assert code == 0 and "unique" in out and "novel" in out and "samples/s" in out
    code, _, err = run(capsys, "duplicates", "--samples", 8, "--data", tmp_path / "missing.npz", "--checkpoint", work)
    assert code == 2 and "missing.npz" in err


@pytest.mark.slow
def test_evaluate(trained, shared_data, tmp_path, capsys):
    work, dataset = trained
    voices = dx7.load(shared_data / "factory" / "rom1a.syx")
    voices[3, 0] = 120  # out of range
    files.write_atomic(tmp_path / "bad.syx", b"".join(dx7.single_voice_message(v) for v in voices[:5]))
    code, out, _ = run(capsys, "evaluate", tmp_path / "bad.syx", "--json", "--checkpoint", work)
    report = json.loads(out)
    assert code == 0 and report["count"] == 5 and report["valid"] == 4
    assert report["invalid"] == [dict(index=4, name=dx7.voice_name(voices[3]), out_of_range=["OP6 R1=120"])]
    assert 0 <= report["model"]["reconstruction_accuracy"] <= 1
    assert report["model"]["neg_elbo_per_param"] > 0 and report["baseline"]["ce_per_param"] > 0
    assert report["dataset"] is None  # the baseline's counts are stored with the model
    code, out, _ = run(capsys, "evaluate", tmp_path / "bad.syx", "--json", "--data", dataset, "--checkpoint", work)
    assert json.loads(out)["baseline"] == report["baseline"] and json.loads(out)["dataset"] == str(dataset)
    assert 0 <= report["estimated_audible_fraction"] <= 1 and report["names"]["names"] == 5
    code, out, _ = run(capsys, "evaluate", tmp_path / "bad.syx", "--checkpoint", work)
    assert code == 0 and "5 voices, 4 valid" in out and "OP6 R1=120" in out
    assert "accuracy" in out and "baseline" in out and "audible at C4 (estimated)" in out
    rom = shared_data / "factory"
    code, out, _ = run(capsys, "evaluate", rom / "rom1a.syx", rom / "rom1b.syx", "--reference", rom / "rom2a.syx",
                       "--json", "--checkpoint", work)
    report = json.loads(out)
    assert report["count"] == 64 and report["names"]["distinct_names_per_cartridge"] == 1.0
    tv = studies.marginal_tv(np.concatenate([dx7.load(rom / "rom1a.syx"), dx7.load(rom / "rom1b.syx")]),
                            dx7.load(rom / "rom2a.syx"))
    assert report["marginal_tv"] == dict(mean=pytest.approx(tv[:145].mean()), algorithm=pytest.approx(tv[dx7.ALG]),
                                         reference_voices=32)


@pytest.mark.slow
def test_evaluate_realism(trained, shared_data, sklearn, capsys, monkeypatch):
    work, _ = trained
    rom = shared_data / "factory"
    args = ("evaluate", rom / "rom1a.syx", rom / "rom1b.syx", "--reference", rom / "rom2a.syx", "--checkpoint", work)
    code, out, _ = run(capsys, *args, "--json")
    c2st = json.loads(out)["c2st"]
    assert code == 0 and c2st["voices"] == 32 and 0 <= c2st["accuracy"] <= 1  # 64 voices subsampled to 32
    assert c2st == studies.c2st(np.concatenate([dx7.load(rom / "rom1a.syx"), dx7.load(rom / "rom1b.syx")]),
                                dx7.load(rom / "rom2a.syx"), seed=0)
    code, out, _ = run(capsys, *args, "--seed", 3)
    assert code == 0 and "C2ST vs" in out and "(32 voices a side" in out
    for name in ["sklearn", *(m for m in sys.modules if m.startswith("sklearn."))]:
        monkeypatch.setitem(sys.modules, name, None)  # as if the realism extra were not installed
    code, out, err = run(capsys, *args)
    assert code == 0 and "needs scikit-learn" in out and "marginal TV" in out and not err


@pytest.mark.slow
def test_generate_like_and_priors(trained, shared_data, tmp_path, capsys):
    work, dataset = trained
    rom = shared_data / "factory" / "rom1a.syx"
    code, out, _ = run(capsys, "generate", "--out", tmp_path / "brass.syx", "--like", rom, "--name", "BRASS",
                       "--checkpoint", work)
    brass = [v for v in dx7.load(rom) if "BRASS" in dx7.voice_name(v)]
    assert code == 0 and f"near {len(brass)} voice(s)" in out and "like prior" in out
    like = dx7.load(tmp_path / "brass.syx")
    code, out, _ = run(capsys, "generate", "--out", tmp_path / "any.syx", "--prior", "standard", "--checkpoint", work)
    assert code == 0 and "standard prior" in out
    model = checkpoint.load(work)  # without --temperature: 1, values sampled
    expected = next(cartridges.cartridges(model, 1, temperature=1.0, seed=0, prior=sample.like_prior(model, np.asarray(brass), seed=0)))
    np.testing.assert_array_equal(like, expected.voices)  # the brass voices' density, as the library fits it
    standard = next(cartridges.cartridges(model, 1, temperature=1.0, seed=0, prior="standard"))
    np.testing.assert_array_equal(dx7.load(tmp_path / "any.syx"), standard.voices)
    for argv, message in [(["--name", "BRASS"], "give --like too"),
                          (["--like", rom, "--prior", "standard"], "give one"),
                          (["--like", rom, "--name", "NOSUCHNAME"], "no valid voices"),
                          (["--like", rom, "--name", "("], "bad --name pattern")]:
        code, _, err = run(capsys, "generate", "--out", tmp_path / "x.syx", *argv, "--checkpoint", work)
        assert code == 2 and message in err, err


@pytest.mark.slow
def test_audio_figures_of_duplicates_and_evaluate(trained, shared_data, dexed, capsys):
    from neuraldx7_jax import audio
    work, dataset = trained
    code, out, _ = run(capsys, "duplicates", "--samples", 64, "--audio", 16, "--json", "--checkpoint", work)
    report = json.loads(out)
    voices = sample.sample_prior(checkpoint.load(work), 16, temperature=1.0)  # the study's default
    assert report["audio_voices"] == 16
    assert report["audible_fraction"] == audio.audible_fraction(voices)
    assert 0 <= report["training_audible_fraction"] <= 1
    code, out, _ = run(capsys, "evaluate", shared_data / "factory" / "rom1a.syx", "--audio", "--json",
                       "--checkpoint", work)
    report = json.loads(out)
    assert report["audio_voices"] == 32
    assert report["audible_fraction"] == audio.audible_fraction(dx7.load(shared_data / "factory" / "rom1a.syx"))


TABLES = dict(train=train_command.OPTIONS, generate=generate.GENERATE, interpolate=generate.INTERPOLATE,
              variations=generate.VARIATIONS, features=generate.FEATURES, duplicates=generate.DUPLICATES,
              evaluate=generate.EVALUATE)


@pytest.mark.parametrize("name", sorted(TABLES))
def test_a_launcher_reads_what_the_command_reads(name):
    """argparse and absl, both built from one option table, give the same values for the same options."""
    from absl import flags

    table = TABLES[name]
    argv = {o.name: ["x.syx"] if o.many else "x" if o.type is str and not o.choices else o.choices[0]
            if o.choices else 3 if o.type is int else 0.5 if o.type is float else ["a.b=1"]
            for o in table if o.type is not bool}
    parser = argparse.ArgumentParser()
    options.add_arguments(parser, table)
    ours = ["--" + o.name.replace("_", "-") for o in table if o.type is bool]
    theirs = ["--" + o.name for o in table if o.type is bool]
    for o in table:
        if o.type is bool:
            continue
        values = [str(v) for v in argv[o.name]] if isinstance(argv[o.name], list) else [str(argv[o.name])]
        ours += values if o.positional else ["--" + o.name.replace("_", "-"), *values]
        theirs += [f"--{o.name}={v}" for v in values]
    parsed = vars(parser.parse_args(ours))
    fv = flags.FlagValues()
    options.define_flags(table, fv)
    fv(["launcher", *theirs])
    assert {o.name: parsed[o.name] for o in table} == {o.name: fv[o.name].value for o in table}


@pytest.mark.slow
def test_a_launcher_runs_the_command(trained):
    work, _ = trained
    out = subprocess.run([sys.executable, str(ROOT / "experiments" / "dx7_vae" / "duplicate_test.py"),
                          "--checkpoint", str(work), "--samples", "32", "--batch", "32", "--json"],
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    assert json.loads(out.stdout)["samples"] == 32
    out = subprocess.run([sys.executable, str(ROOT / "experiments" / "dx7_vae" / "evaluate.py"),
                          "--checkpoint", str(work / "nothing")], capture_output=True, text=True, timeout=600)
    assert out.returncode == 1 and "--file" in out.stderr  # absl: a required flag is missing


@pytest.mark.slow
def test_the_train_launcher_is_quiet_unless_asked(tmp_path):
    """`experiments/dx7_vae/train.py` printed ~80 orbax INFO records per checkpoint on stderr
    (absl.app raises the level to INFO); now none, and absl's --verbosity brings them back."""
    voices = random_voices(40, 3)
    np.savez(tmp_path / "d.npz", train=voices[:32], validation=voices[32:])

    def launch(steps, *extra):
        out = subprocess.run([sys.executable, str(ROOT / "experiments" / "dx7_vae" / "train.py"), "--config", "test",
                              "--data", str(tmp_path / "d.npz"), "--workdir", str(tmp_path / "w"), "--steps", str(steps),
                              "--checkpoint_every", "1", *extra], capture_output=True, text=True, timeout=600)
        assert out.returncode == 0, out.stderr[-2000:]
        return [line for line in out.stderr.splitlines() if re.match(r"I\d{4} ", line)]  # absl INFO records
    assert launch(2) == []  # two checkpoints
    assert any("checkpoint" in line.lower() for line in launch(3, "--verbosity", "0"))


@pytest.mark.parametrize("argv, words", [
    (["generate", "--out", "{tmp}/c.syx", "--seed", str(2 ** 70)], "the seed must be in 0..4294967295, got"),
    (["generate", "--out", "{tmp}/c.syx", "--seed", str(2 ** 32)], "the seed must be in 0..4294967295, got"),  # wrapped to 0
    (["generate", "--out", "{tmp}/c.syx", "--seed=-1"], "the seed must be in 0..4294967295, got -1"),
    (["train", "--data", "{tmp}/d.npz", "--workdir", "{tmp}/w", "--steps", "0"], "--steps must be >= 1, got 0"),
    (["train", "--data", "{tmp}/d.npz", "--workdir", "{tmp}/w", "--steps", "5", "--seed", str(2 ** 40)], "the seed must be"),
    (["train", "--data", "{tmp}/d.npz", "--workdir", "{tmp}/w", "--steps", "5", "--batch-size", "0"],
     "batch_size must be >= 1, not 0"),
    (["train", "--data", "{tmp}/d.npz", "--workdir", "{tmp}/w", "--steps", "5", "--learning-rate=-0.001"],
     "learning_rate must be a finite number > 0, not -0.001"),
    (["serve", "--port", "99999"], "bad port 99999: a TCP port is in 0..65535"),
])
def test_out_of_range_numbers_are_one_line_errors(argv, words, tmp_path, capsys):
    """Each was a traceback, or silently accepted (a seed wrapped modulo 2^32, 0 steps, a negative
    learning rate); nothing is written."""
    code, out, err = run(capsys, *(a.format(tmp=tmp_path) for a in argv))
    assert code == 2 and words in err and err.count("\n") == 1, err
    assert list(tmp_path.iterdir()) == []
