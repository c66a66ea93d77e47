"""Where the variational parameters φ come from: one call shape, ``q = infer(x, index)``.

* :class:`Amortized` — an encoder network predicts φ from x (Kingma & Welling 2014).

Every scheme is an ``nn.Module`` mapping (x [B, D], index [B] or None) to q with batch [B] and
event [L]; ``index`` are the rows' positions in the training set (used by schemes that keep
per-data-point parameters). ``sparse = True`` marks schemes whose parameters are per-datapoint
rows updated through sparse gradients (the trainer optimizes them with ``SparseAdam``).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.distributions import Distribution

from vaelab.models import Encoder


class Inference(nn.Module):
    """Base class of inference schemes: ``forward(x, index=None) → q(z | x)``."""

    sparse: bool = False

    def forward(self, x: torch.Tensor, index: torch.Tensor | None = None
                ) -> Distribution:  # pragma: no cover - abstract
        raise NotImplementedError


class Amortized(Inference):
    """q_φ(z | x) = encoder(x): one network shared by all data points."""

    def __init__(self, encoder: Encoder) -> None:
        super().__init__()
        self.encoder = encoder

    def forward(self, x: torch.Tensor, index: torch.Tensor | None = None) -> Distribution:
        return self.encoder(x)
