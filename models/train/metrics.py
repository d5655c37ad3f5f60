"""Evaluation metrics of a probability map against a ground truth inside the field of view (numpy only).

Dice/F1, sensitivity, specificity and accuracy come from :mod:`edge.metrics` (one definition for the
device and the host); this module adds IoU, ROC AUC (exact, by ranks), histogram-pooled ROC and PR
curves, the Dice-optimal threshold of pooled data, and IterNet's connectivity metric (seeds/003 eq. 3).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import cv2
import numpy as np

from edge.errors import InputError
from edge.metrics import Confusion, confusion

CURVE_BINS = 1000
CONNECTIVITY_ALPHA = 0.05  # S_max = alpha * skeleton length of the ground truth (seeds/003)
# theta = 1 is left out: nothing is above it, so even a perfect map would lose a sliver of area there
CONNECTIVITY_THRESHOLDS = np.linspace(0.0, 0.99, 100)


def iou(c: Confusion) -> float:
    """Jaccard index TP / (TP + FP + FN); 1.0 when both maps are empty (as Dice)."""
    d = c.tp + c.fp + c.fn
    return 1.0 if d == 0 else c.tp / d


def roc_auc(scores: np.ndarray, labels: np.ndarray) -> float | None:
    """Area under the ROC curve = P(score of a positive > score of a negative), ties counted half
    (the Mann-Whitney U statistic from average ranks). None when only one class is present."""
    s = np.asarray(scores, dtype=np.float64).ravel()
    y = np.asarray(labels, dtype=bool).ravel()
    n_pos = int(y.sum())
    n_neg = y.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return None
    order = np.argsort(s, kind="mergesort")
    s_sorted = s[order]
    # average rank (1-based) of each group of tied scores
    _, start, counts = np.unique(s_sorted, return_index=True, return_counts=True)
    avg = start + (counts + 1) / 2.0
    ranks = np.repeat(avg, counts)
    pos_rank_sum = ranks[y[order]].sum()
    return float((pos_rank_sum - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def connectivity(prob: np.ndarray, truth: np.ndarray, fov: np.ndarray | None = None,
                 thresholds: np.ndarray = CONNECTIVITY_THRESHOLDS, alpha: float = CONNECTIVITY_ALPHA
                 ) -> float | None:
    """IterNet's connectivity: the area under C(theta) = max(0, 1 - |S_P(theta) - S_G| / S_max) over the
    thresholds (trapezoids, divided by their span: 1 is the best), where S counts 8-connected segments inside the FOV and
    S_max = alpha * (skeleton pixels of the ground truth). None when the ground truth has no vessel."""
    from skimage.morphology import skeletonize

    f = np.ones(truth.shape, bool) if fov is None else fov.astype(bool)
    gt = truth.astype(bool) & f
    length = int(np.count_nonzero(skeletonize(gt)))
    if length == 0:
        return None
    s_max = alpha * length
    s_g = segments(gt)
    c = []
    for t in thresholds:
        s_p = segments((prob > t) & f)
        d = abs(s_p - s_g)
        c.append(1.0 - d / s_max if d <= s_max else 0.0)
    c = np.asarray(c)
    span = float(thresholds[-1] - thresholds[0])
    return float(np.sum((c[1:] + c[:-1]) / 2 * np.diff(thresholds)) / span)


def segments(binary: np.ndarray) -> int:
    """Number of 8-connected foreground components."""
    n, _ = cv2.connectedComponents(binary.astype(np.uint8), connectivity=8)
    return int(n) - 1


@dataclass
class Histogram:
    """Counts of vessel and background pixels by probability in B + 1 right-closed bins (bin j holds
    (j - 1)/B < p <= j/B; bin 0 holds p <= 0), so that "bin > k" is exactly "p > k/B", the runtime's rule.
    Summable over images: curves and thresholds can be pooled over a dataset."""

    pos: np.ndarray = field(default_factory=lambda: np.zeros(CURVE_BINS + 1, np.int64))
    neg: np.ndarray = field(default_factory=lambda: np.zeros(CURVE_BINS + 1, np.int64))

    @classmethod
    def of(cls, prob: np.ndarray, truth: np.ndarray, fov: np.ndarray | None = None) -> Histogram:
        p, t = _inside(prob, truth, fov)
        idx = np.clip(np.ceil(p.astype(np.float64) * CURVE_BINS), 0, CURVE_BINS).astype(np.int64)
        n = CURVE_BINS + 1
        return cls(np.bincount(idx[t], minlength=n), np.bincount(idx[~t], minlength=n))

    def __add__(self, other: Histogram) -> Histogram:
        return Histogram(self.pos + other.pos, self.neg + other.neg)

    def curves(self) -> dict[str, np.ndarray]:
        """At thresholds k/B, k = 0..B (vessel: p > k/B; k = B predicts nothing): tpr (= recall), fpr,
        precision (NaN where nothing is predicted) and Dice."""
        # counts of bins > k: reverse cumulative sums shifted by one
        tp = np.append(np.cumsum(self.pos[::-1])[::-1][1:], 0).astype(np.float64)
        fp = np.append(np.cumsum(self.neg[::-1])[::-1][1:], 0).astype(np.float64)
        p_all, n_all = float(self.pos.sum()), float(self.neg.sum())
        fn = p_all - tp
        with np.errstate(invalid="ignore", divide="ignore"):
            tpr = tp / p_all if p_all else np.full_like(tp, np.nan)
            fpr = fp / n_all if n_all else np.full_like(fp, np.nan)
            precision = np.where(tp + fp > 0, tp / (tp + fp), np.nan)
            dice_ = np.where(2 * tp + fp + fn > 0, 2 * tp / (2 * tp + fp + fn), 1.0)
        return {"threshold": np.arange(CURVE_BINS + 1) / CURVE_BINS, "tpr": tpr, "fpr": fpr,
                "precision": precision, "recall": tpr, "dice": dice_}

    def best_threshold(self) -> tuple[float, float]:
        """(threshold, Dice) maximising the pooled Dice over k/B, k < B; ties go to the one nearest 0.5."""
        c = self.curves()
        d = c["dice"][:-1]
        best = np.flatnonzero(d >= d.max() - 1e-12)
        k = int(best[np.argmin(np.abs(c["threshold"][best] - 0.5))])
        return float(c["threshold"][k]), float(d[k])


def _inside(prob: np.ndarray, truth: np.ndarray, fov: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    if prob.shape != truth.shape or (fov is not None and fov.shape != prob.shape):
        raise InputError(f"probability map {prob.shape}, ground truth {truth.shape} and FOV "
                         f"{None if fov is None else fov.shape} differ in size; pass the files of one image")
    if fov is None:
        return prob.ravel(), truth.astype(bool).ravel()
    f = fov.astype(bool)
    return prob[f], truth.astype(bool)[f]


def at_threshold(prob: np.ndarray, truth: np.ndarray, fov: np.ndarray | None, threshold: float) -> dict:
    """Dice, IoU, accuracy, sensitivity, specificity (and the counts) of ``prob > threshold`` inside the FOV."""
    c = confusion(prob > threshold, truth, fov)
    out = c.to_dict()
    out["iou"] = iou(c)
    return out


def image_metrics(prob: np.ndarray, truth: np.ndarray, fov: np.ndarray | None, thresholds: dict[str, float],
                  with_connectivity: bool = True) -> dict:
    """All metrics of one image: ``{name: at_threshold(...)}`` per named threshold, ``auc`` and
    ``connectivity`` (threshold-free)."""
    p, t = _inside(prob, truth, fov)
    out: dict = {name: at_threshold(prob, truth, fov, thr) for name, thr in thresholds.items()}
    out["auc"] = roc_auc(p, t)
    out["connectivity"] = connectivity(prob, truth, fov) if with_connectivity else None
    return out
