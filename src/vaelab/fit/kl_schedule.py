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

from vaelab import _checks

KL_SCHEDULES = ("constant", "linear", "cyclical")


def kl_weight(step: int, steps_per_epoch: int, *, beta: float = 1.0,
              schedule: str = "constant", warmup_epochs: float = 0.0, epochs: int = 1,
              cycles: int = 4, ratio: float = 0.5) -> float:
    """β_t at 0-based global step ``step``; see the module docstring for each schedule.

    Raises ValueError naming the argument for an unknown schedule, a linear schedule without
    a positive ``warmup_epochs``, or ``ratio`` outside (0, 1].
    """
    schedule = _checks.one_of("kl_schedule", schedule, KL_SCHEDULES)
    step = _checks.non_negative_int("step", step)
    steps_per_epoch = _checks.positive_int("steps_per_epoch", steps_per_epoch)
    if schedule == "constant":
        return beta
    if schedule == "linear":
        warmup = warmup_epochs * steps_per_epoch
        if warmup <= 0:
            raise ValueError(f"kl_warmup_epochs: the 'linear' KL schedule ramps over that many "
                             f"epochs; expected a number > 0, got {warmup_epochs}")
        return beta * min(1.0, step / warmup)
    total = _checks.positive_int("epochs", epochs) * steps_per_epoch
    cycles = _checks.positive_int("kl_cycles", cycles)
    if not 0 < ratio <= 1:
        raise ValueError(f"kl_ratio: expected a number in (0, 1], got {ratio}")
    tau = (step * cycles) % total / total
    return beta * min(1.0, tau / ratio)


def kl_weight_for(config: object, step: int, steps_per_epoch: int) -> float:
    """β_t for a ``vaelab.config.TrainConfig`` (its beta, kl_schedule, kl_warmup_epochs,
    epochs, kl_cycles, kl_ratio)."""
    return kl_weight(step, steps_per_epoch, beta=config.beta, schedule=config.kl_schedule,
                     warmup_epochs=config.kl_warmup_epochs, epochs=config.epochs,
                     cycles=config.kl_cycles, ratio=config.kl_ratio)
