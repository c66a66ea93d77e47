"""Exponential moving average (Polyak averaging) of the weights, for evaluation and sampling.

The weights at the end of a stochastic-gradient run jitter around a good point; their running
average sits closer to it (Polyak & Juditsky 1992). The IAF and PixelCNN++ reference code
evaluates with such an average; vaelab keeps one when ``ema_decay`` is set and validates,
early-stops, samples and saves with it, while the optimizer keeps stepping the raw weights.

After step t (1-based) every floating-point tensor w is averaged as

    a_t = d_t · a_{t−1} + (1 − d_t) · w_t,   d_t = min(decay, (1 + t) / (10 + t)),   a_0 = w_0,

the warm-up of d_t (as in TensorFlow's ExponentialMovingAverage with ``num_updates``) keeping
the first steps from being dominated by the random initial weights. Integer tensors (counters)
are copied, not averaged.
"""

from __future__ import annotations

import torch

from vaelab import _checks


def ema_factor(decay: float, t: int) -> float:
    """d_t = min(decay, (1 + t) / (10 + t)) for the t-th update (t >= 1)."""
    return min(float(decay), (1.0 + t) / (10.0 + t))


class WeightAverage:
    """The running average of the tensors in ``live`` (a dict name → tensor whose storage the
    optimizer updates in place, e.g. a state dict).

    :meth:`update` after every optimizer step; :attr:`average` holds the averaged tensors (same
    names); :meth:`state` / :meth:`load_state` for checkpoints (bit-exact resume).
    """

    def __init__(self, live: dict[str, torch.Tensor], decay: float) -> None:
        decay = _checks.positive_float("ema_decay", decay)
        if decay >= 1:
            raise ValueError(f"ema_decay: expected a number in (0, 1), got {decay}")
        self.decay, self.live, self.updates = decay, live, 0
        self.average = {k: v.detach().clone() for k, v in live.items()}

    @torch.no_grad()
    def update(self) -> None:
        """Fold the live tensors' current values into the average."""
        self.updates += 1
        d = ema_factor(self.decay, self.updates)
        for key, value in self.live.items():
            avg = self.average[key]
            if avg.is_floating_point():
                avg.lerp_(value.detach(), 1.0 - d)
            else:
                avg.copy_(value)

    def state(self) -> tuple[dict[str, torch.Tensor], int]:
        """(the averaged tensors, the number of updates so far)."""
        return self.average, self.updates

    def load_state(self, average: dict[str, torch.Tensor], updates: int) -> None:
        """Restore what :meth:`state` returned; ValueError if the names or shapes differ."""
        if set(average) != set(self.average):
            raise ValueError(f"ema: expected tensors {sorted(self.average)[:3]}…, got "
                             f"{sorted(average)[:3]}…")
        with torch.no_grad():
            for key, value in average.items():
                if value.shape != self.average[key].shape:
                    raise ValueError(f"ema: {key} has shape {list(value.shape)}, expected "
                                     f"{list(self.average[key].shape)}")
                self.average[key].copy_(value)
        self.updates = _checks.non_negative_int("ema updates", updates)
