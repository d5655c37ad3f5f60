"""edge-train and edge-eval end to end at tiny sizes: checkpoint + sidecar + loss log, resume, NaN, evaluation."""
from __future__ import annotations

import csv
import hashlib
import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from edge.errors import EdgeError
from models import create_model
from models.train import evaluate as ev
from models.train import trainer
from models.train.losses import LOSSES

TINY = ["--dataset", "synthetic", "--synthetic-count", "3", "--synthetic-size", "64", "--batch-size", "2",
        "--val-fraction", "0.34", "--threads", "1"]
EVAL = ["--dataset", "synthetic", "--synthetic-count", "2", "--synthetic-size", "64", "--threads", "1"]


def _sha(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("train") / "m2unet-synthetic"
    assert trainer.main(["m2unet", *TINY, "--epochs", "1", "--out", str(out)]) == 0
    return out


def test_train_writes_checkpoint_sidecar_and_log(run):
    for name in ("best.pth", "best.json", "last.pth", "last.json", "resume.pt", "loss.csv"):
        assert (run / name).is_file(), name
    # a plain state dict that the registry loads strictly (what edge-export --weights does)
    sd = torch.load(run / "best.pth", map_location="cpu", weights_only=True)
    assert all(isinstance(v, torch.Tensor) for v in sd.values())
    create_model("m2unet", weights=run / "best.pth")
    meta = json.loads((run / "best.json").read_text())
    assert meta["model"] == "m2unet" and meta["spec"]["divisor"] == 16 and meta["epochs"] == 1
    assert meta["weights"]["sha256"] == _sha(run / "best.pth")
    assert meta["data"]["dataset"] == "synthetic" and len(meta["data"]["train"]) == 2 and len(meta["data"]["val"]) == 1
    assert meta["recipe"]["loss"] == "jbce" and meta["recipe"]["lr"] == 1e-3 and meta["recipe"]["optimizer"] == "adamw"
    assert 0 <= meta["metrics"]["threshold"] < 1 and meta["metrics"]["threshold_source"] == "validation"
    assert meta["augment"]["rotation_deg"] == 15.0
    rows = list(csv.DictReader((run / "loss.csv").open()))
    assert [r["epoch"] for r in rows] == ["1"] and float(rows[0]["train_loss"]) > 0


def test_resume_continues_the_run(run, tmp_path):
    import shutil

    out = tmp_path / "resumed"
    shutil.copytree(run, out)
    assert trainer.main(["m2unet", *TINY, "--epochs", "2", "--resume", str(out)]) == 0
    rows = list(csv.DictReader((out / "loss.csv").open()))
    assert [r["epoch"] for r in rows] == ["1", "2"]
    assert rows[0] == list(csv.DictReader((run / "loss.csv").open()))[0]  # the first epoch is kept as it was
    assert json.loads((out / "last.json").read_text())["epochs"] == 2


def test_resume_refuses_another_model_and_finished_runs(run, capsys):
    assert trainer.main(["sepfe", *TINY, "--epochs", "2", "--resume", str(run)]) == 2
    assert "resumes model 'm2unet', not 'sepfe'" in capsys.readouterr().err
    assert trainer.main(["m2unet", *TINY, "--epochs", "1", "--resume", str(run)]) == 2
    assert "already trained 1 epochs; pass --epochs above 1" in capsys.readouterr().err
    assert trainer.main(["m2unet", *TINY, "--epochs", "1", "--out", str(run)]) == 2
    assert "already holds a training run" in capsys.readouterr().err


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(run, tmp_path, monkeypatch, capsys):
    import shutil

    out = tmp_path / "nan"
    shutil.copytree(run, out)
    before = {n: _sha(out / n) for n in ("best.pth", "last.pth", "last.json")}

    def nan_loss(outputs, target):
        return (outputs if isinstance(outputs, torch.Tensor) else outputs[-1]).sum() * float("nan")

    monkeypatch.setitem(LOSSES, "jbce", nan_loss)
    code = trainer.main(["m2unet", *TINY, "--epochs", "2", "--resume", str(out)])
    assert code == trainer.TrainingDiverged.exit_code
    err = capsys.readouterr().err
    assert "loss became nan at epoch 2 step 1" in err and f"{out / 'last.pth'} (epoch 1)" in err
    assert {n: _sha(out / n) for n in before} == before
    rows = list(csv.DictReader((out / "loss.csv").open()))
    assert rows[-1]["epoch"] == "2" and rows[-1]["status"].startswith("diverged")


@pytest.mark.parametrize("model", ["iternet", "hybridnetseg"])
def test_multi_output_recipes_train(model, tmp_path):
    """IterNet returns a list in train mode (summed BCE); HybridNetSeg gets training-only side outputs."""
    out = tmp_path / model
    args = [model, *TINY, "--epochs", "1", "--patch", "32", "--patches-per-image", "1", "--out", str(out)]
    assert trainer.main(args) == 0
    meta = json.loads((out / "best.json").read_text())
    assert meta["recipe"]["loss"] == {"iternet": "bce_sum", "hybridnetseg": "mixed"}[model]
    create_model(model, weights=out / "best.pth")  # the side heads are not in the checkpoint


def test_bad_patch_size_names_the_valid_ones(tmp_path, capsys):
    assert trainer.main(["m2unet", *TINY, "--patch", "40", "--out", str(tmp_path / "x")]) == 2
    assert "--patch 40 is not a multiple of the model's divisor 16; pass 32 or 48" in capsys.readouterr().err


def _check_outputs(out: Path, n: int) -> dict:
    rows = list(csv.DictReader((out / "per_image.csv").open()))
    assert len(rows) == n
    summary = json.loads((out / "summary.json").read_text())
    assert summary["images"] == n
    for png in ("roc.png", "pr.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    return summary


def test_eval_checkpoint(run, tmp_path):
    out = tmp_path / "eval"
    assert ev.main([str(run / "best.pth"), *EVAL, "--out", str(out)]) == 0
    s = _check_outputs(out, 2)
    assert s["source"]["kind"] == "checkpoint" and s["source"]["model"] == "m2unet"
    chosen = json.loads((run / "best.json").read_text())["metrics"]["threshold"]
    assert s["thresholds"]["chosen"] == chosen and "validation" in s["thresholds"]["chosen_source"]
    for key in ("dice@0.5", "iou@0.5", "accuracy@0.5", "sensitivity@0.5", "specificity@0.5", "dice@chosen", "auc",
                "connectivity"):
        assert key in s["mean"] and key in s["std"]
    assert not any(p.name.endswith(".tmp") for p in out.iterdir())


def test_eval_refuses_a_checkpoint_of_another_model(run, tmp_path, capsys):
    assert ev.main([str(run / "best.pth"), *EVAL, "--model", "sepfe", "--out", str(tmp_path / "e")]) == 2
    assert "was trained for 'm2unet' (says best.json), not 'sepfe'" in capsys.readouterr().err


def test_eval_prediction_folder_is_exact(tmp_path):
    """Perfect predictions written as PNGs: Dice, sensitivity, specificity and AUC are exactly 1."""
    import cv2

    from models.train.datasets import load_sample, load_split

    preds = tmp_path / "preds"
    preds.mkdir()
    for s in load_split("synthetic", None, "test", count=2, size=(64, 64)):
        cv2.imwrite(str(preds / f"{s.name}.png"), (load_sample(s).label * 255).astype(np.uint8))
    out = tmp_path / "eval"
    assert ev.main([str(preds), *EVAL, "--threshold", "0.3", "--out", str(out)]) == 0
    s = _check_outputs(out, 2)
    for key in ("dice@0.5", "sensitivity@0.5", "specificity@0.5", "dice@chosen", "auc", "connectivity"):
        assert s["mean"][key] == 1.0, key
    assert s["thresholds"]["chosen"] == 0.3 and s["thresholds"]["chosen_source"] == "given (--threshold)"


def test_eval_package_through_the_runtime_matches_the_checkpoint(run, tmp_path):
    """An ONNX-only package of the checkpoint, run by edge.segment with ONNX Runtime, scores as PyTorch does."""
    from edge.package import host_arch, write_package

    net = create_model("m2unet", weights=run / "best.pth")
    onnx_path = tmp_path / "model.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, torch.rand(1, 3, 64, 64), str(onnx_path), opset_version=17, dynamo=False,
                          input_names=["input"], output_names=["logits"])
    meta = {"model": {**net.spec.to_meta(), "overlap": 16},
            "input": {"name": "input", "shape": [1, 3, 64, 64], "dtype": "float32", "layout": "NCHW"},
            "output": {"name": "logits", "kind": "logits", "activation": "sigmoid"},
            "preprocess": {"channel_order": "RGB", "scale": 1 / 255, "mean": [0, 0, 0], "std": [1, 1, 1]},
            "postprocess": {"threshold": 0.5}, "tiling": {"tile": [64, 64], "overlap": 16, "blend": "gaussian"},
            "target": {"preset": "onnx-only", "arch": host_arch(), "device": "cpu", "library": None}}
    pkg = write_package(tmp_path / "pkg", meta, {"model.onnx": onnx_path})
    a, b = tmp_path / "a", tmp_path / "b"
    assert ev.main([str(pkg), *EVAL, "--backend", "onnxruntime", "--threshold", "0.5", "--out", str(a)]) == 0
    assert ev.main([str(run / "best.pth"), *EVAL, "--threshold", "0.5", "--out", str(b)]) == 0
    sa, sb = _check_outputs(a, 2), _check_outputs(b, 2)
    assert sa["source"]["kind"] == "package"
    assert sa["mean"]["auc"] == pytest.approx(sb["mean"]["auc"], abs=1e-3)
    assert sa["mean"]["dice@0.5"] == pytest.approx(sb["mean"]["dice@0.5"], abs=1e-2)


def test_eval_missing_prediction_is_named(tmp_path, capsys):
    (tmp_path / "preds").mkdir()
    assert ev.main([str(tmp_path / "preds"), *EVAL, "--out", str(tmp_path / "e")]) == 2
    assert "no prediction for synthetic_1000000" in capsys.readouterr().err


def test_sidecar_check_library():
    with pytest.raises(EdgeError, match="no such file"):
        trainer.train(trainer.TrainConfig("m2unet", "synthetic", resume="/nonexistent/run"))
