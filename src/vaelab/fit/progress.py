"""What training says as it goes: the per-epoch line, divergence warnings, speed notes.

Role in vaelab: an epoch whose steps were mostly skipped as non-finite, or whose ELBO is
astronomically low, has numbers nobody should trust; its line says so, with the remedy that
fits the run (the data's scale first for a Gaussian on unstandardized columns, the optimizer's
settings after that), and the run's summary lists every such epoch. An option that will make
the run slow on its device is said once, at the start.
"""

from __future__ import annotations

import torch

from vaelab.config import RunConfig, TrainConfig
from vaelab.infer.objectives import DIVERGED_ELBO
from vaelab.model import standardize

#: Validation rows per forward pass.


#: What to try when training diverges and the data's scale is not to blame.
OPTIMIZER_REMEDY = "try a smaller --lr or --grad-clip"


def divergence_remedy(config: RunConfig, x_train: torch.Tensor) -> str:
    """The advice for a diverged run: the data's scale first (a Gaussian on unstandardized
    columns of wildly different scales), the optimizer's settings only after that."""
    if (config.model.likelihood != "gaussian" or config.model.standardize == "on"
            or not x_train.is_floating_point()):
        return OPTIMIZER_REMEDY
    problem = standardize.scale_problem(x_train)
    if problem is None:
        return OPTIMIZER_REMEDY
    return (f"check the data's scale first: {problem}; pass --standardize on (each column "
            f"to mean 0, standard deviation 1, undone on every output), then if it still "
            f"diverges {OPTIMIZER_REMEDY}")


def divergence_warning(row: dict, steps_per_epoch: int,
                       remedy: str = OPTIMIZER_REMEDY) -> str | None:
    """Why this epoch's numbers cannot be trusted (most steps skipped as
    non-finite, or an astronomically low ELBO), with ``remedy``; or None."""
    skipped = row["skipped_steps"]
    if steps_per_epoch > 0 and 2 * skipped > steps_per_epoch:
        return (f"training diverged: {skipped} of {steps_per_epoch} steps skipped (non-finite) "
                f"in epoch {row['epoch']}; {remedy}")
    low = [v for v in (row["train_elbo"], row["val_elbo"]) if v is not None]
    if any(v < DIVERGED_ELBO for v in low):
        return f"training diverged: ELBO {min(low):.6g} in epoch {row['epoch']}; {remedy}"
    return None


def _describe(row: dict, epochs: int, steps_per_epoch: int = 0,
              remedy: str = OPTIMIZER_REMEDY) -> str:
    def fmt(v: float | None) -> str:
        return "n/a" if v is None else f"{v:.6g}" if abs(v) >= 1e6 else f"{v:.2f}"

    val = "" if row["val_elbo"] is None else f"  val ELBO {fmt(row['val_elbo'])}"
    warning = divergence_warning(row, steps_per_epoch, remedy)
    return (f"epoch {row['epoch']}/{epochs}  ELBO {fmt(row['train_elbo'])}{val}  "
            f"rate {fmt(row['train_rate'])}  distortion {fmt(row['train_distortion'])}  "
            f"{row['samples_per_s']:.0f} samples/s  skipped {row['skipped_steps']}  "
            f"{row['seconds']:.1f} s" + ("" if warning is None else f"  WARNING: {warning}"))


def _divergence_summary(metrics: list[dict], steps_per_epoch: int,
                        remedy: str = OPTIMIZER_REMEDY) -> str | None:
    """One line for the end of training when some epochs diverged, else None (the per-epoch
    warnings scroll away)."""
    bad = [row["epoch"] for row in metrics if divergence_warning(row, steps_per_epoch)]
    if not bad:
        return None
    return (f"warning: training diverged in epoch(s) {', '.join(map(str, bad))} of "
            f"{len(metrics)} (most steps skipped as non-finite or an astronomically low ELBO); "
            f"the weights are not trustworthy: {remedy}")


def speed_notes(config: TrainConfig, device: torch.device) -> list[str]:
    """One line per option that will make this run slow on ``device`` (said once, at start).

    On a CPU, ``precision="bf16"`` replaces the hand-derived fp32 gradient with autograd under
    bfloat16 autocast (about 6x slower than fp32 measured on a 2-core AMD EPYC, which has
    avx512_bf16), and ``compile=True`` spends about 50 s compiling before its first step for
    a step no faster than the eager fast path: a user who asked for either should know.
    """
    notes = []
    if device.type == "cpu" and config.precision == "bf16":
        notes.append("note: --precision bf16 on a CPU trains several times slower than fp32 "
                     "(the fast hand-derived gradient needs fp32); bf16 is meant for GPUs")
    if device.type == "cpu" and config.compile is True:
        notes.append("note: --compile on a CPU spends about a minute compiling the step, "
                     "which then runs no faster than the default eager step")
    return notes
