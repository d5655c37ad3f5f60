"""Reading every supported format, refusing bad inputs with one-line errors, writing atomically."""
from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np
import pytest

from edge.errors import InputError
from edge.imageio import list_images, read_image, read_mask, write_atomic, write_image


@pytest.fixture
def rgb() -> np.ndarray:
    rng = np.random.default_rng(1)
    return rng.integers(0, 256, (23, 31, 3), dtype=np.uint8)


def save_bgr(path, rgb: np.ndarray) -> None:
    assert cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))


@pytest.mark.parametrize("suffix", [".png", ".tif", ".tiff", ".bmp", ".ppm"])
def test_lossless_formats_round_trip_as_rgb(tmp_path, rgb, suffix):
    p = tmp_path / f"a{suffix}"
    save_bgr(p, rgb)
    got = read_image(p)
    assert got.dtype == np.uint8 and got.shape == (23, 31, 3)
    np.testing.assert_array_equal(got, rgb)


def test_jpeg_is_rgb_not_bgr(tmp_path):
    img = np.zeros((32, 32, 3), np.uint8)
    img[..., 0] = 220  # pure red in RGB
    p = tmp_path / "red.jpg"
    save_bgr(p, img)
    got = read_image(p)
    assert got[..., 0].mean() > 200 and got[..., 2].mean() < 20


def test_16bit_tiff_is_scaled_to_8bit(tmp_path):
    img16 = np.zeros((4, 5, 3), np.uint16)
    img16[0, 0] = (65535, 32768, 0)  # -> 255, 128, 0
    img16[1, 1] = (257, 256, 128)  # -> 1, 1 (256/257 rounds up), 0 (128/257 rounds down)
    p = tmp_path / "a16.tif"
    assert cv2.imwrite(str(p), img16[..., ::-1])
    got = read_image(p)
    assert got.dtype == np.uint8
    assert tuple(got[0, 0]) == (255, 128, 0)
    assert tuple(got[1, 1]) == (1, 1, 0)


def test_gif_is_read(tmp_path):
    from PIL import Image

    img = np.zeros((20, 30, 3), np.uint8)
    img[:, :15] = (255, 0, 0)
    img[:, 15:] = (0, 0, 255)
    p = tmp_path / "a.gif"
    Image.fromarray(img).save(p)
    got = read_image(p)
    assert got.shape == (20, 30, 3)
    np.testing.assert_array_equal(got, img)  # two palette colours survive exactly


def test_missing_empty_corrupt_and_not_an_image(tmp_path, rgb):
    with pytest.raises(InputError, match="no such file"):
        read_image(tmp_path / "nope.png")
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(InputError, match=r"empty \(0 bytes\)"):
        read_image(tmp_path / "empty.png")
    (tmp_path / "notes.png").write_text("this is a text file, not a picture\n")
    with pytest.raises(InputError, match="not an image"):
        read_image(tmp_path / "notes.png")
    with pytest.raises(InputError, match="is a folder"):
        read_image(tmp_path)


@pytest.mark.parametrize("suffix,kind", [(".png", "PNG"), (".jpg", "JPEG"), (".tif", "TIFF")])
def test_truncated_files(tmp_path, suffix, kind):
    big = np.random.default_rng(0).integers(0, 256, (200, 200, 3), dtype=np.uint8)
    ok, buf = cv2.imencode(suffix, big)
    p = tmp_path / f"cut{suffix}"
    p.write_bytes(buf.tobytes()[: len(buf) // 2])
    with pytest.raises(InputError, match=f"truncated.*{kind}|{kind}.*truncated|truncated or corrupt {kind}") as e:
        read_image(p)
    assert "\n" not in str(e.value)


def test_grey_and_alpha_are_refused(tmp_path, rgb):
    grey = tmp_path / "grey.png"
    cv2.imwrite(str(grey), rgb[..., 0])
    with pytest.raises(InputError, match="1-channel"):
        read_image(grey)
    rgba = tmp_path / "rgba.png"
    cv2.imwrite(str(rgba), np.dstack([rgb, np.full(rgb.shape[:2], 255, np.uint8)]))
    with pytest.raises(InputError, match="alpha channel"):
        read_image(rgba)


def test_masks_of_any_depth(tmp_path):
    m = np.zeros((10, 12), np.uint8)
    m[2:5, 3:9] = 1
    for name, arr in [("m01.png", m), ("m255.png", m * 255), ("m16.tif", m.astype(np.uint16) * 65535),
                      ("rgb.png", np.dstack([m * 255] * 3))]:
        cv2.imwrite(str(tmp_path / name), arr)
        np.testing.assert_array_equal(read_mask(tmp_path / name), m.astype(bool))
    cv2.imwrite(str(tmp_path / "zero.png"), m * 0)
    assert not read_mask(tmp_path / "zero.png").any()
    with pytest.raises(InputError, match="12x10 but the image is 20x10"):
        read_mask(tmp_path / "m01.png", shape=(10, 20))


def test_write_is_atomic_and_leaves_no_temp_files(tmp_path, rgb):
    p = write_image(tmp_path / "out.png", rgb)
    np.testing.assert_array_equal(read_image(p), rgb)
    assert sorted(os.listdir(tmp_path)) == ["out.png"]


def test_unwritable_folder_is_one_line_error(tmp_path):
    if os.geteuid() == 0:
        ro = Path("/proc/self")  # refuses new files even to root
    else:
        ro = tmp_path / "ro"
        ro.mkdir()
        ro.chmod(0o500)
    with pytest.raises(InputError, match="cannot write into"):
        write_atomic(ro / "x.png", b"data")


def test_write_into_a_missing_folder_is_an_input_error(tmp_path):
    with pytest.raises(InputError, match="cannot write into"):
        write_atomic(tmp_path / "missing" / "x.png", b"data")


def test_list_images_sorted_by_name(tmp_path, rgb):
    for name in ["b.png", "a.JPG", "c.txt", ".hidden.png", "d.tif"]:
        (tmp_path / name).write_bytes(b"x")
    assert [p.name for p in list_images(tmp_path)] == ["a.JPG", "b.png", "d.tif"]


def test_truncated_jpeg_that_decodes_anyway_is_refused(tmp_path, monkeypatch):
    """Some libjpeg builds pad a cut JPEG with grey and only warn: the missing end-of-image marker refuses it."""
    from PIL import ImageFile

    ok, buf = cv2.imencode(".jpg", np.full((64, 64, 3), 128, np.uint8))
    p = tmp_path / "cut.jpg"
    p.write_bytes(buf.tobytes()[:-200])
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    with pytest.raises(InputError, match="truncated JPEG"):
        read_image(p)


def test_outputs_get_normal_permissions(tmp_path, rgb):
    old = os.umask(0o022)
    try:
        p = write_image(tmp_path / "out.png", rgb)
    finally:
        os.umask(old)
    assert p.stat().st_mode & 0o777 == 0o644


def test_float_tiff_output_round_trips(tmp_path):
    from PIL import Image

    prob = np.random.default_rng(3).random((17, 29), dtype=np.float32)
    p = write_image(tmp_path / "p.tif", prob)
    with Image.open(p) as im:
        assert im.mode == "F"
        np.testing.assert_array_equal(np.asarray(im), prob)
