"""Priors p(z): modules that return a ``torch.distributions.Distribution`` when called.

* :class:`StandardNormal` — N(0, I), the lecture's simplest prior.
* :class:`LearnedNormal` — N(μ, diag σ²) with learned μ, σ (the lecture's "the parameters of
  that Gaussian are learned").
* :class:`MixtureOfGaussians` — Σ_k π_k N(μ_k, diag σ_k²), all learned (``--prior mog``).
* :class:`VampPrior` — (1/K) Σ_k q_φ(z | u_k): the encoder's q at K learned pseudo-inputs u_k
  (Tomczak & Welling 2018, "VAE with a VampPrior"); the encoder is injected, never imported.
* :class:`FlowPrior` — a masked autoregressive flow over z starting from N(0, I)
  (Papamakarios, Pavlakou & Murray 2017), the lecture's "autoregressive model for z".

A prior has batch_shape [] and event_shape [latent_dim]; buffers and parameters follow the
module to its device and dtype.
"""

from __future__ import annotations

import math
from typing import cast

import torch
import torch.nn.functional as F
from torch import nn
from torch.distributions import (
    Categorical,
    Distribution,
    Independent,
    MixtureSameFamily,
    Normal,
    Transform,
    TransformedDistribution,
)

from vaelab import _checks, catalogue
from vaelab.model import flows

_SOFTPLUS_INV_ONE = 0.5413248546129181   # softplus(x) = 1


class StandardNormal(nn.Module):
    """p(z) = N(0, I_L)."""

    name = "standard_normal"
    #: A VampPrior is built from the encoder (injected: priors never import families).
    needs_encoder: bool = False
    #: A mixture whose components are the clusters of ``vaelab cluster --method prior``.
    clusters: bool = False
    loc: torch.Tensor       # buffers: they follow the module to its device and dtype
    scale: torch.Tensor

    def __init__(self, latent_dim: int) -> None:
        super().__init__()
        self.latent_dim = _checks.positive_int("latent_dim", latent_dim)
        self.register_buffer("loc", torch.zeros(self.latent_dim), persistent=False)
        self.register_buffer("scale", torch.ones(self.latent_dim), persistent=False)

    @classmethod
    def from_options(cls, latent_dim: int, data_dim: int | None = None,
                     encoder: nn.Module | None = None) -> StandardNormal:
        """This prior from its catalogue options (none here); ``data_dim`` and ``encoder``
        are what a prior may need from the model (only :class:`VampPrior` uses them)."""
        return cls(latent_dim)

    def forward(self) -> Distribution:
        """→ Independent(Normal(0, 1), 1): batch [], event [L]."""
        return Independent(Normal(self.loc, self.scale, validate_args=False), 1,
                           validate_args=False)

    def config(self) -> dict:
        return {"name": self.name, "latent_dim": self.latent_dim}


class LearnedNormal(StandardNormal):
    """p(z) = N(μ, diag σ²) with μ and σ = softplus(ρ) learned, initialized at N(0, I)."""

    name = "learned_normal"

    def __init__(self, latent_dim: int) -> None:
        super().__init__(latent_dim)
        self.learned_loc = nn.Parameter(torch.zeros(self.latent_dim))
        self.raw_scale = nn.Parameter(torch.full((self.latent_dim,), _SOFTPLUS_INV_ONE))

    def forward(self) -> Distribution:
        scale = F.softplus(self.raw_scale)
        return Independent(Normal(self.learned_loc, scale, validate_args=False), 1,
                           validate_args=False)


class MixtureOfGaussians(StandardNormal):
    """p(z) = Σ_k π_k N(z; μ_k, diag σ_k²), π = softmax(logits), σ = softplus(ρ), all learned.

    Initialized with equal weights, σ_k = 1 and μ_k ~ N(0, I) (torch's global RNG), so the
    components start apart. With K = 1 it equals :class:`LearnedNormal` with the same μ, ρ.
    The KL to it has no closed form: the objectives use the Monte Carlo KL.
    """

    name = "mog"
    clusters = True

    @classmethod
    def from_options(cls, latent_dim: int, data_dim: int | None = None,
                     encoder: nn.Module | None = None, *,
                     components: int = 10) -> MixtureOfGaussians:
        """K = ``components`` (``--prior-components``)."""
        return cls(latent_dim, components)

    def __init__(self, latent_dim: int, components: int = 10) -> None:
        super().__init__(latent_dim)
        self.components = _checks.positive_int("components", components)
        self.logits = nn.Parameter(torch.zeros(self.components))
        self.component_loc = nn.Parameter(torch.randn(self.components, self.latent_dim))
        self.raw_scale = nn.Parameter(
            torch.full((self.components, self.latent_dim), _SOFTPLUS_INV_ONE))

    def forward(self) -> MixtureSameFamily:
        """→ MixtureSameFamily: batch [], event [L]; component batch [K]."""
        comp = Independent(Normal(self.component_loc, F.softplus(self.raw_scale),
                                  validate_args=False), 1, validate_args=False)
        return MixtureSameFamily(Categorical(logits=self.logits, validate_args=False), comp,
                                 validate_args=False)

    def config(self) -> dict:
        return {**super().config(), "components": self.components}


def _is_diagonal_normal(d: Distribution) -> bool:
    return (type(d) is Independent and d.reinterpreted_batch_ndims == 1
            and type(d.base_dist) is Normal)


class DiagonalMixture(MixtureSameFamily):
    """A MixtureSameFamily whose log-density, when its components are diagonal Normals
    (batch [K], event [L]) on a device with float64, is formed by matrix products.

    torch's MixtureSameFamily.log_prob broadcasts z [N, L] against the K components into
    [N, K, L] tensors, a dozen elementwise passes forward and back: with the VampPrior's
    K = 500 pseudo-inputs and a batch of 128 they took more time than the step's matrix
    products. Expanding the square instead,

        Σ_l (z_l − μ_kl)² / σ_kl² = (z²) · a_k − 2 z · (μ a)_k + μ_k² · a_k,  a = σ⁻²,

    makes it two [N, L] × [L, K] products and [N, K] elementwise work. The terms of the
    expansion are each far larger than their sum when σ is small, so they are formed in
    float64 (products of this size cost little) and the result is cast back: the density
    equals torch's to float32 rounding, not bit for bit. Other components, and devices
    without float64 (mps), use torch's broadcast.
    """

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        comp = self.component_distribution
        if (not _is_diagonal_normal(comp) or len(comp.batch_shape) != 1
                or value.device.type == "mps"):
            return super().log_prob(value)
        base = cast(Normal, cast(Independent, comp).base_dist)
        dims = value.shape[-1]
        z = value.reshape(-1, dims).double()
        loc, scale = base.loc.double(), base.scale.double()
        precision = scale.pow(-2)                                      # [K, L]
        square = (z * z) @ precision.t() - 2 * z @ (loc * precision).t() + (
            loc * loc * precision).sum(-1)                             # [N, K]
        log_norm = scale.log().sum(-1) + 0.5 * dims * math.log(2 * math.pi)
        log_weights = self.mixture_distribution.logits.double()        # normalised
        terms = log_weights - log_norm - 0.5 * square                  # [N, K]
        # logsumexp, with the terms more than 700 below the largest clamped there: their
        # exponentials (< 1e-304 beside 1) add nothing in float64, and exp's underflow is a
        # slow path (6x, forward and backward) that far codes hit for most components.
        top = terms.detach().amax(-1, keepdim=True)
        top = top.where(top.isfinite(), torch.zeros_like(top))          # as torch.logsumexp
        out = (terms - top).clamp_min(-700.0).exp().sum(-1).log() + top.squeeze(-1)
        return out.to(value.dtype).reshape(value.shape[:-1])


class VampPrior(StandardNormal):
    """p(z) = (1/K) Σ_k q_φ(z | u_k), the encoder's q at K learned pseudo-inputs u [K, D].

    Tomczak & Welling (2018). The encoder (x [K, D] → q with batch [K], event [L]; any family)
    is injected with :meth:`set_encoder` and held by reference, not as a submodule, so its
    weights are saved once, under the VAE's encoder. The prior's own parameters are the
    pseudo-inputs, unconstrained (no squashing whose flat region would stop their gradient),
    initialized uniform on [0, 1) (torch's global RNG) or, with ``init="data"``, replaced by
    K distinct training rows in :meth:`initialise_from_data` (the VampPrior code's
    ``use_training_data_init``, without its added noise); the encoder's φ gets
    gradients from log p(z) too and is trained by whichever optimizer trains the encoder (with
    per-datapoint inference none does, so there the component map stays the initial encoder
    and only the pseudo-inputs are learned). Every prior evaluation runs the encoder on K
    pseudo-inputs: the paper's cost.

    Args:
        latent_dim: L. components: K (``--prior-components``). data_dim: D.
        encoder: optional; otherwise call :meth:`set_encoder` before use.
        init: "uniform" or "data" (``--prior-init``): where training starts the pseudo-inputs.
    """

    name = "vamp"
    needs_encoder = True

    @classmethod
    def from_options(cls, latent_dim: int, data_dim: int | None = None,
                     encoder: nn.Module | None = None, *, components: int = 10,
                     init: str = "uniform") -> VampPrior:
        """K = ``components`` pseudo-inputs (``--prior-components``) of ``data_dim`` values,
        mapped by ``encoder``; both are required. ``init`` (``--prior-init``)."""
        if data_dim is None or encoder is None:
            raise ValueError("prior: 'vamp' needs data_dim and the encoder, got "
                             f"data_dim={data_dim} and encoder={type(encoder).__name__}")
        return cls(latent_dim, components, data_dim, encoder, init)

    def __init__(self, latent_dim: int, components: int = 10, data_dim: int = 1,
                 encoder: nn.Module | None = None, init: str = "uniform") -> None:
        super().__init__(latent_dim)
        self.components = _checks.positive_int("components", components)
        self.data_dim = _checks.positive_int("data_dim", data_dim)
        self.init = _checks.one_of("prior_init (--prior-init)", init, ("uniform", "data"))
        self.pseudo_inputs = nn.Parameter(torch.rand(self.components, self.data_dim))
        self._encoder: tuple[nn.Module, ...] = ()
        if encoder is not None:
            self.set_encoder(encoder)

    @torch.no_grad()
    def initialise_from_data(self, x: torch.Tensor) -> torch.Tensor | None:
        """With ``init="data"``: the pseudo-inputs become K distinct rows of the training data
        x [N, D], the first K of ``torch.randperm(N)`` (torch's global RNG: the run's seed
        decides them) → those row indices [K]. With "uniform": nothing (None).

        Raises ValueError for fewer than K rows, another width than D, or missing values.
        """
        if self.init != "data":
            return None
        if x.dim() != 2 or x.shape[1] != self.data_dim or len(x) < self.components:
            raise ValueError(f"prior_init (--prior-init): 'data' copies {self.components} "
                             f"distinct training rows of {self.data_dim} values; expected at "
                             f"least that many rows, got data of shape {list(x.shape)}")
        rows = torch.randperm(len(x))[:self.components]
        chosen = x[rows.to(x.device)]
        if not bool(torch.isfinite(chosen).all()):
            raise ValueError("prior_init (--prior-init): 'data' copies training rows, and "
                             "these have missing or non-finite values; expected "
                             "--prior-init uniform")
        self.pseudo_inputs.copy_(chosen.to(self.pseudo_inputs))
        return rows

    def set_encoder(self, encoder: nn.Module) -> None:
        """Inject the encoder x [K, D] → q(z | x), batch [K], event [L]."""
        if not callable(encoder):
            raise TypeError(f"encoder: expected a module mapping x [K, D] to q(z | x), "
                            f"got {type(encoder).__name__}")
        self._encoder = (encoder,)

    def forward(self) -> MixtureSameFamily:
        """→ MixtureSameFamily(uniform Categorical over K, encoder(u)): batch [], event [L]."""
        if not self._encoder:
            raise ValueError("encoder: the VampPrior needs the encoder (set_encoder), got none")
        q = self._encoder[0](self.pseudo_inputs)
        if tuple(q.batch_shape) != (self.components,) or tuple(q.event_shape) != (
                self.latent_dim,):
            raise ValueError(f"encoder: expected q with batch [{self.components}] and event "
                             f"[{self.latent_dim}], got batch {list(q.batch_shape)} and event "
                             f"{list(q.event_shape)}")
        uniform = Categorical(logits=self.pseudo_inputs.new_zeros(self.components),
                              validate_args=False)
        return DiagonalMixture(uniform, q, validate_args=False)

    def config(self) -> dict:
        return {**super().config(), "components": self.components, "data_dim": self.data_dim,
                **({"init": self.init} if self.init != "uniform" else {})}


class FlowPrior(StandardNormal):
    """p(z): u ~ N(0, I), z = T_T ∘ … ∘ T_1(u), each T_t a MAF step (Papamakarios et al. 2017).

    T_t: z_i = μ_i(z_{<i}) + exp(α_i(z_{<i})) u_i with a MADE (Germain et al. 2015) reading the
    output, the order reversed at every step; log p(z) = log N(u) − Σ_t Σ_i α_{t,i}, one MADE
    pass per step; sampling takes L passes per step. Starts as N(0, I) exactly (zero output
    layers). Args: latent_dim L; steps T (``--prior-flow-steps``); hidden MADE sizes (default
    two layers of max(4L, 32)).
    """

    name = "flow"

    @classmethod
    def from_options(cls, latent_dim: int, data_dim: int | None = None,
                     encoder: nn.Module | None = None, *, flow_steps: int = 2) -> FlowPrior:
        """T = ``flow_steps`` MAF steps (``--prior-flow-steps``)."""
        return cls(latent_dim, flow_steps)

    def __init__(self, latent_dim: int, steps: int = 2,
                 hidden: tuple[int, ...] | list[int] | None = None) -> None:
        super().__init__(latent_dim)
        self.steps = _checks.positive_int("steps", steps)
        width = max(4 * self.latent_dim, 32)
        self.hidden = tuple((width, width) if hidden is None else hidden)
        self.mades = flows.made_stack(self.latent_dim, self.steps, self.hidden)

    def forward(self) -> TransformedDistribution:
        """→ TransformedDistribution(N(0, I), MAF steps): batch [], event [L]."""
        steps: list[Transform] = [flows.AffineAutoregressive(cast(flows.MADE, made), None,
                                                             "output") for made in self.mades]
        return TransformedDistribution(super().forward(), steps, validate_args=False)

    def config(self) -> dict:
        return {**super().config(), "steps": self.steps, "hidden": list(self.hidden)}


#: saved name → class: every prior defined above (the catalogue test pins it to its entries).
PRIORS: dict[str, type[StandardNormal]] = {
    c.name: c for c in list(globals().values())
    if isinstance(c, type) and issubclass(c, StandardNormal)}


def from_config(config: dict, encoder: nn.Module | None = None) -> StandardNormal:
    """Rebuild a prior from its ``config()`` (``encoder``: injected into a VampPrior)."""
    config = dict(config)
    name = _checks.one_of("prior", config.pop("name", None), tuple(PRIORS))
    if PRIORS[name].needs_encoder:
        config["encoder"] = encoder
    return PRIORS[name](**config)


def build(name: str, latent_dim: int, data_dim: int | None = None,
          encoder: nn.Module | None = None, **options: object) -> StandardNormal:
    """The prior called ``name`` (either spelling) with its catalogue options, e.g.
    ``build("vamp", 20, 784, encoder, components=50)``; an option it lacks is an error."""
    return catalogue.get("prior", name).build(latent_dim, data_dim, encoder, **options)
