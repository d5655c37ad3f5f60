"""Resample a photograph by its field of view to the scale the weights were trained at, and the map back.

A network learns vessels at the pixel scale of its training images: a 3504-px photograph run at its own scale
by weights trained on ~1000-px ones is both slower (12x the pixels) and worse (every vessel is 3.5x wider than
any it saw). The package records that scale as the field-of-view diameter in pixels (meta.json
``preprocess.fov_diameter_px``); :func:`plan_scale` decides, per photograph, how it is processed and says why,
and :mod:`edge.segment` applies the decision. Resizing is Pillow's (the device runtime has no OpenCV).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from PIL import Image

# |factor - 1| below this: the photograph is at its training scale already and is not resampled (a 3 % change
# of scale is within what the weights saw; resampling would only blur it).
TOLERANCE = 0.03
# The factors a plausible photograph needs: 1/8 takes a 7680-px FOV to 960, 4 a 240-px one to 960. A measured FOV
# beyond them is a crop, a mask that is not a field of view or a wrong training scale: the factor is clamped and
# the clamp announced, never silently applied.
MIN_FACTOR, MAX_FACTOR = 1.0 / 8.0, 4.0
# Enlarging never makes the processed image larger than this (or than the photograph, when that is larger):
# 16 Mpx is ~400 MB of working memory in edge-run, what a 4 GB board can spare beside the photograph itself.
MAX_ENLARGED_PIXELS = 16_000_000
# An FOV that reaches all four borders and covers more than this much of the image has no dark surround to
# measure (an inscribed circle covers at most pi/4 = 79 %): its diameter is unknown, not the image's side.
FILLED_FRACTION = 0.9
PROB_STRIP_ROWS = 256  # rows of the full-size map resampled at a time (a strip is the only temporary)

# ScaleInfo.status values
RESAMPLED = "resampled"
AT_TRAINING_SCALE = "at-training-scale"
NATIVE_REQUESTED = "native-requested"
NO_TRAINING_SCALE = "no-training-scale"
FOV_UNMEASURABLE = "fov-unmeasurable"


def fov_diameter(fov: np.ndarray) -> float | None:
    """The FOV's diameter in pixels: the larger of its horizontal and vertical extents (a circle clipped at top
    and bottom, as HRF's, still gives its true diameter); None for an empty FOV."""
    cols = np.flatnonzero(fov.any(axis=0))  # 1-D projections: no index arrays of the image's size
    if cols.size == 0:
        return None
    rows = np.flatnonzero(fov.any(axis=1))
    return float(max(cols[-1] - cols[0] + 1, rows[-1] - rows[0] + 1))


def scaled_size(shape: tuple[int, ...], measured: float, target: float) -> tuple[int, int]:
    """The (H, W) that brings an FOV of ``measured`` px to ``target`` px: (round(h*s), round(w*s)), s = target /
    measured, at least 1 px a side."""
    s = target / measured
    return max(1, int(round(shape[0] * s))), max(1, int(round(shape[1] * s)))


def resize_image(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """An RGB uint8 (H, W, 3) image resized to ``size`` (H, W): an area (box) filter when shrinking, so fine vessels
    are averaged rather than aliased, bilinear when enlarging. Returns a read-only uint8 array."""
    h, w = size
    shrink = h * w < image.shape[0] * image.shape[1]
    filt = Image.Resampling.BOX if shrink else Image.Resampling.BILINEAR
    with Image.fromarray(np.ascontiguousarray(image), "RGB") as im:
        return np.asarray(im.resize((w, h), filt))


def resize_mask(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """A boolean mask resized to ``size`` (H, W), nearest neighbour."""
    h, w = size
    with Image.fromarray(mask.astype(np.uint8) * 255, "L") as im:
        return np.asarray(im.resize((w, h), Image.Resampling.NEAREST)) > 127


def resize_prob(prob: np.ndarray, size: tuple[int, int], strip_rows: int = PROB_STRIP_ROWS) -> np.ndarray:
    """A float32 (h, w) probability map resized bilinearly to ``size`` (H, W) (Pillow mode "F"), in [0, 1].

    Written strip by strip into the one full-size output (each strip resamples its band of the source, the filter
    reading past the band's edges as a whole-image resize does, to ~1e-5), so no second full-size array exists.
    """
    H, W = size
    sh, sw = prob.shape
    out = np.empty((H, W), np.float32)
    with Image.fromarray(np.ascontiguousarray(prob, dtype=np.float32), "F") as im:
        for r0 in range(0, H, strip_rows):
            r1 = min(H, r0 + strip_rows)
            with im.resize((W, r1 - r0), Image.Resampling.BILINEAR, box=(0, r0 * sh / H, sw, r1 * sh / H)) as s:
                out[r0:r1] = np.asarray(s)
    np.clip(out, 0.0, 1.0, out=out)
    return out


@dataclass(frozen=True)
class ScaleInfo:
    """How one photograph was processed: resampled by its FOV to the weights' training scale, or at its own
    scale and why (``reason``). Sizes are (H, W); ``factor`` is processed / original (1.0 at native scale)."""

    status: str  # RESAMPLED, AT_TRAINING_SCALE, NATIVE_REQUESTED, NO_TRAINING_SCALE, FOV_UNMEASURABLE
    size: tuple[int, int]
    processed: tuple[int, int]
    factor: float = 1.0
    measured_px: float | None = None  # the photograph's FOV diameter
    target_px: float | None = None  # the package's training scale (meta.json preprocess.fov_diameter_px)
    reason: str | None = None  # why it stayed at native scale (None when resampled)
    notice: str | None = None  # a limit applied to the factor, to be announced

    @property
    def resampled(self) -> bool:
        return self.status == RESAMPLED

    def describe(self) -> str:
        """One line for the run summary / the per-image log."""
        if self.resampled:
            if self.notice is None:
                text = f"FOV {self.measured_px:.0f} px -> {self.target_px:g} px (the weights' training scale)"
            else:
                text = (f"FOV {self.measured_px:.0f} px -> {self.measured_px * self.factor:.0f} px (limited; the "
                        f"weights' training scale is {self.target_px:g} px: {self.notice})")
            return text + f", {_hw(self.size)} processed at {_hw(self.processed)}"
        if self.status == AT_TRAINING_SCALE:
            return f"{self.reason}: not resampled"
        return f"native scale: {self.reason}"

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ScaleInfo:
        """The inverse of :meth:`to_dict` (a run summary read back)."""
        return cls(**{**d, "size": tuple(d["size"]), "processed": tuple(d["processed"])})

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["size"], d["processed"] = list(self.size), list(self.processed)
        d["factor"] = round(self.factor, 6)
        return d


def run_note(native_scale: bool, target_px: float | None) -> str | None:
    """The run-level ``scale:`` line when no photograph is resampled (native on request, or no training scale
    recorded); None when photos are resampled and each one's :class:`ScaleInfo` has the say."""
    if native_scale:
        return "scale: native (--native-scale)" + (f"; the weights were trained at FOV {target_px:g} px"
                                                    if target_px else "")
    if target_px is None:
        return ("scale: native; the package records no training scale (meta.json preprocess.fov_diameter_px); "
                "re-export it with edge-export --fov-diameter PX")
    return None


def _hw(size: tuple[int, int]) -> str:
    return f"{size[0]}x{size[1]}"


def plan_scale(shape: tuple[int, ...], fov: np.ndarray | None, target_px: float | None,
               native_scale: bool = False) -> ScaleInfo:
    """Decide how a photograph of ``shape`` (H, W, ...) with field of view ``fov`` (its own resolution) is
    processed for weights trained at an FOV of ``target_px`` pixels (None: unknown). Every outcome that is not
    a plain resample says why in ``reason``; a clamped factor says so in ``notice``."""
    size = (int(shape[0]), int(shape[1]))
    native = dict(status=NATIVE_REQUESTED, size=size, processed=size, target_px=target_px)
    if native_scale:
        return ScaleInfo(**native, reason="requested (--native-scale)"
                         + (f"; the weights were trained at FOV {target_px:g} px" if target_px else ""))
    if target_px is None:
        return ScaleInfo(**{**native, "status": NO_TRAINING_SCALE},
                         reason="the package records no training scale (meta.json preprocess.fov_diameter_px); "
                                "re-export it with edge-export --fov-diameter PX")
    measured = None if fov is None else fov_diameter(fov)
    if measured is None:
        return ScaleInfo(**{**native, "status": FOV_UNMEASURABLE},
                         reason="the field of view is empty (a dark or blank image?), so its diameter cannot be "
                                "measured; pass --mask with the field of view")
    h, w = size
    if (fov[0].any() and fov[-1].any() and fov[:, 0].any() and fov[:, -1].any()
            and np.count_nonzero(fov) > FILLED_FRACTION * h * w):
        return ScaleInfo(**{**native, "status": FOV_UNMEASURABLE}, measured_px=measured,
                         reason="the field of view fills the image (no dark border around it), so its diameter "
                                "cannot be measured; pass --mask with the field of view")
    wanted = target_px / measured
    s = min(max(wanted, MIN_FACTOR), MAX_FACTOR)
    notice = None
    if s != wanted:
        notice = (f"an FOV of {measured:.0f} px is implausible for weights trained at {target_px:g} px: factor "
                  f"{wanted:.3g} clamped to {s:.3g}; check the photo or pass --mask, or --native-scale")
    limit = max(MAX_ENLARGED_PIXELS, h * w)
    if s > 1 and h * w * s * s > limit:
        s = math.sqrt(limit / (h * w))
        notice = (f"enlarging by {wanted:.3g} would exceed {limit / 1e6:.0f} Mpx: limited to {s:.3g}; "
                  "pass --native-scale or a smaller photo")
    if abs(s - 1.0) < TOLERANCE:
        return ScaleInfo(AT_TRAINING_SCALE, size, size, 1.0, measured, target_px,
                         reason=f"FOV {measured:.0f} px, at its training scale (the weights' {target_px:g} px)")
    processed = scaled_size(size, 1.0, s)
    return ScaleInfo(RESAMPLED, size, processed, s, measured, target_px, None, notice)
