"""What machine a benchmark ran on: CPU model (/proc/cpuinfo and LLVM's name for it), cores, memory, toolchain."""
from __future__ import annotations

import os
import platform
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

from edge.package import versions


def cpu_model(cpuinfo: str | Path = "/proc/cpuinfo", device_tree: str | Path = "/proc/device-tree") -> str | None:
    """The CPU's marketing name (x86 ``model name``), else the board/SoC (ARM ``Hardware``/``Model`` lines or
    the device-tree model), else None."""
    try:
        text = Path(cpuinfo).read_text(errors="replace")
    except OSError:
        text = ""
    for key in ("model name", "Hardware", "Model", "cpu model"):
        m = re.search(rf"^{re.escape(key)}\s*:\s*(.+)$", text, re.M)
        if m and m.group(1).strip():
            return m.group(1).strip()
    try:
        return (Path(device_tree) / "model").read_bytes().decode(errors="replace").strip("\0\n ") or None
    except OSError:
        return None


def llvm_cpu() -> str | None:
    """``tvm.target.codegen.llvm_get_system_cpu()``: the -mcpu TVM compiles for on this host."""
    try:
        import tvm

        return str(tvm.target.codegen.llvm_get_system_cpu())
    except Exception as exc:  # TVM absent or built without LLVM: reported, not fatal
        print(f"note: LLVM CPU name unavailable ({type(exc).__name__})", file=sys.stderr)
        return None


def gpus() -> list[dict[str, str]]:
    """NVIDIA GPUs as nvidia-smi lists them (empty without the driver)."""
    if shutil.which("nvidia-smi") is None:
        return []
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20, check=True).stdout
    except (subprocess.SubprocessError, OSError):
        return []
    rows = [[c.strip() for c in line.split(",")] for line in out.strip().splitlines() if line.strip()]
    return [{"name": r[0], "driver": r[1], "memory": r[2]} for r in rows if len(r) >= 3]


def machine_info(with_llvm: bool = True) -> dict[str, Any]:
    import psutil

    try:
        affinity = sorted(os.sched_getaffinity(0))
    except AttributeError:
        affinity = None
    freq = psutil.cpu_freq()
    return {
        "hostname": socket.gethostname(),
        "arch": platform.machine(),
        "os": platform.platform(),
        "kernel": platform.release(),
        "cpu_model": cpu_model(),
        "llvm_cpu": llvm_cpu() if with_llvm else None,
        "cores_logical": os.cpu_count(),
        "cores_physical": psutil.cpu_count(logical=False),
        "affinity": affinity,
        "cpu_max_mhz": freq.max if freq and freq.max else None,
        "memory_total_mib": round(psutil.virtual_memory().total / 2**20, 1),
        "gpus": gpus(),
        "versions": versions(),
    }
