"""Hostile images for edge-run: corrupt, truncated, empty, odd channel counts and depths, bombs, odd names.

Every file is made here (nothing downloaded). Each refusal goes through ``expect_refusal``: non-zero exit, one
``error:`` line, no traceback, nothing written to the output folder.
"""
from __future__ import annotations

import struct
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "edge"))
from edge_fixtures import build_package, synthetic_fundus  # noqa: E402

from edge.cli import main  # noqa: E402
from edge.imageio import encode_image, write_image  # noqa: E402


@pytest.fixture(scope="module")
def pkg(tmp_path_factory) -> Path:
    return build_package(tmp_path_factory.mktemp("pkg") / "tiny")


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png_bomb(w: int, h: int) -> bytes:
    """A valid PNG header claiming w x h RGB pixels, with a few bytes of data: what a decompression bomb or a
    damaged header looks like to a decoder."""
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", zlib.compress(b"\0" * 64))
            + _png_chunk(b"IEND", b""))


def tiff_bomb(w: int, h: int) -> bytes:
    """A little-endian TIFF whose IFD claims w x h 8-bit RGB pixels and points at 8 bytes of strip data."""
    entries = [(256, 4, 1, w), (257, 4, 1, h), (258, 3, 1, 8), (259, 3, 1, 1), (262, 3, 1, 2), (273, 4, 1, 8),
               (277, 3, 1, 3), (278, 4, 1, h), (279, 4, 1, w * h * 3)]
    ifd = struct.pack("<H", len(entries)) + b"".join(struct.pack("<HHII", *e) for e in entries) + b"\0\0\0\0"
    return b"II*\x00" + struct.pack("<I", 16) + b"\0" * 8 + ifd


def _encoded(suffix: str, seed: int = 0) -> bytes:
    return encode_image(synthetic_fundus(120, 160, seed), suffix)


def _pil_bytes(array: np.ndarray, fmt: str, mode: str | None = None, **kw) -> bytes:
    import io

    im = Image.fromarray(array)
    if mode:
        im = im.convert(mode)
    buf = io.BytesIO()
    im.save(buf, format=fmt, **kw)
    return buf.getvalue()


RGB = synthetic_fundus(64, 80, 3)

# name -> (file name, bytes, regex the error line must match)
CORPUS: dict[str, tuple[str, bytes, str]] = {
    "zero-byte": ("empty.png", b"", r"empty \(0 bytes\)"),
    "truncated-png": ("cut.png", _encoded(".png")[:900], r"truncated or corrupt PNG"),
    "truncated-jpeg": ("cut.jpg", _encoded(".jpg")[:1500], r"truncated JPEG"),
    "truncated-tiff": ("cut.tif", _encoded(".tif")[:2000], r"truncated or corrupt TIFF"),
    "garbage-after-png-signature": ("junk.png", b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4,
                                    r"truncated or corrupt PNG"),
    "text-named-jpg": ("notes.jpg", b"patient list, not a picture\n", r"not an image"),
    "grey-8bit": ("grey.png", _pil_bytes(RGB[..., 1], "PNG"), r"1-channel \(grey\)"),
    "grey-16bit": ("grey16.png", _pil_bytes(RGB[..., 1].astype(np.uint16) * 257, "PNG"), r"1-channel \(grey\)"),
    "bilevel-1bit": ("bits.png", _pil_bytes(RGB[..., 1] > 100, "PNG"), r"1-channel \(grey\)"),
    "grey-alpha-2ch": ("la.png", _pil_bytes(RGB[..., :2].copy(), "PNG", mode="LA"), r"2-channel"),
    "rgba-4ch": ("rgba.png", _pil_bytes(RGB, "PNG", mode="RGBA"), r"alpha channel"),
    "cmyk-jpeg": ("cmyk.jpg", _pil_bytes(RGB, "JPEG", mode="CMYK"), r"CMYK image; save it as an RGB"),
    "float-tiff": ("float.tif", _pil_bytes(RGB[..., 0].astype(np.float32), "TIFF"), r"1-channel"),
    "png-header-30000x30000": ("bomb.png", png_bomb(30000, 30000), r"30000x30000 pixels \(900 Mpx\).*downscale"),
    "tiff-header-30000x30000": ("bomb.tif", tiff_bomb(30000, 30000), r"30000x30000 pixels.*downscale"),
}


@pytest.mark.parametrize("case", sorted(CORPUS))
def test_edge_run_refuses_a_hostile_image(case, pkg, tmp_path, expect_refusal):
    name, data, match = CORPUS[case]
    src = tmp_path / name
    src.write_bytes(data)
    out = tmp_path / "out"
    r = expect_refusal(main, [src, "--package", pkg, "-o", out], watch=[out, tmp_path], match=match, rc=4)
    assert str(src) in r.line  # the line names the file


def test_a_bomb_is_refused_without_decoding(pkg, tmp_path, expect_refusal):
    """The 30000x30000 header would need 2.7 GB to decode: refused from the header, fast and small."""
    import resource
    import time

    src = tmp_path / "bomb.png"
    src.write_bytes(png_bomb(30000, 30000))
    t0, rss0 = time.perf_counter(), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    expect_refusal(main, [src, "--package", pkg, "-o", tmp_path / "out"], match="900 Mpx")
    assert time.perf_counter() - t0 < 20
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0 < 200_000  # KiB: no 2.7 GB buffer


def test_the_pixel_limit_is_the_users_to_set(pkg, tmp_path, expect_refusal, capsys):
    src = tmp_path / "f.png"
    write_image(src, synthetic_fundus(150, 200, 0))
    expect_refusal(main, [src, "--package", pkg, "-o", tmp_path / "o1", "--max-megapixels", "0.01"],
                   watch=[tmp_path], match=r"200x150 pixels.*over the 0 Mpx|--max-megapixels")
    expect_refusal(main, [src, "--package", pkg, "-o", tmp_path / "o2", "--max-megapixels", "0"],
                   watch=[tmp_path], match=r"--max-megapixels 0\.0 must be above 0")
    assert main([str(src), "--package", str(pkg), "-o", str(tmp_path / "o3"), "--max-megapixels", "1"]) == 0


@pytest.mark.parametrize("name,array", [
    ("tiny 20x20.png", synthetic_fundus(20, 20, 4)),  # far smaller than a tile
    ("fundus ñ 眼底 (copy).jpg", synthetic_fundus(90, 110, 5)),  # spaces, non-ASCII, brackets
    ("deep16.tif", (synthetic_fundus(80, 100, 6).astype(np.uint16) * 257)),
    ("palette.gif", synthetic_fundus(60, 70, 7)),
    ("strip 1x300.png", synthetic_fundus(3, 300, 8)[:1]),  # one row
])
def test_odd_but_valid_images_are_segmented(name, array, pkg, tmp_path, capsys):
    src = tmp_path / name
    if array.dtype == np.uint16:  # 16-bit RGB TIFF: Pillow does not write 16-bit colour; OpenCV (host) does
        import cv2

        assert cv2.imwrite(str(src), array[..., ::-1])
    else:
        src.write_bytes(_pil_bytes(array, "GIF") if name.endswith(".gif") else encode_image(array, src.suffix))
    out = tmp_path / "out"
    assert main([str(src), "--package", str(pkg), "-o", str(out)]) == 0, capsys.readouterr().err
    stem = Path(name).stem
    assert sorted(p.name for p in out.iterdir()) == sorted([f"{stem}_mask.png", f"{stem}_prob.png"])
    with Image.open(out / f"{stem}_mask.png") as m:
        assert m.size == (array.shape[1], array.shape[0])


def test_a_folder_mixing_good_and_bad_files(pkg, tmp_path, capsys):
    """The good ones are segmented, the bad ones listed one line each, the exit code says some failed."""
    d = tmp_path / "in"
    d.mkdir()
    good = {"a good.png": synthetic_fundus(100, 120, 0), "c_ok.jpg": synthetic_fundus(90, 90, 1)}
    for n, a in good.items():
        write_image(d / n, a)
    bad = ["b_empty.png", "d_cut.jpg", "e_grey.png", "f_bomb.png"]
    (d / bad[0]).write_bytes(b"")
    (d / bad[1]).write_bytes(_encoded(".jpg")[:700])
    (d / bad[2]).write_bytes(_pil_bytes(RGB[..., 0], "PNG"))
    (d / bad[3]).write_bytes(png_bomb(20000, 20000))
    (d / "readme.txt").write_text("not an image suffix: ignored")
    out = tmp_path / "out"
    rc = main([str(d), "--package", str(pkg), "-o", str(out), "--json", str(tmp_path / "run.json")])
    captured = capsys.readouterr()
    assert rc == 4
    errors = [ln for ln in captured.err.splitlines() if ln.startswith("error:")]
    assert len(errors) == len(bad) and all(any(b in e for e in errors) for b in bad)
    assert "Traceback" not in captured.err
    assert "images: 2 ok, 4 failed (b_empty.png, d_cut.jpg, e_grey.png, f_bomb.png)" in captured.out
    written = sorted(p.name for p in out.iterdir())
    assert written == ["a good_mask.png", "a good_prob.png", "c_ok_mask.png", "c_ok_prob.png"]
    import json

    s = json.loads((tmp_path / "run.json").read_text())
    assert s["exit_code"] == 4 and [i["ok"] for i in s["images"]] == [True, False, True, False, False, False]


def _folder_dataset(root: Path) -> Path:
    """A `folder` dataset (images/ + labels/) with one good pair and one truncated photograph."""
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    rng = np.random.default_rng(0)
    label = (rng.random((64, 80)) > 0.9).astype(np.uint8) * 255
    write_image(root / "images" / "a.png", synthetic_fundus(64, 80, 0))
    write_image(root / "labels" / "a.png", label)
    (root / "images" / "b.png").write_bytes(_encoded(".png")[:300])
    write_image(root / "labels" / "b.png", label)
    return root


def test_edge_eval_and_edge_train_refuse_a_dataset_with_a_corrupt_photo(tmp_path, expect_refusal):
    """Both name the bad file in one line and leave no (empty) output folder behind."""
    from models.train.evaluate import main as edge_eval
    from models.train.trainer import main as edge_train

    data = _folder_dataset(tmp_path / "data")
    preds = tmp_path / "preds"
    preds.mkdir()
    write_image(preds / "a.png", np.zeros((64, 80), np.uint8))
    write_image(preds / "b.png", np.zeros((64, 80), np.uint8))
    for main_, argv in [(edge_eval, [preds, "--dataset", "folder", "--data", data, "--out", tmp_path / "ev" / "x"]),
                        (edge_train, ["m2unet", "--dataset", "folder", "--data", data, "--out", tmp_path / "tr",
                                      "--epochs", "1"])]:
        expect_refusal(main_, argv, watch=[tmp_path], match=r"b\.png is a truncated or corrupt PNG", rc=4)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data", "preds"]
