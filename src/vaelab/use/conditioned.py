"""A conditional VAE seen, for one condition, as a model of x alone (Sohn et al. 2015).

What draws pictures and writes outputs calls ``model.sample(n, ...)`` and
``model.reconstruct(x)`` on rows of x; :class:`Given` answers those for a conditional model
and a fixed c: samples x ~ p(x | c), and reconstructions of rows whose own conditions it holds,
decoded under c — the "batch-corrected" x of scvi-tools' ``transform_batch``.
"""

from __future__ import annotations

import torch
from torch import nn

from vaelab.model.conditional import ConditionalVAE


class Given(nn.Module):
    """``model`` for the condition ``c`` ([C] or [n, C]); ``own`` [B, C]: the conditions
    of the rows :meth:`reconstruct` will be handed (None: decode under their own c = c)."""

    def __init__(self, model: ConditionalVAE, c: torch.Tensor | None,
                 own: torch.Tensor | None = None) -> None:
        super().__init__()
        self.model, self.c, self.own = model, c, own

    @torch.no_grad()
    def sample(self, n: int, *, mean: bool = False,
               generator: torch.Generator | None = None) -> torch.Tensor:
        """n draws x ~ p(x | c) → [n, D] (``mean``: E[x | z, c])."""
        return self.model.sample(n, self.c, mean=mean, generator=generator)

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """Rows x [B, D] with conditions ``own``: encoded under ``own``, decoded under c."""
        own = self.c if self.own is None else self.own
        if own is None:
            raise ValueError("c (--condition): expected the rows' own conditions, got none")
        packed = self.model.pack(x, own.to(x.device))
        return self.model.reconstruct(packed, None if self.c is None else self.c.to(x.device))
