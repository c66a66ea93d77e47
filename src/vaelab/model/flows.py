"""Autoregressive flows: MADE conditioners and affine autoregressive transforms (IAF, MAF).

* :class:`MADE` — the masked autoencoder for distribution estimation (Germain, Gregor, Murray
  & Larochelle 2015): an MLP whose weight masks make output i depend only on the inputs before
  i in a chosen order, plus an optional unmasked context vector h (Kingma et al. 2016).
* :class:`AffineAutoregressive` — the bijection y_i = μ_i + exp(s_i) · x_i, where (μ, s) come
  from a MADE. With the conditioner reading the *input* x it is one step of an inverse
  autoregressive flow (IAF; Kingma, Salimans, Jozefowicz, Chen, Sutskever & Welling 2016, eq.
  10): sampling is one pass, the density of an arbitrary point needs D passes. Reading the
  *output* y it is one step of a masked autoregressive flow (MAF; Papamakarios, Pavlakou &
  Murray 2017): the density is one pass, sampling needs D passes.

Both are ``torch.distributions.Transform`` objects with event_dim 1, so a flow is a
``TransformedDistribution(base, [steps...])``, with ``rsample`` and ``log_prob``, used by every
objective unchanged. log|det ∂y/∂x| = Σ_i s_i because the Jacobian is triangular in the
autoregressive order. The log-scale is soft-clamped, s = c · tanh(raw / c) with c = 5, to keep
deep flows finite; the MADE's output layer starts at zero, so every step starts as the identity.

The gated update (``gated=True``; Kingma et al. 2016, eqs. 11-14, their "numerically stable"
form) is the same affine map written as y = σ ⊙ x + (1 − σ) ⊙ m, σ = sigmoid(raw + b): a step
can only contract (log σ < 0), so no draw is ever stretched by a factor of e^{2c}, the blow-up
an affine IAF can hit. With b = :data:`GATE_BIAS` (their +1 to +2) a fresh step is y = σ(b) x,
close to the identity.

Shapes: x, y [..., D]; context h [..., C] broadcasting against x's batch dimensions (e.g. h
[B, C] with x [k, B, D]).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import cast

import torch
import torch.nn.functional as F
from torch import nn
from torch.distributions import Transform, constraints

from vaelab import _checks

LOG_SCALE_BOUND = 5.0
#: The gate's initial bias: sigmoid(2) = 0.88, so a fresh gated step keeps most of its input.
GATE_BIAS = 2.0


class _MaskedLinear(nn.Linear):
    """nn.Linear whose weight is multiplied by a fixed 0/1 mask [out, in]."""

    def __init__(self, mask: torch.Tensor) -> None:
        super().__init__(mask.shape[1], mask.shape[0])
        self.mask: torch.Tensor
        self.register_buffer("mask", mask.to(self.weight.dtype), persistent=False)

    def forward(self, input: torch.Tensor) -> torch.Tensor:  # noqa: A002 - torch's name
        return F.linear(input, self.weight * self.mask, self.bias)


def _degrees(dim: int, hidden: Sequence[int], order: torch.Tensor) -> list[torch.Tensor]:
    """MADE degrees: inputs order+1 (1..D); hidden unit k gets k mod D (0 = context only)."""
    return [order + 1] + [torch.arange(h) % dim for h in hidden]


class MADE(nn.Module):
    """Masked MLP x [..., D] (+ context h [..., C]) → ``params`` tensors, each [..., D].

    Output j of every parameter tensor depends only on the inputs x_i with ``order[i] <
    order[j]`` (and on h). Hidden degrees cycle through 0..D−1 (Germain et al. 2015's
    deterministic assignment); the context enters the first hidden layer unmasked (Kingma et al.
    2016, IAF with context). The output layer is zero-initialized.

    Args:
        dim: D. hidden: hidden layer sizes (at least one). params: outputs per coordinate.
        context_dim: C (0 = no context). order: a permutation of 0..D−1 (default: 0..D−1).
    """

    def __init__(self, dim: int, hidden: Sequence[int], params: int = 2, context_dim: int = 0,
                 order: torch.Tensor | None = None) -> None:
        super().__init__()
        self.dim = _checks.positive_int("dim", dim)
        hidden = [_checks.positive_int("hidden", h) for h in hidden]
        if not hidden:
            raise ValueError("hidden: expected at least one hidden layer size, got none")
        self.params = _checks.positive_int("params", params)
        self.context_dim = _checks.non_negative_int("context_dim", context_dim)
        order = torch.arange(dim) if order is None else torch.as_tensor(order).long()
        if sorted(order.tolist()) != list(range(dim)):
            raise ValueError(f"order: expected a permutation of 0..{dim - 1}, "
                             f"got {order.tolist()}")
        self.register_buffer("order", order, persistent=False)
        degrees = _degrees(dim, hidden, order)
        self.hidden = nn.ModuleList(
            _MaskedLinear((d_out[:, None] >= d_in[None, :]).float())
            for d_in, d_out in zip(degrees[:-1], degrees[1:], strict=True))
        out_mask = (degrees[0][:, None] > degrees[-1][None, :]).float().repeat(params, 1)
        self.out = _MaskedLinear(out_mask)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)
        self.context = nn.Linear(context_dim, hidden[0], bias=False) if context_dim else None

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, ...]:
        """→ ``params`` tensors [..., D] (broadcast shape of x and the context's batch)."""
        h = self.hidden[0](x)
        if self.context is not None:
            if context is None:
                raise ValueError(f"context: expected a tensor [..., {self.context_dim}], got None")
            h = h + self.context(context)
        h = F.elu(h)
        for layer in self.hidden[1:]:
            h = F.elu(layer(h))
        return self.out(h).unflatten(-1, (self.params, self.dim)).unbind(-2)


def _soft_clamp(s: torch.Tensor) -> torch.Tensor:
    return LOG_SCALE_BOUND * torch.tanh(s / LOG_SCALE_BOUND)


class AffineAutoregressive(Transform):
    """y = μ + exp(s) ⊙ x with (μ, s) = MADE(u, h), u = x (IAF) or u = y (MAF).

    Args:
        made: a :class:`MADE` with ``params=2`` (μ, raw s).
        context: h [..., C] or None.
        conditioner: ``"input"`` (IAF, Kingma et al. 2016) or ``"output"`` (MAF, Papamakarios
            et al. 2017).
        gated: the gated update y = σ ⊙ x + (1 − σ) ⊙ m with (m, raw) = MADE(u, h) and
            σ = sigmoid(raw + :data:`GATE_BIAS`), i.e. μ = (1 − σ) ⊙ m and s = log σ < 0.

    The sequential direction (IAF's inverse, MAF's forward) solves the triangular system by D
    fixed-point sweeps, each fixing at least one more coordinate in the autoregressive order, so
    the result is exact after D sweeps. ``log_abs_det_jacobian(x, y)`` → Σ_i s_i, shape [...].
    """

    domain = constraints.independent(constraints.real, 1)
    codomain = constraints.independent(constraints.real, 1)
    bijective = True
    sign = +1

    def __init__(self, made: MADE, context: torch.Tensor | None = None,
                 conditioner: str = "input", cache_size: int = 1, gated: bool = False) -> None:
        super().__init__(cache_size=cache_size)
        self.made, self.context, self.gated = made, context, bool(gated)
        self.conditioner = _checks.one_of("conditioner", conditioner, ("input", "output"))
        # the last input and its (shift, log-scale): a draw's density reuses its MADE pass
        self._last: tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]] | None = None

    def _shift_log_scale(self, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self._last is not None and self._last[0] is u:
            return self._last[1]
        out = self._params(u)
        self._last = (u, out)
        return out

    def _params(self, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(μ, s) of the affine map y = μ + exp(s) ⊙ x, from one MADE pass on ``u``."""
        shift, raw = self.made(u, self.context)
        if not self.gated:
            return shift, _soft_clamp(raw)
        gate = raw + GATE_BIAS
        return torch.sigmoid(-gate) * shift, F.logsigmoid(gate)    # 1 − σ(g) = σ(−g)

    def _solve(self, target: torch.Tensor, forward: bool) -> torch.Tensor:
        """The sequential direction: D sweeps, sweep k fixing the coordinate at position k of
        the autoregressive order from the ones before it (exact: they are already final).

        Only final values are ever fed back; the coordinates not yet solved stay 0. Feeding
        back a whole sweep's provisional values instead would also converge in exact
        arithmetic, but a gated step's exp(−s) is unbounded: a provisional value can
        overflow, and inf × a masked-out weight of 0 makes NaN in coordinates that never
        depended on it."""
        other = torch.zeros_like(target)
        order = cast(torch.Tensor, self.made.order)
        for k in range(self.made.dim):
            loc, log_scale = self._params(other)
            step = (target * log_scale.exp() + loc if forward
                    else (target - loc) * torch.exp(-log_scale))
            other = torch.where(order == k, step, other)
        return other

    def _call(self, x: torch.Tensor) -> torch.Tensor:
        if self.conditioner == "output":
            return self._solve(x, forward=True)
        loc, log_scale = self._shift_log_scale(x)
        return loc + log_scale.exp() * x

    def _inverse(self, y: torch.Tensor) -> torch.Tensor:
        if self.conditioner == "input":
            return self._solve(y, forward=False)
        loc, log_scale = self._shift_log_scale(y)
        return (y - loc) * torch.exp(-log_scale)

    def log_abs_det_jacobian(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        u = x if self.conditioner == "input" else y
        return self._shift_log_scale(u)[1].sum(-1)

    def __eq__(self, other: object) -> bool:
        return self is other

    def __hash__(self) -> int:
        return id(self)


def flow_orders(dim: int, steps: int) -> list[torch.Tensor]:
    """Autoregressive orders for ``steps`` stacked steps: natural, reversed, natural, ...

    Reversing between steps lets every coordinate depend on every other after two steps
    (Kingma et al. 2016; Papamakarios et al. 2017).
    """
    natural = torch.arange(dim)
    return [natural if t % 2 == 0 else natural.flip(0) for t in range(steps)]


def made_stack(dim: int, steps: int, hidden: Sequence[int], context_dim: int = 0
               ) -> nn.ModuleList:
    """``steps`` MADEs (μ, s per coordinate) with alternating orders, as an nn.ModuleList."""
    steps = _checks.non_negative_int("steps", steps)
    return nn.ModuleList(MADE(dim, hidden, 2, context_dim, order)
                         for order in flow_orders(dim, steps))
