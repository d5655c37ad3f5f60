"""Reading fundus photos and masks (TIFF, PNG, JPEG, PPM, GIF, BMP) and writing outputs atomically.

Pillow decodes and encodes: it covers every format the runtime reads, in ~22 MB, where OpenCV's wheel is 90 MB
on the board (its video stack and a second OpenBLAS, none of which a fundus photo needs).
"""
from __future__ import annotations

import contextlib
import io
import os
import tempfile
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from edge.errors import InputError, raise_if_interrupted

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".gif", ".bmp", ".ppm", ".pnm", ".pgm")

# Largest image decoded, in pixels. An HRF photograph is 8.2 Mpx; 64 Mpx (8000x8000) needs about 1.5 GB of
# working memory in edge-run (image, float accumulators, outputs), which is what a 4 GB board can spare. A file
# whose header claims more (a decompression bomb, or a panorama) is refused before any pixel is decoded.
MAX_PIXELS = 64_000_000
Image.MAX_IMAGE_PIXELS = None  # our own check below says it better than Pillow's DecompressionBombError

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

# Pillow modes -> what the pixels are. Anything else (CMYK, LAB, HSV, ...) is refused by name.
_GREY = {"1", "L", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"}
_TWO = {"LA", "La", "PA"}


def _format(head: bytes) -> str | None:
    for sig, name in _SIGNATURES.items():
        if head.startswith(sig):
            return name
    return None


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


def _corrupt(path: Path, kind: str | None) -> InputError:
    if kind is None:
        return InputError(f"{path} is not an image (unrecognised format); pass a PNG, JPEG, TIFF, BMP, PPM or GIF "
                          "file")
    extra = " (or a layout this runtime does not read, e.g. float or 12-bit samples)" if kind == "TIFF" else ""
    return InputError(f"{path} is a truncated or corrupt {kind} file{extra}: it does not decode; re-copy or "
                      "re-export it")


def _decode(path: Path, max_pixels: int | None = None) -> tuple[np.ndarray, str]:
    """The first frame as a numpy array and its Pillow mode; the pixel count is checked before decoding."""
    data = _read_bytes(path)
    kind = _format(data[:16])
    limit = MAX_PIXELS if max_pixels is None else max_pixels
    # A truncated JPEG can decode to a grey-padded picture on some libjpeg builds: check the end-of-image
    # marker (entropy-coded data never contains it, so it must be near the end).
    if kind == "JPEG" and b"\xff\xd9" not in data[-65536:]:
        raise InputError(f"{path} is a truncated JPEG file (no end-of-image marker); re-copy it")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Pillow's decoder warnings: our errors say it in one line
        try:
            im = Image.open(io.BytesIO(data))
        except (UnidentifiedImageError, OSError, ValueError, SyntaxError, EOFError) as exc:
            raise _corrupt(path, kind) from exc
        w, h = im.size
        if w * h > limit:
            raise InputError(f"{path} is {w}x{h} pixels ({w * h / 1e6:.0f} Mpx), over the {limit / 1e6:.0f} Mpx "
                             "this runtime decodes; downscale it, or raise the limit with --max-megapixels if "
                             "the machine has the memory")
        if w == 0 or h == 0:
            raise InputError(f"{path} has no pixels ({w}x{h}); re-export it")
        try:
            im.load()
        except Exception as exc:  # noqa: BLE001 - Pillow's decoders raise many types for bad data
            if isinstance(exc, MemoryError):
                raise InputError(f"{path} ({w}x{h}) does not fit in memory; downscale it") from exc
            raise _corrupt(path, kind) from exc
    mode = im.mode
    if mode == "P":
        im = im.convert("RGB")
    elif mode == "PA":
        im = im.convert("LA")
    elif mode == "YCbCr":
        im = im.convert("RGB")
    elif mode == "RGBX":
        im = im.convert("RGB")
    mode = im.mode
    arr = np.asarray(im)
    if arr.dtype.byteorder == ">":
        arr = arr.astype(arr.dtype.newbyteorder("="))
    return arr, mode


def _to_uint8(img: np.ndarray, path: Path) -> np.ndarray:
    if img.dtype == np.uint8:
        return img
    if img.dtype == np.uint16:
        # Full 16-bit range onto the full 8-bit range (65535 -> 255), rounded: x * 255 / 65535 = x / 257.
        return ((img.astype(np.uint32) + 128) // 257).astype(np.uint8)
    raise InputError(f"{path} has {img.dtype} pixels; save it with 8- or 16-bit unsigned integer pixels")


def read_image(path: str | Path, max_pixels: int | None = None) -> np.ndarray:
    """Read a colour fundus photo as RGB uint8 (H, W, 3). 16-bit colour comes in scaled to 8 bits.

    Raises :class:`InputError` for a missing, empty, truncated or non-image file, an image over ``max_pixels``
    (default :data:`MAX_PIXELS`), a 1-channel (grey) image, a 2-channel (grey + alpha) one, an image with an
    alpha channel and other colour spaces (the runtime does not guess how to drop or convert them).
    """
    path = Path(path)
    img, mode = _decode(path, max_pixels)
    if mode in _GREY or img.ndim == 2:
        raise InputError(f"{path} is a 1-channel (grey) image; the model needs a colour (RGB) fundus photo")
    if mode in _TWO:
        raise InputError(f"{path} is a 2-channel (grey + alpha) image; the model needs a colour (RGB) fundus photo")
    if mode == "RGBA" or mode == "RGBa":
        raise InputError(f"{path} has an alpha channel (RGBA); save it as RGB without alpha "
                         "(e.g. `convert in.png -alpha off out.png`)")
    if mode != "RGB" or img.ndim != 3 or img.shape[2] != 3:
        raise InputError(f"{path} is a {mode} image; save it as an RGB PNG, JPEG or TIFF")
    return np.ascontiguousarray(_to_uint8(img, path))


def read_mask(path: str | Path, shape: tuple[int, int] | None = None, what: str = "mask",
              max_pixels: int | None = None) -> np.ndarray:
    """Read a binary mask (FOV mask or ground truth) of any bit depth or channel count as bool (H, W).

    A pixel is True when its value is above half of the mask's maximum, so 0/1, 0/255 and 0/65535 masks
    all work; an all-zero mask is all False. ``shape`` (H, W) is checked when given.
    """
    path = Path(path)
    img, mode = _decode(path, max_pixels)
    if img.dtype.kind == "f" or mode not in _GREY | _TWO | {"P", "RGB", "RGBA", "RGBa", "RGBX", "YCbCr"}:
        raise InputError(f"{path} is a {mode} image with {img.dtype} pixels; save the {what} as an 8-bit "
                         "PNG/GIF/TIFF")
    if img.ndim == 3:
        img = img[..., :1].max(axis=2) if mode in _TWO else img[..., :3].max(axis=2)
    peak = int(img.max())
    mask = img > peak / 2 if peak > 0 else np.zeros(img.shape, dtype=bool)
    if shape is not None and mask.shape != tuple(shape):
        raise InputError(f"{what} {path} is {mask.shape[1]}x{mask.shape[0]} but the image is "
                         f"{shape[1]}x{shape[0]}; pass the {what} made for this image")
    return mask


_ENCODE_FORMATS = {".png": "PNG", ".tif": "TIFF", ".tiff": "TIFF", ".jpg": "JPEG", ".jpeg": "JPEG",
                   ".bmp": "BMP", ".ppm": "PPM", ".pgm": "PPM", ".pnm": "PPM", ".gif": "GIF"}


def encode_image(array: np.ndarray, suffix: str) -> bytes:
    """Encode an RGB (H, W, 3) uint8, a single-channel uint8/uint16 or a float32 (TIFF) array by ``suffix``."""
    fmt = _ENCODE_FORMATS.get(suffix.lower())
    if fmt is None:
        raise InputError(f"cannot write {suffix} images; use one of {', '.join(_ENCODE_FORMATS)}")
    array = np.ascontiguousarray(array)
    if array.dtype == np.float32 and array.ndim == 2 and fmt == "TIFF":
        im = Image.fromarray(array)  # mode F
    elif array.dtype == np.uint16 and array.ndim == 2 and fmt in ("PNG", "TIFF"):
        im = Image.fromarray(array)  # mode I;16
    elif array.dtype == np.bool_ and array.ndim == 2:
        im = Image.fromarray(array.astype(np.uint8) * 255)
    elif array.dtype == np.uint8 and (array.ndim == 2 or (array.ndim == 3 and array.shape[2] == 3)):
        im = Image.fromarray(array)  # L or RGB
    else:
        raise InputError(f"cannot encode a {array.dtype} array of shape {array.shape} as {suffix}")
    options = {"PNG": {"compress_level": 1}, "JPEG": {"quality": 95}, "TIFF": {"compression": "tiff_deflate"}}
    buf = io.BytesIO()
    im.save(buf, format=fmt, **options.get(fmt, {}))
    return buf.getvalue()


def current_umask() -> int:
    """The process umask (read by setting and restoring it): what modes os.open would give new files."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _stage(path: Path, data: bytes) -> str:
    """``data`` in a complete, fsynced temporary file beside ``path`` with an ordinary file's permissions (none
    is left behind when that fails)."""
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise InputError(f"cannot write into {path.parent} ({exc.strerror}); choose a writable output "
                         "folder with -o") from exc
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        # mkstemp makes the file 0600; an output is a normal file: 0666 less the umask, like open() would make
        os.chmod(tmp, 0o666 & ~current_umask())
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return tmp


def write_atomic(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to a temporary file beside ``path`` and rename it into place (never half a file)."""
    path = Path(path)
    return write_files_atomic({path: data})[0]


def write_files_atomic(files: Mapping[str | Path, bytes]) -> list[Path]:
    """Write every file as :func:`write_atomic` does, but put none in place until all are written (a set of
    outputs that belong together, such as a report, is either all new or all old)."""
    paths = {Path(p): data for p, data in files.items()}
    staged: dict[Path, str] = {}
    try:
        for path, data in paths.items():
            staged[path] = _stage(path, data)
        raise_if_interrupted()  # a Ctrl-C swallowed by a native library still keeps the outputs out
        for path in list(staged):
            os.replace(staged[path], path)
            del staged[path]  # only once it is in place: a failed rename's temporary file is still removed below
    except BaseException as exc:
        for tmp in staged.values():
            with contextlib.suppress(OSError):
                os.unlink(tmp)
        if isinstance(exc, OSError):
            raise InputError(f"cannot write {path} ({exc.strerror}); free some space or choose another "
                             "output folder with -o") from exc
        raise
    return list(paths)


@contextlib.contextmanager
def output_folder(path: str | Path) -> Iterator[Path]:
    """Create ``path`` (and parents) for a command's outputs; if the command then fails, a folder this call made
    is removed again when nothing was written into it (a refused run leaves nothing behind)."""
    path = Path(path)
    made = [p for p in [path, *path.parents] if not p.exists()]
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"cannot create output folder {path} ({exc.strerror}); choose a writable one") from exc
    try:
        yield path
    except BaseException:
        for p in made:  # deepest first
            with contextlib.suppress(OSError):
                p.rmdir()  # only empty folders go
        raise


def write_image(path: str | Path, array: np.ndarray) -> Path:
    """Encode by the file suffix and write atomically."""
    path = Path(path)
    return write_atomic(path, encode_image(array, path.suffix))


def list_images(folder: str | Path) -> list[Path]:
    """The image files directly inside ``folder`` (by suffix, case-insensitive), sorted by name."""
    folder = Path(folder)
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
                  and not p.name.startswith("."))
