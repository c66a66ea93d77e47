"""The standard VAE's ELBO and its gradient written out by hand, for the training hot path.

Model: q_φ(z | x) = N(loc, diag scale²) with [loc, raw] = encoder_net(x) and
scale = softplus(raw) + min_scale; p(z) = N(0, I); p_θ(x | z) = Bernoulli(logits = decoder_net(z)),
both networks :class:`vaelab.model.nets.MLP` (Kingma & Welling 2014). With z = loc + scale ⊙ ε,
ε ~ N(0, I) (the reparameterization trick) and S samples per data point, the loss of a batch of
B points is

    loss = (1/B) Σ_b [ w · KL_b − (1/S) Σ_s log p(x_b | z_bs) ],
    log p(x | z) = Σ_d x_d l_d − softplus(l_d),
    KL_b = ½ Σ_l (loc² + scale² − 1) − Σ_l log scale,

and its gradient is back-propagated layer by layer with the closed forms

    ∂loss/∂l = (σ(l) − x) / (B S),
    ∂loss/∂loc = Σ_s ∂loss/∂z + (w / B) loc,
    ∂loss/∂scale = Σ_s ε ⊙ ∂loss/∂z + (w / B)(scale − 1/scale),
    ∂loss/∂raw = ∂loss/∂scale ⊙ σ(raw),
    Linear y = a Wᵀ + b:  ∂W = (∂y)ᵀ a,  ∂b = Σ_rows ∂y,  ∂a = ∂y W,

and the activations' own backward kernels (the ones autograd calls). The products are the
same eleven matrix products autograd would run, but nothing else is built: no graph, no
distribution objects, no BCE composite, and every gradient lands in a preallocated buffer.
``tests/test_elbo_grad.py`` checks it against autograd and a finite-difference oracle.
"""

from __future__ import annotations

from typing import cast

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize

from vaelab.model._bernoulli_fast import _group_size
from vaelab.model.nets import MLP, has_hooks

#: Activations whose backward needs only the layer's output (so no pre-activation is kept).
_BACKWARD_FROM_OUTPUT = (nn.ReLU, nn.LeakyReLU, nn.Tanh)


def _layers(net: nn.Module) -> list[tuple[nn.Linear, nn.Module | None]] | None:
    """[(Linear, activation after it or None)] of an MLP, or None if ``net`` is not one."""
    if type(net) is not MLP or any(parametrize.is_parametrized(m) for m in net):
        return None         # a re-parameterised weight (weight norm) is autograd's
    modules = list(net)
    out: list[tuple[nn.Linear, nn.Module | None]] = []
    for i, m in enumerate(modules):
        if isinstance(m, nn.Linear):
            act = modules[i + 1] if i + 1 < len(modules) else None
            if act is not None and type(act) not in _BACKWARD_FROM_OUTPUT:
                return None
            if act is not None and isinstance(act, nn.LeakyReLU) and act.negative_slope <= 0:
                return None
            out.append((m, act))
    if not out or not isinstance(modules[-1], nn.Linear):
        return None
    return out


def _activation(act: nn.Module | None, a: torch.Tensor) -> torch.Tensor:
    """Apply the activation in place to a fresh pre-activation tensor a."""
    if act is None:
        return a
    if isinstance(act, nn.ReLU):
        return a.relu_()
    if isinstance(act, nn.Tanh):
        return a.tanh_()
    return F.leaky_relu_(a, cast(nn.LeakyReLU, act).negative_slope)


def _activation_backward(act: nn.Module | None, grad: torch.Tensor, out: torch.Tensor
                         ) -> torch.Tensor:
    """∂loss/∂(pre-activation) from ∂loss/∂out and the activation's output ``out`` (a hidden
    layer's activation: ReLU, tanh or leaky ReLU, never None)."""
    if isinstance(act, nn.ReLU):
        return torch.ops.aten.threshold_backward(grad, out, 0)
    if isinstance(act, nn.Tanh):
        return torch.ops.aten.tanh_backward(grad, out)
    return torch.ops.aten.leaky_relu_backward(grad, out,
                                              cast(nn.LeakyReLU, act).negative_slope, True)


class GaussianBernoulliELBOGrad:
    """Loss and hand-derived gradient of the standard VAE's −ELBO (see the module docstring).

    ``supports(encoder_net, decoder_net)`` says whether the networks are MLPs this class can
    differentiate (Linear layers with ReLU, leaky ReLU or tanh between them, every parameter
    trainable). ``__call__(x [B, D], eps [B, L] or [S, B, L], kl_weight)`` fills ``p.grad`` of
    every parameter (encoder then decoder, in :attr:`parameters` order; views of one flat
    buffer, :meth:`flat_gradient`) and returns (loss, mean log-likelihood, mean KL) as 0-d
    tensors, all without autograd.
    """

    def __init__(self, encoder_net: nn.Module, decoder_net: nn.Module, min_scale: float,
                 latent_dim: int) -> None:
        enc, dec = _layers(encoder_net), _layers(decoder_net)
        if enc is None or dec is None:
            raise ValueError("encoder_net, decoder_net: expected vaelab.model.nets.MLP networks "
                             "with "
                             "relu, leaky_relu or tanh activations")
        self.encoder_layers, self.decoder_layers = enc, dec
        self.min_scale, self.latent_dim = float(min_scale), int(latent_dim)
        self.parameters: list[torch.Tensor] = [
            p for lin, _ in enc + dec for p in (lin.weight, lin.bias) if p is not None]
        self._flat: torch.Tensor | None = None
        self._views: list[torch.Tensor] | None = None
        self._nets = (encoder_net, decoder_net)

    def hooked(self) -> bool:
        """True when a hook on the networks or their parameters would be skipped."""
        return has_hooks(*self._nets)

    @staticmethod
    def supports(encoder_net: nn.Module, decoder_net: nn.Module) -> bool:
        enc, dec = _layers(encoder_net), _layers(decoder_net)
        if enc is None or dec is None:
            return False
        params = [p for lin, _ in enc + dec for p in lin.parameters()]
        return all(p.requires_grad for p in params) and len({(p.dtype, p.device)
                                                              for p in params}) == 1

    def flat_gradient(self) -> torch.Tensor:
        """All gradients as one flat tensor, whose views are the parameters' ``.grad``.

        Allocated on first use, and again whenever something replaced a ``.grad`` (e.g. an
        optimizer's ``zero_grad(set_to_none=True)``), so one pass over it tests, clips or
        all-reduces every gradient at once.
        """
        views = self._views
        if views is None or any(p.grad is not v for p, v in zip(self.parameters, views,
                                                                  strict=True)):
            p0 = self.parameters[0]
            self._flat = torch.zeros(sum(p.numel() for p in self.parameters), dtype=p0.dtype,
                                     device=p0.device)
            views, offset = [], 0
            for p in self.parameters:
                views.append(self._flat[offset:offset + p.numel()].view_as(p))
                offset += p.numel()
                p.grad = views[-1]
            self._views = views
        assert self._flat is not None      # made above together with the views
        return self._flat

    def _linear_backward(self, lin: nn.Linear, d: torch.Tensor, a: torch.Tensor) -> None:
        torch.mm(d.t(), a, out=lin.weight.grad)
        if lin.bias is not None:
            torch.sum(d, 0, out=lin.bias.grad)

    @torch.no_grad()
    def __call__(self, x: torch.Tensor, eps: torch.Tensor, kl_weight: float | torch.Tensor
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        B, L = x.shape[0], self.latent_dim
        S = eps.shape[0] if eps.dim() == 3 else 1
        self.flat_gradient()
        # ---- forward: encoder x → [loc, raw]; keep every layer's input for ∂W
        enc_inputs, h = [], x
        for lin, act in self.encoder_layers:
            enc_inputs.append(h)
            h = _activation(act, F.linear(h, lin.weight, lin.bias))
        loc, raw = h[:, :L], h[:, L:]
        scale = F.softplus(raw).add_(self.min_scale)
        z = torch.addcmul(loc, scale, eps).reshape(S * B, L)
        dec_inputs, h = [], z
        for lin, act in self.decoder_layers:
            dec_inputs.append(h)
            h = _activation(act, F.linear(h, lin.weight, lin.bias))
        logits = h                                                       # [S·B, D]
        # The loss needs only batch totals, so no per-row values are formed:
        # Σ_{s,b} log p(x_b | z_sb) = Σ x·l − Σ softplus(l) and Σ_b KL_b, each one reduction;
        # Σ softplus(l) comes from σ(l), which the backward pass needs anyway.
        d = torch.sigmoid(logits)
        xl = torch.dot((logits if S == 1 else logits.view(S, -1).sum(0)).reshape(-1),
                       x.reshape(-1))
        log_lik = (xl - _softplus_total(logits, d)).div_(S * B)          # mean over (s, b)
        kl = ((loc.square().sum() + scale.square().sum() - B * L) * 0.5
              - scale.log().sum()).div_(B)                               # mean over b
        loss = kl * kl_weight - log_lik
        # ---- backward
        d.view(S, B, -1).sub_(x)
        d.mul_(1.0 / (B * S))                                            # ∂loss/∂logits
        for i in range(len(self.decoder_layers) - 1, -1, -1):
            lin, _ = self.decoder_layers[i]
            a = dec_inputs[i]
            self._linear_backward(lin, d, a)
            d = torch.mm(d, lin.weight)
            if i > 0:
                d = _activation_backward(self.decoder_layers[i - 1][1], d, a)
        w = kl_weight / B
        # ∂loss/∂[loc, raw] written straight into one [B, 2L] buffer (no cat)
        d_head = d.new_empty((B, 2 * L))
        # (the same operations, in the same order, as Σ_s of the gradient formulas above, so
        # the gradient is the same to the last bit whether S is 1 or not)
        if S == 1:                                                       # ∂loss/∂z = d [B, L]
            torch.add(d, loc * w, out=d_head[:, :L])
            d_scale = (d * eps).add_((scale - scale.reciprocal()).mul_(w))
        else:
            dz = d.view(S, B, L)
            torch.add(dz.sum(0), loc * w, out=d_head[:, :L])
            d_scale = (dz * eps).sum(0).add_((scale - scale.reciprocal()).mul_(w))
        torch.ops.aten.softplus_backward.grad_input(d_scale, raw, 1.0, 20.0,
                                                    grad_input=d_head[:, L:])
        d = d_head
        for i in range(len(self.encoder_layers) - 1, -1, -1):
            lin, _ = self.encoder_layers[i]
            a = enc_inputs[i]
            self._linear_backward(lin, d, a)
            if i > 0:
                d = _activation_backward(self.encoder_layers[i - 1][1], torch.mm(d, lin.weight),
                                         a)
        return loss, log_lik, kl


def _softplus_total(logits: torch.Tensor, sigmoid: torch.Tensor) -> torch.Tensor:
    """Σ softplus(l) over every element of ``logits``, from ``sigmoid`` = σ(logits), 0-d.

    softplus(l) = relu(l) − log σ(|l|), and σ(|l|) = max(σ(l), 1 − σ(l)) lies in [½, 1], where
    both σ(l) (l ≥ 0) and 1 − σ(l) (l < 0) are accurate to a few ulps in absolute terms, so each
    log is accurate to a few ulps too (a log of 1 − σ is never taken where 1 − σ is tiny, the
    cancellation that makes the BCE form −log(1 − σ) lose its digits). The logs are taken once
    per group of G factors, Π σ(|l|) ≥ 2^−G, with G ≤ 64 in float32 (no underflow), as in
    :func:`vaelab.model._bernoulli_fast.half_centred_softplus_sum`. Five cheap passes instead of one
    ``F.softplus``, whose exp and log1p per element cost three times a sigmoid here.
    """
    factors = torch.maximum(sigmoid, 1 - sigmoid).view(-1)               # σ(|l|) ∈ [½, 1]
    size = factors.shape[0]
    group = _group_size(size, factors.dtype)
    whole = size - size % group
    log_sum = factors[:whole].view(-1, group).prod(-1).log_().sum()
    if whole < size:
        log_sum += factors[whole:].prod().log_()
    return logits.clamp_min(0).sum() - log_sum
