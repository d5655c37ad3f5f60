"""The papers' training losses, on logits (every zoo model returns logits; probability = sigmoid).

* ``jbce`` (M2U-Net, seeds/002 eq. 1): BCE + w (1 - J), w = 0.3. J is the soft Jaccard index computed over
  the whole batch, sum(y p) / (sum(y) + sum(p) - sum(y p)), as in Iglovikov et al. (the paper's [21]). Read
  per pixel and averaged, eq. 3 would be 0 on every background pixel and could never reach 1.
* ``dice_ce`` (SepFE, seeds/000 eq. 5): (1 - lambda) (1 - soft Dice) + lambda BCE, lambda = 0.8.
* ``mixed`` (HybridNetSeg, seeds/001 eqs. 3-4): per decoder stage w BCE + (1 - w)(1 - J), w = 0.5, on the
  stage's map upsampled to the input size; averaged over the stages. Eq. 3 prints the factor (1 + 1/n) in
  front of the sum; a constant factor only rescales the gradient, which AdamW undoes, so the text's
  "summed average" is used.
* ``bce_sum`` (IterNet, seeds/003 eq. 2): sum of the per-output BCE, all weights 1.
* ``dice`` (seeds/004 slides, CBAM-/CMP-/DU-Net): 1 - soft Dice.
"""
from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch.nn import functional as F

EPS = 1e-7


def soft_jaccard(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    p = torch.sigmoid(logits)
    inter = (p * target).sum()
    return (inter + EPS) / (p.sum() + target.sum() - inter + EPS)


def soft_dice(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    p = torch.sigmoid(logits)
    return (2 * (p * target).sum() + EPS) / (p.sum() + target.sum() + EPS)


def bce(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return F.binary_cross_entropy_with_logits(logits, target)


def jbce(logits: torch.Tensor, target: torch.Tensor, w: float = 0.3) -> torch.Tensor:
    return bce(logits, target) + w * (1 - soft_jaccard(logits, target))


def dice_ce(logits: torch.Tensor, target: torch.Tensor, lam: float = 0.8) -> torch.Tensor:
    return (1 - lam) * (1 - soft_dice(logits, target)) + lam * bce(logits, target)


def dice(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    return 1 - soft_dice(logits, target)


def _as_list(out: torch.Tensor | Sequence[torch.Tensor]) -> list[torch.Tensor]:
    return list(out) if isinstance(out, (list, tuple)) else [out]


def _upsampled(x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    if x.shape[-2:] == target.shape[-2:]:
        return x
    return F.interpolate(x, size=target.shape[-2:], mode="bilinear", align_corners=False)


def mixed(outputs: torch.Tensor | Sequence[torch.Tensor], target: torch.Tensor, w: float = 0.5) -> torch.Tensor:
    """HybridNetSeg's multi-scale loss: the mean over outputs (any sizes) of w BCE + (1 - w)(1 - J)."""
    outs = _as_list(outputs)
    return sum(jbce_weighted(_upsampled(o, target), target, w) for o in outs) / len(outs)


def jbce_weighted(logits: torch.Tensor, target: torch.Tensor, w: float) -> torch.Tensor:
    return w * bce(logits, target) + (1 - w) * (1 - soft_jaccard(logits, target))


def bce_sum(outputs: torch.Tensor | Sequence[torch.Tensor], target: torch.Tensor) -> torch.Tensor:
    """IterNet: the sum over outputs of their BCE (weights 1)."""
    return sum(bce(o, target) for o in _as_list(outputs))


def _single(fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]) -> Callable:
    def loss(outputs, target):
        outs = _as_list(outputs)
        # a multi-output model under a single-output loss: the last output is the prediction
        return fn(outs[-1], target)

    loss.__name__ = fn.__name__
    return loss


LOSSES: dict[str, Callable] = {
    "jbce": _single(jbce),
    "dice_ce": _single(dice_ce),
    "dice": _single(dice),
    "mixed": mixed,
    "bce_sum": bce_sum,
}
