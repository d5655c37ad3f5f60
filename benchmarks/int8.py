"""`python -m benchmarks.int8 PKG`: how far ONNX Runtime's post-training int8 (QDQ) moves a package's vessel masks.

A study, not an export path (#16 part 4 is not done): it calibrates the package's ``model.onnx`` with ONNX
Runtime's ``quantize_static`` on tiles recorded from the runtime's own tiling of synthetic photographs, then runs
fp32 and each int8 variant through :func:`edge.segment.segment` on held-out synthetic photographs (other seeds
and sizes) and reports, per variant, the Dice of the int8 mask against the fp32 mask inside the FOV (worst and
mean image), the largest probability difference, and the int8/fp32 time per tile measured in the same run.

The gate the issue sets is ``1 - Dice <= 0.005`` on the worst held-out image; the report says whether each
variant meets it. Nothing here is written into a package.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

# calibration and held-out photographs: disjoint seeds, partly disjoint sizes (H, W)
CALIBRATION = [(100, (584, 565)), (101, (960, 999)), (102, (1400, 1500)), (103, (700, 760))]
HELD_OUT = [(900, (584, 565)), (901, (960, 999)), (902, (1200, 1300)), (903, (605, 700))]
METHODS = ("minmax", "percentile")
GATE = 0.005


@dataclass
class Variant:
    name: str
    calibration_tiles: int
    dice_min: float
    dice_mean: float
    max_abs_dp: float
    ms_per_tile_int8: float
    ms_per_tile_fp32: float
    meets_gate: bool


def _session(path: Path, threads: int):
    import onnxruntime as ort

    o = ort.SessionOptions()
    o.intra_op_num_threads = threads
    o.inter_op_num_threads = 1
    o.log_severity_level = 3
    s = ort.InferenceSession(str(path), o, providers=["CPUExecutionProvider"])
    name = s.get_inputs()[0].name
    return lambda x: s.run(None, {name: np.ascontiguousarray(x, np.float32)})[0]


def _dice(a: np.ndarray, b: np.ndarray, fov: np.ndarray) -> float:
    a, b = a[fov], b[fov]
    return float(2 * (a & b).sum() / max(1, int(a.sum()) + int(b.sum())))


def study(package: str | Path, methods=METHODS, percentile: float = 99.99, max_tiles: int = 24,
          calibration=CALIBRATION, held_out=HELD_OUT, threads: int = 2, log=print) -> list[Variant]:
    """Quantize ``package``'s ONNX with each method and measure it against fp32 (see the module docstring)."""
    from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType,
                                          quantize_static)
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from edge.package import load_package
    from edge.segment import segment
    from models.train.synthetic import synthetic_fundus

    pkg = load_package(package)
    fp32 = _session(pkg.onnx, threads)
    tiles: list[np.ndarray] = []

    def record(x: np.ndarray) -> np.ndarray:
        tiles.append(np.array(x, np.float32))
        return fp32(x)

    for seed, (h, w) in calibration:
        segment(synthetic_fundus(h, w, seed=seed).image, pkg, record)
    # evenly spaced subset: ONNX Runtime's histogram calibration keeps every intermediate output in memory
    tiles = [tiles[i] for i in np.linspace(0, len(tiles) - 1, min(max_tiles, len(tiles))).round().astype(int)]
    log(f"calibration: {len(tiles)} tiles from {len(calibration)} synthetic photographs")
    images = []
    for seed, (h, w) in held_out:
        img = synthetic_fundus(h, w, seed=seed).image
        images.append((img, segment(img, pkg, fp32)))

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._it = iter(tiles)

        def get_next(self):
            x = next(self._it, None)
            return None if x is None else {pkg.info.input.name: x}

    def per_tile_ms(run) -> float:
        x = tiles[0]
        run(x)
        t0 = time.perf_counter()
        for _ in range(5):
            run(x)
        return (time.perf_counter() - t0) / 5 * 1e3

    out = []
    with tempfile.TemporaryDirectory(prefix="int8-study-") as tmpd:
        tmp = Path(tmpd)
        quant_pre_process(str(pkg.onnx), str(tmp / "pre.onnx"), skip_symbolic_shape=True)
        for method in methods:
            calib = {"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile}[method]
            extra = {"CalibPercentile": percentile} if method == "percentile" else {}
            q = tmp / f"{method}.onnx"
            quantize_static(str(tmp / "pre.onnx"), str(q), Reader(), quant_format=QuantFormat.QDQ,
                            per_channel=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                            calibrate_method=calib, extra_options=extra)
            int8 = _session(q, threads)
            dice, dp = [], 0.0
            for img, ref in images:
                r = segment(img, pkg, int8)
                dice.append(_dice(r.mask, ref.mask, ref.fov))
                dp = max(dp, float(np.abs(r.prob - ref.prob).max()))
            t_fp, t_q = per_tile_ms(fp32), per_tile_ms(int8)  # interleaved pairs, same run
            t_fp, t_q = min(t_fp, per_tile_ms(fp32)), min(t_q, per_tile_ms(int8))
            label = f"{method} {percentile:g}" if method == "percentile" else method
            v = Variant(label, len(tiles), min(dice), float(np.mean(dice)), dp, t_q, t_fp, 1 - min(dice) <= GATE)
            log(f"{label:<16} Dice vs fp32 worst {v.dice_min:.4f} mean {v.dice_mean:.4f}  max|dp| {dp:.3f}  "
                f"int8/fp32 time {t_q / t_fp:.2f}x  gate 1-Dice<={GATE}: {'met' if v.meets_gate else 'NOT met'}")
            out.append(v)
    return out


def main(argv: list[str] | None = None) -> int:
    from edge.errors import run_cli

    ap = argparse.ArgumentParser(prog="python -m benchmarks.int8", description=__doc__.splitlines()[0])
    ap.add_argument("package", help="an fp32 package (edge-export output)")
    ap.add_argument("--methods", default=",".join(METHODS), help=f"calibration methods ({', '.join(METHODS)})")
    ap.add_argument("--percentile", type=float, default=99.99)
    ap.add_argument("--max-tiles", type=int, default=24, help="calibration tiles (memory grows with them)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", help="write the variants here")
    ap.add_argument("-v", "--verbose", action="store_true")
    args = ap.parse_args(argv)

    def body() -> int:
        from edge.errors import EdgeError

        methods = [m.strip() for m in args.methods.split(",") if m.strip()]
        bad = [m for m in methods if m not in METHODS]
        if bad or not methods:
            raise EdgeError(f"unknown calibration method {', '.join(bad) or '(none)'}; choices: {', '.join(METHODS)}")
        if args.max_tiles < 1:
            raise EdgeError(f"--max-tiles {args.max_tiles} must be at least 1")
        variants = study(args.package, methods, args.percentile, args.max_tiles, threads=args.threads)
        if args.json:
            from benchmarks.jsonio import write_json_atomic

            write_json_atomic(args.json, [asdict(v) for v in variants])
        return 0

    return run_cli(body, args.verbose)


if __name__ == "__main__":
    sys.exit(main())
