"""The papers' losses on tiny tensors with values worked out by hand."""
from __future__ import annotations

import math

import pytest
import torch

from models.train import losses as L

LN2 = math.log(2)


def _case():
    # logits 0 -> p = 0.5 everywhere; one vessel pixel of four
    return torch.zeros(1, 1, 2, 2), torch.tensor([[[[1.0, 0.0], [0.0, 0.0]]]])


def test_m2unet_bce_plus_0_3_jaccard():
    x, y = _case()
    # BCE = ln 2; soft Jaccard = 0.5 / (2 + 1 - 0.5) = 0.2
    assert L.soft_jaccard(x, y).item() == pytest.approx(0.2, abs=1e-6)
    assert L.LOSSES["jbce"](x, y).item() == pytest.approx(LN2 + 0.3 * 0.8, abs=1e-6)


def test_sepfe_dice_and_cross_entropy_lambda_0_8():
    x, y = _case()
    # soft Dice = 2 * 0.5 / (2 + 1) = 1/3
    assert L.LOSSES["dice_ce"](x, y).item() == pytest.approx(0.2 * (2 / 3) + 0.8 * LN2, abs=1e-6)
    assert L.LOSSES["dice"](x, y).item() == pytest.approx(2 / 3, abs=1e-6)


def test_hybridnetseg_mixed_loss_averages_upsampled_stages():
    x, y = _case()
    side = torch.zeros(1, 1, 1, 1)  # a coarser stage, upsampled to 2x2 (all 0.5 again)
    per_stage = 0.5 * LN2 + 0.5 * (1 - 0.2)
    assert L.LOSSES["mixed"]([side, x], y).item() == pytest.approx(per_stage, abs=1e-6)
    strong = torch.tensor([[[[9.0, -9.0], [-9.0, -9.0]]]])
    mixed = L.LOSSES["mixed"]([side, strong], y).item()
    assert mixed == pytest.approx((per_stage + L.jbce_weighted(strong, y, 0.5).item()) / 2, abs=1e-6)


def test_iternet_sums_the_outputs():
    x, y = _case()
    assert L.LOSSES["bce_sum"]([x, x, x, x], y).item() == pytest.approx(4 * LN2, abs=1e-6)
    # a single-output loss given a list uses the last output (the prediction)
    perfect = torch.tensor([[[[20.0, -20.0], [-20.0, -20.0]]]])
    assert L.LOSSES["jbce"]([x, perfect], y).item() == pytest.approx(0.0, abs=1e-6)


def test_losses_have_gradients():
    x, y = _case()
    x.requires_grad_(True)
    L.LOSSES["jbce"](x, y).backward()
    # the vessel pixel is pushed up, the background down
    assert x.grad[0, 0, 0, 0] < 0 < x.grad[0, 0, 1, 1]
