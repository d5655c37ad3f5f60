"""Field-of-view estimation on synthetic and real fundus photos; metrics on exact small examples."""
from __future__ import annotations

import cv2
import numpy as np
import pytest

from edge.errors import InputError
from edge.fov import estimate_fov
from edge.metrics import Confusion, confusion, dice


def disc_image(h=300, w=400, r=130):
    img = np.zeros((h, w, 3), np.uint8)
    cv2.circle(img, (w // 2, h // 2), r, (190, 80, 30), -1)
    truth = img[..., 0] > 0
    cv2.circle(img, (w // 2 + 40, h // 2), 15, (5, 2, 1), -1)  # a dark lesion inside: a hole to fill
    img[10:14, 10:14] = 255  # a bright speck in the black surround: not the largest region
    img[200:210, 330:340] = 3  # JPEG-like noise near black
    return img, truth


def test_fov_of_a_synthetic_disc():
    img, truth = disc_image()
    fov = estimate_fov(img)
    assert fov.dtype == bool and fov.shape == truth.shape
    inter, union = (fov & truth).sum(), (fov | truth).sum()
    assert inter / union > 0.95  # the small erosion takes ~2 px off the rim
    inner = cv2.erode(truth.astype(np.uint8), np.ones((9, 9), np.uint8)).astype(bool)
    assert fov[inner].all()
    assert not (fov & ~truth).any()  # eroded: never outside the true disc
    assert fov[150, 240]  # the dark lesion is inside the FOV
    assert not fov[12, 12]  # the speck is not


def test_fov_of_an_image_without_dark_border_is_everything():
    img = np.full((50, 60, 3), 150, np.uint8)
    assert estimate_fov(img).all()


def test_fov_of_a_black_image_is_empty():
    assert not estimate_fov(np.zeros((20, 20, 3), np.uint8)).any()


def test_fov_of_a_real_fundus(retina_rgb):
    fov = estimate_fov(retina_rgb)
    h, w = fov.shape
    assert not fov[0, 0] and not fov[-1, -1] and fov[h // 2, w // 2]
    assert 0.5 < fov.mean() < 0.85  # a round FOV inside a square frame covers ~pi/4 of it
    bright = retina_rgb[..., 0] > 60
    assert (fov & bright).sum() / bright.sum() > 0.98


def test_confusion_counts_inside_the_fov():
    pred = np.array([[1, 1, 0, 0], [1, 0, 0, 1]], bool)
    truth = np.array([[1, 0, 1, 0], [1, 0, 0, 0]], bool)
    c = confusion(pred, truth)
    assert c == Confusion(tp=2, fp=2, fn=1, tn=3)
    assert c.dice == pytest.approx(4 / 7)
    assert c.sensitivity == pytest.approx(2 / 3)
    assert c.specificity == pytest.approx(3 / 5)
    assert c.accuracy == pytest.approx(5 / 8)
    fov = np.array([[1, 1, 1, 1], [0, 0, 0, 0]], bool)
    assert confusion(pred, truth, fov) == Confusion(tp=1, fp=1, fn=1, tn=1)


def test_metric_edge_cases():
    empty = np.zeros((3, 3), bool)
    assert dice(empty, empty) == 1.0
    c = confusion(empty, empty)
    assert c.sensitivity is None and c.specificity == 1.0 and c.accuracy == 1.0
    assert dice(np.ones((2, 2), bool), empty[:2, :2]) == 0.0
    assert (Confusion(1, 2, 3, 4) + Confusion(1, 1, 1, 1)) == Confusion(2, 3, 4, 5)
    with pytest.raises(InputError, match="ground truth is 2x2 but the image is 3x3"):
        confusion(empty, empty[:2, :2])


# The device runtime's FOV has no OpenCV; the host (dev install) has it, so each numpy piece is checked against
# the OpenCV operation it replaces, exactly.
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_fov_pieces_equal_opencv(seed):
    from edge.fov import erode_ellipse, largest_region_filled, median5_above, otsu_threshold

    rng = np.random.default_rng(seed)
    red = cv2.GaussianBlur(rng.integers(0, 60, (157, 211), dtype=np.uint8), (0, 0), 2 + seed)
    red = cv2.normalize(red, None, 0, 255, cv2.NORM_MINMAX)
    otsu, _ = cv2.threshold(red, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    assert otsu_threshold(red) == int(otsu)
    for t in (8, 30, int(otsu)):
        np.testing.assert_array_equal(median5_above(red, t), cv2.medianBlur(red, 5) > t)
    binary = (red > otsu).astype(np.uint8)
    contours, _ = cv2.findContours(binary, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    ref = np.zeros_like(binary)
    cv2.drawContours(ref, [max(contours, key=cv2.contourArea)], -1, 1, thickness=cv2.FILLED)
    got = largest_region_filled(binary.astype(bool))
    # drawContours fills the polygon through the contour's pixel centres; the largest region by area is the
    # same one. Both fill holes: they may differ only where the polygon cuts diagonal one-pixel necks.
    assert (got != ref.astype(bool)).mean() < 0.002
    for r in (1, 3, 7):
        kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1, 2 * r + 1))
        np.testing.assert_array_equal(erode_ellipse(got, r),
                                      cv2.erode(got.astype(np.uint8), kernel, borderType=cv2.BORDER_REPLICATE)
                                      .astype(bool))


def test_fov_of_a_real_fundus_equals_the_opencv_recipe(retina_rgb):
    red = cv2.medianBlur(np.ascontiguousarray(retina_rgb[..., 0]), 5)
    binary = (red > 30).astype(np.uint8)  # Otsu (105) clipped to 30
    contours, _ = cv2.findContours(binary, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    ref = np.zeros_like(binary)
    cv2.drawContours(ref, [max(contours, key=cv2.contourArea)], -1, 1, thickness=cv2.FILLED)
    r = round(0.005 * min(red.shape))
    ref = cv2.erode(ref, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1, 2 * r + 1)),
                    borderType=cv2.BORDER_REPLICATE).astype(bool)
    np.testing.assert_array_equal(estimate_fov(retina_rgb), ref)
