"""ncnn, MNN and LiteRT XNNPACK as peers (benchmarks.peers): each converted from a package's ONNX agrees with ONNX
Runtime on a tile and on a tiled image, conversions are cached and leave nothing half-written, MNN's converter runs
without its network log, a missing converter is one line naming the fix, and edge-bench times them beside ONNX
Runtime with a parity figure."""
from __future__ import annotations

import importlib.util
import json
import sys

import numpy as np
import pytest

from benchmarks import peers
from benchmarks.latency import create_runner, default_backends, tiled
from edge.errors import EdgeError
from export.onnx_stage import compare

NAMES = list(peers.PEERS)


@pytest.fixture
def cache(tmp_path, monkeypatch):
    d = tmp_path / "peer-cache"
    monkeypatch.setenv("VESSEL_EDGE_PEER_CACHE", str(d))
    return d


@pytest.mark.parametrize("name", NAMES)
def test_each_peer_matches_onnxruntime_on_a_tile_and_a_tiled_image(name, onnx_package, cache):
    reason = peers.missing(name)
    assert reason is None, reason  # setup.sh installs every peer: a missing one is a broken setup, not a skip
    peer = create_runner(name, package=str(onnx_package), threads=1)
    ort = create_runner("onnxruntime", package=str(onnx_package), threads=1)
    assert peer.info["threads"] == 1 and peer.info["version"]
    x = np.random.default_rng(1).random((1, 3, 32, 32), dtype=np.float32)
    a, b = peer(x), ort(x)
    assert a.shape == b.shape == (1, 1, 32, 32) and np.abs(b).max() > 0.1
    assert compare(name, "ort", a, b).max_abs_diff <= 1e-4
    img = np.random.default_rng(2).random((3, 70, 90), dtype=np.float32)
    full = tiled(peer, img, (32, 32), overlap=8, divisor=16)()
    assert np.abs(full - tiled(ort, img, (32, 32), overlap=8, divisor=16)()).max() <= 1e-4
    (entry,) = cache.iterdir()  # one finished conversion, no scratch folder left
    assert entry.name.startswith(f"{name}-") and entry.name.endswith("-1x3x32x32")


def test_a_conversion_is_cached_and_keyed_by_the_onnx_file(onnx_package, cache, tmp_path):
    from tests.benchmarks.conftest import write_onnx_package

    first = peers.convert("mnn", onnx_package / "model.onnx", [1, 3, 32, 32])
    stamp = first.stat().st_mtime_ns
    assert peers.convert("mnn", onnx_package / "model.onnx", [1, 3, 32, 32]) == first
    assert first.stat().st_mtime_ns == stamp  # read from the cache, not converted again
    other = write_onnx_package(tmp_path / "other", seed=5)
    assert peers.convert("mnn", other / "model.onnx", [1, 3, 32, 32]).parent != first.parent


def test_mnn_conversion_sends_no_log_and_installs_nothing(onnx_package, cache):
    # MNN's own mnnconvert script pip-installs aliyun-log-python-sdk (which downgrades protobuf) to send a usage log
    assert importlib.util.find_spec("aliyun") is None
    peers.convert("mnn", onnx_package / "model.onnx", [1, 3, 32, 32])
    assert importlib.util.find_spec("aliyun") is None


def test_a_failed_conversion_is_one_line_and_leaves_no_cache_entry(tmp_path, cache):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not an onnx file")
    for name in NAMES:
        with pytest.raises(EdgeError) as e:
            peers.convert(name, bad, [1, 3, 32, 32])
        assert "\n" not in str(e.value) and ("failed" in str(e.value) or "wrote no" in str(e.value)), e.value
    assert not cache.exists() or not any(cache.iterdir())
    with pytest.raises(EdgeError, match=r"does not exist; a peer is converted from the package's model.onnx"):
        peers.convert("ncnn", tmp_path / "nowhere.onnx", [1, 3, 32, 32])


def test_a_missing_converter_or_runtime_names_the_fix(monkeypatch, onnx_package, cache, tmp_path, capsys):
    from benchmarks.cli import main

    monkeypatch.setattr(peers, "onnx2tf_exe", lambda: None)
    assert "setup.sh --no-demo` (it makes .venv-onnx2tf)" in peers.missing("tflite")
    with pytest.raises(EdgeError, match=r"^onnx2tf is not installed"):
        peers.convert("tflite", onnx_package / "model.onnx", [1, 3, 32, 32])
    said: list[str] = []
    assert "tflite" not in default_backends(said.append)
    assert any(s.startswith("note: backend tflite skipped: onnx2tf is not installed") for s in said)
    monkeypatch.setitem(sys.modules, "ncnn", None)
    assert peers.missing("ncnn").startswith("ncnn is not installed; run `pip install ncnn pnnx`")
    assert main([str(onnx_package), "--backends", "onnxruntime,ncnn", "-o", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: backend ncnn was asked for, but ncnn is not installed") and err.count("\n") == 1


def test_peer_names_are_checked():
    assert peers.parse_peers("all") == NAMES and peers.parse_peers("mnn, ncnn,mnn") == ["mnn", "ncnn"]
    with pytest.raises(EdgeError, match=r"unknown peer engine 'ncn'; did you mean 'ncnn'\?"):
        peers.parse_peers("ncn")


@pytest.mark.slow
def test_edge_bench_times_the_peers_beside_onnxruntime_with_parity(onnx_package, cache, tmp_path, capsys):
    from benchmarks.cli import main

    out = tmp_path / "bench"
    assert main([str(onnx_package), "--backends", "onnxruntime,ncnn,mnn,tflite", "--images", "none", "--runs", "3",
                 "--threads", "1", "--interleave", "-o", str(out)]) == 0
    run = json.loads((out / "results.json").read_text())["runs"][0]
    cases = {c["backend"]: c for c in run["cases"]}
    assert set(cases) == {"onnxruntime", "ncnn", "mnn", "tflite"}, run["notes"]
    for name in NAMES:
        c = cases[name]
        assert c["status"] == "ok" and c["latency"]["n_samples"] == 3 and c["info"]["threads"] == 1
        parity = c["info"]["parity"]
        assert parity["reference"] == "onnxruntime" and parity["passed"] and parity["max_abs_diff_prob"] <= 1e-4
    md = (out / "report.md").read_text()
    assert "LiteRT XNNPACK" in md and "MNN" in md and "ncnn" in md
