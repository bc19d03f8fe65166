"""Cartridges: no silent voice, no repeat, no copy of a training voice; written as drawn."""
import numpy as np
import pytest

from neuraldx7_jax import cartridges, data, dx7, loudness


@pytest.fixture(scope="module")
def model(random_model):
    return random_model


def test_generate_cartridges(model, tmp_path):
    written = list(cartridges.generate_cartridges(model, tmp_path / "c.syx", count=3, temperature=1.0, seed=2, batch=32))
    assert [p.name for p, _ in written] == ["c_001.syx", "c_002.syx", "c_003.syx"]
    every = np.concatenate([cart.voices for _, cart in written])
    for path, cart in written:
        v = dx7.load(path)
        np.testing.assert_array_equal(v, cart.voices)
        assert v.shape == (32, dx7.N_PARAMS) and dx7.is_valid(v).all()
        assert ((v[:, dx7.NAME] >= 32) & (v[:, dx7.NAME] <= 126)).all()
    assert not loudness.estimated_silent(every).any()
    assert len(np.unique(every[:, dx7.NON_NAME], axis=0)) == 96  # no voice twice, names aside
    assert sum(written[0][1].redrawn.values()) > 0  # random weights make silent voices: redrawn
    alone = list(cartridges.generate_cartridges(model, tmp_path / "one.syx", count=1, temperature=1.0, seed=2))
    assert alone[0][0] == tmp_path / "one.syx"  # cartridge 1 does not depend on the count
    assert (tmp_path / "one.syx").read_bytes() == (tmp_path / "c_001.syx").read_bytes()
    kept = next(cartridges.cartridges(model, 1, temperature=1.0, seed=2, allow_silent=True))
    assert kept.redrawn["silent"] == 0 and loudness.estimated_silent(kept.voices).any()


def test_cartridges_redraw_copies_of_training_voices(model):
    first = next(cartridges.cartridges(model, 1, temperature=0.0, seed=4))
    facts = data.training_facts(first.voices[:5])  # as if these five were the training set
    again = next(cartridges.cartridges(model._replace(training=facts), 1, temperature=0.0, seed=4))
    assert again.redrawn["training_copy"] == 5
    np.testing.assert_array_equal(again.voices[:27, dx7.NON_NAME], first.voices[5:, dx7.NON_NAME])
