"""`python -m benchmarks.int8 PKG [--int8 INT8PKG]`: what ONNX Runtime's post-training int8 (QDQ) costs and buys.

With ``--int8`` (a package from ``edge-export --quantize int8``): the time per tile of the int8 package on ONNX
Runtime beside the fp32 package on ONNX Runtime and on TVM, interleaved in one run, and the int8 package's gate
as its meta.json records it.

Without it, the calibration study behind the export's choices: it calibrates the package's ``model.onnx`` with ONNX
Runtime's ``quantize_static`` on tiles recorded from the runtime's own tiling of synthetic photographs, then runs
fp32 and each int8 variant through :func:`edge.segment.segment` on held-out synthetic photographs (other seeds
and sizes) and reports, per variant, the Dice of the int8 mask against the fp32 mask inside the FOV (worst and
mean image), the largest probability difference, and the int8/fp32 time per tile measured in the same run.

The gate the issue sets is ``1 - Dice <= 0.005`` on the worst held-out image; the report says whether each
variant meets it. All-int8 meets it for none (hence the export's mixed precision). Nothing is written into a
package.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from export.quantize import DEFAULT_MAX_DICE_LOSS as GATE
from export.quantize import SYNTHETIC_CALIBRATION as CALIBRATION
from export.quantize import SYNTHETIC_HELD_OUT as HELD_OUT
from export.quantize import calibration_reader
from export.quantize import dice as mask_dice
from export.quantize import ort_session as _session

METHODS = ("minmax", "percentile")


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


def study(package: str | Path, methods=METHODS, percentile: float = 99.99, max_tiles: int = 24,
          calibration=CALIBRATION, held_out=HELD_OUT, threads: int = 2, log=print) -> list[Variant]:
    """Quantize ``package``'s ONNX with each method and measure it against fp32 (see the module docstring)."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
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
            quantize_static(str(tmp / "pre.onnx"), str(q), calibration_reader(tiles, pkg.info.input.name),
                            quant_format=QuantFormat.QDQ,
                            per_channel=True, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                            calibrate_method=calib, extra_options=extra)
            int8 = _session(q, threads)
            dice, dp = [], 0.0
            for img, ref in images:
                r = segment(img, pkg, int8)
                dice.append(mask_dice(r.mask, ref.mask, ref.fov))
                dp = max(dp, float(np.abs(r.prob - ref.prob).max()))
            t_fp, t_q = per_tile_ms(fp32), per_tile_ms(int8)  # interleaved pairs, same run
            t_fp, t_q = min(t_fp, per_tile_ms(fp32)), min(t_q, per_tile_ms(int8))
            label = f"{method} {percentile:g}" if method == "percentile" else method
            v = Variant(label, len(tiles), min(dice), float(np.mean(dice)), dp, t_q, t_fp, 1 - min(dice) <= GATE)
            log(f"{label:<16} Dice vs fp32 worst {v.dice_min:.4f} mean {v.dice_mean:.4f}  max|dp| {dp:.3f}  "
                f"int8/fp32 time {t_q / t_fp:.2f}x  gate 1-Dice<={GATE}: {'met' if v.meets_gate else 'NOT met'}")
            out.append(v)
    return out


@dataclass
class Speed:
    engine: str
    ms_per_tile: float  # the best of ``rounds`` medians of ``runs`` calls, engines interleaved round by round
    speedup_vs_ort_fp32: float


def speed(fp32_package: str | Path, int8_package: str | Path, threads: int = 2, rounds: int = 5, runs: int = 5,
          log=print) -> list[Speed]:
    """Time per tile of the int8 package (ONNX Runtime) beside the fp32 package on ONNX Runtime and, where its
    library runs here, on TVM: same random tile, same threads, warm-up, engines interleaved."""
    from edge.backends import create_backend
    from edge.errors import EdgeError
    from edge.package import load_package

    fp32, int8 = load_package(fp32_package), load_package(int8_package)
    q = int8.meta.get("quantization")
    if not q:
        raise EdgeError(f"{int8_package} has no 'quantization' section in meta.json; pass a package from "
                        "edge-export --quantize int8")
    if fp32.meta.get("quantization") or tuple(fp32.input_shape) != tuple(int8.input_shape):
        raise EdgeError(f"{fp32_package} must be the fp32 package of the same model and tile "
                        f"({'x'.join(map(str, int8.input_shape))})")
    engines = {"onnxruntime fp32": _session(fp32.onnx, threads), "onnxruntime int8": _session(int8.onnx, threads)}
    ok, why = fp32.tvm_runnable_here()
    if ok:
        engines["tvm fp32"] = create_backend(fp32, "tvm", threads).backend
    else:
        log(f"note: tvm fp32 not timed: {why}")
    x = np.random.default_rng(0).random(fp32.input_shape, dtype=np.float32)
    best = {k: float("inf") for k in engines}
    for k, f in engines.items():
        f(x)
    for _ in range(rounds):
        for k, f in engines.items():
            t = []
            for _ in range(runs):
                t0 = time.perf_counter()
                f(x)
                t.append(time.perf_counter() - t0)
            best[k] = min(best[k], float(np.median(t)) * 1e3)
    out = [Speed(k, v, best["onnxruntime fp32"] / v) for k, v in best.items()]
    h = q["held_out"]
    log(f"int8 package: {len(q['int8_blocks'])} blocks int8 ({q['int8_mac_fraction']:.0%} of MACs), fp32: "
        f"{', '.join(q['fp32_blocks']) or 'none'}; held-out Dice vs fp32 worst {h['dice_min']:.4f}")
    for r in out:
        log(f"{r.engine:<18} {r.ms_per_tile:8.2f} ms/tile  {r.speedup_vs_ort_fp32:5.2f}x onnxruntime fp32")
    return out


def main(argv: list[str] | None = None) -> int:
    from edge.errors import run_cli

    ap = argparse.ArgumentParser(prog="python -m benchmarks.int8", description=__doc__.splitlines()[0])
    ap.add_argument("package", help="an fp32 package (edge-export output)")
    ap.add_argument("--int8", metavar="PKG", help="an int8 package of the same model and tile (edge-export "
                                                  "--quantize int8): time it beside the fp32 package instead")
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
        if args.int8:
            rows = [asdict(r) for r in speed(args.package, args.int8, threads=args.threads)]
        else:
            rows = [asdict(v) for v in study(args.package, methods, args.percentile, args.max_tiles,
                                             threads=args.threads)]
        if args.json:
            from benchmarks.jsonio import write_json_atomic

            write_json_atomic(args.json, rows)
        return 0

    return run_cli(body, args.verbose)


if __name__ == "__main__":
    sys.exit(main())
