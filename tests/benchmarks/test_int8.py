"""benchmarks.int8: the int8-vs-fp32 study measures what it says (exact on an identity-like case, honest gate)."""
from __future__ import annotations

import json

import pytest

from benchmarks import int8
from tests.benchmarks.conftest import write_onnx_package

pytest.importorskip("onnxruntime.quantization")


def _segmentable(tmp_path):
    return write_onnx_package(tmp_path / "tiny", tile=(64, 64), segmentable=True)


def test_study_reports_dice_gate_and_timings(tmp_path):
    pkg = _segmentable(tmp_path)
    lines = []
    variants = int8.study(pkg, methods=("minmax",), max_tiles=4, calibration=[(1, (96, 90))],
                          held_out=[(2, (100, 110)), (3, (80, 72))], threads=1, log=lines.append)
    (v,) = variants
    assert v.calibration_tiles == 4
    assert 0.0 <= v.dice_min <= v.dice_mean <= 1.0
    assert v.meets_gate == (1 - v.dice_min <= int8.GATE)
    assert v.max_abs_dp > 0  # int8 rounding moves probabilities: a study that compared fp32 with itself reads 0
    assert v.ms_per_tile_int8 > 0 and v.ms_per_tile_fp32 > 0
    assert lines[0].startswith("calibration: 4 tiles") and "gate" in lines[-1]


def test_cli_refuses_unknown_method_in_one_line(tmp_path, capsys):
    pkg = _segmentable(tmp_path)
    assert int8.main([str(pkg), "--methods", "kl"]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unknown calibration method kl" in err[0] and "minmax" in err[0]


def _int8_pair(tmp_path):
    """The tiny fp32 package and its int8 package (the quantization section as edge-export writes it)."""
    from edge.package import load_package, write_package
    from export.quantize import quantize_int8, synthetic_photos

    pkg = _segmentable(tmp_path)
    r = quantize_int8(load_package(pkg), tmp_path / "q.onnx", synthetic_photos([(1, (96, 90))]),
                      synthetic_photos([(2, (100, 110))]), max_dice_loss=0.5, threads=1, log=lambda m: None)
    meta = {k: v for k, v in json.loads((pkg / "meta.json").read_text()).items() if k != "files"}
    return pkg, write_package(tmp_path / "int8", {**meta, "quantization": r.meta}, {"model.onnx": r.path})


def test_speed_times_the_int8_package_beside_fp32_and_refuses_a_plain_one(tmp_path):
    from edge.errors import EdgeError

    pkg, q8 = _int8_pair(tmp_path)
    lines = []
    rows = int8.speed(pkg, q8, threads=1, rounds=2, runs=2, log=lines.append)
    assert [x.engine for x in rows] == ["onnxruntime fp32", "onnxruntime int8"]  # no TVM library in either
    assert rows[0].speedup_vs_ort_fp32 == 1.0 and all(x.ms_per_tile > 0 for x in rows)
    assert rows[1].speedup_vs_ort_fp32 == pytest.approx(rows[0].ms_per_tile / rows[1].ms_per_tile)
    assert lines[0].startswith("note: tvm fp32 not timed") and "held-out Dice vs fp32 worst" in lines[1]
    with pytest.raises(EdgeError, match="no 'quantization' section .* edge-export --quantize int8"):
        int8.speed(q8, pkg, threads=1)


def test_edge_bench_of_an_int8_package_times_only_the_engines_that_run_it_as_int8(tmp_path):
    from benchmarks.cli import main

    _, q8 = _int8_pair(tmp_path)
    assert main([str(q8), "--backends", "onnxruntime,ncnn", "--images", "none", "--runs", "3", "--warmup", "1",
                 "--threads", "1", "-o", str(tmp_path / "out")]) == 0
    cases = {c["backend"]: c for c in json.loads((tmp_path / "out" / "results.json").read_text())["runs"][0]["cases"]}
    assert cases["onnxruntime"]["status"] == "ok"
    # a peer converting the QDQ graph is not int8 inference (MNN returned an empty output and read 641x faster)
    assert cases["ncnn"]["status"].startswith("unavailable: the package is int8 (ONNX Runtime QDQ); ncnn does not "
                                              "run it as such"), cases["ncnn"]["status"]
