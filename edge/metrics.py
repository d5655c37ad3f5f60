"""Segmentation metrics of a binary vessel map against a ground truth, counted inside the field of view."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from edge.errors import InputError


@dataclass(frozen=True)
class Confusion:
    """Pixel counts. Ratios whose denominator is 0 are ``None`` (undefined), never a made-up 0 or 1,
    except Dice, which is 1.0 when both maps are empty (they agree perfectly)."""

    tp: int
    fp: int
    fn: int
    tn: int

    def __add__(self, other: Confusion) -> Confusion:
        return Confusion(self.tp + other.tp, self.fp + other.fp, self.fn + other.fn, self.tn + other.tn)

    @property
    def dice(self) -> float:
        d = 2 * self.tp + self.fp + self.fn
        return 1.0 if d == 0 else 2 * self.tp / d

    @property
    def sensitivity(self) -> float | None:
        d = self.tp + self.fn
        return None if d == 0 else self.tp / d

    @property
    def specificity(self) -> float | None:
        d = self.tn + self.fp
        return None if d == 0 else self.tn / d

    @property
    def accuracy(self) -> float | None:
        d = self.tp + self.fp + self.fn + self.tn
        return None if d == 0 else (self.tp + self.tn) / d

    def to_dict(self) -> dict[str, float | int | None]:
        return {"dice": self.dice, "sensitivity": self.sensitivity, "specificity": self.specificity,
                "accuracy": self.accuracy, "tp": self.tp, "fp": self.fp, "fn": self.fn, "tn": self.tn}


def confusion(pred: np.ndarray, truth: np.ndarray, fov: np.ndarray | None = None) -> Confusion:
    """Count TP/FP/FN/TN of boolean ``pred`` against boolean ``truth``, only where ``fov`` is True."""
    if pred.shape != truth.shape or (fov is not None and fov.shape != pred.shape):
        raise InputError(f"ground truth is {truth.shape[1]}x{truth.shape[0]} but the image is "
                         f"{pred.shape[1]}x{pred.shape[0]}; pass the ground truth of this image")
    p, t = pred.astype(bool), truth.astype(bool)
    if fov is not None:
        f = fov.astype(bool)
        p, t = p[f], t[f]
    tp = int(np.count_nonzero(p & t))
    fp = int(np.count_nonzero(p & ~t))
    fn = int(np.count_nonzero(~p & t))
    tn = int(p.size - tp - fp - fn)
    return Confusion(tp, fp, fn, tn)


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice (= F1) of two boolean maps; 1.0 when both are empty."""
    return confusion(a, b).dice
