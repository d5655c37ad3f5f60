"""Hostile RPC set-ups for edge-bench PACKAGE --rpc-tracker and edge-export --tune --rpc-tracker: a tracker that is
not there, a HOST:PORT that is not one, a tracker without the board's key, a board that is busy, and a board whose
server dies in the middle of the run. Every one ends in bounded time with one line and no report; and every RPC
tracker or server the project starts itself binds the loopback.

The tracker and server here are the host's own (``python -m tvm.exec.rpc_tracker`` / ``rpc_server`` on
127.0.0.1) running an x86 package: the same protocol as a board, in seconds instead of the emulated userland's
minutes."""
from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import hostile_corpus as H
from loopback import accepts, free_port, wait_for
import pytest

from benchmarks.cli import main as bench_main
from export.cli import main as export_main

ROOT = Path(__file__).resolve().parents[2]
KEY = "hostile-x86"






def registered(tracker_port: int) -> list[str]:
    from tvm import rpc

    t = rpc.connect_tracker("127.0.0.1", tracker_port)
    try:
        return [str(s.get("key")) for s in t.summary()["server_info"]]
    finally:
        t.close()




def stop(proc: subprocess.Popen) -> None:
    """End the process group we started (the server forks a child per session)."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def listening_ips(pid: int) -> set[str]:
    import psutil

    procs = [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]
    return {c.laddr.ip for p in procs for c in p.net_connections(kind="inet") if c.status == psutil.CONN_LISTEN}


@pytest.fixture(scope="module")
def package(tmp_path_factory) -> Path:
    return H.build_package(tmp_path_factory.mktemp("rpc-pkg") / "tiny")


@pytest.fixture(scope="module")
def tracker(tmp_path_factory):
    port = free_port()
    log = tmp_path_factory.mktemp("rpc-log") / "tracker.log"
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "tvm.exec.rpc_tracker", "--host", "127.0.0.1", "--port",
                                 str(port), "--port-end", str(port + 1)], stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    try:
        wait_for(lambda: accepts(port), 60, "the RPC tracker did not listen", proc, log)
        assert listening_ips(proc.pid) == {"127.0.0.1"}
        yield port
    finally:
        stop(proc)


@pytest.fixture
def server(tracker, tmp_path_factory):
    """An RPC server of this host registered with the tracker under KEY; the test may kill it."""
    port = free_port()
    log = tmp_path_factory.mktemp("rpc-log") / "server.log"
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "tvm.exec.rpc_server", "--host", "127.0.0.1", "--port",
                                 str(port), "--port-end", str(port + 1), "--tracker", f"127.0.0.1:{tracker}",
                                 "--key", KEY], stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_for(lambda: f"server:{KEY}" in registered(tracker), 60, "the RPC server did not register", proc, log)
        assert listening_ips(proc.pid) <= {"127.0.0.1"}
        yield proc
    finally:
        stop(proc)


def bench_argv(package: Path, out: Path, tracker: str, key: str = KEY, *extra) -> list:
    return [package, "--backends", "onnxruntime", "--images", "none", "--runs", "2", "--warmup", "0",
            "--rpc-tracker", tracker, "--rpc-key", key, "-o", out, *extra]


def tune_argv(out: Path, tracker: str, target: str = "x86_64") -> list:
    return ["m2unet", "--target", target, "--input-size", "32", "--tune", "2", "--tuning-db", out / "db",
            "--rpc-tracker", tracker, "--rpc-key", KEY, "--out", out / "pkg"]


# ----------------------------------------------------------------------------------------- no tracker needed

def test_edge_bench_unreachable_tracker(package, tmp_path, expect_refusal):
    port = free_port()
    t0 = time.monotonic()
    expect_refusal(bench_main, bench_argv(package, tmp_path / "bench", f"127.0.0.1:{port}"),
                   watch=[tmp_path, package], rc=2,
                   match=rf"tracker at 127\.0\.0\.1:{port} is unreachable .*start one with .*rpc_tracker")
    assert time.monotonic() - t0 < 10


MALFORMED = ["nohostport", "127.0.0.1:99999", "127.0.0.1:0", ":9190", "127.0.0.1:port", "[::1]", "127.0.0.1:-1"]


@pytest.mark.parametrize("tracker", MALFORMED)
def test_edge_bench_malformed_tracker(tracker, package, tmp_path, expect_refusal):
    expect_refusal(bench_main, bench_argv(package, tmp_path / "bench", tracker), watch=[tmp_path, package], rc=2,
                   match=r"--rpc-tracker must look like HOST:PORT with a port in 1-65535")


@pytest.mark.parametrize("tracker", MALFORMED)
def test_edge_export_tune_malformed_tracker(tracker, tmp_path, expect_refusal):
    expect_refusal(export_main, tune_argv(tmp_path, tracker), watch=[tmp_path], rc=2,
                   match=r"--rpc-tracker must look like HOST:PORT with a port in 1-65535")


@pytest.mark.parametrize("target", ["x86_64", "arm64"])
def test_edge_export_tune_unreachable_tracker(target, tmp_path, expect_refusal):
    if target == "arm64" and shutil.which("aarch64-linux-gnu-g++") is None:
        pytest.skip("the arm64 target needs aarch64-linux-gnu-g++ (checked first)")
    port = free_port()
    t0 = time.monotonic()
    expect_refusal(export_main, tune_argv(tmp_path, f"127.0.0.1:{port}", target), watch=[tmp_path], rc=2,
                   match=rf"tracker at 127\.0\.0\.1:{port} is unreachable .*rpc_tracker")
    assert time.monotonic() - t0 < 15
    assert not (tmp_path / "db").exists() and not (tmp_path / "pkg").exists()


def test_edge_bench_rpc_timeout_must_be_positive(package, tmp_path, expect_refusal):
    expect_refusal(bench_main, bench_argv(package, tmp_path / "bench", f"127.0.0.1:{free_port()}", KEY,
                                          "--rpc-timeout", "0"),
                   watch=[tmp_path], rc=2, match=r"--rpc-timeout must be a positive number of seconds")


def test_every_rpc_process_the_project_starts_binds_the_loopback():
    """The project's own trackers and servers (tests, scripts, tools) pass --host 127.0.0.1: TVM's default is
    0.0.0.0, which would offer this machine's RPC (arbitrary code upload) to the network. Commands quoted for a
    user to run on a real board (README, error messages) are a documented choice and not launches."""
    launches, bad = 0, []
    for folder in ("benchmarks", "export", "docker", "tests", "edge", "models"):
        for f in sorted((ROOT / folder).rglob("*")):
            if f.suffix not in (".py", ".sh") or "__pycache__" in f.parts:
                continue
            text = f.read_text(errors="replace")
            if f.suffix == ".py":  # argv lists whose elements are the module name, then options
                hits = [(m.start(), text[m.start():text.find(")", m.end()) + 1])
                        for m in re.finditer(r"[\"']tvm\.exec\.rpc_(?:server|tracker)[\"']", text)]
                ok = lambda s: re.search(r"[\"']--host[\"'],\s*[\"']127\.0\.0\.1[\"']", s)
            else:  # shell: a command line that runs the module
                hits = [(m.start(), m.group(0)) for m in re.finditer(r"^(?!\s*(?:#|echo)).*-m\s+tvm\.exec\.rpc_\w+.*$",
                                                                     text, re.MULTILINE)]
                ok = lambda s: re.search(r"--host\s+127\.0\.0\.1\b", s)
            for pos, stmt in hits:
                launches += 1
                if not ok(stmt):
                    bad.append(f"{f.relative_to(ROOT)}:{text.count(chr(10), 0, pos) + 1}: {stmt[:120]}")
    assert launches >= 4, "the audit found none of the known launches (tests/arm64/test_rpc.py, this file)"
    assert not bad, "RPC processes started without --host 127.0.0.1:\n" + "\n".join(bad)


# ----------------------------------------------------------------------------------- a real tracker on loopback

@pytest.mark.slow
def test_edge_bench_tracker_without_the_key(tracker, package, tmp_path, expect_refusal):
    """Refused before any export or local run, naming the key and the command that registers a board."""
    t0 = time.monotonic()
    r = expect_refusal(bench_main, bench_argv(package, tmp_path / "bench", f"127.0.0.1:{tracker}", "no-such-board"),
                       watch=[tmp_path, package], rc=2,
                       match=r"has no RPC server registered with key 'no-such-board'; .*rpc_server --tracker")
    assert time.monotonic() - t0 < 15
    assert "[edge-bench] complexity" not in r.stderr  # nothing was measured first


@pytest.mark.slow
def test_edge_export_tune_tracker_without_the_key(tracker, tmp_path, expect_refusal):
    """MetaSchedule's runner would wait for a server with the key forever: refused before any work instead."""
    t0 = time.monotonic()
    expect_refusal(export_main, tune_argv(tmp_path, f"127.0.0.1:{tracker}"), watch=[tmp_path], rc=2,
                   match=rf"has no RPC server registered with key '{KEY}'")
    assert time.monotonic() - t0 < 15
    assert not (tmp_path / "db").exists()


@pytest.mark.slow
def test_edge_bench_busy_board_times_out(server, tracker, package, tmp_path, expect_refusal):
    """The board's only server is taken by another session: --rpc-timeout bounds the wait, no report."""
    from tvm import rpc

    holder = rpc.connect_tracker("127.0.0.1", tracker).request(KEY, session_timeout=60)
    try:
        t0 = time.monotonic()
        expect_refusal(bench_main, bench_argv(package, tmp_path / "bench", f"127.0.0.1:{tracker}", KEY,
                                              "--rpc-timeout", "3"),
                       watch=[tmp_path, package], rc=2,
                       match=rf"knows key '{KEY}' \(1 server\(s\)\) but handed out none within 3 s .*--rpc-timeout")
        assert time.monotonic() - t0 < 20
    finally:
        del holder


@pytest.mark.slow
def test_edge_bench_board_that_dies_mid_run(server, tracker, package, tmp_path, expect_refusal, monkeypatch):
    """The server is killed after the library is uploaded and run once, before the timed runs: one line, and no
    report with the remote case missing or marked failed."""
    from benchmarks import remote

    sample = remote._sample

    def die_then_sample(*args, **kw):
        os.killpg(server.pid, signal.SIGKILL)
        server.wait()
        return sample(*args, **kw)

    monkeypatch.setattr(remote, "_sample", die_then_sample)
    t0 = time.monotonic()
    expect_refusal(bench_main, bench_argv(package, tmp_path / "bench", f"127.0.0.1:{tracker}"),
                   watch=[tmp_path, package], rc=2,
                   match=rf"the '{KEY}' server at 127\.0\.0\.1:\d+ failed during the run .*rpc_server are still up")
    assert time.monotonic() - t0 < 60
    assert server.poll() is not None  # it really died during the run


@pytest.mark.slow
def test_edge_bench_through_the_tracker_works(server, tracker, package, tmp_path, capsys):
    """Control: the same command line with a live board writes the report with the tvm-rpc case."""
    import json

    assert bench_main([str(a) for a in bench_argv(package, tmp_path / "bench", f"127.0.0.1:{tracker}")]) == 0
    doc = json.loads((tmp_path / "bench" / "results.json").read_text())
    rpc_cases = [c for r in doc["runs"] for c in r["cases"] if c["backend"] == "tvm-rpc"]
    assert len(rpc_cases) == 1 and rpc_cases[0]["status"] == "ok"
    assert rpc_cases[0]["info"]["parity_max_abs_diff"] <= 1e-4
