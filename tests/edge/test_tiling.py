"""Sliding-window inference with injected predictors and exact expectations."""
from __future__ import annotations

import numpy as np
import pytest

from edge.errors import EdgeError, InputError
from edge.tiling import (blend_weights, count_tiles, padded_size, sliding_window_inference, tile_starts)


def rand_image(c: int, h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((c, h, w), dtype=np.float32)


@pytest.mark.parametrize("h,w", [(37, 53), (64, 64), (200, 130), (545, 583)])
def test_plus_one_constant_blend_is_exact(h, w):
    img = rand_image(3, h, w)
    out = sliding_window_inference(img, lambda x: x + 1, (64, 64), overlap=16, divisor=16, blend="constant")
    assert out.shape == img.shape and out.dtype == np.float32
    np.testing.assert_array_equal(out, img + 1)


@pytest.mark.parametrize("blend", ["gaussian", "linear", "constant"])
@pytest.mark.parametrize("h,w", [(37, 53), (1, 1), (5, 300), (545, 583)])
def test_identity_on_odd_and_small_sizes(blend, h, w):
    img = rand_image(2, h, w, seed=h)
    out = sliding_window_inference(img, lambda x: x, (96, 64), overlap=24, divisor=16, blend=blend)
    assert out.shape == img.shape
    np.testing.assert_allclose(out, img, rtol=2e-6, atol=0)


def test_tiles_have_the_exact_tile_shape_and_grid_origin():
    seen = []

    def pred(x):
        seen.append(x.shape)
        return x[:, :1]

    sliding_window_inference(rand_image(3, 100, 150), pred, (64, 48), overlap=8, divisor=16)
    assert seen and all(s == (1, 3, 64, 48) for s in seen)
    assert len(seen) == count_tiles(100, 150, (64, 48), 8, 16)


def test_input_dtype_is_passed_to_the_predictor():
    img = (rand_image(3, 70, 70) * 255).astype(np.uint8)
    out = sliding_window_inference(img, lambda x: x.astype(np.float32) / 255, (64, 64), 16, 16, "constant")
    np.testing.assert_array_equal(out, img.astype(np.float32) / 255)


@pytest.mark.parametrize("size,tile,overlap,divisor", [
    (64, 64, 0, 16), (80, 64, 16, 16), (2336, 544, 64, 16), (3504, 544, 64, 16), (583, 96, 24, 1),
    (1000, 100, 99, 1), (4096, 544, 200, 32)])
def test_tile_starts_cover_every_pixel_with_the_overlap(size, tile, overlap, divisor):
    starts = tile_starts(size, tile, overlap, divisor)
    covered = np.zeros(size, bool)
    for s in starts:
        covered[s:s + tile] = True
    assert covered.all()
    assert starts[0] == 0 and starts[-1] == size - tile
    assert all(s % divisor == 0 for s in starts[:-1])
    assert all(b - a <= tile - overlap for a, b in zip(starts, starts[1:]))  # neighbours overlap enough


def test_every_pixel_of_the_image_is_predicted():
    def ones(x):
        return np.ones((1, 1, *x.shape[2:]), np.float32)

    h, w = 545, 583
    counts = sliding_window_inference(np.zeros((1, h, w), np.float32), ones, (96, 96), 32, 16, "constant")
    np.testing.assert_array_equal(counts, 1.0)  # weight sums > 0 everywhere: nothing left unpredicted


def test_padded_sizes():
    assert padded_size(37, 64, 16) == 64  # smaller than the tile: up to the tile
    assert padded_size(545, 64, 16) == 560  # larger: up to the divisor
    assert padded_size(2336, 544, 16) == 2336


@pytest.mark.parametrize("blend", ["gaussian", "linear", "constant"])
@pytest.mark.parametrize("overlap", [0, 16, 63])
def test_weights_are_strictly_positive_at_the_edges(blend, overlap):
    w = blend_weights((64, 80), overlap, blend)
    assert w.shape == (64, 80) and w.dtype == np.float32
    assert w.min() > 0
    assert w[0, 0] > 0 and w[-1, -1] > 0 and w[0, 40] > 0
    assert w.max() == pytest.approx(1.0)
    if blend != "constant":
        assert w[32, 40] > w[0, 40]  # the centre of a tile counts more than its edge


def test_gaussian_blend_favours_tile_centres():
    """Where two tiles overlap, the one whose centre is nearer wins: a predictor returning the tile's origin
    shows the left tile's value near its centre and the right tile's value near the right one's centre."""
    img = np.zeros((1, 64, 112), np.float32)  # two tiles: x=0 and x=48 (overlap 16 at divisor 16)
    origins = iter([0.0, 1.0])

    def which(x):
        return np.full((1, 1, *x.shape[2:]), next(origins), np.float32)

    out = sliding_window_inference(img, which, (64, 64), 16, 16, "gaussian")[0]
    assert out[32, 10] == 0.0 and out[32, 100] == 1.0
    assert 0.0 < out[32, 52] < 0.5 < out[32, 60] < 1.0  # smooth hand-over inside the overlap 48..63


def test_bad_arguments():
    img = rand_image(1, 40, 40)
    with pytest.raises(InputError, match="overlap 64 must be"):
        sliding_window_inference(img, lambda x: x, (64, 64), 64, 16)
    with pytest.raises(InputError, match="not a multiple of the divisor"):
        sliding_window_inference(img, lambda x: x, (60, 64), 0, 16)
    with pytest.raises(EdgeError, match="did you mean 'gaussian'"):
        sliding_window_inference(img, lambda x: x, (64, 64), 0, 16, "gausian")
    with pytest.raises(InputError, match="predictor returned shape"):
        sliding_window_inference(img, lambda x: x[0], (64, 64), 0, 16)


def test_tiles_are_spread_evenly_with_the_fewest_tiles():
    # 2336 px with 544-px tiles and overlap >= 256 on a 16-px grid: 8 tiles; even gaps of 256 px, none wider
    starts = tile_starts(2336, 544, 256, 16)
    assert len(starts) == 8 and starts[0] == 0 and starts[-1] == 1792
    gaps = np.diff(starts)
    assert gaps.max() <= 544 - 256 and gaps.max() - gaps.min() <= 16
    assert len(tile_starts(2336, 544, 256 - 16, 16)) == 7  # a little less overlap: one tile fewer


def test_plan_tile_for_an_hrf_photograph():
    """2336x3504 with M2U-Net's 224-px overlap and 2.5 Mpx tiles: 4 tiles of 1280x1872, 1.17x the pixels, where
    544 tiles compute 2.78x (77 tiles)."""
    from edge.tiling import plan_tile

    p = plan_tile((2336, 3504), 224, 16, 2_500_000)
    assert p.tile == (1280, 1872) and p.tiles == 4
    assert p.tiles == count_tiles(2336, 3504, p.tile, 224, 16)  # what the runtime will do
    assert p.cost_factor == pytest.approx(4 * 1280 * 1872 / (2336 * 3504))
    assert count_tiles(2336, 3504, (544, 544), 224, 16) * 544 * 544 / (2336 * 3504) > 2.7


@pytest.mark.parametrize("image,overlap,divisor,budget", [
    ((584, 565), 224, 16, 2_500_000), ((960, 999), 224, 16, 400_000), ((1411, 1411), 64, 32, 300_000),
    ((3504, 2336), 224, 16, 1_000_000), ((37, 900), 8, 8, 4096),
])
def test_plan_tile_is_the_cheapest_layout_within_the_budget(image, overlap, divisor, budget):
    """Brute force over every tile on the grid: nothing within the budget computes fewer pixels."""
    from edge.tiling import plan_tile

    p = plan_tile(image, overlap, divisor, budget)
    th, tw = p.tile
    assert th % divisor == 0 and tw % divisor == 0 and th * tw <= budget and min(th, tw) > overlap
    assert p.computed_pixels == count_tiles(*image, p.tile, overlap, divisor) * th * tw
    h_sides = range(-(-(overlap + 1) // divisor) * divisor, -(-image[0] // divisor) * divisor + 1, divisor)
    w_sides = range(-(-(overlap + 1) // divisor) * divisor, -(-image[1] // divisor) * divisor + 1, divisor)
    best = min(count_tiles(*image, (a, b), overlap, divisor) * a * b for a in h_sides for b in w_sides
               if a * b <= budget)
    assert p.computed_pixels == best


def test_plan_tile_refuses_a_budget_below_the_overlap():
    from edge.tiling import plan_tile

    with pytest.raises(InputError, match=r"no tile of at most 0\.01 Mpx fits an overlap of 224 px.*raise the tile"):
        plan_tile((2336, 3504), 224, 16, 10_000)
