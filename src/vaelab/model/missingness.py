"""A model of why values are missing: the self-masking logistic p(m | x) of not-MIWAE.

Ipsen, Mattei & Frellsen (2021), "not-MIWAE: Deep generative modelling with missing not at
random data", §3: when the chance that a value is missing depends on the value itself
(missing not at random, MNAR), ignoring the mechanism biases both the model and the
imputations. Their self-masking model gives each feature d its own logistic regression on its
own value,

    p(m_d = 1 | x) = σ(−w_d (x_d − b_d)),  p(m | x) = ∏_d p(m_d | x_d),

where m_d = 1 marks a missing entry. It is trained jointly with the VAE by adding
log p(m | x_obs, x̃_mis) to every importance log-weight (``vaelab.infer.masked``). Here the
sign is absorbed into a free weight: logits_d = w_d x_d + c_d, initialized at w = c = 0
(p = 1/2: no preference until the data speak). Shapes: x [..., D] → logits [..., D].
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from vaelab import _checks

MISSINGNESS_MODELS = ("none", "self-masking")


class SelfMasking(nn.Module):
    """Per-feature logistic p(m_d = 1 | x_d) = σ(w_d x_d + c_d) (Ipsen et al. 2021).

    Args:
        data_dim: D, the number of features.
    """

    def __init__(self, data_dim: int) -> None:
        super().__init__()
        self.data_dim = _checks.positive_int("data_dim", data_dim)
        self.weight = nn.Parameter(torch.zeros(self.data_dim))
        self.bias = nn.Parameter(torch.zeros(self.data_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of P(missing) for values x [..., D] → [..., D]."""
        return x * self.weight + self.bias

    def log_prob(self, missing: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """log p(m | x) summed over features: m bool [B, D], x [..., B, D] → [..., B]."""
        logits = self(x)
        return -F.binary_cross_entropy_with_logits(
            logits, missing.to(logits.dtype).expand_as(logits), reduction="none").sum(-1)


def build(name: str, data_dim: int) -> SelfMasking | None:
    """The missingness model named ``name`` ("none" → None, "self-masking")."""
    name = _checks.one_of("missing_model", name, MISSINGNESS_MODELS)
    return None if name == "none" else SelfMasking(data_dim)
