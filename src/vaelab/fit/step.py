"""One optimization step of the ELBO over θ (model) and φ (inference), the training hot path.

Schedules (the lecture's two ways to climb the family of bounds):

* ``"joint"`` — one simultaneous gradient step on θ and φ (how VAEs are trained);
* ``"alternating"`` — ``phi_steps`` gradient steps on φ with θ fixed (tightening the bound for
  this batch, EM-like), then one step on θ with φ fixed.

A step whose loss or gradients are not finite changes no weight and reports ``skipped``.

``TrainStep(model, inference, ...)`` returns one of three small step classes
(:func:`step_class` chooses): :class:`JointStep` (autograd, any model and objective),
:class:`AlternatingStep` (the alternating schedule) and :class:`StandardVAEStep` (the fast
paths below). What they share — options, θ and φ, optimizers, backward with all-reduce,
clipping and the finiteness test — lives in :class:`TrainStep`.

Speed. The loss is always the per-data-point ELBO of ``vaelab.infer.objectives`` (Kingma & Welling
2014), −mean_b[kl_weight · KL(q_b ‖ p) − E_q log p(x_b | z)], optimized by Adam (Kingma & Ba
2015). For the standard VAE — an amortized ``DiagonalNormal`` q, the ``StandardNormal`` prior
and a ``Bernoulli`` decoder — the step computes the same numbers without torch.distributions:

* MLP encoder and decoder with ReLU, leaky-ReLU or tanh (the default networks): the loss and its
  gradient written out by hand (:class:`vaelab.fit._elbo_grad.GaussianBernoulliELBOGrad`), no
  autograd graph, gradients written into preallocated buffers, then torch's fused Adam kernel
  called directly (:class:`vaelab.fit.adam.DirectFusedAdam`). Any parameter or module hook
  sends the step back to autograd, so hooks always run;
* other networks: :class:`_GaussianBernoulliELBO` on plain tensors through autograd, and with
  ``compile`` that function through ``torch.compile`` (forward and backward fused by Inductor).

Every other combination, and every objective but the plain ELBO without free bits (IWAE,
DReG: Burda et al. 2016, Tucker et al. 2019), goes through
``vaelab.infer.objectives.training_terms`` and autograd; the step reports the true ELBO (β = 1,
no free bits) whatever it optimizes. Adam is the
fused single-kernel implementation where torch has one for the device, and one fused
finiteness test of all the gradients replaces one test per parameter.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import nn

from vaelab import _checks, catalogue
from vaelab._runtime import restore_rng_states, rng_states
from vaelab.fit._elbo_grad import GaussianBernoulliELBOGrad
from vaelab.fit.adam import DirectFusedAdam
from vaelab.fit.optimizers import OPTIMIZERS, make_optimizer
from vaelab.infer.objectives import OBJECTIVES, training_terms
from vaelab.infer.schemes import Amortized, Inference
from vaelab.model.families import DiagonalNormal
from vaelab.model.likelihoods import Bernoulli
from vaelab.model.priors import StandardNormal
from vaelab.model.vae import VAE, Encoder

SCHEDULES = ("joint", "alternating")
PRECISIONS = ("fp32", "bf16")
COMPILE_MODES = ("auto", True, False)
#: With compile="auto", compile only on CUDA and only when the run is expected to be at least
#: this many steps. On CPU, Inductor's first compile of the step took 50-60 s on 2 cores and
#: the compiled step was no faster than the eager fast path (the matrix products dominate and
#: stay MKL calls either way), so "auto" stays eager there.
AUTO_COMPILE_MIN_STEPS = 20_000
AUTO_COMPILE_DEVICES = ("cuda",)
#: Eager steps before compiling (the first calls settle shapes; a failure shows early).
COMPILE_AFTER_STEPS = 5
#: torch.compile imports torch.utils.mkldnn, whose class bodies use the deprecated
#: torch.jit.script_method: 14 DeprecationWarnings from torch itself (2.13), silenced here.
TORCH_INTERNAL_DEPRECATION = r"`torch\.jit\.script_method` is deprecated"


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


def _standard_normal(shape: tuple[int, ...], like: torch.Tensor) -> torch.Tensor:
    """ε ~ N(0, I) of ``shape`` (the reparameterization noise; one seam for tests)."""
    return torch.randn(shape, dtype=like.dtype, device=like.device)


class _GaussianBernoulliELBO(nn.Module):
    """The ELBO terms of q = N(loc, diag scale²) from ``encoder_net``, p(z) = N(0, I) and
    p(x | z) = Bernoulli(logits = ``decoder_net(z)``), on plain tensors.

    ``forward(x [B, D], eps [S, B, L] or [B, L], kl_weight 0-d) → (loss, E log p(x|z), KL)``:
    the loss is mean_b(kl_weight · KL_b − E_q log p(x_b|z)); the two terms are batch means.
    Same values as ``elbo_terms`` with kl="auto" (analytic KL) for these distributions.
    """

    def __init__(self, encoder_net: nn.Module, decoder_net: nn.Module, min_scale: float):
        super().__init__()
        self.encoder_net, self.decoder_net, self.min_scale = encoder_net, decoder_net, min_scale

    def forward(self, x: torch.Tensor, eps: torch.Tensor, kl_weight: torch.Tensor):
        loc, raw_scale = self.encoder_net(x).chunk(2, dim=-1)
        scale = F.softplus(raw_scale) + self.min_scale
        logits = self.decoder_net(loc + scale * eps)
        target = x if logits.dim() == x.dim() else x.expand_as(logits)
        log_lik = -F.binary_cross_entropy_with_logits(logits, target, reduction="none").sum(-1)
        if log_lik.dim() > 1:
            log_lik = log_lik.mean(0)
        kl = 0.5 * (loc.square() + scale.square() - 1).sum(-1) - scale.log().sum(-1)
        loss = (kl_weight * kl - log_lik).mean()
        return loss, log_lik.detach().mean(), kl.detach().mean()

    @staticmethod
    def matches(model: VAE, inference: Inference) -> bool:
        """True when (model, inference) is the standard VAE this function computes exactly."""
        encoder = getattr(inference, "encoder", None)
        return (isinstance(model, VAE)     # a conditional VAE's decoder also reads c
                and type(inference) is Amortized and isinstance(encoder, Encoder)
                and type(encoder.family) is DiagonalNormal and not encoder.family.bounded
                and type(getattr(model, "prior_module", None)) is StandardNormal
                and type(model.decoder.likelihood) is Bernoulli)


def step_class(model: VAE, inference: Inference, *, schedule: str = "joint",
               objective: str = "elbo", free_bits: float = 0.0, **_: object) -> type[TrainStep]:
    """Which step trains (model, inference) with these options (the others do not choose).

    The alternating schedule has its own step; a joint step on the standard VAE with the
    plain ELBO takes the fast path; every other joint step goes through autograd.
    """
    if schedule == "alternating":
        return AlternatingStep
    if (schedule == "joint" and objective == "elbo" and free_bits == 0
            and _GaussianBernoulliELBO.matches(model, inference)):
        return StandardVAEStep
    return JointStep


def _optimizers_for(theta: list[nn.Parameter], phi: list[nn.Parameter], inference: Inference,
                    joint: bool, lr: float, phi_lr: float, betas: tuple[float, float],
                    optimizer: str = "adam"
                    ) -> tuple[torch.optim.Optimizer, torch.optim.Optimizer | None]:
    """(θ's optimizer, φ's own or None): sparse rows → SparseAdam, the rest ``optimizer``
    (fused Adam by default); a joint step has one over θ and φ, an alternating one each."""
    if inference.sparse:   # sparse rows → SparseAdam; dense φ (e.g. IAF's MADEs) → optimizer
        rows = {id(m.weight) for m in inference.modules()
                if isinstance(m, nn.Embedding) and m.sparse}
        return (make_optimizer(optimizer, theta + [p for p in phi if id(p) not in rows], lr,
                               betas),
                torch.optim.SparseAdam([p for p in phi if id(p) in rows], lr=phi_lr,
                                       betas=betas))
    if joint:
        return make_optimizer(optimizer, theta + phi, lr, betas), None
    return (make_optimizer(optimizer, theta, lr, betas),
            make_optimizer(optimizer, phi, phi_lr, betas))


class TrainStep:
    """Callable ``step(x, index, kl_weight) → StepResult`` that updates θ and φ in place.

    ``TrainStep(model, inference, ...)`` is a factory, as ``pathlib.Path`` is: it returns the
    step class :func:`step_class` chooses — :class:`JointStep`, :class:`AlternatingStep` or
    :class:`StandardVAEStep` — each of which is a ``TrainStep``. This class holds what they
    share: the checked options, θ and φ, the optimizers, the learning rate, the checkpointed
    state, and the backward pass with its all-reduce, clipping and finiteness test.

    Args:
        model: the VAE (θ = ``model.generative_parameters()``).
        inference: the inference scheme (φ = its parameters).
        lr, betas: the optimizer's hyper-parameters (Kingma & Ba 2015).
        optimizer: ``"adam"`` or ``"adamax"`` (``vaelab.fit.optimizers``).
        phi_lr: learning rate of φ when it has its own optimizer (per-datapoint rows, which
            see one update per epoch, or the alternating schedule); None: ``lr``.
        grad_clip: clip the global gradient norm to this value (None: no clipping).
        schedule: ``"joint"`` or ``"alternating"``.
        phi_steps: φ steps before each θ step when alternating (>= 1 there: with 0, φ would
            never be trained, so it is refused).
        num_samples: Monte Carlo samples of z per data point (K for the IWAE objectives).
        objective: ``"elbo"``, ``"iwae"`` or ``"iwae-dreg"``
            (``vaelab.infer.objectives.training_terms``); the step's ``kl_weight`` is β.
        free_bits: λ nats per latent dimension (objective ``"elbo"`` only).
        compile: ``True`` — run the standard VAE's loss through ``torch.compile`` (after a
            few eager steps; falls back to eager, with a warning, if compiling fails);
            ``False`` — eager; ``"auto"`` — compile only on a CUDA device and when
            ``expected_steps`` is at least :data:`AUTO_COMPILE_MIN_STEPS`, so a short run
            never pays for compiling.
        expected_steps: how many steps the caller plans to run (for ``compile="auto"``).
        reduce_gradients: called with the parameters right after their gradients are
            computed, before the finiteness test, clipping and the update; data-parallel
            training passes ``vaelab.fit.distributed.average_gradients`` (one flat all-reduce).
        precision: ``"fp32"``, or ``"bf16"``: the loss's forward pass runs under
            ``torch.autocast(dtype=torch.bfloat16)`` on the parameters' device (matrix
            products in bfloat16, reductions and log-densities in float32 by autocast's
            rules), through autograd; parameters, gradients and Adam stay float32, and no
            loss scaling is needed with bfloat16's float32 exponent range.
    """

    #: The standard VAE's plain-tensor loss and hand-derived gradient (its step only).
    _fast: _GaussianBernoulliELBO | None = None
    _grad: GaussianBernoulliELBOGrad | None = None
    compile_seconds: float | None = None

    def __new__(cls, model: VAE, inference: Inference, **options: Any) -> TrainStep:
        chosen = step_class(model, inference, **options) if cls is TrainStep else cls
        return super().__new__(chosen)

    def __init__(self, model: VAE, inference: Inference, *, lr: float = 1e-3,
                 betas: tuple[float, float] = (0.9, 0.999), grad_clip: float | None = None,
                 schedule: str = "joint", phi_steps: int = 0, num_samples: int = 1,
                 objective: str = "elbo", free_bits: float = 0.0,
                 compile: str | bool = "auto", expected_steps: int | None = None,
                 phi_lr: float | None = None,
                 reduce_gradients: Callable[[Sequence[torch.Tensor]], None] | None = None,
                 precision: str = "fp32", optimizer: str = "adam") -> None:
        self.model, self.inference = model, inference
        self.reduce_gradients = reduce_gradients
        self.precision = _checks.one_of("precision", precision, PRECISIONS)
        self.schedule = _checks.one_of("schedule", schedule, SCHEDULES)
        self.phi_steps = _checks.non_negative_int("phi_steps", phi_steps)
        if self.schedule == "alternating" and self.phi_steps == 0:
            raise ValueError("phi_steps: schedule='alternating' trains φ only in its phi_steps "
                             "steps before each θ step; expected phi_steps >= 1, got 0 (φ "
                             "would never change)")
        self.num_samples = _checks.positive_int("num_samples", num_samples)
        self.objective = _checks.one_of("objective", objective, OBJECTIVES)
        self.free_bits = float(free_bits)
        if not (math.isfinite(self.free_bits) and self.free_bits >= 0) or (
                self.free_bits > 0 and self.objective != "elbo"):
            raise ValueError(f"free_bits: expected a finite number >= 0, and 0 unless "
                             f"objective='elbo'; got {free_bits} with objective {objective!r}")
        self.grad_clip = None if grad_clip is None else _checks.positive_float(
            "grad_clip", grad_clip)
        lr = _checks.positive_float("lr", lr)
        phi_lr = lr if phi_lr is None else _checks.positive_float("phi_lr", phi_lr)
        self._phi_lr_ratio = phi_lr / lr
        if compile not in COMPILE_MODES or not isinstance(compile, (str, bool)):
            raise ValueError(f"compile: expected 'auto', True or False, got {compile!r}")
        self.compile = compile
        self.expected_steps = None if expected_steps is None else _checks.non_negative_int(
            "expected_steps", expected_steps)
        self.theta = _unique(model.generative_parameters())
        theta_ids = {id(p) for p in self.theta}
        self.phi = [p for p in _unique(inference.parameters()) if id(p) not in theta_ids]
        self.params = self.theta + self.phi      # θ then φ, built once for the hot path
        self.optimizer = _checks.one_of("optimizer", catalogue.canonical(optimizer),
                                        OPTIMIZERS)
        self.theta_opt, self.phi_opt = _optimizers_for(
            self.theta, self.phi, inference, self.schedule == "joint", lr, phi_lr, betas,
            self.optimizer)
        self._device_type = next(iter(self.params), torch.empty(0)).device.type
        self.steps = 0

    # ---------------------------------------------------------------- public

    @property
    def compiled(self) -> bool:
        """Whether the step now runs a compiled loss (only the standard VAE's step can)."""
        return False

    def set_lr(self, lr: float) -> None:
        """Set θ's learning rate to ``lr`` and a separate φ optimizer's to ``lr`` × phi_lr / lr."""
        for opt in self._optimizers():
            scale = self._phi_lr_ratio if opt is self.phi_opt else 1.0
            for group in opt.param_groups:
                group["lr"] = lr * scale

    def __call__(self, x: torch.Tensor, index: torch.Tensor | None = None,
                 kl_weight: float = 1.0) -> StepResult:
        """One step on the batch x [B, D] (index [B] into the training set) → StepResult."""
        self.steps += 1
        return self._step(x, index, kl_weight)

    def state_dict(self) -> dict:
        return {"theta": self.theta_opt.state_dict(),
                "phi": None if self.phi_opt is None else self.phi_opt.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.theta_opt.load_state_dict(state["theta"])
        if self.phi_opt is not None and state.get("phi") is not None:
            self.phi_opt.load_state_dict(state["phi"])

    # ---------------------------------------------------------------- shared internals

    def _step(self, x: torch.Tensor, index: torch.Tensor | None,
              kl_weight: float) -> StepResult:
        raise NotImplementedError        # each step class says how it updates θ and φ

    def _optimizers(self) -> list[torch.optim.Optimizer]:
        return [o for o in (self.theta_opt, self.phi_opt) if o is not None]

    def _zero_grad(self) -> None:
        for opt in self._optimizers():
            opt.zero_grad(set_to_none=True)

    def _autocast(self) -> torch.autocast:
        return torch.autocast(self._device_type, dtype=torch.bfloat16,
                              enabled=self.precision == "bf16")

    def _reduce(self, params: Sequence[torch.Tensor]) -> None:
        if self.reduce_gradients is not None:
            self.reduce_gradients(params)

    def _grads_ok(self, params: Sequence[torch.Tensor]) -> bool:
        """Clip (when asked) and test every dense gradient for finiteness in one pass."""
        dense = [p for p in params if p.grad is not None and not p.grad.is_sparse]
        if not dense:
            return True
        if self.grad_clip is not None:
            norm = torch.nn.utils.clip_grad_norm_(dense, self.grad_clip)
        else:
            grads = [g for g in (p.grad for p in dense) if g is not None]   # all of them
            norm = torch.stack(torch._foreach_norm(grads)).sum()
        return bool(torch.isfinite(norm))

    def _backward(self, x, index, kl_weight, params) -> tuple[StepResult, bool]:
        """The objective's loss through autograd, then :meth:`_backprop` over ``params``."""
        self._zero_grad()
        with self._autocast():
            q = self.inference(x, index)
            out = training_terms(self.model, q, x, objective=self.objective,
                                 num_samples=self.num_samples, kl_weight=kl_weight,
                                 free_bits=self.free_bits, validate=False)
            loss, terms = -out.surrogate.mean(), out.terms
        stats = torch.stack([loss, terms.elbo.mean(), terms.kl.mean(),
                             terms.expected_log_likelihood.mean()]).detach().tolist()
        ok = self._backprop(loss, math.isfinite(stats[0]), params)
        return StepResult(stats[1], stats[2], -stats[3], not ok), ok

    def _backprop(self, loss: torch.Tensor, finite: bool, params: list[nn.Parameter]) -> bool:
        """Backward, the gradients' all-reduce and their test → whether to take the step.

        Alone, a non-finite loss skips backward. Under torchrun every process must join each
        all-reduce (the others would wait in it until the 30-minute timeout), so a process
        with a non-finite loss still runs backward and fills its gradients with NaN: the
        average is then non-finite on every process, and all of them skip the step together.
        """
        if not finite and self.reduce_gradients is None:
            return False
        loss.backward()
        if not finite:
            for p in params:
                if p.grad is not None and not p.grad.is_sparse:
                    p.grad.fill_(math.nan)
        self._reduce(params)
        return self._grads_ok(params) and finite


class JointStep(TrainStep):
    """One simultaneous gradient step on θ and φ through autograd, for any model, inference
    scheme and objective."""

    def _step(self, x: torch.Tensor, index: torch.Tensor | None,
              kl_weight: float) -> StepResult:
        result, ok = self._backward(x, index, kl_weight, self.params)
        if ok:
            for opt in self._optimizers():
                opt.step()
        return result


class AlternatingStep(TrainStep):
    """``phi_steps`` gradient steps on φ with θ fixed (tightening the bound on this batch,
    EM-like), then one step on θ with φ fixed."""

    def _step(self, x: torch.Tensor, index: torch.Tensor | None,
              kl_weight: float) -> StepResult:
        assert self.phi_opt is not None        # an alternating step always has φ's own
        for _ in range(self.phi_steps):
            _, ok = self._backward(x, index, kl_weight, self.phi)
            if ok:
                self.phi_opt.step()
        result, ok = self._backward(x, index, kl_weight, self.params)
        if ok:
            self.theta_opt.step()
        return result


class StandardVAEStep(TrainStep):
    """The joint ELBO step of the standard VAE (module docstring: "Speed"), without
    torch.distributions: the hand-derived gradient and the direct fused Adam where the
    networks allow, else the plain-tensor loss through autograd, compiled when asked."""

    def __init__(self, model: VAE, inference: Inference, **options: Any) -> None:
        super().__init__(model, inference, **options)
        encoder = self._encoder()
        self._fast = _GaussianBernoulliELBO(encoder.net, model.decoder.net, self._min_scale())
        expected = self.expected_steps
        self._want_compile = self.compile is True or (
            self.compile == "auto" and self._device_type in AUTO_COMPILE_DEVICES
            and expected is not None and expected >= AUTO_COMPILE_MIN_STEPS)
        # The hand-derived gradient replaces autograd on the eager fast path (a compiled step
        # keeps autograd: Inductor fuses its graph), unless a parameter is outside the nets.
        if self.precision == "fp32" and GaussianBernoulliELBOGrad.supports(
                encoder.net, model.decoder.net):
            grad = GaussianBernoulliELBOGrad(encoder.net, model.decoder.net,
                                             self._min_scale(), encoder.latent_dim)
            if {id(p) for p in grad.parameters} == {id(p) for p in self.params}:
                self._grad = grad
        self._adam = DirectFusedAdam(self.theta_opt)
        self._compiled: Callable[..., Any] | None = None

    @property
    def compiled(self) -> bool:
        return self._compiled is not None

    def load_state_dict(self, state: dict) -> None:
        self._adam.forget()
        super().load_state_dict(state)

    def _encoder(self) -> Encoder:
        """The encoder (amortized inference with a diagonal-Normal :class:`Encoder`, which
        ``_GaussianBernoulliELBO.matches`` checked)."""
        return cast(Amortized, self.inference).encoder

    def _min_scale(self) -> float:
        """The floor on q's scale (the fast path's family is a DiagonalNormal)."""
        return cast(DiagonalNormal, self._encoder().family).min_scale

    def _step(self, x: torch.Tensor, index: torch.Tensor | None,
              kl_weight: float) -> StepResult:
        return self._fast_step(x, kl_weight)

    def _fast_step(self, x: torch.Tensor, kl_weight: float) -> StepResult:
        if self._want_compile and self.steps > COMPILE_AFTER_STEPS:
            return self._first_compiled_step(x, kl_weight)
        latent = self._encoder().latent_dim
        shape = (x.shape[0], latent) if self.num_samples == 1 else (
            self.num_samples, x.shape[0], latent)
        eps = _standard_normal(shape, x)
        if self._grad is not None and self._compiled is None and not self._grad.hooked():
            return self._hand_gradient_step(x, eps, kl_weight)
        self._zero_grad()
        weight = torch.tensor(float(kl_weight), dtype=x.dtype, device=x.device)
        fn = self._compiled if self._compiled is not None else self._fast
        assert fn is not None             # this path is taken only when the fast loss exists
        with self._autocast():
            loss, log_lik, kl = fn(x, eps, weight)
        loss_v, ll_v, kl_v = torch.stack([loss.detach(), log_lik, kl]).tolist()
        ok = self._backprop(loss, math.isfinite(loss_v), self.params)
        if ok:
            self.theta_opt.step()
        return StepResult(ll_v - kl_v, kl_v, -ll_v, not ok)

    def _hand_gradient_step(self, x: torch.Tensor, eps: torch.Tensor,
                            kl_weight: float) -> StepResult:
        """Loss and gradient from :class:`GaussianBernoulliELBOGrad`, then one fused Adam step.

        One pass over the flat gradient buffer tests it for finiteness: its sum, which is
        finite exactly when every entry is (an inf or NaN entry makes it inf or NaN) unless
        entries near 1e33 overflow it, where the squares of a norm would already overflow at
        1e19; with clipping, the norm itself. It and the batch statistics come back in one
        device-to-host copy.
        """
        hand = self._grad
        assert hand is not None           # taken only when the hand gradient exists
        loss, log_lik, kl = hand(x, eps, float(kl_weight))
        flat = hand.flat_gradient()
        if self.reduce_gradients is not None:
            # a non-finite loss here makes one gradient entry NaN (loss × 0, no host sync), so
            # the all-reduced sum is non-finite on every process and all skip the step
            flat[:1].add_(loss.detach().to(flat.dtype) * 0)
        self._reduce(hand.parameters)
        if self.grad_clip is not None:       # clip_grad_norm_'s rule on the one flat tensor
            check = torch.linalg.vector_norm(flat)
            flat.mul_((self.grad_clip / (check + 1e-6)).clamp_max(1.0))
        else:
            check = flat.sum()
        loss_v, ll_v, kl_v, check_v = torch.stack([loss, log_lik, kl, check.to(loss.dtype)]
                                                  ).tolist()
        ok = math.isfinite(loss_v) and math.isfinite(check_v)
        if ok:
            self._adam.step()
        return StepResult(ll_v - kl_v, kl_v, -ll_v, not ok)

    def _first_compiled_step(self, x: torch.Tensor, kl_weight: float) -> StepResult:
        """Compile the loss and take a step with it; on any failure stay eager for good.

        The RNG state is restored before an eager retry, so a failed compile leaves the run
        exactly as if it had never been tried.
        """
        self._want_compile = False
        rng = rng_states()          # the CPU's and every GPU's: the step draws on x's device
        start = time.perf_counter()
        try:
            with warnings.catch_warnings():   # torch's own deprecation, not the user's
                warnings.filterwarnings("ignore", TORCH_INTERNAL_DEPRECATION,
                                        DeprecationWarning)
                self._compiled = torch.compile(self._fast, dynamic=False)
                result = self._fast_step(x, kl_weight)
        except Exception as exc:  # compiling is an optimization, never a failure
            warnings.warn(f"TrainStep: torch.compile of the step failed "
                          f"({type(exc).__name__}: {exc}); continuing eagerly",
                          RuntimeWarning, stacklevel=3)
            self._compiled = None
            restore_rng_states(rng)
            result = self._fast_step(x, kl_weight)
        self.compile_seconds = time.perf_counter() - start
        return result


def nan_to_none(value: float) -> float | None:
    """JSON-friendly: NaN/inf → None."""
    return value if math.isfinite(value) else None
