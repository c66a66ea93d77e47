"""Files a use of a trained model writes: scores and clusters as CSV, codes as .npy.

Role in vaelab: the one place that lays out these files, so the command line and the Python
API write the same columns. Every file is written atomically (a temporary file, then a
rename: ``vaelab._files``), so a failure leaves no half-written file.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import torch

from vaelab._files import atomic_write_bytes


def write_scores_csv(path: Path, columns: dict[str, np.ndarray], labels: np.ndarray | None
                     ) -> Path:
    """One row per example: index, its label (when given) and each score column; an
    undefined score (NaN) is an empty cell."""
    names = list(columns)
    header = ["index", *(["label"] if labels is not None else []), *names]
    lines = [",".join(header)]
    for i in range(len(next(iter(columns.values())))):
        cells = [str(i), *([str(int(labels[i]))] if labels is not None else [])]
        values = (float(columns[n][i]) for n in names)    # NaN (undefined) → empty cell
        lines.append(",".join(cells + ["" if v != v else repr(v) for v in values]))
    return atomic_write_bytes(path, ("\n".join(lines) + "\n").encode())


def write_assignments_csv(path: Path, assignments: np.ndarray, labels: np.ndarray | None
                          ) -> Path:
    """One row per example: index, its cluster and (when given) its class label."""
    rows = ["index,cluster" + (",label" if labels is not None else "")]
    rows += [f"{i},{c}" + (f",{labels[i]}" if labels is not None else "")
             for i, c in enumerate(assignments)]
    return atomic_write_bytes(path, ("\n".join(rows) + "\n").encode())


def write_codes(path: Path, z: torch.Tensor) -> Path:
    """Codes z [N, L] (or any rows of values) as a float32 .npy array (no pickle), atomically."""
    buffer = io.BytesIO()
    np.save(buffer, z.detach().cpu().numpy().astype(np.float32), allow_pickle=False)
    return atomic_write_bytes(path, buffer.getvalue())
