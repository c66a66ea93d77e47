"""Adam for the training step: torch's fused kernel, called with as little Python as possible.

:func:`fused_adam` builds ``torch.optim.Adam(fused=True)`` (one kernel over every tensor;
Kingma & Ba 2015) where the device has it; :class:`DirectFusedAdam` then calls that kernel
directly on the optimizer's own state for steps after the first (the training hot path).
"""

from __future__ import annotations

import torch
from torch import nn


def fused_adam(params: list[nn.Parameter], lr: float, betas) -> torch.optim.Adam:
    """torch's fused Adam (one kernel for all tensors) where the device has it, else foreach."""
    if params:
        try:
            return torch.optim.Adam(params, lr=lr, betas=betas, fused=True)
        except (RuntimeError, ValueError):
            pass
    return torch.optim.Adam(params, lr=lr, betas=betas)


class DirectFusedAdam:
    """``optimizer.step()`` of a fused ``torch.optim.Adam``, minus its per-call Python work.

    The first step (and any step after :meth:`forget`) runs ``optimizer.step()``, which creates
    the state; later steps call the same fused kernel (``torch._fused_adam_``, one pass over
    every tensor) on the optimizer's own state tensors, with the group's current learning rate
    and betas, exactly as ``torch.optim.Adam(fused=True)`` does. The optimizer object stays
    the source of truth, so its ``state_dict`` checkpoints and resumes as usual. Anything but
    one plain fused group (AMSGrad, weight decay, maximize, several groups, tensor lr) always
    goes through ``optimizer.step()``.
    """

    def __init__(self, optimizer: torch.optim.Optimizer) -> None:
        self.optimizer = optimizer
        groups = optimizer.param_groups
        g = groups[0] if len(groups) == 1 else {}
        self.eligible = (isinstance(optimizer, torch.optim.Adam) and bool(g.get("fused"))
                         and not g.get("amsgrad") and not g.get("maximize")
                         and g.get("weight_decay") == 0 and not g.get("decoupled_weight_decay")
                         and not isinstance(g.get("lr"), torch.Tensor)
                         and hasattr(torch, "_fused_adam_"))
        self._lists: tuple[list[torch.Tensor], ...] | None = None

    def forget(self) -> None:
        """Drop the cached state lists (call after the optimizer's state was replaced)."""
        self._lists = None

    def step(self) -> None:
        if not self.eligible:
            self.optimizer.step()
            return
        group = self.optimizer.param_groups[0]
        params = group["params"]
        lists = self._lists
        state = self.optimizer.state
        if lists is None or len(lists[0]) != len(params) or any(
                p.grad is not g for p, g in zip(params, lists[1], strict=True)) or (
                params and state.get(params[0], {}).get("exp_avg") is not lists[2][0]):
            self.optimizer.step()
            try:
                self._lists = ([*params], [p.grad for p in params],
                               [state[p]["exp_avg"] for p in params],
                               [state[p]["exp_avg_sq"] for p in params],
                               [state[p]["step"] for p in params])
            except KeyError:  # a parameter without a gradient has no state yet
                self._lists = None
            return
        ps, gs, ms, vs, steps = lists
        torch._foreach_add_(steps, 1)
        beta1, beta2 = group["betas"]
        torch._fused_adam_(ps, gs, ms, vs, [], steps, lr=float(group["lr"]), beta1=float(beta1),
                           beta2=float(beta2), weight_decay=0.0, eps=float(group["eps"]),
                           amsgrad=False, maximize=False)
