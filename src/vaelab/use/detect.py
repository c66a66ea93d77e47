"""Detection metrics for anomaly scores: AUROC, AUPRC, FPR at 95% TPR, the ROC curve.

Labels are 1 for anomalous (out-of-distribution) examples and 0 for normal ones; scores are
higher for more anomalous examples (as every score of :mod:`vaelab.use.scores`). The metrics
are scikit-learn's (``roc_auc_score``, ``average_precision_score``, ``roc_curve``), computed on
the scores' ranks (:func:`scipy.stats.rankdata`), which changes nothing for finite scores (all
three depend only on the order) and lets ±inf scores take their place at the ends. The
protocol is that of Hendrycks & Gimpel (2017, "A baseline for detecting misclassified and
out-of-distribution examples"): AUROC, AUPR with anomalies as positives, FPR at 95% TPR.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from vaelab._checks import to_numpy


def check_labels(labels: object, n: int, name: str = "labels") -> np.ndarray:
    """labels → int64 array [n] of 0/1 with both values present; ValueError naming ``name``."""
    array = to_numpy(labels)
    if array.shape != (n,):
        raise ValueError(f"{name}: expected one label per example, shape ({n},), got shape "
                         f"{array.shape}")
    if array.dtype.kind not in "biuf" or not np.isin(array, (0, 1)).all():
        bad = array[~np.isin(array, (0, 1))][:3] if array.dtype.kind in "biuf" else array[:3]
        raise ValueError(f"{name}: expected 0 (normal) or 1 (anomalous) for every example, "
                         f"got values such as {bad.tolist()}")
    array = array.astype(np.int64)
    if array.min() == array.max():
        raise ValueError(f"{name}: expected both normal (0) and anomalous (1) examples, got "
                         f"only {int(array[0])}s ({n} of them)")
    return array


def _ranks(scores: object, n: int) -> np.ndarray:
    from scipy.stats import rankdata

    scores = to_numpy(scores, np.float64)
    if scores.shape != (n,):
        raise ValueError(f"scores: expected shape ({n},), got {scores.shape}")
    if np.isnan(scores).any():
        raise ValueError(f"scores: expected no NaN, got {int(np.isnan(scores).sum())}")
    return rankdata(scores)


def roc_points(scores: object, labels: object) -> tuple[np.ndarray, np.ndarray]:
    """(false-positive rates, true-positive rates) of the ROC curve (sklearn.metrics.roc_curve)."""
    from sklearn.metrics import roc_curve

    labels = check_labels(labels, to_numpy(scores).shape[0])
    fpr, tpr, _ = roc_curve(labels, _ranks(scores, labels.shape[0]))
    return fpr, tpr


def anomaly_metrics(scores: object, labels: object) -> dict[str, float | int]:
    """AUROC, AUPRC and FPR at 95% TPR of scores [N] (higher = anomalous) against labels [N].

    Returns ``{"auroc", "auprc", "fpr_at_95_tpr", "num_normal", "num_anomalous"}``: AUROC is
    P(score of an anomaly > score of a normal example) (ties count ½); AUPRC is the average
    precision with anomalies as positives (its chance level is the anomaly fraction); FPR at
    95% TPR is the smallest false-positive rate among thresholds that flag ≥ 95% of anomalies.
    Raises ValueError for NaN scores or labels that are not 0/1 with both present.
    """
    from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve

    labels = check_labels(labels, to_numpy(scores).shape[0])
    ranks = _ranks(scores, labels.shape[0])
    fpr, tpr, _ = roc_curve(labels, ranks)
    return {"auroc": float(roc_auc_score(labels, ranks)),
            "auprc": float(average_precision_score(labels, ranks)),
            "fpr_at_95_tpr": float(fpr[np.searchsorted(tpr, 0.95, side="left")]),
            "num_normal": int((labels == 0).sum()), "num_anomalous": int(labels.sum())}


def detection_results(names: Sequence[str], columns: dict[str, np.ndarray], labels: np.ndarray
                      ) -> tuple[dict[str, dict], dict[str, tuple]]:
    """Each score's :func:`anomaly_metrics` (or why it is undefined: NaN scores) and its ROC
    curve (fpr, tpr, AUROC) for a figure; ``columns`` as :func:`vaelab.use.scores.anomaly_scores`
    returns them, ``labels`` 0/1 [N]."""
    from vaelab.use.scores import SCORE_COLUMNS

    results: dict[str, dict] = {}
    curves: dict[str, tuple] = {}
    for name in names:
        values = columns[SCORE_COLUMNS[name]]
        if np.isnan(values).any():
            results[name] = {"undefined": f"{int(np.isnan(values).sum())} NaN scores"}
            continue
        m = results[name] = anomaly_metrics(values, labels)
        curves[name] = (*roc_points(values, labels), m["auroc"])
    return results, curves
