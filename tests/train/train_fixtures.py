"""Small fake dataset trees in the authors' layouts (a few 32x40 images), written into tmp_path."""
from __future__ import annotations

import gzip
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

H, W = 32, 40


def photo(seed: int) -> np.ndarray:
    """A fake RGB photo: a bright disc on black (so an FOV can be estimated) with a dark line."""
    rng = np.random.default_rng(seed)
    img = np.zeros((H, W, 3), np.uint8)
    cv2.circle(img, (W // 2, H // 2), 14, (200, 90, 40), -1)
    img[H // 2, 5:35] = (90, 30, 20)
    return np.clip(img.astype(int) + rng.integers(0, 5, img.shape), 0, 255).astype(np.uint8)


def label(seed: int) -> np.ndarray:
    m = np.zeros((H, W), np.uint8)
    m[H // 2, 5 + seed % 5:35] = 255
    return m


def fov() -> np.ndarray:
    m = np.zeros((H, W), np.uint8)
    cv2.circle(m, (W // 2, H // 2), 14, 255, -1)
    return m


def write_rgb(path: Path, rgb: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), rgb[..., ::-1].copy())
    return path


def write_grey(path: Path, grey: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix.lower() == ".gif":
        Image.fromarray(grey).save(path)  # OpenCV writes no GIF
    else:
        assert cv2.imwrite(str(path), grey)
    return path


def drive_tree(root: Path, n_train: int = 3, n_test: int = 2, test_labels: bool = True) -> Path:
    for split, sub, first in (("train", "training", 21), ("test", "test", 1)):
        for i in range(n_train if split == "train" else n_test):
            k = f"{first + i:02d}"
            write_rgb(root / sub / "images" / f"{k}_{sub}.tif", photo(first + i))
            if split == "train" or test_labels:
                write_grey(root / sub / "1st_manual" / f"{k}_manual1.gif", label(first + i))
            write_grey(root / sub / "mask" / f"{k}_{sub}_mask.gif", fov())
    return root


def chase_tree(root: Path, n: int = 10) -> Path:
    names = [f"Image_{i // 2 + 1:02d}{'LR'[i % 2]}" for i in range(n)]
    for i, name in enumerate(names):
        write_rgb(root / f"{name}.jpg", photo(i))
        write_grey(root / f"{name}_1stHO.png", label(i))
        write_grey(root / f"{name}_2ndHO.png", label(i + 1))
    return root


def hrf_tree(root: Path, per_category: int = 6) -> Path:
    for cat in ("h", "dr", "g"):
        for i in range(1, per_category + 1):
            k = f"{i:02d}_{cat}"
            write_rgb(root / "images" / f"{k}{'.JPG' if cat == 'dr' else '.jpg'}", photo(i))
            write_grey(root / "manual1" / f"{k}.tif", label(i))
            write_grey(root / "mask" / f"{k}_mask.tif", fov())
    return root


def stare_tree(root: Path, labelled: int = 4, unlabelled: int = 2, gz: bool = True) -> Path:
    for i in range(1, labelled + unlabelled + 1):
        name = f"im{i:04d}"
        p = write_rgb(root / "stare-images" / f"{name}.ppm", photo(i))
        if i <= labelled:
            q = write_grey(root / "labels-ah" / f"{name}.ah.ppm", np.repeat(label(i)[..., None], 3, 2))
            if gz:
                q.with_name(q.name + ".gz").write_bytes(gzip.compress(q.read_bytes()))
                q.unlink()
        if gz:
            p.with_name(p.name + ".gz").write_bytes(gzip.compress(p.read_bytes()))
            p.unlink()
    return root


def folder_tree(root: Path, n: int = 3, with_fov: bool = True) -> Path:
    for i in range(n):
        write_rgb(root / "images" / f"case{i}.png", photo(i))
        write_grey(root / "labels" / f"case{i}.png", label(i))
        if with_fov:
            write_grey(root / "fov" / f"case{i}.png", fov())
    return root
