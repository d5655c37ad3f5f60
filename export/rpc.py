"""TVM RPC tracker checks shared by tuning on a board (edge-export --tune) and remote runs (benchmarks.remote):
parse HOST:PORT, reach the tracker and ask which servers it holds, every step within a deadline (TVM's tracker
client has none, and a request for a key no server registered waits forever)."""
from __future__ import annotations

import socket
import threading
from collections.abc import Callable
from typing import Any, TypeVar

from edge.errors import EdgeError

DEFAULT_TRACKER = "127.0.0.1:9190"

T = TypeVar("T")


def parse_tracker(text: str) -> tuple[str, int]:
    """``'HOST:PORT'`` (``[::1]:9190`` for IPv6) -> (host, port)."""
    host, sep, port = text.strip().rpartition(":")
    host = host.strip().strip("[]")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise EdgeError(f"--rpc-tracker must look like HOST:PORT with a port in 1-65535 (e.g. {DEFAULT_TRACKER}), "
                        f"got '{text}'")
    return host, int(port)


def within(fn: Callable[[], T], timeout_s: float, what: str, on_timeout: Callable[[], None]) -> T:
    """``fn()`` in a helper thread; after ``timeout_s`` call ``on_timeout`` (which closes the socket ``fn`` waits
    on) and raise :class:`TimeoutError`. TVM's tracker client blocks without a deadline; this gives every step one."""
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = fn()
        except BaseException as exc:  # handed to the caller's thread below
            box["error"] = exc

    t = threading.Thread(target=target, name=f"rpc: {what}", daemon=True)
    t.start()
    t.join(timeout_s)
    if t.is_alive():
        on_timeout()
        raise TimeoutError(what)
    if "error" in box:
        raise box["error"]
    return box["value"]


def servers_of(summary: dict) -> dict[str, list[str]]:
    """host:port of the registered RPC servers per key, from the tracker's summary (``server:rk3399`` entries)."""
    keys: dict[str, list[str]] = {}
    for item in summary.get("server_info", []):
        k = str(item.get("key", ""))
        if k.startswith("server:"):
            addr = item.get("addr") or ["?", "?"]
            keys.setdefault(k.split(":", 1)[1], []).append(f"{addr[0]}:{addr[1]}")
    return keys


def start_hint(host: str, port: int, key: str) -> str:
    return (f"start one with `python -m tvm.exec.rpc_tracker --host 0.0.0.0 --port {port}` and register the "
            f"board with `python3 -m tvm.exec.rpc_server --tracker {host}:{port} --key {key}`")


def connect_tracker(tracker: str, key: str, timeout_s: float) -> tuple[Any, list[str], Callable[[], None]]:
    """A tracker client, the servers registered under ``key`` and the client's close; :class:`EdgeError` within
    ``timeout_s`` (10 s at most) when the tracker is unreachable, does not answer as a tracker, or does not know
    the key."""
    from tvm import rpc

    host, port = parse_tracker(tracker)
    where = f"the TVM RPC tracker at {host}:{port}"
    start = start_hint(host, port, key)
    step_s = min(timeout_s, 10.0)
    try:
        socket.create_connection((host, port), timeout=step_s).close()
    except OSError as exc:
        raise EdgeError(f"{where} is unreachable ({exc.strerror or exc}); {start}") from exc
    holder: dict[str, Any] = {}

    def close() -> None:
        if "tracker" in holder:
            holder["tracker"].close()

    def connect_and_summarize() -> dict:
        holder["tracker"] = rpc.connect_tracker(host, port)
        return holder["tracker"].summary()

    try:
        summary = within(connect_and_summarize, step_s, "tracker summary", close)
    except TimeoutError:
        raise EdgeError(f"{where} accepts connections but does not answer as a tracker within {step_s:.0f} s "
                        "(is that port an RPC tracker?)") from None
    except (OSError, RuntimeError) as exc:
        close()
        raise EdgeError(f"{where} did not answer as a tracker ({exc}); {start}") from exc
    servers = servers_of(summary)
    if not servers.get(key):
        close()
        known = ", ".join(f"{k} ({len(a)})" for k, a in sorted(servers.items())) or "none"
        raise EdgeError(f"{where} has no RPC server registered with key '{key}'; keys it knows: {known}. "
                        f"On the board: python3 -m tvm.exec.rpc_server --tracker {host}:{port} --key {key}")
    return holder["tracker"], servers[key], close


def check_tracker(tracker: str, key: str, timeout_s: float = 10.0) -> list[str]:
    """The addresses of the servers registered under ``key``: the check before any work that the tracker answers
    and knows the board (:class:`EdgeError` within ``timeout_s`` otherwise)."""
    _, servers, close = connect_tracker(tracker, key, timeout_s)
    close()
    return servers
