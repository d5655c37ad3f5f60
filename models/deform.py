"""Deformable convolutions (DCNv2 and DU-Net's per-channel offsets) from plain ops that export to standard ONNX.

Written by hand because the library versions do not fit this project: ``torchvision.ops.deform_conv2d``
exports to ONNX ``DeformConv`` (opset 19), which neither TVM nor most edge runtimes implement, and
torchvision is not a dependency. Here bilinear sampling is ``F.grid_sample`` (ONNX ``GridSample``,
opset 16+) followed by an ordinary convolution, so the graph holds only standard operators.

Sampling semantics match torchvision/mmcv DCN: a sampling point's four neighbours that fall outside
the feature map count as zero, and a point one pixel or more outside contributes nothing.
"""
from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F
from torch.nn.modules.utils import _pair


def _sample(x: torch.Tensor, py: torch.Tensor, px: torch.Tensor) -> torch.Tensor:
    """Bilinearly sample ``x`` (N, C, H, W) at pixel coordinates ``py``/``px`` (N, Hg, Wg), zeros outside.

    Pixel centre ``i`` maps to the normalised coordinate ``(2 i + 1) / size - 1`` under
    ``align_corners=False``, so pixel coordinates are exact sample positions (no half-pixel shift).
    """
    h, w = x.shape[-2], x.shape[-1]
    gx = (2.0 * px + 1.0) / w - 1.0
    gy = (2.0 * py + 1.0) / h - 1.0
    grid = torch.stack([gx, gy], dim=-1)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def deform_conv2d(
    x: torch.Tensor,
    offset: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    mask: torch.Tensor | None = None,
    stride: int | tuple[int, int] = 1,
    padding: int | tuple[int, int] = 0,
    dilation: int | tuple[int, int] = 1,
) -> torch.Tensor:
    """Modulated deformable convolution (DCNv2; DCNv1 when ``mask`` is None).

    Same argument layout as ``torchvision.ops.deform_conv2d``:

    Args:
        x: input (B, C, H, W).
        offset: (B, 2 * G * kh * kw, Ho, Wo); for offset group ``g`` and kernel tap ``k`` (row-major over
            kh x kw), channel ``2 * (g * kh * kw + k)`` is the vertical and ``+ 1`` the horizontal offset.
        weight: (Cout, C / groups, kh, kw); the convolution groups follow from its shape.
        bias: (Cout,) or None.
        mask: (B, G * kh * kw, Ho, Wo) modulation scalars (DCNv2 passes them through a sigmoid first).
    """
    sh, sw = _pair(stride)
    ph, pw = _pair(padding)
    dh, dw = _pair(dilation)
    b, c, h, w = x.shape
    cout, cin_g, kh, kw = weight.shape
    k = kh * kw
    ho, wo = offset.shape[-2], offset.shape[-1]
    g = offset.shape[1] // (2 * k)
    groups = c // cin_g

    dtype, device = x.dtype, x.device
    # Regular grid positions p0 + pk of every output pixel and kernel tap: (k, Ho, Wo).
    oy = torch.arange(ho, dtype=dtype, device=device) * sh - ph
    ox = torch.arange(wo, dtype=dtype, device=device) * sw - pw
    ky = (torch.arange(kh, dtype=dtype, device=device) * dh).repeat_interleave(kw)
    kx = (torch.arange(kw, dtype=dtype, device=device) * dw).repeat(kh)
    base_y = ky.view(k, 1, 1) + oy.view(1, ho, 1)
    base_x = kx.view(k, 1, 1) + ox.view(1, 1, wo)

    off = offset.reshape(b * g, k, 2, ho, wo)
    py = (base_y + off[:, :, 0]).reshape(b * g, k * ho, wo)
    px = (base_x + off[:, :, 1]).reshape(b * g, k * ho, wo)
    # One grid_sample call for all taps: rows of the sampling grid are (tap, output row).
    cols = _sample(x.reshape(b * g, c // g, h, w), py, px)  # (B*G, C/G, k*Ho, Wo)
    cols = cols.reshape(b, g, c // g, k, ho, wo)
    if mask is not None:
        cols = cols * mask.reshape(b, g, 1, k, ho, wo)
    # Channel index c * k + tap matches weight.reshape(Cout, C/groups * k): the weighted sum over taps and
    # input channels is then a (grouped) 1x1 convolution.
    cols = cols.reshape(b, c * k, ho, wo)
    return F.conv2d(cols, weight.reshape(cout, cin_g * k, 1, 1), bias, groups=groups)


class DeformConv2d(nn.Module):
    """DCNv2 layer (Zhu et al., 2019): a 3x3-style convolution whose taps move by learnt offsets, each tap
    weighted by a learnt modulation scalar in (0, 1).

    Offsets and masks come from a plain convolution on the same input with the same kernel, stride,
    padding and dilation, initialised to zero (the layer starts as a regular convolution with masks 0.5),
    as in the DCNv2 paper.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1,
                 padding: int | None = None, dilation: int = 1, groups: int = 1, offset_groups: int = 1,
                 bias: bool = True, modulation: bool = True) -> None:
        super().__init__()
        kh, kw = _pair(kernel_size)
        if padding is None:
            padding = dilation * (kh - 1) // 2
        self.stride, self.padding, self.dilation = stride, padding, dilation
        self.modulation = modulation
        self.offset_groups = offset_groups
        k = kh * kw
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels // groups, kh, kw))
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None
        n_off = offset_groups * k * (3 if modulation else 2)
        self.conv_offset = nn.Conv2d(in_channels, n_off, (kh, kw), stride, padding, dilation, bias=True)
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        nn.init.zeros_(self.conv_offset.weight)
        nn.init.zeros_(self.conv_offset.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        om = self.conv_offset(x)
        n = self.offset_groups * self.weight.shape[-2] * self.weight.shape[-1]
        offset = om[:, : 2 * n]
        mask = torch.sigmoid(om[:, 2 * n:]) if self.modulation else None
        return deform_conv2d(x, offset, self.weight, self.bias, mask, self.stride, self.padding, self.dilation)


def deform_feature_map(x: torch.Tensor, offset: torch.Tensor) -> torch.Tensor:
    """Move every pixel of every channel by its own offset: ``y[c](p) = x[c](p + offset[c](p))``.

    ``offset`` is (B, 2C, H, W) with channel ``2c`` the vertical and ``2c + 1`` the horizontal offset of
    channel ``c``. Bilinear, zeros outside the map.
    """
    b, c, h, w = x.shape
    off = offset.reshape(b * c, 2, h, w)
    gy = torch.arange(h, dtype=x.dtype, device=x.device).view(1, h, 1)
    gx = torch.arange(w, dtype=x.dtype, device=x.device).view(1, 1, w)
    out = _sample(x.reshape(b * c, 1, h, w), gy + off[:, 0], gx + off[:, 1])
    return out.reshape(b, c, h, w)


class ConvOffset2D(nn.Module):
    """DU-Net's deformable layer (slides seeds/004 after Dai et al., the kastnerkyle/deform-conv layer).

    A 3x3 convolution without bias predicts a 2-D offset per channel and pixel (2C outputs, initialised
    from N(0, 0.01) as in the slides); the feature map is resampled at the shifted positions and passed on
    with its C channels, so the following regular convolution sees a deformed input. Params: 18 C^2.

    Differences from the reference Keras layer, on purpose: offsets are read as (dy, dx) pairs per channel
    (the reference reshapes a (B, 2C, H, W) tensor straight into (B*C, H, W, 2), which scrambles pixels
    between channels), and points outside the map read zeros instead of being clipped to the border, as in
    DCN.
    """

    def __init__(self, channels: int, init_normal_stddev: float = 0.01) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, 2 * channels, 3, padding=1, bias=False)
        nn.init.normal_(self.conv.weight, 0.0, init_normal_stddev)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return deform_feature_map(x, self.conv(x))
