"""CBAM-UNet and CMP-UNet as built in the slides 'Exploring U-Nets' (seeds/004).

Both are three-level U-Nets ("UNet (3 encoders/decoders)" in the slides: three poolings, a bridge, three
decoder blocks) with BN and transposed-convolution up paths, like :mod:`models.unet`. The slides give the
building blocks as Keras code but no widths and no parameter counts; widths 64/128/256 with a 512 bridge
(the first four levels of the baseline U-Net) are our choice.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.nn import functional as F

from models.blocks import SegmentationModel
from models.registry import ModelSpec, register_model
from models.unet import DoubleConv, UpConcat


def conv_bn_relu(cin: int, cout: int, kernel: int | tuple[int, int] = 3, dilation: int = 1,
                 bias: bool = True) -> nn.Sequential:
    """Convolution with "same" padding, BN, ReLU."""
    kh, kw = (kernel, kernel) if isinstance(kernel, int) else kernel
    pad = (dilation * (kh - 1) // 2, dilation * (kw - 1) // 2)
    return nn.Sequential(nn.Conv2d(cin, cout, (kh, kw), padding=pad, dilation=dilation, bias=bias),
                         nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class ChannelAttention(nn.Module):
    """CBAM channel attention: shared two-layer MLP on global average and max pools, sigmoid gate."""

    def __init__(self, channels: int, ratio: int = 8) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.Conv2d(channels, channels // ratio, 1), nn.ReLU(inplace=True),
                                 nn.Conv2d(channels // ratio, channels, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        avg = self.mlp(F.adaptive_avg_pool2d(x, 1))
        mx = self.mlp(F.adaptive_max_pool2d(x, 1))
        return x * torch.sigmoid(avg + mx)


class SpatialAttention(nn.Module):
    """CBAM spatial attention: 7x7 convolution (no bias) over channel mean and max, sigmoid gate."""

    def __init__(self, kernel: int = 7) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 1, kernel, padding=kernel // 2, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = torch.cat([x.mean(dim=1, keepdim=True), x.amax(dim=1, keepdim=True)], dim=1)
        return x * torch.sigmoid(self.conv(pooled))


class CBAM(nn.Module):
    """Convolutional block attention module (Woo et al.): channel then spatial attention."""

    def __init__(self, channels: int, ratio: int = 8) -> None:
        super().__init__()
        self.channel = ChannelAttention(channels, ratio)
        self.spatial = SpatialAttention()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.spatial(self.channel(x))


class CFFA(nn.Module):
    """Coarse-fine feature aggregation (slides' encoder block): a factorised 3x1/1x3 "fine" branch and a
    7x7 + 1x1 "coarse" branch, concatenated and mixed by a 1x1 convolution; BN + ReLU after each conv."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.fine = nn.Sequential(conv_bn_relu(cin, cout, (3, 1)), conv_bn_relu(cout, cout, (1, 3)))
        self.coarse = nn.Sequential(conv_bn_relu(cin, cout, 7), conv_bn_relu(cout, cout, 1))
        self.mix = conv_bn_relu(2 * cout, cout, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mix(torch.cat([self.fine(x), self.coarse(x)], dim=1))


class MSCAF(nn.Module):
    """Multi-scale channel adaptive fusion (slides, after Gu et al.): 3x3 convolutions with dilation 1, 3
    and 5 (C/2, C/4, C/4 maps), channel attention over their concatenation, 1x1 fusion, dropout."""

    def __init__(self, cin: int, cout: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.branches = nn.ModuleList([
            conv_bn_relu(cin, cout // 2, 3, 1, bias=False),
            conv_bn_relu(cin, cout // 4, 3, 3, bias=False),
            conv_bn_relu(cin, cout - cout // 2 - cout // 4, 3, 5, bias=False),
        ])
        self.attention = ChannelAttention(cout)
        self.fuse = conv_bn_relu(cout, cout, 1, bias=False)
        self.dropout = nn.Dropout(dropout) if dropout else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.attention(torch.cat([b(x) for b in self.branches], dim=1))
        return self.dropout(self.fuse(y))


class PFF(nn.Module):
    """Pyramid feature fusion (slides): the three deeper levels are squeezed by 1x1 convs to C/8, C/8, C/4
    maps and bilinearly upsampled x8, x4, x2 to the finest level (squeezed to C/2); MSCAF fuses the
    concatenation (C maps), and the finest level is added back as a residual."""

    def __init__(self, widths: Sequence[int], cout: int, dropout: float = 0.0) -> None:
        super().__init__()
        w1, w2, w3, w4 = widths  # coarsest first, as in the slides' PFF(input1, ..., input4)
        self.squeeze = nn.ModuleList([
            conv_bn_relu(w1, cout // 8, 1, bias=False), conv_bn_relu(w2, cout // 8, 1, bias=False),
            conv_bn_relu(w3, cout // 4, 1, bias=False), conv_bn_relu(w4, cout // 2, 1, bias=False),
        ])
        self.scales = (8.0, 4.0, 2.0, 1.0)
        self.fuse = MSCAF(cout // 8 * 2 + cout // 4 + cout // 2, cout, dropout)

    def forward(self, feats: Sequence[torch.Tensor]) -> torch.Tensor:
        parts = []
        for f, squeeze, scale in zip(feats, self.squeeze, self.scales):
            f = squeeze(f)
            if scale != 1.0:
                f = F.interpolate(f, scale_factor=scale, mode="bilinear", align_corners=False)
            parts.append(f)
        return self.fuse(torch.cat(parts, dim=1)) + feats[-1]


class _ThreeLevelUNet(SegmentationModel):
    """Shared skeleton: encoder blocks at 1, 1/2, 1/4, a bridge at 1/8, three up blocks, 1x1 head."""

    def __init__(self, widths: Sequence[int], out_channels: int) -> None:
        super().__init__()
        self.pool = nn.MaxPool2d(2)
        self.up = nn.ModuleList(UpConcat(widths[i + 1], widths[i], widths[i]) for i in range(3))
        self.head = nn.Conv2d(widths[0], out_channels, 1)

    def encode(self, x: torch.Tensor) -> list[torch.Tensor]:
        feats = []
        for i, block in enumerate([*self.down, self.bridge]):
            x = block(x if i == 0 else self.pool(x))
            feats.append(x)
        return feats

    def decode(self, feats: list[torch.Tensor]) -> torch.Tensor:
        x = feats[-1]
        for i in reversed(range(3)):
            x = self.up[i](x, feats[i])
        return self.head(x)


class CBAMUNet(_ThreeLevelUNet):
    """CFFA encoder blocks, a double-conv bridge followed by CBAM, plain double-conv decoder blocks."""

    def __init__(self, in_channels: int = 3, out_channels: int = 1, widths: Sequence[int] = (64, 128, 256, 512),
                 ratio: int = 8) -> None:
        super().__init__(widths, out_channels)
        self.down = nn.ModuleList(CFFA(i, o) for i, o in zip([in_channels, *widths[:2]], widths[:3]))
        self.bridge = nn.Sequential(DoubleConv(widths[2], widths[3]), CBAM(widths[3], ratio))

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(x))


class CMPUNet(_ThreeLevelUNet):
    """Encoder blocks and bridge are a 3x3 conv followed by MSCAF; the full-resolution skip is replaced by
    the PFF of all four levels, the other skips are plain.

    Our choices where the slides are silent: the 3x3 conv before each MSCAF (the dilated branches see
    features rather than raw RGB), PFF only where its four-input form fits (the finest skip), dropout 0.1.
    """

    def __init__(self, in_channels: int = 3, out_channels: int = 1, widths: Sequence[int] = (64, 128, 256, 512),
                 dropout: float = 0.1) -> None:
        super().__init__(widths, out_channels)
        self.down = nn.ModuleList(
            nn.Sequential(conv_bn_relu(i, o), MSCAF(o, o, dropout))
            for i, o in zip([in_channels, *widths[:2]], widths[:3])
        )
        self.bridge = nn.Sequential(conv_bn_relu(widths[2], widths[3]), MSCAF(widths[3], widths[3], dropout))
        self.pff = PFF(list(reversed(widths)), widths[0], dropout)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        feats = self.encode(x)
        feats[0] = self.pff(feats[::-1])
        return self.decode(feats)


_SLIDES = ("slides 'Image Segmentation: Exploring U-Nets' (seeds/004), after {}; no parameter count given")


@register_model(ModelSpec(
    name="cbam_unet",
    paper=_SLIDES.format("Woo et al., CBAM, ECCV 2018 and Guo et al., SA-UNet, arXiv:2004.03696"),
    divisor=8, default_tile=(512, 512), overlap=64,
    description="3-level U-Net with coarse-fine feature aggregation (CFFA) encoder blocks and a CBAM bridge",
))
def cbam_unet(**kw) -> CBAMUNet:
    return CBAMUNet(**kw)


@register_model(ModelSpec(
    name="cmp_unet",
    paper=_SLIDES.format("Gu et al., CMP-UNet: A Retinal Vessel Segmentation Network Based on Multi-Scale "
                         "Feature Fusion, Electronics 12(23):4743, 2023"),
    divisor=8, default_tile=(512, 512), overlap=64,
    description="3-level U-Net with multi-scale channel adaptive fusion (MSCAF) blocks and pyramid feature "
                "fusion (PFF) into the finest skip",
))
def cmp_unet(**kw) -> CMPUNet:
    return CMPUNet(**kw)
