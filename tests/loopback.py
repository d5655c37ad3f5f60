"""Loopback helpers shared by the tests that start real TVM RPC trackers and servers (tests/arm64, tests/hostile)."""
from __future__ import annotations

import socket
import subprocess
import time
from pathlib import Path

import pytest


def free_port() -> int:
    """A port nothing listens on: bound, read, closed."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def accepts(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False


def wait_for(cond, timeout_s: float, what: str, proc: subprocess.Popen, log: Path, poll_s: float = 0.2) -> None:
    """Poll ``cond`` until it holds; fail with the process's log if it exits or the time runs out."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"{what}: the process exited ({proc.returncode}):\n{log.read_text()[-3000:]}")
        if cond():
            return
        time.sleep(poll_s)
    pytest.fail(f"{what} within {timeout_s:.0f} s:\n{log.read_text()[-3000:]}")
