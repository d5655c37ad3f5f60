"""edge-eval PACKAGE runs photos as edge-run does: resampled by their FOV to the package's training scale, or at
their own scale with --native-scale; the summary records which, per image."""
from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "edge"))
from edge_fixtures import build_package, variant  # noqa: E402

from models.train import evaluate as ev  # noqa: E402

EVAL = ["--dataset", "synthetic", "--synthetic-count", "1", "--synthetic-size", "160x192", "--threads", "1",
        "--backend", "onnxruntime", "--no-connectivity"]


def test_eval_follows_the_package_scale_and_native_scale_turns_it_off(tmp_path, capsys):
    pkg = variant(build_package(tmp_path / "tiny"), tmp_path / "scaled", preprocess={"fov_diameter_px": 64})
    assert ev.main([str(pkg), *EVAL, "--out", str(tmp_path / "a")]) == 0
    assert "scale: images resampled by their FOV to 64 px" in capsys.readouterr().err
    scale = json.loads((tmp_path / "a" / "summary.json").read_text())["source"]["scale"]
    (info,) = scale["images"].values()
    assert scale["native_scale"] is False and scale["training_fov_px"] == 64.0
    assert info["status"] == "resampled" and info["size"] == [160, 192] and info["processed"][0] < 160

    assert ev.main([str(pkg), *EVAL, "--native-scale", "--out", str(tmp_path / "b")]) == 0
    assert "scale: native (--native-scale); the weights were trained at FOV 64 px" in capsys.readouterr().err
    (info,) = json.loads((tmp_path / "b" / "summary.json").read_text())["source"]["scale"]["images"].values()
    assert info["status"] == "native-requested" and info["processed"] == [160, 192]
