"""The optimizer of the training step, chosen by name from the catalogue (``--optimizer``).

* ``adam`` — Adam (Kingma & Ba 2015), torch's fused kernel where the device has one
  (:func:`vaelab.fit.adam.fused_adam`; the fast path then calls it directly);
* ``adamax`` — Adamax (Kingma & Ba 2015, section 7.1), ``torch.optim.Adamax``: Adam with the
  second moment's L2 norm replaced by an infinity norm,

      m_t = β₁ m_{t−1} + (1 − β₁) g_t,     u_t = max(β₂ u_{t−1}, |g_t| + ε),
      θ_t = θ_{t−1} − lr / (1 − β₁ᵗ) · m_t / u_t,

  the optimizer of the VampPrior and IAF reference code. Its state (m, u and the step count
  per tensor) is the optimizer's ``state_dict``, which the run's checkpoint holds, so a
  resumed run continues bit for bit.
"""

from __future__ import annotations

import torch
from torch import nn

from vaelab import catalogue
from vaelab.fit.adam import fused_adam

OPTIMIZERS = catalogue.names("optimizer")


def make_optimizer(name: str, params: list[nn.Parameter], lr: float,
                   betas: tuple[float, float]) -> torch.optim.Optimizer:
    """The optimizer ``name`` (a catalogue name, either spelling) over ``params``."""
    entry = catalogue.get("optimizer", name, "optimizer")
    if entry.name == "adam":
        return fused_adam(params, lr, betas)
    return entry.resolve()(params, lr=lr, betas=betas)
