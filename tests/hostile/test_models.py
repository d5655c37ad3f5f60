"""Hostile models and weights: corrupt or dynamic-shape ONNX files for edge-export and edge-bench, and checkpoints
that are not what they claim for edge-export --weights, edge-bench --weights, edge-eval CHECKPOINT and
edge-train --resume: another architecture's weights, text, zero bytes, a folder, a missing file, and a pickle that
carries code, which weights-only loading must refuse without running it (the marker file it would write stays
absent, while the same file loaded the unsafe way does write it: the payload is live)."""
from __future__ import annotations

import os
import shlex
from pathlib import Path

import numpy as np
import pytest

from benchmarks.cli import main as bench_main
from export.cli import main as export_main
from models.train.evaluate import main as eval_main
from models.train.trainer import CHECKPOINT_FORMAT
from models.train.trainer import main as train_main


def tiny_onnx(path: Path, shape: list, inputs: int = 1, op: str = "Conv") -> Path:
    """Two 3x3 convolutions built with onnx.helper (no torch, milliseconds); ``shape`` may hold dim_params."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    inits = {"w1": rng.standard_normal((4, 3, 3, 3)).astype(np.float32), "b1": np.zeros(4, np.float32),
             "w2": rng.standard_normal((1, 4, 3, 3)).astype(np.float32), "b2": np.zeros(1, np.float32)}
    nodes = [helper.make_node(op, ["input", "w1", "b1"], ["a"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["a"], ["b"]),
             helper.make_node("Conv", ["b", "w2", "b2"], ["logits"], pads=[1, 1, 1, 1])]
    ins = [helper.make_tensor_value_info("input", TensorProto.FLOAT, shape)]
    if inputs == 2:
        ins.append(helper.make_tensor_value_info("extra", TensorProto.FLOAT, shape))
        nodes.append(helper.make_node("Identity", ["extra"], ["extra_out"]))
    outs = [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [shape[0], 1, *shape[2:]])]
    g = helper.make_graph(nodes, "tiny", ins, outs, [numpy_helper.from_array(v, k) for k, v in inits.items()])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    onnx.save(m, str(path))
    return path


class Payload:
    """Unpickling this runs a shell command: what a checkpoint from a stranger can carry."""

    def __init__(self, marker: Path) -> None:
        self.cmd = f"touch {shlex.quote(str(marker))}"

    def __reduce__(self):
        return os.system, (self.cmd,)


@pytest.fixture(scope="module")
def zoo(tmp_path_factory) -> Path:
    """Every hostile model and checkpoint of this module, made once."""
    import torch

    from models import create_model

    d = tmp_path_factory.mktemp("hostile-models")
    good = tiny_onnx(d / "good.onnx", [1, 3, 32, 32])
    data = good.read_bytes()
    (d / "random.onnx").write_bytes(np.random.default_rng(0).bytes(4096))
    (d / "truncated.onnx").write_bytes(data[: len(data) // 2])
    (d / "empty.onnx").write_bytes(b"")
    (d / "text.onnx").write_text("input -> conv -> logits\n")
    tiny_onnx(d / "dynamic.onnx", [1, 3, "H", "W"])
    tiny_onnx(d / "dynamic-batch.onnx", ["N", 3, 32, 32])
    tiny_onnx(d / "two-inputs.onnx", [1, 3, 32, 32], inputs=2)
    tiny_onnx(d / "unknown-op.onnx", [1, 3, 32, 32], op="NoSuchOp")

    torch.save(create_model("erfnet").state_dict(), d / "erfnet.pth")
    torch.save(create_model("m2unet").state_dict(), d / "m2unet.pth")
    (d / "m2unet.json").write_text(f'{{"format": "{CHECKPOINT_FORMAT}", "format_version": 1, "model": "m2unet"}}')
    (d / "text.pth").write_text("epoch 12, dice 0.81\n")
    (d / "zero.pth").write_bytes(b"")
    (d / "folder.pth").mkdir()
    torch.save({"conv1.0.0.weight": Payload(d / "PWNED")}, d / "evil.pth")
    torch.save({"state_dict": {"w": torch.zeros(1)}, "hook": Payload(d / "PWNED")}, d / "evil-nested.pth")
    for name, content in {"evil-run": Payload(d / "PWNED"), "text-run": None, "zero-run": None}.items():
        (d / name).mkdir()
        if content is not None:
            torch.save({"format": CHECKPOINT_FORMAT + "-resume", "model_name": "m2unet", "epoch": 1,
                        "hook": content}, d / name / "resume.pt")
    (d / "text-run" / "resume.pt").write_text("not a resume state\n")
    (d / "zero-run" / "resume.pt").write_bytes(b"")
    return d


def test_the_payload_is_live(zoo, tmp_path):
    """Control: loaded the unsafe way, the file does run its code (so the absence checked below means something)."""
    import torch

    marker = tmp_path / "ran"
    torch.save({"x": Payload(marker)}, tmp_path / "control.pth")
    torch.load(tmp_path / "control.pth", weights_only=False)
    assert marker.exists()


def test_the_arguments_work_on_good_inputs(zoo, tmp_path, capsys):
    """Control: the same command lines succeed on an intact ONNX file and checkpoint."""
    assert export_main([str(zoo / "good.onnx"), "--out", str(tmp_path / "pkg")]) == 0, capsys.readouterr().err
    assert eval_main([str(zoo / "m2unet.pth"), "--model", "m2unet", *EVAL, "--out", str(tmp_path / "ev")]) == 0


ONNX = {
    "random bytes": ("random.onnx", r"is not a readable ONNX model .*check the file is complete"),
    "truncated protobuf": ("truncated.onnx", r"is not a readable ONNX model"),
    "zero bytes": ("empty.onnx", r"is not an ONNX model \(no graph or opset\); check the file"),
    "text": ("text.onnx", r"is not (a readable|an) ONNX model"),
    "dynamic H and W, no --input-size": ("dynamic.onnx", r"has shape \[1, 3, -1, -1\]; pass --input-size HxW"),
    "dynamic batch, no --input-size": ("dynamic-batch.onnx", r"has shape \[-1, 3, 32, 32\]; pass --input-size"),
    "two inputs": ("two-inputs.onnx", r"expected one image input, found 2 graph inputs.*; export"),
    "unknown operator": ("unknown-op.onnx", r"NoSuchOp.*; "),
}


@pytest.mark.parametrize("tool", ["edge-export", "edge-bench"])
@pytest.mark.parametrize("case", list(ONNX))
def test_hostile_onnx_is_refused(case, tool, zoo, tmp_path, expect_refusal):
    name, match = ONNX[case]
    if tool == "edge-export":
        main, argv = export_main, [zoo / name, "--out", tmp_path / "pkg"]
    else:
        main, argv = bench_main, [zoo / name, "--backends", "onnxruntime", "--images", "none", "--runs", "1",
                                  "-o", tmp_path / "bench"]
    expect_refusal(main, argv, watch=[tmp_path, zoo], match=match, rc=2)


EVAL = ["--dataset", "synthetic", "--synthetic-count", "1", "--synthetic-size", "64", "--threads", "1"]

WEIGHTS = {
    "another architecture": ("erfnet.pth", (r"do not fit model 'm2unet': missing keys: .*unexpected keys: .*; "
                                            r"pass a checkpoint trained for this model")),
    "text": ("text.pth", r"cannot read weights .*not a PyTorch state dict\); pass one saved with torch\.save"),
    "zero bytes": ("zero.pth", r"cannot read weights .*not a PyTorch state dict"),
    "code in the pickle": ("evil.pth", r"refused to load weights .*could run code .*weights-only"),
    "code beside the state dict": ("evil-nested.pth", r"refused to load weights"),
    "a folder": ("folder.pth", r"is a folder, not a (state dict|checkpoint) file"),
    "missing": ("missing.pth", r"weights file not found|does not exist|no such path"),
}


@pytest.mark.parametrize("tool", ["edge-export", "edge-bench", "edge-eval"])
@pytest.mark.parametrize("case", list(WEIGHTS))
def test_hostile_checkpoint_is_refused(case, tool, zoo, tmp_path, expect_refusal):
    name, match = WEIGHTS[case]
    w = zoo / name
    if tool == "edge-export":
        main, argv = export_main, ["m2unet", "--weights", w, "--input-size", "32", "--out", tmp_path / "pkg"]
    elif tool == "edge-bench":
        main, argv = bench_main, ["m2unet", "--weights", w, "--sizes", "32", "--backends", "onnxruntime",
                                  "--images", "none", "--runs", "1", "-o", tmp_path / "bench"]
    else:
        main, argv = eval_main, [w, "--model", "m2unet", *EVAL, "--out", tmp_path / "eval"]
    expect_refusal(main, argv, watch=[tmp_path, zoo], match=match, rc=2)
    assert not (zoo / "PWNED").exists(), "unpickling the checkpoint ran its code"


FOV_DIAMETERS = {
    "zero": ("0", r"--fov-diameter 0\.0 must be a positive number of pixels"),
    "negative": ("-540", r"--fov-diameter -540\.0 must be a positive number"),
    "not a number": ("540px", r"--fov-diameter '540px' is not a number; pass the FOV diameter in pixels"),
    "nan": ("nan", r"--fov-diameter nan must be a positive number"),
    "infinite": ("inf", r"--fov-diameter inf must be a positive number"),
    "empty": ("", r"--fov-diameter '' is not a number"),
}


@pytest.mark.parametrize("source", ["m2unet", "good.onnx"])
@pytest.mark.parametrize("case", list(FOV_DIAMETERS))
def test_bad_fov_diameter_is_refused_before_any_work(case, source, zoo, tmp_path, expect_refusal, monkeypatch):
    import export.pipeline

    def no_work(*a, **k):
        raise AssertionError("the model was loaded before --fov-diameter was checked")

    monkeypatch.setattr(export.pipeline, "load_source", no_work)
    value, match = FOV_DIAMETERS[case]
    model = str(zoo / source) if source.endswith(".onnx") else source
    expect_refusal(export_main, [model, "--fov-diameter", value, "--out", tmp_path / "pkg"],
                   watch=[tmp_path, zoo], match=match, rc=2)


def test_eval_checkpoint_whose_sidecar_names_another_model(zoo, tmp_path, expect_refusal):
    expect_refusal(eval_main, [zoo / "m2unet.pth", "--model", "erfnet", *EVAL, "--out", tmp_path / "eval"],
                   watch=[tmp_path, zoo], match=r"was trained for 'm2unet' .*, not 'erfnet'; pass a checkpoint", rc=2)


@pytest.mark.parametrize("run, match", [
    ("evil-run", r"refused to load .*resume\.pt: .*no code in it runs"),
    ("text-run", r"cannot read .*resume\.pt .*pass the resume\.pt of a training run"),
    ("zero-run", r"cannot read .*resume\.pt .*pass the resume\.pt of a training run"),
])
def test_hostile_resume_state_is_refused(run, match, zoo, tmp_path, expect_refusal):
    """edge-train --resume loads optimizer and RNG state too: weights-only loading covers all of it."""
    expect_refusal(train_main, ["m2unet", "--dataset", "synthetic", "--synthetic-count", "2", "--synthetic-size",
                                "32", "--resume", zoo / run], watch=[zoo], match=match, rc=2)
    assert not (zoo / "PWNED").exists(), "unpickling the resume state ran its code"
