"""IterNet (Li et al., seeds/003): a UNet followed by iterations of one weight-shared refinery mini-UNet."""
from __future__ import annotations

import torch
from torch import nn

from models.blocks import SegmentationModel
from models.registry import ModelSpec, register_model
from models.unet import DoubleConv, UNet, UpConcat


class MiniUNet(nn.Module):
    """The refinery module: three levels (w, 2w, 4w), two poolings, no BN (as the base UNet).

    ``reduce`` is the only private part of each iteration: a 1x1 convolution that squeezes the dense
    concatenation of first-layer features (base UNet + every earlier iteration) back to ``w`` channels.
    """

    def __init__(self, w: int, dropout: float) -> None:
        super().__init__()
        kw = dict(bn=False, dropout=dropout)
        self.pool = nn.MaxPool2d(2)
        self.conv1 = DoubleConv(w, w, **kw)
        self.conv2 = DoubleConv(w, 2 * w, **kw)
        self.conv3 = DoubleConv(2 * w, 4 * w, **kw)
        self.up2 = UpConcat(4 * w, 2 * w, 2 * w, **kw)
        self.up1 = UpConcat(2 * w, w, w, **kw)

    def forward(self, x: torch.Tensor, firsts: list[torch.Tensor], reduce: nn.Module) -> torch.Tensor:
        c1 = self.conv1(x)
        firsts.append(c1)
        c1 = reduce(torch.cat(firsts, dim=1))
        c2 = self.conv2(self.pool(c1))
        c3 = self.conv3(self.pool(c2))
        return self.up1(self.up2(c3, c2), c1)


class IterNet(SegmentationModel):
    """UNet (w..16w, no BN) + ``iterations`` runs of one shared :class:`MiniUNet`; ``iterations + 1`` outputs.

    Every module's output comes from its own 1x1 head on its last (second-to-last-layer, ``w``-channel)
    features; the next refinery module takes those features, not the one-channel map (paper, Sec. 3).
    ``model.train()`` or ``return_all=True`` returns all outputs (for the summed per-output loss), otherwise
    only the last one.
    """

    def __init__(self, in_channels: int = 3, out_channels: int = 1, width: int = 32, iterations: int = 3,
                 dropout: float = 0.1) -> None:
        super().__init__()
        # Base module: the authors' reference implementation uses ReLU and dropout, no batch norm. Dropout
        # 0.1 is our choice (the paper does not give it); it is inactive in eval mode and in exports.
        self.base = UNet(in_channels, out_channels, widths=[width * 2 ** i for i in range(5)], bn=False,
                         dropout=dropout)
        self.mini = MiniUNet(width, dropout)
        self.reduce = nn.ModuleList(nn.Conv2d(width * (i + 2), width, 1) for i in range(iterations))
        self.heads = nn.ModuleList(nn.Conv2d(width, out_channels, 1) for _ in range(iterations))

    def forward_features(self, x: torch.Tensor, return_all: bool | None = None):
        base = self.base
        skips = []
        for i, block in enumerate(base.down):
            x = block(x if i == 0 else base.pool(x))
            skips.append(x)
        first = skips[0]
        x = skips.pop()
        for up in reversed(base.up):
            x = up(x, skips.pop())
        outs = [base.head(x)]
        firsts = [first]
        for reduce, head in zip(self.reduce, self.heads):
            x = self.mini(x, firsts, reduce)
            outs.append(head(x))
        if return_all if return_all is not None else self.training:
            return outs
        return outs[-1]


@register_model(ModelSpec(
    name="iternet",
    paper="Li et al., IterNet: Retinal Image Segmentation Utilizing Structural Redundancy in Vessel Networks, "
          "WACV 2020 (seeds/003; N = 4 outputs, no parameter count given)",
    divisor=16, default_tile=(512, 512), overlap=96,
    description="UNet (32..512) + 3 iterations of a weight-shared 3-level mini-UNet with dense first-layer "
                "skips; eval returns the last of 4 outputs",
))
def iternet(**kw) -> IterNet:
    return IterNet(**kw)
