"""Tiled vs whole-image M2U-Net on a real fundus photo: max |prob diff| and Dice as a function of tile overlap.

Measures where the runtime's stitched result stops differing from one whole-image pass, so the spec's default
overlap (models/m2unet.py) is a measurement. Both sides run the same PyTorch model, so only tiling differs.

    .venv/bin/python -m benchmarks.overlap [--weights M2UNetHRF.pth] [--overlaps 0,16,32,64,96,128]
"""
from __future__ import annotations

import argparse
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
HRF_WEIGHTS = ROOT.parent / "shared" / "models" / "m2unet" / "M2UNetHRF.pth"
HRF_SIZE = (2336, 3504)


@dataclass
class OverlapRow:
    overlap_px: int
    min_overlap_px: int
    blend: str
    tiles: int
    max_abs_diff: float
    max_abs_diff_fov: float
    mean_abs_diff_fov: float
    dice: float
    dice_fov: float
    mask_pixels_differing: int
    tiled_s: float


def fundus_image(size: tuple[int, int] = HRF_SIZE, path: str | Path | None = None) -> np.ndarray:
    """RGB uint8 at ``size`` (H, W): ``path``, or scikit-image's real fundus photo (CC0) resized (bicubic)."""
    import cv2

    if path is not None:
        from edge.imageio import read_image

        img = read_image(path)
    else:
        from skimage import data

        img = data.retina()[..., :3]
    if img.shape[:2] != tuple(size):
        img = cv2.resize(img, (size[1], size[0]), interpolation=cv2.INTER_CUBIC)
    return np.ascontiguousarray(img)


def load_m2unet(weights: str | Path):
    from models import create_model

    return create_model("m2unet", weights=weights)


def torch_probs(model, image_rgb: np.ndarray) -> np.ndarray:
    """Whole-image probabilities (H, W) float32; the sides must be multiples of 16."""
    import torch

    from edge.package import Preprocess

    x = torch.from_numpy(Preprocess.from_spec(model.spec).image(image_rgb))
    with torch.inference_mode():
        return torch.sigmoid(model(x))[0, 0].numpy()


def torch_tile_predictor(model):
    """(1, 3, th, tw) uint8 tile -> (1, 1, th, tw) probabilities, as edge.segment does (blend probabilities)."""
    import torch

    from edge.package import Preprocess

    prep = Preprocess.from_spec(model.spec)

    def predict(tile: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            x = torch.from_numpy(prep(tile))
            return torch.sigmoid(model(x)).numpy()

    return predict


def min_overlap(size: tuple[int, int], tile: tuple[int, int], overlap: int, divisor: int = 16) -> int:
    """The smallest overlap between neighbouring tiles the runtime actually uses (tiles are spread evenly)."""
    from edge.tiling import padded_size, tile_starts

    overlaps = []
    for n, t in zip(size, tile):  # per axis: the tile side minus the largest step between tile origins
        starts = tile_starts(padded_size(n, t, divisor), t, overlap, divisor)
        overlaps += [t - (b - a) for a, b in zip(starts, starts[1:])]
    return min(overlaps) if overlaps else min(tile)


def measure(weights: str | Path, image: np.ndarray, overlaps: list[int], blends: list[str],
            tile: tuple[int, int] = (544, 544), threads: int | None = None) -> tuple[list[OverlapRow], float]:
    """Rows per (overlap, blend) and the whole-image inference time in seconds."""
    import torch

    from edge.fov import estimate_fov
    from edge.metrics import dice
    from edge.tiling import count_tiles, sliding_window_inference

    if threads:
        torch.set_num_threads(threads)
    model = load_m2unet(weights)
    t0 = time.perf_counter()
    ref = torch_probs(model, image)
    whole_s = time.perf_counter() - t0
    fov = estimate_fov(image)
    ref_mask = ref > 0.5
    predict = torch_tile_predictor(model)
    chw = image.transpose(2, 0, 1)
    rows = []
    for overlap in overlaps:
        cache: list[np.ndarray] = []

        def record(t: np.ndarray) -> np.ndarray:
            cache.append(predict(t))
            return cache[-1]

        t0 = time.perf_counter()
        first = sliding_window_inference(chw, record, tile, overlap, 16, blends[0])[0]
        tiled_s = time.perf_counter() - t0
        for blend in blends:
            if blend == blends[0]:
                prob = first
            else:  # same tiles, other weights: replay the predictions instead of recomputing them
                replay = iter(cache)
                prob = sliding_window_inference(chw, lambda t: next(replay), tile, overlap, 16, blend)[0]
            diff = np.abs(prob - ref)
            mask = prob > 0.5
            rows.append(OverlapRow(
                overlap_px=overlap, min_overlap_px=min_overlap(image.shape[:2], tile, overlap), blend=blend,
                tiles=count_tiles(*image.shape[:2], tile, overlap, 16),
                max_abs_diff=float(diff.max()), max_abs_diff_fov=float(diff[fov].max()),
                mean_abs_diff_fov=float(diff[fov].mean()), dice=dice(mask, ref_mask),
                dice_fov=dice(mask[fov], ref_mask[fov]), mask_pixels_differing=int((mask != ref_mask).sum()),
                tiled_s=tiled_s))
    return rows, whole_s


def format_table(rows: list[OverlapRow]) -> str:
    head = ("| overlap px | min overlap used px | blend | tiles | max abs diff | max abs diff (FOV) | "
            "mean abs diff (FOV) | Dice | Dice (FOV) | mask px differing |")
    lines = [head, "|" + "---|" * 10]
    for r in rows:
        lines.append(f"| {r.overlap_px} | {r.min_overlap_px} | {r.blend} | {r.tiles} | {r.max_abs_diff:.4f} | "
                     f"{r.max_abs_diff_fov:.4f} | {r.mean_abs_diff_fov:.2e} | {r.dice:.5f} | {r.dice_fov:.5f} | "
                     f"{r.mask_pixels_differing} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.overlap", description=__doc__.splitlines()[0])
    p.add_argument("--weights", default=str(HRF_WEIGHTS), help="M2U-Net checkpoint (default: the HRF one)")
    p.add_argument("--image", default=None, help="fundus photo (default: scikit-image's retina, resized)")
    p.add_argument("--size", default="2336x3504", help="HxW the image is resized to (default: HRF's 2336x3504)")
    p.add_argument("--tile", default="544", help="tile S or HxW (default: 544), e.g. edge-export --image-size's plan")
    p.add_argument("--overlaps", default="0,16,32,64,96,128")
    p.add_argument("--blends", default="gaussian,linear,constant")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--json", default=None, help="also write the rows as JSON")
    p.add_argument("-v", "--verbose", action="store_true", help="tracebacks on errors")
    a = p.parse_args(argv)
    from edge.errors import run_cli

    return run_cli(lambda: _run(a), a.verbose)


def _run(a: argparse.Namespace) -> int:
    from edge.errors import InputError, parse_size

    if not Path(a.weights).is_file():
        raise InputError(f"no checkpoint at {a.weights}; pass --weights")

    size = parse_size(a.size, "--size")
    tile = parse_size(a.tile, "--tile")
    image = fundus_image(size, a.image)
    rows, whole_s = measure(a.weights, image, [int(v) for v in a.overlaps.split(",")], a.blends.split(","),
                            tile, a.threads)
    print(f"m2unet {Path(a.weights).name}, image {size[0]}x{size[1]}, tiles {tile[0]}x{tile[1]}, "
          f"whole-image PyTorch pass {whole_s:.1f} s")
    print(format_table(rows))
    if a.json:
        from edge.imageio import write_atomic

        write_atomic(a.json, json.dumps({"whole_s": whole_s, "rows": [asdict(r) for r in rows]}, indent=2).encode())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
