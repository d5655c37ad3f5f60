"""``edge-bench``: params, MACs, sizes, latency, memory and energy of models or packages, and merged reports;
a thin layer over :mod:`benchmarks.suite` and :mod:`benchmarks.report`."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from edge.errors import EdgeError, run_cli



def build_parser() -> argparse.ArgumentParser:
    from benchmarks.latency import BACKENDS, CPU_BACKENDS, IMAGES, OPTIONAL_BACKENDS
    from benchmarks.power import BOARD_PROFILES, METERS

    p = argparse.ArgumentParser(
        prog="edge-bench",
        description="Measure vessel-segmentation models on this machine: parameters, MACs and file sizes; "
                    "latency percentiles per network input (tile) and per full image (tiled like edge-run) with "
                    "PyTorch, ONNX Runtime, TVM and OpenVINO; GMAC/s; peak memory of each case in its own process; "
                    "energy with a power meter; optionally the estimated cost on an emulated Cortex-A72. Writes "
                    "results.json, CSV, Markdown and a self-contained HTML report.",
        epilog="Merge and re-render runs (e.g. a board and a GPU machine): edge-bench report results*.json -o DIR. "
               "Exit codes: 0 ok; 2 usage or other error; 3 package error; 4 input error; 130 interrupted.",
    )
    p.add_argument("models", nargs="*", metavar="MODEL_OR_PACKAGE",
                   help="registered model names (exported for this host as needed), package directories made by "
                        "edge-export, or ONNX files")
    p.add_argument("--sizes", default=None, metavar="LIST",
                   help="network input sizes, e.g. 544,960 or 544x768 (default: the model's tile)")
    p.add_argument("--backends", default=None, metavar="LIST",
                   help=f"from {', '.join(BACKENDS)} (default: {','.join(CPU_BACKENDS)}; "
                        f"{', '.join(OPTIONAL_BACKENDS)} only when installed)")
    sizes = ", ".join(f"{k} ({h}x{w})" for k, (h, w) in IMAGES.items())
    p.add_argument("--images", default=None, metavar="LIST",
                   help=f"full images to time, tiled like edge-run: {sizes}, HxW, or none (default: all three)")
    p.add_argument("--image-tile", default=None, metavar="SIZE",
                   help="tile used for full images; must be one of --sizes (default: the model's tile)")
    p.add_argument("--weights", default=None, metavar="PATH", help="state dict for the registered model(s)")
    p.add_argument("--runs", type=int, default=None, metavar="N", help="timed runs per case (default: 30)")
    p.add_argument("--seconds", type=float, default=None, metavar="T",
                   help="stop sampling a case after T seconds even before N runs (default: 10)")
    p.add_argument("--warmup", type=int, default=None, metavar="N", help="untimed runs per tile case (default: 3; "
                                                                          "full images: 1)")
    p.add_argument("--threads", type=int, default=None, metavar="N",
                   help="threads of every backend (default: the cores of the affinity set)")
    p.add_argument("--cores", default=None, metavar="LIST", help="pin the runs to these cores, e.g. 4,5 or 0-3")
    p.add_argument("--meter", default=None, metavar="NAME[:ARG]",
                   help=f"energy meter: {', '.join(METERS)}; nvml[:GPU], rapl[:POWERCAP_ROOT], hwmon[:DEVICE], "
                        f"csv:LOG (timestamp,watts), estimate[:{'|'.join(BOARD_PROFILES)}] (default: auto)")
    p.add_argument("--idle-seconds", type=float, default=None, metavar="S",
                   help="measure idle power for S seconds first and subtract it (default: 0, no subtraction)")
    p.add_argument("--interleave", action="store_true", default=None,
                   help="time the backends of one input round-robin in one process (fairest ratios on a busy "
                        "machine); memory then comes from short isolated runs")
    p.add_argument("--gpu-baselines", action="store_true", default=None,
                   help="also time PyTorch CUDA, ONNX Runtime CUDA and TVM cuda; without a GPU they are recorded "
                        "as unavailable")
    p.add_argument("--plan", default=None, metavar="PLAN.json", help="read these options from JSON (keys as the "
                                                                      "options, underscores); options given here win")
    p.add_argument("--dice", action="append", default=None, metavar="MODEL=DICE",
                   help="a model's Dice score for the Pareto plot (repeatable)")
    p.add_argument("--label", default=None, help="name of this run in merged reports (default: CPU and host name)")
    p.add_argument("-o", "--out", default=None, metavar="OUTDIR",
                   help="reports and exported packages go here (default: ./bench-out)")
    p.add_argument("--rpc-tracker", default=None, metavar="HOST:PORT",
                   help="also time TVM on a board through a TVM RPC tracker (benchmarks/remote.py): one tile case per "
                        "size, timed by the board, recorded as backend tvm-rpc")
    p.add_argument("--rpc-key", default=None, metavar="KEY", help="the board's RPC device key")
    p.add_argument("--rpc-target", default=None, metavar="TARGET",
                   help="edge-export target of the board (default: arm64)")
    p.add_argument("--rpc-timeout", type=float, default=None, metavar="S",
                   help="seconds the tracker may take to answer and hand out the board's server before the run is "
                        "refused (default: 60)")
    p.add_argument("--a72-proxy", action="store_true", default=None,
                   help="also count one inference of ONNX Runtime and TVM on an emulated Cortex-A72 (the arm64proxy "
                        "instrument, root, minutes per size): instructions, llvm-mca cycles and their ratios, "
                        "reported as estimated (emulated A72), never as board timings; exports arm64 packages")
    p.add_argument("--a72-cache", action="store_true", default=None,
                   help="with --a72-proxy: also simulate the L1D/L2 caches (several times slower)")
    p.add_argument("--a72-work", default=None, metavar="DIR",
                   help="the rig built by arm64proxy's setup.sh (default: $ARM64PROXY_WORK or /root/.cache/arm64proxy)")
    p.add_argument("--a72-peers", default=None, metavar="LIST",
                   help="with --a72-proxy: also count ncnn, MNN and LiteRT XNNPACK (ncnn,mnn,tflite or all), each "
                        "converted from the package's ONNX on this host (benchmarks.peers)")
    p.add_argument("-v", "--verbose", action="store_true", help="child process output; tracebacks on errors")
    return p


def build_report_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="edge-bench report",
                                description="Merge results.json files of edge-bench runs into one report "
                                            "(results.json, CSV, Markdown, HTML with plots).")
    p.add_argument("files", nargs="+", metavar="RESULTS.json")
    p.add_argument("-o", "--out", required=True, metavar="DIR")
    p.add_argument("-v", "--verbose", action="store_true", help="tracebacks on errors")
    return p


def plan_from_args(args: argparse.Namespace):
    from edge.cli import parse_cores
    from benchmarks.suite import Plan, load_plan, parse_size_list

    data = load_plan(args.plan) if args.plan else {}
    cli = {"models": args.models or None, "sizes": args.sizes, "backends": args.backends, "images": args.images,
           "image_tile": args.image_tile, "weights": args.weights, "runs": args.runs, "seconds": args.seconds,
           "warmup": args.warmup, "threads": args.threads, "cores": args.cores, "meter": args.meter,
           "idle_seconds": args.idle_seconds, "interleave": args.interleave, "gpu_baselines": args.gpu_baselines,
           "outdir": args.out, "rpc_tracker": args.rpc_tracker, "rpc_key": args.rpc_key,
           "rpc_target": args.rpc_target, "rpc_timeout": args.rpc_timeout, "label": args.label,
           "a72_proxy": args.a72_proxy,
           "a72_cache": args.a72_cache, "a72_work": args.a72_work, "a72_peers": args.a72_peers}
    data.update({k: v for k, v in cli.items() if v is not None})
    if args.dice:
        data["dice"] = {**data.get("dice", {}), **parse_dice(args.dice)}
    if not data.get("models"):
        raise EdgeError("name at least one model, package or ONNX file (e.g. edge-bench m2unet), or list them "
                        "under \"models\" in --plan")
    if isinstance(data["models"], str):
        data["models"] = [data["models"]]
    if data.get("sizes") is not None:
        data["sizes"] = parse_size_list(data["sizes"])
    if data.get("image_tile") is not None:
        data["image_tile"] = parse_size_list(str(data["image_tile"]))[0]
    for key in ("backends", "images"):
        if isinstance(data.get(key), str):
            data[key] = [] if data[key].strip().lower() == "none" else data[key].split(",")
    if isinstance(data.get("cores"), (str, int)):
        data["cores"] = parse_cores(str(data["cores"]))
    for key, kind in (("runs", int), ("warmup", int), ("threads", int), ("seconds", float), ("idle_seconds", float),
                      ("rpc_timeout", float)):
        if data.get(key) is not None:
            try:
                data[key] = kind(data[key])
            except (TypeError, ValueError):
                raise EdgeError(f"{key} must be a number, got {data[key]!r}") from None
    if data.get("threads") is not None and data["threads"] < 1:
        raise EdgeError("--threads must be at least 1")
    if data.get("weights") is not None:
        data["weights"] = str(data["weights"])
    return Plan(**data)


def parse_dice(items: list[str]) -> dict[str, float]:
    out = {}
    for it in items:
        name, _, val = it.partition("=")
        try:
            out[name.strip()] = float(val)
        except ValueError:
            raise EdgeError(f"--dice takes MODEL=VALUE, e.g. m2unet=0.8091; got '{it}'") from None
    return out


def format_summary(doc: dict, paths: dict[str, Path]) -> str:
    from benchmarks.report import a72_lines, case_label, full_image_overhead, gmac_per_s, parity_cell, ratio_rows

    lines = []
    for r in doc["runs"]:
        for c in r["complexity"]:
            lines.append(f"{c['model']} {'x'.join(map(str, c['input_shape']))}: params {c['params'] / 1e6:.3f} M, "
                         f"{c['gmacs']:.3f} GMACs (conv/gemm), weights "
                         f"{(c['weights_bytes'] or 0) / 1e6:.2f} MB, ONNX {(c['onnx_bytes'] or 0) / 1e6:.2f} MB, "
                         f"TVM library {(c['library_bytes'] or 0) / 1e6:.2f} MB")
        lines.append("")
        for c in r["cases"]:
            if c["status"] == "ok":
                lat, g, over = c["latency"], gmac_per_s(r, c), full_image_overhead(r, c)
                lines.append(f"{c['model']:<10} {case_label(c):<38} {c['backend_label']:<18} "
                             f"p50 {lat['p50_ms']:>9.1f} ms  p90 {lat['p90_ms']:>9.1f} ms  n={lat['n_samples']:<4}"
                             + ("" if g is None else f"  {g:>7.2f} GMAC/s")
                             + ("" if over is None else f"  {over:.2f}x its pixels' cost")
                             + ("" if parity_cell(c) == "–" else f"  max|dp| vs ORT {parity_cell(c)}"))
            else:
                lines.append(f"{c['model']:<10} {case_label(c):<38} {c['backend_label']:<18} {c['status']}")
    _, rows = ratio_rows(doc)
    if rows:
        lines.append("")
        lines += [f"{row[2]:<38} {row[3]} = {row[4]}" for row in rows]
    proxy = a72_lines(doc)
    if proxy:
        lines.append("")
        lines += proxy
    lines.append("")
    others = ", ".join(p.name for k, p in paths.items() if k != "report.html")
    lines.append(f"report: {paths['report.html']}  (also {others})")
    return "\n".join(lines)


def report_main(argv: list[str]) -> int:
    from benchmarks.report import merge, write_report

    args = build_report_parser().parse_args(argv)

    def body() -> int:
        doc = merge(args.files)
        paths = write_report(doc, args.out)
        print(f"merged {len(doc['runs'])} run(s) into {paths['report.html']}")
        return 0

    return run_cli(body, args.verbose)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "report":
        return report_main(argv[1:])
    args = build_parser().parse_args(argv)

    def body() -> int:
        from benchmarks.report import document, write_report
        from benchmarks.suite import run_plan

        plan = plan_from_args(args)
        run = run_plan(plan, verbose=args.verbose)
        doc = document([run])
        paths = write_report(doc, plan.outdir)
        print(format_summary(doc, paths))
        return 0

    return run_cli(body, args.verbose)


if __name__ == "__main__":
    sys.exit(main())
