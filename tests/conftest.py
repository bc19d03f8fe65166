import importlib.util
import os
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from neuraldx7_jax import dx7

jax.config.update("jax_numpy_rank_promotion", "raise")  # silent broadcasting is an error in tests

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
DATA = SHARED / "data"


@pytest.fixture(scope="session")
def shared_data():
    """`../shared/data`: skipped with a reason when absent, a failure in CI (CI always has it)."""
    if not DATA.is_dir():
        if os.environ.get("CI"):
            pytest.fail(f"{DATA} is missing in CI")
        pytest.skip(f"real DX7 data not found at {DATA}")
    return DATA


@pytest.fixture(scope="session")
def dexed():
    """dexed-py and matplotlib (the `audio` extra): skipped when absent, a failure in CI (CI installs it)."""
    missing = [m for m in ("dexed", "matplotlib") if importlib.util.find_spec(m) is None]
    if missing:
        reason = f"{', '.join(missing)} not installed: pip install -e '.[audio]'"
        if os.environ.get("CI"):
            pytest.fail(f"{reason} (CI must install the audio extra)")
        pytest.skip(reason)


@pytest.fixture(scope="session")
def sklearn():
    """scikit-learn (the `realism` extra): skipped when absent, a failure in CI (CI installs it)."""
    if importlib.util.find_spec("sklearn") is None:
        reason = "scikit-learn not installed: pip install -e '.[realism]'"
        if os.environ.get("CI"):
            pytest.fail(f"{reason} (CI must install the realism extra)")
        pytest.skip(reason)


def random_voices(n, seed=0):
    """(n, 155) uint8 voices, every field uniformly random in its range (all valid)."""
    return np.random.default_rng(seed).integers(0, dx7.MAX.astype(int) + 1, (n, dx7.N_PARAMS)).astype(np.uint8)


def make_random_model(decoder="independent"):
    """The tiny test model (with `decoder`) with random parameters (shapes from eval_shape: no
    compilation), no meta."""
    from neuraldx7_jax import checkpoint, config
    from neuraldx7_jax.model import VAE

    cfg = config.override(config.test(), [f"model.decoder={decoder}"])
    shapes = jax.eval_shape(VAE(cfg.model).init, jax.random.key(0), jnp.zeros((1, dx7.N_PARAMS), jnp.int32),
                            jnp.zeros((1, cfg.model.latent)))["params"]
    rng = np.random.default_rng(0)
    params = jax.tree.map(lambda s: rng.normal(0.0, 0.5, s.shape).astype(np.float32), shapes)
    return checkpoint.Model(cfg, params, None, Path("."))


@pytest.fixture(scope="session")
def random_model():
    """`make_random_model()`, one per session."""
    return make_random_model()


@pytest.fixture(scope="session")
def random_masked_model():
    """`make_random_model("masked")`, one per session."""
    return make_random_model("masked")


@pytest.fixture(scope="session")
def trained(shared_data, tmp_path_factory):
    """(work directory, dataset) of the test config trained 20 steps on the factory cartridges, with
    its features and training facts, as `neuraldx7 train` leaves it. Shared: tests copy it to change it."""
    from neuraldx7_jax import config, data, features, train

    root = tmp_path_factory.mktemp("trained")
    # No validation split: training then compiles no evaluation step.
    data.build_dataset([shared_data / "factory"], root / "data.npz", validation_fraction=0.0, progress=False)
    train.train_and_evaluate(config.test(), root / "data.npz", root / "work", steps=20,
                             checkpoint_every=20, eval_every=20, progress=False)
    features.write(root / "work", root / "data.npz")  # as `train` does at its end
    return root / "work", root / "data.npz"
