"""Building blocks shared by the zoo: MobileNetV2 layers and the divisor check in forward."""
from __future__ import annotations

import torch
from torch import nn


def conv_bn_relu6(inp: int, oup: int, stride: int) -> nn.Sequential:
    """3x3 convolution, batch norm, ReLU6 (MobileNetV2's stem)."""
    return nn.Sequential(nn.Conv2d(inp, oup, 3, stride, 1, bias=False), nn.BatchNorm2d(oup), nn.ReLU6(inplace=True))


class InvertedResidual(nn.Module):
    """MobileNetV2 inverted residual (expand 1x1, depthwise 3x3, project 1x1).

    ``expand_ratio < 1`` gives the M2U-Net decoder's contracting bottleneck. The layer indices inside
    ``conv`` match torchvision's original MobileNetV2 so published checkpoints load strictly.
    """

    def __init__(self, inp: int, oup: int, stride: int, expand_ratio: float) -> None:
        super().__init__()
        hidden = int(round(inp * expand_ratio))
        self.use_res_connect = stride == 1 and inp == oup
        if expand_ratio == 1:
            layers: list[nn.Module] = [
                nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False), nn.BatchNorm2d(hidden),
                nn.ReLU6(inplace=True),
                nn.Conv2d(hidden, oup, 1, 1, 0, bias=False), nn.BatchNorm2d(oup),
            ]
        else:
            layers = [
                nn.Conv2d(inp, hidden, 1, 1, 0, bias=False), nn.BatchNorm2d(hidden), nn.ReLU6(inplace=True),
                nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False), nn.BatchNorm2d(hidden),
                nn.ReLU6(inplace=True),
                nn.Conv2d(hidden, oup, 1, 1, 0, bias=False), nn.BatchNorm2d(oup),
            ]
        self.conv = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.use_res_connect else self.conv(x)


# (expand t, channels c, repeats n, stride s) of MobileNetV2 (Sandler et al., Table 2)
MOBILENETV2_SETTING = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2),
                       (6, 320, 1, 1)]


def mobilenetv2_features(num_layers: int = 14) -> list[nn.Module]:
    """The first ``num_layers`` entries of torchvision's ``MobileNetV2.features`` (width 1.0)."""
    layers: list[nn.Module] = [conv_bn_relu6(3, 32, 2)]
    inp = 32
    for t, c, n, s in MOBILENETV2_SETTING:
        for i in range(n):
            layers.append(InvertedResidual(inp, c, s if i == 0 else 1, t))
            inp = c
    return layers[:num_layers]


class SegmentationModel(nn.Module):
    """Base class: checks the input size against the spec's divisor before the forward pass."""

    spec = None  # set by create_model

    def forward(self, x: torch.Tensor, **kw):
        if self.spec is not None and not (torch.jit.is_tracing() or torch.onnx.is_in_onnx_export()):
            self.spec.check_size(int(x.shape[-2]), int(x.shape[-1]))
        return self.forward_features(x, **kw)

    def forward_features(self, x: torch.Tensor, **kw):  # pragma: no cover - abstract
        raise NotImplementedError
