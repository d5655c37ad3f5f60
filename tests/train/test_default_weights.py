"""The shipped default M2U-Net weights: they load strictly and agree with the published DRIVE checkpoint.

The agreement floor is the Dice measured when the weights were made (models/weights/MODEL_CARD.md) minus a
margin of 0.02, which absorbs PyTorch/OpenCV version differences in resizing, FOV estimation and
convolution arithmetic but not a wrong or damaged checkpoint (an untrained M2U-Net scores below 0.2).
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from models import create_model
from models.train.trainer import CHECKPOINT_FORMAT

WEIGHTS = Path(__file__).resolve().parents[2] / "models" / "weights"
REFERENCE = Path(__file__).resolve().parents[3] / "shared" / "models" / "m2unet" / "M2UNetDRIVE.pth"
# Measured on retina() resized to 544 and 768 px (see MODEL_CARD.md), minus the 0.02 margin.
MEASURED = {544: 0.824, 768: 0.865}
MARGIN = 0.02


def test_shipped_weights_load_strictly_and_match_their_sidecar():
    import hashlib

    pth = WEIGHTS / "m2unet.pth"
    sd = torch.load(pth, map_location="cpu", weights_only=True)
    net = create_model("m2unet", weights=pth)
    assert set(sd) == set(net.state_dict())
    meta = json.loads((WEIGHTS / "m2unet.json").read_text())
    assert meta["format"] == CHECKPOINT_FORMAT and meta["model"] == "m2unet"
    assert meta["weights"]["sha256"] == hashlib.sha256(pth.read_bytes()).hexdigest()
    assert (WEIGHTS / "MODEL_CARD.md").is_file()


def test_export_uses_the_shipped_weights_by_default():
    from models.weights import shipped_weights

    assert shipped_weights("m2unet") == WEIGHTS / "m2unet.pth"


@pytest.mark.skipif(not REFERENCE.is_file(), reason=f"{REFERENCE} is absent (../shared beside the checkout)")
def test_agreement_with_the_published_drive_checkpoint_on_retina():
    from models.train.default_weights import agreement

    got = agreement(WEIGHTS / "m2unet.pth", REFERENCE, sizes=tuple(MEASURED))
    for size, measured in MEASURED.items():
        assert got[f"retina@{size}"] >= measured - MARGIN, (size, got)
