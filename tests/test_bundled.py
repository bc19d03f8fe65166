"""The model shipped in the package: the quick start's `neuraldx7 generate --out cart.syx`."""
import numpy as np
import pytest

from neuraldx7_jax import checkpoint, cli, config, dx7, names, priors, studies


@pytest.mark.slow
def test_generate_with_the_bundled_model(tmp_path, capsys):
    assert cli.main(["generate", "--out", str(tmp_path / "cart.syx")]) == 0
    voices = dx7.load(tmp_path / "cart.syx")
    assert voices.shape == (32, dx7.N_PARAMS) and dx7.is_valid(voices).all()
    assert len({v.tobytes() for v in voices}) == 32


def test_bundled_model_is_the_bundled_preset_with_a_features_summary():
    model = checkpoint.load()
    assert model.config == config.bundled()
    mean, std = checkpoint.latent_summary(model)
    assert mean.shape == std.shape == (model.config.model.latent,) and np.all(std > 0)


def test_bundled_model_ships_its_prior_and_training_facts_and_no_machine_path():
    model = checkpoint.load()
    names = [priors.prior_of(model, name).name for name in (None, "mixture", "gaussian")]
    assert names == ["posterior", "mixture", "gaussian"]
    assert model.training["value_counts"].sum() == dx7.N_PARAMS * int(model.training["count"])
    assert "/" not in (model.meta.dataset.path or "") and "/" not in model.features["dataset"]


@pytest.mark.slow
def test_like_draws_near_the_voices_it_is_given(shared_data, tmp_path, capsys):
    """`--like` samples sit closer to the voices they are like than default samples do (median
    distance to the nearest of them, 145 values: 52.5 against 82). Three related voices (the
    first three of rom1a): one Gaussian over a whole varied cartridge is no closer to it than the
    mixture prior's samples (67.5 against 66.5)."""
    rom = shared_data / "factory" / "rom1a.syx"
    for name, extra in (("like", ["--like", *(f"{rom}:{i}" for i in (1, 2, 3))]), ("default", [])):
        assert cli.main(["generate", "--out", str(tmp_path / f"{name}.syx"), *extra]) == 0
    capsys.readouterr()
    ours = dx7.load(rom)[:3]
    distance = {name: np.median(studies.nearest_distances(dx7.load(tmp_path / f"{name}.syx"), ours))
                for name in ("like", "default")}
    assert distance["like"] < distance["default"], distance


@pytest.mark.slow
def test_bundled_names_are_words_not_fragments(tmp_path, capsys):
    """Names that are words, not fragments: the beam search's most probable names were short
    ("S", "SY": a fifth had at most two characters, real names 0-1%) until every character but a
    space scored `names.LETTER_BONUS` more."""
    assert cli.main(["generate", "--out", str(tmp_path / "c.syx"), "--count", "2", "--seed", "5"]) == 0
    carts = [dx7.load(p) for p in sorted(tmp_path.glob("c_*.syx"))]
    assert [names.name_figures(c)["distinct_names"] for c in carts] == [1.0, 1.0]
    voices = np.concatenate(carts)
    figures = names.name_figures(voices)
    assert figures["short_name_fraction"] <= 0.05, [dx7.voice_name(v) for v in voices]
    assert figures["letter_run_fraction"] >= 0.9
    assert np.mean([len(dx7.voice_name(v).strip()) for v in voices]) >= 5


def _bundled_bytes():
    return {p.relative_to(checkpoint.BUNDLED): p.read_bytes() for p in sorted(checkpoint.BUNDLED.rglob("*"))
            if p.is_file()}


def test_no_command_writes_into_the_bundled_model(shared_data, tmp_path, capsys):
    """`features --data X` without --checkpoint once rewrote the bundled model's fitted prior and
    training facts (inside the package): the bundled model is read-only, so features, train and
    import-original refuse to write there, in one line with exit code 2, before any work."""
    before = _bundled_bytes()
    rom = str(shared_data / "factory" / "rom1a.syx")
    for argv in (["features", "--data", rom], ["features", "--data", rom, "--checkpoint", "bundled"],
                 ["features", "--data", rom, "--checkpoint", str(checkpoint.BUNDLED / "checkpoints")],
                 ["train", "--data", str(tmp_path / "d.npz"), "--workdir", str(checkpoint.BUNDLED), "--steps", "1"]):
        assert cli.main(argv) == 2, argv
        err = capsys.readouterr().err
        assert "the bundled model is read-only" in err and len(err.strip().splitlines()) == 1, err
    assert _bundled_bytes() == before


@pytest.mark.slow
def test_the_readmes_variations_are_32_distinct_sounds(shared_data, tmp_path, capsys):
    """README: `variations rom1a.syx:1 --spread 1.5 --redraw   # 32 distinct sounds` (at 0.5 it
    said 32 distinct where 8 differed in sound: voices were counted by name too)."""
    assert cli.main(["variations", f"{shared_data / 'factory' / 'rom1a.syx'}:1", "--out", str(tmp_path / "v.syx"),
                     "--spread", "1.5", "--redraw"]) == 0
    assert "32 of 32 voices are distinct" in capsys.readouterr().out
    sounds = dx7.load(tmp_path / "v.syx")[:, dx7.NON_NAME]
    assert len(np.unique(sounds, axis=0)) == 32
