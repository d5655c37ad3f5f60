"""SepFE (seeds/000): MobileNetV2 encoder, feature fusion residual modules (FFRM), separable residual blocks."""
from __future__ import annotations

import sys
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from edge.errors import EdgeError
from models.blocks import InvertedResidual, SegmentationModel, mobilenetv2_features
from models.registry import ModelSpec, register_model

# Indices into MobileNetV2.features after which the skip features are taken: 16@1/2, 24@1/4, 32@1/8, 96@1/16.
_SKIPS = (1, 3, 6, 13)


def separable(cin: int, cout: int) -> nn.Sequential:
    """Depthwise 3x3 + pointwise 1x1 convolution, BN after each, ReLU between (paper Fig. 5)."""
    return nn.Sequential(
        nn.Conv2d(cin, cin, 3, padding=1, groups=cin, bias=False), nn.BatchNorm2d(cin), nn.ReLU(inplace=True),
        nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout),
    )


class SeparableResidualBlock(nn.Module):
    """Two depthwise separable convolutions with a shortcut (1x1 projection when the width changes), Fig. 6b."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.conv1 = separable(cin, cout)
        self.conv2 = separable(cout, cout)
        self.shortcut = nn.Identity() if cin == cout else nn.Sequential(nn.Conv2d(cin, cout, 1, bias=False),
                                                                        nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv2(F.relu(self.conv1(x)))
        return F.relu(y + self.shortcut(x))


class FFRM(nn.Module):
    """Feature fusion residual module (Fig. 7a): an inverted residual on each of the upsampled high-level and
    the low-level features, concatenation, then a separable residual block.

    The paper gives no widths or expansion factors; t = 4 on both branches and the decoder widths
    (64, 48, 32, 16) are our choice, set so that the whole network lands on the published 0.74 M parameters.
    """

    def __init__(self, high: int, low: int, cout: int, expand: float = 4.0) -> None:
        super().__init__()
        self.high = InvertedResidual(high, cout, 1, expand)
        self.low = InvertedResidual(low, cout, 1, expand)
        self.fuse = SeparableResidualBlock(2 * cout, cout)

    def forward(self, high: torch.Tensor, low: torch.Tensor) -> torch.Tensor:
        high = F.interpolate(high, scale_factor=2.0, mode="bilinear", align_corners=False)
        return self.fuse(torch.cat([self.high(high), self.low(low)], dim=1))


class SepFE(SegmentationModel):
    """The full-resolution stem is a separable residual block on the input (its output is the last skip),
    the MobileNetV2 encoder (first 14 layers, as in M2U-Net) runs on the input itself so ImageNet weights
    apply unchanged.

    The paper feeds one-channel CLAHE-enhanced grey patches; we keep three-channel RGB in [0, 1] like the
    rest of the zoo so the ImageNet encoder weights fit, and the spec records it.
    """

    def __init__(self, in_channels: int = 3, out_channels: int = 1, encoder_weights: str | Path | None = None,
                 decoder_widths: tuple[int, int, int, int] = (64, 48, 32, 16), stem_width: int = 16) -> None:
        super().__init__()
        if in_channels != 3:
            raise EdgeError(f"sepfe takes 3 input channels (its encoder is MobileNetV2), got {in_channels}")
        self.stem = SeparableResidualBlock(in_channels, stem_width)
        self.encoder = nn.Sequential(*mobilenetv2_features(14))
        d4, d3, d2, d1 = decoder_widths
        self.fuse4 = FFRM(96, 32, d4)
        self.fuse3 = FFRM(d4, 24, d3)
        self.fuse2 = FFRM(d3, 16, d2)
        self.fuse1 = FFRM(d2, stem_width, d1)
        self.head = nn.Conv2d(d1, out_channels, 1)
        self.encoder_init = "random"
        if encoder_weights is not None:
            self.load_encoder(encoder_weights)

    def load_encoder(self, path: str | Path) -> None:
        """Load the first 14 layers of a torchvision-format MobileNetV2 state dict (``features.N.…`` keys)."""
        from models.weights import read_state_dict

        sd = read_state_dict(path)
        own = self.encoder.state_dict()
        picked = {k[len("features."):]: v for k, v in sd.items()
                  if k.startswith("features.") and k[len("features."):] in own}
        missing = [k for k in own if k not in picked and not k.endswith("num_batches_tracked")]
        shaped = [k for k in picked if tuple(picked[k].shape) != tuple(own[k].shape)]
        if missing or shaped:
            what = (f"missing keys: features.{', features.'.join(missing[:4])}" if missing else
                    f"shape mismatch: features.{', features.'.join(shaped[:4])}")
            raise EdgeError(f"encoder weights {Path(path).name} are not a torchvision MobileNetV2 (width 1.0) "
                            f"state dict: {what}; pass the file saved from torchvision's mobilenet_v2")
        self.encoder.load_state_dict(picked, strict=False)
        self.encoder_init = f"imagenet:{Path(path).name}"
        print(f"note: sepfe encoder initialised from {path}", file=sys.stderr)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        s0 = self.stem(x)
        skips = []
        f = x
        for i, layer in enumerate(self.encoder):
            f = layer(f)
            if i in _SKIPS:
                skips.append(f)
        s1, s2, s3, s4 = skips
        d = self.fuse4(s4, s3)
        d = self.fuse3(d, s2)
        d = self.fuse2(d, s1)
        d = self.fuse1(d, s0)
        return self.head(d)


@register_model(ModelSpec(
    name="sepfe",
    paper="Wu, Jiao and Liu, SepFE: Separable Fusion Enhanced Network for Retinal Vessel Segmentation, 2023 "
          "(seeds/000: 0.74 M params)",
    divisor=16, default_tile=(544, 544), overlap=64, params_expected=740_000,
    description="MobileNetV2 encoder + FFRM decoder of depthwise separable blocks; encoder_weights=PATH loads "
                "a torchvision MobileNetV2 state dict",
))
def sepfe(**kw) -> SepFE:
    return SepFE(**kw)
