"""Segment one fundus photo with a package and a backend: preprocess, tile, blend, threshold, mask by the FOV.

Blending happens on **probabilities**: every tile's logits go through the package's output activation
(sigmoid) before the weighted average. Averaging probabilities is the usual choice (nnU-Net, MONAI
pipelines): a tile that is confidently wrong near its border cannot push the result further than its
weight allows, whereas an averaged logit of -20 and +2 still says "background" with near certainty.
``tests/edge/test_segment.py`` pins this.

Scale: when the package records the FOV diameter its weights were trained at, the photograph is resampled by
its own FOV to that scale before tiling and the probability map brought back to the photograph's pixels
(:mod:`edge.scale`); ``native_scale=True`` turns it off. Outputs always have the photograph's size.
"""
from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from edge.errors import InputError, PackageError, look_up_option
from edge.fov import estimate_fov
from edge.metrics import Confusion, confusion
from edge.package import Package
from edge.scale import ScaleInfo, plan_scale, resize_image, resize_prob
from edge.tiling import BLENDS, sliding_window_inference


def sigmoid(x: np.ndarray) -> np.ndarray:
    """Overflow-free logistic function, float32."""
    y = np.array(x, dtype=np.float32)  # one copy, then in place
    y *= np.float32(0.5)
    np.tanh(y, out=y)
    y += np.float32(1.0)
    y *= np.float32(0.5)
    return y


_ACTIVATIONS: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "sigmoid": sigmoid,
    "none": lambda x: np.asarray(x, dtype=np.float32),
}


def activation_of(pkg: Package) -> Callable[[np.ndarray], np.ndarray]:
    name = pkg.info.activation
    if name not in _ACTIVATIONS:
        raise PackageError(f"package {pkg.path} declares output activation {name!r}; this runtime knows "
                           f"{', '.join(_ACTIVATIONS)}; re-export it")
    return _ACTIVATIONS[name]


@dataclass
class SegmentResult:
    """Everything one image produced. ``prob`` is float32 in [0, 1] and 0 outside the FOV."""

    prob: np.ndarray
    mask: np.ndarray
    fov: np.ndarray
    fov_source: str
    threshold: float
    overlap: int
    blend: str
    tiles: int
    timings_ms: dict[str, float] = field(default_factory=dict)
    confusion: Confusion | None = None
    scale: ScaleInfo | None = None  # how the photograph was resampled for the tiles, or why it was not

    @property
    def fov_fraction(self) -> float:
        return float(self.fov.mean())


def resolve_options(package: Package, threshold: float | None = None, overlap: int | None = None,
                    blend: str | None = None) -> tuple[float, int, str]:
    """Threshold, overlap and blend mode: the caller's, else the package's meta.json, validated."""
    tiling = package.info.tiling
    tile = min(package.tile)
    if threshold is None:
        threshold = tiling.threshold
    if not 0.0 <= threshold <= 1.0:
        raise InputError(f"threshold {threshold} is outside [0, 1]; pass --threshold between 0 and 1")
    if overlap is None:
        overlap = tiling.overlap
        if not 0 <= overlap < tile:
            raise PackageError(f"package {package.path} sets tile overlap {overlap}, which does not fit its "
                               f"{package.tile[0]}x{package.tile[1]} tiles; pass --overlap below {tile}")
    elif not 0 <= overlap < tile:
        raise InputError(f"overlap {overlap} must be >= 0 and smaller than the tile side {tile}; "
                         f"pass --overlap between 0 and {tile - 1}")
    blend = look_up_option(blend or tiling.blend, BLENDS, "blend mode")
    return threshold, int(overlap), blend


def segment(
    image: np.ndarray,
    package: Package,
    backend: Callable[[np.ndarray], np.ndarray],
    *,
    threshold: float | None = None,
    overlap: int | None = None,
    blend: str | None = None,
    fov: np.ndarray | None = None,
    truth: np.ndarray | None = None,
    native_scale: bool = False,
) -> SegmentResult:
    """Segment an RGB uint8 (H, W, 3) image; options default to the package's meta.json.

    Args:
        fov: a boolean field-of-view mask; estimated from the dark border when None.
        truth: a boolean ground-truth vessel map; when given, the result carries the confusion counts
            inside the FOV.
        native_scale: tile the photograph at its own resolution even when the package records the scale its
            weights were trained at (by default it is resampled by its FOV to that scale: ``result.scale``).
    """
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise InputError(f"segment needs an RGB uint8 (H, W, 3) image, got {image.dtype} {image.shape}")
    h, w = image.shape[:2]
    threshold, overlap, blend = resolve_options(package, threshold, overlap, blend)
    divisor = package.info.model.divisor
    n, c, th, tw = package.input_shape
    if c != 3:
        raise PackageError(f"package {package.path} expects {c} input channels; this runtime feeds RGB (3)")
    preprocess = package.info.preprocess
    if preprocess is None:
        raise PackageError(f"package {package.path} has no 'preprocess' section in meta.json; re-export it")
    activation = activation_of(package)

    timings = {"fov_ms": 0.0, "resample_ms": 0.0, "inference_ms": 0.0}
    t0 = time.perf_counter()
    if fov is None:
        fov = estimate_fov(image)
        source = "estimated"
    else:
        if fov.shape != (h, w):
            raise InputError(f"FOV mask is {fov.shape[1]}x{fov.shape[0]} but the image is {w}x{h}; "
                             "pass the mask made for this image")
        source = "given"
    timings["fov_ms"] = (time.perf_counter() - t0) * 1e3

    # The FOV is measured at the original resolution and is not carried to the resampled image: the tiles see
    # the whole image either way (as at native scale), and the FOV only masks the output, which happens at the
    # original resolution with the original mask (a given --mask stays exact; nothing is re-estimated).
    t_r = time.perf_counter()
    scale = plan_scale(image.shape, fov, preprocess.fov_diameter_px, native_scale)
    work = resize_image(image, scale.processed) if scale.resampled else image
    timings["resample_ms"] = (time.perf_counter() - t_r) * 1e3

    tiles = 0

    def predict(tile_u8: np.ndarray) -> np.ndarray:
        nonlocal tiles
        tiles += 1
        x = preprocess(tile_u8)
        t = time.perf_counter()
        logits = backend(x)
        timings["inference_ms"] += (time.perf_counter() - t) * 1e3
        return activation(logits)

    t1 = time.perf_counter()
    # (C, H, W) view of the uint8 image: tiles are cut from uint8 and converted one at a time, so the
    # whole image never exists in float32.
    probs = sliding_window_inference(work.transpose(2, 0, 1), predict, (th, tw), overlap, divisor, blend)
    timings["tiling_ms"] = (time.perf_counter() - t1) * 1e3
    del work
    if probs.shape[0] != 1:
        raise PackageError(f"package {package.path} outputs {probs.shape[0]} channels; this runtime reads a "
                           "single vessel channel")
    prob = probs[0]
    if scale.resampled:
        t_b = time.perf_counter()
        # the map at the processed size is dropped as soon as the full-size one exists: with the photograph,
        # the full-size float32 map is the only image-sized array beyond what native-scale runs hold
        prob = resize_prob(prob, (h, w))
        del probs
        timings["resample_ms"] += (time.perf_counter() - t_b) * 1e3
    prob[~fov] = 0.0
    mask = prob > threshold
    result = SegmentResult(prob, mask, fov, source, threshold, overlap, blend, tiles, scale=scale)
    if truth is not None:
        result.confusion = confusion(mask, truth, fov)
    timings["total_ms"] = (time.perf_counter() - t0) * 1e3
    result.timings_ms = timings
    return result
