"""`edge-export --quantize int8`: ONNX Runtime post-training int8 (QDQ) of a package's verified ONNX, kept honest.

Calibration and the gate both go through the runtime's own :func:`edge.segment.segment` (its public API, the
same tiling, resampling and blending a photograph gets on the device), so the int8 model is calibrated on the
tiles it will really see and judged on whole photographs:

1. Calibrate once (ONNX Runtime's ``quantize_static``, MinMax, per-channel int8 weights, uint8 activations)
   on the tiles of the calibration photographs, cached so every later variant reuses the same ranges.
2. Mixed precision: while the calibration tiles' vessel mask (int8 vs fp32, Dice) loses more than the limit,
   keep in fp32 the block (the first component of the ONNX node names, e.g. ``/decode1``: one module of the
   network) whose reversal recovers most, greedily.
3. Gate: Dice of the int8 mask vs the fp32 mask inside the FOV on held-out photographs (never used for 1. or
   2.). Beyond the limit the export is refused; nothing is written.

Photographs: the user's (``--calibration-images``: every third one sorted by name is held out) or the
package's synthetic set (disjoint seeds and sizes for the held-out part). The int8 model runs on ONNX Runtime
only: TVM 0.27 has no int8 kernels for these graphs, so the package has no compiled library.
"""
from __future__ import annotations

import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edge.errors import EdgeError
from edge.package import Package

# synthetic photographs (seed, (H, W)): calibration and held-out seeds disjoint, sizes partly disjoint
SYNTHETIC_CALIBRATION = [(100, (584, 565)), (101, (960, 999)), (102, (1400, 1500)), (103, (700, 760))]
SYNTHETIC_HELD_OUT = [(900, (584, 565)), (901, (960, 999)), (902, (1200, 1300)), (903, (605, 700))]
DEFAULT_MAX_DICE_LOSS = 0.005
MAX_CALIBRATION_TILES = 24  # ONNX Runtime's calibrator keeps every intermediate output of every tile in memory
SELECTION_TILES = 12  # tiles the mixed-precision search scores each variant on
QUANTIZED_OPS = ("Conv", "Add", "Concat", "Resize", "MaxPool", "AveragePool", "Mul", "MatMul", "Gemm",
                 "ConvTranspose")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp", ".ppm", ".gif")


@dataclass(frozen=True)
class Photo:
    name: str
    image: np.ndarray  # RGB uint8 (H, W, 3)


def ort_session(path: str | Path, threads: int) -> Callable[[np.ndarray], np.ndarray]:
    """``x -> logits`` on ONNX Runtime's CPU provider with ``threads`` intra-op threads."""
    import onnxruntime as ort

    o = ort.SessionOptions()
    o.intra_op_num_threads = threads
    o.inter_op_num_threads = 1
    o.log_severity_level = 3
    s = ort.InferenceSession(str(path), o, providers=["CPUExecutionProvider"])
    name = s.get_inputs()[0].name
    return lambda x: s.run(None, {name: np.ascontiguousarray(x, np.float32)})[0]


def dice(a: np.ndarray, b: np.ndarray, where: np.ndarray | None = None) -> float:
    """Dice of two boolean masks (inside ``where``); 1.0 when both are empty."""
    if where is not None:
        a, b = a[where], b[where]
    total = int(a.sum()) + int(b.sum())
    return 1.0 if total == 0 else float(2 * int((a & b).sum()) / total)


def synthetic_photos(spec: Sequence[tuple[int, tuple[int, int]]]) -> list[Photo]:
    from models.train.synthetic import synthetic_fundus

    return [Photo(f"synthetic seed {s} {h}x{w}", synthetic_fundus(h, w, seed=s).image) for s, (h, w) in spec]


def user_photos(folder: str | Path) -> tuple[list[Photo], list[Photo]]:
    """``--calibration-images DIR``: its photographs sorted by name, every third held out (at least three)."""
    from edge.imageio import read_image

    d = Path(folder)
    if not d.is_dir():
        raise EdgeError(f"--calibration-images {folder}: not a folder; pass a folder of fundus photographs")
    files = sorted(p for p in d.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if len(files) < 3:
        raise EdgeError(f"--calibration-images {folder} holds {len(files)} photograph(s); it needs at least 3 "
                        "(every third is held out to check the int8 model), or leave it out for the synthetic set")
    photos = [Photo(p.name, read_image(p)) for p in files]
    return [p for i, p in enumerate(photos) if i % 3 != 2], [p for i, p in enumerate(photos) if i % 3 == 2]


def calibration_reader(tiles: list[np.ndarray], input_name: str):
    """ONNX Runtime's calibration feed over recorded tiles (a fresh one per quantize_static call)."""
    from onnxruntime.quantization import CalibrationDataReader

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._it = iter(tiles)

        def get_next(self):
            x = next(self._it, None)
            return None if x is None else {input_name: x}

    return Reader()


def blocks_of(model) -> dict[str, list[str]]:
    """The quantizable nodes grouped by block: the first component of a ``/module/...`` node name (PyTorch's
    exporter names nodes by module path), else the node's own name."""
    out: dict[str, list[str]] = {}
    for n in model.graph.node:
        if n.op_type in QUANTIZED_OPS:
            parts = n.name.split("/")
            key = f"/{parts[1]}" if n.name.startswith("/") and len(parts) > 2 else n.name
            out.setdefault(key, []).append(n.name)
    return out


@dataclass
class Quantized:
    meta: dict  # meta.json's "quantization" section
    path: Path  # the int8 ONNX


def quantize_int8(pkg: Package, out: Path, calibration: list[Photo], held_out: list[Photo],
                  max_dice_loss: float = DEFAULT_MAX_DICE_LOSS, threads: int = 2,
                  log: Callable[[str], None] = lambda m: print(m, file=sys.stderr)) -> Quantized:
    """Quantize ``pkg``'s ONNX into ``out`` (see the module docstring); raise :class:`EdgeError` past the gate."""
    import onnx
    import onnxruntime
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from edge.segment import segment, sigmoid

    if not 0 <= max_dice_loss < 1:
        raise EdgeError(f"--int8-max-dice-loss {max_dice_loss:g} must be in [0, 1), e.g. 0.005")
    fp32 = ort_session(pkg.onnx, threads)
    tiles: list[np.ndarray] = []

    def record(x: np.ndarray) -> np.ndarray:
        tiles.append(np.array(x, np.float32))
        return fp32(x)

    for p in calibration:
        segment(p.image, pkg, record)
    pick = np.linspace(0, len(tiles) - 1, min(MAX_CALIBRATION_TILES, len(tiles))).round().astype(int)
    tiles = [tiles[i] for i in sorted(set(pick))]
    scored = tiles[:: max(1, len(tiles) // SELECTION_TILES)][:SELECTION_TILES]
    threshold = pkg.info.tiling.threshold
    ref_masks = [sigmoid(fp32(t)) > threshold for t in scored]
    references = [(p, segment(p.image, pkg, fp32)) for p in held_out]
    log(f"int8: calibrating on {len(tiles)} tiles of {len(calibration)} photographs, {len(held_out)} held out")

    with tempfile.TemporaryDirectory(prefix="edge-int8-") as tmpd:
        tmp = Path(tmpd)
        pre, cache = tmp / "pre.onnx", tmp / "calibration.json"
        quant_pre_process(str(pkg.onnx), str(pre), skip_symbolic_shape=True)
        blocks = blocks_of(onnx.load(str(pre)))

        def variant(fp32_blocks: list[str], path: Path) -> Callable[[np.ndarray], np.ndarray]:
            quantize_static(str(pre), str(path), calibration_reader(tiles, pkg.info.input.name),
                            quant_format=QuantFormat.QDQ, per_channel=True,
                            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                            calibrate_method=CalibrationMethod.MinMax, calibration_cache_path=str(cache),
                            nodes_to_exclude=[n for b in fp32_blocks for n in blocks[b]])
            return ort_session(path, threads)

        def tile_dice(run) -> float:
            got = np.concatenate([(sigmoid(run(t)) > threshold).ravel() for t in scored])
            return dice(got, np.concatenate([m.ravel() for m in ref_masks]))

        kept: list[str] = []
        score = tile_dice(variant(kept, tmp / "try.onnx"))
        log(f"int8: all {len(blocks)} blocks int8: calibration Dice vs fp32 {score:.4f}")
        while 1 - score > max_dice_loss and len(kept) < len(blocks) - 1:
            trials = {b: tile_dice(variant(kept + [b], tmp / "try.onnx")) for b in blocks if b not in kept}
            best = max(trials, key=trials.__getitem__)
            kept.append(best)
            score = trials[best]
            log(f"int8: {best} kept in fp32: calibration Dice vs fp32 {score:.4f}")
        int8 = variant(kept, out)
        scores, max_dp, worst = [], 0.0, ""
        for p, ref in references:
            r = segment(p.image, pkg, int8)
            scores.append(dice(r.mask, ref.mask, ref.fov))
            if scores[-1] == min(scores):
                worst = p.name
            max_dp = max(max_dp, float(np.abs(r.prob - ref.prob).max()))
    loss = 1 - min(scores)
    int8_blocks = [b for b in blocks if b not in kept]
    log(f"int8: held-out Dice vs fp32 worst {min(scores):.4f} ({worst}), mean {np.mean(scores):.4f}, "
        f"max|dp| {max_dp:.3f}; {len(int8_blocks)} of {len(blocks)} blocks int8")
    if loss > max_dice_loss or not int8_blocks:
        out.unlink(missing_ok=True)
        why = ("no block can be int8 within the limit" if not int8_blocks else
               f"the int8 model loses {loss:.4f} Dice vs fp32 on held-out {worst}, above --int8-max-dice-loss "
               f"{max_dice_loss:g}, with {', '.join(kept) or 'no block'} kept in fp32")
        raise EdgeError(f"{why}; export fp32 (leave out --quantize), calibrate on your own photographs "
                        "(--calibration-images DIR) or raise --int8-max-dice-loss")
    macs = _int8_mac_fraction(pkg.onnx, {n for b in int8_blocks for n in blocks[b]})
    return Quantized({
        "dtype": "int8", "format": "QDQ", "runtime": "onnxruntime",
        "tool": f"onnxruntime.quantization.quantize_static (onnxruntime {onnxruntime.__version__})",
        "weights": "int8, per output channel, symmetric", "activations": "uint8, per tensor, asymmetric",
        "calibration": {"method": "minmax", "photographs": [p.name for p in calibration], "tiles": len(tiles)},
        "fp32_blocks": kept, "int8_blocks": int8_blocks, "int8_mac_fraction": macs,
        "held_out": {"photographs": [p.name for p in held_out], "dice_min": min(scores),
                     "dice_mean": float(np.mean(scores)), "worst": worst, "max_abs_dp": max_dp,
                     "max_dice_loss": max_dice_loss, "calibration_tile_dice": score},
    }, out)


def _int8_mac_fraction(fp32_onnx: Path, int8_nodes: set[str]) -> float:
    """The share of the model's MACs (convolutions, matrix products) that run in int8."""
    import onnx

    from export.complexity import macs_by_node

    per = macs_by_node(onnx.load(str(fp32_onnx)))
    total = sum(per.values())
    return 0.0 if total == 0 else round(sum(v for k, v in per.items() if k in int8_nodes) / total, 4)
