"""The quality bar: on an HRF-sized photo, tiled inference with the spec's overlap equals one whole-image pass."""
from __future__ import annotations

import numpy as np
import pytest

from edge.metrics import dice
from edge.tiling import sliding_window_inference


@pytest.mark.slow
def test_tiled_m2unet_matches_whole_image(hrf_weights, retina_rgb):
    import cv2
    import torch

    from models import create_model, get_spec

    spec = get_spec("m2unet")
    image = cv2.resize(retina_rgb, (3504, 2336), interpolation=cv2.INTER_CUBIC)
    model = create_model("m2unet", weights=hrf_weights)

    def predict(tile: np.ndarray) -> np.ndarray:  # (1, 3, 544, 544) uint8 -> probabilities, as edge.segment
        with torch.inference_mode():
            return torch.sigmoid(model(torch.from_numpy(tile.astype(np.float32) / 255))).numpy()

    tiled = sliding_window_inference(image.transpose(2, 0, 1), predict, spec.default_tile, spec.overlap,
                                     spec.divisor, "gaussian")[0]
    with torch.inference_mode():
        x = torch.from_numpy(image.transpose(2, 0, 1)[None].astype(np.float32) / 255)
        whole = torch.sigmoid(model(x))[0, 0].numpy()
    assert tiled.shape == whole.shape == (2336, 3504)
    assert (whole > 0.5).mean() > 0.02  # the trained network does find vessels: the comparison means something
    assert dice(tiled > 0.5, whole > 0.5) >= 0.995
    assert np.abs(tiled - whole).max() <= 0.05
