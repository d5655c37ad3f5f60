"""Dataset loaders for the public retinal-vessel datasets as their authors ship them, with the papers' splits.

Each loader turns a dataset folder into a list of :class:`Sample` (file paths only; nothing is decoded
until :func:`load_sample`). Missing or mismatched files raise one :class:`~edge.errors.EdgeError` line that
says what was expected and what was found.

=========  ===============================================================  ===============================
dataset    layout                                                           split (train / test)
=========  ===============================================================  ===============================
drive      ``training|test/images/21_training.tif``, ``1st_manual/21_manual1.gif``,  the folders (20 / 20)
           ``mask/21_training_mask.gif`` (test labels may be absent)
chase      ``Image_01L.jpg`` + ``Image_01L_1stHO.png``                      first 8 / the other 20
hrf        ``images/01_h.jpg``, ``manual1/01_h.tif``, ``mask/01_h_mask.tif``  first 5 of each of _h, _dr, _g
                                                                            / the other 30
stare      ``im0001.ppm[.gz]`` (or in ``stare-images/``), ``labels-ah/im0001.ah.ppm[.gz]``  first 10 / last 10
                                                                            of the 20 labelled images
folder     ``images/NAME.*`` + ``labels/NAME.*`` (or ``masks/``, ``manual/``),  ``train/`` and ``test/``
           optional ``fov/NAME.*``                                           sub-folders if present, else
                                                                            all images for every split
synthetic  no files: :mod:`models.train.synthetic` images, seeds by split
=========  ===============================================================  ===============================

CHASE_DB1 and STARE ship no field-of-view masks; theirs are estimated from the dark border
(:func:`edge.fov.estimate_fov`) when loaded. STARE has no official split; the first ten labelled images
train, the last ten test (as in the SepFE and IterNet evaluations' 10/10 use; leave-one-out is not done).
"""
from __future__ import annotations

import gzip
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from edge.errors import EdgeError, look_up_option
from edge.fov import estimate_fov
from edge.imageio import IMAGE_SUFFIXES, read_image, read_mask

SPLITS = ("train", "test")


@dataclass(frozen=True)
class Sample:
    """One image with its files. ``label`` None: no ground truth shipped (e.g. DRIVE's test set today);
    ``fov`` None: estimate it from the image. ``synthetic`` is the generator's (seed, height, width)."""

    name: str
    image: Path | None
    label: Path | None = None
    fov: Path | None = None
    synthetic: tuple[int, int, int] | None = None


@dataclass
class Loaded:
    """A decoded sample: RGB uint8 (H, W, 3), bool vessel label (None when absent), bool FOV."""

    name: str
    image: np.ndarray
    label: np.ndarray | None
    fov: np.ndarray
    fov_source: str


def _few(names: list[str], n: int = 4) -> str:
    if not names:
        return "nothing"
    return ", ".join(names[:n]) + (f" (+{len(names) - n} more)" if len(names) > n else "")


def _files(folder: Path, suffixes: tuple[str, ...] = IMAGE_SUFFIXES) -> list[Path]:
    """Image files directly in ``folder`` (case-insensitive suffix, ``.gz`` allowed), sorted by name."""
    out = []
    for p in folder.iterdir():
        if not p.is_file() or p.name.startswith("."):
            continue
        name = p.name.lower()
        if name.endswith(".gz"):
            name = name[:-3]
        if any(name.endswith(s) for s in suffixes):
            out.append(p)
    return sorted(out, key=lambda p: p.name)


def _need_dir(folder: Path, what: str, expected: str) -> Path:
    if not folder.is_dir():
        parent = folder.parent
        found = sorted(p.name + "/" for p in parent.iterdir() if p.is_dir()) if parent.is_dir() else []
        where = f"in {parent}" if parent.is_dir() else f"({parent} does not exist)"
        raise EdgeError(f"{what}: expected a folder {folder.name}/ with {expected} {where}; found "
                        f"{_few(found) if parent.is_dir() else 'no such folder'}")
    return folder


def _stem(p: Path) -> str:
    name = p.name[:-3] if p.name.lower().endswith(".gz") else p.name
    return name.rsplit(".", 1)[0]


def _pair(what: str, images: list[Path], others: list[Path], key_image: Callable[[Path], str],
          key_other: Callable[[Path], str], expect: Callable[[str], str], kind: str,
          required: bool = True) -> dict[str, Path | None]:
    """Match ``others`` to ``images`` by key; name the first missing or unmatched file in the error."""
    by_key: dict[str, Path] = {}
    for o in others:
        k = key_other(o)
        if k is None:
            raise EdgeError(f"{what}: unexpected {kind} file {o.name} (expected names like {expect('ID')})")
        by_key[k] = o
    image_keys = {key_image(p): p for p in images}
    extra = sorted(by_key[k].name for k in by_key if k not in image_keys)
    if extra:
        raise EdgeError(f"{what}: {kind} {extra[0]} has no image (expected an image for it among "
                        f"{_few([p.name for p in images])}); found {len(extra)} such {kind} file(s): {_few(extra)}")
    out: dict[str, Path | None] = {}
    for k, p in image_keys.items():
        if k not in by_key and required:
            raise EdgeError(f"{what}: no {kind} for image {p.name} (expected {expect(k)}); found "
                            f"{len(others)} {kind} file(s): {_few([o.name for o in others])}")
        out[k] = by_key.get(k)
    return out


def _check_root(root: str | Path | None, dataset: str) -> Path:
    if root is None:
        raise EdgeError(f"--data DIR is required for --dataset {dataset}")
    root = Path(root)
    if not root.is_dir():
        raise EdgeError(f"{dataset}: data folder {root} does not exist; pass the folder the dataset was unpacked to")
    return root


def _note_count(what: str, n: int, expected: int) -> None:
    if n != expected:
        print(f"note: {what} has {n} images; the papers' split has {expected}", file=sys.stderr)


def drive(root: str | Path, split: str) -> list[Sample]:
    """DRIVE (Staal et al. 2004): ``training/`` and ``test/`` with ``images``, ``1st_manual``, ``mask``."""
    root = _check_root(root, "drive")
    sub = {"train": "training", "test": "test"}[split]
    what = f"DRIVE {sub}"
    base = _need_dir(root / sub, "DRIVE", "images/, 1st_manual/, mask/")
    imgs = _files(_need_dir(base / "images", what, f"*_{sub}.tif images"))
    if not imgs:
        raise EdgeError(f"{what}: expected *_{sub}.tif files in {base / 'images'}; found none (empty split)")
    num = re.compile(r"^(\d+)_")

    def key_img(p: Path) -> str:
        m = num.match(p.name)
        if not m:
            raise EdgeError(f"{what}: unexpected image name {p.name} (expected ID_{sub}.tif, e.g. 21_{sub}.tif)")
        return m.group(1)

    def key_of(pattern: str) -> Callable[[Path], str | None]:
        rx = re.compile(pattern, re.IGNORECASE)
        return lambda p: (m.group(1) if (m := rx.match(p.name)) else None)

    manual_dir = base / "1st_manual"
    labels: dict[str, Path | None]
    if manual_dir.is_dir():
        labels = _pair(what, imgs, _files(manual_dir), key_img, key_of(r"^(\d+)_manual1\."),
                       lambda k: f"1st_manual/{k}_manual1.gif", "label")
    else:
        if split == "train":
            _need_dir(manual_dir, what, "ID_manual1.gif labels")
        print(f"note: {what} has no 1st_manual/ folder: images without labels (only predictions, no metrics)",
              file=sys.stderr)
        labels = {key_img(p): None for p in imgs}
    masks = _pair(what, imgs, _files(_need_dir(base / "mask", what, f"ID_{sub}_mask.gif FOV masks")), key_img,
                  key_of(rf"^(\d+)_{sub}_mask\."), lambda k: f"mask/{k}_{sub}_mask.gif", "FOV mask")
    _note_count(what, len(imgs), 20)
    return [Sample(_stem(p), p, labels[key_img(p)], masks[key_img(p)]) for p in imgs]


def chase(root: str | Path, split: str) -> list[Sample]:
    """CHASE_DB1 (Fraz et al. 2012): ``Image_01L.jpg`` + ``Image_01L_1stHO.png``; first 8 train, 20 test."""
    root = _check_root(root, "chase")
    what = "CHASE_DB1"
    imgs = [p for p in _files(root, (".jpg", ".jpeg")) if re.match(r"^Image_\d+[LR]\.", p.name, re.IGNORECASE)]
    if not imgs:
        found = [p.name for p in _files(root)]
        raise EdgeError(f"{what}: expected Image_01L.jpg ... Image_14R.jpg in {root}; found {_few(found)}")
    labels = [p for p in _files(root) if re.search(r"_1stHO\.", p.name, re.IGNORECASE)]
    key = lambda p: p.name.split(".")[0].split("_1stHO")[0]  # noqa: E731
    pairs = _pair(what, imgs, labels, key, key, lambda k: f"{k}_1stHO.png", "label")
    n_train = 8
    chosen = imgs[:n_train] if split == "train" else imgs[n_train:]
    if not chosen:
        raise EdgeError(f"{what}: the {split} split is empty: the first {n_train} images train, the rest test, "
                        f"and {root} has {len(imgs)} images")
    _note_count(f"{what} {split}", len(chosen), 8 if split == "train" else 20)
    return [Sample(_stem(p), p, pairs[key(p)], None) for p in chosen]


def hrf(root: str | Path, split: str) -> list[Sample]:
    """HRF (Budai et al. 2013): ``images/``, ``manual1/``, ``mask/``; first 5 of each category train."""
    root = _check_root(root, "hrf")
    what = "HRF"
    imgs = _files(_need_dir(root / "images", what, "01_h.jpg ... 15_g.jpg images"))
    rx = re.compile(r"^(\d+)_(h|dr|g)\.", re.IGNORECASE)
    bad = [p.name for p in imgs if not rx.match(p.name)]
    if bad:
        raise EdgeError(f"{what}: unexpected image name {bad[0]} in {root / 'images'} "
                        "(expected NN_h, NN_dr or NN_g with .jpg)")
    if not imgs:
        raise EdgeError(f"{what}: expected 01_h.jpg ... 15_g.jpg in {root / 'images'}; found none (empty split)")
    key = lambda p: p.name.split(".")[0].lower()  # noqa: E731
    labels = _pair(what, imgs, _files(_need_dir(root / "manual1", what, "NN_x.tif labels")), key,
                   lambda p: p.name.split(".")[0].lower(), lambda k: f"manual1/{k}.tif", "label")
    masks = _pair(what, imgs, _files(_need_dir(root / "mask", what, "NN_x_mask.tif FOV masks")), key,
                  lambda p: (m.group(1).lower() if (m := re.match(r"^(\d+_(?:h|dr|g))_mask\.", p.name, re.I))
                             else None),
                  lambda k: f"mask/{k}_mask.tif", "FOV mask")
    chosen = []
    for cat in ("h", "dr", "g"):
        of_cat = sorted((p for p in imgs if rx.match(p.name).group(2).lower() == cat),
                        key=lambda p: int(rx.match(p.name).group(1)))
        chosen += of_cat[:5] if split == "train" else of_cat[5:]
    if not chosen:
        raise EdgeError(f"{what}: the {split} split is empty: the first 5 images of each category (_h, _dr, _g) "
                        f"train, the rest test, and {root / 'images'} has {len(imgs)} images")
    _note_count(f"{what} {split}", len(chosen), 15 if split == "train" else 30)
    return [Sample(_stem(p), p, labels[key(p)], masks[key(p)]) for p in chosen]


def stare(root: str | Path, split: str) -> list[Sample]:
    """STARE (Hoover et al. 2000): ``im0001.ppm[.gz]`` and ``labels-ah/im0001.ah.ppm[.gz]``; 10 / 10."""
    root = _check_root(root, "stare")
    what = "STARE"
    img_dir = root / "stare-images" if (root / "stare-images").is_dir() else root
    rx = re.compile(r"^(im\d{4})\.ppm(\.gz)?$", re.IGNORECASE)
    imgs = [p for p in _files(img_dir, (".ppm",)) if rx.match(p.name)]
    labels = _files(_need_dir(root / "labels-ah", what, "im0001.ah.ppm labels (Hoover)"), (".ppm",))
    if not labels:
        raise EdgeError(f"{what}: expected im0001.ah.ppm ... in {root / 'labels-ah'}; found none (empty split)")
    key_img = lambda p: rx.match(p.name).group(1).lower()  # noqa: E731
    key_lab = lambda p: (m.group(1).lower() if (m := re.match(r"^(im\d{4})\.ah\.ppm", p.name, re.I)) else None)  # noqa: E731
    # STARE ships 400 images and labels for 20: the labelled ones are the dataset
    labelled = {key_lab(p) for p in labels}
    pairs = _pair(what, [p for p in imgs if key_img(p) in labelled], labels, key_img, key_lab,
                  lambda k: f"labels-ah/{k}.ah.ppm", "label")
    chosen = sorted((p for p in imgs if key_img(p) in labelled), key=lambda p: p.name)
    n_train = len(chosen) // 2
    chosen = chosen[:n_train] if split == "train" else chosen[n_train:]
    if not chosen:
        raise EdgeError(f"{what}: the {split} split is empty ({len(labelled)} labelled images; the first half "
                        "train, the second half test)")
    _note_count(f"{what} {split}", len(chosen), 10)
    return [Sample(key_img(p), p, pairs[key_img(p)], None) for p in chosen]


def folder(root: str | Path, split: str) -> list[Sample]:
    """A plain folder: ``images/`` + ``labels/`` (or ``masks/``, ``manual/``) by file stem, optional ``fov/``.

    With ``train/`` and ``test/`` sub-folders in that layout, those are the splits; otherwise the folder is
    one set, used for whichever split is asked for.
    """
    root = _check_root(root, "folder")
    if (root / "train").is_dir() or (root / "test").is_dir():
        root = _need_dir(root / split, "folder", "images/ and labels/")
    what = f"folder {root}"
    imgs = _files(_need_dir(root / "images", what, "the images"))
    if not imgs:
        raise EdgeError(f"{what}: expected image files in {root / 'images'}; found none (empty split)")
    label_dir = next((root / n for n in ("labels", "masks", "manual") if (root / n).is_dir()), None)
    if label_dir is None:
        print(f"note: {what} has no labels/ (masks/, manual/) folder: images without labels", file=sys.stderr)
        labels: dict[str, Path | None] = {_stem(p): None for p in imgs}
    else:
        labels = _pair(what, imgs, _files(label_dir), _stem, _stem, lambda k: f"{label_dir.name}/{k}.png", "label")
    fovs: dict[str, Path | None] = {_stem(p): None for p in imgs}
    if (root / "fov").is_dir():
        fovs = _pair(what, imgs, _files(root / "fov"), _stem, _stem, lambda k: f"fov/{k}.png", "FOV mask")
    return [Sample(_stem(p), p, labels[_stem(p)], fovs[_stem(p)]) for p in imgs]


# Synthetic splits use disjoint seed ranges so that no test image was ever a training image.
SYNTHETIC_SEED_BASE = {"train": 0, "test": 1_000_000}


def synthetic(root: str | Path | None, split: str, count: int = 20, size: tuple[int, int] = (584, 565)) -> list[Sample]:
    """``count`` generated images of ``size`` (H, W); ``root`` is ignored (nothing is read from disk)."""
    base = SYNTHETIC_SEED_BASE[split]
    return [Sample(f"synthetic_{base + i:07d}", None, synthetic=(base + i, size[0], size[1])) for i in range(count)]


DATASETS: dict[str, Callable[..., list[Sample]]] = {
    "drive": drive, "chase": chase, "hrf": hrf, "stare": stare, "folder": folder, "synthetic": synthetic,
}


def load_split(dataset: str, root: str | Path | None, split: str, **kw) -> list[Sample]:
    """The samples of one split of a dataset (see the module docstring for layouts and splits)."""
    dataset = look_up_option(dataset, DATASETS, "dataset")
    split = look_up_option(split, SPLITS, "split")
    if dataset != "synthetic" and kw:
        raise EdgeError(f"--synthetic-* options apply to --dataset synthetic, not {dataset}")
    return DATASETS[dataset](root, split, **kw)


def _read_any(path: Path, reader: Callable[[Path], np.ndarray]) -> np.ndarray:
    """Read through ``reader``, decompressing ``.gz`` (as STARE ships) to a temporary file first."""
    if not path.name.lower().endswith(".gz"):
        return reader(path)
    import tempfile

    try:
        data = gzip.decompress(path.read_bytes())
    except (OSError, EOFError) as exc:
        raise EdgeError(f"{path} is not a readable gzip file ({exc}); re-copy it") from exc
    with tempfile.TemporaryDirectory(prefix="vessel-edge-") as d:
        tmp = Path(d) / path.name[:-3]
        tmp.write_bytes(data)
        return reader(tmp)


def load_sample(sample: Sample) -> Loaded:
    """Decode a sample: image, label (bool or None), FOV (given, or estimated from the dark border)."""
    if sample.synthetic is not None:
        from models.train.synthetic import synthetic_fundus

        seed, h, w = sample.synthetic
        f = synthetic_fundus(h, w, seed)
        return Loaded(sample.name, f.image, f.vessels, f.fov, "synthetic")
    image = _read_any(sample.image, read_image)
    shape = image.shape[:2]
    label = None
    if sample.label is not None:
        label = _read_any(sample.label, lambda p: read_mask(p, shape, "label"))
    if sample.fov is not None:
        fov = _read_any(sample.fov, lambda p: read_mask(p, shape, "FOV mask"))
        source = "given"
    else:
        fov = estimate_fov(image)
        source = "estimated"
    return Loaded(sample.name, image, label, fov, source)


def resize_loaded(item: Loaded, scale: float) -> Loaded:
    """The sample at ``scale`` (area interpolation for the photo, nearest for the masks)."""
    if scale == 1.0:
        return item
    h, w = item.image.shape[:2]
    size = (max(1, int(round(w * scale))), max(1, int(round(h * scale))))
    interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR

    def mask(m: np.ndarray | None) -> np.ndarray | None:
        if m is None:
            return None
        return cv2.resize(m.astype(np.uint8), size, interpolation=cv2.INTER_NEAREST).astype(bool)

    return Loaded(item.name, cv2.resize(item.image, size, interpolation=interp), mask(item.label), mask(item.fov),
                  item.fov_source)
