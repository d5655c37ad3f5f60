"""Reading fundus photos and masks (TIFF, PNG, JPEG, PPM, GIF, BMP) and writing outputs atomically."""
from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np

from edge.errors import InputError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".gif", ".bmp", ".ppm", ".pnm", ".pgm")

# File signatures: a file that starts like an image but does not decode is truncated or corrupt; one that
# starts like nothing we know is not an image at all.
_SIGNATURES = {
    b"\x89PNG\r\n\x1a\n": "PNG",
    b"\xff\xd8\xff": "JPEG",
    b"II*\x00": "TIFF",
    b"MM\x00*": "TIFF",
    b"GIF87a": "GIF",
    b"GIF89a": "GIF",
    b"BM": "BMP",
    b"P1": "PNM", b"P2": "PNM", b"P3": "PNM", b"P4": "PNM", b"P5": "PNM", b"P6": "PNM",
}


def _format(head: bytes) -> str | None:
    for sig, name in _SIGNATURES.items():
        if head.startswith(sig):
            return name
    return None


@contextlib.contextmanager
def _quiet_opencv() -> Iterator[None]:
    """OpenCV prints decoder warnings itself; our errors say it better, in one line."""
    logging = getattr(getattr(cv2, "utils", None), "logging", None)
    if logging is None:
        yield
        return
    old = logging.getLogLevel()
    logging.setLogLevel(logging.LOG_LEVEL_SILENT)
    try:
        yield
    finally:
        logging.setLogLevel(old)


def _read_bytes(path: Path) -> bytes:
    if not path.exists():
        raise InputError(f"{path}: no such file; check the path")
    if path.is_dir():
        raise InputError(f"{path} is a folder, not an image file")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise InputError(f"{path}: cannot read ({exc.strerror}); check its permissions") from exc
    if not data:
        raise InputError(f"{path} is empty (0 bytes); re-copy the file")
    return data


def _decode_gif_fallback(path: Path) -> np.ndarray | None:
    """OpenCV builds before 4.11 cannot decode GIF; read its first frame with Pillow or a VideoCapture."""
    try:
        from PIL import Image  # optional: present on most installs, not a dependency
    except ImportError:
        Image = None
    if Image is not None:
        try:
            with Image.open(path) as im:
                im.load()
                return np.asarray(im.convert("RGB"))[..., ::-1].copy()  # BGR, like OpenCV
        except (OSError, ValueError):
            return None
    cap = cv2.VideoCapture(str(path))
    try:
        ok, frame = cap.read()
    finally:
        cap.release()
    return frame if ok else None


def _decode(path: Path) -> np.ndarray:
    """Decode with OpenCV, unchanged (keeps bit depth, alpha, grey); BGR(A) channel order."""
    data = _read_bytes(path)
    kind = _format(data[:16])
    with _quiet_opencv():
        try:
            img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
        except cv2.error:
            img = None
    if img is None and kind == "GIF":
        img = _decode_gif_fallback(path)
    if img is None:
        if kind is None:
            raise InputError(f"{path} is not an image (unrecognised format); pass a PNG, JPEG, TIFF, BMP, "
                             "PPM or GIF file")
        raise InputError(f"{path} is a truncated or corrupt {kind} file (it does not decode); re-copy or "
                         "re-export it")
    # Older OpenCV decodes a truncated JPEG to a partly grey picture with only a warning: check the
    # end-of-image marker (entropy-coded data never contains it, so it must be near the end).
    if kind == "JPEG" and b"\xff\xd9" not in data[-65536:]:
        raise InputError(f"{path} is a truncated JPEG file (no end-of-image marker); re-copy it")
    return img


def _to_uint8(img: np.ndarray, path: Path) -> np.ndarray:
    if img.dtype == np.uint8:
        return img
    if img.dtype == np.uint16:
        # Full 16-bit range onto the full 8-bit range (65535 -> 255), rounded: x * 255 / 65535 = x / 257.
        return ((img.astype(np.uint32) + 128) // 257).astype(np.uint8)
    raise InputError(f"{path} has {img.dtype} pixels; save it with 8- or 16-bit unsigned integer pixels")


def read_image(path: str | Path) -> np.ndarray:
    """Read a colour fundus photo as RGB uint8 (H, W, 3). 16-bit files are scaled by 255/65535.

    Raises :class:`InputError` for a missing, empty, truncated or non-image file, a 1-channel (grey) image
    and an image with an alpha channel (the runtime does not guess how to drop or composite it).
    """
    path = Path(path)
    img = _to_uint8(_decode(path), path)
    channels = 1 if img.ndim == 2 else img.shape[2]
    if channels in (1, 2):
        raise InputError(f"{path} is a 1-channel (grey) image; the model needs a colour (RGB) fundus photo")
    if channels == 4:
        raise InputError(f"{path} has an alpha channel (RGBA); save it as RGB without alpha "
                         "(e.g. `convert in.png -alpha off out.png`)")
    if channels != 3:
        raise InputError(f"{path} has {channels} channels; pass a 3-channel RGB image")
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def read_mask(path: str | Path, shape: tuple[int, int] | None = None, what: str = "mask") -> np.ndarray:
    """Read a binary mask (FOV mask or ground truth) of any bit depth or channel count as bool (H, W).

    A pixel is True when its value is above half of the mask's maximum, so 0/1, 0/255 and 0/65535 masks
    all work; an all-zero mask is all False. ``shape`` (H, W) is checked when given.
    """
    path = Path(path)
    img = _decode(path)
    if img.dtype not in (np.uint8, np.uint16, np.bool_):
        raise InputError(f"{path} has {img.dtype} pixels; save the {what} as an 8-bit PNG/GIF/TIFF")
    if img.ndim == 3:
        img = img[..., :3].max(axis=2)
    peak = int(img.max())
    mask = img > peak / 2 if peak > 0 else np.zeros(img.shape, dtype=bool)
    if shape is not None and mask.shape != tuple(shape):
        raise InputError(f"{what} {path} is {mask.shape[1]}x{mask.shape[0]} but the image is "
                         f"{shape[1]}x{shape[0]}; pass the {what} made for this image")
    return mask


def encode_image(array: np.ndarray, suffix: str) -> bytes:
    """Encode an RGB (H, W, 3) or single-channel array with OpenCV (``suffix`` picks the format)."""
    if array.ndim == 3 and array.shape[2] == 3:
        array = cv2.cvtColor(array, cv2.COLOR_RGB2BGR)
    ok, buf = cv2.imencode(suffix, array)
    if not ok:
        raise InputError(f"cannot encode a {array.dtype} image as {suffix}")
    return buf.tobytes()


def write_atomic(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to a temporary file beside ``path`` and rename it into place (never half a file)."""
    path = Path(path)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise InputError(f"cannot write into {path.parent} ({exc.strerror}); choose a writable output "
                         "folder with -o") from exc
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(exc, OSError):
            raise InputError(f"cannot write {path} ({exc.strerror}); free some space or choose another "
                             "output folder with -o") from exc
        raise
    return path


def write_image(path: str | Path, array: np.ndarray) -> Path:
    """Encode by the file suffix and write atomically."""
    path = Path(path)
    return write_atomic(path, encode_image(array, path.suffix))


def list_images(folder: str | Path) -> list[Path]:
    """The image files directly inside ``folder`` (by suffix, case-insensitive), sorted by name."""
    folder = Path(folder)
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
                  and not p.name.startswith("."))
