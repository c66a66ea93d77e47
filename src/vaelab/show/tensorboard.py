"""Optional TensorBoard logging of the per-epoch metrics (``vaelab train --tensorboard``).

Writes every numeric entry of each metrics.jsonl row (train/val ELBO, rate, distortion,
samples/s, lr, KL weight, ...) as a scalar at step = epoch, through
``torch.utils.tensorboard.SummaryWriter`` into ``RUN/tensorboard/``; view it with
``tensorboard --logdir RUN/tensorboard``. Needs the ``tensorboard`` package, which vaelab does
not require (``pip install tensorboard``); without it :func:`open_logger` refuses with one line
before any training starts.
"""

from __future__ import annotations

import importlib.util
import math
import os
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # an optional dependency: imported on first use only
    from torch.utils.tensorboard import SummaryWriter

LOG_DIR = "tensorboard"
#: Metrics rows' keys that are not curves.
NOT_SCALARS = ("epoch", "step")


class TensorBoardLogger:
    """Callable on a metrics row: ``logger(row)`` adds its scalars at step ``row["epoch"]``.

    The event file is opened at the first row, i.e. after training has set up (and, with
    ``--overwrite``, cleared) the run directory.
    """

    def __init__(self, log_dir: str | os.PathLike) -> None:
        self.log_dir = Path(log_dir)
        self.writer: SummaryWriter | None = None

    def __call__(self, row: dict) -> None:
        if self.writer is None:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(log_dir=str(self.log_dir))
        epoch = int(row.get("epoch", 0))
        for key, value in row.items():
            if key in NOT_SCALARS or isinstance(value, bool):
                continue
            if isinstance(value, (int, float)) and math.isfinite(value):
                tag = key.replace("_", "/", 1) if key.startswith(("train_", "val_")) else key
                self.writer.add_scalar(tag, float(value), epoch)
        self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def available() -> bool:
    """True when the ``tensorboard`` package can be imported."""
    return importlib.util.find_spec("tensorboard") is not None


def open_logger(run_dir: str | os.PathLike) -> TensorBoardLogger:
    """A logger writing into ``run_dir/tensorboard``.

    Raises:
        ValueError: the ``tensorboard`` package is not installed (names the flag and the fix).
    """
    if not available():
        raise ValueError("--tensorboard: needs the 'tensorboard' package, which is not "
                         "installed; install it with `pip install tensorboard` or drop the flag")
    return TensorBoardLogger(Path(run_dir) / LOG_DIR)
