"""Sliding-window inference as a pure numpy function: pad, split into overlapping tiles, predict, blend, crop.

Written by hand (MONAI's ``sliding_window_inference`` is torch-only and the device has no torch); the shape
follows MONAI: any predictor callable, a weight map per tile, one accumulator of the padded image size.

Conventions the runtime relies on:

* Padding is added at the bottom and right only (reflect), so tile origins stay on the same grid as a
  whole-image pass; an image side smaller than the tile is padded up to the tile, a larger side up to the
  next multiple of ``divisor``.
* Tile origins are multiples of ``divisor`` (the stride is rounded down to one), so every tile sees the
  same pooling grid as a whole-image pass; the effective overlap is therefore ``overlap`` rounded up to a
  multiple of ``divisor``. The last tile of a row/column is moved back to end at the padded border.
* The blended quantity is whatever the predictor returns. :mod:`edge.segment` blends **probabilities**
  (sigmoid applied per tile before blending), the usual choice; see its docstring.
* Memory: one float32 accumulator ``(C, Hp, Wp)`` and one weight-sum map ``(Hp, Wp)``; per-tile outputs are
  added as they come and never kept.
"""
from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from edge.errors import InputError, look_up_option

BLENDS = ("gaussian", "linear", "constant")
# sigma = 0.1 * tile side. MONAI uses 0.125; a slightly sharper hand-off between tiles lets the tile that sees
# more context win: M2U-Net HRF on 2336x3504 with 544 tiles, overlap 224: max |prob diff| to a whole-image
# pass 0.062 at 0.125, 0.031 at 0.1 (benchmarks/overlap.py).
GAUSSIAN_SIGMA_SCALE = 0.1


def _ceil_to(n: int, d: int) -> int:
    return -(-n // d) * d


def padded_size(size: int, tile: int, divisor: int) -> int:
    """The side length an image side is padded to before tiling."""
    return tile if size <= tile else _ceil_to(size, divisor)


def tile_starts(size: int, tile: int, overlap: int, divisor: int = 1) -> list[int]:
    """Tile origins along one (already padded) axis of length ``size >= tile``.

    Origins are multiples of ``divisor`` (the last one too when ``size`` and ``tile`` are); consecutive tiles
    overlap by at least ``overlap`` pixels; the first tile starts at 0 and the last ends exactly at ``size``.
    The fewest tiles that satisfy this are spread evenly, so every overlap is about equal and at least the
    requested one (MONAI steps by the stride and leaves one large overlap at the end instead; same count).
    """
    if size < tile:
        raise InputError(f"axis of length {size} is shorter than the tile {tile}; pad it first")
    if not 0 <= overlap < tile:
        raise InputError(f"overlap {overlap} must be >= 0 and smaller than the tile side {tile}; "
                         f"pass --overlap between 0 and {tile - 1}")
    stride = max(divisor, (tile - overlap) // divisor * divisor)
    span = size - tile
    n = -(-span // stride) + 1
    if n == 1:
        return [0]
    # floor(i * span / (n - 1)) on the divisor grid: each gap is at most ceil(span / (n - 1)) rounded up to the
    # grid, which is <= stride because span / (n - 1) <= stride and stride is on the grid.
    starts = [(i * span // (n - 1)) // divisor * divisor for i in range(n - 1)]
    return starts + [span]


@functools.lru_cache(maxsize=8)
def blend_weights(tile: tuple[int, int], overlap: int, mode: str = "gaussian") -> np.ndarray:
    """A (th, tw) float32 weight map, strictly positive everywhere (so no weight sum can be 0).

    ``constant``: all ones. ``gaussian``: exp(-d^2 / 2 sigma^2) around the tile centre with sigma = 0.1 of the
    side (MONAI: 0.125; see ``GAUSSIAN_SIGMA_SCALE``), normalised to a maximum of 1. ``linear``: 1 in the
    interior, ramping down linearly to 1/(overlap+1) over the ``overlap`` pixels next to each edge (feathering;
    fine for small receptive fields, but for M2U-Net it keeps too much of each tile's padded border).
    """
    mode = look_up_option(mode, BLENDS, "blend mode")
    axes = []
    for n in tile:
        i = np.arange(n, dtype=np.float64)
        if mode == "constant":
            w = np.ones(n)
        elif mode == "gaussian":
            sigma = GAUSSIAN_SIGMA_SCALE * n
            w = np.exp(-0.5 * ((i - (n - 1) / 2) / sigma) ** 2)
        else:
            ramp = max(int(overlap), 1)
            w = np.minimum(np.minimum(i + 1, n - i) / (ramp + 1), 1.0)
        axes.append(w)
    w2 = np.outer(axes[0], axes[1])
    w2 /= w2.max()
    # Only underflowed zeros are lifted (as MONAI does): a larger floor would flatten the ratio of two tiles'
    # small edge weights, which is exactly where blending must prefer the tile that sees more context.
    w2 = np.maximum(w2.astype(np.float32), np.finfo(np.float32).tiny)
    w2.flags.writeable = False  # cached: shared by every call with these arguments
    return w2


@functools.lru_cache(maxsize=4)
def _inverse_weight_sum(hp: int, wp: int, ys: tuple[int, ...], xs: tuple[int, ...], tile: tuple[int, int],
                        overlap: int, mode: str) -> np.ndarray:
    """1 / (sum of the tiles' weights) over the padded image: it depends on the layout only, so a batch of
    same-sized photographs computes it once."""
    th, tw = tile
    weights = blend_weights(tile, overlap, mode)
    wsum = np.zeros((hp, wp), dtype=np.float32)
    for y in ys:
        for x in xs:
            wsum[y:y + th, x:x + tw] += weights
    inv = np.reciprocal(wsum)
    inv.flags.writeable = False
    return inv


def _pad(image: np.ndarray, ph: int, pw: int) -> np.ndarray:
    if ph == 0 and pw == 0:
        return image
    h, w = image.shape[-2:]
    # numpy's reflect needs at least 2 samples on an axis; a 1-pixel side is repeated instead.
    if h > 1 and w > 1:
        mode = "reflect"
    else:
        mode = "edge"
    return np.pad(image, ((0, 0), (0, ph), (0, pw)), mode=mode)


def sliding_window_inference(
    image_chw: np.ndarray,
    predictor: Callable[[np.ndarray], np.ndarray],
    tile: tuple[int, int],
    overlap: int,
    divisor: int = 1,
    blend: str = "gaussian",
) -> np.ndarray:
    """Run ``predictor`` on overlapping tiles of ``image_chw`` and blend the results into one map.

    Args:
        image_chw: the image, (C, H, W), any dtype; tiles are passed in this dtype.
        predictor: maps a (1, C, th, tw) tile to a (1, K, th, tw) array (any float dtype).
        tile: (th, tw), the exact tile shape the predictor accepts; multiples of ``divisor``.
        overlap: minimum overlap between neighbouring tiles in pixels (rounded up to the divisor grid).
        divisor: tile origins and padded sizes are multiples of this (the network's total stride).
        blend: ``gaussian``, ``linear`` or ``constant`` weights (see :func:`blend_weights`).

    Returns:
        (K, H, W) float32: the weighted mean of all tile predictions covering each pixel.
    """
    if image_chw.ndim != 3:
        raise InputError(f"sliding_window_inference needs a (C, H, W) array, got shape {image_chw.shape}")
    th, tw = (int(t) for t in tile)
    if divisor < 1 or th % divisor or tw % divisor:
        raise InputError(f"tile {th}x{tw} is not a multiple of the divisor {divisor}; "
                         "use a package exported with a valid tile size")
    _, h, w = image_chw.shape
    if h < 1 or w < 1:
        raise InputError(f"image has an empty side ({h}x{w})")
    hp, wp = padded_size(h, th, divisor), padded_size(w, tw, divisor)
    ys, xs = tile_starts(hp, th, overlap, divisor), tile_starts(wp, tw, overlap, divisor)
    weights = blend_weights((th, tw), overlap, look_up_option(blend, BLENDS, "blend mode"))
    padded = _pad(image_chw, hp - h, wp - w)

    acc: np.ndarray | None = None
    buf: np.ndarray | None = None
    for y in ys:
        for x in xs:
            out = np.asarray(predictor(padded[None, :, y:y + th, x:x + tw]))
            if out.ndim != 4 or out.shape[0] != 1 or out.shape[2:] != (th, tw):
                raise InputError(f"predictor returned shape {out.shape} for a tile of {th}x{tw}; "
                                 f"expected (1, K, {th}, {tw})")
            if acc is None:
                acc = np.zeros((out.shape[1], hp, wp), dtype=np.float32)
                buf = np.empty((out.shape[1], th, tw), dtype=np.float32)
            np.multiply(out[0], weights, out=buf)
            acc[:, y:y + th, x:x + tw] += buf
    assert acc is not None  # at least one tile always exists
    inv = _inverse_weight_sum(hp, wp, tuple(ys), tuple(xs), (th, tw), overlap, blend)
    acc *= inv[None]  # in place: a second image-sized float array would be the runtime's largest one
    return acc if (hp, wp) == (h, w) else np.ascontiguousarray(acc[:, :h, :w])


def count_tiles(height: int, width: int, tile: tuple[int, int], overlap: int, divisor: int = 1) -> int:
    """How many predictor calls :func:`sliding_window_inference` makes for an image of this size."""
    th, tw = tile
    return (len(tile_starts(padded_size(height, th, divisor), th, overlap, divisor))
            * len(tile_starts(padded_size(width, tw, divisor), tw, overlap, divisor)))


@dataclass(frozen=True)
class TilePlan:
    """The compiled tile shape that segments an image of ``image`` (H, W) for the fewest computed pixels."""

    tile: tuple[int, int]
    image: tuple[int, int]
    overlap: int
    tiles: int
    computed_pixels: int

    @property
    def cost_factor(self) -> float:
        """Computed pixels / image pixels: 1.0 is one whole-image pass, the floor of any tiling."""
        return self.computed_pixels / (self.image[0] * self.image[1])


def _axis_costs(size: int, overlap: int, divisor: int) -> dict[int, int]:
    """tile side -> pixels computed along one axis (tiles x side), for every side on the divisor grid."""
    costs = {}
    top = _ceil_to(size, divisor)
    first = _ceil_to(overlap + 1, divisor)
    for t in range(first, top + 1, divisor):
        n = len(tile_starts(padded_size(size, t, divisor), t, overlap, divisor))
        costs[t] = n * t
    return costs


def plan_tile(image: tuple[int, int], overlap: int, divisor: int, max_tile_pixels: int) -> TilePlan:
    """The tile (th, tw) on the ``divisor`` grid with th * tw <= ``max_tile_pixels`` that covers ``image`` with
    :func:`sliding_window_inference`'s layout and ``overlap`` for the fewest computed pixels (then the fewest
    tiles). The tile count is the runtime's own (:func:`tile_starts`), so the plan is what ``edge-run`` does.

    Computed pixels are what an image costs (M2U-Net's MACs are proportional to them); the overlap is the
    context a tile border needs, so larger tiles waste less of each tile on it. ``max_tile_pixels`` bounds
    the memory of one inference (activations grow with the tile).
    """
    h, w = (int(v) for v in image)
    if h < 1 or w < 1:
        raise InputError(f"image size {h}x{w} has an empty side")
    ch, cw = _axis_costs(h, overlap, divisor), _axis_costs(w, overlap, divisor)
    best: tuple[int, int, int, int] | None = None  # (pixels, tiles, area, th) + tw below
    best_tw = 0
    for th, cost_h in ch.items():
        for tw, cost_w in cw.items():
            if th * tw > max_tile_pixels:
                break  # tw grows: every later one is larger too
            tiles = (cost_h // th) * (cost_w // tw)
            key = (cost_h * cost_w, tiles, th * tw, th)
            if best is None or key < best:
                best, best_tw = key, tw
    if best is None:
        side = _ceil_to(overlap + 1, divisor)
        raise InputError(f"no tile of at most {max_tile_pixels / 1e6:.2f} Mpx fits an overlap of {overlap} px (the "
                         f"smallest is {side}x{side}); raise the tile budget")
    pixels, tiles, _, th = best
    return TilePlan((th, best_tw), (h, w), overlap, tiles, pixels)
