"""Shared fixtures. Tests use the real shipped data and real toolchains; nothing is mocked."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session", autouse=True)
def _own_cache(tmp_path_factory):
    """Learned weight rounding (edgekit.quant.adaround) caches under $EDGEKIT_CACHE_DIR: one folder
    per test session, shared by its exports, never the user's ~/.cache."""
    import os

    before = os.environ.get("EDGEKIT_CACHE_DIR")
    os.environ["EDGEKIT_CACHE_DIR"] = str(tmp_path_factory.mktemp("edgekit-cache"))
    yield
    if before is None:
        os.environ.pop("EDGEKIT_CACHE_DIR", None)
    else:
        os.environ["EDGEKIT_CACHE_DIR"] = before


@pytest.fixture(scope="session")
def calib_root() -> Path:
    from edgekit.models import calibration_root

    return calibration_root()


@pytest.fixture
def image_dir(tmp_path) -> Path:
    """A few small deterministic RGB images of different sizes (for loader unit tests)."""
    from PIL import Image

    rng = np.random.default_rng(0)
    d = tmp_path / "imgs"
    d.mkdir()
    for i, (w, h) in enumerate([(64, 48), (40, 80), (50, 50)]):
        Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(d / f"img{i}.png")
    return d
