"""Detection metrics of anomaly scores (vaelab.use.detect) against counts done by hand."""

from __future__ import annotations

import math

import numpy as np

from vaelab.use.detect import detection_results


def test_detection_results_match_pair_counts_and_say_when_a_score_is_undefined():
    """AUROC is the fraction of (anomalous, normal) pairs ordered right: here 3 of 4."""
    labels = np.array([0, 0, 1, 1])
    columns = {"nll": np.array([0.1, 0.4, 0.35, 0.8]),
               "neg_elbo": np.array([0.1, math.nan, 0.2, 0.3])}
    results, curves = detection_results(["log-likelihood", "elbo"], columns, labels)
    assert math.isclose(results["log-likelihood"]["auroc"], 0.75)
    fpr, tpr, auroc = curves["log-likelihood"]
    assert auroc == results["log-likelihood"]["auroc"] and fpr[-1] == tpr[-1] == 1
    assert results["elbo"] == {"undefined": "1 NaN scores"} and "elbo" not in curves
