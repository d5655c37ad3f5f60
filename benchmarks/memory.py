"""Memory of a benchmark run: peak resident set size of an isolated child process, and TVM's static plan.

Peaks are measured per process so they never mix: every backend case runs in its own child, which reports its
own high-water mark (``VmHWM``), its resident size after loading and, where Linux allows resetting the
high-water mark (``/proc/self/clear_refs`` <- 5), the peak of the inference loop alone. The kernel's ``ru_maxrss``
of the child as ``os.wait4`` returns it is kept only as a cross-check: after fork+exec it starts from the parent's
resident size, so a parent that holds torch and TVM inflates it.

TVM 0.27's Relax VM exposes no runtime memory statistic; what TVM does give is its static memory plan
(``relax.analysis.estimate_memory_usage`` after ``StaticPlanBlockMemory``), computed here from the ONNX graph
with the same lowering as the package's library.
"""
from __future__ import annotations

import os
import re
import resource
import subprocess
import sys
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

MIB = 1024 * 1024


@dataclass
class MemoryRecord:
    """Memory of one case. ``None`` fields were not measurable; ``note`` says why."""

    peak_rss_mib: float | None  # the whole process: interpreter, runtime libraries, model, inputs, inference
    rss_after_load_mib: float | None  # after creating the backend and the warm-up runs
    inference_peak_rss_mib: float | None  # high-water mark of the sampling loop alone (reset before it)
    gpu_peak_mib: float | None = None  # torch.cuda.max_memory_allocated for the PyTorch CUDA case
    isolated: bool = True  # False: the process also ran other backends (interleaved run)
    measured_in: str = "own process"
    note: str | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def rss_mib() -> float:
    import psutil

    return psutil.Process().memory_info().rss / MIB


def ru_maxrss_mib(who: int = resource.RUSAGE_SELF) -> float:
    """ru_maxrss is in KiB on Linux and in bytes on macOS."""
    v = resource.getrusage(who).ru_maxrss
    return v / MIB if sys.platform == "darwin" else v / 1024


def hwm_mib(status: str | Path = "/proc/self/status") -> float | None:
    """VmHWM (peak RSS since start or since the last reset) from /proc; None where there is no /proc."""
    try:
        text = Path(status).read_text()
    except OSError:
        return None
    m = re.search(r"^VmHWM:\s+(\d+)\s+kB", text, re.M)
    return int(m.group(1)) / 1024 if m else None


def reset_hwm(clear_refs: str | Path = "/proc/self/clear_refs") -> bool:
    """Reset the peak-RSS high-water mark (Linux >= 4.0); False where that is not permitted or not Linux."""
    try:
        with open(clear_refs, "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


@dataclass
class ChildRun:
    returncode: int
    peak_rss_mib: float | None  # the child's ru_maxrss from wait4
    stderr_tail: list[str]


def spawn_measured(cmd: list[str], env: dict[str, str] | None = None,
                   on_line: Callable[[str], None] | None = None, tail: int = 20) -> ChildRun:
    """Run ``cmd``, forward its stderr lines to ``on_line``, and return its own peak RSS from ``os.wait4``."""
    proc = subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, errors="replace")
    last: deque[str] = deque(maxlen=tail)

    def pump() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            line = line.rstrip("\n")
            last.append(line)
            if on_line is not None:
                on_line(line)

    t = threading.Thread(target=pump, daemon=True)
    t.start()
    try:
        _, status, usage = os.wait4(proc.pid, 0)
    except BaseException:
        proc.kill()
        proc.wait()
        raise
    proc.returncode = os.waitstatus_to_exitcode(status)
    t.join()
    peak = usage.ru_maxrss / MIB if sys.platform == "darwin" else usage.ru_maxrss / 1024
    return ChildRun(proc.returncode, peak, list(last))


_EST = re.compile(r"Without memory planning.*?total size ([0-9.eE+-]+) GB.*?With memory planning.*?"
                  r"total size ([0-9.eE+-]+) GB", re.S)


def tvm_planned_memory(onnx_path: str | Path, input_name: str, shape: list[int],
                       target: Any = None) -> tuple[float | None, float | None, str]:
    """(planned MiB, unplanned MiB, status) of the activations of the graph's ``main`` under TVM's static
    memory planning, for ``target`` (default: this host's LLVM CPU). Weights are not included.

    ``estimate_memory_usage`` prints sizes in GB to four significant digits, so the values carry that precision.
    Any failure comes back as ``(None, None, "unavailable: <reason>")``.
    """
    try:
        import onnx
        import tvm
        from tvm import relax

        from export.tvm_stage import import_onnx, lower  # the lowering the package's library went through

        if target is None:
            target = tvm.target.Target({"kind": "llvm", "mcpu": str(tvm.target.codegen.llvm_get_system_cpu())})
        mod = import_onnx(onnx.load(str(onnx_path)), input_name, list(shape))
        mod, _, _ = lower(mod, target)
        from tvm.relax import backend, transform

        # tvm.compile's default pipeline up to and including StaticPlanBlockMemory (TVM 0.27): the estimate
        # reads the memory.alloc_storage calls the planner leaves, which the next pass (LowerAllocTensor) lowers.
        upto_plan = tvm.transform.Sequential([
            backend.DispatchSampling(), backend.DispatchSortScan(), transform.LegalizeOps(),
            transform.RewriteDataflowReshape(), transform.ToNonDataflow(), transform.RemovePurityChecking(),
            transform.CallTIRRewrite(), transform.StaticPlanBlockMemory()])
        with target:
            mod = upto_plan(mod)
        text = relax.analysis.estimate_memory_usage(mod)
    except Exception as exc:  # TVM raises assorted error types; the report says what failed instead
        return None, None, f"unavailable: {type(exc).__name__}: {str(exc).strip().splitlines()[0][:160]}"
    section = text.split("- Function main:", 1)[-1]
    m = _EST.search(section)
    if not m:
        return None, None, "unavailable: TVM's memory estimate has an unexpected format"
    unplanned_gb, planned_gb = float(m.group(1)), float(m.group(2))
    return planned_gb * 1024, unplanned_gb * 1024, "static plan (relax.analysis.estimate_memory_usage)"
