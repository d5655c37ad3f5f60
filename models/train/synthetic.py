"""Procedural synthetic fundus photographs with exact vessel masks, deterministic per seed, at any size.

Written by hand (no library draws fundus images). The recipe, in the units of the field-of-view radius R so
that a 64 px and a 2336x3504 image look alike:

* vessel trees grow from the optic disc: four to six trunks (arteries and veins in turns) walk with
  inertia, random turning (tortuosity) and a preferred direction that is radial from the disc and turns
  around the macula (the temporal arcades); they branch by Murray's law (w^3 = w1^3 + w2^3), taper, and stop
  when thinner than a pixel or outside the field of view;
* the mask is the polylines drawn with OpenCV at their integer widths (the exact label); the photo darkens
  each vessel by a width-dependent contrast, then blurs slightly as a camera does;
* background: orange-red base colour, low-frequency uneven illumination and vignetting, choroidal texture,
  a bright optic disc with a cup, a dark macula and fovea, Gaussian noise, JPEG compression, black outside
  the circular field of view.

Paths are generated in Python (a few thousand scalar steps, independent of the image size); everything
per pixel is vectorised numpy/OpenCV, a large part of it at reduced resolution, so a 2336x3504 image takes
about a second or two.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from edge.errors import InputError

_SHIFT = 4  # sub-pixel bits for cv2 drawing
_ONE = 1 << _SHIFT


@dataclass(frozen=True)
class SyntheticFundus:
    """One generated photograph. ``image`` RGB uint8 (H, W, 3); ``vessels`` and ``fov`` bool (H, W)."""

    image: np.ndarray
    vessels: np.ndarray
    fov: np.ndarray
    seed: int


@dataclass
class _Vessel:
    points: list[tuple[float, float]]
    widths: list[float]
    vein: bool


def _grow_tree(rng: np.random.Generator, cx: float, cy: float, radius: float, disc: tuple[float, float],
               macula: tuple[float, float], min_width: float) -> list[_Vessel]:
    """All vessel polylines (pixel coordinates, widths in pixels)."""
    dx0, dy0 = disc
    mx, my = macula
    step = max(1.0, 0.012 * radius)
    vessels: list[_Vessel] = []
    # Trunks: (angle from the disc, width in units of R, vein?, arcade?). Temporal = towards the macula.
    temporal = math.atan2(my - dy0, mx - dx0)
    trunks = []
    for sign in (-1.0, 1.0):  # superior and inferior arcades: an artery and a vein each
        for vein in (False, True):
            a = temporal + sign * rng.uniform(0.9, 1.35) + rng.normal(0, 0.08)
            trunks.append((a, rng.uniform(0.022, 0.028) if vein else rng.uniform(0.016, 0.021), vein, True))
    for _ in range(int(rng.integers(2, 4))):  # nasal and small temporal vessels
        a = temporal + (math.pi if rng.random() < 0.7 else 0.0) + rng.normal(0, 0.6)
        trunks.append((a, rng.uniform(0.009, 0.016), bool(rng.integers(2)), False))

    # A queue of vessels to grow: (x, y, angle, width, vein, generation, arcade trunk?)
    stack = [(dx0 + rng.normal(0, 0.02 * radius), dy0 + rng.normal(0, 0.02 * radius), a, w * radius, v, 0, arc)
             for a, w, v, arc in trunks]
    max_vessels = 700
    r2 = (radius * 1.02) ** 2
    while stack and len(vessels) < max_vessels:
        x, y, ang, w, vein, gen, arcade = stack.pop(0)  # breadth first: the big branches before the twigs
        own = (math.cos(ang), math.sin(ang))
        pts = [(x, y)]
        ws = [w]
        next_branch = rng.uniform(0.04, 0.12) * radius
        travelled = 0.0
        turn = 0.0
        side = 1.0 if rng.random() < 0.5 else -1.0
        if gen == 0:
            length = rng.uniform(1.6, 2.2) * radius
        else:
            length = radius * rng.uniform(0.25, 0.8) * min(1.5, (w / (0.012 * radius)) ** 0.6)
        length_left = length
        taper = rng.uniform(0.2, 0.45) * step / length
        for _ in range(4000):
            # preferred direction: the vessel's own heading (branches) or radially away from the disc
            # (trunks), turning around the macula near it (the temporal arcades)
            rx, ry = x - dx0, y - dy0
            rn = math.hypot(rx, ry) + 1e-6
            px, py = rx / rn, ry / rn
            qx, qy = x - mx, y - my
            qn = math.hypot(qx, qy) + 1e-6
            tx, ty = -qy / qn, qx / qn
            if tx * math.cos(ang) + ty * math.sin(ang) < 0:  # go round the macula the way the vessel heads
                tx, ty = -tx, -ty
            near = math.exp(-(qn / (0.5 * radius)) ** 2) * 1.5
            if gen == 0 and arcade:  # an outward spiral around the macula
                fx, fy = tx + 0.3 * qx / qn, ty + 0.3 * qy / qn
            elif gen == 0:
                fx, fy = px + near * tx, py + near * ty
            else:
                fx, fy = own[0] + 0.3 * px + near * tx, own[1] + 0.3 * py + near * ty
            pref = math.atan2(fy, fx)
            diff = (pref - ang + math.pi) % (2 * math.pi) - math.pi
            turn = 0.7 * turn + rng.normal(0, 0.035 if gen == 0 else 0.06)  # smoothed random turning: tortuosity
            ang += (0.15 if gen == 0 else 0.08) * diff + turn
            x += step * math.cos(ang)
            y += step * math.sin(ang)
            travelled += step
            length_left -= step
            w *= 1.0 - taper
            pts.append((x, y))
            ws.append(w)
            if (x - cx) ** 2 + (y - cy) ** 2 > r2 or w < min_width or length_left <= 0:
                break
            if travelled >= next_branch and gen < 6:
                travelled = 0.0
                next_branch = rng.uniform(0.06, 0.16) * radius
                child = w * (rng.uniform(0.3, 0.7) if gen == 0 else rng.uniform(0.55, 0.85))
                if child >= min_width:
                    w = max(min_width, (max(w ** 3 - child ** 3, 0.0)) ** (1 / 3))
                    side = -side
                    ca = ang + side * rng.uniform(0.6, 1.3)
                    stack.append((x, y, ca, child, vein, gen + 1, False))
        if len(pts) > 1:
            vessels.append(_Vessel(pts, ws, vein))
    return vessels


def _smooth_field(rng: np.random.Generator, h: int, w: int, cells: int, lo: float, hi: float) -> np.ndarray:
    """A low-frequency random field in [lo, hi], float32 (h, w): random cells upsampled bicubically."""
    grid = rng.uniform(lo, hi, size=(cells, cells)).astype(np.float32)
    return np.clip(cv2.resize(grid, (w, h), interpolation=cv2.INTER_CUBIC), lo, hi)


def synthetic_fundus(height: int = 584, width: int = 565, seed: int = 0,
                     jpeg_quality: int | None = None) -> SyntheticFundus:
    """Generate one fundus photograph with its exact vessel mask and circular field of view.

    Args:
        height, width: image size in pixels (at least 16 each).
        seed: everything (layout, colours, noise, JPEG quality) follows from it; same seed, same arrays.
        jpeg_quality: fixed JPEG quality; None draws one in [75, 95]; 0 skips compression.
    """
    if height < 16 or width < 16:
        raise InputError(f"synthetic fundus needs at least 16x16 pixels, got {height}x{width}")
    rng = np.random.default_rng(seed)
    h, w = int(height), int(width)
    cx = w / 2 + rng.uniform(-0.01, 0.01) * w
    cy = h / 2 + rng.uniform(-0.01, 0.01) * h
    radius = min(0.5 * min(h, w) * rng.uniform(0.88, 0.97), cx - 1, w - 1 - cx, cy - 1, h - 1 - cy)
    side = 1.0 if rng.random() < 0.5 else -1.0  # left or right eye: which side the disc is on
    disc = (cx + side * rng.uniform(0.35, 0.7) * radius, cy + rng.uniform(-0.1, 0.1) * radius)
    disc_r = rng.uniform(0.11, 0.15) * radius
    macula = (disc[0] - side * rng.uniform(4.2, 5.2) * disc_r, disc[1] + rng.uniform(0.0, 0.6) * disc_r)
    min_width = max(1.0, 0.0035 * radius)

    # Everything smooth is computed at <= 512 px on the long side and upsampled.
    scale = min(1.0, 512.0 / max(h, w))
    sh, sw = max(8, int(round(h * scale))), max(8, int(round(w * scale)))
    yy, xx = np.mgrid[0:sh, 0:sw].astype(np.float32)
    yy = (yy + 0.5) / scale - 0.5
    xx = (xx + 0.5) / scale - 0.5

    def dist(p: tuple[float, float]) -> np.ndarray:
        return np.hypot(xx - p[0], yy - p[1])

    r_fov = dist((cx, cy)) / radius
    illum = _smooth_field(rng, sh, sw, 5, 0.8, 1.15) * (1 - rng.uniform(0.2, 0.5) * np.clip(r_fov, 0, 1) ** 3)
    texture = cv2.resize(rng.normal(0, 1, (max(4, sh // 2), max(4, sw // 2))).astype(np.float32), (sw, sh),
                         interpolation=cv2.INTER_CUBIC) * rng.uniform(0.005, 0.02)
    base = np.array([rng.uniform(175, 235), 0.0, 0.0], np.float32)
    base[1] = base[0] * rng.uniform(0.33, 0.52)
    base[2] = base[1] * rng.uniform(0.35, 0.65)
    small = base[None, None, :] * (illum * (1 + texture))[..., None]
    # macula and fovea: darker, a little less green
    dm = dist(macula) / (disc_r * rng.uniform(1.6, 2.2))
    small *= (1 - rng.uniform(0.15, 0.35) * np.exp(-dm ** 2) - 0.12 * np.exp(-(dm * 4) ** 2))[..., None]
    # optic disc: a bright yellowish rim with a brighter cup
    dd = dist(disc) / disc_r
    rim = np.clip((1.0 - dd) / 0.25, 0, 1)
    cup = np.exp(-(dd / rng.uniform(0.35, 0.55)) ** 2)
    gain = np.array([0.25, 0.9, 0.9], np.float32) * rng.uniform(0.7, 1.1)
    small = small * (1 + rim[..., None] * gain * 0.8 + cup[..., None] * gain * 0.7)
    img = cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)

    # vessels: exact mask (integer widths) and a contrast canvas of the same strokes
    mask = np.zeros((h, w), np.uint8)
    dark_v = np.zeros((h, w), np.float32)
    dark_a = np.zeros((h, w), np.float32)
    vessels = _grow_tree(rng, cx, cy, radius, disc, macula, min_width)
    # thick vessels last so they lie on top of the thin ones they cross
    for v in sorted(vessels, key=lambda v: v.widths[0]):
        pts = np.round(np.asarray(v.points) * _ONE).astype(np.int64)
        canvas = dark_v if v.vein else dark_a
        for i in range(len(pts) - 1):
            wd = 0.5 * (v.widths[i] + v.widths[i + 1])
            t = max(1, int(round(wd)))
            contrast = (0.5 if v.vein else 0.36) * (1 - math.exp(-wd / (0.6 + 0.004 * radius)))
            p0, p1 = (int(pts[i, 0]), int(pts[i, 1])), (int(pts[i + 1, 0]), int(pts[i + 1, 1]))
            cv2.line(mask, p0, p1, 1, t, cv2.LINE_8, _SHIFT)
            cv2.line(canvas, p0, p1, float(contrast), t, cv2.LINE_8, _SHIFT)
    sigma = max(0.5, 0.0015 * radius)
    dark = cv2.GaussianBlur(np.maximum(dark_v, dark_a), (0, 0), sigma)
    # vessels absorb green and blue more than red
    absorb = np.array([0.55, 1.0, 0.9], np.float32)
    img *= 1 - dark[..., None] * absorb
    img = cv2.GaussianBlur(img, (0, 0), max(0.4, 0.0012 * radius))

    fov = np.zeros((h, w), np.uint8)
    cv2.circle(fov, (int(round(cx * _ONE)), int(round(cy * _ONE))), int(round(radius * _ONE)), 1, -1,
               cv2.LINE_8, _SHIFT)
    fov_b = fov.astype(bool)
    noise_sigma = rng.uniform(1.0, 4.0)
    img += rng.standard_normal((h, w, 3), dtype=np.float32) * np.float32(noise_sigma)
    img *= fov[..., None]
    out = np.clip(img + 0.5, 0, 255).astype(np.uint8)
    quality = int(rng.integers(75, 96)) if jpeg_quality is None else int(jpeg_quality)
    if quality > 0:
        ok, buf = cv2.imencode(".jpg", out[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, quality])
        out = cv2.imdecode(buf, cv2.IMREAD_COLOR)[..., ::-1]
    return SyntheticFundus(np.ascontiguousarray(out), mask.astype(bool) & fov_b, fov_b, seed)
