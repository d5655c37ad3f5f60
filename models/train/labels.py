"""Vessel labels the project derives itself with a classical filter, and the redistributable CC0 training set.

The project's default weights may only learn from data it may use and redistribute: synthetic images
(:mod:`models.train.synthetic`) and the CC0 fundus photograph bundled with scikit-image
(``skimage.data.retina()``, Wikimedia Commons, Haggstrom 2014) labelled here by a Frangi vesselness filter.
The labels are what a classical method sees, not an expert's annotation: they miss faint capillaries and
can mark the optic-disc rim; a model trained on them learns that.

Label recipe (chosen on retina() by its agreement with the published DRIVE checkpoint, 0.82-0.86 Dice at
544-1024 px; see models/weights/MODEL_CARD.md): CLAHE on the green channel, Frangi vesselness (dark ridges) at
sigmas 1, 1.5, 2, 2.5, 3 px scaled by FOV diameter / 540 (DRIVE's), zero on an eroded FOV rim, hysteresis
thresholding with the 94th (seeds) and 84th (grow) percentiles of the vesselness inside the FOV.
"""
from __future__ import annotations

import cv2
import numpy as np

from edge.fov import estimate_fov
from models.train.datasets import Loaded

SIGMAS = (1.0, 1.5, 2.0, 2.5, 3.0)  # px at DRIVE's scale (FOV diameter 540 px)
LOW_QUANTILE = 0.84
HIGH_QUANTILE = 0.94
DRIVE_FOV_DIAMETER = 540.0


def fov_diameter(fov: np.ndarray) -> float:
    """Diameter of the disc with the FOV's area."""
    return float(2.0 * np.sqrt(np.count_nonzero(fov) / np.pi))


def derive_vessel_labels(image_rgb: np.ndarray, fov: np.ndarray | None = None) -> np.ndarray:
    """Boolean vessel map of an RGB fundus photo from Frangi vesselness + hysteresis (see module docstring)."""
    from skimage import filters

    if fov is None:
        fov = estimate_fov(image_rgb)
    k = fov_diameter(fov) / DRIVE_FOV_DIAMETER
    green = cv2.createCLAHE(2.0, (8, 8)).apply(np.ascontiguousarray(image_rgb[..., 1])).astype(np.float64) / 255
    # the dark surround would make the FOV edge the strongest "vessel": fill it with the mean inside
    green[~fov] = green[fov].mean()
    v = filters.frangi(green, sigmas=[s * k for s in SIGMAS], black_ridges=True)
    r = max(3, int(round(image_rgb.shape[0] / 50)))
    inner = cv2.erode(fov.astype(np.uint8), np.ones((r, r), np.uint8)).astype(bool)
    v[~inner] = 0
    lo, hi = np.quantile(v[inner], [LOW_QUANTILE, HIGH_QUANTILE])
    return filters.apply_hysteresis_threshold(v, lo, hi) & fov


def retina_cc0(size: int) -> Loaded:
    """scikit-image's CC0 fundus photo resized to ``size`` x ``size``, with derived labels and estimated FOV."""
    from skimage import data

    rgb = data.retina()
    interp = cv2.INTER_AREA if size < rgb.shape[0] else cv2.INTER_LINEAR
    img = cv2.resize(rgb, (size, size), interpolation=interp)
    fov = estimate_fov(img)
    return Loaded(f"retina_cc0@{size}", img, derive_vessel_labels(img, fov), fov, "estimated")
