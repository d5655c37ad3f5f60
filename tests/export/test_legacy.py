"""Legacy ONNX repair: PyTorch-0.4-style graphs become valid modern ONNX with the same numbers."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from edge.errors import EdgeError
from export.legacy import repair
from export.onnx_stage import OPSET, ort_run, sample_input
from tests.conftest import shared_file


def legacy_graph(op: str = "Upsample", mode: str = "bilinear") -> tuple[onnx.ModelProto, np.ndarray, np.ndarray]:
    """Conv -> Upsample(scales attribute, x2) as PyTorch 0.4 wrote it: IR 3, opset 9, weights as inputs."""
    rng = np.random.default_rng(1)
    w = rng.standard_normal((4, 3, 3, 3)).astype(np.float32)
    b = rng.standard_normal(4).astype(np.float32)
    nodes = [helper.make_node("Conv", ["0", "1", "2"], ["3"], pads=[1, 1, 1, 1], kernel_shape=[3, 3])]
    if op == "Upsample":
        nodes.append(helper.make_node("Upsample", ["3"], ["4"], mode=mode, scales=[1.0, 1.0, 2.0, 2.0]))
    else:
        nodes.append(helper.make_node(op, ["3"], ["4"], domain="com.example"))
    g = helper.make_graph(
        nodes, "legacy",
        [helper.make_tensor_value_info("0", TensorProto.FLOAT, [1, 3, 8, 10]),
         helper.make_tensor_value_info("1", TensorProto.FLOAT, [4, 3, 3, 3]),
         helper.make_tensor_value_info("2", TensorProto.FLOAT, [4])],
        [helper.make_tensor_value_info("4", TensorProto.FLOAT, [1, 4, 16, 20])],
        [numpy_helper.from_array(w, "1"), numpy_helper.from_array(b, "2")])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 9)], producer_name="pytorch",
                          producer_version="0.4")
    m.ir_version = 3
    return m, w, b


def test_legacy_graph_is_refused_as_is_and_repaired():
    m, w, b = legacy_graph()
    with pytest.raises(Exception):
        onnx.checker.check_model(m)
    fixed, changes = repair(m)
    assert any("initializers removed" in c for c in changes)
    assert any("Upsample -> Resize" in c for c in changes)
    assert any(f"opset upgraded from 9 to {OPSET}" in c for c in changes)
    onnx.checker.check_model(fixed)
    assert [n.op_type for n in fixed.graph.node if n.op_type != "Constant"] == ["Conv", "Resize"]
    assert [i.name for i in fixed.graph.input] == ["0"]
    # numbers: PyTorch's bilinear upsample with align_corners=False, as the legacy exporter meant
    x = sample_input((1, 3, 8, 10))
    ref = torch.nn.functional.interpolate(
        torch.nn.functional.conv2d(torch.from_numpy(x), torch.from_numpy(w), torch.from_numpy(b), padding=1),
        scale_factor=2, mode="bilinear", align_corners=False).numpy()
    np.testing.assert_allclose(ort_run(fixed, x), ref, atol=1e-5)


def test_modern_graph_needs_no_repair():
    m, _, _ = legacy_graph()
    fixed, _ = repair(m)
    again, changes = repair(fixed)
    assert changes == []


def test_unsupported_operator_is_named():
    m, _, _ = legacy_graph(op="FancyOp")
    with pytest.raises(EdgeError, match=r"unsupported ONNX operators: com\.example\.FancyOp"):
        repair(m)


def test_published_legacy_file_matches_the_published_checkpoint(drive_weights):
    from models import create_model

    legacy = onnx.load(str(shared_file("models", "m2unet", "legacy-onnx", "M2UNetDRIVE.onnx")))
    fixed, changes = repair(legacy)
    assert len(changes) >= 4
    x = sample_input((1, 3, 544, 544))
    with torch.inference_mode():
        ref = create_model("m2unet", weights=drive_weights)(torch.from_numpy(x)).numpy()
    assert np.abs(ort_run(fixed, x) - ref).max() <= 1e-4
