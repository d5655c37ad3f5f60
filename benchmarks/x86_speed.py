"""x86 wall time of one model on every engine, interleaved in one run: ONNX Runtime, PyTorch, TVM default, TVM.

``python -m benchmarks.x86_speed m2unet --weights W.pth --threads 2`` exports a package per size (TVM with the
hand-written kernels of :mod:`export.schedules`), builds the same graph with TVM's default lowering, and then
times single inferences round-robin (the engine order rotates every round), so machine noise hits every
engine alike. Reports medians, ratios against ONNX Runtime measured in the same run, executed GMAC/s, and
each engine's max |difference| of probabilities (:func:`export.onnx_stage.compare`) to ONNX Runtime and to
PyTorch. A whole-image row runs a large image through sliding-window tiling (:func:`edge.tiling.sliding_window_inference`) with each engine as the predictor.

An engine whose single inference exceeds ``--budget-s`` is timed fewer times (at least ``--min-samples``),
so TVM's unscheduled default lowering does not hold the run for an hour.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from edge.errors import EdgeError, look_up_option, parse_size, run_parsed

ENGINES = ("ort", "torch", "tvm-default", "tvm")


@dataclass
class Row:
    case: str  # "544x544", "960x960", "tiled 2336x3504 (544 tiles)"
    engine: str
    samples: int
    p50_ms: float
    p10_ms: float
    p90_ms: float
    gmacs_per_s: float
    ratio_vs_ort: float  # ORT p50 / this p50: > 1 means faster than ONNX Runtime
    max_abs_diff_vs_ort: float
    max_abs_diff_vs_torch: float | None
    notes: list[str] = field(default_factory=list)


def _threads_env(threads: int) -> None:
    os.environ["TVM_NUM_THREADS"] = str(threads)
    os.environ.setdefault("OMP_NUM_THREADS", str(threads))


def _engines(onnx_path: Path, lib_sched: Path, lib_default: Path | None, net, threads: int) -> dict:
    import onnxruntime as ort
    import torch
    import tvm
    from tvm.runtime.vm import VirtualMachine

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.log_severity_level = 3
    sess = ort.InferenceSession(str(onnx_path), so, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    out: dict = {"ort": lambda x: sess.run(None, {name: x})[0]}
    if net is not None:
        torch.set_num_threads(threads)

        def run_torch(x):
            with torch.inference_mode():
                return net(torch.from_numpy(x)).numpy()

        out["torch"] = run_torch
    tvm.get_global_func("runtime.config_threadpool")(1, threads)
    for key, lib in (("tvm-default", lib_default), ("tvm", lib_sched)):
        if lib is None:
            continue
        vm = VirtualMachine(tvm.runtime.load_module(str(lib)), tvm.cpu())
        f = vm["main"]
        out[key] = (lambda f_: (lambda x: f_(tvm.runtime.tensor(np.ascontiguousarray(x))).numpy()))(f)
    return out


def _interleave(runs: dict, call, rounds: int, budget_s: float, min_samples: int,
                gap_s: float = 0.02) -> dict[str, list[float]]:
    """Time ``call(engine)`` round-robin; slow engines drop out after ``min_samples`` once over budget.

    ``gap_s`` of idle time after every call lets the previous engine's pool threads stop spinning (ONNX
    Runtime, OpenMP and TVM all spin-wait a while after a parallel region) before the next one starts."""
    times: dict[str, list[float]] = {k: [] for k in runs}
    keys = list(runs)
    for r in range(rounds):
        order = keys[r % len(keys):] + keys[:r % len(keys)]
        for k in order:
            if len(times[k]) >= min_samples and np.median(times[k]) > budget_s:
                continue
            time.sleep(gap_s)
            t0 = time.perf_counter()
            call(k)
            times[k].append(time.perf_counter() - t0)
    return times


def _rows(case: str, times: dict, outs: dict, macs: float, notes: dict) -> list[Row]:
    from export.onnx_stage import compare

    med = {k: float(np.median(v)) for k, v in times.items()}
    rows = []
    for k, v in times.items():
        d_ort = compare(k, "ort", outs[k], outs["ort"]).max_abs_diff
        d_torch = compare(k, "torch", outs[k], outs["torch"]).max_abs_diff if "torch" in outs else None
        rows.append(Row(case, k, len(v), med[k] * 1e3, float(np.percentile(v, 10)) * 1e3,
                        float(np.percentile(v, 90)) * 1e3, macs / med[k] / 1e9, med["ort"] / med[k], d_ort, d_torch,
                        notes.get(k, [])))
    return rows


def fmt(rows: list[Row], threads: int) -> str:
    lines = [f"x86 wall time, {threads} threads, engines interleaved (ratio = ONNX Runtime p50 / engine p50; "
             "> 1 is faster than ONNX Runtime)",
             "| case | engine | samples | p50 ms | p10-p90 ms | GMAC/s | ratio vs ORT | max|dp| ORT | max|dp| torch |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        dt = "" if r.max_abs_diff_vs_torch is None else f"{r.max_abs_diff_vs_torch:.1e}"
        lines.append(f"| {r.case} | {r.engine} | {r.samples} | {r.p50_ms:.1f} | {r.p10_ms:.1f}-{r.p90_ms:.1f} | "
                     f"{r.gmacs_per_s:.1f} | {r.ratio_vs_ort:.2f}x | {r.max_abs_diff_vs_ort:.1e} | {dt} |")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.x86_speed", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", nargs="?", default="m2unet")
    ap.add_argument("--weights", help="checkpoint (default: shipped weights, else random)")
    ap.add_argument("--sizes", default="544,960", help="square input sides, comma separated (default 544,960)")
    ap.add_argument("--tiled", default="2336x3504", help="HxW of a whole image run through 544 tiles ('' skips)")
    ap.add_argument("--tile", type=int, default=544)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=30, help="interleaved rounds per case (default 30)")
    ap.add_argument("--tiled-rounds", type=int, default=5)
    ap.add_argument("--engines", default=",".join(ENGINES), help=f"subset of {','.join(ENGINES)}")
    ap.add_argument("--budget-s", type=float, default=0.5, help="engines slower than this per call stop early")
    ap.add_argument("--min-samples", type=int, default=3)
    ap.add_argument("--gap-ms", type=float, default=50.0, help="idle time between calls (pool threads stop spinning)")
    ap.add_argument("--work", help="folder for the packages (default: a temporary one)")
    ap.add_argument("--json", help="write the rows here")
    return ap


def main(argv: list[str] | None = None) -> int:
    return run_parsed(build_parser(), _run, argv)


def _run(a: argparse.Namespace) -> int:
    engines = [look_up_option(e.strip(), ENGINES, "engine") for e in a.engines.split(",") if e.strip()]
    sides = [parse_size(s.strip(), "--sizes") for s in a.sizes.split(",") if s.strip()]
    if any(h != w for h, w in sides):
        raise EdgeError(f"--sizes takes square sides such as 544,960, got '{a.sizes}'")
    sizes = [h for h, _ in sides]
    tiled = parse_size(a.tiled, "--tiled") if a.tiled else None
    _threads_env(a.threads)

    import torch

    from edge.tiling import count_tiles, sliding_window_inference
    from export.complexity import count
    from export.onnx_stage import load_onnx
    from export.pipeline import export_model
    from export.targets import get_target
    from export.tvm_stage import build_library
    from models import create_model, get_spec

    work = Path(a.work) if a.work else Path(tempfile.mkdtemp(prefix="x86-speed-"))
    net = create_model(a.model, weights=a.weights).eval() if "torch" in engines else None
    spec = get_spec(a.model)
    rows: list[Row] = []
    cases = [(s, (s, s)) for s in sizes] + ([(a.tile, None)] if tiled else [])
    built: dict[int, tuple] = {}
    for side, _ in cases:
        if side in built:
            continue
        pkg = work / f"{a.model}-{side}"
        print(f"[x86_speed] exporting {a.model} at {side}x{side} ...", file=sys.stderr, flush=True)
        r = export_model(a.model, "x86_64", weights=a.weights, input_size=(side, side), out=pkg, force=True,
                         log=lambda m: None)
        lib_default = None
        if "tvm-default" in engines:
            lib_default = pkg.parent / f"{pkg.name}-default.so"
            m = load_onnx(pkg / "model.onnx")
            build_library(m, r.meta["input"]["name"], r.meta["input"]["shape"], get_target("x86_64"), lib_default,
                          hand_kernels=False)
        macs = count(load_onnx(pkg / "model.onnx")).macs
        built[side] = (pkg, lib_default, macs, r.meta)
    for side, full in cases:
        pkg, lib_default, macs, meta = built[side]
        runs = _engines(pkg / "model.onnx", pkg / "model.so" if "tvm" in engines else None,
                        lib_default, net, a.threads)
        runs = {k: v for k, v in runs.items() if k in engines or k == "ort"}
        if full is not None:
            x = np.random.default_rng(0).random((1, spec.in_channels, *full), dtype=np.float32)
            outs = {k: f(x) for k, f in runs.items()}
            times = _interleave(runs, lambda k: runs[k](x), a.rounds, a.budget_s, a.min_samples, a.gap_ms / 1e3)
            rows += _rows(f"{side}x{side}", times, outs, macs, {})
        else:
            img = np.random.default_rng(1).random((spec.in_channels, *tiled), dtype=np.float32)
            overlap = int(meta["tiling"]["overlap"])
            n = count_tiles(*tiled, (side, side), overlap, spec.divisor)
            tile_run = {k: (lambda f_: (lambda: sliding_window_inference(img, f_, (side, side), overlap,
                                                                          spec.divisor)))(f) for k, f in runs.items()}
            outs = {k: f() for k, f in tile_run.items()}
            times = _interleave(tile_run, lambda k: tile_run[k](), a.tiled_rounds, a.budget_s * n, a.min_samples,
                                a.gap_ms / 1e3)
            note = [f"{n} tiles of {side}x{side}, overlap {overlap}; GMAC/s counts executed tile MACs"]
            rows += _rows(f"tiled {tiled[0]}x{tiled[1]} ({side} tiles)", times, outs, macs * n,
                          {k: note for k in runs})
        print(fmt([r_ for r_ in rows if r_.case.startswith(f"{side}x") or (full is None and "tiled" in r_.case)],
                  a.threads), file=sys.stderr, flush=True)
    print(fmt(rows, a.threads))
    if a.json:
        from edge.imageio import write_atomic

        write_atomic(a.json, json.dumps([asdict(r) for r in rows], indent=1).encode())
    return 0


if __name__ == "__main__":
    sys.exit(main())
