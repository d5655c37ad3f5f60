"""Fixtures shared by every test package: where ../shared lives, published weights, a real fundus image."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
M2UNET_WEIGHTS = SHARED / "models" / "m2unet"


def shared_file(*parts: str) -> Path:
    """A file under ../shared, or a clean skip naming what is missing."""
    p = SHARED.joinpath(*parts)
    if not p.is_file():
        pytest.skip(f"{p} is absent (the published checkpoints live in ../shared beside the checkout)")
    return p


@pytest.fixture(scope="session")
def drive_weights() -> Path:
    return shared_file("models", "m2unet", "M2UNetDRIVE.pth")


@pytest.fixture(scope="session")
def hrf_weights() -> Path:
    return shared_file("models", "m2unet", "M2UNetHRF.pth")


@pytest.fixture(scope="session")
def retina_rgb() -> np.ndarray:
    """scikit-image's real fundus photograph (CC0), RGB uint8, 1411x1411."""
    from skimage import data

    return data.retina()
