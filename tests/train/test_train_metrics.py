"""Metrics on small examples with known answers; ROC AUC against a brute-force pair count."""
from __future__ import annotations

import numpy as np
import pytest

from models.train import metrics as M


def test_threshold_metrics_inside_the_fov():
    prob = np.array([[0.9, 0.8, 0.2, 0.1, 0.9]])
    truth = np.array([[1, 0, 1, 0, 0]], bool)
    fov = np.array([[1, 1, 1, 1, 0]], bool)  # the last pixel (a false positive) is outside
    m = M.at_threshold(prob, truth, fov, 0.5)
    assert (m["tp"], m["fp"], m["fn"], m["tn"]) == (1, 1, 1, 1)
    assert m["dice"] == 0.5 and m["iou"] == pytest.approx(1 / 3)
    assert m["accuracy"] == 0.5 and m["sensitivity"] == 0.5 and m["specificity"] == 0.5
    m = M.at_threshold(prob, truth, fov, 0.85)
    assert (m["tp"], m["fp"], m["fn"], m["tn"]) == (1, 0, 1, 2) and m["dice"] == pytest.approx(2 / 3)


def _brute_auc(s, y):
    pos, neg = s[y], s[~y]
    wins = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    return wins / (pos.size * neg.size)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_auc_matches_brute_force_with_ties(seed):
    rng = np.random.default_rng(seed)
    y = rng.random(300) < 0.3
    s = np.round(rng.random(300) * 0.5 + y * 0.3, 1)  # rounded: many ties
    assert M.roc_auc(s, y) == pytest.approx(_brute_auc(s, y), abs=1e-12)


def test_auc_edge_cases():
    assert M.roc_auc(np.array([0.1, 0.9]), np.array([0, 1])) == 1.0
    assert M.roc_auc(np.array([0.9, 0.1]), np.array([0, 1])) == 0.0
    assert M.roc_auc(np.array([0.5, 0.5]), np.array([0, 1])) == 0.5
    assert M.roc_auc(np.array([0.3, 0.4]), np.array([1, 1])) is None


def test_histogram_curves_and_best_threshold():
    prob = np.array([0.1, 0.45, 0.65, 0.9])
    truth = np.array([0, 1, 1, 1], bool)
    h = M.Histogram.of(prob, truth)
    thr, d = h.best_threshold()
    # every threshold in [0.1, 0.45) separates perfectly; the nearest to 0.5 is 0.449
    assert (thr, d) == (0.449, 1.0)
    assert M.at_threshold(prob, truth, None, thr)["dice"] == 1.0
    c = (h + h).curves()
    k = 500  # p > 0.5: 0.65 and 0.9
    assert c["tpr"][k] == pytest.approx(2 / 3) and c["fpr"][k] == 0 and c["precision"][k] == 1
    assert c["tpr"][0] == 1 and c["fpr"][0] == 1 and c["tpr"][-1] == 0 and c["fpr"][-1] == 0
    # the curve's trapezoid AUC equals the exact one when no two scores share a bin
    assert np.trapezoid(c["tpr"][::-1], c["fpr"][::-1]) == pytest.approx(M.roc_auc(prob, truth))


def test_connectivity_of_a_broken_vessel():
    truth = np.zeros((5, 30), bool)
    truth[2, 5:25] = True  # one segment, skeleton length 20 -> S_max = 0.05 * 20 = 1
    prob = np.where(truth, 0.75, 0.0)
    prob[2, 15] = 0.25  # weak in the middle: above 0.25 the vessel breaks into two segments
    # theta 0: one segment, C = 1; theta 0.5: two, |2 - 1| = 1 = S_max -> C = 0; theta 1: none -> C = 0
    assert M.connectivity(prob, truth, thresholds=np.array([0.0, 0.5, 1.0])) == pytest.approx(0.25)
    # on the default grid 0, 0.01, ..., 0.99: C = 1 for theta < 0.25 (25 points), 0 after
    assert M.connectivity(prob, truth) == pytest.approx((0.24 + 0.01 / 2) / 0.99)
    assert M.connectivity(np.where(truth, 0.9, 0.0), truth, thresholds=np.array([0.0, 0.5])) == 1.0
    assert M.connectivity(prob, np.zeros_like(truth)) is None


def test_image_metrics_bundle():
    prob = np.array([[0.9, 0.2], [0.6, 0.1]])
    truth = np.array([[1, 0], [1, 0]], bool)
    m = M.image_metrics(prob, truth, None, {"0.5": 0.5, "chosen": 0.7})
    assert m["0.5"]["dice"] == 1.0 and m["chosen"]["dice"] == pytest.approx(2 / 3)
    assert m["auc"] == 1.0 and m["connectivity"] is not None
