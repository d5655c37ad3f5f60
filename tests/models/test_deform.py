"""Deformable convolution (models/deform.py) against a slow per-point reference, and through ONNX Runtime."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from models.deform import ConvOffset2D, DeformConv2d, deform_conv2d, deform_feature_map


def bilinear_ref(img: np.ndarray, y: float, x: float) -> float:
    """Bilinear value of a 2-D map at (y, x); neighbours outside the map count as zero."""
    h, w = img.shape
    y0, x0 = math.floor(y), math.floor(x)
    ly, lx = y - y0, x - x0
    value = 0.0
    for yy, wy in ((y0, 1.0 - ly), (y0 + 1, ly)):
        for xx, wx in ((x0, 1.0 - lx), (x0 + 1, lx)):
            if 0 <= yy < h and 0 <= xx < w:
                value += wy * wx * img[yy, xx]
    return value


def deform_conv2d_ref(x, offset, weight, bias, mask, stride, padding, dilation):
    """Loop over every output pixel, kernel tap and input channel (float64 numpy)."""
    x, offset, weight = (t.double().numpy() for t in (x, offset, weight))
    mask = None if mask is None else mask.double().numpy()
    b, c, _, _ = x.shape
    cout, cin_g, kh, kw = weight.shape
    groups = c // cin_g
    k = kh * kw
    ho, wo = offset.shape[-2:]
    g = offset.shape[1] // (2 * k)
    out = np.zeros((b, cout, ho, wo))
    for n in range(b):
        for oy in range(ho):
            for ox in range(wo):
                # sampled value for each input channel and tap
                cols = np.zeros((c, k))
                for ci in range(c):
                    og = ci // (c // g)
                    for i in range(kh):
                        for j in range(kw):
                            t = i * kw + j
                            dy = offset[n, 2 * (og * k + t), oy, ox]
                            dx = offset[n, 2 * (og * k + t) + 1, oy, ox]
                            y = oy * stride - padding + i * dilation + dy
                            xx = ox * stride - padding + j * dilation + dx
                            v = bilinear_ref(x[n, ci], y, xx)
                            if mask is not None:
                                v *= mask[n, og * k + t, oy, ox]
                            cols[ci, t] = v
                for co in range(cout):
                    grp = co // (cout // groups)
                    chans = slice(grp * cin_g, (grp + 1) * cin_g)
                    out[n, co, oy, ox] = (cols[chans] * weight[co].reshape(cin_g, k)).sum()
                    if bias is not None:
                        out[n, co, oy, ox] += float(bias[co])
    return torch.from_numpy(out)


@pytest.mark.parametrize(
    "c,cout,h,w,k,stride,padding,dilation,groups,offset_groups,modulated",
    [
        (3, 4, 7, 9, 3, 1, 1, 1, 1, 1, True),
        (4, 2, 8, 6, 3, 2, 1, 1, 1, 2, True),
        (4, 4, 9, 9, 3, 1, 2, 2, 2, 1, False),
        (2, 3, 6, 7, 2, 1, 0, 1, 1, 1, True),
    ],
)
def test_deform_conv2d_matches_loop_reference(c, cout, h, w, k, stride, padding, dilation, groups, offset_groups,
                                              modulated):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, c, h, w, generator=g)
    weight = torch.randn(cout, c // groups, k, k, generator=g)
    bias = torch.randn(cout, generator=g)
    ho = (h + 2 * padding - dilation * (k - 1) - 1) // stride + 1
    wo = (w + 2 * padding - dilation * (k - 1) - 1) // stride + 1
    # Offsets of a few pixels push many taps across the border, which exercises the zero padding.
    offset = 3.0 * torch.randn(2, 2 * offset_groups * k * k, ho, wo, generator=g)
    mask = torch.rand(2, offset_groups * k * k, ho, wo, generator=g) if modulated else None
    got = deform_conv2d(x, offset, weight, bias, mask, stride, padding, dilation)
    want = deform_conv2d_ref(x, offset, weight, bias, mask, stride, padding, dilation)
    assert got.shape == want.shape == (2, cout, ho, wo)
    assert (got.double() - want).abs().max().item() < 1e-5


def test_zero_offsets_equal_regular_convolution():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(1, 5, 10, 12, generator=g)
    weight = torch.randn(6, 5, 3, 3, generator=g)
    offset = torch.zeros(1, 18, 5, 6)
    got = deform_conv2d(x, offset, weight, None, None, stride=2, padding=1)
    want = torch.nn.functional.conv2d(x, weight, None, stride=2, padding=1)
    assert (got - want).abs().max().item() < 1e-5


def test_integer_offsets_shift_exactly():
    """An offset of exactly one pixel reads the neighbour, with zeros entering at the border."""
    x = torch.arange(20.0).reshape(1, 1, 4, 5)
    weight = torch.ones(1, 1, 1, 1)
    offset = torch.zeros(1, 2, 4, 5)
    offset[:, 1] = 1.0  # dx = +1
    got = deform_conv2d(x, offset, weight)
    want = torch.cat([x[..., 1:], torch.zeros(1, 1, 4, 1)], dim=-1)
    assert torch.equal(got, want)


def test_deform_feature_map_matches_loop_reference():
    g = torch.Generator().manual_seed(2)
    x = torch.randn(2, 3, 6, 7, generator=g)
    offset = 2.5 * torch.randn(2, 6, 6, 7, generator=g)
    got = deform_feature_map(x, offset)
    xn, on = x.double().numpy(), offset.double().numpy()
    want = np.zeros(x.shape)
    for n in range(2):
        for c in range(3):
            for yy in range(6):
                for xx in range(7):
                    want[n, c, yy, xx] = bilinear_ref(xn[n, c], yy + on[n, 2 * c, yy, xx],
                                                      xx + on[n, 2 * c + 1, yy, xx])
    assert np.abs(got.double().numpy() - want).max() < 1e-5


@pytest.mark.filterwarnings("ignore:You are using the legacy TorchScript-based ONNX export")
@pytest.mark.parametrize("make", [
    lambda: DeformConv2d(4, 6, 3, stride=2),
    lambda: DeformConv2d(4, 4, 3, dilation=2, offset_groups=2),
    lambda: ConvOffset2D(4, init_normal_stddev=0.5),
], ids=["dcnv2-stride2", "dcnv2-dilated", "convoffset2d"])
def test_layers_export_to_onnx_and_match_onnxruntime(tmp_path, make):
    ort = pytest.importorskip("onnxruntime")
    onnx = pytest.importorskip("onnx")
    torch.manual_seed(3)
    layer = make().eval()
    if isinstance(layer, DeformConv2d):
        # The offset branch starts at zero; give it random weights so the export carries real offsets.
        torch.nn.init.normal_(layer.conv_offset.weight, 0.0, 0.5)
        torch.nn.init.normal_(layer.conv_offset.bias, 0.0, 0.5)
    x = torch.randn(1, 4, 16, 20)
    with torch.no_grad():
        want = layer(x).numpy()
    path = tmp_path / "deform.onnx"
    torch.onnx.export(layer, (x,), str(path), opset_version=17, dynamo=False, input_names=["input"],
                      output_names=["output"])
    graph_ops = {n.op_type for n in onnx.load(str(path)).graph.node}
    assert "GridSample" in graph_ops and "DeformConv" not in graph_ops
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = sess.run(None, {"input": x.numpy()})[0]
    assert got.shape == want.shape
    assert np.abs(got - want).max() <= 1e-4
