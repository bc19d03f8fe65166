import importlib.util
import os
from pathlib import Path

import pytest

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
