"""edge.segment: preprocessing per meta.json, blending of probabilities, FOV masking, thresholds, metrics."""
from __future__ import annotations

import numpy as np
import pytest

from edge.backends import create_backend
from edge.errors import InputError, PackageError
from edge.package import Package, PackageMeta, load_package
from edge.segment import segment, sigmoid


@pytest.fixture(scope="module")
def pkg(package) -> Package:
    return load_package(package)


def with_meta(pkg: Package, **sections) -> Package:
    meta = {k: (dict(v) if isinstance(v, dict) else v) for k, v in pkg.meta.items()}
    for name, values in sections.items():
        meta[name] = {**meta[name], **values}
    return Package(pkg.path, PackageMeta.from_json(pkg.path, meta))


def constant_logits(value: float):
    return lambda x: np.full((1, 1, *x.shape[2:]), value, np.float32)


def test_probability_is_sigmoid_inside_the_fov_and_zero_outside(pkg, fundus):
    fov = np.zeros(fundus.shape[:2], bool)
    fov[20:100, 30:150] = True
    r = segment(fundus, pkg, constant_logits(1.0), fov=fov, threshold=0.7)
    assert r.prob.dtype == np.float32 and r.prob.shape == fundus.shape[:2]
    np.testing.assert_allclose(r.prob[fov], 1 / (1 + np.exp(-1.0)), rtol=1e-6)
    assert (r.prob[~fov] == 0).all()
    assert r.mask[fov].all() and not r.mask[~fov].any()  # sigmoid(1) = 0.731 > 0.7
    assert not segment(fundus, pkg, constant_logits(1.0), fov=fov, threshold=0.75).mask.any()
    assert r.fov_source == "given" and r.threshold == 0.7
    assert r.tiles == 12  # 150x200 -> padded 160x208, 64-px tiles at stride 48: 3 x 4
    assert {"fov_ms", "inference_ms", "tiling_ms", "total_ms"} <= set(r.timings_ms)


def test_defaults_come_from_the_package(pkg, fundus):
    r = segment(fundus, pkg, constant_logits(0.0))
    assert (r.threshold, r.overlap, r.blend, r.fov_source) == (0.5, 16, "gaussian", "estimated")
    assert 0.4 < r.fov.mean() < 0.7  # the synthetic disc, not the black corners


def test_preprocessing_follows_meta(pkg):
    img = np.zeros((64, 64, 3), np.uint8)
    img[..., 0], img[..., 1], img[..., 2] = 10, 100, 200
    seen = []

    def record(x):
        seen.append(x.copy())
        return np.zeros((1, 1, 64, 64), np.float32)

    fov = np.ones((64, 64), bool)
    segment(img, pkg, record, fov=fov)
    assert seen[0].dtype == np.float32 and seen[0].shape == (1, 3, 64, 64)
    np.testing.assert_allclose(seen[0][0, :, 5, 5], np.array([10, 100, 200]) / 255, rtol=1e-6)

    seen.clear()
    bgr = with_meta(pkg, preprocess={"channel_order": "BGR", "scale": 1.0, "mean": [1, 2, 3], "std": [2, 4, 8]})
    segment(img, bgr, record, fov=fov)
    np.testing.assert_allclose(seen[0][0, :, 5, 5], [(200 - 1) / 2, (100 - 2) / 4, (10 - 3) / 8], rtol=1e-6)


def test_tiles_are_blended_as_probabilities_not_logits(pkg):
    """Two tiles (x=0 and x=48) overlap on columns 48..63; constant blend averages there.
    Probability blending gives (sigmoid(0) + sigmoid(8)) / 2 = 0.74983; logit blending would give
    sigmoid(4) = 0.982."""
    logits = iter([0.0, 8.0])
    img = np.full((64, 112, 3), 128, np.uint8)
    r = segment(img, pkg, lambda x: np.full((1, 1, 64, 64), next(logits), np.float32), blend="constant",
                fov=np.ones((64, 112), bool))
    assert r.tiles == 2
    np.testing.assert_allclose(r.prob[:, 55], (0.5 + sigmoid(np.float32(8))) / 2, rtol=1e-6)
    assert r.prob[0, 10] == 0.5 and r.prob[0, 100] == pytest.approx(float(sigmoid(np.float32(8))))


def test_truth_gives_metrics_inside_the_fov(pkg, fundus):
    fov = np.zeros(fundus.shape[:2], bool)
    fov[:, :100] = True
    truth = np.zeros(fundus.shape[:2], bool)
    truth[:, 50:150] = True  # inside the FOV: 50 columns vessel, 50 background
    r = segment(fundus, pkg, constant_logits(5.0), fov=fov, truth=truth)  # predicts vessel everywhere
    c = r.confusion
    n = fundus.shape[0]
    assert (c.tp, c.fp, c.fn, c.tn) == (50 * n, 50 * n, 0, 0)
    assert c.dice == pytest.approx(2 / 3)


def test_real_backend_close_to_whole_image_torch(package, fundus):
    """The tiny network's receptive field is 5 px: with 16 px overlap and gaussian weights the stitched map
    is close to a whole-image pass (on the image padded the same way: reflect, bottom/right) everywhere."""
    import torch

    from edge_fixtures import tiny_model

    pkg = load_package(package)
    r = segment(fundus, pkg, create_backend(pkg, "tvm", threads=1).backend, fov=np.ones(fundus.shape[:2], bool))
    padded = np.pad(fundus, ((0, 10), (0, 8), (0, 0)), mode="reflect")  # 150x200 -> 160x208
    x = torch.from_numpy(padded.transpose(2, 0, 1)[None].astype(np.float32) / 255)
    ref = torch.sigmoid(tiny_model()(x))[0, 0, :150, :200].detach().numpy()
    assert np.abs(r.prob - ref).max() < 1e-3  # measured 1.9e-4


def test_bad_options_and_packages(pkg, fundus):
    with pytest.raises(InputError, match="threshold 1.5 is outside"):
        segment(fundus, pkg, constant_logits(0), threshold=1.5)
    with pytest.raises(InputError, match="RGB uint8"):
        segment(fundus[..., 0], pkg, constant_logits(0))
    with pytest.raises(InputError, match="FOV mask is 3x3"):
        segment(fundus, pkg, constant_logits(0), fov=np.ones((3, 3), bool))
    with pytest.raises(PackageError, match="output activation 'softmax'"):
        segment(fundus, with_meta(pkg, output={"activation": "softmax"}), constant_logits(0))
    with pytest.raises(PackageError, match="outputs 2 channels"):
        segment(fundus, pkg, lambda x: np.zeros((1, 2, 64, 64), np.float32))
