"""The shipped default M2U-Net weights: they load strictly, record their training scale, and agree with the
authors' three published checkpoints on photographs they never saw (models/weights/MODEL_CARD.md).

The agreement floor is what ``python -m models.train.distill --ship`` measured on the same images (one per
resolution band, recorded in the sidecar as ``agreement_guard``) minus 0.02, a margin that absorbs PyTorch,
OpenCV and Pillow version differences in resizing and convolution arithmetic but not a wrong or damaged
checkpoint (the earlier CC0 weights at native scale score 0.20-0.39 lower on the 3504 px band).
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from models import create_model
from models.train import agreement as A
from models.train import distill as D
from models.train.trainer import CHECKPOINT_FORMAT

WEIGHTS = Path(__file__).resolve().parents[2] / "models" / "weights"
MARGIN = 0.02
HAVE_TEACHERS = all((D.TEACHER_DIR / f).is_file() for f, _ in D.TEACHERS.values())


def _sidecar() -> dict:
    return json.loads((WEIGHTS / "m2unet.json").read_text())


def test_shipped_weights_load_strictly_and_match_their_sidecar():
    pth = WEIGHTS / "m2unet.pth"
    sd = torch.load(pth, map_location="cpu", weights_only=True)
    net = create_model("m2unet", weights=pth)
    assert set(sd) == set(net.state_dict())
    meta = _sidecar()
    assert meta["format"] == CHECKPOINT_FORMAT and meta["model"] == "m2unet"
    assert meta["weights"]["sha256"] == hashlib.sha256(pth.read_bytes()).hexdigest()
    assert meta["scale"]["fov_diameter_px"] == D.STUDENT_FOV
    assert (WEIGHTS / "MODEL_CARD.md").is_file()


def test_export_uses_the_shipped_weights_by_default():
    from models.weights import shipped_weights

    assert shipped_weights("m2unet") == WEIGHTS / "m2unet.pth"


def test_no_evaluation_image_is_a_training_scene():
    train = {name for name, _ in D.scene_specs("train")} | {name for name, _ in D.scene_specs("val")}
    seeds = {int(n[3:].split("@")[0]) for n in train if n.startswith("syn")}
    eval_seeds = {A.EVAL_SEED_BASE + k for k in range(sum(len(v) for v in A.BANDS.values()))}
    assert not seeds & eval_seeds
    # retina(): training sees the top half only, the evaluation scores the bottom half only
    assert all(n.startswith("retina-top") for n in train if n.startswith("retina"))
    (ev,) = A.eval_images({"b": [("retina", 540)]})
    assert ev.score_from == ev.image.shape[0] // 2


def test_clipped_formats_have_an_hrf_like_field_of_view():
    img, fov = D.synthetic_scene(1944, 2592, 7)
    assert img.shape == (1944, 2592, 3)
    assert fov[0].any() and fov[-1].any()  # the disc is cut at the top and bottom rows
    assert D.fov_diameter(fov) > 1944 * 1.15


def test_patches_keep_photo_target_and_fov_aligned():
    img, fov = D.synthetic_scene(584, 565, 3)
    tgt = np.zeros(fov.shape, np.uint8)
    tgt[fov] = 255
    sc = D.Scene("s", img, {k: tgt for k in D.TEACHERS}, fov)
    rng = np.random.default_rng(0)
    for _ in range(8):
        x, y, m = D.sample_patch(sc, tgt.astype(np.float32) / 255, 64, rng)
        assert x.shape == (64, 64, 3) and x.dtype == np.uint8 and y.shape == m.shape == (64, 64)
        assert 0 <= y.min() and y.max() <= 1
        assert (x[~m] == 0).all()  # black outside the field of view, as a camera's
        assert np.abs(y[m] - 1).mean() < 0.1  # the target follows the FOV it was drawn on


def test_target_weights_maximise_the_worst_agreement():
    fov = np.ones((32, 32), bool)
    a = np.zeros((32, 32), np.uint8)
    a[:, :16] = 255
    b = np.zeros((32, 32), np.uint8)
    b[:, 8:24] = 255
    sc = D.Scene("s", np.zeros((32, 32, 3), np.uint8), {"drive": a, "chase": a, "hrf": b}, fov)
    w, worst = D.choose_weights([sc], step=0.25)
    assert abs(sum(w.values()) - 1) < 1e-6 and worst >= 0.5


@pytest.mark.slow
@pytest.mark.skipif(not HAVE_TEACHERS, reason=f"the authors' checkpoints are absent from {D.TEACHER_DIR}")
def test_agreement_with_the_authors_checkpoints_holds_on_every_band():
    guard = _sidecar()["agreement_guard"]["bands"]
    torch.set_num_threads(2)
    got = A.agreement(WEIGHTS / "m2unet.pth", D.STUDENT_FOV, A.eval_images(per_band=1))["bands"]
    assert set(got) == set(guard) == set(A.BANDS)
    for band, per_teacher in guard.items():
        for teacher, measured in per_teacher.items():
            assert got[band][teacher] >= measured - MARGIN, (band, teacher, got[band], measured)
