"""M2U-Net at 544x544 (DRIVE) on this machine: PyTorch, ONNX Runtime and TVM timed round-robin in one process
with the same threads, the p50 ratios printed (``TVM / ONNX Runtime = 0.85x``), the full report written.

    .venv/bin/python -m benchmarks.compare_m2unet [--weights M2UNetDRIVE.pth] [--runs 50] [--threads 2] [-o DIR]

Ratios from one interleaved run are what count on a shared machine: load that drifts during the run slows all
three backends alike. Memory comes from short isolated runs of each backend (own process each).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from edge.errors import run_cli

ROOT = Path(__file__).resolve().parents[1]
DRIVE_WEIGHTS = ROOT.parent / "shared" / "models" / "m2unet" / "M2UNetDRIVE.pth"
PAIRS = [("tvm", "onnxruntime"), ("tvm", "torch"), ("onnxruntime", "torch")]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks.compare_m2unet", description=__doc__.split("\n\n")[0])
    p.add_argument("--weights", default=str(DRIVE_WEIGHTS) if DRIVE_WEIGHTS.is_file() else None,
                   help=f"state dict (default: {DRIVE_WEIGHTS} when present, else random weights)")
    p.add_argument("--size", type=int, default=544, help="input side (default: 544, DRIVE as in the paper)")
    p.add_argument("--runs", type=int, default=50, help="interleaved rounds (default: 50)")
    p.add_argument("--seconds", type=float, default=120.0, help="stop after this many seconds (default: 120)")
    p.add_argument("--threads", type=int, default=None, help="threads of every backend (default: all cores)")
    p.add_argument("--cores", default=None, help="pin to these cores, e.g. 4,5")
    p.add_argument("--images", default="none", help="also time full images: drive,chase,hrf (default: none)")
    p.add_argument("-o", "--out", default="bench-out/compare-m2unet", help="report folder")
    p.add_argument("-v", "--verbose", action="store_true")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_cli(lambda: _compare(args), args.verbose)


def _compare(args: argparse.Namespace) -> int:
    from benchmarks.cli import format_summary
    from benchmarks.latency import CPU_BACKENDS, LABELS
    from benchmarks.report import document, fmt_ratio, ratios, write_report
    from benchmarks.suite import Plan, run_plan

    cores = None
    if args.cores:
        from edge.cli import parse_cores

        cores = parse_cores(args.cores)
    plan = Plan(models=["m2unet"], sizes=[(args.size, args.size)], backends=list(CPU_BACKENDS),
                images=[] if args.images.strip().lower() == "none" else args.images.split(","),
                runs=args.runs, seconds=args.seconds, threads=args.threads, cores=cores, weights=args.weights,
                interleave=True, outdir=args.out, label="compare_m2unet")
    run = run_plan(plan, verbose=args.verbose)
    doc = document([run])
    paths = write_report(doc, args.out)
    print(format_summary(doc, paths))
    print()
    tile = [c for c in run["cases"] if c["kind"] == "tile" and c["status"] == "ok"]
    threads = tile[0]["threads"] if tile else "?"
    print(f"M2U-Net {args.size}x{args.size}, {threads} threads, backends interleaved in one process "
          "(ratio of p50 latencies: below 1x the first is faster):")
    for num, den in PAIRS:
        for q in ratios(run, num, den):
            if q["case"].startswith("tile"):
                print(f"  {LABELS[num]} / {LABELS[den]} = {fmt_ratio(q['ratio'])}"
                      f"   ({q['numerator_p50_ms']:.1f} ms / {q['denominator_p50_ms']:.1f} ms, p50)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
