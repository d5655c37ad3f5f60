"""The M2U-Net paper's training augmentations (seeds/002, Sec. 4.1) in numpy/OpenCV.

Rotation within +-15 degrees, horizontal and vertical flips and an elastic distortion (Augmentor's
``Distort``: an 8x8 grid whose inner nodes move by up to ``magnitude`` pixels) are composed into **one**
sampling map, applied to the photo with bilinear and to the label and FOV with nearest-neighbour
interpolation: the masks stay binary and aligned with the photo. Brightness and contrast change by a factor
in [0.7, 1.3], saturation in [0.98, 1.02] and hue by up to 0.02 of the colour circle (torchvision's
``ColorJitter`` definitions), on the photo only.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np


@dataclass(frozen=True)
class AugmentConfig:
    rotation_deg: float = 15.0
    flips: bool = True
    elastic_grid: int = 8
    elastic_magnitude: float = 1.0
    brightness: float = 0.3
    contrast: float = 0.3
    saturation: float = 0.02
    hue: float = 0.02


PAPER = AugmentConfig()
NONE = AugmentConfig(0.0, False, 0, 0.0, 0.0, 0.0, 0.0, 0.0)


def sampling_map(h: int, w: int, rng: np.random.Generator, cfg: AugmentConfig = PAPER,
                 out_size: tuple[int, int] | None = None, center: tuple[float, float] | None = None
                 ) -> tuple[np.ndarray, np.ndarray]:
    """``(map_x, map_y)`` float32 of shape ``out_size`` (default (h, w)): for every output pixel, where to
    sample the (h, w) input. The output's centre lands on ``center`` (x, y; default the input's centre);
    rotation about it, flips and the elastic grid, composed."""
    oh, ow = out_size or (h, w)
    ys, xs = np.mgrid[0:oh, 0:ow].astype(np.float32)
    # output coordinates relative to the output centre
    u = xs - (ow - 1) / 2
    v = ys - (oh - 1) / 2
    if cfg.elastic_grid and cfg.elastic_magnitude > 0:
        g = cfg.elastic_grid
        d = rng.uniform(-cfg.elastic_magnitude, cfg.elastic_magnitude, size=(2, g + 1, g + 1)).astype(np.float32)
        d[:, 0, :] = d[:, -1, :] = d[:, :, 0] = d[:, :, -1] = 0  # the image border stays put
        dx = cv2.resize(d[0], (ow, oh), interpolation=cv2.INTER_LINEAR)
        dy = cv2.resize(d[1], (ow, oh), interpolation=cv2.INTER_LINEAR)
        u = u + dx
        v = v + dy
    if cfg.flips:
        if rng.random() < 0.5:
            u = -u
        if rng.random() < 0.5:
            v = -v
    a = math.radians(rng.uniform(-cfg.rotation_deg, cfg.rotation_deg)) if cfg.rotation_deg else 0.0
    c, s = math.cos(a), math.sin(a)
    cx, cy = center if center is not None else ((w - 1) / 2, (h - 1) / 2)
    map_x = (c * u - s * v + cx).astype(np.float32)
    map_y = (s * u + c * v + cy).astype(np.float32)
    return map_x, map_y


def warp(image: np.ndarray, maps: tuple[np.ndarray, np.ndarray], masks: list[np.ndarray | None]
         ) -> tuple[np.ndarray, list[np.ndarray | None]]:
    """Apply one sampling map: bilinear for the photo, nearest for each mask (bool in, bool out).
    Outside the input the photo is black and the masks are False."""
    mx, my = maps
    out = cv2.remap(image, mx, my, cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    warped: list[np.ndarray | None] = []
    for m in masks:
        if m is None:
            warped.append(None)
            continue
        r = cv2.remap(m.astype(np.uint8), mx, my, cv2.INTER_NEAREST, borderMode=cv2.BORDER_CONSTANT, borderValue=0)
        warped.append(r.astype(bool))
    return out, warped


def color_jitter(image: np.ndarray, rng: np.random.Generator, cfg: AugmentConfig = PAPER) -> np.ndarray:
    """Brightness, contrast, saturation and hue jitter of an RGB uint8 image (torchvision's definitions)."""
    x = image.astype(np.float32)
    if cfg.brightness:
        x *= rng.uniform(1 - cfg.brightness, 1 + cfg.brightness)
        np.clip(x, 0, 255, out=x)
    if cfg.contrast:
        f = rng.uniform(1 - cfg.contrast, 1 + cfg.contrast)
        mean = float(cv2.cvtColor(x, cv2.COLOR_RGB2GRAY).mean())
        x = np.clip((x - mean) * f + mean, 0, 255)
    if cfg.saturation:
        f = rng.uniform(1 - cfg.saturation, 1 + cfg.saturation)
        grey = cv2.cvtColor(x, cv2.COLOR_RGB2GRAY)[..., None]
        x = np.clip((x - grey) * f + grey, 0, 255)
    if cfg.hue:
        shift = rng.uniform(-cfg.hue, cfg.hue)
        hsv = cv2.cvtColor(x / 255.0, cv2.COLOR_RGB2HSV)  # float: H in [0, 360)
        hsv[..., 0] = (hsv[..., 0] + shift * 360.0) % 360.0
        x = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB) * 255.0
    return np.clip(x + 0.5, 0, 255).astype(np.uint8)


def augment(image: np.ndarray, label: np.ndarray | None, fov: np.ndarray | None, rng: np.random.Generator,
            cfg: AugmentConfig = PAPER, out_size: tuple[int, int] | None = None,
            center: tuple[float, float] | None = None) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    """Augment a photo and its masks together. ``out_size`` (h, w) and ``center`` (x, y) cut a window
    around that point of the warped result: only the window is computed, so patches are cheap."""
    h, w = image.shape[:2]
    maps = sampling_map(h, w, rng, cfg, out_size, center)
    img, (lab, f) = warp(image, maps, [label, fov])
    if cfg.brightness or cfg.contrast or cfg.saturation or cfg.hue:
        img = color_jitter(img, rng, cfg)
    return img, lab, f
