"""ERFNet (Romera et al.): downsampler blocks, factorised non-bottleneck-1D blocks, deconvolution decoder."""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from models.blocks import SegmentationModel
from models.registry import ModelSpec, register_model

_BN_EPS = 1e-3  # as in the authors' implementation


class DownsamplerBlock(nn.Module):
    """Concat of a 3x3 stride-2 convolution (``cout - cin`` maps) and a 2x2 max pool, BN, ReLU."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(cin, cout - cin, 3, stride=2, padding=1)
        self.pool = nn.MaxPool2d(2, stride=2)
        self.bn = nn.BatchNorm2d(cout, eps=_BN_EPS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(torch.cat([self.conv(x), self.pool(x)], dim=1)))


class NonBottleneck1D(nn.Module):
    """Residual block of two factorised 3x3 convolutions (3x1 then 1x3), the second pair dilated."""

    def __init__(self, channels: int, dropout: float, dilation: int) -> None:
        super().__init__()
        c, d = channels, dilation
        self.conv3x1_1 = nn.Conv2d(c, c, (3, 1), padding=(1, 0))
        self.conv1x3_1 = nn.Conv2d(c, c, (1, 3), padding=(0, 1))
        self.bn1 = nn.BatchNorm2d(c, eps=_BN_EPS)
        self.conv3x1_2 = nn.Conv2d(c, c, (3, 1), padding=(d, 0), dilation=(d, 1))
        self.conv1x3_2 = nn.Conv2d(c, c, (1, 3), padding=(0, d), dilation=(1, d))
        self.bn2 = nn.BatchNorm2d(c, eps=_BN_EPS)
        self.dropout = nn.Dropout2d(dropout) if dropout else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.conv3x1_1(x))
        y = F.relu(self.bn1(self.conv1x3_1(y)))
        y = F.relu(self.conv3x1_2(y))
        y = self.dropout(self.bn2(self.conv1x3_2(y)))
        return F.relu(y + x)


class UpsamplerBlock(nn.Module):
    """3x3 stride-2 transposed convolution, BN, ReLU."""

    def __init__(self, cin: int, cout: int) -> None:
        super().__init__()
        self.conv = nn.ConvTranspose2d(cin, cout, 3, stride=2, padding=1, output_padding=1)
        self.bn = nn.BatchNorm2d(cout, eps=_BN_EPS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)))


class ERFNet(SegmentationModel):
    """Encoder at 1/8 resolution with dilations 2, 4, 8, 16 (twice), two-stage decoder, 2x2 deconv head.

    The encoder-only classifier head of the authors' two-stage training (a 1x1 conv on the 1/8 features)
    is left out: it is not part of the segmentation network's forward pass.
    """

    def __init__(self, in_channels: int = 3, out_channels: int = 1) -> None:
        super().__init__()
        enc: list[nn.Module] = [DownsamplerBlock(in_channels, 16), DownsamplerBlock(16, 64)]
        enc += [NonBottleneck1D(64, 0.03, 1) for _ in range(5)]
        enc.append(DownsamplerBlock(64, 128))
        for _ in range(2):
            enc += [NonBottleneck1D(128, 0.3, d) for d in (2, 4, 8, 16)]
        self.encoder = nn.Sequential(*enc)
        self.decoder = nn.Sequential(
            UpsamplerBlock(128, 64), NonBottleneck1D(64, 0.0, 1), NonBottleneck1D(64, 0.0, 1),
            UpsamplerBlock(64, 16), NonBottleneck1D(16, 0.0, 1), NonBottleneck1D(16, 0.0, 1),
        )
        self.head = nn.ConvTranspose2d(16, out_channels, 2, stride=2)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.decoder(self.encoder(x)))


@register_model(ModelSpec(
    name="erfnet",
    paper="Romera et al., ERFNet: Efficient Residual Factorized ConvNet for Real-Time Semantic Segmentation, "
          "IEEE T-ITS 19(1), 2018; vessel-segmentation numbers from Laibacher et al. 2019 (seeds/002, "
          "Table 2: 2.06 M params)",
    divisor=8, default_tile=(544, 544), overlap=96, params_expected=2_060_000,
    description="ERFNet with one output class: downsampler + non-bottleneck-1D encoder, deconv decoder",
))
def erfnet(**kw) -> ERFNet:
    return ERFNet(**kw)
