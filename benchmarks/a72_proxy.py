"""What one inference costs on an emulated Cortex-A72 (RK3399 big core): TVM package vs ONNX Runtime.

Drives the arm64proxy instrument (../shared/tools/arm64proxy: qemu-aarch64 -cpu cortex-a72 with TCG plugins;
see its README) on the cross-compiled package's library and on ONNX Runtime running the package's own
ONNX graph, one thread each, same input. Every figure is an estimate from emulation, labelled
``estimated (emulated A72)``: instructions, llvm-mca cycles (no memory stalls), L1D/L2 misses of an
A72-like cache model, and cycles / 1.8 GHz. Trust ratios above ~1.3x, not absolute times.

  python -m benchmarks.a72_proxy m2unet --weights W.pth --size 544 --cache     # ~20-40 min at 544
  python -m benchmarks.a72_proxy --package packages/m2unet-arm64-544x544
  python -m benchmarks.a72_proxy --from-json runs.jsonl                           # re-print saved rows

Needs root (the instrument chroots) and the rig built once by ``setup.sh WORK`` (~7 min). Run it alone:
emulation is slow and it shares the machine's cores.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

DEFAULT_TOOL = Path(__file__).resolve().parents[2] / "shared" / "tools" / "arm64proxy"
DEFAULT_WORK = Path(os.environ.get("ARM64PROXY_WORK", "/root/.cache/arm64proxy"))
LABEL = "estimated (emulated A72)"
GHZ = 1.8
GOAL_CYCLES = 1.5  # TVM needs at most 1/1.5 of ONNX Runtime's llvm-mca cycles ...
# ... and at most as many L2 misses


@dataclass
class ProxyRow:
    engine: str  # ort | tvm | tvm-default
    model: str
    insns_m: float
    fmla_q128_m: float
    fp_scalar_m: float
    mca_cycles_m: float | None
    estimated_ms_at_1_8ghz: float | None
    l1d_miss_m: float | None
    l2_miss_m: float | None
    max_abs_diff_vs_ort: float | None


def _row(d: dict, engine: str) -> ProxyRow:
    m = lambda k: d[k] / 1e6 if k in d and d[k] is not None else None  # noqa: E731
    cyc = d.get("mca_cycles")
    # a72count compares every engine with the first one of its run: a difference to ORT only when ORT ran first
    diff = d.get("max_abs_diff_vs_first") if d.get("diff_vs") == "ort" else None
    return ProxyRow(engine, d["model"], m("insns"), m("fmla_q128"), m("fp_scalar"), m("mca_cycles"),
                    cyc / (GHZ * 1e6) if cyc else None, m("l1d_miss"), m("l2_miss"), diff)


def fmt(rows: list[ProxyRow], shape: str = "") -> str:
    ref = next((r for r in rows if r.engine == "ort"), rows[0])
    out = [f"{LABEL}: Cortex-A72, one thread, per inference {shape}".rstrip(),
           "| engine | instructions | 4-lane FMLA | scalar FP | llvm-mca cycles | ms at 1.8 GHz | L1D misses | "
           "L2 misses | max abs diff vs ORT |", "|---|---|---|---|---|---|---|---|---|"]
    f = lambda v, u=" M": "n/a" if v is None else f"{v:.1f}{u}"  # noqa: E731
    for r in rows:
        d = "" if r.max_abs_diff_vs_ort is None else f"{r.max_abs_diff_vs_ort:.1e}"
        out.append(f"| {r.engine} | {f(r.insns_m)} | {f(r.fmla_q128_m)} | {f(r.fp_scalar_m)} | {f(r.mca_cycles_m)} | "
                   f"{f(r.estimated_ms_at_1_8ghz, '')} | {f(r.l1d_miss_m)} | {f(r.l2_miss_m)} | {d} |")
    for r in rows:
        if r is ref:
            continue
        parts = []
        for name, a, b in (("instructions", r.insns_m, ref.insns_m), ("cycles", r.mca_cycles_m, ref.mca_cycles_m),
                           ("L1D misses", r.l1d_miss_m, ref.l1d_miss_m), ("L2 misses", r.l2_miss_m, ref.l2_miss_m)):
            if a and b:
                parts.append(f"{name} {b / a:.2f}x fewer" if a <= b else f"{name} {a / b:.2f}x more")
        out.append(f"{r.engine} vs ort ({LABEL}): " + ", ".join(parts))
        if r.engine == "tvm" and r.mca_cycles_m and ref.mca_cycles_m:
            ok_c = r.mca_cycles_m * GOAL_CYCLES <= ref.mca_cycles_m
            ok_l2 = None if r.l2_miss_m is None or ref.l2_miss_m is None else r.l2_miss_m <= ref.l2_miss_m
            out.append(f"goal (cycles <= ORT / {GOAL_CYCLES}: {ref.mca_cycles_m / GOAL_CYCLES:.1f} M): "
                       f"{'met' if ok_c else 'missed'} at {r.mca_cycles_m:.1f} M"
                       + ("" if ok_l2 is None else f"; L2 misses <= ORT's: {'met' if ok_l2 else 'missed'}"))
    return "\n".join(out)


def _build(a, work: Path) -> tuple[Path, Path, Path | None, list[int]]:
    """(onnx, tvm library, default-lowering library or None, input shape)."""
    import onnx

    from export.targets import get_target
    from export.tvm_stage import build_library

    if a.package:
        pkg = Path(a.package)
        meta = json.loads((pkg / "meta.json").read_text())
        if meta["target"]["arch"] != "aarch64":
            raise SystemExit(f"error: {pkg} is a {meta['target']['arch']} package; export it with --target arm64")
        onnx_path, lib = pkg / "model.onnx", pkg / "model.so"
        shape = meta["input"]["shape"]
    else:
        from export.pipeline import export_model

        pkg = work / f"{a.model}-arm64-{a.size}"
        r = export_model(a.model, "arm64", weights=a.weights, input_size=(a.size, a.size), out=pkg, force=True)
        onnx_path, lib, shape = pkg / "model.onnx", pkg / "model.so", r.meta["input"]["shape"]
    default = None
    if a.default:
        default = work / "default_aarch64.so"
        m = onnx.load(str(onnx_path))
        build_library(m, m.graph.input[0].name, shape, get_target("arm64"), default, hand_kernels=False)
    return onnx_path, lib, default, shape


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", nargs="?", default="m2unet")
    ap.add_argument("--weights")
    ap.add_argument("--size", type=int, default=544)
    ap.add_argument("--package", help="an existing arm64 package instead of exporting one")
    ap.add_argument("--default", action="store_true", help="also count TVM's default lowering (slow: ~4x)")
    ap.add_argument("--no-ort", action="store_true", help="skip ONNX Runtime (reuse its row with --ort-json)")
    ap.add_argument("--ort-json", help="a saved ONNX Runtime row (a72count --json line) to compare against")
    ap.add_argument("--no-mca", dest="mca", action="store_false",
                    help="skip the llvm-mca cycle estimate (the goal's measure; on by default)")
    ap.add_argument("--cache", action="store_true", help="also simulate L1D/L2 (several times slower)")
    ap.add_argument("--work", default=str(DEFAULT_WORK), help="the folder setup.sh built")
    ap.add_argument("--tool", default=str(DEFAULT_TOOL), help="the arm64proxy folder (a72count.py)")
    ap.add_argument("--json", help="append the instrument's rows here (JSON lines)")
    ap.add_argument("--from-json", help="only format rows saved by an earlier run")
    a = ap.parse_args(argv)

    if a.from_json:
        lines = [json.loads(l) for l in Path(a.from_json).read_text().splitlines() if l.strip()]
        rows = [_row(d, d.get("label") or d["engine"]) for d in lines]
        print(fmt(rows))
        return 0
    tool = Path(a.tool) / "a72count.py"
    if not tool.is_file():
        print(f"error: {tool} not found; pass --tool DIR (the arm64proxy folder)", file=sys.stderr)
        return 2
    if not (Path(a.work) / "rootfs" / "opt" / "x86" / "qemu-aarch64").exists():
        print(f"error: {a.work} has no built rig; run (as root) `bash {a.tool}/setup.sh {a.work}` first (~7 min)",
              file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="a72proxy-") as tmpd:
        tmp = Path(tmpd)
        onnx_path, lib, default, shape = _build(a, tmp)
        import numpy as np

        x = tmp / "input.npy"
        np.save(x, np.random.default_rng(0).random(shape, dtype=np.float32))
        specs, labels = [], []
        if not a.no_ort:
            specs.append(f"ort:{onnx_path}")
            labels.append("ort")
        specs.append(f"tvm:{lib}")
        labels.append("tvm")
        if default:
            specs.append(f"tvm:{default}")
            labels.append("tvm-default")
        out_json = tmp / "rows.jsonl"
        cmd = [sys.executable, str(tool), a.work, "--input", str(x), *specs, "--json", str(out_json)]
        cmd += ["--mca"] if a.mca else []
        cmd += ["--cache"] if a.cache else []
        print(f"[a72_proxy] {' '.join(cmd)}", file=sys.stderr, flush=True)
        r = subprocess.run(cmd)
        if r.returncode:
            print("error: the arm64proxy run failed (see above)", file=sys.stderr)
            return 3
        got = [json.loads(l) for l in out_json.read_text().splitlines() if l.strip()]
    for d, lab in zip(got, labels):
        d["label"] = lab
        d["diff_vs"] = labels[0]
    if a.no_ort and a.ort_json:
        ref = json.loads(Path(a.ort_json).read_text().splitlines()[0])
        ref["label"] = ref["diff_vs"] = "ort"
        got.insert(0, ref)
    if a.json:
        with open(a.json, "a") as f:
            for d in got:
                f.write(json.dumps(d) + "\n")
    rows = [_row(d, d["label"]) for d in got]
    print(fmt(rows, "x".join(map(str, shape))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
