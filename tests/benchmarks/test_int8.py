"""benchmarks.int8: the int8-vs-fp32 study measures what it says (exact on an identity-like case, honest gate)."""
from __future__ import annotations

import json

import pytest

from benchmarks import int8
from tests.benchmarks.conftest import write_onnx_package

pytest.importorskip("onnxruntime.quantization")


def _segmentable(tmp_path):
    """The tiny ONNX-only package with the preprocess section edge.segment needs (meta.json is not checksummed)."""
    pkg = write_onnx_package(tmp_path / "tiny", tile=(64, 64))
    meta = json.loads((pkg / "meta.json").read_text())
    meta["preprocess"] = {"channel_order": "RGB", "scale": 1 / 255, "mean": [0.5] * 3, "std": [0.25] * 3}
    (pkg / "meta.json").write_text(json.dumps(meta))
    return pkg


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
