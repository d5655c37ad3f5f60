"""edge-bench on the command line: one-line errors with suggestions, plans, and a small run end to end."""
from __future__ import annotations

import json

import pytest

from benchmarks.cli import main
from benchmarks.latency import cuda_device_present


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    return err


def test_unknown_backend_names_the_closest(capsys, tmp_path):
    assert main(["m2unet", "--backends", "torch,onnxrutime", "-o", str(tmp_path)]) == 2
    assert "unknown backend 'onnxrutime'; did you mean 'onnxruntime'?" in one_line_error(capsys)


def test_unknown_model_and_meter_name_the_closest(capsys, tmp_path):
    assert main(["m2unte", "--backends", "tvm", "-o", str(tmp_path)]) == 2
    assert "did you mean 'm2unet'?" in one_line_error(capsys)
    assert main(["m2unet", "--meter", "rappl", "-o", str(tmp_path)]) == 2
    assert "unknown meter 'rappl'; did you mean 'rapl'?" in one_line_error(capsys)


@pytest.mark.skipif(cuda_device_present(), reason="this machine has a CUDA GPU")
def test_cuda_asked_for_on_a_cpu_machine_is_one_line(capsys, tmp_path):
    assert main(["m2unet", "--backends", "torch,torch-cuda", "-o", str(tmp_path)]) == 2
    err = one_line_error(capsys)
    assert "backend torch-cuda needs CUDA but no CUDA device" in err and "--gpu-baselines" in err
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps({"models": ["m2unet"], "backends": ["tvm-cuda"]}))
    assert main(["--plan", str(plan), "-o", str(tmp_path)]) == 2
    assert "backend tvm-cuda needs CUDA" in one_line_error(capsys)
    assert not list(tmp_path.glob("packages"))  # refused before exporting anything


def test_plan_keys_and_values_are_checked(capsys, tmp_path):
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps({"models": ["m2unet"], "backend": ["tvm"]}))
    assert main(["--plan", str(plan)]) == 2
    assert "unknown plan key 'backend'; did you mean 'backends'?" in one_line_error(capsys)
    assert main(["m2unet", "--sizes", "54x", "-o", str(tmp_path)]) == 2
    assert "must look like 544 or 544x960" in one_line_error(capsys)
    assert main(["m2unet", "--sizes", "500", "--backends", "tvm", "-o", str(tmp_path)]) == 2
    assert "multiples of 16" in one_line_error(capsys)
    assert main(["-o", str(tmp_path)]) == 2
    assert "name at least one model" in one_line_error(capsys)


def test_remote_run_without_a_key_or_a_tracker_is_refused_before_exporting(capsys, tmp_path):
    assert main(["m2unet", "--rpc-tracker", "127.0.0.1:9190", "-o", str(tmp_path)]) == 2
    assert "--rpc-key" in one_line_error(capsys)
    assert main(["m2unet", "--rpc-tracker", "127.0.0.1:1", "--rpc-key", "rk3399", "-o", str(tmp_path)]) == 2
    assert "tracker at 127.0.0.1:1 is unreachable" in one_line_error(capsys)
    assert main(["m2unet", "--rpc-tracker", "nohostport", "--rpc-key", "rk3399", "-o", str(tmp_path)]) == 2
    assert "HOST:PORT" in one_line_error(capsys)
    assert not (tmp_path / "packages").exists()


def test_a_remote_case_records_the_boards_samples_and_platform(monkeypatch):
    import benchmarks.remote as remote
    from benchmarks.child import CaseSpec
    from benchmarks.packages import Artifact
    from benchmarks.plan import Plan
    from benchmarks.suite import _remote_case

    plat = remote.RemotePlatform(address="10.0.0.7:9090", cpu="2x Cortex-A72 (ARM part 0xd08)", os="Debian 12",
                                 board="unavailable: emulated", emulated=True, emulation="QEMU marker file")
    seen = {}

    def fake_run_remote(package_dir, **kw):
        seen.update(kw, package=package_dir)
        return remote.RemoteResult(
            package=str(package_dir), model="m2unet", arch="aarch64", tracker=kw["tracker"], key=kw["key"],
            platform=plat, timing="emulated (QEMU): not a board timing", input_shape=(1, 3, 544, 544), warmup=2,
            samples_ms=(580.0, 577.0, 590.0), p50_ms=580.0, p90_ms=588.0, mean_ms=582.3, min_ms=577.0,
            max_ms=590.0, parity_max_abs_diff=2e-6, parity_reference="onnxruntime on this host", upload_bytes=1,
            upload_s=0.1)

    monkeypatch.setattr(remote, "run_remote", fake_run_remote)
    art = Artifact("m2unet", True, None, [544, 544], 16, 64, package="pkg-x86", remote_package="pkg-arm64")
    plan = Plan(models=["m2unet"], runs=3, warmup=2, seconds=30.0, rpc_tracker="10.0.0.1:9190", rpc_key="rk3399")
    rec = _remote_case(art, CaseSpec("tvm-rpc", "tile", [544, 544]), plan)
    assert seen["package"] == "pkg-arm64" and seen["key"] == "rk3399" and seen["runs"] == 3
    assert rec["backend"] == "tvm-rpc" and rec["status"] == "ok" and rec["latency"]["p50_ms"] == 580.0
    assert "Cortex-A72" in rec["device"] and "emulated" in rec["device"]
    assert rec["info"]["parity_max_abs_diff"] == 2e-6 and any("not a board timing" in n for n in rec["notes"])
    assert rec["energy"]["status"].startswith("unavailable: remote run")


@pytest.fixture(scope="module")
def small_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    code = main(["m2unet", "--sizes", "64", "--backends", "torch,onnxruntime,tvm", "--runs", "3",
                 "--gpu-baselines", "-o", str(out)])
    return code, out


@pytest.mark.slow
def test_small_end_to_end_run_writes_every_number(small_run):
    code, out = small_run
    assert code == 0
    data = json.loads((out / "results.json").read_text())
    run = data["runs"][0]
    cx = run["complexity"][0]
    assert cx["input_shape"] == [1, 3, 64, 64] and cx["params"] == 549_748
    assert cx["macs"] == cx["macs_torch_flopcounter"] > 0
    assert cx["onnx_bytes"] > 0 and cx["library_bytes"] > 0 and cx["tvm_planned_mib"] > 0
    ok = {c["backend"]: c for c in run["cases"] if c["status"] == "ok"}
    assert sorted(ok) == ["onnxruntime", "torch", "tvm"]
    for c in ok.values():
        assert c["latency"]["n_samples"] == 3 and c["latency"]["p50_ms"] > 0
        assert c["memory"]["isolated"] and c["memory"]["peak_rss_mib"] > c["memory"]["rss_after_load_mib"] * 0.5
        assert c["energy"]["kind"] in ("measured", "estimated", "unavailable")
        if c["energy"]["kind"] == "unavailable":
            assert c["energy"]["energy_j"] is None and c["energy"]["status"].startswith("unavailable: ")
    # each backend ran in its own process: the ONNX Runtime child never imported torch
    assert ok["onnxruntime"]["memory"]["peak_rss_mib"] < ok["torch"]["memory"]["peak_rss_mib"]
    assert ok["tvm"]["info"]["runtime_only"] is True
    # every backend's output of the same input against ONNX Runtime's (shipped weights in all three)
    assert "parity" not in ok["onnxruntime"]["info"]
    for b in ("torch", "tvm"):
        p = ok[b]["info"]["parity"]
        assert p["reference"] == "onnxruntime" and p["passed"] and p["max_abs_diff_prob"] <= 1e-4, p
    if not cuda_device_present():
        gpu = [c for c in run["cases"] if c["backend"].endswith("-cuda")]
        assert len(gpu) == 3 and all(c["status"] == "unavailable: no CUDA device" for c in gpu)
    assert any("544x544 tile" in n for n in run["notes"])  # full images need the model's tile: said, not hidden
    assert run["machine"]["cpu_model"] and run["machine"]["llvm_cpu"]
    for name in ("report.html", "report.md", "results.csv", "complexity.csv"):
        assert (out / name).stat().st_size > 0


@pytest.mark.slow
def test_interleaved_rerun_reuses_the_package(small_run, capsys):
    code, out = small_run
    assert code == 0
    capsys.readouterr()
    assert main(["m2unet", "--sizes", "64", "--backends", "onnxruntime,tvm", "--runs", "4", "--interleave",
                 "-o", str(out)]) == 0
    captured = capsys.readouterr()
    assert "reusing" in captured.err and "TVM / ONNX Runtime = " in captured.out
    run = json.loads((out / "results.json").read_text())["runs"][0]
    for c in run["cases"]:
        assert c["interleaved"] and c["latency"]["n_samples"] == 4
        assert c["memory"]["measured_in"].startswith("own process")  # memory from an isolated child
        assert c["energy"]["status"].startswith("unavailable: interleaved run")
    tvm = next(c for c in run["cases"] if c["backend"] == "tvm")
    assert tvm["info"]["parity"]["passed"]


def test_parity_is_against_onnxruntime_and_a_mismatch_is_noted(tmp_path):
    import numpy as np

    from benchmarks.suite import attach_parity

    ref = np.zeros((1, 1, 4, 4), np.float32)
    np.save(tmp_path / "onnxruntime.npy", ref)
    np.save(tmp_path / "tvm.npy", ref + 1e-6)
    np.save(tmp_path / "openvino.npy", ref + 0.5)  # sigmoid(0.5) - 0.5 = 0.12
    np.save(tmp_path / "torch.npy", np.zeros((1, 1, 2, 2), np.float32))
    recs = {b: {"backend": b, "status": "ok", "info": {}, "notes": []}
            for b in ("onnxruntime", "tvm", "openvino", "torch")}
    attach_parity(recs, tmp_path)
    assert recs["tvm"]["info"]["parity"]["passed"] and not recs["tvm"]["notes"]
    bad = recs["openvino"]["info"]["parity"]
    assert not bad["passed"] and abs(bad["max_abs_diff_prob"] - 0.1225) < 1e-3
    assert "differs from onnxruntime" in recs["openvino"]["notes"][0]
    assert "shape" in recs["torch"]["info"]["parity"]["error"]
    # an output of another shape is not the same model (MNN's empty output of a QDQ graph): no time, no ratio
    assert recs["torch"]["status"] == ("failed: output shape [1, 1, 2, 2], onnxruntime's [1, 1, 4, 4]: not the same "
                                       "model (a broken conversion)")
    assert "parity" not in recs["onnxruntime"]["info"]


def test_busy_machine_is_said_in_the_notes():
    from benchmarks.suite import busy_note

    quiet = [{"load_avg_1m": [0.5, 1.2]}, {"load_avg_1m": None}]
    assert busy_note(quiet, cores=2) is None
    note = busy_note(quiet + [{"load_avg_1m": [3.0, 7.25]}], cores=2)
    assert "load average up to 7.2 on 2 cores" in note and "--interleave" in note


def tiny_onnx(tmp_path):
    """Two 3x3 convolutions with seeded random weights, exported from torch to tmp_path/tiny.onnx (32x32)."""
    import warnings

    import torch

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.ReLU(),
                              torch.nn.Conv2d(4, 1, 3, padding=1)).eval()
    onnx_path = tmp_path / "tiny.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, torch.rand(1, 3, 32, 32), str(onnx_path), opset_version=17, dynamo=False,
                          input_names=["input"], output_names=["logits"])
    return onnx_path


@pytest.mark.slow
def test_an_onnx_file_is_benchmarked_without_pytorch_and_its_package_reused(tmp_path, capsys):
    onnx_path = tiny_onnx(tmp_path)
    args = [str(onnx_path), "--backends", "torch,onnxruntime,tvm", "--runs", "2", "-o", str(tmp_path / "out")]
    assert main(args) == 0
    run = json.loads((tmp_path / "out" / "results.json").read_text())["runs"][0]
    by = {c["backend"]: c for c in run["cases"]}
    assert by["torch"]["status"].startswith("unavailable: no PyTorch model")
    assert by["onnxruntime"]["status"] == by["tvm"]["status"] == "ok"
    assert run["complexity"][0]["macs"] == 32 * 32 * (4 * 27 + 36) and run["complexity"][0]["params_source"] == \
        "onnx initializers"
    capsys.readouterr()
    assert main(args) == 0
    assert "reusing" in capsys.readouterr().err


@pytest.mark.slow
def test_tvm_default_lowering_is_a_backend_timed_beside_the_hand_kernels(tmp_path, capsys):
    """What python -m benchmarks.x86_speed measured, as edge-bench options: TVM's default lowering of the same
    graph interleaved with TVM and ONNX Runtime, parity to ONNX Runtime, fewer samples per full image."""
    onnx_path = tiny_onnx(tmp_path)
    args = [str(onnx_path), "--backends", "onnxruntime,tvm,tvm-default", "--images", "64x96", "--runs", "4",
            "--image-runs", "2", "--interleave", "--budget-ms", "60000", "-o", str(tmp_path / "out")]
    assert main(args) == 0
    out = capsys.readouterr().out
    run = json.loads((tmp_path / "out" / "results.json").read_text())["runs"][0]
    by = {(c["backend"], c["kind"]): c for c in run["cases"]}
    dflt = by[("tvm-default", "tile")]
    assert dflt["status"] == "ok" and dflt["backend_label"] == "TVM default lowering"
    assert dflt["info"]["library"].endswith("-tvm-default.so") and "default" in dflt["info"]["lowering"]
    assert dflt["info"]["parity"]["passed"] and dflt["latency"]["p10_ms"] <= dflt["latency"]["p50_ms"]
    assert by[("tvm", "tile")]["info"]["library"].endswith("model.so")
    assert all(by[(b, "image")]["latency"]["n_samples"] == 2 for b in ("onnxruntime", "tvm", "tvm-default"))
    assert by[("tvm", "tile")]["latency"]["n_samples"] == 4
    assert "TVM default lowering / ONNX Runtime = " in out
    assert main(args) == 0
    err = capsys.readouterr().err.splitlines()
    assert any("reusing" in ln and ln.endswith("-tvm-default.so") for ln in err)  # not rebuilt
    assert not any("default lowering ->" in ln for ln in err)
