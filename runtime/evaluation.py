"""Detection metrics from labelled scores, in numpy (no scikit-learn on a device): AUROC, average precision,
false-positive rate at 95 % true-positive rate, and the confusion counts at a threshold."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from .calibration import auroc


def average_precision(labels: NDArray[Any], scores: NDArray[Any]) -> float:
    """Average precision with anomalies (label 1) as positives: the mean of the precision at each positive's rank,
    tied scores taken as one step (scikit-learn's ``average_precision_score``).

    Raises:
        ValueError: no positive label.
    """
    y = np.asarray(labels).astype(bool)
    s = np.asarray(scores, dtype=np.float64)
    if not y.any():
        raise ValueError("average precision needs at least one anomaly (label 1)")
    order = np.argsort(-s, kind="mergesort")
    s, y = s[order], y[order]
    last_of_tie = np.r_[np.flatnonzero(np.diff(s)), s.size - 1]  # the last index of each run of equal scores
    tp = np.cumsum(y)[last_of_tie]
    precision = tp / (last_of_tie + 1)
    recall_step = np.diff(np.r_[0, tp]) / y.sum()
    return float(np.sum(recall_step * precision))


def fpr_at_tpr(labels: NDArray[Any], scores: NDArray[Any], tpr: float = 0.95) -> float:
    """The smallest false-positive rate among thresholds that flag at least ``tpr`` of the anomalies."""
    y = np.asarray(labels).astype(bool)
    s = np.asarray(scores, dtype=np.float64)
    anomalies = np.sort(s[y])[::-1]
    k = int(np.ceil(tpr * anomalies.size))  # flag the k highest-scoring anomalies at least
    threshold = anomalies[k - 1]
    return float(np.mean(s[~y] >= threshold))


@dataclass(frozen=True)
class Evaluation:
    """Detection figures of one method on labelled inputs (anomaly = positive)."""

    method: str
    n_normal: int
    n_anomalous: int
    auroc: float
    average_precision: float
    fpr_at_95_tpr: float
    threshold: float
    true_positives: int
    false_positives: int
    true_negatives: int
    false_negatives: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def evaluate_scores(method: str, normal: NDArray[Any], anomalous: NDArray[Any], threshold: float) -> Evaluation:
    """Metrics of normal and anomalous scores, and the confusion counts of ``score > threshold``.

    Raises:
        ValueError: either group is empty.
    """
    normal, anomalous = np.asarray(normal, np.float64), np.asarray(anomalous, np.float64)
    if normal.size == 0 or anomalous.size == 0:
        raise ValueError(f"evaluation needs normal and anomalous inputs; got {normal.size} and {anomalous.size}")
    labels = np.r_[np.zeros(normal.size), np.ones(anomalous.size)]
    scores = np.r_[normal, anomalous]
    flagged_anomalous = int(np.count_nonzero(np.float32(anomalous) > np.float32(threshold)))
    flagged_normal = int(np.count_nonzero(np.float32(normal) > np.float32(threshold)))
    return Evaluation(method=method, n_normal=int(normal.size), n_anomalous=int(anomalous.size),
                      auroc=auroc(labels, scores), average_precision=average_precision(labels, scores),
                      fpr_at_95_tpr=fpr_at_tpr(labels, scores, 0.95), threshold=float(threshold),
                      true_positives=flagged_anomalous, false_positives=flagged_normal,
                      true_negatives=int(normal.size) - flagged_normal,
                      false_negatives=int(anomalous.size) - flagged_anomalous)
