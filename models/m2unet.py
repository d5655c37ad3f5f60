"""M2U-Net (Laibacher et al., seeds/002): MobileNetV2 encoder + contracting-bottleneck decoder."""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from models.blocks import InvertedResidual, SegmentationModel, mobilenetv2_features
from models.registry import ModelSpec, register_model


class DecoderBlock(nn.Module):
    """x2 bilinear upsample, concat with the skip, contracting bottleneck (t = 0.15, no residual)."""

    def __init__(self, up_in: int, skip_in: int, out: int, expand_ratio: float = 0.15) -> None:
        super().__init__()
        self.ir1 = InvertedResidual(up_in + skip_in, out, 1, expand_ratio)

    def forward(self, up: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        up = F.interpolate(up, scale_factor=2.0, mode="bilinear", align_corners=False)
        return self.ir1(torch.cat([up, skip], dim=1))


class M2UNet(SegmentationModel):
    """Key names match the authors' published checkpoints (``conv1..4``, ``decode4..1``)."""

    def __init__(self, out_channels: int = 1) -> None:
        super().__init__()
        # Slicing an nn.Sequential keeps the original indices (conv2.2, conv4.7, ...), as in the checkpoints.
        f = nn.Sequential(*mobilenetv2_features(14))
        self.conv1, self.conv2, self.conv3, self.conv4 = f[0:2], f[2:4], f[4:7], f[7:14]
        self.decode4 = DecoderBlock(96, 32, 64)
        self.decode3 = DecoderBlock(64, 24, 44)
        self.decode2 = DecoderBlock(44, 16, 30)
        self.decode1 = DecoderBlock(30, 3, out_channels)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        c1 = self.conv1(x)
        c2 = self.conv2(c1)
        c3 = self.conv3(c2)
        c4 = self.conv4(c3)
        d = self.decode4(c4, c3)
        d = self.decode3(d, c2)
        d = self.decode2(d, c1)
        return self.decode1(d, x)


@register_model(ModelSpec(
    name="m2unet",
    paper="Laibacher et al., M2U-Net: Effective and Efficient Retinal Vessel Segmentation for "
          "Real-World Applications, CVPRW 2019 (seeds/002, Table 1)",
    divisor=16, default_tile=(544, 544), params_expected=550_000, gmacs_expected=1.4, gmacs_at=(544, 544),
    # Measured (benchmarks/overlap.py, HRF checkpoint, 2336x3504, 544 tiles, gaussian): 224 is the least overlap
    # with Dice >= 0.995 and max |prob diff| <= 0.05 against a whole-image pass (0.9997, 0.031); 64: 0.987, 0.87.
    overlap=224,
    description="MobileNetV2 encoder, contracting bottleneck decoder; 0.55 M params",
))
def m2unet(**kw) -> M2UNet:
    return M2UNet(**kw)
