"""Where the variational parameters φ come from: one call shape, ``q = infer(x, index)``.

* :class:`Amortized` — an encoder network predicts φ from x (Kingma & Welling 2014).
* :class:`PerDatapoint` — a free table of φ, one row per training example: the lecture's
  "different variational parameters for different data points", classical (non-amortized)
  variational inference (Jordan et al. 1999; Hoffman et al. 2013, "Stochastic Variational
  Inference").
* :class:`SemiAmortized` — the encoder's φ refined by K steps of gradient ascent on the
  example's own ELBO (Kim, Wiseman, Miller, Sontag & Rush 2018, "Semi-Amortized Variational
  Autoencoders"; Krishnan, Liang & Hoffman 2018, "On the challenges of learning with inference
  networks on sparse, high-dimensional data").

Every scheme is an ``nn.Module`` mapping (x [B, D], index [B] or None) to q with batch [B] and
event [L]; ``index`` are the rows' positions in the training set (used by schemes that keep
per-data-point parameters). ``sparse = True`` marks schemes whose parameters are per-datapoint
rows updated through sparse gradients (the trainer optimizes them with ``SparseAdam``).

:func:`optimize_q` is the batched per-example optimizer of φ (all examples at once, each with
its own gradient) shared by ``vaelab.measure.gaps`` and anyone who wants the best q of a family.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.distributions import Distribution

from vaelab import _checks
from vaelab.config import TrainConfig
from vaelab.infer.objectives import GenerativeModel, elbo
from vaelab.model.families import Family
from vaelab.model.vae import Encoder

INFERENCE_NAMES = ("amortized", "per-datapoint", "semi-amortized")


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


class PerDatapoint(Inference):
    """q_n(z) = family(φ_n): a free row of raw parameters per training example.

    The table is an ``nn.Embedding(num_data, family.param_size, sparse=True)`` initialized at
    ``family.initial_params`` (q = N(0, I) for the Gaussian families), so a mini-batch step
    produces a sparse gradient touching only the batch's rows (optimize with SparseAdam).

    Args:
        family: the variational family (``vaelab.model.families``).
        num_data: N, the number of training examples.

    ``forward(x, index)``: x [B, D] (only its batch size is used), index [B] int64 in [0, N).
    """

    sparse = True

    def __init__(self, family: Family, num_data: int) -> None:
        super().__init__()
        if not isinstance(family, Family):
            raise TypeError(f"family: expected a vaelab.model.families.Family, "
                            f"got {type(family).__name__}")
        self.family = family
        self.num_data = _checks.positive_int("num_data", num_data)
        self.table = nn.Embedding(self.num_data, family.param_size, sparse=True)
        with torch.no_grad():
            self.table.weight.copy_(family.initial_params(self.num_data,
                                                          dtype=self.table.weight.dtype))

    def check_index(self, x: torch.Tensor, index: object) -> torch.Tensor:
        """Validate ``index``: an integer tensor [B] (B = len(x)) of rows in [0, num_data)."""
        if index is None:
            raise ValueError("index: PerDatapoint needs the rows' positions in the training set "
                             "(an int64 tensor [B]), got None")
        if not isinstance(index, torch.Tensor) or index.is_floating_point() or index.is_complex():
            raise TypeError(f"index: expected an integer tensor [B], got {type(index).__name__}"
                            + (f" of dtype {index.dtype}" if isinstance(index, torch.Tensor)
                               else ""))
        if index.shape != (x.shape[0],):
            raise ValueError(f"index: expected shape [{x.shape[0]}] (one per row of x), "
                             f"got {list(index.shape)}")
        if index.numel():     # one host sync for both ends (this runs on every step)
            low, high = torch.stack(torch.aminmax(index)).tolist()
            if low < 0 or high >= self.num_data:
                raise ValueError(f"index: expected values in [0, {self.num_data}), got values "
                                 f"in [{low}, {high}]")
        return index.long()

    def forward(self, x: torch.Tensor, index: torch.Tensor | None = None) -> Distribution:
        return self.family(self.table(self.check_index(x, index)))


def _model_ref(model: GenerativeModel) -> tuple[GenerativeModel]:
    """Hold the model without registering it as a submodule (its θ is not this scheme's φ)."""
    if not isinstance(model, nn.Module) or not hasattr(model, "log_joint"):
        raise TypeError(f"model: expected a generative model (vaelab.model.vae.VAE or an exact "
                        f"model), got {type(model).__name__}")
    return (model,)


def refine(model: GenerativeModel, family: Family, raw: torch.Tensor, x: torch.Tensor, *,
           steps: int, lr: float, num_samples: int = 1,
           create_graph: bool = False) -> torch.Tensor:
    """K steps of plain gradient ascent (SGD) on each example's ELBO: raw [B, P] → [B, P].

    λ_{k+1} = λ_k + lr ∇_λ ELBO(x_b; family(λ_k)) for every row at once (the batch ELBO is
    summed, so each row gets its own gradient). With ``create_graph`` the result stays a
    differentiable function of the input raw and of θ (Kim et al. 2018); otherwise the
    refinement starts from ``raw.detach()`` and returns a detached tensor, and θ's ``.grad``
    is never touched.
    """
    lam = raw if create_graph else raw.detach().requires_grad_(True)
    with torch.enable_grad():
        for _ in range(steps):
            value = elbo(model, family(lam), x, num_samples, validate=False).sum()
            (grad,) = torch.autograd.grad(value, lam, create_graph=create_graph)
            lam = lam + lr * grad
            if not create_graph:
                lam = lam.detach().requires_grad_(True)
    return lam if create_graph else lam.detach()


class _AddGradient(torch.autograd.Function):
    """Returns zeros shaped like ``source``; backward sends ``gradient`` into ``source``."""

    @staticmethod
    def forward(ctx, source: torch.Tensor, gradient: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(gradient)
        return torch.zeros_like(source)

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):
        (gradient,) = ctx.saved_tensors
        return gradient, None


class SemiAmortized(Inference):
    """q = family(λ_K): the encoder's raw output λ_0 refined by K SGD steps on the ELBO.

    Kim, Wiseman, Miller, Sontag & Rush (2018). The decoder θ is always trained through the
    refined q (the ELBO at λ_K). The encoder φ:

    * ``backprop=True`` (SA-VAE proper): gradients flow through the K refinement steps
      (``create_graph=True``, second-order terms included), so φ learns an initialization that
      refines well.
    * ``backprop=False`` (the stop-gradient variant, "VAE + SVI" of Krishnan et al. 2018 and
      Kim et al. 2018's baseline): λ_K is detached and the encoder is trained on *its own*
      ELBO, ELBO(x; family(λ_0)). Since the caller only sees q(λ_K), that gradient is injected
      through a zero-valued term whose backward delivers ∂[−mean_b ELBO(x_b; λ_0)]/∂λ_0, i.e.
      it assumes the caller minimizes the batch *mean* of −ELBO (as ``TrainStep`` does; a
      caller's KL weight is not applied to it); the decoder gets no gradient from it.

    The refinement runs under ``torch.no_grad`` too (evaluation), as it needs ∇_λ ELBO.

    Args:
        encoder: :class:`~vaelab.model.vae.Encoder` (net + family) giving λ_0 = net(x).
        model: the generative model whose ELBO is refined (held by reference, not registered
            as a submodule, so its θ is not counted as this scheme's parameters).
        steps: K ≥ 0 refinement steps.
        lr: SGD step size on the raw parameters.
        backprop: see above.
        num_samples: Monte Carlo samples of z per ELBO gradient in the refinement.
    """

    def __init__(self, encoder: Encoder, model: GenerativeModel, steps: int, lr: float,
                 backprop: bool = False, *, num_samples: int = 1) -> None:
        super().__init__()
        if not isinstance(encoder, Encoder):
            raise TypeError(f"encoder: expected a vaelab.model.vae.Encoder, "
                            f"got {type(encoder).__name__}")
        self.encoder = encoder
        self._model = _model_ref(model)
        self.steps = _checks.non_negative_int("steps", steps)
        self.lr = _checks.positive_float("lr", lr)
        if not isinstance(backprop, bool):
            raise TypeError(f"backprop: expected a bool, got {type(backprop).__name__}")
        self.backprop = backprop
        self.num_samples = _checks.positive_int("num_samples", num_samples)

    @property
    def model(self) -> GenerativeModel:
        return self._model[0]

    def forward(self, x: torch.Tensor, index: torch.Tensor | None = None) -> Distribution:
        family = self.encoder.family
        raw0 = self.encoder.net(x)
        if self.backprop and torch.is_grad_enabled() and raw0.requires_grad:
            return family(refine(self.model, family, raw0, x, steps=self.steps, lr=self.lr,
                                 num_samples=self.num_samples, create_graph=True))
        raw = refine(self.model, family, raw0, x, steps=self.steps, lr=self.lr,
                     num_samples=self.num_samples)
        if torch.is_grad_enabled() and raw0.requires_grad:
            own = elbo(self.model, family(raw0), x, self.num_samples, validate=False)
            (grad,) = torch.autograd.grad(-own.mean(), raw0, retain_graph=True)
            raw = raw + _AddGradient.apply(raw0, grad)
        return family(raw)


def optimize_q(model: GenerativeModel, x: torch.Tensor, init_raw: torch.Tensor,
               family: Family, *, steps: int = 1000, lr: float = 1e-2, num_samples: int = 8,
               tol: float = 1e-3, patience: int = 50, lr_decays: int = 2,
               smoothing: float = 0.9) -> tuple[torch.Tensor, list[float]]:
    """Maximize every example's ELBO over its own raw q parameters, all examples at once.

    Adam (Kingma & Ba 2015) on the leaf ``raw`` [B, P] with loss −Σ_b ELBO(x_b; family(raw_b)):
    summing gives each row its own gradient and Adam's element-wise steps keep the rows'
    trajectories independent, so this equals B separate optimizations without a Python loop.
    "Until it stops improving": an exponential running average (``smoothing``) of the batch
    mean ELBO is tracked; once it has not risen by more than ``tol`` nats for ``patience``
    consecutive steps the learning rate is divided by 10 (at most ``lr_decays`` times, which
    shrinks the Monte Carlo jitter around the optimum) and then the loop stops; ``steps``
    caps the total. θ's ``.grad`` is not touched.

    Args:
        model: generative model (``vaelab.model.vae`` protocol).
        x: data [B, D].
        init_raw: starting raw parameters [B, family.param_size] (e.g. the encoder's output).
        family: maps raw [B, P] → q with batch [B], event [L].
        steps, lr, num_samples, tol, patience, lr_decays, smoothing: see above.

    Returns:
        (raw [B, P] detached, history: the batch-mean ELBO at every step taken).
    """
    x = model.check_data(x)
    init_raw = _checks.tensor("init_raw", init_raw)
    if init_raw.shape != (x.shape[0], family.param_size):
        raise ValueError(f"init_raw: expected shape [{x.shape[0]}, {family.param_size}], "
                         f"got {list(init_raw.shape)}")
    steps = _checks.positive_int("steps", steps)
    patience = _checks.positive_int("patience", patience)
    decays_left = _checks.non_negative_int("lr_decays", lr_decays)
    raw = init_raw.detach().clone().requires_grad_(True)
    opt = torch.optim.Adam([raw], lr=_checks.positive_float("lr", lr))
    history: list[float] = []
    best, average, stale = -math.inf, None, 0
    for _ in range(steps):
        opt.zero_grad(set_to_none=True)
        value = elbo(model, family(raw), x, num_samples, validate=False)
        (-value.sum()).backward(inputs=[raw])
        opt.step()
        history.append(value.mean().item())
        average = history[-1] if average is None else (
            smoothing * average + (1 - smoothing) * history[-1])
        best, stale = (average, 0) if average > best + tol else (best, stale + 1)
        if stale >= patience:
            if decays_left == 0:
                break
            decays_left, stale = decays_left - 1, 0
            for group in opt.param_groups:
                group["lr"] /= 10
    return raw.detach(), history


def build_inference(name: str, model: GenerativeModel, num_data: int,
                    **options) -> Inference:
    """Build an inference scheme by name for ``model`` (a VAE with an encoder).

    * ``"amortized"`` — :class:`Amortized` (``model.encoder``); no options.
    * ``"per-datapoint"`` — :class:`PerDatapoint` with ``num_data`` rows; option ``family``
      (default: the encoder's family).
    * ``"semi-amortized"`` — :class:`SemiAmortized`; options ``steps`` (default 10), ``lr``
      (1e-3), ``backprop`` (False), ``num_samples`` (1).
    """
    name = _checks.one_of("name", name, INFERENCE_NAMES)
    allowed = {"amortized": (), "per-datapoint": ("family",),
               "semi-amortized": ("steps", "lr", "backprop", "num_samples")}[name]
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise ValueError(f"options: {name!r} accepts {list(allowed) or 'no options'}, "
                         f"got unknown {unknown}")
    encoder = getattr(model, "encoder", None)
    if name == "per-datapoint":
        family = options.get("family", None if encoder is None else encoder.family)
        if family is None:
            raise ValueError("family: expected a Family (the model has no encoder to take it "
                             "from), got None")
        return PerDatapoint(family, num_data)
    if encoder is None:
        raise ValueError(f"model: {name!r} inference needs a model with an encoder, got none")
    if name == "amortized":
        return Amortized(encoder)
    return SemiAmortized(encoder, model, options.get("steps", 10), options.get("lr", 1e-3),
                         options.get("backprop", False),
                         num_samples=options.get("num_samples", 1))


def scheme_for(train: TrainConfig, model: GenerativeModel, num_data: int = 1, *,
               training: bool = False) -> Inference:
    """The inference scheme of a run, from its ``vaelab.config.TrainConfig`` (``train``): the
    one builder used by training (``vaelab.fit.train``), ``vaelab.load(run)`` and every command.

    Refinement budget (semi-amortized runs), decided once here: q(z | x) outside training is
    refined exactly as in training — ``refine_steps`` SGD steps of ``refine_lr`` on each
    example's ELBO, each step averaging ``num_samples`` draws (the run's K). The decoder was
    trained against that q, so ``evaluate``, ``gaps``, ``encode``, ``score`` and
    ``load(run).encode`` all see the same q. Only ``refine_backprop`` is for training alone
    (outside it no gradient reaches the encoder).

    ``num_data`` is the number of training rows (per-datapoint tables). Raises ValueError for
    a per-datapoint run outside training: it trained no encoder, so q for new x does not exist.
    """
    name = train.inference
    if name == "per-datapoint" and not training:
        raise ValueError("inference: this run used 'per-datapoint', which trains no encoder, "
                         "so q(z | x) for new data is not available")
    options = {}
    if name == "semi-amortized":
        options = {"steps": train.refine_steps, "lr": train.refine_lr,
                   "num_samples": train.num_samples,
                   "backprop": bool(train.refine_backprop) and training}
    return build_inference(name, model, num_data, **options)
