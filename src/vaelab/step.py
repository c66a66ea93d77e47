"""One optimization step of the ELBO over θ (model) and φ (inference), the training hot path.

Schedules (the lecture's two ways to climb the family of bounds):

* ``"joint"`` — one simultaneous gradient step on θ and φ (how VAEs are trained);
* ``"alternating"`` — ``phi_steps`` gradient steps on φ with θ fixed (tightening the bound for
  this batch, EM-like), then one step on θ with φ fixed.

A step whose loss or gradients are not finite changes no weight and reports ``skipped``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from vaelab import _checks
from vaelab.inference import Inference
from vaelab.models import VAE
from vaelab.objectives import elbo_terms

SCHEDULES = ("joint", "alternating")


@dataclass(frozen=True)
class StepResult:
    """Batch means after the step's forward pass: ELBO, rate (KL), distortion (−E log p(x|z))."""

    elbo: float
    rate: float
    distortion: float
    skipped: bool


def _unique(params) -> list[nn.Parameter]:
    seen: dict[int, nn.Parameter] = {}
    for p in params:
        if p.requires_grad:
            seen.setdefault(id(p), p)
    return list(seen.values())


class TrainStep:
    """Callable ``step(x, index, kl_weight) → StepResult`` that updates θ and φ in place.

    Args:
        model: the VAE (θ = ``model.generative_parameters()``).
        inference: the inference scheme (φ = its parameters).
        lr, betas: Adam hyper-parameters (Kingma & Ba 2015).
        grad_clip: clip the global gradient norm to this value (None: no clipping).
        schedule: ``"joint"`` or ``"alternating"``.
        phi_steps: φ steps before each θ step when alternating.
        num_samples: Monte Carlo samples of z per data point.
        compile: accepted for API stability; this implementation runs eagerly.
    """

    def __init__(self, model: VAE, inference: Inference, *, lr: float = 1e-3,
                 betas: tuple[float, float] = (0.9, 0.999), grad_clip: float | None = None,
                 schedule: str = "joint", phi_steps: int = 0, num_samples: int = 1,
                 compile: str | bool = "auto") -> None:
        self.model, self.inference = model, inference
        self.schedule = _checks.one_of("schedule", schedule, SCHEDULES)
        self.phi_steps = _checks.non_negative_int("phi_steps", phi_steps)
        self.num_samples = _checks.positive_int("num_samples", num_samples)
        self.grad_clip = None if grad_clip is None else _checks.positive_float(
            "grad_clip", grad_clip)
        lr = _checks.positive_float("lr", lr)
        self.theta = _unique(model.generative_parameters())
        theta_ids = {id(p) for p in self.theta}
        self.phi = [p for p in _unique(inference.parameters()) if id(p) not in theta_ids]
        if inference.sparse:
            self.phi_opt = torch.optim.SparseAdam(self.phi, lr=lr, betas=betas)
            self.theta_opt = torch.optim.Adam(self.theta, lr=lr, betas=betas)
        elif self.schedule == "joint":
            self.theta_opt = torch.optim.Adam(self.theta + self.phi, lr=lr, betas=betas)
            self.phi_opt = None
        else:
            self.theta_opt = torch.optim.Adam(self.theta, lr=lr, betas=betas)
            self.phi_opt = torch.optim.Adam(self.phi, lr=lr, betas=betas)

    def _optimizers(self) -> list[torch.optim.Optimizer]:
        return [o for o in (self.theta_opt, self.phi_opt) if o is not None]

    def _backward(self, x, index, kl_weight, params) -> tuple[StepResult, bool]:
        for opt in self._optimizers():
            opt.zero_grad(set_to_none=True)
        q = self.inference(x, index)
        terms = elbo_terms(self.model, q, x, self.num_samples, validate=False)
        loss = (terms.kl * kl_weight - terms.expected_log_likelihood).mean()
        ok = bool(torch.isfinite(loss))
        if ok:
            loss.backward()
            dense = [p for p in params if p.grad is not None and not p.grad.is_sparse]
            if self.grad_clip is not None and dense:
                norm = torch.nn.utils.clip_grad_norm_(dense, self.grad_clip)
                ok = bool(torch.isfinite(norm))
            elif dense:
                ok = all(bool(torch.isfinite(p.grad).all()) for p in dense)
        result = StepResult(terms.elbo.mean().item(), terms.kl.mean().item(),
                            -terms.expected_log_likelihood.mean().item(), not ok)
        return result, ok

    def __call__(self, x: torch.Tensor, index: torch.Tensor | None = None,
                 kl_weight: float = 1.0) -> StepResult:
        """One step on the batch x [B, D] (index [B] into the training set) → StepResult."""
        if self.schedule == "alternating" and self.phi_opt is not None:
            for _ in range(self.phi_steps):
                _, ok = self._backward(x, index, kl_weight, self.phi)
                if ok:
                    self.phi_opt.step()
        result, ok = self._backward(x, index, kl_weight, self.theta + self.phi)
        if ok:
            if self.schedule == "alternating" and self.phi_opt is not None:
                self.theta_opt.step()
            else:
                for opt in self._optimizers():
                    opt.step()
        return result

    def state_dict(self) -> dict:
        return {"theta": self.theta_opt.state_dict(),
                "phi": None if self.phi_opt is None else self.phi_opt.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.theta_opt.load_state_dict(state["theta"])
        if self.phi_opt is not None and state.get("phi") is not None:
            self.phi_opt.load_state_dict(state["phi"])


def nan_to_none(value: float) -> float | None:
    """JSON-friendly: NaN/inf → None."""
    return value if math.isfinite(value) else None
