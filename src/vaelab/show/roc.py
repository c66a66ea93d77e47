"""The ROC figure of anomaly scores: true- against false-positive rate, one curve per score.

Curves come from :func:`vaelab.use.detect.roc_points` (scikit-learn's ``roc_curve``); the
legend gives each score's AUROC (Hanley & McNeil 1982: the probability that an anomaly scores
above a normal example). The diagonal is chance. Drawn on a bare Agg Figure, written
atomically.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from vaelab._files import save_figure


def roc_figure(curves: Mapping[str, tuple[np.ndarray, np.ndarray, float]],
               title: str = "ROC") -> Figure:
    """A Figure with one ROC curve per name: ``{name: (fpr [M], tpr [M], auroc)}``."""
    if not curves:
        raise ValueError("curves: expected at least one (fpr, tpr, auroc) curve, got none")
    fig = Figure(figsize=(5, 5))
    ax = fig.add_subplot()
    ax.plot([0, 1], [0, 1], color="0.7", linestyle="--", linewidth=1, label="chance (0.500)")
    for name, (fpr, tpr, auroc) in curves.items():
        ax.plot(fpr, tpr, linewidth=1.5, label=f"{name} ({auroc:.3f})")
    ax.set(xlim=(0, 1), ylim=(0, 1.01), xlabel="false-positive rate (normal flagged)",
           ylabel="true-positive rate (anomalies flagged)", title=title)
    ax.legend(loc="lower right", fontsize=8, title="score (AUROC)", title_fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def write_roc(path: str | Path, curves: Mapping[str, tuple[np.ndarray, np.ndarray, float]],
              title: str = "ROC") -> Path:
    """Draw :func:`roc_figure` and write it as a PNG at ``path`` (atomically) → path."""
    return save_figure(roc_figure(curves, title), path)
