"""edge.scale and segment's resampling by the FOV: photos are tiled at the scale the weights were trained at."""
from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from edge import scale as S
from edge.errors import PackageError
from edge.fov import estimate_fov
from edge.package import Package, PackageMeta, Preprocess, load_package
from edge.segment import segment, sigmoid
from edge.tiling import count_tiles


def disc(h: int, w: int, cy: float, cx: float, r: float) -> np.ndarray:
    y, x = np.ogrid[:h, :w]
    return (y - cy) ** 2 + (x - cx) ** 2 <= r * r


@pytest.fixture(scope="module")
def pkg(package) -> Package:
    return load_package(package)


def with_scale(pkg: Package, fov_diameter_px) -> Package:
    meta = json.loads(json.dumps(pkg.meta))
    meta["preprocess"]["fov_diameter_px"] = fov_diameter_px
    return Package(pkg.path, PackageMeta.from_json(pkg.path, meta))


def test_diameter_of_a_disc_and_of_a_disc_clipped_at_top_and_bottom():
    assert S.fov_diameter(disc(300, 400, 150, 200, 100)) == 201
    # HRF: the camera's circle is wider than the sensor is tall; the horizontal extent is the diameter
    hrf = disc(234, 351, 117, 175, 165)
    assert hrf[0].any() and hrf[-1].any()
    assert S.fov_diameter(hrf) == 331
    assert S.fov_diameter(np.zeros((10, 10), bool)) is None


def test_target_size():
    assert S.scaled_size((2336, 3504), 3290, 960) == (682, 1022)
    assert S.scaled_size((584, 565), 540, 960) == (1038, 1004)
    assert S.scaled_size((3, 3), 1000, 1) == (1, 1)  # never an empty side


def test_plan_skips_what_is_within_3_percent_and_clamps_what_is_implausible():
    fov = disc(300, 400, 150, 200, 100)  # 201 px
    near = S.plan_scale((300, 400), fov, 205.0)
    assert near.status == S.AT_TRAINING_SCALE and near.processed == (300, 400) and not near.resampled
    assert "at its training scale" in near.describe()
    far = S.plan_scale((300, 400), fov, 100.5)
    assert far.resampled and far.factor == pytest.approx(0.5) and far.processed == (150, 200) and far.notice is None
    big = S.plan_scale((300, 400), fov, 5000.0)  # 24.9x wanted
    assert big.factor == S.MAX_FACTOR and big.processed == (1200, 1600) and "clamped to 4" in big.notice
    tiny = S.plan_scale((300, 400), fov, 2.0)
    assert tiny.factor == S.MIN_FACTOR and "implausible" in tiny.notice and "limited" in tiny.describe()
    # enlarging a large photo is capped in pixels (memory), and says so
    huge = S.plan_scale((3000, 4000), disc(3000, 4000, 1500, 2000, 300), 1800.0)
    assert huge.processed[0] * huge.processed[1] <= S.MAX_ENLARGED_PIXELS * 1.001 and "16 Mpx" in huge.notice


def test_plan_says_why_it_stays_native():
    fov = disc(300, 400, 150, 200, 100)
    assert "--native-scale" in S.plan_scale((300, 400), fov, 960.0, native_scale=True).reason
    none = S.plan_scale((300, 400), fov, None)
    assert none.status == S.NO_TRAINING_SCALE and "--fov-diameter" in none.reason
    empty = S.plan_scale((300, 400), np.zeros((300, 400), bool), 960.0)
    assert empty.status == S.FOV_UNMEASURABLE and "empty" in empty.reason
    full = S.plan_scale((300, 400), np.ones((300, 400), bool), 960.0)
    assert full.status == S.FOV_UNMEASURABLE and "fills the image" in full.reason
    # a circle inscribed in the image touches all four borders but is measured (it leaves the corners dark)
    assert S.plan_scale((300, 300), disc(300, 300, 149.5, 149.5, 150), 150.0).resampled
    for info in (none, empty, full):
        assert info.processed == info.size and info.factor == 1.0
        assert S.ScaleInfo.from_dict(json.loads(json.dumps(info.to_dict()))) == info


def test_prob_map_back_is_pillow_bilinear_in_strips():
    rng = np.random.default_rng(0)
    small = rng.random((37, 53), dtype=np.float32)
    out = S.resize_prob(small, (300, 410), strip_rows=64)  # several strips, the last one short
    with Image.fromarray(small, "F") as im:
        whole = np.asarray(im.resize((410, 300), Image.Resampling.BILINEAR))
    assert out.dtype == np.float32 and out.shape == (300, 410)
    np.testing.assert_allclose(out, whole, atol=1e-4)
    assert out.min() >= 0 and out.max() <= 1


def test_image_resize_shrinks_by_area_and_keeps_uint8_rgb():
    stripes = np.zeros((40, 40, 3), np.uint8)
    stripes[:, ::2] = 255  # 1-px vessels: an area filter averages them, it does not pick every other column
    small = S.resize_image(stripes, (20, 20))
    assert small.dtype == np.uint8 and small.shape == (20, 20, 3)
    assert np.abs(small.astype(int) - 128).max() <= 1
    assert S.resize_image(stripes, (80, 80)).shape == (80, 80, 3)
    assert S.resize_mask(disc(40, 40, 20, 20, 10), (80, 80)).sum() == pytest.approx(4 * disc(40, 40, 20, 20, 10).sum(),
                                                                                   rel=0.05)


def brightness_logits(x: np.ndarray) -> np.ndarray:
    """A per-pixel 'network': logits from the red channel, so the map follows the image it was given."""
    return (x[:, :1] - 0.5) * 8


def test_segment_tiles_the_resampled_photo_and_maps_back(pkg, fundus):
    half = with_scale(pkg, S.fov_diameter(estimate_fov(fundus)) / 2)
    seen = []

    def record(x):
        seen.append(x.shape)
        return brightness_logits(x)

    r = segment(fundus, half, record)
    assert r.scale.resampled and r.scale.factor == pytest.approx(0.5)
    assert r.scale.processed == (75, 100) and r.scale.size == (150, 200)
    assert r.tiles == len(seen) == count_tiles(75, 100, pkg.tile, 16, 16) == 4  # 12 at native scale
    assert r.prob.shape == r.mask.shape == r.fov.shape == fundus.shape[:2] and r.prob.dtype == np.float32
    assert (r.prob[~r.fov] == 0).all()
    assert "resample_ms" in r.timings_ms and r.timings_ms["resample_ms"] > 0
    native = segment(fundus, half, brightness_logits, native_scale=True)
    assert native.tiles == 12 and native.scale.status == S.NATIVE_REQUESTED and native.scale.processed == (150, 200)
    # per-pixel logits blend to themselves, so the map is exactly the resampled photo's, brought back bilinearly
    x = S.resize_image(fundus, (75, 100)).astype(np.float32)[None].transpose(0, 3, 1, 2) / 255
    expected = S.resize_prob(sigmoid(brightness_logits(x))[0, 0], (150, 200))
    np.testing.assert_allclose(r.prob[r.fov], expected[r.fov], atol=1e-5)
    assert np.abs(r.prob - native.prob)[r.fov].mean() < 0.05  # and close to the native-scale map


def test_a_constant_map_comes_back_exact_inside_the_given_fov(pkg, fundus):
    fov = disc(150, 200, 75, 100, 60)
    r = segment(fundus, with_scale(pkg, 60.5), lambda x: np.ones((1, 1, *x.shape[2:]), np.float32), fov=fov)
    assert r.scale.measured_px == 121 and r.scale.resampled and r.fov_source == "given"
    np.testing.assert_allclose(r.prob[fov], sigmoid(np.float32(1.0)), rtol=1e-5)
    assert (r.prob[~fov] == 0).all() and r.mask[fov].all()


def test_without_a_training_scale_segment_stays_native_and_says_why(pkg, fundus):
    r = segment(fundus, pkg, brightness_logits)
    assert r.scale.status == S.NO_TRAINING_SCALE and "re-export" in r.scale.reason and r.tiles == 12


def test_implausible_fov_is_clamped_with_a_notice(pkg, fundus):
    r = segment(fundus, with_scale(pkg, 2.0), brightness_logits)
    assert r.scale.factor == S.MIN_FACTOR and r.scale.processed == (19, 25) and r.tiles == 1
    assert "implausible" in r.scale.notice and r.prob.shape == fundus.shape[:2]


def test_all_black_photo_stays_native_with_the_reason(pkg):
    black = np.zeros((150, 200, 3), np.uint8)
    r = segment(black, with_scale(pkg, 67.0), brightness_logits)
    assert r.scale.status == S.FOV_UNMEASURABLE and "empty" in r.scale.reason
    assert r.prob.shape == (150, 200) and not r.prob.any() and r.tiles == 12


def test_meta_records_the_training_scale_and_refuses_a_bad_one(pkg):
    assert pkg.info.preprocess.fov_diameter_px is None  # a package written before the key existed
    assert with_scale(pkg, 960).info.preprocess.fov_diameter_px == 960.0
    assert with_scale(pkg, None).info.preprocess.fov_diameter_px is None
    assert Preprocess("RGB", 1 / 255, (0,) * 3, (1,) * 3, 960.0).to_meta()["fov_diameter_px"] == 960.0
    for bad in ("960", 0, -5, True, float("nan"), float("inf"), [960]):
        with pytest.raises(PackageError, match=r"'preprocess\.fov_diameter_px' must be .*re-export the package"):
            with_scale(pkg, bad)
