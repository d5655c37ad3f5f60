"""HybridNetSeg (Luo et al., seeds/001): hybrid convolution blocks (DCNv2 + MixConv bottlenecks), M2U-Net decoder."""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from models.blocks import SegmentationModel
from models.deform import DeformConv2d
from models.m2unet import DecoderBlock
from models.registry import ModelSpec, register_model


def _split(channels: int, parts: int) -> list[int]:
    """Equal channel split, remainder to the first group (MixNet)."""
    sizes = [channels // parts] * parts
    sizes[0] += channels - sum(sizes)
    return sizes


class MixConv(nn.Module):
    """Depthwise convolution whose channel groups use different kernel sizes (Tan & Le, MixConv)."""

    def __init__(self, channels: int, kernels: Sequence[int], stride: int) -> None:
        super().__init__()
        self.sizes = _split(channels, len(kernels))
        self.convs = nn.ModuleList(
            nn.Conv2d(c, c, k, stride, k // 2, groups=c, bias=False) for c, k in zip(self.sizes, kernels)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if len(self.convs) == 1:
            return self.convs[0](x)
        return torch.cat([conv(part) for conv, part in zip(self.convs, torch.split(x, self.sizes, dim=1))], dim=1)


class SqueezeExcite(nn.Module):
    """MobileNetV3 squeeze-and-excitation with a hard-sigmoid gate."""

    def __init__(self, channels: int, reduced: int) -> None:
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.reduce = nn.Conv2d(channels, reduced, 1)
        self.act = nn.ReLU(inplace=True)
        self.expand = nn.Conv2d(reduced, channels, 1)
        self.gate = nn.Hardsigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gate(self.expand(self.act(self.reduce(self.pool(x)))))


class MNBlock(nn.Module):
    """MobileNetV3 bottleneck with MixConv as its depthwise convolution (Table 1 "MNBlock").

    Expansion 1x1, MixConv, optional SE, linear projection 1x1, BN after each convolution, residual when
    shape is kept. The table gives kernels, expansion ``t`` and SE ratio but no activations: we follow
    MobileNetV3/MixNet and use ReLU in the blocks without SE and hard-swish in the blocks with SE, and size
    the SE bottleneck as ``se * input channels`` (MixNet's convention for its ratios .5/.25).

    ``pw_groups`` splits the expansion and projection 1x1 convolutions into groups, as MixNet-S does in the
    blocks whose rows Table 1 copies (its ``a1.1``/``p1.1`` blocks). The table does not show it, but without
    it the network has 0.89 M parameters instead of the published 0.71 M; with it, 0.715 M.
    """

    def __init__(self, cin: int, cout: int, stride: int, kernels: Sequence[int], expand: int, se: float,
                 pw_groups: tuple[int, int] = (1, 1)) -> None:
        super().__init__()
        hidden = cin * expand
        act: type[nn.Module] = nn.Hardswish if se else nn.ReLU
        layers: list[nn.Module] = [
            nn.Conv2d(cin, hidden, 1, groups=pw_groups[0], bias=False), nn.BatchNorm2d(hidden), act(),
            MixConv(hidden, kernels, stride), nn.BatchNorm2d(hidden), act(),
        ]
        if se:
            layers.append(SqueezeExcite(hidden, max(1, int(cin * se))))
        layers += [nn.Conv2d(hidden, cout, 1, groups=pw_groups[1], bias=False), nn.BatchNorm2d(cout)]
        self.conv = nn.Sequential(*layers)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.residual else self.conv(x)


# Table 1 of the paper, rows after the stem: ("dcn", channels) or (out, stride, kernels, t, se, pw_groups).
# Each hybrid convolution block starts with a DCN and halves the resolution once. pw_groups (not in the
# table) follow the matching MixNet-S rows; the stride-2 [3,5,7,9] row has no MixNet-S twin and takes the
# grouping of its neighbours in MixNet-S stage 4.
HCB_SETTING: list[list[tuple]] = [
    [("dcn", 16), (24, 2, [3], 6, 0.0, (2, 2)), (24, 1, [3], 3, 0.0, (2, 2)), (40, 1, [3, 5, 7], 6, 0.5, (1, 1)),
     (40, 1, [3, 5], 6, 0.5, (2, 2))],
    [("dcn", 40), (80, 2, [3, 5, 7], 6, 0.25, (1, 1)), (80, 1, [3, 5], 6, 0.25, (1, 2)),
     (80, 1, [3, 5], 6, 0.25, (1, 2)), (80, 1, [3, 5], 6, 0.25, (1, 2))],
    [("dcn", 80), (80, 2, [3, 5, 7, 9], 6, 0.5, (2, 2)), (120, 1, [3, 5], 3, 0.5, (2, 2)),
     (120, 1, [3, 5], 3, 0.5, (2, 2))],
]


class HybridNetSeg(SegmentationModel):
    """Stem conv (stride 2) and three hybrid convolution blocks (to 1/16), M2U-Net decoder.

    The skips are the stem/DCN output (16 @ 1/2), the ends of the first two hybrid blocks (40 @ 1/4,
    80 @ 1/8) and the input image, like M2U-Net; the decoder is M2U-Net's (contracting bottlenecks,
    t = 0.15, widths 64, 44, 30, 1). The paper's deep-supervision heads (1x1 convs on each decoder stage for
    its mixed loss) are training-only and left out.

    Reading Table 1: its input-size column disagrees with its strides for the rows around the DCNs; we
    follow the strides (three stride-2 MNBlocks after the stride-2 stem), which gives the stated divisor
    16. "BN and nonlinear activation are not required after DCN", so none follows it.
    """

    def __init__(self, in_channels: int = 3, out_channels: int = 1) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_channels, 16, 3, 2, 1, bias=False), nn.BatchNorm2d(16),
                                  nn.Hardswish())
        blocks = []
        cin = 16
        for setting in HCB_SETTING:
            layers: list[nn.Module] = []
            for row in setting:
                if row[0] == "dcn":
                    layers.append(DeformConv2d(cin, row[1], 3))
                    cin = row[1]
                else:
                    cout, stride, kernels, t, se, groups = row
                    layers.append(MNBlock(cin, cout, stride, kernels, t, se, groups))
                    cin = cout
            blocks.append(nn.Sequential(*layers))
        self.hcb1, self.hcb2, self.hcb3 = blocks
        self.decode4 = DecoderBlock(120, 80, 64)
        self.decode3 = DecoderBlock(64, 40, 44)
        self.decode2 = DecoderBlock(44, 16, 30)
        self.decode1 = DecoderBlock(30, in_channels, out_channels)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        s = self.stem(x)
        s1 = self.hcb1[0](s)  # the first DCN keeps 16 @ 1/2: the 1/2 skip
        s2 = self.hcb1[1:](s1)
        s3 = self.hcb2(s2)
        s4 = self.hcb3(s3)
        d = self.decode4(s4, s3)
        d = self.decode3(d, s2)
        d = self.decode2(d, s1)
        return self.decode1(d, x)


@register_model(ModelSpec(
    name="hybridnetseg",
    paper="Luo, Xue and Feng, HybridNetSeg: A Compact Hybrid Network for Retinal Vessel Segmentation "
          "(seeds/001, Table 1; Table 5: 0.71 M params, 3.52 GMAC at 512x512)",
    divisor=16, default_tile=(512, 512), overlap=64, params_expected=710_000,
    gmacs_expected=3.52, gmacs_at=(512, 512),
    description="MixConv MobileNetV3-style bottlenecks + DCNv2 (hybrid convolution blocks), M2U-Net decoder",
))
def hybridnetseg(**kw) -> HybridNetSeg:
    return HybridNetSeg(**kw)
