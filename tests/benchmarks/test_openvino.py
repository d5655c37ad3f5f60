"""OpenVINO as an edge-bench backend: same outputs as ONNX Runtime on a tile and on a tiled image, in the default
list only when installed, and a one-line error naming the fix when asked for without it."""
from __future__ import annotations

import sys

import numpy as np
import pytest

from benchmarks.latency import OPENVINO_MISSING, create_runner, default_backends, tiled
from edge.errors import EdgeError

pytest.importorskip("openvino", reason="OpenVINO is not installed (pip install openvino; the bench extra has it)")


def test_openvino_matches_onnxruntime_on_a_tile_and_a_tiled_image(onnx_package):
    ov = create_runner("openvino", package=str(onnx_package), threads=1)
    ort = create_runner("onnxruntime", package=str(onnx_package), threads=1)
    assert ov.info["inference_num_threads"] == 1 and ov.info["inference_precision"] == "<Type: 'float32'>"
    x = np.random.default_rng(1).random((1, 3, 32, 32), dtype=np.float32)
    a, b = ov(x), ort(x)
    assert a.shape == b.shape == (1, 1, 32, 32) and np.abs(a).max() > 0.1
    assert np.abs(a - b).max() <= 1e-4
    img = np.random.default_rng(2).random((3, 70, 90), dtype=np.float32)  # 20 tiles of 32 px, overlap 8
    full_ov = tiled(ov, img, (32, 32), overlap=8, divisor=16)()
    full_ort = tiled(ort, img, (32, 32), overlap=8, divisor=16)()
    assert full_ov.shape == full_ort.shape == (1, 70, 90)
    assert np.abs(full_ov - full_ort).max() <= 1e-4


def test_missing_openvino_is_left_out_of_the_default_and_refused_when_asked_for(monkeypatch, tmp_path, capsys):
    from benchmarks.cli import main

    said: list[str] = []
    assert "openvino" in default_backends(said.append) and not said
    monkeypatch.setitem(sys.modules, "openvino", None)  # `import openvino` now raises ImportError
    assert [b for b in default_backends(said.append) if b not in ("ncnn", "mnn", "tflite")] == [
        "torch", "onnxruntime", "tvm"]
    assert said == [f"note: backend openvino skipped: {OPENVINO_MISSING}"]
    with pytest.raises(EdgeError, match=r"pip install openvino"):
        create_runner("openvino", package="unused")
    assert main(["m2unet", "--backends", "onnxruntime,openvino", "-o", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: backend openvino was asked for, but OpenVINO is not installed")
    assert err.count("\n") == 1 and "`pip install openvino`" in err
    assert not (tmp_path / "packages").exists()  # refused before exporting anything
