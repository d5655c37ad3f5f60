"""Probability maps from a PyTorch model, tiled and blended exactly as the edge runtime does it."""
from __future__ import annotations

import numpy as np
import torch

from edge.package import Preprocess
from edge.tiling import sliding_window_inference


def _ceil_to(n: int, d: int) -> int:
    return -(-n // d) * d


@torch.no_grad()
def predict_prob(model: torch.nn.Module, image_rgb: np.ndarray, tile: tuple[int, int] | None = None,
                 overlap: int | None = None, blend: str = "gaussian") -> np.ndarray:
    """Vessel probability (H, W) float32 of an RGB uint8 image: sigmoid of the logits, per tile, blended.

    Tiles default to the spec's (shrunk to the image when it is smaller, rounded up to the divisor) and
    its overlap; the model is put in eval mode.
    """
    spec = model.spec
    model.eval()
    h, w = image_rgb.shape[:2]
    d = spec.divisor
    th, tw = tile or spec.default_tile
    th, tw = min(th, _ceil_to(h, d)), min(tw, _ceil_to(w, d))
    ov = spec.overlap if overlap is None else overlap
    ov = min(ov, min(th, tw) - 1)

    def run(x: np.ndarray) -> np.ndarray:
        out = model(torch.from_numpy(np.ascontiguousarray(x)))
        if isinstance(out, (list, tuple)):
            out = out[-1]
        return torch.sigmoid(out).numpy()

    x = Preprocess.from_spec(spec).image(image_rgb)[0]  # the runtime's scaling (edge.segment), of the spec
    return sliding_window_inference(x, run, (th, tw), ov, d, blend)[0]
