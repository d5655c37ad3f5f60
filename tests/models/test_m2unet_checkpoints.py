"""The authors' published M2U-Net checkpoints (../shared/models/m2unet) load strictly and segment vessels."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from edge.errors import EdgeError
from models import create_model

CKPT_DIR = Path(__file__).resolve().parents[2].parent / "shared" / "models" / "m2unet"
CHECKPOINTS = ["M2UNetDRIVE.pth", "M2UNetCHASEDB1.pth", "M2UNetHRF.pth"]

pytestmark = pytest.mark.skipif(not CKPT_DIR.is_dir(), reason=f"published checkpoints not present in {CKPT_DIR}")


def _checkpoint(name: str) -> Path:
    path = CKPT_DIR / name
    if not path.is_file():
        pytest.skip(f"{path} not present")
    return path


@pytest.mark.parametrize("name", CHECKPOINTS)
def test_checkpoint_loads_strictly(name):
    path = _checkpoint(name)
    model = create_model("m2unet", weights=path)
    published = torch.load(path, map_location="cpu", weights_only=True)
    own = model.state_dict()
    assert set(published) <= set(own)
    assert {k for k in own if k not in published} <= {k for k in own if k.endswith("num_batches_tracked")}
    for key, value in published.items():
        assert torch.equal(own[key], value), key
    assert not model.training


def test_weights_of_another_model_name_the_keys(tmp_path):
    torch.manual_seed(0)
    path = tmp_path / "erfnet.pth"
    torch.save(create_model("erfnet").state_dict(), path)
    with pytest.raises(EdgeError) as err:
        create_model("m2unet", weights=path)
    msg = str(err.value)
    assert "'m2unet'" in msg and "erfnet.pth" in msg
    assert "missing keys: conv1." in msg and "unexpected keys: encoder." in msg


def test_m2unet_weights_into_another_model_name_the_keys():
    path = _checkpoint("M2UNetDRIVE.pth")
    with pytest.raises(EdgeError, match=r"do not fit model 'sepfe'.*missing keys: .*unexpected keys: conv1\."):
        create_model("sepfe", weights=path)


def _fundus(size: int = 704) -> np.ndarray:
    cv2 = pytest.importorskip("cv2")
    skdata = pytest.importorskip("skimage.data")
    rgb = skdata.retina()  # a real colour fundus photograph bundled with scikit-image (1411 x 1411)
    return cv2.resize(rgb, (size, size), interpolation=cv2.INTER_AREA)


def _field_of_view(rgb: np.ndarray) -> np.ndarray:
    """Pixels brighter than the black surround, eroded so the bright rim of the aperture is not counted."""
    import cv2

    fov = (rgb.max(axis=2) > 20).astype(np.uint8)
    return cv2.erode(fov, np.ones((15, 15), np.uint8)).astype(bool)


def test_drive_checkpoint_segments_vessels_of_a_real_fundus_photograph():
    path = _checkpoint("M2UNetDRIVE.pth")
    rgb = _fundus(704)
    model = create_model("m2unet", weights=path)
    x = torch.from_numpy(rgb).permute(2, 0, 1)[None].float() / 255.0  # RGB, [0, 1], no mean/std
    with torch.no_grad():
        prob = torch.sigmoid(model(x))[0, 0].numpy()
    fov = _field_of_view(rgb)
    vessel = prob > model.spec.threshold
    fraction = vessel[fov].mean()
    # Vessels cover about a tenth of a fundus image's field of view; an untrained or mis-loaded network
    # gives roughly 0 % or 50 %.
    assert 0.05 <= fraction <= 0.20, f"vessel fraction in the field of view: {fraction:.3f}"
    assert vessel[~fov].mean() < 0.03, "vessels found in the black surround"
    # Vessels are darker than the background in the green channel.
    green = rgb[..., 1].astype(float)
    assert green[vessel & fov].mean() < green[~vessel & fov].mean() - 10
