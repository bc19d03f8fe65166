"""The model shipped in the package: the quick start's `neuraldx7 generate --out cart.syx`."""
import numpy as np

from neuraldx7_jax import cli, config, dx7, live, sample


def test_generate_with_the_bundled_model(tmp_path, capsys):
    assert cli.main(["generate", "--out", str(tmp_path / "cart.syx")]) == 0
    voices = dx7.load(tmp_path / "cart.syx")
    assert voices.shape == (32, dx7.N_PARAMS) and dx7.is_valid(voices).all()
    assert len({v.tobytes() for v in voices}) == 32


def test_bundled_model_is_the_bundled_preset_with_a_features_summary():
    model = sample.load_model()
    assert model.config == config.bundled()
    mean, std = live.latent_summary(model)
    assert mean.shape == std.shape == (model.config.model.latent,) and np.all(std > 0)
