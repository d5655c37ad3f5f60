"""benchmarks.kernel_ab: the same ONNX lowered with and without a kernel family, against ONNX Runtime."""
from __future__ import annotations

import json

import pytest
import torch
import torch.nn as nn

from benchmarks.kernel_ab import main
from export.onnx_stage import sample_input, simplify, torch_to_onnx
from export.targets import get_target


@pytest.fixture(scope="module")
def double_conv(tmp_path_factory):
    """Two stride-1 3x3 convolutions over 16 channels, BN, ReLU: Winograd kernels when everything is on."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1),
                        nn.BatchNorm2d(16), nn.ReLU(), nn.Conv2d(16, 16, 3, padding=1)).eval()
    shape = (1, 3, 20, 36)
    folder = tmp_path_factory.mktemp("ab")
    m, _ = torch_to_onnx(net, shape, folder / "raw.onnx")
    import onnx

    path = folder / "m.onnx"
    onnx.save(simplify(m, sample_input(shape))[0], str(path))
    return path


def test_a_family_left_out_changes_the_kernels_not_the_output(double_conv, tmp_path, capsys):
    if get_target("x86_64").is_cross:
        pytest.skip("needs an x86-64 host")
    out = tmp_path / "ab.json"
    assert main([str(double_conv), "--off", "winograd-3x3", "--off", "winograd", "--runs", "2",
                 "--size", "24", "--json", str(out)]) == 0
    got = json.loads(out.read_text())
    assert got["input"] == [1, 3, 24, 24]
    v = got["variants"]
    assert v["all"]["kernels"].get("winograd") == 2, v["all"]
    for off in ("without winograd-3x3", "without winograd"):
        assert "winograd" not in v[off]["kernels"] and sum(v[off]["kernels"].values()) == 3, v[off]
    for x in v.values():
        assert x["max_abs_diff_vs_ort"] <= 1e-4 and x["samples"] >= 1 and x["ort_over_tvm"] > 0
    assert "ONNX Runtime's speed" in capsys.readouterr().out


def test_a_missing_model_is_a_one_line_error(tmp_path, capsys):
    assert main([str(tmp_path / "nope.onnx"), "--off", "winograd"]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no such ONNX file" in err[0], err


def test_an_unknown_family_is_refused():
    from export.schedules import kernels_off

    with pytest.raises(ValueError, match="unknown kernel family"):
        with kernels_off("winograd-5x5"):
            pass
