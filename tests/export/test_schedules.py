"""Hand-written CPU kernels (export.schedules): what they replace, and that they compute the same thing."""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F

from export.onnx_stage import ort_run, sample_input, simplify, torch_to_onnx
from export.targets import get_target

TOL = 1e-4


def _lowered(m, shape, target_name="x86_64", hand_kernels=True):
    from export.tvm_stage import import_onnx, lower

    target = get_target(target_name).tvm_target()
    mod = import_onnx(m, m.graph.input[0].name, list(shape))
    return lower(mod, target, hand_kernels=hand_kernels), target


def _run(m, shape, x, hand_kernels=True):
    import tvm
    from tvm.runtime.vm import VirtualMachine

    (mod, _, report), target = _lowered(m, shape, hand_kernels=hand_kernels)
    ex = tvm.compile(mod, target=target)
    vm = VirtualMachine(ex, tvm.cpu())
    return vm["main"](tvm.runtime.tensor(x)).numpy(), report, mod


def _x86(level: str | None) -> str:
    """The host's x86 target (None), or x86-64 at ``level``'s mcpu (fewer lanes than the host on purpose)."""
    return "x86_64" if level is None else '{"kind": "llvm", "mtriple": "x86_64-linux-gnu", "mcpu": "%s"}' % level


def _assert_matches_ort(mod, target, m, shape) -> None:
    """The lowered ``mod`` run on the host gives ONNX Runtime's output of ``m`` within TOL."""
    import tvm
    from tvm.runtime.vm import VirtualMachine

    vm = VirtualMachine(tvm.compile(mod, target=target), tvm.cpu())
    x = sample_input(shape, seed=8)
    assert np.abs(vm["main"](tvm.runtime.tensor(x)).numpy() - ort_run(m, x)).max() <= TOL


def _onnx(net: nn.Module, shape, tmp_path: Path):
    net.eval()
    m, _ = torch_to_onnx(net, shape, tmp_path / "m.onnx")
    s, _, _ = simplify(m, sample_input(shape))
    return s


def _matches_onnxruntime(net: nn.Module, shape, tmp_path: Path, seed: int):
    """``net`` exported, lowered with the hand-written kernels and run; asserts its output is ONNX Runtime's
    (same shape, within TOL) and returns (ONNX model, schedules report, lowered module)."""
    m = _onnx(net, shape, tmp_path)
    x = sample_input(shape, seed=seed)
    out, report, mod = _run(m, shape, x)
    ref = ort_run(m, x)
    assert out.shape == ref.shape and np.abs(out - ref).max() <= TOL
    return m, report, mod


@pytest.fixture(scope="module")
def m2unet_small(tmp_path_factory, drive_weights):
    from models import create_model

    shape = (1, 3, 64, 96)
    return _onnx(create_model("m2unet", weights=drive_weights), shape, tmp_path_factory.mktemp("m2u")), shape


def test_m2unet_kernels_are_all_hand_written_and_match_onnxruntime(m2unet_small):
    m, shape = m2unet_small
    x = sample_input(shape, seed=3)
    out, report, mod = _run(m, shape, x)
    kinds = sorted(report.scheduled.values())
    # 35 fused convolutions: the stem 3x3, 17 depthwise, 17 pointwise (some shared between blocks)
    assert kinds.count("dense") == 1
    assert kinds.count("depthwise") >= 10 and kinds.count("pointwise") >= 15
    assert report.graph_rewrites == 4  # the decoder's four x2 upsample + skip concats
    assert not report.failed and not report.default
    assert np.abs(out - ort_run(m, x)).max() <= TOL


class _Odd(nn.Module):
    """Shapes that divide no tile: odd channel counts, odd sizes, stride 2, residuals, an upsample + concat."""

    def __init__(self) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.stem = nn.Conv2d(3, 19, 3, 2, 1)
        self.dw = nn.Conv2d(19, 19, 3, 1, 1, groups=19)
        self.dw2 = nn.Conv2d(19, 19, 3, 2, 1, groups=19)
        self.pw = nn.Conv2d(19, 19, 1)
        self.pw2 = nn.Conv2d(22, 7, 1)
        self.big = nn.Conv2d(7, 5, 3, 1, 1)
        self.dil = nn.Conv2d(5, 1, 3, 1, 2, dilation=2)
        self.ex = nn.Conv2d(19, 29, 1)  # an inverted residual with stride 2: expand, depthwise s2, project
        self.dw3 = nn.Conv2d(29, 29, 3, 2, 1, groups=29)
        self.pr = nn.Conv2d(29, 3, 1)
        self.ex2 = nn.Conv2d(19, 41, 1)  # and one with stride 1 and the residual add
        self.dw4 = nn.Conv2d(41, 41, 3, 1, 1, groups=41)
        self.pr2 = nn.Conv2d(41, 19, 1)
        for p in self.parameters():
            p.data = torch.randn(p.shape, generator=g) * 0.3

    def forward(self, x):
        a = torch.clamp(self.stem(x), 0, 6)
        b = F.relu6(self.dw(a))
        c = self.pw(b)
        c = c + self.pr2(F.relu6(self.dw4(F.relu6(self.ex2(c)))))
        d = F.relu(self.dw2(c))
        u = F.interpolate(d, scale_factor=2.0, mode="bilinear", align_corners=False)
        u = u[:, :, : (x.shape[2] + 1) // 2, : (x.shape[3] + 1) // 2]
        e = self.pw2(torch.cat([u, x[:, :, ::2, ::2]], dim=1))
        f = self.pr(F.relu6(self.dw3(F.relu6(self.ex(c)))))  # (1, 3, H/4, W/4)
        f = F.interpolate(f, size=e.shape[2:], mode="nearest")
        return self.dil(F.relu(self.big(e))) + f[:, :1]


class _Dilated(nn.Module):
    """ERFNet's factorised convolutions (3x1 / 1x3, dilated by 2..16, some with stride), and a dilated depthwise."""

    def __init__(self) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.c31 = nn.Conv2d(3, 8, (3, 1), 1, (1, 0))
        self.c13 = nn.Conv2d(8, 8, (1, 3), 1, (0, 1))
        self.d31 = nn.Conv2d(8, 8, (3, 1), 1, (4, 0), dilation=(4, 1))
        self.d13 = nn.Conv2d(8, 8, (1, 3), 1, (0, 4), dilation=(1, 4))
        self.d33s = nn.Conv2d(8, 6, 3, 2, 3, dilation=3)
        self.dwd = nn.Conv2d(6, 6, 3, 1, 2, dilation=2, groups=6)
        self.dws = nn.Conv2d(6, 6, 3, 2, 5, dilation=(5, 2), groups=6)
        self.out = nn.Conv2d(6, 1, 1)
        for p in self.parameters():
            p.data = torch.randn(p.shape, generator=g) * 0.3

    def forward(self, x):
        a = F.relu(self.c13(F.relu(self.c31(x))))
        b = F.relu(self.d13(F.relu(self.d31(a))) + a)
        c = F.relu(self.d33s(b))
        return self.out(F.relu(self.dws(F.relu(self.dwd(c)))))


@pytest.mark.parametrize("hw", [(32, 48), (13, 21)])
def test_dilated_and_factorised_convolutions_are_hand_written_and_match_onnxruntime(tmp_path, hw):
    _, report, _ = _matches_onnxruntime(_Dilated(), (1, 3, *hw), tmp_path, seed=2)
    kinds = [k for n, k in report.scheduled.items() if "conv2d" in n]
    assert kinds.count("dense") == 5 and kinds.count("depthwise") == 2, report.scheduled
    assert not report.default and not report.failed
    dils = {(mt.dil_h, mt.dil_w) for mt in report.matches.values()}
    assert {(4, 1), (1, 4), (3, 3), (2, 2), (5, 2)} <= dils


def _randomise(net: nn.Module, seed: int, scale: float) -> None:
    """Random weights (N(0, scale)) and BatchNorm statistics that fold into something other than identity."""
    g = torch.Generator().manual_seed(seed)
    for mod in net.modules():
        if isinstance(mod, nn.BatchNorm2d):
            mod.running_mean.data = torch.randn(mod.num_features, generator=g) * 0.1
            mod.running_var.data = torch.rand(mod.num_features, generator=g) + 0.5
    for p in net.parameters():
        p.data = torch.randn(p.shape, generator=g) * scale


class _Deep(nn.Module):
    """A U-Net's deep, narrow end: dense 3x3 convolutions over 16-32 channels on rows shorter than six vectors
    (stride 1 and 2, BN folded, a residual add, rows dilated), the layers that
    export.schedules.kernels.dense_channels takes."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Sequential(nn.Conv2d(16, 32, 3, 1, 1), nn.BatchNorm2d(32), nn.ReLU())
        self.c2 = nn.Conv2d(32, 32, 3, 2, 1)
        self.c3 = nn.Conv2d(32, 32, 3, 1, 1)
        self.c4 = nn.Conv2d(32, 16, 3, 1, 1)
        self.d = nn.Conv2d(16, 16, 3, 1, (2, 1), dilation=(2, 1))  # one output row per pass
        self.out = nn.Conv2d(16, 1, 1)
        _randomise(self, seed=3, scale=0.2)

    def forward(self, x):
        a = F.relu(self.c2(self.c1(x)))
        return self.out(F.relu(self.d(F.relu(self.c4(F.relu(self.c3(a) + a))))))


@pytest.mark.parametrize("level", [None, "x86-64-v3"])
def test_deep_narrow_convolutions_vectorise_over_output_channels_and_match_onnxruntime(tmp_path, level):
    """AVX-512 / AVX2 (the host's, then AVX2 on purpose), Winograd off (it takes the stride-1 layers when on):
    every dense 3x3 here is a dense_channels kernel, its call passes the weight packed
    (Cout / lanes, Cin, 3, 3, lanes), and the output is ONNX Runtime's."""
    from export.schedules import cpu_of, kernels_off

    if get_target("x86_64").is_cross:
        pytest.skip("needs an x86-64 host")
    if "avx2" not in (Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").is_file() else ""):
        pytest.skip("this host has no avx2")
    shape = (1, 16, 21, 30)  # odd rows: the last pair of output rows shifts back
    m = _onnx(_Deep(), shape, tmp_path)
    with kernels_off("winograd"):
        (mod, _, report), target = _lowered(m, shape, _x86(level))
    lanes = cpu_of(target).lanes
    kinds = sorted(k for n, k in report.scheduled.items() if "conv2d" in n)
    assert kinds == ["dense_channels"] * 5 + ["pointwise"] and not report.failed, report.scheduled
    consts = [c.value.shape for c in _constants(mod) if hasattr(c.value, "shape") and len(c.value.shape) == 5]
    assert sorted(consts) == sorted([(32 // lanes, 16, 3, 3, lanes), (32 // lanes, 32, 3, 3, lanes),
                                     (32 // lanes, 32, 3, 3, lanes), (16 // lanes, 32, 3, 3, lanes),
                                     (16 // lanes, 16, 3, 3, lanes)])
    _assert_matches_ort(mod, target, m, shape)


class _Factorised(nn.Module):
    """ERFNet's non-bottleneck-1D blocks: 3x1 then 1x3 convolutions, BN folded, ReLU, dilated 1-8 along each
    axis, a residual add in the last epilogue; sizes that divide no Winograd tile (the last tiles run past the
    border, a dilation of 8 on 23 rows leaves tiles empty) and a 1x3 to 8 channels (too few: the direct kernel)."""

    def __init__(self) -> None:
        super().__init__()
        c = 32
        self.inp = nn.Conv2d(8, c, 1)
        self.blocks = nn.ModuleList()
        for d in (1, 2, 8):
            self.blocks.append(nn.ModuleList([nn.Conv2d(c, c, (3, 1), padding=(d, 0), dilation=(d, 1)),
                                              nn.Conv2d(c, c, (1, 3), padding=(0, d), dilation=(1, d)),
                                              nn.BatchNorm2d(c)]))
        self.small = nn.Conv2d(c, 8, (1, 3), padding=(0, 1))
        _randomise(self, seed=5, scale=0.2)

    def forward(self, x):
        x = self.inp(x)
        for a, b, bn in self.blocks:
            x = F.relu(bn(b(F.relu(a(x)))) + x)
        return self.small(x)


def _winograd_lowered(net: nn.Module, shape, tmp_path: Path, level: str | None):
    """(ONNX model, lowered module, target, [(match, plan) of every Winograd kernel]) of ``net`` for :func:`_x86`
    ``level``; skips off x86, fails on a kernel that did not build."""
    from export.schedules import cpu_of
    from export.schedules.kernels import winograd_plan

    if get_target("x86_64").is_cross:
        pytest.skip("needs an x86-64 host")
    m = _onnx(net, shape, tmp_path)
    (mod, _, report), target = _lowered(m, shape, _x86(level))
    assert not report.failed, report.failed
    found = [(mt, winograd_plan(mt, cpu_of(target))) for mt in report.matches.values() if mt.kind == "winograd"]
    return m, mod, target, found


@pytest.mark.parametrize("level", [None, "x86-64-v2"])
def test_factorised_convolutions_run_as_winograd_and_match_onnxruntime(tmp_path, level):
    """Every 3x1 / 1x3 of 16+ channels is a Winograd kernel (the host's vectors, then SSE's 4 lanes, NEON's
    width), its call passes the transformed weight (m + 2, Cout, Cin), and the output is ONNX Runtime's."""
    from export.schedules import cpu_of
    from export.schedules.kernels import WINOGRAD

    shape = (1, 8, 23, 61)
    m, mod, target, found = _winograd_lowered(_Factorised(), shape, tmp_path, level)
    plans = sorted((p.axis, p.d, p.m) for _, p in found)
    if cpu_of(target).lanes == 4:
        assert plans == [(a, d, 4) for a in "hw" for d in (1, 2, 8)], plans
    else:  # 16 / 8 lanes: rows of 61 px are dense_channels kernels, cheaper where tiles leave lanes empty
        assert plans, found
    consts = sorted(c.value.shape for c in _constants(mod) if hasattr(c.value, "shape") and len(c.value.shape) == 3
                    and c.value.shape[0] - 2 in WINOGRAD)
    assert consts == [(6, 32, 32)] * len(plans), consts
    _assert_matches_ort(mod, target, m, shape)


class _Dense3x3(nn.Module):
    """A U-Net's double convolutions: 3x3, BN folded, ReLU, dilated 1 and 2, a residual add, 32 -> 48 channels,
    on rows that divide into no tile; a strided 3x3 (not Winograd) between."""

    def __init__(self) -> None:
        super().__init__()
        self.inp = nn.Conv2d(3, 32, 3, padding=1)
        self.a = nn.Conv2d(32, 32, 3, padding=1)
        self.bn = nn.BatchNorm2d(32)
        self.b = nn.Conv2d(32, 48, 3, padding=2, dilation=2)
        self.down = nn.Conv2d(48, 48, 3, stride=2, padding=1)
        self.c = nn.Conv2d(48, 32, 3, padding=1)
        _randomise(self, seed=6, scale=0.2)

    def forward(self, x):
        x = self.inp(x)
        x = F.relu(self.bn(self.a(x))) + x
        return self.c(F.relu(self.down(F.relu(self.b(x)))))


@pytest.mark.parametrize("level", [None, "x86-64-v2"])
def test_dense_3x3_convolutions_run_as_winograd_along_rows_and_match_onnxruntime(tmp_path, level):
    """A stride-1 3x3 of 16+ channels is Winograd down its rows, its three column taps summed in the GEMM
    (transformed weight (m + 2, Cout, Cin * 3)); the strided one and the 3-channel stem stay direct; the
    output is ONNX Runtime's."""
    from export.schedules import cpu_of

    shape = (1, 3, 23, 61)
    m, mod, target, found = _winograd_lowered(_Dense3x3(), shape, tmp_path, level)
    plans = {(mt.cin, mt.cout, mt.dil_w): p for mt, p in found}
    assert all(p.axis == "h" and p.kw == 3 for p in plans.values()), plans
    if cpu_of(target).lanes == 4:
        assert sorted(plans) == [(32, 32, 1), (32, 48, 2), (48, 32, 1)], plans
        assert plans[(32, 48, 2)].dw == 2 and plans[(32, 48, 2)].d == 2
    consts = sorted(c.value.shape for c in _constants(mod) if hasattr(c.value, "shape") and len(c.value.shape) == 3)
    assert consts == sorted((p.m + 2, co, ci * 3) for (ci, co, _), p in plans.items()), consts
    _assert_matches_ort(mod, target, m, shape)


def test_winograd_transforms_compute_a_three_tap_correlation():
    """AT ((G g) * (BT d)) is y[i] = sum_k g[k] d[i + k] for every F(m, 3) the kernel uses."""
    from export.schedules.kernels import WINOGRAD

    rng = np.random.default_rng(0)
    for mt, (bt, g, at) in WINOGRAD.items():
        w, d = rng.standard_normal(3), rng.standard_normal(mt + 2)
        y = np.asarray(at) @ ((np.asarray(g) @ w) * (np.asarray(bt) @ d))
        assert np.allclose(y, [w @ d[i:i + 3] for i in range(mt)], atol=1e-12), mt


def _constants(mod) -> list:
    from tvm import relax
    from tvm.ir import Constant

    found = []
    relax.analysis.post_order_visit(mod["main"], lambda e: found.append(e) if isinstance(e, Constant) else None)
    return found


class _MobileBlocks(nn.Module):
    """What HybridNetSeg / MobileNetV3 blocks are made of: grouped 1x1 and 3x3 convolutions, BN folded into
    them, hard-swish (t * clip(t + 3, 0, 6) / 6, which reads the biased value twice) and a sigmoid gate."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 12, 3, 2, 1), nn.BatchNorm2d(12), nn.Hardswish())
        self.gexp = nn.Sequential(nn.Conv2d(12, 24, 1, groups=2), nn.BatchNorm2d(24), nn.Hardswish())
        self.g3 = nn.Conv2d(24, 18, 3, 1, 1, groups=3)
        self.gproj = nn.Sequential(nn.Conv2d(18, 12, 1, groups=6), nn.BatchNorm2d(12))
        self.gate = nn.Conv2d(12, 5, 1)
        _randomise(self, seed=0, scale=0.3)

    def forward(self, x):
        a = self.stem(x)
        b = self.gproj(F.relu(self.g3(self.gexp(a)))) + a
        return torch.sigmoid(self.gate(b)) * 2.0 - 1.0


@pytest.mark.parametrize("hw", [(32, 48), (17, 23)])
def test_grouped_convolutions_and_hard_swish_are_hand_written_and_match_onnxruntime(tmp_path, hw):
    _, report, _ = _matches_onnxruntime(_MobileBlocks(), (1, 3, *hw), tmp_path, seed=5)
    convs = {n: report.matches[n] for n in report.scheduled if "conv2d" in n}
    assert len(convs) == 5 and not report.failed, (report.scheduled, report.default)
    assert sorted(mt.groups for mt in convs.values()) == [1, 1, 2, 3, 6]
    ops = [[(o.op, o.operand) for o in mt.epilogue] for mt in convs.values()]
    # hard-swish, read as one epilogue, its division by 6 a multiply (rewrite_constant_division)
    assert any(("mul", "stage") in o and ("mul", "const") in o for o in ops)
    assert not any(op == "div" for o in ops for op, _ in o)
    assert any(("sigmoid", "none") in o for o in ops)


class _Leftovers(nn.Module):
    """Kernels no hand-written code covers: max pool, concat, a mean over the channels, a resize."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 1)

    def forward(self, x):
        a = F.max_pool2d(F.relu(self.conv(x)), 2)
        b = torch.cat([a, a.mean(dim=1, keepdim=True), F.max_pool2d(x, 2)], dim=1)
        return F.interpolate(b, scale_factor=2, mode="nearest")


def test_what_nothing_else_schedules_gets_the_generic_parallel_schedule(tmp_path):
    shape = (1, 3, 64, 64)  # pooled rows of 32: a whole number of vectors (4, 8 or 16 lanes) for the concat
    m, report, mod = _matches_onnxruntime(_Leftovers(), shape, tmp_path, seed=7)
    assert report.generic and set(report.generic) == set(report.default), (report.generic, report.default)
    scripts = [mod[n].script() for n in report.generic]
    assert all("T.parallel" in sc for sc in scripts)
    assert any("T.vectorized" in sc for sc in scripts)
    # the default lowering, on request, leaves them as legalization wrote them
    _, plain, _ = _run(m, shape, sample_input(shape, seed=7), hand_kernels=False)
    assert plain.generic == []


class _Deformable(nn.Module):
    """The zoo's grid sampling: HybridNetSeg's DCNv2 (offsets and a sigmoid mask from a convolution, taps moved
    by several pixels, many of them off the map), DU-Net's per-channel offsets, and a plain
    ``F.grid_sample`` with ``align_corners=True`` on a grid reaching past [-1, 1]."""

    def __init__(self) -> None:
        super().__init__()
        from models.deform import ConvOffset2D, DeformConv2d

        self.dcn = DeformConv2d(3, 6, 3, stride=2)
        self.offsets = ConvOffset2D(6)
        self.grid = nn.Conv2d(6, 2, 1)
        _randomise(self, seed=2, scale=0.3)
        with torch.no_grad():
            self.dcn.conv_offset.weight.mul_(8.0)  # offsets of several pixels: corners off the map
            self.offsets.conv.weight.mul_(8.0)

    def forward(self, x):
        a = self.offsets(self.dcn(x))
        g = torch.tanh(self.grid(a)).permute(0, 2, 3, 1) * 1.2
        return F.grid_sample(a, g, mode="bilinear", padding_mode="zeros", align_corners=True)


@pytest.mark.parametrize("hw,level", [((16, 24), None), ((11, 7), None), ((11, 7), "x86-64-v2")])
def test_grid_sampling_is_hand_written_with_the_dcn_mask_folded_in_and_matches_onnxruntime(tmp_path, hw, level):
    """On the host (AVX2 / AVX-512: a row buffer read with gathers) and on 4-lane SSE (the NEON form: a
    sampling point's weights in registers, the channel loop inside)."""
    import tvm
    from tvm.runtime.vm import VirtualMachine

    if get_target("x86_64").is_cross:
        pytest.skip("needs an x86-64 host")
    shape = (1, 3, *hw)
    m = _onnx(_Deformable(), shape, tmp_path)
    (mod, _, report), target = _lowered(m, shape, _x86(level))
    scripts = [f.script() for gv, f in mod.functions.items() if gv.name_hint.startswith("grid_sample")]
    assert scripts and all(("wt[" in sc) == (level is None and "avx2" in
                                                             Path("/proc/cpuinfo").read_text()) for sc in scripts)
    vm = VirtualMachine(tvm.compile(mod, target=target), tvm.cpu())
    x = sample_input(shape, seed=4)
    assert np.abs(vm["main"](tvm.runtime.tensor(x)).numpy() - ort_run(m, x)).max() <= TOL
    names = [gv.name_hint for gv in mod.functions]
    assert not [n for n in report.default + list(report.failed) if "grid_sample" in n], report.default
    assert sum(n.startswith("grid_sample_scaled") for n in names) == 1  # the DCN: mask folded in
    assert sum(n.startswith("grid_sample") and "scaled" not in n for n in names) == 2  # DU-Net's, the plain one
    # the mask's sigmoid is computed once per sampling point, not fused into a product over the channels
    assert not [n for n in names if "sigmoid" in n and "multiply" in n], names


class _Transposed(nn.Module):
    """The zoo's transposed convolutions: U-Net's 2x2 stride 2, ERFNet's 3x3 stride 2 (padding 1, output padding
    1), a 4x4 stride 2 and an odd 3x1 stride 1 (a convolution with flipped weights), with bias and ReLU."""

    def __init__(self) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.up2 = nn.ConvTranspose2d(3, 8, 2, stride=2)
        self.up3 = nn.ConvTranspose2d(8, 6, 3, stride=2, padding=1, output_padding=1)
        self.up4 = nn.ConvTranspose2d(6, 5, 4, stride=2, padding=1)
        self.flat = nn.ConvTranspose2d(5, 2, (3, 1), stride=1, padding=(1, 0))
        for p in self.parameters():
            p.data = torch.randn(p.shape, generator=g) * 0.3

    def forward(self, x):
        return self.flat(F.relu(self.up4(F.relu(self.up3(F.relu(self.up2(x)))))))


@pytest.mark.parametrize("hw", [(8, 12), (5, 7)])
def test_transposed_convolutions_run_as_hand_written_subpixel_convolutions(tmp_path, hw):
    shape = (1, 3, *hw)
    m = _onnx(_Transposed(), shape, tmp_path)
    x = sample_input(shape, seed=3)
    out, report, _ = _run(m, shape, x)
    assert report.graph_rewrites == 4, report
    assert not [n for n in report.default if "conv2d" in n], report.default
    assert sorted(k for n, k in report.scheduled.items() if "conv2d" in n) == ["dense", "dense", "dense",
                                                                               "pointwise"]
    ref = ort_run(m, x)
    assert out.shape == ref.shape == (1, 2, 8 * hw[0], 8 * hw[1]) and np.abs(out - ref).max() <= TOL


def test_a_wide_dense_convolution_stages_its_rows_in_the_workspace(tmp_path, monkeypatch):
    """More staged input rows than the stack takes (160 channels x 3 rows x 66 columns = 124 KB): a workspace
    buffer, same result."""
    import export.schedules.kernels as kernels

    net = nn.Sequential(nn.Conv2d(3, 160, 1), nn.ReLU(), nn.Conv2d(160, 4, 3, padding=1))
    shape = (1, 3, 12, 64)
    m = _onnx(net, shape, tmp_path)
    x = sample_input(shape, seed=4)
    seen = []
    real = kernels.dense
    monkeypatch.setattr(kernels, "dense", lambda mt, cpu, name="main": seen.append(t := real(mt, cpu, name)) or t)
    out, report, _ = _run(m, shape, x)
    assert sorted(report.scheduled.values()) == ["dense", "pointwise"] and not report.default
    assert len(seen) == 1 and 'scope="global"' in seen[0]
    assert np.abs(out - ort_run(m, x)).max() <= TOL


def test_subpixel_plan_covers_every_output_row_once():
    from export.schedules.graph import subpixel_plan

    for h, s, p, k, op in [(5, 2, 0, 2, 0), (5, 2, 1, 3, 1), (6, 2, 1, 4, 0), (4, 3, 1, 3, 2), (7, 1, 1, 3, 0)]:
        hout = (h - 1) * s - 2 * p + k + op
        kd, before, after, taps = subpixel_plan(h, hout, s, p, k)
        for y in range(hout):  # brute force: the (input row, tap) pairs of output row y, both ways
            want = {(iy, ky) for iy in range(h) for ky in range(k) if iy * s - p + ky == y}
            q, a = divmod(y, s)
            got = {(q + dy - before, ky) for pa, ky, dy in taps if pa == a if 0 <= q + dy - before < h}
            assert got == want, (h, s, p, k, y)
        assert h + before + after - kd + 1 == hout // s
    assert subpixel_plan(5, 9, 2, 0, 1) is None  # an odd output: not whole phases


@pytest.fixture
def fuse_everything(monkeypatch):
    """Fuse every chain however small (the size thresholds only decide where fusing pays)."""
    import export.schedules.fused as fused

    monkeypatch.setattr(fused, "MIN_BYTES", 0)
    monkeypatch.setattr(fused, "MIN_WIDTH", 0)


@pytest.mark.parametrize("hw", [(22, 38), (6, 10), (2, 2), (9, 5)])
@pytest.mark.parametrize("fuse", [False, True])
def test_odd_shapes_match_onnxruntime(tmp_path, hw, fuse, request):
    if fuse:
        request.getfixturevalue("fuse_everything")
    shape = (1, 3, *hw)
    m = _onnx(_Odd(), shape, tmp_path)
    x = sample_input(shape, seed=1)
    out, report, _ = _run(m, shape, x)
    assert {"dense", "depthwise", "pointwise"} <= set(report.scheduled.values())
    # the last convolution keeps the default lowering: its epilogue adds a strided slice (not an elementwise
    # operand); that it is dilated is no longer a reason (see the dilated test below)
    assert [n for n in report.default if "conv2d" in n] == [n for n in report.default if "strided_slice" in n
                                                            and "conv2d" in n]
    if fuse and min(hw) >= 5:  # stem -> depthwise -> projection; expand -> depthwise -> projection + residual;
        assert len(report.fused) == 3, report.fused  # the same with stride 2
    ref = ort_run(m, x)
    assert out.shape == ref.shape and np.abs(out - ref).max() <= TOL


@pytest.mark.parametrize("lowres", [True, False])
def test_m2unet_chains_stream_row_by_row_and_match_onnxruntime(m2unet_small, fuse_everything, lowres, monkeypatch):
    """lowres: the decoder's first 1x1 convolution runs before the x2 upsampling (it commutes with it);
    otherwise the upsampled concat is staged row by row at full resolution."""
    import export.schedules.fused as fused

    if not lowres:
        monkeypatch.setattr(fused, "_lowres_split", lambda chain: None)
    m, shape = m2unet_small
    x = sample_input(shape, seed=5)
    out, report, mod = _run(m, shape, x)
    # the stem block, 12 inverted residuals and the 4 decoder blocks (upsample + concat included)
    assert len(report.fused) == 17
    assert sum(f.startswith("upsample_concat") for f in report.fused) == 4
    assert np.abs(out - ort_run(m, x)).max() <= TOL


def test_large_tiles_fuse_only_where_the_intermediate_is_big():
    from export.schedules.fused import fusable
    from export.schedules.match import ConvMatch

    def conv(kind, cin, cout, h, w, k=1, s=1, p=0, ho=None):
        ho = ho or (h + 2 * p - k) // s + 1
        return ConvMatch(kind, 0, 1, 2, cin, h, w, cout, ho, ho * w // h, k, k, s, s, p, p, (), ())

    ir = (conv("pointwise", 16, 96, 272, 272), conv("depthwise", 96, 96, 272, 272, 3, 2, 1),
          conv("pointwise", 96, 24, 136, 136))
    assert fusable(*ir)
    small = (conv("pointwise", 96, 576, 34, 34), conv("depthwise", 576, 576, 34, 34, 3, 1, 1),
             conv("pointwise", 576, 96, 34, 34))
    assert not fusable(*small)  # 34-pixel rows: row-sized tiles would waste more than the traffic saved


def test_default_lowering_is_kept_on_request(m2unet_small):
    m, shape = m2unet_small
    x = sample_input(shape, seed=4)
    out, report, mod = _run(m, shape, x, hand_kernels=False)
    assert report.count == 0
    assert np.abs(out - ort_run(m, x)).max() <= TOL


def test_matcher_reads_what_the_fused_kernel_computes(m2unet_small):
    import tvm

    from export.schedules import match_conv

    m, shape = m2unet_small
    (mod, _, _), _ = _lowered(m, shape, hand_kernels=False)
    found = {}
    for gv, f in mod.functions.items():
        if isinstance(f, tvm.tirx.PrimFunc):
            found[gv.name_hint] = match_conv(f)
    stem = found["fused_conv2d_add_maximum_minimum"]
    assert (stem.kind, stem.cin, stem.cout, stem.kh, stem.sh, stem.ph, stem.ho, stem.wo) == \
        ("dense", 3, 32, 3, 2, 1, 32, 48)
    assert [(o.op, o.operand) for o in stem.epilogue] == [("add", "chan"), ("max", "scalar"), ("min", "scalar")]
    res = [v for k, v in found.items() if k.endswith("_add6")][0]  # a projection with the residual add
    assert res.kind == "pointwise" and [o.operand for o in res.epilogue] == ["chan", "tensor"]
    assert all(v is None for k, v in found.items() if "resize" in k)


@pytest.mark.cross
def test_arm64_build_with_hand_kernels_compiles(tmp_path, m2unet_small):
    import tvm
    from tvm.support import cc

    from export.targets import AARCH64_CXX

    if get_target("arm64").is_cross:
        import shutil

        if shutil.which(AARCH64_CXX) is None:
            pytest.skip(f"{AARCH64_CXX} is not installed")
    m, shape = m2unet_small
    (mod, _, report), target = _lowered(m, shape, "arm64")
    assert report.count >= 30 and not report.failed
    ex = tvm.compile(mod, target=target)
    lib = tmp_path / "m.so"
    ex.export_library(str(lib), fcompile=cc.cross_compiler(AARCH64_CXX))
    assert lib.read_bytes()[18] == 183  # EM_AARCH64
    asm = "".join(m_.inspect_source("asm") for m_ in ex.mod._collect_dso_modules())
    assert re.search(r"fmla\s+v\d+\.4s", asm)  # NEON multiply-accumulate on 4-lane vectors


class _Pooled(nn.Module):
    """A conv the hand kernels take and a max-pool they do not: the pool is what tuning gets."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 1)

    def forward(self, x):
        return F.max_pool2d(F.relu(self.conv(x)), 2)


@pytest.mark.slow
def test_tuning_two_trials_writes_a_database_the_compile_applies(tmp_path):
    from export.targets import get_target
    from export.tuning import open_database, tune
    from export.tvm_stage import compile_library, run_library

    shape = (1, 3, 16, 16)
    m = _onnx(_Pooled(), shape, tmp_path)
    db = tmp_path / "db"
    preset = get_target("x86_64")
    tasks = tune(m, m.graph.input[0].name, list(shape), preset, db, trials=2)
    assert tasks == 1  # the 1x1 convolution is hand-written, only the pool is tuned
    database = open_database(db, preset)
    assert database.used >= 1
    plain = compile_library(m, m.graph.input[0].name, list(shape), preset, tmp_path / "p.so")
    # without the database the pool gets the generic schedule; meta.json records it apart from the default lowering
    assert plain.generic_kernels == ("max_pool2d",) and plain.default_kernels == ()
    c = compile_library(m, m.graph.input[0].name, list(shape), preset, tmp_path / "m.so", database=database)
    assert c.tuned_tasks == 1 and c.hand_kernels == 1 and c.default_kernels == () and c.generic_kernels == ()
    x = sample_input(shape)
    assert np.abs(run_library(c.library, x) - ort_run(m, x)).max() <= TOL


def test_tuning_a_fully_hand_scheduled_graph_leaves_an_empty_database(tmp_path, capsys):
    from export.targets import get_target
    from export.tuning import tune

    shape = (1, 3, 16, 16)
    net = nn.Sequential(nn.Conv2d(3, 8, 1), nn.ReLU6(), nn.Conv2d(8, 8, 3, padding=1, groups=8))
    m = _onnx(net, shape, tmp_path)
    assert tune(m, m.graph.input[0].name, list(shape), get_target("x86_64"), tmp_path / "db", trials=2) == 0
    assert (tmp_path / "db" / "database_tuning_record.json").is_file()
    assert "nothing to tune" in capsys.readouterr().err


@pytest.mark.slow
def test_edge_export_tune_on_m2unet_says_nothing_was_tuned(tmp_path, capsys):
    """Every M2U-Net kernel is hand-written: `edge-export --tune N` says so in its summary (not "N trials")
    and meta.json records the empty database, 0 tuned and all hand-written kernels."""
    import json

    from export.cli import main

    db = tmp_path / "db"
    assert main(["m2unet", "--input-size", "32", "--tune", "2", "--tuning-db", str(db),
                 "--out", str(tmp_path / "pkg")]) == 0
    out = capsys.readouterr().out
    assert "nothing to tune" in out and "2 trials" not in out
    tuning = json.loads((tmp_path / "pkg" / "meta.json").read_text())["tuning"]
    assert tuning["database"] == str(db) and tuning["tuned_kernels"] == 0 and tuning["hand_kernels"] >= 30
    assert tuning["default_lowering"] == []
    assert tuning["generic_kernels"] == []
    assert (f"tuning   {db}: 0 tuned kernels, {tuning['hand_kernels']} hand-written, 0 on the generic parallel "
            "schedule, 0 on TVM's default lowering" in out)


@pytest.mark.parametrize("level,feature", [("x86-64-v3", "avx2"), ("x86-64-v2", "sse4.2")])
def test_narrower_x86_vectors_compute_the_same(m2unet_small, fuse_everything, level, feature):
    """AVX2 (8 lanes, 16 registers) and SSE (4 lanes) tiles, run on this host when it has them."""
    import tvm
    from tvm.runtime.vm import VirtualMachine

    from export.schedules import cpu_of

    if get_target("x86_64").is_cross:
        pytest.skip("needs an x86-64 host")
    flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").is_file() else ""
    if feature.replace(".", "_") not in flags:
        pytest.skip(f"this host has no {feature}")
    m, shape = m2unet_small
    raw = '{"kind": "llvm", "mtriple": "x86_64-linux-gnu", "mcpu": "%s"}' % level
    (mod, _, report), target = _lowered(m, shape, raw)
    assert cpu_of(target).lanes == (8 if level.endswith("v3") else 4)
    assert len(report.fused) == 17
    vm = VirtualMachine(tvm.compile(mod, target=target), tvm.cpu())
    x = sample_input(shape, seed=6)
    assert np.abs(vm["main"](tvm.runtime.tensor(x)).numpy() - ort_run(m, x)).max() <= TOL


@pytest.mark.slow
def test_shipped_database_is_applied_by_default_and_foreign_records_are_ignored(tmp_path, monkeypatch, capsys):
    """A database under export/tuning/<class>/<model>-<H>x<W> is what a plain export applies; records made for
    another target (here rewritten to a Cortex-A72's) are dropped with a notice and the output stays right."""
    import json

    import export.tuning as tuning
    from export.pipeline import export_model
    from export.targets import get_target
    from export.tuning import database_dir, tune

    shape = (1, 3, 16, 16)
    m = _onnx(_Pooled(), shape, tmp_path)
    onnx_file = tmp_path / "pooled.onnx"
    import onnx

    onnx.save(m, onnx_file)
    monkeypatch.setattr(tuning, "SHIPPED", tmp_path / "shipped")
    preset = get_target("x86_64")
    db = database_dir(preset, "pooled", (16, 16))
    assert tune(m, m.graph.input[0].name, list(shape), preset, db, trials=2) == 1
    r = export_model(str(onnx_file), "x86_64", out=tmp_path / "pkg")
    assert r.meta["tuning"] == {"database": str(db), "tuned_kernels": 1, "hand_kernels": 1, "generic_kernels": [],
                                "default_lowering": []}

    rec = db / "database_tuning_record.json"
    lines = [json.loads(ln) for ln in rec.read_text().splitlines() if ln.strip()]
    for ln in lines:
        ln[1][2] = {**ln[1][2], "mtriple": "aarch64-linux-gnu", "mcpu": "cortex-a72"}
    rec.write_text("".join(json.dumps(ln) + "\n" for ln in lines))
    capsys.readouterr()
    r = export_model(str(onnx_file), "x86_64", out=tmp_path / "pkg2")
    assert "made for another target and are ignored" in capsys.readouterr().err
    assert r.meta["tuning"]["tuned_kernels"] == 0
    assert all(p["passed"] for p in r.meta["parity"])
