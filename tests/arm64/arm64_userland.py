"""Helpers of the arm64 tests: the userland's command runner, its install stamp, process-group shutdown."""
from __future__ import annotations

import hashlib
import os
import signal
import subprocess
from collections.abc import Iterable, Sequence
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "docker" / "arm64-userland.sh"
INSTALL = ROOT / "docker" / "install"
BUILD_TIMEOUT_S = 1800  # debootstrap ~3-6 min + wheels ~2-3 min on two cores; a fresh CI machine pays it once
A72_TARGET = {"kind": "llvm", "mtriple": "aarch64-linux-gnu", "mcpu": "cortex-a72", "mattr": ["+neon"]}
CROSS_CXX = "aarch64-linux-gnu-g++"


def install_sha256() -> str:
    """What docker/install/device_runtime.sh records as its stamp: sha256 of itself + versions.env."""
    h = hashlib.sha256()
    for name in ("device_runtime.sh", "versions.env"):
        h.update((INSTALL / name).read_bytes())
    return h.hexdigest()


def stop(proc: subprocess.Popen, timeout_s: float = 10.0) -> None:
    """Terminate ``proc``'s process group (started with start_new_session=True), then kill what is left."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=timeout_s)
        except ProcessLookupError:
            pass
    try:  # children that outlived the leader (forked RPC sessions) share its group
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


class Userland:
    """Runs commands inside the emulated userland (the device venv's python3 and edge-run come first on PATH)."""

    def _argv(self, cmd: Sequence[str], binds: Iterable[Path]) -> list[str]:
        argv = ["bash", str(SCRIPT), "run"]
        for b in binds:
            argv += ["--bind", str(b)]
        return argv + ["--", *map(str, cmd)]

    def run(self, *cmd: str | Path, binds: Iterable[Path] = (), timeout: float = 600,
            check: bool = True) -> subprocess.CompletedProcess:
        r = subprocess.run(self._argv(cmd, binds), capture_output=True, text=True, timeout=timeout)
        if check and r.returncode != 0:
            pytest.fail(f"inside the userland, {' '.join(map(str, cmd))} exited {r.returncode}:\n"
                        f"{r.stdout[-2000:]}\n{r.stderr[-4000:]}")
        return r

    def popen(self, *cmd: str | Path, binds: Iterable[Path] = (), **kw) -> subprocess.Popen:
        return subprocess.Popen(self._argv(cmd, binds), start_new_session=True, **kw)
