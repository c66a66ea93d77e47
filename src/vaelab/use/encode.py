"""Latent representations: posterior means or draws of q(z | x) for a whole data set.

The lecture's "inferring z given x" to discover latent factors: with amortized inference
(Kingma & Welling 2014) q_φ(z | x) is one encoder pass, so codes for N examples cost N
forward passes, done here in batches under ``torch.no_grad``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch.distributions import Distribution

from vaelab import _checks, data_forms
from vaelab._runtime import device_of, isolated_rng


def encode(infer: Callable[[torch.Tensor], Distribution], x: torch.Tensor, *,
           sample: bool = False, batch_size: int = 500,
           generator: torch.Generator | None = None) -> torch.Tensor:
    """Codes of x [N, D]: E_q[z | x] (``sample=False``) or one draw z ~ q(z | x); → [N, L].

    Args:
        infer: x [B, D] → q(z | x), batch [B], event [L] (an encoder, or a refining scheme).
        x: data [N, D] (a tensor, or any form of ``vaelab.data_forms``).
        sample: draw z ~ q instead of taking its mean.
        batch_size: examples per encoder pass.
        generator: seeds the draws (None: torch's global RNG).

    Returns:
        float tensor [N, L] on x's device. A q without a closed-form mean (e.g. a flow) falls
        back to the average of 64 draws when ``sample=False``.
    """
    x = data_forms.as_rows(x)           # any form of vaelab.data_forms, read by its rule
    home = x.device                            # the codes come back where x was
    if isinstance(infer, torch.nn.Module):     # CPU data to a GPU encoder's device
        x = x.to(device_of(infer))
    batch_size = _checks.positive_int("batch_size", batch_size)
    parts = []
    for start in range(0, x.shape[0], batch_size):
        with torch.no_grad():
            q = infer(x[start:start + batch_size])
            parts.append(_draw(q, generator) if sample else _mean(q, generator))
    if not parts:
        raise ValueError("x: expected at least one example, got an empty tensor")
    return torch.cat(parts).to(home)


def _draw(q: Distribution, generator: torch.Generator | None) -> torch.Tensor:
    if generator is None:
        return q.sample()
    with isolated_rng(int(torch.randint(2**62, (), generator=generator))):
        return q.sample()


def _mean(q: Distribution, generator: torch.Generator | None) -> torch.Tensor:
    try:
        return q.mean
    except NotImplementedError:
        return torch.stack([_draw(q, generator) for _ in range(64)]).mean(0)
