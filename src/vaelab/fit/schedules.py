"""The schedules of a training step: learning rate, KL weight and the noise seed of an epoch.

Role in vaelab: pure functions of the config and the global step, so a resumed run takes
exactly the steps the uninterrupted one would have (the learning-rate and KL schedules
themselves are components of ``vaelab.catalogue``: ``vaelab.fit.lr_schedule``,
``vaelab.fit.kl_schedule``).
"""

from __future__ import annotations

import numpy as np

from vaelab import catalogue
from vaelab.config import TrainConfig
from vaelab.fit.kl_schedule import kl_weight_for
from vaelab.fit.lr_schedule import ConstantLR


def kl_weight(config: TrainConfig, step: int, steps_per_epoch: int) -> float:
    """Weight β_t of the KL term at global step ``step`` (0-based): the config's beta and
    kl_schedule (``vaelab.fit.kl_schedule.kl_weight_for``; linear: β · min(1, step / warm-up
    steps))."""
    return kl_weight_for(config, step, steps_per_epoch)


def learning_rate(config: TrainConfig, step: int, steps_per_epoch: int,
                  plateau_scale: float = 1.0) -> float:
    """Learning rate at global step ``step`` (0-based): lr × the chosen schedule's factor
    (``vaelab.fit.lr_schedule``; plateau: ``plateau_scale``, kept by the loop). With
    ``lr_warmup_epochs`` W > 0 the result is also multiplied by
    min(1, (step + 1) / (W · steps_per_epoch)).
    """
    lr = config.lr * lr_schedule_of(config).factor(step, steps_per_epoch, config.epochs,
                                                   plateau_scale)
    warmup = getattr(config, "lr_warmup_epochs", 0.0) * steps_per_epoch
    return lr * min(1.0, (step + 1) / warmup) if warmup > 0 else lr


def lr_schedule_of(config: TrainConfig) -> ConstantLR:
    """The learning-rate schedule a TrainConfig chose, built from its options."""
    entry, options = catalogue.chosen(config, "lr-schedule")
    return entry.build(**options)


def noise_seed(seed: int, epoch: int, rank: int) -> int:
    """Seed of torch's global RNG (the reparameterization noise) for one epoch on one rank."""
    state = np.random.SeedSequence([seed, epoch, rank, 0x5EED]).generate_state(1, np.uint64)
    return int(state[0]) & ((1 << 63) - 1)
