"""The learning rate over training: constant, cosine, exponential decay, reduce on plateau.

Each schedule is a small class built from its catalogue options (``vaelab.catalogue``, kind
"lr-schedule") whose :meth:`factor` multiplies the base rate ``lr`` at a 0-based global step
(S steps per epoch, E epochs):

* :class:`ConstantLR` — 1;
* :class:`CosineLR` — ½(1 + cos(π · min(t, E·S) / (E·S))): from lr to 0 over the run
  (Loshchilov & Hutter 2017, without restarts);
* :class:`ExponentialLR` — ``decay`` ^ epoch;
* :class:`PlateauLR` — the loop's current scale, halved after every ``patience`` epochs without
  a better validation ELBO (``watches_validation``: the loop keeps that count).

A linear warm-up (``lr_warmup_epochs``) multiplies any of them; it is a training option, not a
schedule (``vaelab.fit.schedules.learning_rate``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar


@dataclass(frozen=True)
class ConstantLR:
    """factor 1."""

    watches_validation: ClassVar[bool] = False

    @classmethod
    def from_options(cls) -> ConstantLR:
        return cls()

    def factor(self, step: int, steps_per_epoch: int, epochs: int,
               plateau_scale: float = 1.0) -> float:
        """The multiplier of lr at 0-based global ``step``."""
        return 1.0


@dataclass(frozen=True)
class CosineLR(ConstantLR):
    """½(1 + cos(π · min(step, total) / total)), total = epochs · steps_per_epoch."""

    @classmethod
    def from_options(cls) -> CosineLR:
        return cls()

    def factor(self, step: int, steps_per_epoch: int, epochs: int,
               plateau_scale: float = 1.0) -> float:
        total = epochs * steps_per_epoch
        return 0.5 * (1.0 + math.cos(math.pi * min(step, total) / total))


@dataclass(frozen=True)
class ExponentialLR(ConstantLR):
    """``decay`` ^ (step // steps_per_epoch)."""

    decay: float = 0.95

    @classmethod
    def from_options(cls, *, decay: float = 0.95) -> ExponentialLR:
        return cls(decay)

    def factor(self, step: int, steps_per_epoch: int, epochs: int,
               plateau_scale: float = 1.0) -> float:
        return self.decay ** (step // steps_per_epoch)


@dataclass(frozen=True)
class PlateauLR(ConstantLR):
    """The loop's ``plateau_scale``: halved after every ``patience`` epochs without a better
    validation ELBO (the loop counts them; see :meth:`after_epoch`)."""

    watches_validation: ClassVar[bool] = True
    patience: int = 10

    @classmethod
    def from_options(cls, *, patience: int = 10) -> PlateauLR:
        return cls(patience)

    def factor(self, step: int, steps_per_epoch: int, epochs: int,
               plateau_scale: float = 1.0) -> float:
        return plateau_scale

    def after_epoch(self, scale: float, stale: int, improved: bool) -> tuple[float, int]:
        """(scale, epochs on the plateau) after an epoch: halve when the plateau reaches
        ``patience`` epochs, then wait again; an improvement resets the count."""
        if improved:
            return scale, 0
        stale += 1
        return (scale * 0.5, 0) if stale >= self.patience else (scale, stale)
