"""benchmarks.remote over TVM RPC: a tracker on this host, an RPC server inside the emulated RK3399 userland (the
loopback is shared), an aarch64 package run and timed there, labelled emulated; errors within bounded time."""
from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from arm64_userland import stop
from loopback import accepts, free_port, wait_for
from benchmarks.remote import request_session, run_remote
from edge.errors import EdgeError

KEY = "rk3399"






def servers(tracker: str) -> list:
    from tvm import rpc

    host, port = tracker.rsplit(":", 1)
    t = rpc.connect_tracker(host, int(port))
    try:
        return t.summary()["server_info"]
    finally:
        t.close()




@pytest.fixture(scope="module")
def tracker(tmp_path_factory):
    port = free_port()
    log = tmp_path_factory.mktemp("rpc") / "tracker.log"
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "tvm.exec.rpc_tracker", "--host", "127.0.0.1",
                                 "--port", str(port), "--port-end", str(port + 1)],
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_for(lambda: accepts(port), 60, "the RPC tracker did not listen", proc, log)
        yield f"127.0.0.1:{port}"
    finally:
        stop(proc)


@pytest.fixture(scope="module")
def server(userland, tracker, tmp_path_factory):
    """``python3 -m tvm.exec.rpc_server`` inside the userland, registered with the tracker as rk3399."""
    port = free_port()
    log = tmp_path_factory.mktemp("rpc") / "server.log"
    with open(log, "w") as out:
        proc = userland.popen("python3", "-m", "tvm.exec.rpc_server", "--host", "127.0.0.1", "--port", port,
                              "--port-end", port + 1, "--tracker", tracker, "--key", KEY,
                              stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: any(s.get("key") == f"server:{KEY}" for s in servers(tracker)), 180,
                 "the emulated RPC server did not register with the tracker", proc, log)
        yield tracker
    finally:
        stop(proc)


@pytest.fixture(scope="module")
def arm_package(tmp_path_factory, cross_cxx) -> Path:
    """m2unet for arm64 at 128x128 (random weights: parity, not vessels, is what is checked)."""
    out = tmp_path_factory.mktemp("rpc-pkg") / "m2unet-arm64-128"
    r = subprocess.run([Path(sys.executable).with_name("edge-export"), "m2unet", "--target", "arm64",
                        "--input-size", "128", "--out", out], capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    return out


@pytest.mark.cross
@pytest.mark.slow
def test_run_remote_in_emulated_userland(server, arm_package):
    r = run_remote(arm_package, tracker=server, key=KEY, runs=3, warmup=1, timeout_s=300)
    assert r.platform.emulated
    assert r.timing.startswith("emulated")
    assert "/etc/vessel-edge-emulated" in r.platform.emulation
    assert r.platform.cpu.startswith("2x Cortex-A72")
    assert r.platform.os.startswith("Debian GNU/Linux 12")
    assert r.platform.address.startswith("127.0.0.1:")
    assert len(r.samples_ms) == 3 and min(r.samples_ms) > 0
    assert r.min_ms <= r.p50_ms <= r.max_ms
    assert r.parity_max_abs_diff is not None and r.parity_max_abs_diff <= 1e-4
    assert r.parity_reference.startswith("onnxruntime")
    assert r.upload_bytes == (arm_package / "model.so").stat().st_size
    assert r.input_shape == (1, 3, 128, 128)


@pytest.mark.cross
@pytest.mark.slow
def test_seconds_budget_stops_sampling_after_the_first_sample(server, arm_package):
    """edge-bench passes --seconds: sampling stops when it runs out, after at least one sample."""
    r = run_remote(arm_package, tracker=server, key=KEY, runs=5, warmup=0, seconds=0.01)
    assert len(r.samples_ms) == 1 and r.samples_ms[0] > 0


@pytest.mark.slow
def test_unknown_key_errors_within_bounded_time(tracker):
    t0 = time.monotonic()
    with pytest.raises(EdgeError) as e:
        request_session(tracker, "no-such-board", timeout_s=20)
    assert time.monotonic() - t0 < 15
    host, port = tracker.rsplit(":", 1)
    msg = str(e.value)
    assert f"{host}:{port}" in msg and "'no-such-board'" in msg and "rpc_server" in msg


def test_unreachable_tracker_errors_within_bounded_time():
    port = free_port()  # nothing listens there
    t0 = time.monotonic()
    with pytest.raises(EdgeError) as e:
        request_session(f"127.0.0.1:{port}", KEY, timeout_s=30)
    assert time.monotonic() - t0 < 5
    msg = str(e.value)
    assert f"127.0.0.1:{port}" in msg and "unreachable" in msg and f"--key {KEY}" in msg


def test_port_that_never_answers_errors_within_bounded_time():
    with socket.socket() as silent:  # accepts connections (kernel backlog) and never says a word
        silent.bind(("127.0.0.1", 0))
        silent.listen(4)
        port = silent.getsockname()[1]
        t0 = time.monotonic()
        with pytest.raises(EdgeError, match="does not answer as a tracker"):
            request_session(f"127.0.0.1:{port}", KEY, timeout_s=3)
        assert time.monotonic() - t0 < 8


def test_cli_reports_error_and_exit_code(tmp_path):
    port = free_port()
    r = subprocess.run([sys.executable, "-m", "benchmarks.remote", str(tmp_path), "--rpc-tracker",
                        f"127.0.0.1:{port}"], capture_output=True, text=True, timeout=60,
                       cwd=Path(__file__).resolve().parents[2])
    # the package is checked first: an empty directory is no package
    assert r.returncode == 3 and r.stderr.startswith("error: no package at")


@pytest.mark.cross
@pytest.mark.slow
def test_edge_bench_measures_a_package_through_the_tracker(server, arm_package, tmp_path):
    """`edge-bench PACKAGE --rpc-tracker HOST:PORT --rpc-key rk3399`: uploaded, run and timed remotely, checked."""
    import json

    from benchmarks.cli import main

    rc = main([str(arm_package), "--rpc-tracker", server, "--rpc-key", KEY, "--backends", "onnxruntime",
               "--runs", "2", "-o", str(tmp_path / "bench")])
    assert rc == 0
    doc = json.loads((tmp_path / "bench" / "results.json").read_text())
    remote = [c for run in doc["runs"] for c in run["cases"] if c["backend"] == "tvm-rpc"]
    assert len(remote) == 1 and remote[0]["status"] == "ok"
    assert remote[0]["info"]["parity_max_abs_diff"] <= 1e-4
    assert remote[0]["info"]["timing"].startswith("emulated")
    assert any("emulated" in n and "not a board timing" in n for n in remote[0]["notes"])
    assert remote[0]["latency"]["n_samples"] >= 1


@pytest.mark.cross
@pytest.mark.slow
def test_edge_export_tunes_for_arm64_through_the_tracker(server, userland, cross_cxx, tmp_path):
    """`edge-export --target arm64 --tune N --rpc-tracker --rpc-key`: MetaSchedule builds each candidate on this
    host, links it with the cross g++ and measures it on the emulated board (wall times mean nothing there;
    the flow and the code are what is checked); the package applies the database and runs on the board."""
    import json
    import textwrap

    import numpy as np
    import torch
    from torch import nn
    from torch.nn import functional as F

    from edge.package import load_package
    from export.onnx_stage import ort_run, torch_to_onnx
    from export.pipeline import export_model
    from export.targets import get_target
    from export.tuning import load_database

    class Pooled(nn.Module):  # a conv the hand kernels take, a max-pool they leave to tuning
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 8, 1)

        def forward(self, x):
            return F.max_pool2d(F.relu(self.conv(x)), 2)

    torch.manual_seed(0)
    shape = (1, 3, 16, 16)
    m, _ = torch_to_onnx(Pooled().eval(), shape, tmp_path / "pooled.onnx")
    db = tmp_path / "db"
    r = export_model(str(tmp_path / "pooled.onnx"), "arm64", out=tmp_path / "pkg", tune_trials=2, tuning_db=db,
                     rpc_tracker=server, rpc_key=KEY)
    records = [json.loads(ln) for ln in (db / "database_tuning_record.json").read_text().splitlines() if ln]
    assert records, "no tuning record came back from the emulated board"
    # run_secs of a failed measurement is 1e10: at least one candidate really ran on the board
    assert any(min(r[1][1]) < 1e9 for r in records), [r[1][1] for r in records]
    targets = [r[1][2] for r in records]
    assert all(t["mtriple"].startswith("aarch64") and t["mcpu"] == "cortex-a72" for t in targets), targets
    _, used = load_database(db, get_target("arm64").tvm_target())
    assert used >= 1
    meta = load_package(r.package).meta
    assert meta["tuning"]["tuned_kernels"] == 1 and meta["tuning"]["database"] == str(db)

    x = np.random.default_rng(0).random(shape, dtype=np.float32)
    np.save(tmp_path / "x.npy", x)
    (tmp_path / "run.py").write_text(textwrap.dedent("""\
        import sys
        import numpy as np
        import tvm
        from tvm.runtime.vm import VirtualMachine
        d = sys.argv[1]
        vm = VirtualMachine(tvm.runtime.load_module(d + "/pkg/model.so"), tvm.cpu())
        out = vm["main"](tvm.runtime.tensor(np.load(d + "/x.npy")))
        np.save(d + "/y.npy", (out if hasattr(out, "numpy") else out[0]).numpy())
        """))
    userland.run("python3", tmp_path / "run.py", tmp_path, binds=[tmp_path])
    assert float(np.abs(np.load(tmp_path / "y.npy") - ort_run(m, x)).max()) <= 1e-4


def test_edge_export_rpc_options_need_tune_and_a_reachable_tracker(cross_cxx, tmp_path, capsys):
    """One-line errors before any export work: RPC options without --tune, an unreachable tracker, and
    cross tuning without a tracker (which names the options)."""
    from export.cli import main

    assert main(["m2unet", "--input-size", "32", "--rpc-tracker", "127.0.0.1:1", "--rpc-key", KEY,
                 "--out", str(tmp_path / "a")]) != 0
    assert "only serve tuning" in capsys.readouterr().err
    assert main(["m2unet", "--target", "arm64", "--input-size", "32", "--tune", "2", "--tuning-db",
                 str(tmp_path / "db"), "--rpc-tracker", f"127.0.0.1:{free_port()}", "--rpc-key", KEY,
                 "--out", str(tmp_path / "b")]) != 0
    err = capsys.readouterr().err
    assert "unreachable" in err and "rpc_tracker" in err
    assert main(["m2unet", "--target", "arm64", "--input-size", "32", "--tune", "2", "--tuning-db",
                 str(tmp_path / "db"), "--out", str(tmp_path / "c")]) != 0
    err = capsys.readouterr().err
    assert "--rpc-tracker HOST:PORT" in err and "--rpc-key KEY" in err and "[edge-export]" not in err
    assert not any((tmp_path / d).exists() for d in "abc")
