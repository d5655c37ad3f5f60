"""Run a package's TVM library on a board through a TVM RPC tracker, timed on the board by the Relax VM.

The board runs ``python3 -m tvm.exec.rpc_server --tracker HOST:PORT --key rk3399`` (the device runtime
installs what it needs); the host starts ``python -m tvm.exec.rpc_tracker --host 0.0.0.0 --port 9190``. The
library is uploaded, loaded and run there; latency samples come from the VM's time evaluator running on the
remote side, so the network is not in them. The output is compared with a host reference (ONNX Runtime on the
package's ``model.onnx``, same input). A remote that is emulated (the QEMU userland of
``docker/arm64-userland.sh``) is labelled so: its timings say nothing about the board.

    .venv/bin/python -m benchmarks.remote PACKAGE [--rpc-tracker 127.0.0.1:9190] [--rpc-key rk3399]
"""
from __future__ import annotations

import argparse
import ipaddress
import json
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edge.errors import EdgeError, run_parsed
from edge.package import host_arch, load_package
from export.rpc import (  # noqa: F401
    DEFAULT_TRACKER,
    check_tracker,
    connect_tracker,
    parse_tracker,
    within,
)

DEFAULT_KEY = "rk3399"
EMULATION_MARKER = "/etc/vessel-edge-emulated"  # written into the emulated userland by docker/arm64-userland.sh

# ARM "CPU part" numbers of /proc/cpuinfo (implementer 0x41) for the cores these boards carry
_ARM_PARTS = {"0xd03": "Cortex-A53", "0xd04": "Cortex-A35", "0xd05": "Cortex-A55", "0xd07": "Cortex-A57",
              "0xd08": "Cortex-A72", "0xd09": "Cortex-A73", "0xd0a": "Cortex-A75", "0xd0b": "Cortex-A76"}


@dataclass(frozen=True)
class RemotePlatform:
    """What the remote says about itself; a field it cannot tell reads ``unavailable: <reason>``."""

    address: str      # host:port of the RPC server the tracker handed out
    cpu: str          # e.g. "2x Cortex-A72 (ARM part 0xd08)"
    os: str           # PRETTY_NAME of /etc/os-release
    board: str        # /proc/device-tree/model (a real board names itself there)
    emulated: bool
    emulation: str    # the evidence for ``emulated`` (or what was checked)


@dataclass(frozen=True)
class RemoteResult:
    package: str
    model: str
    arch: str                    # the architecture the package's library was built for
    tracker: str                 # host:port
    key: str
    platform: RemotePlatform
    timing: str                  # "board" or "emulated (QEMU): not a board timing"
    input_shape: tuple[int, ...]
    warmup: int
    samples_ms: tuple[float, ...]  # one per run, measured on the remote
    p50_ms: float
    p90_ms: float
    mean_ms: float
    min_ms: float
    max_ms: float
    parity_max_abs_diff: float | None  # max |difference| of probabilities, sigmoid(logits)
    parity_reference: str
    upload_bytes: int
    upload_s: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def request_session(tracker: str = DEFAULT_TRACKER, key: str = DEFAULT_KEY, timeout_s: float = 60.0,
                    session_timeout_s: float | None = None):
    """A TVM RPC session on a free server registered under ``key``, and the addresses of the servers with that
    key; :class:`EdgeError` within ``timeout_s`` when the tracker does not answer, does not know the key, or hands
    out no server. The server closes the session after ``session_timeout_s`` (default ``timeout_s``)."""
    host, port = parse_tracker(tracker)
    where = f"the TVM RPC tracker at {host}:{port}"
    deadline = time.monotonic() + timeout_s
    client, servers, close = connect_tracker(tracker, key, timeout_s)
    left = max(1.0, deadline - time.monotonic())
    session_s = timeout_s if session_timeout_s is None else session_timeout_s
    try:
        session = within(lambda: client.request(key, session_timeout=session_s, max_retry=1), left, "request",
                         close)
        return session, servers
    except TimeoutError:
        raise EdgeError(f"{where} knows key '{key}' ({len(servers)} server(s)) but handed out none within "
                        f"{timeout_s:.0f} s (all busy, or the server died?); check the board's rpc_server, or "
                        "wait longer with --rpc-timeout SECONDS") from None
    except (OSError, RuntimeError) as exc:
        raise EdgeError(f"{where} could not connect a session to a '{key}' server ({exc})") from exc
    finally:
        close()


def _first_line(exc: BaseException) -> str:
    lines = [ln.strip() for ln in str(exc).strip().splitlines() if ln.strip()]
    return (lines[0] if lines else type(exc).__name__)[:160]


def _remote_text(remote, path: str) -> tuple[str | None, str]:
    """A small text file of the remote (RPC download), or None and why not. The server sizes a file by seeking
    to its end: procfs files (size 0) do not come through, sysfs ones come NUL-padded to 4096 bytes."""
    try:
        data = bytes(remote.download(path)).rstrip(b"\x00")
    except Exception as exc:  # the RPC layer raises RPCError for a missing or unreadable file
        return None, f"unavailable: cannot read {path} over RPC ({type(exc).__name__})"
    return data.decode("utf-8", errors="replace"), ""


def describe_cpu(cpuinfo: str) -> str:
    """``'2x Cortex-A72 (ARM part 0xd08)'`` from an ARM /proc/cpuinfo; the model name of an x86 one."""
    parts = [line.split(":", 1)[1].strip().lower() for line in cpuinfo.splitlines()
             if line.lower().startswith("cpu part")]
    if parts:
        return _count_parts(parts)
    names = [line.split(":", 1)[1].strip() for line in cpuinfo.splitlines() if line.startswith("model name")]
    if names:
        return f"{len(names)}x {names[0]} (x86 /proc/cpuinfo)"
    return "unavailable: /proc/cpuinfo names no CPU"


def _count_parts(parts: list[str]) -> str:
    counts: dict[str, int] = {}
    for p in parts:
        counts[p] = counts.get(p, 0) + 1
    return ", ".join(f"{n}x {_ARM_PARTS.get(p, 'ARM core')} (ARM part {p})" for p, n in counts.items())


def _cpu_from_sysfs(remote) -> str | None:
    """The cores of an arm64 board from sysfs (MIDR_EL1 per online CPU), which RPC can read where procfs fails."""
    online, _ = _remote_text(remote, "/sys/devices/system/cpu/online")
    if not online:
        return None
    cpus: list[int] = []
    for span in online.strip().split(","):
        lo, _, hi = span.partition("-")
        if lo.isdigit():
            cpus += range(int(lo), int(hi or lo) + 1)
    parts = []
    for c in cpus:
        midr, _ = _remote_text(remote, f"/sys/devices/system/cpu/cpu{c}/regs/identification/midr_el1")
        if not midr:
            return None
        parts.append(f"0x{(int(midr.strip(), 16) >> 4) & 0xFFF:03x}")
    return _count_parts(parts)


def probe_platform(remote, address: str, package_arch: str) -> RemotePlatform:
    """Ask the remote about itself through RPC file downloads, and decide whether it is emulated."""
    cpuinfo, why_cpu = _remote_text(remote, "/proc/cpuinfo")
    cpu = describe_cpu(cpuinfo) if cpuinfo else (_cpu_from_sysfs(remote) or why_cpu)
    osrel, os_name = _remote_text(remote, "/etc/os-release")
    for line in (osrel or "").splitlines():
        if line.startswith("PRETTY_NAME="):
            os_name = line.split("=", 1)[1].strip().strip('"')
    model, why_board = _remote_text(remote, "/proc/device-tree/model")
    board = model.strip() if model else why_board

    evidence = []
    marker, _ = _remote_text(remote, EMULATION_MARKER)
    if marker:
        evidence.append(f"{EMULATION_MARKER}: {marker.strip()}")
    if package_arch == "aarch64" and "x86 /proc/cpuinfo" in cpu:
        evidence.append("it ran aarch64 code but its /proc/cpuinfo describes an x86 CPU (QEMU passes it through)")
    host = address.rsplit(":", 1)[0].strip("[]")
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = host == "localhost"
    if loopback and package_arch != host_arch():
        evidence.append(f"the server is on this {host_arch()} host ({address}) and ran {package_arch} code")
    return RemotePlatform(address=address, cpu=cpu, os=os_name, board=board, emulated=bool(evidence),
                          emulation="; ".join(evidence) or f"no sign of emulation ({EMULATION_MARKER}, "
                                                           "/proc/cpuinfo, server address)")


def host_reference(onnx_path: Path, x: np.ndarray) -> tuple[np.ndarray | None, str]:
    """The package's ONNX graph run by ONNX Runtime on this host, or None and why not."""
    try:
        import onnxruntime as ort
    except ImportError:
        return None, "unavailable: onnxruntime is not installed on the host"
    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x})[0], f"onnxruntime {ort.__version__} on the host"


def run_remote(package_dir: str | Path, tracker: str = DEFAULT_TRACKER, key: str = DEFAULT_KEY, runs: int = 10,
               warmup: int = 2, timeout_s: float = 300.0, seed: int = 0, reference: np.ndarray | None = None,
               seconds: float | None = None, wait_s: float | None = None) -> RemoteResult:
    """Upload the package's library to a ``key`` server of ``tracker``, run it there and time ``runs`` calls on
    the remote (after ``warmup`` untimed ones, the first of which gives the output checked for parity), or fewer
    when ``seconds`` of sampling run out (at least one). ``reference`` (the output for the seeded input) defaults
    to ONNX Runtime on this host. ``timeout_s`` bounds the whole remote session, ``wait_s`` (default ``timeout_s``)
    the tracker steps. A server that fails or goes away during the run is an :class:`EdgeError`."""
    if runs < 1 or warmup < 0:
        raise EdgeError(f"runs must be >= 1 and warmup >= 0 (got runs={runs}, warmup={warmup})")
    pkg = load_package(package_dir)
    if pkg.library is None:
        raise EdgeError(f"package {pkg.path} has no compiled library (ONNX only); export it with a TVM target "
                        "to run it over RPC")
    if pkg.device_kind != "cpu":
        raise EdgeError(f"package {pkg.path} targets {pkg.device_kind}; remote runs take CPU packages "
                        "(e.g. edge-export ... --target arm64)")
    import tvm
    from tvm.runtime.vm import VirtualMachine

    shape = pkg.input_shape
    x = np.random.default_rng(seed).random(shape, dtype=np.float32)
    if reference is None:
        reference, ref_label = host_reference(pkg.onnx, x)
    else:
        ref_label = "reference given by the caller"

    remote, addresses = request_session(tracker, key, timeout_s if wait_s is None else wait_s,
                                        session_timeout_s=timeout_s)
    # the tracker does not say which of several servers it picked; with one (the usual case) it is that one
    address = addresses[0] if len(addresses) == 1 else " or ".join(addresses)
    name = f"vessel_edge_{pkg.info.files[pkg.library.name]['sha256'][:12]}.so"
    try:
        t0 = time.perf_counter()
        remote.upload(str(pkg.library), target=name)
        upload_s = time.perf_counter() - t0
        try:
            rlib = remote.load_module(name)
        except Exception as exc:  # a library for another architecture fails in the remote's dlopen
            raise EdgeError(f"the '{key}' server could not load the package's {pkg.arch} library "
                            f"({_first_line(exc)}); export the package for the board's architecture") from exc
        dev = remote.cpu()
        vm = VirtualMachine(rlib, dev)
        xr = tvm.runtime.tensor(x, dev)
        out = vm["main"](xr)
        y = (out if hasattr(out, "numpy") else out[0]).numpy()
        for _ in range(max(0, warmup - 1)):
            vm["main"](xr)
        vm.save_function("main", "vessel_edge_main", xr)  # timed call without per-call argument marshalling
        samples = _sample(vm, dev, runs, seconds)
        plat = probe_platform(remote, address, pkg.arch or "unknown")
    except EdgeError:
        raise
    except Exception as exc:  # TVM's RPC layer raises its own error types when the connection breaks
        raise EdgeError(f"the '{key}' server at {address} failed during the run ({type(exc).__name__}: "
                        f"{_first_line(exc)}); check that the board and its rpc_server are still up, then run "
                        "again") from exc
    from export.onnx_stage import (
        compare,  # max |difference| of the probabilities, as edge-export gates stages
    )

    parity = None if reference is None else compare("the remote output", ref_label, y, reference).max_abs_diff
    a = np.asarray(samples)
    return RemoteResult(
        package=str(pkg.path), model=pkg.model_name, arch=pkg.arch or "unknown", tracker=tracker, key=key,
        platform=plat, timing="emulated (QEMU): not a board timing" if plat.emulated else "board",
        input_shape=tuple(shape), warmup=warmup, samples_ms=samples, p50_ms=float(np.percentile(a, 50)),
        p90_ms=float(np.percentile(a, 90)), mean_ms=float(a.mean()), min_ms=float(a.min()), max_ms=float(a.max()),
        parity_max_abs_diff=parity,
        parity_reference=ref_label, upload_bytes=pkg.library.stat().st_size, upload_s=upload_s)


def _sample(vm, dev, runs: int, seconds: float | None) -> tuple[float, ...]:
    """``runs`` samples (ms) from the VM's time evaluator on the remote; with ``seconds``, one sample first to
    learn the cost, then as many of the rest as fit. (Each evaluator call also makes one untimed call.)"""
    def timed(n: int) -> list[float]:
        return [float(s) * 1e3 for s in vm.time_evaluator("vessel_edge_main", dev, number=1, repeat=n)().results]

    if seconds is None:
        return tuple(timed(runs))
    t0 = time.perf_counter()
    samples = timed(1)
    per_run_s = (time.perf_counter() - t0) / 2  # the evaluator's untimed call + the sample
    more = min(runs - 1, int(max(0.0, seconds - (time.perf_counter() - t0)) / max(per_run_s, 1e-9)))
    return tuple(samples + (timed(more) if more > 0 else []))


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.remote", description=__doc__.splitlines()[0])
    ap.add_argument("package", help="package directory (edge-export --target arm64 ...)")
    ap.add_argument("--rpc-tracker", default=DEFAULT_TRACKER, help="HOST:PORT of the TVM RPC tracker")
    ap.add_argument("--rpc-key", default=DEFAULT_KEY, help="device key the board registered with")
    ap.add_argument("--runs", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--seconds", type=float, default=None, help="stop sampling after this long (at least 1 run)")
    ap.add_argument("--timeout", "--rpc-timeout", type=float, default=300.0,
                    help="seconds for the tracker steps and the session")
    ap.add_argument("--json", metavar="PATH", help="write the result as JSON")
    return ap


def main(argv: list[str] | None = None) -> int:
    return run_parsed(build_parser(), _run, argv)


def _run(args: argparse.Namespace) -> int:
    from edge.imageio import write_atomic

    r = run_remote(args.package, args.rpc_tracker, args.rpc_key, args.runs, args.warmup, args.timeout,
                   seconds=args.seconds)
    if args.json:
        write_atomic(args.json, (json.dumps(r.to_dict(), indent=2) + "\n").encode())
    p = r.platform
    print(f"remote   {p.address}  {p.cpu}  {p.os}  board: {p.board}")
    print(f"timing   {r.timing}" + (f" ({p.emulation})" if p.emulated else ""))
    print(f"latency  p50 {r.p50_ms:.2f} ms  p90 {r.p90_ms:.2f} ms  min {r.min_ms:.2f} ms  ({len(r.samples_ms)} runs "
          f"after {r.warmup} warm-up, timed on the remote)")
    parity = "n/a" if r.parity_max_abs_diff is None else f"{r.parity_max_abs_diff:.2e}"
    print(f"parity   max|dp| {parity} vs {r.parity_reference}")
    print(f"upload   {r.upload_bytes / 1e6:.2f} MB in {r.upload_s:.2f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
