"""What one hand-written kernel family is worth: the same ONNX model lowered for this host with and without it,
timed interleaved with ONNX Runtime in one process.

  python -m benchmarks.kernel_ab MODEL.onnx --off winograd-3x3 [--off dense_channels ...] [--size 544]
                                 [--threads 2] [--runs 9] [--json OUT]

Variants: ``all`` (every kernel, what ``edge-export`` builds) and one per ``--off`` family
(:data:`export.schedules.KERNELS_OFF`) with that family left out. Each round times every variant and ONNX Runtime
once, in rotated order, after a pause that lets the previous runtime's spinning threads park
(:func:`benchmarks.latency.collect_interleaved`); ratios are ONNX Runtime's median over each variant's. Every
variant's output is checked against ONNX Runtime's (max |d| printed and kept). A measurement of this x86-64
host (it refuses others); not a timed test.
"""
from __future__ import annotations

import argparse
from collections import Counter
from pathlib import Path

import numpy as np

from edge.errors import EdgeError, run_parsed

PAUSE_S = 0.05


def _variant(model, shape: list[int], target, off: tuple[str, ...]):
    """(callable on the input, hand-written kernel kinds -> count) of ``model`` lowered with ``off`` left out."""
    import tvm
    from tvm.runtime.vm import VirtualMachine

    from export.schedules import kernels_off
    from export.tvm_stage import import_onnx, lower

    with kernels_off(*off):
        mod, params, report = lower(import_onnx(model, model.graph.input[0].name, shape), target)
    if params:
        raise EdgeError("the lowered module kept separate parameters; kernel_ab runs constant-bound modules only")
    vm = VirtualMachine(tvm.compile(mod, target=target), tvm.cpu())
    return (lambda x: vm["main"](x).numpy()), dict(Counter(report.scheduled.values()))


def measure(onnx_path: Path, offs: list[str], size: int | None, threads: int, runs: int, seconds: float) -> dict:
    import onnx
    import onnxruntime as ort
    import tvm

    from export.onnx_stage import io_signature, with_input_shape
    from export.targets import get_target

    model = onnx.load(str(onnx_path))
    name, shape, _ = io_signature(model)
    if size is not None and shape[2:] != [size, size]:
        shape = [max(shape[0], 1), shape[1], size, size]
        model = with_input_shape(model, name, shape)
    if any(d <= 0 for d in shape):
        raise EdgeError(f"{onnx_path}: input shape {shape} is not static; pass --size")
    host = get_target("x86_64")
    if host.is_cross:
        raise EdgeError("kernel_ab times this host's own build: run it on an x86-64 machine")
    target = host.tvm_target()
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).random(shape, dtype=np.float32)
    ref = sess.run(None, {name: x})[0]
    xt = tvm.runtime.tensor(x)
    fns, out = {}, {"model": str(onnx_path), "input": shape, "threads": threads, "variants": {}}
    for label, off in [("all", ())] + [(f"without {o}", (o,)) for o in offs]:
        fn, kinds = _variant(model, shape, target, off)
        d = float(np.abs(fn(xt) - ref).max())
        out["variants"][label] = {"off": list(off), "kernels": kinds, "max_abs_diff_vs_ort": d}
        print(f"[kernel_ab] {label}: {kinds}, max|d| vs ONNX Runtime {d:.1e}", flush=True)
        fns[label] = (lambda f=fn: f(xt))
    fns["onnxruntime"] = lambda: sess.run(None, {name: x})
    from benchmarks.latency import collect_interleaved

    samples = collect_interleaved(fns, runs=runs, seconds=seconds, warmup=1, pause_s=PAUSE_S)
    ort_ms = float(np.median(samples["onnxruntime"]))
    out["onnxruntime_p50_ms"] = ort_ms
    print(f"[kernel_ab] onnxruntime: p50 {ort_ms:.1f} ms over {len(samples['onnxruntime'])} samples")
    for label, v in out["variants"].items():
        p50 = float(np.median(samples[label]))
        v.update(p50_ms=p50, samples=len(samples[label]), ort_over_tvm=ort_ms / p50)
        print(f"[kernel_ab] {label}: p50 {p50:.1f} ms, {ort_ms / p50:.2f}x ONNX Runtime's speed")
    return out


def main(argv: list[str] | None = None) -> int:
    from export.schedules import KERNELS_OFF

    ap = argparse.ArgumentParser(prog="python -m benchmarks.kernel_ab", description=__doc__.split("\n\n")[0])
    ap.add_argument("onnx", type=Path, help="the ONNX model (static input, or --size)")
    ap.add_argument("--off", action="append", choices=KERNELS_OFF, required=True,
                    help="a kernel family to leave out in one more variant (repeatable)")
    ap.add_argument("--size", type=int, help="square input size (default: the model's static input)")
    ap.add_argument("--threads", type=int, default=1, help="threads of TVM (TVM_NUM_THREADS) and ONNX Runtime")
    ap.add_argument("--runs", type=int, default=9, help="timed rounds (default: 9)")
    ap.add_argument("--seconds", type=float, default=60.0, help="stop after this much sampling (default: 60)")
    ap.add_argument("--json", type=Path, help="write the figures here")

    def body(args) -> int:
        import os

        if not args.onnx.is_file():
            raise EdgeError(f"{args.onnx}: no such ONNX file; pass the path of a model.onnx")
        if os.environ.get("TVM_NUM_THREADS") not in (None, str(args.threads)):
            raise EdgeError(f"TVM_NUM_THREADS={os.environ['TVM_NUM_THREADS']} differs from --threads "
                            f"{args.threads}; unset it or pass the same number")
        os.environ["TVM_NUM_THREADS"] = str(args.threads)  # read when TVM's thread pool starts
        out = measure(args.onnx, args.off, args.size, args.threads, args.runs, args.seconds)
        if args.json:
            from benchmarks.jsonio import write_json_atomic

            write_json_atomic(args.json, out)
        return 0

    return run_parsed(ap, body, argv)


if __name__ == "__main__":
    raise SystemExit(main())
