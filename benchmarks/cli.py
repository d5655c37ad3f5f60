"""``edge-bench``: params, MACs, sizes, latency, memory and energy of models or packages, and merged reports;
a thin layer over :mod:`benchmarks.plan`, :mod:`benchmarks.suite` and :mod:`benchmarks.report`."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from edge.errors import EdgeError, run_parsed


def build_parser() -> argparse.ArgumentParser:
    from benchmarks.latency import BACKENDS, CPU_BACKENDS, EXTRA_CPU_BACKENDS, IMAGES, OPTIONAL_BACKENDS
    from benchmarks.power import BOARD_PROFILES, METERS

    p = argparse.ArgumentParser(
        prog="edge-bench",
        description="Measure vessel-segmentation models on this machine: parameters, MACs and file sizes; "
                    "latency percentiles per network input (tile) and per full image (tiled like edge-run) with "
                    "PyTorch, ONNX Runtime, TVM (with its hand-written kernels, and with --backends tvm-default TVM's "
                    "default lowering of the same graph), OpenVINO, ncnn, MNN and LiteRT; GMAC/s; parity of every "
                    "output with ONNX Runtime's and PyTorch's; peak memory of each case in its own process; "
                    "energy with a power meter; optionally the estimated cost on an emulated Cortex-A72. Writes "
                    "results.json, CSV, Markdown and a self-contained HTML report.",
        epilog="Merge and re-render runs (e.g. a board and a GPU machine): edge-bench report results*.json -o DIR. "
               "PyTorch / ONNX Runtime / TVM ratios of M2U-Net on DRIVE: edge-bench m2unet --sizes 544 --images none "
               "--backends torch,onnxruntime,tvm --interleave --runs 50 --seconds 120. "
               "Hand-written kernels vs TVM's default lowering vs ONNX Runtime vs PyTorch: edge-bench m2unet "
               "--sizes 544,960 --images hrf --backends onnxruntime,torch,tvm-default,tvm --interleave --threads 2 "
               "--budget-ms 500 --image-runs 5. "
               "Exit codes: 0 ok; 2 usage or other error; 3 package error; 4 input error; 130 interrupted.",
    )
    p.add_argument("models", nargs="*", metavar="MODEL_OR_PACKAGE",
                   help="registered model names (exported for this host as needed), package directories made by "
                        "edge-export, or ONNX files")
    p.add_argument("--sizes", default=None, metavar="LIST",
                   help="network input sizes, e.g. 544,960 or 544x768 (default: the model's tile)")
    p.add_argument("--backends", default=None, metavar="LIST",
                   help=f"from {', '.join(BACKENDS)} (default: {','.join(CPU_BACKENDS)}; "
                        f"{', '.join(OPTIONAL_BACKENDS)} only when installed; {', '.join(EXTRA_CPU_BACKENDS)} "
                        "(TVM's default lowering, no hand-written kernels: slow) only when named)")
    sizes = ", ".join(f"{k} ({h}x{w})" for k, (h, w) in IMAGES.items())
    p.add_argument("--images", default=None, metavar="LIST",
                   help=f"full images to time, tiled like edge-run: {sizes}, HxW, or none (default: all three)")
    p.add_argument("--image-tile", default=None, metavar="SIZE",
                   help="tile used for full images; must be one of --sizes (default: the model's tile)")
    p.add_argument("--weights", default=None, metavar="PATH", help="state dict for the registered model(s)")
    p.add_argument("--runs", type=int, default=None, metavar="N", help="timed runs per case (default: 30)")
    p.add_argument("--image-runs", type=int, default=None, metavar="N",
                   help="timed runs per full-image case (default: --runs)")
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
    p.add_argument("--interleave-gap-ms", type=float, default=None, metavar="MS",
                   help="with --interleave: idle time before each sample, so the previous runtime's pool threads "
                        "stop spinning (default: 50)")
    p.add_argument("--budget-ms", type=float, default=None, metavar="MS",
                   help="with --interleave: a backend whose median exceeds MS per tile sits out the later rounds "
                        "once it has --min-samples samples (e.g. tvm-default; default: no budget)")
    p.add_argument("--min-samples", type=int, default=None, metavar="N",
                   help="samples a backend over --budget-ms still gets (default: 3)")
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
    p.add_argument("--a72-tool", default=None, metavar="DIR",
                   help="the arm64proxy instrument, the folder with a72count.py (default: ../shared/tools/arm64proxy)")
    p.add_argument("--a72-peers", default=None, metavar="LIST",
                   help="with --a72-proxy: also count ncnn, MNN and LiteRT XNNPACK (ncnn,mnn,tflite or all), each "
                        "converted from the package's ONNX on this host (benchmarks.peers); tvm-default in "
                        "--backends also counts TVM's default lowering")
    p.add_argument("--a72-threads", type=int, default=None, metavar="N",
                   help="with --a72-proxy: also count TVM alone on N threads and note how its instructions split "
                        "over them against the one-thread count (default: 1, one thread only)")
    p.add_argument("--a72-int8", default=None, metavar="PKG",
                   help="with --a72-proxy: also count this int8 package's ONNX on ONNX Runtime (edge-export MODEL "
                        "--quantize int8, same tile), beside fp32")
    p.add_argument("--a72-no-ort", dest="a72_ort", action="store_false", default=None,
                   help="with --a72-proxy: do not count ONNX Runtime (no ratios to it; saves its emulation time)")
    p.add_argument("--a72-no-mca", dest="a72_mca", action="store_false", default=None,
                   help="with --a72-proxy: skip the llvm-mca cycle estimate (the goal's measure)")
    return p  # -v/--verbose (child process output, tracebacks on errors) comes with edge.errors.run_parsed


def build_report_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="edge-bench report",
                                description="Merge results.json files of edge-bench runs into one report "
                                            "(results.json, CSV, Markdown, HTML with plots).")
    p.add_argument("files", nargs="+", metavar="RESULTS.json")
    p.add_argument("-o", "--out", required=True, metavar="DIR")
    return p


def plan_from_args(args: argparse.Namespace):
    """The :class:`benchmarks.plan.Plan` of ``--plan`` (if any) with the options given on the command line."""
    from benchmarks.plan import PLAN_KEYS, load_plan, plan_from_dict

    data = load_plan(args.plan) if args.plan else {}
    names = {"out": "outdir"}  # options spelled otherwise than their plan keys
    cli = {names.get(k, k): v for k, v in vars(args).items() if names.get(k, k) in PLAN_KEYS}
    cli["models"] = args.models or None
    cli.pop("dice", None)
    data.update({k: v for k, v in cli.items() if v is not None})
    if args.dice:
        data["dice"] = {**data.get("dice", {}), **parse_dice(args.dice)}
    return plan_from_dict(data)


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
                             + ("" if parity_cell(c) == "–" else f"  max|dp| vs ORT {parity_cell(c)}")
                             + ("" if parity_cell(c, "parity_torch") == "–" else
                                f"  vs PyTorch {parity_cell(c, 'parity_torch')}"))
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
    def body(args: argparse.Namespace) -> int:
        from benchmarks.report import merge, write_report

        doc = merge(args.files)
        paths = write_report(doc, args.out)
        print(f"merged {len(doc['runs'])} run(s) into {paths['report.html']}")
        return 0

    return run_parsed(build_report_parser(), body, argv)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "report":
        return report_main(argv[1:])

    def body(args: argparse.Namespace) -> int:
        from benchmarks.report import document, write_report
        from benchmarks.suite import run_plan

        plan = plan_from_args(args)
        run = run_plan(plan, verbose=args.verbose)
        doc = document([run])
        paths = write_report(doc, plan.outdir)
        print(format_summary(doc, paths))
        return 0

    return run_parsed(build_parser(), body, argv)

if __name__ == "__main__":
    sys.exit(main())
