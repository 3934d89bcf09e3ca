"""Accuracy of scores against ground truth: ROC AUC, precision and recall at a threshold, log
loss and a calibration curve. Plain numpy, so that the monitor needs no scikit-learn; the unit
tests compare every figure with scikit-learn's."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

EPS = float(np.finfo(np.float64).eps)  # log loss clips probabilities to [EPS, 1 - EPS], as scikit-learn does


@dataclass(frozen=True)
class Accuracy:
    events: int
    positives: int
    auc: float
    precision: float
    recall: float
    log_loss: float


def auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """ROC AUC (the Mann-Whitney statistic, ties counted half); NaN when one class is absent."""
    positive = labels.astype(bool)
    n_pos = int(positive.sum())
    n_neg = len(labels) - n_pos
    if not n_pos or not n_neg:
        return math.nan
    _, inverse, counts = np.unique(scores, return_inverse=True, return_counts=True)
    average_rank = np.cumsum(counts) - (counts - 1) / 2  # ranks from 1; tied scores share their mean
    rank_sum = float(average_rank[inverse][positive].sum())
    return (rank_sum - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)


def precision_recall(scores: np.ndarray, labels: np.ndarray, threshold: float) -> tuple[float, float]:
    """At ``score >= threshold``; NaN where undefined (nothing flagged, no positives)."""
    flagged = scores >= threshold
    positive = labels.astype(bool)
    hits = int(np.count_nonzero(flagged & positive))
    n_flagged, n_pos = int(flagged.sum()), int(positive.sum())
    return (hits / n_flagged if n_flagged else math.nan), (hits / n_pos if n_pos else math.nan)


def log_loss(scores: np.ndarray, labels: np.ndarray) -> float:
    if not len(scores):
        return math.nan
    p = np.clip(scores.astype(np.float64), EPS, 1 - EPS)
    y = labels.astype(np.float64)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))


def accuracy(scores: np.ndarray, labels: np.ndarray, threshold: float) -> Accuracy:
    precision, recall = precision_recall(scores, labels, threshold)
    return Accuracy(len(scores), int(labels.astype(bool).sum()), auc(scores, labels), precision, recall,
                    log_loss(scores, labels))


def calibration(scores: np.ndarray, labels: np.ndarray, bins: int = 10) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per equal-width score bin with events: mean score, observed positive rate, events."""
    which = np.minimum((scores * bins).astype(np.int64), bins - 1)
    counts = np.bincount(which, minlength=bins)
    mean_score = np.bincount(which, weights=scores, minlength=bins)
    positives = np.bincount(which, weights=labels.astype(np.float64), minlength=bins)
    used = counts > 0
    return mean_score[used] / counts[used], positives[used] / counts[used], counts[used]
