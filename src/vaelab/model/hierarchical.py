"""Hierarchical VAEs: stacked Gaussian latent layers, with bottom-up or ladder inference.

The generative model (the lecture's "stack another VAE"), layers numbered bottom to top:

    p(x, z_1, …, z_n) = p(z_n) p(z_{n−1} | z_{n−1+1}) … p(z_1 | z_2) p(x | z_1),

p(z_i | z_{i+1}) = N(μ_i(z_{i+1}), diag σ_i²(z_{i+1})) from an MLP, p(z_n) any prior of
``vaelab.model.priors`` and p(x | z_1) any likelihood. Two inference structures:

* ``"bottom-up"`` (Burda, Grosse & Salakhutdinov 2016, "Importance Weighted Autoencoders"):
  q(z | x) = q(z_1 | x) q(z_2 | z_1) … q(z_n | z_{n−1}), each a diagonal Normal from an MLP;
* ``"ladder"`` (Sønderby, Raiko, Maaløe, Sønderby & Winther 2016, "Ladder Variational
  Autoencoders"): a deterministic bottom-up pass d_i(x) gives (μ̂_i, σ̂_i) per layer, and q is
  sampled top-down through the generative path: q(z_n | x) = N(μ̂_n, σ̂_n²),
  q(z_i | z_{i+1}, x) = N(μ_q, σ_q²) with the precision-weighted merge
  σ_q⁻² = σ̂_i⁻² + σ_p⁻², μ_q = (μ̂_i σ̂_i⁻² + μ_p σ_p⁻²) σ_q², (μ_p, σ_p) = p(z_i | z_{i+1}).

Both q and the prior are presented to the rest of vaelab as one distribution over the
concatenated latent z = [z_1, …, z_n] (event [Σ L_i]): :class:`LayeredDistribution`, with
``rsample`` (ancestral, layer by layer), ``log_prob`` (the sum of the layers' conditional
log-densities) and the per-layer terms, so ``elbo``, ``iwae_bound``, ``log_likelihood`` and the
training objectives run unchanged (KL(q ‖ p) has no closed form here: it is Monte Carlo). The
rate of layer i is E_q[log q(z_i | ·) − log p(z_i | z_{i+1})] (:func:`layer_rates`); these sum
to the KL. ``mean`` of a layered q is the plug-in path (each layer's conditional mean given
the means of its parents), exact for linear-Gaussian conditionals; it is what ``encode`` and
the active-unit count use.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, cast

import torch
from torch import nn
from torch.distributions import (
    Distribution,
    Independent,
    Normal,
)

from vaelab import _checks, catalogue
from vaelab._runtime import device_of, isolated_rng
from vaelab.model import families as families_
from vaelab.model import likelihoods, nets
from vaelab.model.layered import (  # noqa: F401 - re-exported: their home before the split
    GaussianConditional,
    LayeredDistribution,
    LayerStep,
    LikelihoodDecoder,
    PerExampleLayers,
    _diagonal,
    free_bits_groups,
    layer_rates,
)

HIERARCHIES = ("bottom-up", "ladder", "top-down")

class BottomUpEncoder(nn.Module):
    """q(z | x) = q(z_1 | x) Π_i q(z_{i+1} | z_i) (Burda et al. 2016); x [B, D] → layered q."""

    def __init__(self, first: GaussianConditional, upper: Sequence[GaussianConditional],
                 sizes: Sequence[int]):
        super().__init__()
        self.first, self.upper = first, nn.ModuleList(upper)
        self.sizes = tuple(sizes)
        self.latent_dim = sum(self.sizes)

    def forward(self, x: torch.Tensor) -> LayeredDistribution:
        def step(i: int, layers: dict[int, torch.Tensor]) -> Distribution:
            return self.first(x) if i == 0 else self.upper[i - 1](layers[i - 1])

        return LayeredDistribution(self.sizes, range(len(self.sizes)), step, x.shape[:1])

    def per_example(self, x: torch.Tensor) -> tuple[PerExampleLayers, torch.Tensor]:
        """(family, raw [B, Σ 2 L_i]) with ``family(raw)`` = this encoder's q(z | x).

        The per-example form of the bottom-up structure: q(z_1) = N(μ, diag σ²) with its own
        (μ, raw σ) per example (the encoder's output as the start), and each
        q(z_{i+1} | z_i) = the encoder's conditional network with a free per-example offset
        added to its raw output (location and pre-softplus scale; zero at the start). The
        upper conditionals do not see x, so an offset is what "a different φ per data point"
        means for them. raw is detached.
        """
        sizes = self.sizes
        with torch.no_grad():
            raw = torch.cat([self.first.net(x)]
                            + [x.new_zeros(x.shape[0], 2 * s) for s in sizes[1:]], dim=-1)

        def step(i: int, chunk: torch.Tensor, layers: dict[int, torch.Tensor]) -> Distribution:
            if i == 0:
                return _diagonal(chunk, self.first.min_scale)
            cond = cast(GaussianConditional, self.upper[i - 1])
            return _diagonal(cond.net(layers[i - 1]) + chunk, cond.min_scale)

        return PerExampleLayers(sizes, range(len(sizes)), [2 * s for s in sizes], step), raw


def merge_gaussians(a: Normal, b: Normal) -> Normal:
    """The normalised product of two Normals: precision-weighted mean, summed precisions."""
    pa, pb = a.scale.pow(-2), b.scale.pow(-2)
    precision = pa + pb
    loc = (a.loc * pa + b.loc * pb) / precision
    return Normal(loc, precision.rsqrt(), validate_args=False)


class LadderEncoder(nn.Module):
    """Ladder inference (Sønderby et al. 2016): bottom-up evidence merged into the top-down path.

    ``trunks[i]`` maps the previous deterministic state (x for i = 0) to d_i; ``heads[i]`` maps
    d_i to (μ̂_i, σ̂_i). The generative conditionals p(z_i | z_{i+1}) (``conditionals[i]``) are
    shared with the model by reference, not registered here, so their parameters stay θ and
    are stored once.
    """

    def __init__(self, trunks: Sequence[nn.Module], heads: Sequence[nn.Module],
                 sizes: Sequence[int], conditionals: nn.ModuleList,
                 min_scale: float = 1e-3) -> None:
        super().__init__()
        self.trunks, self.heads = nn.ModuleList(trunks), nn.ModuleList(heads)
        self.sizes = tuple(sizes)
        self.latent_dim = sum(self.sizes)
        self._shared = (conditionals,)        # a tuple: not a registered submodule
        self.min_scale = float(min_scale)

    def evidence_raw(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The bottom-up pass: [raw (μ̂_i, pre-softplus σ̂_i), [B, 2 L_i], for each layer]."""
        out, h = [], x
        for trunk, head in zip(self.trunks, self.heads, strict=True):
            h = trunk(h)
            out.append(head(h))
        return out

    def evidence(self, x: torch.Tensor) -> list[Distribution]:
        """The bottom-up pass: [N(μ̂_i, σ̂_i²) for each layer], batch [B], event [L_i]."""
        return [_diagonal(raw, self.min_scale) for raw in self.evidence_raw(x)]

    def top_posterior(self, x: torch.Tensor) -> Distribution:
        """q(z_n | x) = N(μ̂_n(x), σ̂_n(x)²), batch [B], event [L_n]: the top layer's marginal
        under ladder inference, what a VampPrior on z_n mixes at its pseudo-inputs (the
        hierarchical VampPrior of Tomczak & Welling 2018, §3.2)."""
        return self.evidence(x)[-1]

    def _merged(self, i: int, evidence: Distribution, layers: dict[int, torch.Tensor]
                ) -> Distribution:
        """q(z_i | z_{i+1}, x): the evidence of layer i merged with p(z_i | z_{i+1})."""
        if i == len(self.sizes) - 1:
            return evidence
        # both are Independent(Normal) (``_diagonal``): merge their Normals
        prior = cast(Independent, self._shared[0][i](layers[i + 1])).base_dist
        return Independent(merge_gaussians(cast(Independent, evidence).base_dist, prior), 1,
                           validate_args=False)

    def forward(self, x: torch.Tensor) -> LayeredDistribution:
        evidence = self.evidence(x)

        def step(i: int, layers: dict[int, torch.Tensor]) -> Distribution:
            return self._merged(i, evidence[i], layers)

        top = len(self.sizes) - 1
        return LayeredDistribution(self.sizes, range(top, -1, -1), step, x.shape[:1])

    def per_example(self, x: torch.Tensor) -> tuple[PerExampleLayers, torch.Tensor]:
        """(family, raw [B, Σ 2 L_i]) with ``family(raw)`` = this encoder's q(z | x).

        The per-example form of the ladder structure: x enters q only through each layer's
        evidence (μ̂_i, σ̂_i), so those become free per example (the bottom-up pass's output
        as the start); the top-down merge with the model's p(z_i | z_{i+1}) stays. This family
        contains the exact posterior whenever p(x | z_1) is a diagonal Gaussian factor in z_1
        and the conditionals are linear-Gaussian and diagonal. raw is detached.
        """
        with torch.no_grad():
            raw = torch.cat(self.evidence_raw(x), dim=-1)

        def step(i: int, chunk: torch.Tensor, layers: dict[int, torch.Tensor]) -> Distribution:
            return self._merged(i, _diagonal(chunk, self.min_scale), layers)

        top = len(self.sizes) - 1
        return PerExampleLayers(self.sizes, range(top, -1, -1), [2 * s for s in self.sizes],
                                step), raw


# --------------------------------------------------------------------------- the model


class HierarchicalVAE(nn.Module):
    """p(z_n) Π_i p(z_i | z_{i+1}) p(x | z_1) with an amortized layered q (module docstring).

    The model protocol of ``vaelab.model.vae``: ``prior()`` is the layered p(z) (batch [],
    event [Σ L_i]), ``decode(z)`` reads z_1 = z[..., :L_1], ``log_joint`` and ``check_data`` as
    for a VAE; plus ``encode``, ``reconstruct``, ``sample`` (ancestral from the top) and
    ``generative_parameters``.

    Args:
        sizes: latent sizes L_1, …, L_n, bottom to top (n ≥ 2).
        top_prior: a module returning p(z_n) (``vaelab.model.priors``), event [L_n].
        conditionals: n − 1 modules, ``conditionals[i](z_{i+1})`` = p(z_i | z_{i+1}).
        decoder: :class:`LikelihoodDecoder` (p(x | z_1)).
        encoder: :class:`BottomUpEncoder` or :class:`LadderEncoder` (or None).
    """

    def __init__(self, sizes: Sequence[int], top_prior: nn.Module,
                 conditionals: Sequence[nn.Module] | nn.ModuleList, decoder: nn.Module,
                 encoder: nn.Module | None = None) -> None:
        super().__init__()
        self.sizes = tuple(_checks.positive_int("latent_dim", s) for s in sizes)
        if len(self.sizes) < 2 or len(conditionals) != len(self.sizes) - 1:
            raise ValueError(f"conditionals: expected {len(self.sizes) - 1} (one per layer below "
                             f"the top of {len(self.sizes)} >= 2 layers), got {len(conditionals)}")
        self.top_prior = top_prior
        self.conditionals = conditionals if isinstance(conditionals, nn.ModuleList) else (
            nn.ModuleList(conditionals))
        self.decoder, self.encoder = decoder, encoder
        self.latent_dim, self.data_dim = sum(self.sizes), cast(int, decoder.data_dim)
        self.config = None

    @property
    def num_layers(self) -> int:
        return len(self.sizes)

    def prior(self) -> LayeredDistribution:
        top, cond = self.num_layers - 1, self.conditionals

        def step(i: int, layers: dict[int, torch.Tensor]) -> Distribution:
            return self.top_prior() if i == top else cond[i](layers[i + 1])

        return LayeredDistribution(self.sizes, range(top, -1, -1), step)

    def decode(self, z: torch.Tensor) -> Distribution:
        """p(x | z_1) for z [..., B, Σ L] (or z_1 alone, [..., B, L_1]); batch [..., B]. A
        decoder with ``reads_all_layers`` (``vaelab.model.top_down.SkipDecoder``) gets the
        whole z: p(x | z_1, …, z_n)."""
        if getattr(self.decoder, "reads_all_layers", False):
            return self.decoder(z)
        return self.decoder(z[..., :self.sizes[0]])

    def log_joint(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """log p(x, z) = log p(z_n) + Σ_i log p(z_i | z_{i+1}) + log p(x | z_1); → [..., B]."""
        return self.prior().log_prob(z) + self.decode(z).log_prob(x)

    def check_data(self, x: object, name: str = "x") -> torch.Tensor:
        x = _checks.data_batch(name, x, self.data_dim)
        likelihood = cast(likelihoods.Likelihood, self.decoder.likelihood)
        return likelihood.check_support(x, name)

    def generative_parameters(self) -> list[nn.Parameter]:
        """θ: the top prior's, the conditionals' and the decoder's parameters."""
        return [*self.top_prior.parameters(), *self.conditionals.parameters(),
                *self.decoder.parameters()]

    def encode(self, x: torch.Tensor) -> LayeredDistribution:
        """q(z | x) for x [B, D]: batch [B], event [Σ L] (``mean``: every layer's mean)."""
        if self.encoder is None:
            raise ValueError("encoder: this model has no encoder")
        return self.encoder(self.check_data(x))

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """E[x | z_1 = the plug-in mean of q], [B, D]."""
        return self.decode(self.encode(x).mean).mean

    @torch.no_grad()
    def sample(self, n: int, *, mean: bool = False,
               generator: torch.Generator | None = None) -> torch.Tensor:
        """n draws x ~ p(x), ancestrally from the top: z_n, …, z_1, then x; → [n, D]."""
        n = _checks.positive_int("n", n)
        seed = None if generator is None else int(torch.randint(2**62, (), generator=generator))
        with isolated_rng(seed, enabled=generator is not None):
            px = self.decode(self.prior().sample((n,)))
            return px.mean if mean else px.sample()

    def layer_rates(self, q: LayeredDistribution, num_samples: int = 1) -> torch.Tensor:
        """Per-layer Monte Carlo rate, [B, num_layers] (:func:`layer_rates`)."""
        return layer_rates(q, self.prior(), num_samples)

    def split(self, z: torch.Tensor) -> list[torch.Tensor]:
        """z [..., Σ L] → [z_1, …, z_n]."""
        return list(z.split(self.sizes, dim=-1))


# --------------------------------------------------------------------------- building


#: Floor on every layer's standard deviation (q and the conditionals of p).
MIN_SCALE = 1e-4


def _act(activation: str) -> nn.Module:
    return nets.activation_class(activation)()


def _encoder(hierarchy: str, sizes: tuple[int, ...], config, spec,
             conditionals: nn.ModuleList) -> nn.Module:
    """The inference network of ``hierarchy`` from the network ``spec`` (the config's
    ``vaelab.model.nets`` kind): top-down asks the spec for its nets; bottom-up and ladder are
    built of MLPs (x-level nets use ``hidden``, latent-level nets two layers of hidden[-1])."""
    if hierarchy == "top-down":
        from vaelab.model.top_down import TopDownEncoder

        top, lower = spec.top_down_encoder(config.data_dim, sizes, config.image_shape)
        return TopDownEncoder(top, lower, sizes, MIN_SCALE)
    data_dim, hidden, activation, gated = (config.data_dim, tuple(spec.hidden), spec.activation,
                                           spec.gated)
    width = hidden[-1]
    if hierarchy == "bottom-up":
        first = GaussianConditional(data_dim, hidden, sizes[0], activation, MIN_SCALE, gated)
        upper = [GaussianConditional(a, (width, width), b, activation, MIN_SCALE, gated)
                 for a, b in zip(sizes[:-1], sizes[1:], strict=True)]
        return BottomUpEncoder(first, upper, sizes)
    trunks = [nn.Sequential(nets.MLP(data_dim, hidden[:-1], width, activation),
                            _act(activation))]
    trunks += [nn.Sequential(nets.MLP(width, (width,), width, activation), _act(activation))
               for _ in sizes[1:]]
    heads = [nn.Linear(width, 2 * s) for s in sizes]
    return LadderEncoder(trunks, heads, sizes, conditionals, MIN_SCALE)


def build_hierarchical(config, likelihood: likelihoods.Likelihood) -> HierarchicalVAE:
    """A :class:`HierarchicalVAE` from a ``ModelConfig`` whose ``latent_dim`` is a tuple.

    Sizes come from ``config.latent_dim`` (bottom to top), the inference structure from
    ``config.hierarchy``, the top prior from ``config.prior``; ``likelihood`` is built by the
    caller (``vaelab.model.vae.build_vae``); the networks from ``config.net``, whose spec
    (``vaelab.model.nets``) says which hierarchies it builds (``hierarchies``) and builds the
    top-down encoder's and decoder's nets. With MLP nets the decoder is z_1 (top-down: every
    layer) → reversed(hidden) → x, each bottom-up q(z_{i+1} | z_i) an MLP with two hidden
    layers of width hidden[-1]; each p(z_i | z_{i+1}) is an MLP with two hidden layers of the
    spec's ``latent_width``.

    Raises ValueError naming the field for a family other than "diagonal_normal" (each layer
    is a diagonal Normal), a hierarchy the network does not build, or ``prior="vamp"`` with
    bottom-up inference (the VampPrior mixes q(z_n | u_k), which the ladder and top-down
    structures have in closed form and bottom-up does not).
    """
    sizes = tuple(config.latent_dim)
    hierarchy = _checks.one_of("hierarchy", config.hierarchy, HIERARCHIES)
    if config.family != "diagonal_normal":
        raise ValueError(f"family (--family): a hierarchical model (latent_dim {list(sizes)}) "
                         f"uses a diagonal Normal per layer; expected 'diagonal_normal', "
                         f"got {config.family!r}")
    network, network_options = catalogue.chosen(config, "network")
    spec = network.build(**network_options)
    if hierarchy not in spec.hierarchies:
        built = (f"one of {', '.join(map(repr, spec.hierarchies))}" if spec.hierarchies
                 else "one latent layer (it builds no hierarchy)")
        raise ValueError(f"hierarchy (--hierarchy): with --net {network.name} expected {built}, "
                         f"got {hierarchy!r} (latent_dim {list(sizes)})")
    act, width, gated = spec.activation, spec.latent_width, spec.gated
    conditionals = nn.ModuleList(
        GaussianConditional(above, (width, width), below, act, MIN_SCALE, gated)
        for below, above in zip(sizes[:-1], sizes[1:], strict=True))
    prior, prior_options = catalogue.chosen(config, "prior")
    if prior.resolve().needs_encoder and hierarchy == "bottom-up":
        raise ValueError("prior (--prior): 'vamp' needs q(z_top | x) in closed form, which the "
                         "ladder has (its top layer's evidence) and bottom-up inference does not "
                         "(its top q is a marginal over the layers below); expected "
                         "--hierarchy ladder or top-down with --prior vamp, got --hierarchy "
                         "bottom-up (the default)")
    encoder = _encoder(hierarchy, sizes, config, spec, conditionals)
    top = prior.build(sizes[-1], config.data_dim, getattr(encoder, "top_posterior", None),
                      **prior_options)
    if hierarchy == "top-down":     # p(x | z_1, …, z_n): a skip path from every layer
        from vaelab.model.top_down import SkipDecoder

        decoder: nn.Module = SkipDecoder(
            spec.skip_decoder(sizes, config.data_dim, likelihood.params_per_dim,
                              config.image_shape), likelihood, config.data_dim)
    else:
        out = config.data_dim * likelihood.params_per_dim
        net = nets.mlp(sizes[0], tuple(reversed(spec.hidden)), out, act, gated)
        decoder = LikelihoodDecoder(net, likelihood, config.data_dim)
    model = HierarchicalVAE(sizes, top, conditionals, decoder, encoder)
    model.config = config
    return model


class LinearGaussianBottomUp(families_.Family):
    """Free (per-example) bottom-up q with full-covariance linear-Gaussian conditionals.

    q(z_1) = N(m_1, T_1 T_1ᵀ), q(z_{i+1} | z_i) = N(C_i z_i + c_i, T_{i+1} T_{i+1}ᵀ), T lower
    triangular with softplus + ``min_scale`` on the diagonal. It contains the exact posterior of
    a linear-Gaussian hierarchy (``vaelab.model.exact.TwoLayerLinearGaussian``: given z_1, z_2
    is independent of x, and every conditional of a Gaussian is linear-Gaussian), so
    ``vaelab.infer.schemes.optimize_q`` with it can reach log p(x). raw [..., param_size] →
    :class:`LayeredDistribution`, batch [...], event [Σ L_i].
    """

    name = "linear_gaussian_bottom_up"

    def __init__(self, sizes: Sequence[int], min_scale: float = 1e-5) -> None:
        self.sizes = tuple(_checks.positive_int("sizes", s) for s in sizes)
        super().__init__(sum(self.sizes))
        self.min_scale = float(min_scale)
        parts = []
        for i, size in enumerate(self.sizes):
            parts += [size * self.sizes[i - 1] if i else 0, size, size * (size + 1) // 2]
        self.parts = tuple(parts)            # per layer: C_i, c_i (or m_1), lower triangle

    @property
    def param_size(self) -> int:
        return sum(self.parts)

    def _tril(self, tri: torch.Tensor, size: int) -> torch.Tensor:
        rows, cols = torch.tril_indices(size, size, device=tri.device)
        tril = tri.new_zeros(*tri.shape[:-1], size, size)
        tril[..., rows, cols] = tri
        diag = nn.functional.softplus(tril.diagonal(dim1=-2, dim2=-1)) + self.min_scale
        return tril.tril(-1) + torch.diag_embed(diag)

    def forward(self, raw: torch.Tensor) -> LayeredDistribution:
        chunks = raw.split(self.parts, dim=-1)
        layers = [chunks[3 * i:3 * i + 3] for i in range(len(self.sizes))]

        def step(i: int, z: dict[int, torch.Tensor]) -> Distribution:
            weight, bias, tri = layers[i]
            loc = bias
            if i:
                w = weight.unflatten(-1, (self.sizes[i], self.sizes[i - 1]))
                loc = (w @ z[i - 1].unsqueeze(-1)).squeeze(-1) + bias
            tril = self._tril(tri, self.sizes[i])
            # log q at its own draws from the drawn ε (the layered q asks it): exact where an
            # ill-conditioned T makes the solve from the float32 draw useless
            return families_.DrawnMultivariateNormal(loc, scale_tril=tril, validate_args=False)

        return LayeredDistribution(self.sizes, range(len(self.sizes)), step, raw.shape[:-1])

    def initial_params(self, *batch: int, dtype: torch.dtype | None = None,
                       device: torch.device | str | None = None) -> torch.Tensor:
        """Raw parameters giving q = N(0, I) for every layer (C_i = 0)."""
        chunks = [torch.zeros(*batch, n, dtype=dtype, device=device) for n in self.parts]
        for i, size in enumerate(self.sizes):
            tri = chunks[3 * i + 2]
            rows, cols = torch.tril_indices(size, size)
            tri[..., rows == cols] = families_._softplus_inverse_one(self.min_scale)
        return torch.cat(chunks, -1)

    def config(self) -> dict:
        return {"name": self.name, "sizes": list(self.sizes), "min_scale": self.min_scale}


# --------------------------------------------------------------------------- diagnostics


def active_units_per_layer(sizes: Sequence[int], q_means: torch.Tensor,
                           threshold: float = 1e-2) -> list[int]:
    """Active units of every layer: Var_x(E_q[z_u | x]) > threshold (Burda et al. 2016).

    ``q_means`` [N ≥ 2, Σ L_i] (the plug-in means of q, :attr:`LayeredDistribution.mean`).
    """
    activity = q_means.double().var(0)
    return [int((a > threshold).sum()) for a in activity.split(tuple(sizes))]


def layer_diagnostics(sizes: Sequence[int], rates: torch.Tensor, q_means: torch.Tensor,
                      threshold: float = 1e-2) -> dict:
    """Per-layer report (JSON-ready) from per-example rates [N, n] and q means [N, Σ L].

    ``rate_per_layer``: [{"mean", "se"}] in nats (Monte Carlo; the layers' rates sum to the
    rate); ``active_units_per_layer`` and ``units_per_layer``: lists; ``collapsed_layers``:
    1-based indices (bottom = 1) of layers with no active unit; ``zero_rate_layers``: those
    whose mean rate is below :data:`ZERO_RATE` nats (q(z_i | ·) ≈ p(z_i | z_{i+1}): the layer
    adds no information of its own even when its means vary with x through the layers above).
    """
    rates = rates.double()
    n = rates.shape[0]
    se = rates.std(0) / n**0.5 if n > 1 else torch.full((rates.shape[1],), float("nan"))
    au = active_units_per_layer(sizes, q_means, threshold) if n > 1 else [None] * len(sizes)
    return {"rate_per_layer": [{"mean": float(m), "se": float(s) if s == s else None}
                               for m, s in zip(rates.mean(0), se, strict=True)],
            "active_units_per_layer": au, "units_per_layer": list(sizes),
            "collapsed_layers": [i + 1 for i, a in enumerate(au) if a == 0],
            "zero_rate_layers": zero_rate_layers([float(m) for m in rates.mean(0)])}


#: A layer whose rate is below this many nats (in total, per example) adds no information.
ZERO_RATE = 0.05


def zero_rate_layers(rates: Sequence[float]) -> list[int]:
    """1-based indices of layers whose mean rate is below :data:`ZERO_RATE` nats."""
    return [i + 1 for i, r in enumerate(rates) if r < ZERO_RATE]


def collapse_warning(collapsed: Sequence[int], sizes: Sequence[int],
                     rates: Sequence[float] | None = None, *,
                     training: Any = None) -> str | None:
    """One line naming the latent layers with no active unit and, given the per-layer mean
    rates (nats), the layers with (almost) zero rate; None when there are none.

    The one place that decides posterior collapse, for a single latent layer too (``sizes``
    of length 1): every command that summarises a run (train, evaluate, runs, report) asks it.
    ``training`` (the run's ``TrainConfig`` or eval.json's ``trained_with``; None: unknown)
    decides which remedies the line suggests (:func:`collapse_remedy`).
    """
    if len(sizes) == 1:
        return _one_layer_warning(bool(collapsed), sizes[0], rates, training)
    parts = []
    if collapsed:
        names = ", ".join(f"layer {i} ({sizes[i - 1]} units)" for i in collapsed)
        parts.append(f"latent {names} collapsed: no active unit (Var_x E_q[z_u|x] <= 0.01), "
                     f"so that layer carries no information about x")
    rates = list(rates or [])
    quiet = [i for i in zero_rate_layers(rates) if i not in collapsed]
    top = len(sizes)
    below = [i for i in quiet if i != top]
    if below:
        names = ", ".join(f"layer {i} (rate {rates[i - 1]:.3f} nats)" for i in below)
        parts.append(f"latent {names} adds no information of its own: q(z_i | .) = "
                     f"p(z_i | z_(i+1)), its units vary with x only through the layers above")
    if top in quiet:
        parts.append(f"the top latent layer {top} (rate {rates[top - 1]:.3f} nats) carries no "
                     f"information about x: q(z_{top} | x) = p(z_{top})")
    if not parts:
        return None
    return f"warning: {'; '.join(parts)}; {collapse_remedy(training, layers=len(sizes))}"


def collapse_remedy(training: Any = None, *, layers: int = 1) -> str:
    """What to try against posterior collapse, given how the run was trained: ``training``
    is its ``TrainConfig`` or a mapping with the same keys (eval.json's ``trained_with``);
    None (unknown) suggests every remedy.

    A remedy the run already used is not suggested as if it were missing (a user who trained
    with a KL warm-up was told to try one): it is named with this run's value, to strengthen.
    """
    if training is None:
        return ("try a KL warm-up (--kl-schedule linear), free bits (--free-bits)"
                + (" or fewer layers" if layers > 1 else ""))

    def get(key: str) -> Any:
        return training.get(key) if isinstance(training, Mapping) else getattr(training, key,
                                                                                None)

    def value(key: str) -> str:     # as typed after its flag: 5.0 → 5
        v = get(key)
        return f"{v:g}" if isinstance(v, (int, float)) else str(v)

    tries = []
    beta = get("beta")
    if isinstance(beta, (int, float)) and beta > 1:
        tries.append(f"a smaller KL weight (this run: --beta {value('beta')})")
    schedule = get("kl_schedule") or "constant"
    if schedule == "linear":
        tries.append(f"a longer KL warm-up (this run: --kl-warmup {value('kl_warmup_epochs')} "
                     f"epochs)")
    elif schedule == "cyclical":
        tries.append(f"a slower KL ramp (this run: --kl-schedule cyclical, --kl-cycles "
                     f"{value('kl_cycles')}, --kl-ratio {value('kl_ratio')})")
    else:
        tries.append("a KL warm-up (--kl-schedule linear)")
    bits = get("free_bits")
    if isinstance(bits, (int, float)) and bits > 0:
        tries.append(f"more free bits (this run: --free-bits {value('free_bits')})")
    elif catalogue.canonical(get("objective") or "elbo") == "elbo":  # elbo only
        tries.append("free bits (--free-bits)")
    if layers > 1:
        tries.append("fewer layers")
    return "try " + (", ".join(tries[:-1]) + " or " if len(tries) > 1 else "") + tries[-1]


def collapse_from_metrics(row: dict, sizes: Sequence[int], training: Any = None) -> str | None:
    """:func:`collapse_warning` from one row of a run's metrics.jsonl: the validation rate and
    active units (per layer for a hierarchy; the training rate without validation);
    ``training`` as there."""
    if len(sizes) > 1:
        active, rates = row.get("val_active_units_per_layer"), row.get("val_rate_per_layer")
        if not active and not rates:
            return None
        rates = rates if rates and all(isinstance(r, (int, float)) for r in rates) else None
        return collapse_warning([i + 1 for i, a in enumerate(active or []) if a == 0], sizes,
                                rates, training=training)
    rate = row.get("val_rate") if row.get("val_rate") is not None else row.get("train_rate")
    rates = [rate] if isinstance(rate, (int, float)) and math.isfinite(rate) else None
    return collapse_warning([1] if row.get("val_active_units") == 0 else [], sizes, rates,
                            training=training)


def _one_layer_warning(collapsed: bool, size: int, rates: Sequence[float] | None,
                       training: Any = None) -> str | None:
    """:func:`collapse_warning` for a model with one latent layer of ``size`` units."""
    rate = rates[0] if rates else None
    quiet = rate is not None and bool(zero_rate_layers([rate]))
    if not collapsed and not quiet:
        return None
    what = []
    if collapsed:
        what.append(f"no active unit of {size} (Var_x E_q[z_u|x] <= 0.01)")
    if quiet:
        what.append(f"rate {rate:.3f} nats")
    return (f"warning: posterior collapse: {' and '.join(what)}, so q(z | x) = p(z) and z "
            f"carries no information about x (the decoder ignores it); "
            f"{collapse_remedy(training)}")


def layer_metrics(model: HierarchicalVAE, qs: Iterable[LayeredDistribution], num_samples: int,
                  all_reduce_sum: Callable[[torch.Tensor], torch.Tensor] | None = None) -> dict:
    """Training-curve metrics of a hierarchy over batches of q (e.g. the validation set).

    → ``{"val_rate_per_layer": [n floats, nats], "val_active_units_per_layer": [n ints]}``.
    Rates are Monte Carlo (``num_samples`` draws) means over every example, summed across
    processes by ``all_reduce_sum`` when given; active units use this process's examples.
    """
    sums, means = None, []
    for q in qs:
        rates = layer_rates(q, model.prior(), num_samples)
        part = torch.cat([rates.sum(0), rates.new_tensor([rates.shape[0]])]).double()
        sums = part if sums is None else sums + part
        means.append(q.mean)
    if sums is None:     # no rows here: still join the sum, which the other processes wait in
        sums = torch.zeros(len(model.sizes) + 1, dtype=torch.float64, device=device_of(model))
    if all_reduce_sum is not None:
        sums = all_reduce_sum(sums)
    if not sums[-1] > 0:
        return {}
    rows = torch.cat(means) if means else None
    active = (active_units_per_layer(model.sizes, rows) if rows is not None and rows.shape[0] > 1
              else None)
    return {"val_rate_per_layer": (sums[:-1] / sums[-1]).tolist(),
            "val_active_units_per_layer": active}
