"""Augmentations: one warp for photo and masks (masks stay binary and aligned), colour jitter on the photo only."""
from __future__ import annotations

import numpy as np

from models.train import augment as aug
from models.train.synthetic import synthetic_fundus


def _no_colour(cfg: aug.AugmentConfig) -> aug.AugmentConfig:
    return aug.AugmentConfig(cfg.rotation_deg, cfg.flips, cfg.elastic_grid, cfg.elastic_magnitude, 0, 0, 0, 0)


def test_masks_stay_binary_and_aligned_with_the_photo():
    f = synthetic_fundus(128, 128, seed=2)
    # a photo that *is* the mask: after the same warp, its thresholded channel must match the warped mask
    photo = np.repeat((f.vessels * 255).astype(np.uint8)[..., None], 3, 2)
    for seed in range(5):
        rng = np.random.default_rng(seed)
        img, lab, fov = aug.augment(photo, f.vessels, f.fov, rng, _no_colour(aug.PAPER))
        assert lab.dtype == bool and fov.dtype == bool
        agree = ((img[..., 0] > 127) == lab).mean()
        assert agree > 0.97, agree  # bilinear vs nearest differ only on edges
        assert lab.sum() > 0.8 * f.vessels.sum()


def test_rotation_actually_moves_pixels_and_flips_are_exact():
    f = synthetic_fundus(64, 64, seed=1)
    rng = np.random.default_rng(0)
    img, lab, _ = aug.augment(f.image, f.vessels, None, rng, aug.PAPER)
    assert not np.array_equal(lab, f.vessels)
    flip_only = aug.AugmentConfig(0, True, 0, 0, 0, 0, 0, 0)
    seen = set()
    for seed in range(12):
        img, lab, _ = aug.augment(f.image, f.vessels, None, np.random.default_rng(seed), flip_only)
        for name, ref in (("id", f.vessels), ("h", f.vessels[:, ::-1]), ("v", f.vessels[::-1]),
                          ("hv", f.vessels[::-1, ::-1])):
            if np.array_equal(lab, ref):
                seen.add(name)
                assert np.array_equal(img, {"id": f.image, "h": f.image[:, ::-1], "v": f.image[::-1],
                                            "hv": f.image[::-1, ::-1]}[name])
    assert seen == {"id", "h", "v", "hv"}


def test_no_augmentation_is_identity_and_patch_window():
    f = synthetic_fundus(96, 80, seed=4)
    img, lab, fov = aug.augment(f.image, f.vessels, f.fov, np.random.default_rng(0), aug.NONE)
    assert np.array_equal(img, f.image) and np.array_equal(lab, f.vessels) and np.array_equal(fov, f.fov)
    # a 32x16 window whose centre (x 19.5, y 40.5) puts its pixels on the input grid: an exact crop
    img, lab, _ = aug.augment(f.image, f.vessels, None, np.random.default_rng(0), aug.NONE, (32, 16), (19.5, 40.5))
    assert np.array_equal(img, f.image[25:57, 12:28]) and np.array_equal(lab, f.vessels[25:57, 12:28])


def test_colour_jitter_bounds():
    rng = np.random.default_rng(0)
    grey = np.full((8, 8, 3), 100, np.uint8)
    for _ in range(20):
        out = aug.color_jitter(grey, rng)
        assert 70 - 1 <= int(out.mean()) <= 130 + 1  # brightness factor in [0.7, 1.3]
        assert out.dtype == np.uint8
