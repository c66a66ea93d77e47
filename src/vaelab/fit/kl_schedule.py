"""The KL weight β_t of a training step: constant, linear warm-up, or cyclical annealing.

The optimized objective is E_q[log p(x|z)] − β_t · KL(q ‖ p(z)) (or the tempered IWAE bound,
see ``vaelab.infer.objectives``); the reported ELBO is always the true one (β = 1). With
``beta`` = β and t the 0-based global step (S steps per epoch):

* ``"constant"`` — β_t = β (Higgins et al. 2017's β-VAE weight; β = 1 is the ELBO);
* ``"linear"`` — β_t = β · min(1, t / (E_w · S)) with E_w = ``warmup_epochs`` > 0: the KL
  warm-up of Bowman et al. (2016) and Sønderby et al. (2016), step by step;
* ``"cyclical"`` — cyclical annealing (Fu, Li, Liu, Gao, Celikyilmaz & Carin 2019, "Cyclical
  annealing schedule: a simple approach to mitigating KL vanishing", eq. 7): the T = E · S
  steps of the run (E = ``epochs``) are cut into M = ``cycles`` equal cycles; at position
  τ = ((t · M) mod T) / T ∈ [0, 1) of its cycle the weight is β · min(1, τ / R), R =
  ``ratio``: it rises linearly from 0 over the first R of each cycle, then stays at β.

The weight depends only on (t, S) and the configuration, so a resumed run repeats it exactly
(extending a run's ``epochs`` on resume stretches the cycles of the remaining steps, as it
does for the cosine learning rate).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from vaelab import _checks, catalogue
from vaelab.config import TrainConfig

KL_SCHEDULES = catalogue.names("kl-schedule")


class KLSchedule(Protocol):
    """What every KL schedule provides: β_t / β at a global step."""

    def fraction(self, step: int, steps_per_epoch: int, epochs: int) -> float: ...


@dataclass(frozen=True)
class ConstantKL:
    """β_t = β."""

    @classmethod
    def from_options(cls) -> ConstantKL:
        return cls()

    def fraction(self, step: int, steps_per_epoch: int, epochs: int) -> float:
        """β_t / β at 0-based global ``step``."""
        return 1.0


@dataclass(frozen=True)
class LinearKL:
    """β_t = β · min(1, t / (E_w · S)), E_w = ``warmup_epochs`` > 0."""

    warmup_epochs: float

    @classmethod
    def from_options(cls, *, warmup_epochs: float = 1.0) -> LinearKL:
        return cls(warmup_epochs)

    def fraction(self, step: int, steps_per_epoch: int, epochs: int) -> float:
        warmup = self.warmup_epochs * steps_per_epoch
        if warmup <= 0:
            raise ValueError(f"kl_warmup_epochs: the 'linear' KL schedule ramps over that many "
                             f"epochs; expected a number > 0, got {self.warmup_epochs}")
        return min(1.0, step / warmup)


@dataclass(frozen=True)
class CyclicalKL:
    """``cycles`` cycles over the run's E · S steps, each rising over its first ``ratio``."""

    cycles: int
    ratio: float

    @classmethod
    def from_options(cls, *, cycles: int = 4, ratio: float = 0.5) -> CyclicalKL:
        return cls(cycles, ratio)

    def fraction(self, step: int, steps_per_epoch: int, epochs: int) -> float:
        total = _checks.positive_int("epochs", epochs) * steps_per_epoch
        cycles = _checks.positive_int("kl_cycles", self.cycles)
        if not 0 < self.ratio <= 1:
            raise ValueError(f"kl_ratio: expected a number in (0, 1], got {self.ratio}")
        tau = (step * cycles) % total / total
        return min(1.0, tau / self.ratio)


def kl_weight(step: int, steps_per_epoch: int, *, beta: float = 1.0,
              schedule: str = "constant", warmup_epochs: float = 0.0, epochs: int = 1,
              cycles: int = 4, ratio: float = 0.5) -> float:
    """β_t at 0-based global step ``step``; see the module docstring for each schedule.

    Raises ValueError naming the argument for an unknown schedule, a linear schedule without
    a positive ``warmup_epochs``, or ``ratio`` outside (0, 1].
    """
    entry = catalogue.get("kl-schedule", schedule, "kl_schedule")
    given = {"warmup_epochs": warmup_epochs, "cycles": cycles, "ratio": ratio}
    schedule_ = entry.resolve().from_options(
        **{o.name: given[o.name] for o in entry.options})
    return _weight(schedule_, step, steps_per_epoch, beta, epochs)


def _weight(schedule: KLSchedule, step: int, steps_per_epoch: int, beta: float,
            epochs: int) -> float:
    step = _checks.non_negative_int("step", step)
    steps_per_epoch = _checks.positive_int("steps_per_epoch", steps_per_epoch)
    return beta * schedule.fraction(step, steps_per_epoch, epochs)


def kl_weight_for(config: TrainConfig, step: int, steps_per_epoch: int) -> float:
    """β_t for a ``vaelab.config.TrainConfig`` (its beta, its KL schedule with that
    schedule's options, epochs)."""
    entry, options = catalogue.chosen(config, "kl-schedule")
    return _weight(entry.resolve().from_options(**options), step, steps_per_epoch,
                   config.beta, config.epochs)


def warmup_warning(config: TrainConfig) -> str | None:
    """One warning line when the linear warm-up outlasts the run (``--epochs`` below a
    --config file's ``kl_warmup_epochs``, say): the run then never reaches the KL weight β,
    which its ELBO-trained weights silently assume. None otherwise. The warm-up is not
    rescaled: the user picks a shorter one or none."""
    if catalogue.canonical(config.kl_schedule) != "linear":
        return None
    warmup = float(catalogue.chosen(config, "kl-schedule")[1]["warmup_epochs"])
    if warmup <= config.epochs:
        return None
    return (f"warning: the KL warm-up (--kl-warmup {warmup:g} epochs) is longer than the run "
            f"(--epochs {config.epochs}): training ends at KL weight {config.epochs / warmup:.2g}"
            f" × β, not β; pass a --kl-warmup of at most {config.epochs} epochs, or "
            f"--kl-schedule constant for none")
