"""Every ``python -m`` entry point goes through edge.errors.run_cli: a bad argument is one ``error:`` line on
stderr and a non-zero exit, never a traceback."""
from __future__ import annotations

import pytest


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    return err


def test_remote_refuses_zero_runs(capsys, tmp_path):
    from benchmarks.remote import main

    assert main([str(tmp_path), "--runs", "0"]) == 2
    assert "runs must be >= 1" in one_line_error(capsys)


def test_remote_refuses_a_folder_that_is_no_package(capsys, tmp_path):
    from benchmarks.remote import main

    assert main([str(tmp_path / "missing")]) != 0
    one_line_error(capsys)


def test_memory_tiled_names_the_closest_case(capsys, tmp_path):
    from benchmarks.memory_tiled import main

    assert main(["--cases", "edge-tvm,torch-hole", "--weights", str(tmp_path / "w.pth")]) == 2
    assert "unknown case 'torch-hole'; did you mean 'torch-whole'?" in one_line_error(capsys)


def test_memory_tiled_refuses_a_missing_checkpoint(capsys, tmp_path):
    from benchmarks.memory_tiled import main

    assert main(["--weights", str(tmp_path / "w.pth")]) == 4
    assert "no checkpoint at" in one_line_error(capsys)


@pytest.mark.parametrize("argv, message", [
    (["--backends", "onnxruntime,tvm-defualt"], "did you mean 'tvm-default'?"),
    (["--images", "2336by3504"], "image size"),
    (["--backends", "onnxruntime,tvm-default", "--budget-ms", "500"], "--budget-ms goes with --interleave"),
    (["--interleave", "--min-samples", "0"], "--min-samples must be >= 1"),
    (["--a72-threads", "2"], "go with --a72-proxy"),
    (["--a72-no-ort"], "go with --a72-proxy"),
])
def test_edge_bench_refuses_bad_timing_options_in_one_line(capsys, tmp_path, argv, message):
    """What python -m benchmarks.x86_speed checked, now edge-bench's options (tvm-default is a backend)."""
    from benchmarks.cli import main

    assert main(["m2unet", *argv, "-o", str(tmp_path)]) == 2
    assert message in one_line_error(capsys)
    assert not (tmp_path / "packages").exists()  # refused before any export


def test_default_weights_refuses_a_missing_checkpoint(capsys, tmp_path):
    from models.train.default_weights import main

    assert main(["--measure", str(tmp_path / "none.pth"), "--reference", str(tmp_path / "ref.pth")]) == 2
    assert "weights file not found" in one_line_error(capsys)
