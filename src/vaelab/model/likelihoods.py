"""Observation models p_θ(x | z) on ``torch.distributions``.

A likelihood turns the decoder network's raw output into a distribution over x with
batch_shape [..., B] and event_shape [D]:

* :class:`Bernoulli` — logits; for binary data or grey levels in [0, 1] (Kingma & Welling 2014).
* :class:`Gaussian` — N(μ_θ(z), diag σ²) where σ comes from the network (the lecture's
  σ_θ(z)), is a learned per-dimension parameter, or is fixed; with ``dequantize=True`` a
  density on uniformly dequantized 8-bit data (Theis, van den Oord & Bethge 2016).
* :class:`ContinuousBernoulli` — the normalised [0, 1] density (Loaiza-Ganem & Cunningham 2019).
* ``DiscretizedLogistic`` / ``DiscretizedLogisticMixture`` — probabilities of 8-bit values
  (Salimans, Karpathy, Chen & Kingma 2017, PixelCNN++), in ``vaelab.model.discretized_logistic``
  (not re-exported here: that module builds on this one).

**What log_prob means (one rule).** Each likelihood declares, in :attr:`Likelihood.meaning`,
for which data kinds (``vaelab.data.DATA_KINDS``: binary, 8-bit, unit-interval, continuous)
its ``log_prob`` is a normalised log-*probability* of the data as given ("probability"), a
lower bound on one ("bound"), or a normalised log-*density* of continuous data ("density").
On any other kind it is an unnormalised *score* (:meth:`Likelihood.meaning_on` says "score"),
and ``vaelab.measure.evaluate`` then reports neither log p(x) nor bits/dim. Bits/dim are
reported only for "probability" and "bound". 8-bit data are x = k/255, k ∈ {0, …, 255}.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping

import torch
import torch.nn.functional as F
from torch import nn
from torch.distributions import Bernoulli as TorchBernoulli
from torch.distributions import Distribution, Independent, constraints
from torch.distributions import Normal as TorchNormal

from vaelab import _checks, catalogue

MEANINGS = ("probability", "bound", "density", "score")
#: How 8-bit data are represented: x = k / EIGHT_BIT_MAX for k = 0, …, 255.
EIGHT_BIT_MAX = 255


class _Registry(Mapping[str, "type[Likelihood]"]):
    """Saved name → class: each concrete Likelihood registers itself when defined, and the
    first read imports every module the catalogue names (likelihoods in other modules)."""

    def __init__(self) -> None:
        self.classes: dict[str, type[Likelihood]] = {}

    def _all(self) -> dict[str, type[Likelihood]]:
        for entry in catalogue.entries("likelihood"):     # imported once, then a lookup
            entry.resolve()
        return self.classes

    def __getitem__(self, name: str) -> type[Likelihood]:
        return self._all()[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._all())

    def __len__(self) -> int:
        return len(self._all())


#: saved name → class: every Likelihood (a new likelihood is its class and its catalogue entry).
LIKELIHOODS = _Registry()


class Likelihood(nn.Module):
    """Base: ``params_per_dim`` raw numbers per data dimension → a Distribution over x.

    Raw parameters are laid out parameter-major: raw [..., P·D] is read as [..., P, D].
    """

    name: str = "likelihood"
    params_per_dim: int = 1
    #: data kind → "probability" | "bound" | "density"; every other kind is a "score".
    meaning: dict[str, str] = {}
    #: The values it accepts: "unit-interval" ([0, 1]), "8-bit" (k/255), "real", "positive",
    #: "counts" or "categories" (integers as given).
    support: str = "real"

    @classmethod
    def from_options(cls, data_dim: int | None = None, data_kind: str | None = None
                     ) -> Likelihood:
        """This likelihood from its catalogue options (none here), for data of ``data_dim``
        values per example and kind ``data_kind`` (what a likelihood may need of the data)."""
        return cls()

    def __init_subclass__(cls, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        if "name" in cls.__dict__:          # a concrete likelihood (shared bases name none)
            LIKELIHOODS.classes[cls.name] = cls

    def meaning_on(self, kind: str | None) -> str:
        """What ``log_prob`` is on data of ``kind``: one of :data:`MEANINGS`."""
        return self.meaning.get(kind or "", "score")

    def remedy(self) -> str:
        """One line telling a CLI user what to use when this likelihood gives only a score."""
        return ("for binary data use --likelihood bernoulli (with --binarize dynamic on grey "
                "levels); for 8-bit data --likelihood discretized-logistic, "
                "discretized-logistic-mixture or gaussian (dequantized); for data in [0, 1] "
                "--likelihood continuous-bernoulli; for other real data --likelihood gaussian")

    def forward(self, raw: torch.Tensor) -> Distribution:  # pragma: no cover - abstract
        raise NotImplementedError

    def check_support(self, x: torch.Tensor, name: str = "x") -> torch.Tensor:
        """Raise ValueError if ``x`` holds values outside this likelihood's support."""
        return x

    def config(self) -> dict:
        """JSON-serializable constructor arguments (for saved models)."""
        return {"name": self.name}


class Bernoulli(Likelihood):
    """p(x | z) = ∏_d Bernoulli(x_d; sigmoid(logits_d)); x_d ∈ [0, 1].

    For grey levels in (0, 1) ``log_prob`` is the negative binary cross-entropy, the usual
    *unnormalized* objective on non-binarized images (each pixel's "density" integrates to at
    most 1/2 over [0, 1]): a score, not log p(x). Normalised on binary data only.
    """

    name = "bernoulli"
    meaning = {"binary": "probability"}
    support = "unit-interval"

    def forward(self, raw: torch.Tensor) -> Distribution:
        """raw: logits [..., D] → Independent Bernoulli, event_shape [D]."""
        return Independent(TorchBernoulli(logits=raw, validate_args=False), 1, validate_args=False)

    def check_support(self, x: torch.Tensor, name: str = "x") -> torch.Tensor:
        return check_unit_interval(x, name, "Bernoulli")


SCALE_MODES = ("network", "learned", "fixed")
TRANSFORMS = ("softplus", "exp")


class Gaussian(Likelihood):
    """p(x | z) = N(x; μ_θ(z), diag σ²).

    Args:
        data_dim: D; required when ``scale="learned"``.
        scale: ``"network"`` — the decoder outputs [μ, raw σ] (2·D numbers), the lecture's
            μ_θ(z), σ_θ(z); ``"learned"`` — one learned σ_d per dimension; ``"fixed"`` —
            σ = ``fixed_scale``.
        transform: ``"softplus"`` or ``"exp"`` maps raw numbers to σ > 0.
        min_scale: floor added to σ so log_prob stays finite when σ would collapse.
    """

    name = "gaussian"

    @classmethod
    def from_options(cls, data_dim: int | None = None, data_kind: str | None = None, *,
                     scale: str = "network", min_scale: float = 1e-3) -> Gaussian:
        """σ from ``scale`` with floor ``min_scale``; dequantized on 8-bit data."""
        return cls(data_dim, scale, min_scale=min_scale, dequantize=data_kind == "8-bit")

    def __init__(
        self,
        data_dim: int | None = None,
        scale: str = "network",
        transform: str = "softplus",
        min_scale: float = 1e-3,
        fixed_scale: float = 1.0,
        dequantize: bool = False,
    ) -> None:
        super().__init__()
        if not isinstance(dequantize, bool):
            raise TypeError(f"dequantize: expected True or False, got {dequantize!r}")
        self.dequantize = dequantize
        self.meaning = ({"8-bit": "bound", "binary": "bound"} if dequantize
                        else {"continuous": "density", "unit-interval": "density"})
        self.scale_mode = _checks.one_of("scale", scale, SCALE_MODES)
        self.transform = _checks.one_of("transform", transform, TRANSFORMS)
        self.min_scale = float(min_scale) if min_scale == 0 else _checks.positive_float(
            "min_scale", min_scale)
        self.fixed_scale = _checks.positive_float("fixed_scale", fixed_scale)
        self.data_dim = None if data_dim is None else _checks.positive_int("data_dim", data_dim)
        self.params_per_dim = 2 if self.scale_mode == "network" else 1
        if self.scale_mode == "learned":
            if self.data_dim is None:
                raise ValueError(
                    "data_dim: expected an integer >= 1 when scale='learned', got None")
            self.raw_scale = nn.Parameter(torch.full((self.data_dim,), self._inverse(1.0)))

    def _inverse(self, s: float) -> float:
        s = s - self.min_scale
        return math.log(s) if self.transform == "exp" else math.log(math.expm1(s))

    def positive(self, raw: torch.Tensor) -> torch.Tensor:
        """Map raw numbers to σ = transform(raw) + min_scale > 0."""
        pos = torch.exp(raw) if self.transform == "exp" else F.softplus(raw)
        return pos + self.min_scale

    def forward(self, raw: torch.Tensor) -> Distribution:
        """raw: [..., D] (or [..., 2D] for scale='network') → Independent Normal, event [D]."""
        if self.scale_mode == "network":
            loc, raw_scale = raw.chunk(2, dim=-1)
            scale = self.positive(raw_scale)
        elif self.scale_mode == "learned":
            loc, scale = raw, self.positive(self.raw_scale).expand_as(raw)
        else:
            loc, scale = raw, torch.full_like(raw, self.fixed_scale)
        if self.dequantize:
            return DequantizedNormal(loc, scale)
        return Independent(TorchNormal(loc, scale, validate_args=False), 1, validate_args=False)

    def check_support(self, x: torch.Tensor, name: str = "x") -> torch.Tensor:
        return check_eight_bit(x, name, self.name) if self.dequantize else x

    def config(self) -> dict:
        return {
            "name": self.name, "data_dim": self.data_dim, "scale": self.scale_mode,
            "transform": self.transform, "min_scale": self.min_scale,
            "fixed_scale": self.fixed_scale, "dequantize": self.dequantize,
        }


def check_unit_interval(x: torch.Tensor, name: str, likelihood: str) -> torch.Tensor:
    """Raise ValueError unless every x lies in [0, 1]."""
    low, high = x.min().item(), x.max().item()
    if low < 0.0 or high > 1.0:
        raise ValueError(f"{name}: the {likelihood} likelihood expects values in [0, 1], "
                         f"got values in [{low:g}, {high:g}]")
    return x


def check_eight_bit(x: torch.Tensor, name: str, likelihood: str) -> torch.Tensor:
    """Raise ValueError unless every x is k/255 for an integer k in [0, 255] (8-bit data)."""
    if x.numel() == 0:
        return x
    k = x.detach() * EIGHT_BIT_MAX
    off = (k - k.round()).abs().max().item()
    low, high = x.min().item(), x.max().item()
    if low < 0 or high > 1 or off > 1e-3:
        raise ValueError(
            f"{name}: the {likelihood} likelihood expects 8-bit data (k/255 for integers k in "
            f"0..255, as vaelab loads uint8 data), got values in [{low:g}, {high:g}]"
            + (f" of which some are not multiples of 1/255 (off by up to {off / 255:.3g})"
               if off > 1e-3 else ""))
    return x


class DequantizedNormal(Distribution):
    """N(loc, diag scale²) over y = (k + u) / 256, u ~ U[0, 1)^D, for 8-bit data x = k/255.

    ``log_prob(x)`` draws u afresh (torch's global generator, one u per element of the
    broadcast of x with loc: every importance sample gets its own) and returns

        log p_Y((k + u)/256) − D·log 256,

    the change of scale from y back to the integer lattice being exactly D·log 256 nats
    (a = 256: y ∈ [0, 1)). Its expectation over u is a lower bound on the log-probability
    log P(k) = log ∫_{[0,1)^D} p_Y((k + u)/256) du / 256^D (Jensen; Theis et al. 2016), and
    the importance-sampling average of exp(log_prob) is unbiased for P(k) itself. P is
    sub-normalised (the Gaussian's mass outside [0, 1)^D is lost), so it stays a bound on a
    normalised model. Batch [..., B], event [D].
    """

    arg_constraints: dict = {}
    has_rsample = False

    def __init__(self, loc: torch.Tensor, scale: torch.Tensor) -> None:
        self.base = Independent(TorchNormal(loc, scale, validate_args=False), 1,
                                validate_args=False)
        super().__init__(loc.shape[:-1], loc.shape[-1:], validate_args=False)

    @property
    def mean(self) -> torch.Tensor:
        """E[x] of :meth:`sample`'s x = clamp(floor(256 y), 0, 255)/255, exactly:
        Σ_{j=1}^{255} P(y ≥ j/256) / 255, [..., D]."""
        normal = self.base.base_dist
        return _mean_of_levels(normal.loc, normal.scale, _ndtr_, 256)

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        """value x = k/255 [..., D] → log p_Y((k + u)/256) − D log 256, shape [..., B]."""
        loc = self.base.base_dist.loc
        k = torch.round(value * EIGHT_BIT_MAX)
        shape = torch.broadcast_shapes(k.shape, loc.shape)
        u = torch.rand(shape, dtype=loc.dtype, device=loc.device)
        y = (k + u) / 256
        return self.base.log_prob(y) - loc.shape[-1] * math.log(256)

    def log_prob_per_dim(self, value: torch.Tensor) -> torch.Tensor:
        """The terms of :meth:`log_prob` per dimension, [..., B, D] (the same u draws for the
        same RNG state); masked bounds sum them over observed entries (vaelab.infer.masked)."""
        loc = self.base.base_dist.loc
        k = torch.round(value * EIGHT_BIT_MAX)
        shape = torch.broadcast_shapes(k.shape, loc.shape)
        u = torch.rand(shape, dtype=loc.dtype, device=loc.device)
        return self.base.base_dist.log_prob((k + u) / 256) - math.log(256)

    def sample(self, sample_shape: torch.Size | list[int] | tuple[int, ...] = ()) -> torch.Tensor:
        """y ~ N, then k = clamp(floor(256 y), 0, 255); → x = k/255 [*sample_shape, ..., D]."""
        y = self.base.sample(sample_shape)
        return (256 * y).floor().clamp(0, EIGHT_BIT_MAX) / EIGHT_BIT_MAX


def _mean_of_levels(loc: torch.Tensor, scale: torch.Tensor, cdf_, per_unit: int,
                    offset: float = 0.0, weights: torch.Tensor | None = None) -> torch.Tensor:
    """E[k]/255 for k ∈ {0, …, 255} with P(k ≥ j) = F((loc − (j − offset)/per_unit)/scale),
    j = 1..255 (E[k] = Σ_j P(k ≥ j)); ``cdf_`` applies F in place. ``weights``: mixture
    weights over the last dimension of loc and scale (summed out). One level at a time into
    one buffer: memory stays that of loc, three passes over it per level (out-of-place, and
    differentiable, when autograd records).
    """
    z, step = loc / scale, scale.reciprocal()
    grad = torch.is_grad_enabled() and (z.requires_grad or step.requires_grad or (
        weights is not None and weights.requires_grad))
    buffer = None if grad else torch.empty_like(torch.broadcast_tensors(z, step)[0])
    total = None
    for j in range(1, EIGHT_BIT_MAX + 1):
        edge = -(j - offset) / per_unit
        level = (torch.add(z, step, alpha=edge).clone() if grad
                 else torch.add(z, step, alpha=edge, out=buffer))
        level = cdf_(level)
        term = level if weights is None else (level * weights).sum(-1)
        total = term.clone() if total is None else (total + term if grad else total.add_(term))
    assert total is not None          # the loop ran over all 255 levels
    return total / EIGHT_BIT_MAX


def _ndtr_(x: torch.Tensor) -> torch.Tensor:
    """The standard normal CDF, in place."""
    return torch.special.ndtr(x, out=x)


#: Below this |η| the continuous Bernoulli's log-normaliser and mean use their Taylor series
#: (the closed forms divide 0 by 0 at η = 0 and lose digits just beside it); the series' first
#: omitted term is below 1e-17 there.
_CB_SERIES_BELOW = 0.1


def continuous_bernoulli_log_normalizer(logits: torch.Tensor) -> torch.Tensor:
    """A(η) = log ∫_0^1 e^{ηx} dx = log((e^η − 1)/η), elementwise, stable for every finite η.

    Written as A(η) = max(η, 0) + log((1 − e^{−|η|})/|η|) (expm1: no overflow, no clamping
    of σ(η)), and as η/2 + η²/24 − η⁴/2880 + η⁶/181440 − η⁸/9676800 for |η| < 0.1.
    Its derivative is the mean, A'(η) = E[x] (autograd sees both branches without NaN).
    """
    small = logits.abs() < _CB_SERIES_BELOW
    big = torch.where(small, torch.ones_like(logits), logits)        # keeps 0/0 out of autograd
    a = big.abs()
    direct = big.clamp(min=0) + torch.log(-torch.expm1(-a) / a)
    t = torch.where(small, logits, torch.zeros_like(logits))
    t2 = t * t
    series = t / 2 + t2 * (1 / 24 + t2 * (-1 / 2880 + t2 * (1 / 181440 - t2 / 9676800)))
    return torch.where(small, series, direct)


def continuous_bernoulli_mean(logits: torch.Tensor) -> torch.Tensor:
    """E[x] = A'(η) = 1/(1 − e^{−η}) − 1/η elementwise, stable for every finite η (1/2 at 0).

    With a = |η|, g(a) = 1/a − 1/(e^a − 1) is the mean at −a and 1 − g(a) the mean at +a;
    g(a) = 1/2 − a/12 + a³/720 − a⁵/30240 + a⁷/1209600 for a < 0.1.
    """
    a = logits.abs()
    small = a < _CB_SERIES_BELOW
    safe = torch.where(small, torch.ones_like(a), a)
    direct = 1 / safe - 1 / torch.expm1(safe)
    s = torch.where(small, a, torch.zeros_like(a))
    s2 = s * s
    series = 0.5 - s * (1 / 12 - s2 * (1 / 720 - s2 * (1 / 30240 - s2 / 1209600)))
    g = torch.where(small, series, direct)
    return torch.where(logits < 0, g, 1 - g)


class ContinuousBernoulliDistribution(Distribution):
    """p(x | η) = e^{ηx − A(η)} on [0, 1], elementwise (batch = logits' shape, event ()).

    Loaiza-Ganem & Cunningham (2019)'s C(λ) λ^x (1 − λ)^{1−x} with λ = σ(η), written in the
    natural parameter so that it stays a density for every finite η in float32 and float64
    (``torch.distributions.ContinuousBernoulli`` clamps λ for its normaliser and mean but not
    for the ηx term, so beyond |η| ≈ 16 in float32 it no longer integrates to one).
    """

    arg_constraints: dict = {}
    support = constraints.unit_interval
    has_rsample = True

    def __init__(self, logits: torch.Tensor) -> None:
        self.logits = logits
        super().__init__(logits.shape, validate_args=False)

    @property
    def mean(self) -> torch.Tensor:
        return continuous_bernoulli_mean(self.logits)

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        """η x − A(η), broadcast of value with the logits."""
        return self.logits * value - continuous_bernoulli_log_normalizer(self.logits)

    def rsample(self, sample_shape: torch.Size | list[int] | tuple[int, ...] = ()) -> torch.Tensor:
        """Inverse CDF: x = log(1 + u (e^η − 1))/η for η < 0 and 1 − (the same at −η, 1 − u)
        for η > 0 (e^{−|η|} only: no overflow); x = u at η = 0. [*sample_shape, *batch]."""
        shape = self._extended_shape(sample_shape)
        u = torch.rand(shape, dtype=self.logits.dtype, device=self.logits.device)
        eta = self.logits.expand(shape)
        neg = -eta.abs()
        zero = neg == 0
        safe = torch.where(zero, -torch.ones_like(neg), neg)
        v = torch.where(eta > 0, 1 - u, u)
        x = torch.where(zero, v, torch.log1p(v * torch.expm1(safe)) / safe)
        return torch.where(eta > 0, 1 - x, x).clamp(0, 1)


class ContinuousBernoulli(Likelihood):
    """p(x | z) = ∏_d C(λ_d) λ_d^{x_d} (1 − λ_d)^{1−x_d}, x_d ∈ [0, 1], λ = sigmoid(logits):
    the Bernoulli made a normalised density on [0, 1] (Loaiza-Ganem & Cunningham 2019), with
    C(λ) = 2 atanh(1 − 2λ)/(1 − 2λ); computed as e^{ηx − A(η)} with the stable log-normaliser
    :func:`continuous_bernoulli_log_normalizer` (η = logits), a density for every finite η. On
    data in [0, 1] vaelab reports nats of density, not bits/dim.
    """

    name = "continuous-bernoulli"
    meaning = {"unit-interval": "density"}
    support = "unit-interval"

    def remedy(self) -> str:
        """What to use instead; never itself — on 8-bit or binary data (discrete) it is a
        score, so recommending it there would send the user in a circle."""
        return ("8-bit and binary data are discrete, so a density on [0, 1] does not give "
                "their probability: for 8-bit data use a discretized likelihood (--likelihood "
                "discretized-logistic) or dynamic binarization (--binarize dynamic with "
                "--likelihood bernoulli); for binary data --likelihood bernoulli")

    def forward(self, raw: torch.Tensor) -> Distribution:
        """raw: logits [..., D] → Independent continuous Bernoulli, event_shape [D]."""
        return Independent(ContinuousBernoulliDistribution(raw), 1, validate_args=False)

    def check_support(self, x: torch.Tensor, name: str = "x") -> torch.Tensor:
        return check_unit_interval(x, name, self.name)


def from_config(config: dict) -> Likelihood:
    """Rebuild a likelihood from :meth:`Likelihood.config` output."""
    config = dict(config)
    return catalogue.get("likelihood", config.pop("name", None)).resolve()(**config)


def from_model_config(config) -> Likelihood:
    """The likelihood a ``vaelab.config.ModelConfig`` chose, built from its options (the
    Gaussian is dequantized when ``data_kind`` is "8-bit")."""
    entry, options = catalogue.chosen(config, "likelihood")
    return entry.build(config.data_dim, getattr(config, "data_kind", None), **options)


def check_data_kind(likelihood: object, kind: str, low: float, high: float,
                    values: torch.Tensor | None = None,
                    data_dim: int | None = None) -> str | None:
    """Refuse data outside the support of ``likelihood`` (by kind and range, and by its own
    support check on ``values``), naming CLI flags.

    Args:
        likelihood: a name of :data:`LIKELIHOODS` or a ``ModelConfig`` (with its options);
        kind: the data's kind as the model will see them (after binarization); low, high:
        their smallest and largest values; values: the values (floating, any shape), or
        None; data_dim: values per example (for a parameter per column).

    Returns:
        None, or a one-line note when the data are accepted but ``log_prob`` on them is only
        an unnormalised score (so evaluate will report no log p(x) or bits/dim).

    Raises:
        ValueError: naming ``--likelihood`` and what to use instead.
    """
    span = f"{kind} data with values in [{low:g}, {high:g}]"
    options: dict
    if isinstance(likelihood, str):
        entry, options = catalogue.get("likelihood", likelihood, "--likelihood"), {}
    else:
        entry, options = catalogue.chosen(likelihood, "likelihood")
    likelihood = entry.name
    lik = entry.build(data_dim, kind, **options)
    if lik.support in ("counts", "categories") and kind == "8-bit":
        raise ValueError(f"data: --likelihood {likelihood} needs integers as given, got {span} "
                         f"(integers 0–255 in .npy/.npz files are read as 8-bit data k/255); "
                         f"give them as floats or in a CSV")
    if lik.support == "unit-interval" and (low < 0 or high > 1):
        raise ValueError(f"data: --likelihood {likelihood} needs values in [0, 1], got {span}; "
                         f"pass --likelihood gaussian for real-valued data, or rescale them")
    if lik.support == "8-bit" and kind not in ("8-bit", "binary"):
        raise ValueError(f"data: --likelihood {likelihood} needs 8-bit data (uint8 or integers "
                         f"0–255, read as k/255), got {span}; pass --likelihood gaussian or "
                         f"continuous-bernoulli, or store 8-bit values as uint8")
    if values is not None and values.is_floating_point():
        lik.check_support(values, "data")
    if lik.meaning_on(kind) != "score":
        return None
    return (f"note: --likelihood {likelihood} on {kind} data is not a normalised probability "
            f"or density, so its log-likelihood is an unnormalised score: evaluate will report "
            f"no log p(x) or bits/dim; {lik.remedy()}")
