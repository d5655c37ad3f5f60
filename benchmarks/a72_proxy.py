"""What one inference costs on an emulated Cortex-A72 (RK3399 big core): TVM package vs ONNX Runtime and the
engines people run on ARM (ncnn, MNN, LiteRT XNNPACK; benchmarks.peers converts them from the package's ONNX).

Drives the arm64proxy instrument (../shared/tools/arm64proxy: qemu-aarch64 -cpu cortex-a72 with TCG plugins;
see its README) on the cross-compiled package's library, on ONNX Runtime running the package's own
ONNX graph and on each peer's conversion of it, one thread each, same input. Each output is compared with ONNX
Runtime's on probabilities (max |dp|). Every figure is an estimate from emulation, labelled
``estimated (emulated A72)``: instructions, llvm-mca cycles (no memory stalls), L1D/L2 misses of an
A72-like cache model, and cycles / 1.8 GHz. Trust ratios above ~1.3x, not absolute times.

Run through edge-bench (the rows land in results.json ``a72_proxy``, the report's Cortex-A72 section and
a72_proxy.csv; ``edge-bench report results.json -o DIR`` re-renders them):

  edge-bench m2unet --weights W.pth --sizes 544 --images none --a72-proxy --a72-cache       # ~20-40 min at 544
  edge-bench packages/m2unet-arm64-544x544 --backends onnxruntime --images none --a72-proxy
  edge-bench PKG --backends onnxruntime,tvm-default ... --a72-proxy       # also TVM's default lowering (~4x slower)
  edge-bench PKG ... --a72-proxy --a72-peers ncnn,mnn,tflite              # ~25 min at 544
  edge-bench PKG ... --a72-proxy --a72-no-ort --a72-threads 2             # TVM alone, and on 2 threads

:func:`measure` is the core. Needs root (the instrument chroots) and the rig built once by ``setup.sh WORK``
(~7 min). Run it alone: emulation is slow and it shares the machine's cores.
"""
from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, fields
from pathlib import Path

from edge.errors import EdgeError

DEFAULT_TOOL = Path(__file__).resolve().parents[2] / "shared" / "tools" / "arm64proxy"
LABEL = "estimated (emulated A72)"
GHZ = 1.8
GOAL_CYCLES = 1.5  # TVM needs at most 1/1.5 of ONNX Runtime's llvm-mca cycles ...
# ... and at most as many L2 misses
GOAL_PEER_CYCLES = 1.3  # ... and at most 1/1.3 of the best peer's (ncnn, MNN, XNNPACK), no more L2 misses than it
PEER_ENGINES = ("ncnn", "mnn", "tflite")


def default_work() -> Path:
    """The rig folder: $ARM64PROXY_WORK, else /root/.cache/arm64proxy."""
    return Path(os.environ.get("ARM64PROXY_WORK") or "/root/.cache/arm64proxy")


@dataclass
class ProxyRow:
    """One engine's per-inference figures, millions (``_m``); all ``estimated (emulated A72)``."""

    engine: str  # ort | tvm | tvm-default | ncnn | mnn | tflite
    model: str
    insns_m: float
    fmla_q128_m: float
    fp_scalar_m: float
    mca_cycles_m: float | None
    estimated_ms_at_1_8ghz: float | None
    l1d_miss_m: float | None
    l2_miss_m: float | None
    max_abs_diff_vs_ort: float | None
    input_shape: list[int] | None = None
    emulation_s: float | None = None
    package: str | None = None
    label: str = LABEL
    max_abs_dp_vs_ort: float | None = None  # on probabilities (sigmoid of the logits): the parity that counts
    model_file: str | None = None  # what the engine ran (a peer's converted model)
    threads: int = 1  # TVM_NUM_THREADS in the emulated run (the other engines always run one thread)
    other_vcpu_insns_m: float | None = None  # instructions of the threads besides the main one (vCPU 0)


def _row(d: dict, engine: str) -> ProxyRow:
    """A row of a72count's JSON output (raw counts) as a :class:`ProxyRow`."""
    m = lambda k: d[k] / 1e6 if k in d and d[k] is not None else None  # noqa: E731
    cyc = d.get("mca_cycles")
    # a72count compares every engine with the first one of its run: a difference to ORT only when ORT ran first
    diff = d.get("max_abs_diff_vs_first") if d.get("diff_vs") == "ort" else None
    return ProxyRow(engine, d["model"], m("insns"), m("fmla_q128"), m("fp_scalar"), m("mca_cycles"),
                    cyc / (GHZ * 1e6) if cyc else None, m("l1d_miss"), m("l2_miss"), diff,
                    emulation_s=d.get("emulation_s"), other_vcpu_insns_m=m("other_vcpu_insns"))


def row_from_json(d: dict) -> ProxyRow:
    """A saved row: a :class:`ProxyRow` dict (edge-bench's ``a72_proxy``, the old standalone --json) or a raw
    a72count line (earlier --json files)."""
    if "insns_m" in d:
        return ProxyRow(**{f.name: d[f.name] for f in fields(ProxyRow) if f.name in d})
    return _row(d, d.get("label") or d["engine"])


def rig_command(work: str | Path, tool: str | Path = DEFAULT_TOOL) -> str:
    """The one command that builds (or completes) the rig with every engine edge-bench counts: the instrument's
    setup.sh with the pinned arm64 wheels of versions.env ``ARM64PROXY_PIP`` (its default holds no peers)."""
    return f'PIP_SPECS="{rig_pip()}" bash {tool}/setup.sh {work}'


def rig_pip() -> str:
    """versions.env ``ARM64PROXY_PIP``: the arm64 wheels the rig's venv must hold (ORT, TVM, ncnn, MNN, LiteRT)."""
    env = Path(__file__).resolve().parents[1] / "docker" / "install" / "versions.env"
    # sourced the way the install scripts source it (continuation lines honoured)
    r = subprocess.run(["bash", "-c", 'source "$1" && printf %s "$ARM64PROXY_PIP"', "_", str(env)],
                       capture_output=True, text=True)
    if r.returncode or not r.stdout.strip():
        raise EdgeError(f"{env} sets no ARM64PROXY_PIP (the arm64proxy rig's wheels)")
    return r.stdout.strip()


# the module each engine imports in the rig's arm64 venv (runner.py)
RIG_MODULES = {"ort": "onnxruntime", "tvm": "tvm", "ncnn": "ncnn", "mnn": "MNN", "tflite": "ai_edge_litert"}


def missing_in_rig(work: str | Path, engines: list[str] | tuple[str, ...]) -> list[str]:
    """The engines whose module the rig's arm64 venv lacks (a rig built with setup.sh's default PIP_SPECS has no
    ncnn, MNN or LiteRT)."""
    site = list((Path(work) / "rootfs" / "opt" / "venv" / "lib").glob("python3*/site-packages"))
    return [e for e in engines if not any((s / RIG_MODULES[e]).is_dir() for s in site)]


def check_rig(work: str | Path, tool: str | Path = DEFAULT_TOOL, engines: list[str] | tuple[str, ...] = ()) -> Path:
    """The instrument's a72count.py; :class:`EdgeError` when it, the rig, root or the rig's module for one of the
    ``engines`` (ort, tvm, ncnn, mnn, tflite) is missing."""
    script = Path(tool) / "a72count.py"
    if not script.is_file():
        raise EdgeError(f"the arm64proxy instrument is not at {tool} (no a72count.py); it ships in "
                        "../shared/tools/arm64proxy beside this checkout")
    if not (Path(work) / "rootfs" / "opt" / "x86" / "qemu-aarch64").exists():
        raise EdgeError(f"{work} holds no built arm64proxy rig; run `{rig_command(work, tool)}` as root first "
                        "(~7 min), or point --a72-work / $ARM64PROXY_WORK at the folder it built")
    if hasattr(os, "geteuid") and os.geteuid() != 0:
        raise EdgeError("the arm64proxy instrument chroots into its arm64 userland: run it as root")
    lacking = missing_in_rig(work, engines)
    if lacking:
        raise EdgeError(f"the arm64proxy rig at {work} has no arm64 {', '.join(RIG_MODULES[e] for e in lacking)} "
                        f"(built without the peers' wheels); complete it with `{rig_command(work, tool)}` as root")
    return script


def _failure(text: str) -> str:
    """The instrument's ``error:`` line and, after it, the last line of the emulated engine's own output (its
    exception), so the one line says which engine failed and why."""
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    if not lines:
        return "no output"
    i = next((k for k, ln in enumerate(lines) if ln.startswith("error")), None)
    if i is None:
        return lines[-1][:300]
    why = lines[-1] if len(lines) > i + 1 else ""
    return f"{lines[i][:200]} {why[-300:]}".strip()


@contextlib.contextmanager
def _rig_lock(work: Path, log: Callable[[str], None] | None = None):
    """One run at a time per rig: a72count stages every job's input, model and output in the rig's one
    /opt/job folder, so two concurrent runs would read each other's files."""
    import fcntl

    with open(work / ".a72count.lock", "w") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if log:
                log(f"waiting for another arm64proxy run on {work} to finish")
            fcntl.flock(f, fcntl.LOCK_EX)
        yield


_WITH_THREADS = """
import importlib.util, sys
threads, path = sys.argv[1], sys.argv[2]
spec = importlib.util.spec_from_file_location("a72count", path)
a72count = importlib.util.module_from_spec(spec)
spec.loader.exec_module(a72count)
a72count.ENV["TVM_NUM_THREADS"] = threads
sys.argv = sys.argv[2:]
sys.exit(a72count.main())
"""


def measure(onnx_path: str | Path | None, library: str | Path, shape: list[int], work: str | Path | None = None,
            tool: str | Path = DEFAULT_TOOL, mca: bool = True, cache: bool = False, *, model: str | None = None,
            extra: dict[str, Path] | None = None, peers: dict[str, Path] | None = None, package: str | None = None,
            threads: int = 1, int8: str | Path | None = None, log: Callable[[str], None] | None = None) -> list[ProxyRow]:
    """Count one inference of ONNX Runtime on ``onnx_path`` (first, the reference; None skips it), the aarch64 TVM
    ``library``, the ``extra`` libraries (label -> .so) and the ``peers`` (ncnn/mnn/tflite -> converted model, from
    :func:`benchmarks.peers.convert`) on the emulated A72, same random input of ``shape``. ``int8``: an int8 QDQ
    ONNX (an ``edge-export --quantize int8`` package's) also run on ONNX Runtime, as engine ``ort-int8``.

    ``threads`` > 1 runs the TVM libraries with that many TVM threads (the instrument's runner keeps every other
    engine at one): ``insns_m`` is then the main thread's count, ``other_vcpu_insns_m`` the workers', both with
    the thread pool's waiting (sched_yield loops) included, and llvm-mca cycles cover all threads together.

    ``mca``: llvm-mca cycles (the goal's measure); ``cache``: L1D/L2 simulation (several times slower). Raises
    :class:`EdgeError` when the rig is missing or the emulated run fails."""
    import numpy as np

    work = Path(work) if work is not None else default_work()
    script = check_rig(work, tool, (["ort"] if onnx_path is not None or int8 else []) + ["tvm", *(peers or {})])
    specs = ([("ort", f"ort:{onnx_path}")] if onnx_path is not None else []) + [("tvm", f"tvm:{library}")]
    specs += [("ort-int8", f"ort:{int8}")] if int8 else []
    specs += [(lab, f"tvm:{lib}") for lab, lib in (extra or {}).items()]
    specs += [(name, f"{name}:{model}") for name, model in (peers or {}).items()]
    outputs: list[np.ndarray | None] = []
    with tempfile.TemporaryDirectory(prefix="a72proxy-") as tmpd:
        x, out_json = Path(tmpd) / "input.npy", Path(tmpd) / "rows.jsonl"
        np.save(x, np.random.default_rng(0).random(shape, dtype=np.float32))
        if threads > 1 and (onnx_path is not None or peers or int8):
            raise EdgeError("the instrument runs ONNX Runtime and the peers on one thread only; count TVM alone "
                            "with more threads (--no-ort, no --peers)")
        # a72count fixes TVM_NUM_THREADS=1 in its environment table; more threads: load it as a module, change that
        pre = [] if threads == 1 else ["-c", _WITH_THREADS, str(threads)]
        cmd = [sys.executable, *pre, str(script), str(work), "--input", str(x), *(s for _, s in specs),
               "--json", str(out_json)] + ["--mca"] * mca + ["--cache"] * cache
        if log:
            log(" ".join([cmd[0], *cmd[1 + len(pre):]]) + (f"  (TVM_NUM_THREADS={threads})" if pre else ""))
        with _rig_lock(work, log):
            r = subprocess.run(cmd, capture_output=True, text=True)
            for i, (_, spec) in enumerate(specs):  # each engine's output, as a72count left it in the rig's job folder
                f = work / "rootfs" / "opt" / "job" / f"out_{i}_{spec.partition(':')[0]}.npy"
                outputs.append(np.load(f) if r.returncode == 0 and f.is_file() else None)
        got = [json.loads(ln) for ln in out_json.read_text().splitlines() if ln.strip()] if out_json.is_file() else []
    if r.returncode or len(got) != len(specs):
        raise EdgeError(f"the arm64proxy run failed (exit {r.returncode}): {_failure(r.stderr or r.stdout)}")
    from export.onnx_stage import compare

    ref = outputs[0] if specs[0][0] == "ort" else None
    rows = []
    for d, (lab, spec), out in zip(got, specs, outputs):
        row = _row({**d, "diff_vs": specs[0][0]}, lab)
        row.model, row.input_shape, row.package = model or row.model, list(shape), package
        row.model_file, row.threads = spec.partition(":")[2], threads if spec.startswith("tvm:") else 1
        if ref is not None and out is not None:
            if out.shape != ref.shape:
                raise EdgeError(f"{lab} on the emulated A72 gave an output of shape {out.shape}, ONNX Runtime "
                                f"{ref.shape}: the conversion of {row.model_file} is not the same model")
            row.max_abs_dp_vs_ort = compare(lab, "ort", out, ref).max_abs_diff
        rows.append(row)
    return rows


def _ratio(name: str, a: float | None, b: float | None) -> str | None:
    if not a or not b:
        return None
    return f"{name} {b / a:.2f}x fewer" if a <= b else f"{name} {a / b:.2f}x more"


def ratio_lines(rows: list[ProxyRow]) -> list[str]:
    """Every engine against ONNX Runtime (the first row without it), and the speed goal for ``tvm``."""
    if not rows:
        return []
    ref = next((r for r in rows if r.engine == "ort"), rows[0])
    out = []
    for r in rows:
        if r is ref:
            continue
        parts = [p for p in (_ratio("instructions", r.insns_m, ref.insns_m),
                             _ratio("cycles", r.mca_cycles_m, ref.mca_cycles_m),
                             _ratio("L1D misses", r.l1d_miss_m, ref.l1d_miss_m),
                             _ratio("L2 misses", r.l2_miss_m, ref.l2_miss_m)) if p]
        out.append(f"{r.engine} vs {ref.engine} ({LABEL}): " + ", ".join(parts))
        if r.engine == "tvm" and ref.engine == "ort" and r.mca_cycles_m and ref.mca_cycles_m:
            ok_c = r.mca_cycles_m * GOAL_CYCLES <= ref.mca_cycles_m
            ok_l2 = None if r.l2_miss_m is None or ref.l2_miss_m is None else r.l2_miss_m <= ref.l2_miss_m
            out.append(f"goal ({LABEL}; cycles <= ORT / {GOAL_CYCLES}: {ref.mca_cycles_m / GOAL_CYCLES:.1f} M): "
                       f"{'met' if ok_c else 'missed'} at {r.mca_cycles_m:.1f} M"
                       + ("" if ok_l2 is None else f"; L2 misses <= ORT's: {'met' if ok_l2 else 'missed'}"))
    tvm, q = (next((r for r in rows if r.engine == e and r.mca_cycles_m), None) for e in ("tvm", "ort-int8"))
    if tvm and q:
        out.append(f"tvm (fp32) vs ort-int8 ({LABEL}): " + _ratio("cycles", tvm.mca_cycles_m, q.mca_cycles_m))
    out += peer_goal(rows)
    return out


def thread_split(one: ProxyRow, many: ProxyRow) -> list[str]:
    """How one inference's instructions split over ``many.threads`` TVM threads, against the one-thread count of the
    same library: per-thread instructions (the pool's waiting included), their sum against one thread's, and the
    parallel efficiency it implies, one thread's instructions / (threads x the busiest thread's)."""
    if not (one.insns_m and many.insns_m and many.other_vcpu_insns_m is not None and many.threads > 1):
        return []
    per = [many.insns_m, *([many.other_vcpu_insns_m / (many.threads - 1)] * (many.threads - 1))]
    eff = one.insns_m / (many.threads * max(per))
    total = many.insns_m + many.other_vcpu_insns_m
    return [f"{many.engine} on {many.threads} threads ({LABEL}): main thread {many.insns_m:.1f} M instructions, "
            f"other threads {many.other_vcpu_insns_m:.1f} M; together {total / one.insns_m:.3f}x one thread's "
            f"{one.insns_m:.1f} M; parallel efficiency {eff:.2f} (one thread's / ({many.threads} x the busiest "
            "thread's), the pool's waiting counted as work)"]


def peer_goal(rows: list[ProxyRow]) -> list[str]:
    """TVM against the best peer engine (fewest llvm-mca cycles among ncnn, MNN, XNNPACK) of the same run."""
    tvm = next((r for r in rows if r.engine == "tvm" and r.mca_cycles_m), None)
    peers = [r for r in rows if r.engine in PEER_ENGINES and r.mca_cycles_m]
    if tvm is None or not peers:
        return []
    best = min(peers, key=lambda r: r.mca_cycles_m)
    ok_c = tvm.mca_cycles_m * GOAL_PEER_CYCLES <= best.mca_cycles_m
    ok_l2 = None if tvm.l2_miss_m is None or best.l2_miss_m is None else tvm.l2_miss_m <= best.l2_miss_m
    return [f"tvm vs the best peer, {best.engine} ({LABEL}): cycles {best.mca_cycles_m / tvm.mca_cycles_m:.2f}x "
            f"fewer; goal (cycles <= {best.engine} / {GOAL_PEER_CYCLES}: {best.mca_cycles_m / GOAL_PEER_CYCLES:.1f} M) "
            f"{'met' if ok_c else 'missed'} at {tvm.mca_cycles_m:.1f} M"
            + ("" if ok_l2 is None else f"; L2 misses <= {best.engine}'s: {'met' if ok_l2 else 'missed'}")]


HEAD = ["engine", "instructions", "4-lane FMLA", "scalar FP", "llvm-mca cycles", "ms at 1.8 GHz", "L1D misses",
        "L2 misses", "max abs diff vs ORT (logits)", "max abs dp vs ORT"]


def cells(r: ProxyRow) -> list[str]:
    """The table cells of one row (millions as ``12.3 M``; ``n/a`` where not measured)."""
    f = lambda v, u=" M": "n/a" if v is None else f"{v:.1f}{u}"  # noqa: E731
    d = "" if r.max_abs_diff_vs_ort is None else f"{r.max_abs_diff_vs_ort:.1e}"
    dp = "" if r.max_abs_dp_vs_ort is None else f"{r.max_abs_dp_vs_ort:.1e}"
    return [r.engine, f(r.insns_m), f(r.fmla_q128_m), f(r.fp_scalar_m), f(r.mca_cycles_m),
            f(r.estimated_ms_at_1_8ghz, ""), f(r.l1d_miss_m), f(r.l2_miss_m), d, dp]


def fmt(rows: list[ProxyRow], shape: str = "") -> str:
    n = max((r.threads for r in rows), default=1)
    threads = "one thread" if n == 1 else f"TVM on {n} threads (instructions and FMLAs: the main thread's)"
    out = [f"{LABEL}: Cortex-A72, {threads}, per inference {shape}".rstrip(),
           "| " + " | ".join(HEAD) + " |", "|" + "---|" * len(HEAD)]
    out += ["| " + " | ".join(cells(r)) + " |" for r in rows]
    return "\n".join(out + ratio_lines(rows))


def groups(rows: list[dict]) -> list[tuple[str, list[int] | None, list[ProxyRow]]]:
    """Saved rows (dicts) grouped by model and input shape, in order: (model, shape, rows). Raw a72count lines
    (no shape; the model is a file name) form one group."""
    out: dict[tuple, list[ProxyRow]] = {}
    for d in rows:
        r = row_from_json(d)
        out.setdefault((r.model, tuple(r.input_shape)) if r.input_shape else ("", ()), []).append(r)
    return [(m, list(s) or None, rs) for (m, s), rs in out.items()]
