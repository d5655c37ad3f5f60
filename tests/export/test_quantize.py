"""edge-export --quantize int8: mixed precision until the held-out gate holds, recorded, refused past it."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import onnx
import pytest

from edge.errors import EdgeError
from edge.package import load_package
from export import quantize as q
from export.cli import main
from export.complexity import count, macs_by_node
from tests.benchmarks.conftest import write_onnx_package

BIN = Path(sys.executable).parent


def _segmentable(tmp_path):
    return write_onnx_package(tmp_path / "tiny", tile=(64, 64), segmentable=True)


def _photos(*specs):
    return q.synthetic_photos(specs)


def test_blocks_group_nodes_by_their_top_module_and_macs_by_node_add_up():
    from onnx import helper

    nodes = [helper.make_node("Conv", ["x", "w"], ["a"], name="/enc/c1/Conv"),
             helper.make_node("Relu", ["a"], ["b"], name="/enc/Relu"),
             helper.make_node("Conv", ["b", "w2"], ["c"], name="/enc/c2/Conv"),
             helper.make_node("Add", ["c", "b"], ["d"], name="/dec/Add"),
             helper.make_node("Conv", ["d", "w3"], ["y"], name="final_conv")]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", 1, [1, 3, 8, 8])],
                          [helper.make_tensor_value_info("y", 1, [1, 1, 8, 8])],
                          [onnx.numpy_helper.from_array(np.ones(s, np.float32), n) for n, s in
                           (("w", (3, 3, 1, 1)), ("w2", (3, 3, 1, 1)), ("w3", (1, 3, 1, 1)))])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    assert q.blocks_of(m) == {"/enc": ["/enc/c1/Conv", "/enc/c2/Conv"], "/dec": ["/dec/Add"],
                              "final_conv": ["final_conv"]}
    per = macs_by_node(m)
    assert per == {"/enc/c1/Conv": 64 * 3 * 3, "/enc/c2/Conv": 64 * 3 * 3, "final_conv": 64 * 3}
    assert sum(per.values()) == count(m).macs


def test_int8_of_a_small_model_records_the_gate_it_met(tmp_path):
    pkg = load_package(_segmentable(tmp_path))
    out = tmp_path / "int8.onnx"
    r = q.quantize_int8(pkg, out, _photos((1, (96, 90)), (4, (120, 100))), _photos((2, (100, 110))),
                        max_dice_loss=0.2, threads=1, log=lambda m: None)
    m = r.meta
    assert out.is_file() and r.path == out
    assert {n.op_type for n in onnx.load(str(out)).graph.node} >= {"QuantizeLinear", "DequantizeLinear"}
    assert m["dtype"] == "int8" and m["format"] == "QDQ" and m["runtime"] == "onnxruntime"
    assert m["calibration"]["tiles"] > 0 and len(m["calibration"]["photographs"]) == 2
    h = m["held_out"]
    assert h["photographs"] == ["synthetic seed 2 100x110"] and h["max_dice_loss"] == 0.2
    assert 1 - h["dice_min"] <= 0.2 and h["dice_min"] <= h["dice_mean"] <= 1
    assert h["max_abs_dp"] > 0  # int8 moved the probabilities: a gate comparing fp32 with itself reads 0
    assert m["int8_blocks"] and 0 < m["int8_mac_fraction"] <= 1


def test_int8_past_the_limit_is_refused_and_leaves_no_model(tmp_path):
    pkg = load_package(_segmentable(tmp_path))
    out = tmp_path / "int8.onnx"
    with pytest.raises(EdgeError, match=r"loses 0\.\d+ Dice vs fp32 on held-out .*above --int8-max-dice-loss 0, .*;"
                                        r" export fp32 .*--calibration-images DIR.* raise --int8-max-dice-loss"):
        q.quantize_int8(pkg, out, _photos((1, (96, 90))), _photos((2, (100, 110))), max_dice_loss=0.0,
                        threads=1, log=lambda m: None)
    assert not out.exists()


@pytest.mark.parametrize("argv, message", [
    (["--calibration-images", "x"], "--calibration-images and --int8-max-dice-loss belong to --quantize int8"),
    (["--quantize", "int8", "--target", "cuda"], "cuda is a cuda target: pick arm64 or x86_64"),
    (["--quantize", "int8", "--tune", "4", "--tuning-db", "db"], "an int8 package runs on ONNX Runtime"),
    (["--quantize", "int8", "--int8-max-dice-loss", "1.5"], "--int8-max-dice-loss 1.5 must be in [0, 1)"),
    (["--quantize", "int8", "--calibration-images", "FEW"], "holds 2 photograph(s); it needs at least 3"),
    (["--quantize", "int8", "--calibration-images", "NONE"], "not a folder"),
])
def test_int8_options_are_checked_before_any_work(tmp_path, capsys, argv, message, retina_rgb):
    few = tmp_path / "few"
    few.mkdir()
    for i in range(2):
        cv2.imwrite(str(few / f"{i}.png"), retina_rgb[::8, ::8, ::-1])
    argv = [a.replace("FEW", str(few)).replace("NONE", str(tmp_path / "none")) for a in argv]
    out = tmp_path / "pkg"
    assert main(["m2unet", "--out", str(out), *argv]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and message in err[0], err
    assert not out.exists()


@pytest.mark.slow
def test_int8_package_of_the_shipped_m2unet_meets_its_gate_and_segments(tmp_path, retina_rgb):
    """The default weights, the synthetic calibration set: the greedy search keeps blocks in fp32 until the
    held-out gate holds; edge-run takes the package on ONNX Runtime and agrees with the fp32 package."""
    out = tmp_path / "int8"
    r = subprocess.run([BIN / "edge-export", "m2unet", "--quantize", "int8", "--out", out], capture_output=True,
                       text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "int8     " in r.stdout and "held-out Dice vs fp32 worst" in r.stdout
    pkg = load_package(out)
    assert sorted(pkg.meta["files"]) == ["model.onnx"] and pkg.library is None
    qm = pkg.meta["quantization"]
    assert qm["calibration"]["source"] == "synthetic" and qm["calibration"]["tiles"] == q.MAX_CALIBRATION_TILES
    assert 1 - qm["held_out"]["dice_min"] <= q.DEFAULT_MAX_DICE_LOSS
    assert qm["int8_mac_fraction"] >= 0.3  # most of the deep encoder is int8, not a model kept all in fp32
    assert qm["fp32_blocks"] and set(qm["fp32_blocks"]).isdisjoint(qm["int8_blocks"])
    assert pkg.meta["files"]["model.onnx"]["bytes"] < 0.6 * 2.2e6  # int8 weights: the package shrinks

    fp32 = tmp_path / "fp32"
    assert subprocess.run([BIN / "edge-export", "m2unet", "--out", fp32], capture_output=True,
                          timeout=900).returncode == 0
    cv2.imwrite(str(tmp_path / "retina.png"), retina_rgb[:, :, ::-1])
    for name in ("int8", "fp32"):
        r = subprocess.run([BIN / "edge-run", tmp_path / "retina.png", "--package", tmp_path / name, "-o",
                            tmp_path / f"out-{name}", "--json", tmp_path / f"{name}.json"], capture_output=True,
                           text=True, timeout=600)
        assert r.returncode == 0, r.stderr[-2000:]
    info = json.loads((tmp_path / "int8.json").read_text())
    assert info["backend"]["name"] == "onnxruntime" and "int8" in info["backend"]["fallback"]
    a = cv2.imread(str(tmp_path / "out-int8" / "retina_mask.png"), cv2.IMREAD_UNCHANGED) > 0
    b = cv2.imread(str(tmp_path / "out-fp32" / "retina_mask.png"), cv2.IMREAD_UNCHANGED) > 0
    assert b.sum() > 1000 and q.dice(a, b) >= 0.99  # a real camera's photograph, never seen in calibration


def test_user_photographs_are_split_by_name_every_third_held_out(tmp_path, retina_rgb):
    d = tmp_path / "camera"
    d.mkdir()
    for i in range(5):
        cv2.imwrite(str(d / f"img{i}.png"), retina_rgb[::6, ::6, ::-1])
    (d / "notes.txt").write_text("not a photograph")
    cal, held = q.user_photos(d)
    assert [p.name for p in cal] == ["img0.png", "img1.png", "img3.png", "img4.png"]
    assert [p.name for p in held] == ["img2.png"]
    assert held[0].image.shape == (236, 236, 3) and held[0].image.dtype == np.uint8
    pkg = load_package(write_onnx_package(tmp_path / "tiny", tile=(64, 64), segmentable=True))
    r = q.quantize_int8(pkg, tmp_path / "q.onnx", cal, held, max_dice_loss=0.5, threads=1, log=lambda m: None)
    assert r.meta["calibration"]["photographs"] == ["img0.png", "img1.png", "img3.png", "img4.png"]
    assert r.meta["held_out"]["photographs"] == ["img2.png"]
