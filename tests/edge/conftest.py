"""Fixtures of the runtime tests: a test package (host arch), its aarch64 twin, a synthetic fundus photo."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edge_fixtures import build_package, synthetic_fundus, variant


@pytest.fixture(scope="session")
def package(tmp_path_factory) -> Path:
    return build_package(tmp_path_factory.mktemp("pkg") / "tiny")


@pytest.fixture(scope="session")
def arm_package(package, tmp_path_factory) -> Path:
    """The same members, but meta.json says the library is for aarch64 (as a cross-compiled package)."""
    return variant(package, tmp_path_factory.mktemp("pkg") / "arm", target={"arch": "aarch64", "preset": "arm64"})


@pytest.fixture
def fundus() -> np.ndarray:
    return synthetic_fundus()
