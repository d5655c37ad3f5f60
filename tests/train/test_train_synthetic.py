"""The synthetic fundus generator: shapes, exact binary masks, a circular FOV, determinism, full HRF size."""
from __future__ import annotations

import numpy as np
import pytest

from edge.errors import InputError
from models.train.synthetic import synthetic_fundus


@pytest.mark.parametrize("size", [(64, 64), (128, 96), (584, 565)])
def test_shapes_and_types(size):
    f = synthetic_fundus(*size, seed=3)
    assert f.image.shape == (*size, 3) and f.image.dtype == np.uint8
    assert f.vessels.shape == size and f.vessels.dtype == bool
    assert f.fov.shape == size and f.fov.dtype == bool


def test_vessels_inside_fov_and_plausible_fraction():
    f = synthetic_fundus(584, 565, seed=1)
    assert not (f.vessels & ~f.fov).any()
    assert 0.03 < f.vessels[f.fov].mean() < 0.25  # DRIVE's manual labels: about 0.12 of the FOV
    # the photo is black outside the FOV and vessels are darker (green) than the background around them
    assert np.percentile(f.image[~f.fov], 99) <= 10  # (JPEG rings a little at the rim)
    assert f.image[..., 1][f.vessels].mean() < f.image[..., 1][f.fov & ~f.vessels].mean() - 5


def test_fov_is_a_disc():
    f = synthetic_fundus(300, 400, seed=5)
    ys, xs = np.nonzero(f.fov)
    cy, cx = ys.mean(), xs.mean()
    r = np.sqrt(f.fov.sum() / np.pi)
    yy, xx = np.mgrid[0:300, 0:400]
    disc = (yy - cy) ** 2 + (xx - cx) ** 2 <= r ** 2
    assert (disc != f.fov).mean() < 0.01  # only the rim pixels may differ
    assert r < 150 and abs(cx - 200) < 8 and abs(cy - 150) < 8


def test_deterministic_per_seed():
    a, b, c = synthetic_fundus(96, 128, 7), synthetic_fundus(96, 128, 7), synthetic_fundus(96, 128, 8)
    assert np.array_equal(a.image, b.image) and np.array_equal(a.vessels, b.vessels)
    assert not np.array_equal(a.vessels, c.vessels)


def test_hrf_size():
    f = synthetic_fundus(2336, 3504, seed=0)
    assert f.image.shape == (2336, 3504, 3)
    assert 0.03 < f.vessels[f.fov].mean() < 0.25


def test_too_small():
    with pytest.raises(InputError, match="at least 16x16"):
        synthetic_fundus(8, 64)
