"""Fixtures of the arm64 tests: the emulated RK3399 userland, built (or found up to date) once per session by
docker/arm64-userland.sh, and the aarch64 cross compiler."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from arm64_userland import BUILD_TIMEOUT_S, CROSS_CXX, SCRIPT, Userland  # noqa: E402


@pytest.fixture(scope="session")
def userland() -> Userland:
    """The userland, built or refreshed now if it is missing or stale; a skip only where this machine cannot
    emulate arm64 at all."""
    if os.geteuid() != 0:
        pytest.skip("the emulated arm64 userland needs root (debootstrap, chroot, mount namespaces)")
    if shutil.which("qemu-aarch64-static") is None or shutil.which("update-binfmts") is None:
        pytest.skip("QEMU user-mode emulation is not installed: sudo apt-get install qemu-user-static "
                    "binfmt-support")
    check = subprocess.run(["bash", str(SCRIPT), "check"], capture_output=True, text=True, timeout=60)
    if check.returncode != 0:
        pytest.skip(f"this machine cannot run arm64 code under QEMU: {check.stderr.strip()}")
    build = subprocess.run(["bash", str(SCRIPT), "build"], capture_output=True, text=True,
                           timeout=BUILD_TIMEOUT_S)
    if build.returncode != 0:
        pytest.fail(f"docker/arm64-userland.sh build failed ({build.returncode}):\n{build.stderr[-6000:]}")
    return Userland()


@pytest.fixture(scope="session")
def cross_cxx() -> str:
    if shutil.which(CROSS_CXX) is None:
        pytest.skip(f"{CROSS_CXX} is missing: sudo apt-get install g++-aarch64-linux-gnu")
    return CROSS_CXX
