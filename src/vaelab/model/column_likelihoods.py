"""Observation models p_θ(x | z) for the columns of a table: counts, categories, positive and
heavy-tailed real values.

Role in vaelab: more :class:`~vaelab.model.likelihoods.Likelihood` classes, each a catalogue
entry (``vaelab.catalogue``), each registered by being defined (the base class collects its
subclasses). Every column of x [B, D] gets the same likelihood here; one likelihood per column
(mixed tables) builds on these.

* :class:`Poisson` — counts, mean μ = softplus(raw).
* :class:`NegativeBinomial` — over-dispersed counts with mean μ and inverse dispersion θ,
  Var = μ + μ²/θ; θ per column (a learned parameter) or per example (a network output), as in
  scVI (Lopez et al. 2018).
* :class:`ZeroInflatedNegativeBinomial` — a negative binomial whose zeros are inflated by a
  network-given probability π (Lopez et al. 2018; Eraslan et al. 2019, DCA).
* :class:`Binomial` — counts out of a known number of trials n.
* :class:`Categorical` — K categories per column coded 0, …, K − 1, softmax over K logits.
* :class:`StudentT` — real values with heavy tails; σ floored, ν fixed or learned per column.
* :class:`LogNormal` — positive real values, log x ~ N(μ, σ²) with σ floored.

**What log_prob means.** The discrete ones are normalised probabilities of integer data as
given, so ``evaluate`` reports log p(x) in nats (and bits/dim). On vaelab's data kinds
(``vaelab.data``) integer tables read from CSV are "continuous" (or "binary" when all 0/1):
these likelihoods declare "probability" there and their support checks refuse every value
that is not an integer in range (one line naming the likelihood). Student-t and log-normal are
densities of real data: ``evaluate`` reports nats of density, which are not a probability.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import distributions as D
from torch import nn
from torch.distributions import Distribution, Independent

from vaelab import _checks
from vaelab.model.likelihoods import Likelihood

#: What the discrete likelihoods are on the data kinds integers arrive as.
_DISCRETE = {"binary": "probability", "continuous": "probability"}
_DENSITY = {"continuous": "density", "unit-interval": "density"}
#: Floor on a mean or an inverse dispersion: keeps log μ finite when softplus underflows.
_FLOOR = 1e-8
DISPERSIONS = ("column", "example")
#: Integers 0–255 stored as integers are read as 8-bit data k/255 (``vaelab.data``).
_EIGHT_BIT_HINT = ("; integers 0–255 in .npy/.npz files are read as 8-bit data k/255: give "
                   "counts as floats or in a CSV")


def check_integers(x: torch.Tensor, name: str, likelihood: str, what: str,
                   high: int | None = None) -> torch.Tensor:
    """Raise a one-line ValueError unless every x is an integer in [0, ``high``].

    ``what`` says in words what the likelihood expects (e.g. "counts (integers >= 0)").
    """
    if x.numel() == 0:
        return x
    low, top = x.min().item(), x.max().item()
    fraction = (x - x.round()).abs()
    expects = f"{name}: the {likelihood} likelihood expects {what}"
    if low < 0:
        raise ValueError(f"{expects}, got negative values (the smallest {low:g})")
    if fraction.max().item() > 0:
        first = x.reshape(-1)[fraction.reshape(-1).argmax()].item()
        hint = _EIGHT_BIT_HINT if top <= 1 else ""
        raise ValueError(f"{expects}, got non-integer values (e.g. {first:g}){hint}")
    if high is not None and top > high:
        raise ValueError(f"{expects}, got values up to {top:g}, above {high}")
    return x


def _positive(raw: torch.Tensor, floor: float = _FLOOR) -> torch.Tensor:
    return F.softplus(raw) + floor


class _Columns(Likelihood):
    """Shared plumbing: the parameter-major layout raw [..., P·D] → P tensors [..., D]."""

    def _split(self, raw: torch.Tensor, parts: int) -> tuple[torch.Tensor, ...]:
        return tuple(raw.unflatten(-1, (parts, raw.shape[-1] // parts)).unbind(-2))

    def remedy(self) -> str:
        return ("for counts use --likelihood poisson, negative-binomial or binomial; for "
                "categories --likelihood categorical; for real data --likelihood gaussian")


class Poisson(_Columns):
    """p(x | z) = ∏_d Poisson(x_d; μ_d), μ = softplus(raw) + 1e-8; x_d ∈ {0, 1, 2, …}."""

    name = "poisson"
    meaning = _DISCRETE
    support = "counts"

    def forward(self, raw: torch.Tensor) -> Distribution:
        """raw [..., D] → Independent Poisson, event [D]."""
        return Independent(D.Poisson(_positive(raw), validate_args=False), 1,
                           validate_args=False)

    def check_support(self, x: torch.Tensor, name: str = "x") -> torch.Tensor:
        return check_integers(x, name, self.name, "counts (integers >= 0)")


def negative_binomial(mean: torch.Tensor, inverse_dispersion: torch.Tensor) -> D.NegativeBinomial:
    """torch's NegativeBinomial with mean μ and inverse dispersion θ (Var = μ + μ²/θ):
    θ failures, success logits log μ − log θ (elementwise, broadcast)."""
    return D.NegativeBinomial(total_count=inverse_dispersion,
                              logits=mean.log() - inverse_dispersion.log(), validate_args=False)


class NegativeBinomial(_Columns):
    """p(x | z) = ∏_d NB(x_d; μ_d, θ_d): mean μ = softplus(raw) + 1e-8, inverse dispersion
    θ = softplus(·) + 1e-8, Var = μ + μ²/θ; x_d ∈ {0, 1, 2, …}.

    Args:
        dispersion: "column" — one learned θ_d per column (``data_dim`` needed), raw [..., D]
            is the mean; "example" — θ from the network too, raw [..., 2D] = [mean | θ].
        data_dim: D (for ``dispersion="column"``).
    """

    name = "negative-binomial"
    meaning = _DISCRETE
    support = "counts"
    #: The raw numbers per column besides μ and θ (the zero-inflated model adds its logits).
    _extra = 0

    @classmethod
    def from_options(cls, data_dim: int | None = None, data_kind: str | None = None, *,
                     dispersion: str = "column") -> Likelihood:
        """θ per ``dispersion`` (``--likelihood-dispersion``)."""
        return cls(dispersion, data_dim)

    def __init__(self, dispersion: str = "column", data_dim: int | None = None) -> None:
        super().__init__()
        self.dispersion = _checks.one_of("dispersion", dispersion, DISPERSIONS)
        self.data_dim = None if data_dim is None else _checks.positive_int("data_dim", data_dim)
        self.params_per_dim = 1 + self._extra + (self.dispersion == "example")
        if self.dispersion == "column":
            if self.data_dim is None:
                raise ValueError("data_dim: expected an integer >= 1 when dispersion='column', "
                                 "got None")
            # θ starts at 1 (softplus⁻¹(1) = log(e − 1)): a geometric-like spread, moved by data.
            self.raw_dispersion = nn.Parameter(torch.full((self.data_dim,),
                                                          math.log(math.e - 1)))

    def _unpack(self, raw: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """raw → (μ, θ, *extra) each [..., D]."""
        parts = self._split(raw, self.params_per_dim)
        mean, extra = _positive(parts[0]), parts[1:1 + self._extra]
        theta = (_positive(parts[-1]) if self.dispersion == "example"
                 else _positive(self.raw_dispersion).expand_as(mean))
        return (mean, theta, *extra)

    def forward(self, raw: torch.Tensor) -> Distribution:
        """raw [..., P·D] → Independent negative binomial, event [D]."""
        mean, theta = self._unpack(raw)
        return Independent(negative_binomial(mean, theta), 1, validate_args=False)

    def check_support(self, x: torch.Tensor, name: str = "x") -> torch.Tensor:
        return check_integers(x, name, self.name, "counts (integers >= 0)")

    def config(self) -> dict:
        return {"name": self.name, "dispersion": self.dispersion, "data_dim": self.data_dim}


class ZeroInflatedNegativeBinomialDistribution(Distribution):
    """Elementwise π·δ₀ + (1 − π)·NB(μ, θ), π = sigmoid(zero_logits); batch = μ's shape.

    log p(0) = log(π + (1 − π) NB(0)) and log p(x > 0) = log(1 − π) + log NB(x), both in log
    space (logsigmoid, logaddexp) so that π near 0 or 1 stays exact.
    """

    arg_constraints: dict = {}
    has_rsample = False

    def __init__(self, mean: torch.Tensor, inverse_dispersion: torch.Tensor,
                 zero_logits: torch.Tensor) -> None:
        self.nb = negative_binomial(mean, inverse_dispersion)
        self.zero_logits = zero_logits
        super().__init__(mean.shape, validate_args=False)

    @property
    def mean(self) -> torch.Tensor:
        """(1 − π) μ."""
        return torch.sigmoid(-self.zero_logits) * self.nb.mean

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        """value [...] (counts) → log p(value), elementwise."""
        counts = self.nb.log_prob(value) + F.logsigmoid(-self.zero_logits)
        zero = torch.logaddexp(F.logsigmoid(self.zero_logits), counts)
        return torch.where(value == 0, zero, counts)

    def sample(self, sample_shape: torch.Size | list[int] | tuple[int, ...] = ()) -> torch.Tensor:
        """A negative binomial draw, zeroed with probability π; [*sample_shape, *batch]."""
        with torch.no_grad():
            counts = self.nb.sample(sample_shape)
            keep = torch.rand_like(counts) >= torch.sigmoid(self.zero_logits)
            return counts * keep


class ZeroInflatedNegativeBinomial(NegativeBinomial):
    """p(x_d | z) = π_d δ₀(x_d) + (1 − π_d) NB(x_d; μ_d, θ_d), π = sigmoid(logits): extra zeros
    (dropouts) beside the negative binomial's own. raw [..., P·D] = [mean | zero logits] (+ θ
    with ``dispersion="example"``)."""

    name = "zero-inflated-negative-binomial"
    _extra = 1

    def forward(self, raw: torch.Tensor) -> Distribution:
        mean, theta, logits = self._unpack(raw)
        return Independent(ZeroInflatedNegativeBinomialDistribution(mean, theta, logits), 1,
                           validate_args=False)


class Binomial(_Columns):
    """p(x | z) = ∏_d Binomial(x_d; n, sigmoid(logits_d)), x_d ∈ {0, …, n}, n known (e.g. 16 for
    the 4×4 blocks of scikit-learn's digits)."""

    name = "binomial"
    meaning = _DISCRETE
    support = "counts"

    @classmethod
    def from_options(cls, data_dim: int | None = None, data_kind: str | None = None, *,
                     trials: int | None = None) -> Likelihood:
        """n = ``trials`` (``--likelihood-trials``), required."""
        if trials is None:
            raise ValueError("likelihood_options.trials (--likelihood-trials): expected an "
                             "integer >= 1 for --likelihood binomial, got none")
        return cls(trials)

    def __init__(self, trials: int) -> None:
        super().__init__()
        self.trials = _checks.positive_int("trials", trials)

    def forward(self, raw: torch.Tensor) -> Distribution:
        """raw: logits [..., D] → Independent binomial, event [D]."""
        return Independent(D.Binomial(self.trials, logits=raw, validate_args=False), 1,
                           validate_args=False)

    def check_support(self, x: torch.Tensor, name: str = "x") -> torch.Tensor:
        n = self.trials
        return check_integers(x, name, self.name, f"successes in {n} trials (integers 0..{n})",
                              n)

    def config(self) -> dict:
        return {"name": self.name, "trials": self.trials}


class CategoricalColumns(D.Categorical):
    """torch's Categorical over the last dimension of logits [..., D, K] whose values are the
    category codes as floats (vaelab's data are floating tensors) and whose ``mean`` is the
    most probable category (a category; the average code would not be one)."""

    @property
    def mean(self) -> torch.Tensor:
        return self.logits.argmax(-1).to(self.logits.dtype)

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        return super().log_prob(value.long())

    def sample(self, sample_shape: torch.Size | list[int] | tuple[int, ...] = ()) -> torch.Tensor:
        return super().sample(sample_shape).to(self.logits.dtype)


class Categorical(_Columns):
    """p(x | z) = ∏_d softmax(logits_d)[x_d], x_d ∈ {0, …, K − 1}: K logits per column, laid out
    [K, D] (parameter-major)."""

    name = "categorical"
    meaning = _DISCRETE
    support = "categories"

    @classmethod
    def from_options(cls, data_dim: int | None = None, data_kind: str | None = None, *,
                     categories: int | None = None) -> Likelihood:
        """K = ``categories`` (``--likelihood-categories``), required."""
        if categories is None:
            raise ValueError("likelihood_options.categories (--likelihood-categories): expected "
                             "an integer >= 1 for --likelihood categorical, got none")
        return cls(categories)

    def __init__(self, categories: int) -> None:
        super().__init__()
        self.categories = _checks.positive_int("categories", categories)
        self.params_per_dim = self.categories

    def forward(self, raw: torch.Tensor) -> Distribution:
        """raw [..., K·D] → Independent categorical over [D] columns of K categories."""
        logits = raw.unflatten(-1, (self.categories, -1)).movedim(-2, -1)     # [..., D, K]
        return Independent(CategoricalColumns(logits=logits, validate_args=False), 1,
                           validate_args=False)

    def check_support(self, x: torch.Tensor, name: str = "x") -> torch.Tensor:
        k = self.categories
        return check_integers(x, name, self.name, f"category codes 0..{k - 1}", k - 1)

    def config(self) -> dict:
        return {"name": self.name, "categories": self.categories}


class CentredStudentT(D.StudentT):
    """torch's StudentT whose ``mean`` is its centre μ for every ν (the mean where ν > 1; for
    ν ≤ 1, where the mean does not exist, still the median), so reconstructions stay finite."""

    @property
    def mean(self) -> torch.Tensor:
        return self.loc.expand(self.batch_shape)


class _LocationScale(_Columns):
    """raw [..., 2D] = [loc | raw σ], σ = softplus(raw σ) + ``min_scale`` (the floor)."""

    support = "real"
    meaning = _DENSITY
    params_per_dim = 2

    def __init__(self, min_scale: float = 1e-3) -> None:
        super().__init__()
        self.min_scale = _checks.positive_float("min_scale", min_scale)

    def _loc_scale(self, raw: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        loc, raw_scale = self._split(raw, 2)
        return loc, F.softplus(raw_scale) + self.min_scale

    def config(self) -> dict:
        return {"name": self.name, "min_scale": self.min_scale}


class StudentT(_LocationScale):
    """p(x | z) = ∏_d t_ν(x_d; μ_d, σ_d), σ = softplus(raw) + ``min_scale``; heavy tails for
    outlying values. ν: ``df`` if given, else one learned ν_d = softplus(·) + 1e-8 per column
    (starting at 5; ``data_dim`` needed)."""

    name = "student-t"

    @classmethod
    def from_options(cls, data_dim: int | None = None, data_kind: str | None = None, *,
                     df: float | None = None, min_scale: float = 1e-3) -> Likelihood:
        """ν = ``df`` (``--likelihood-df``) or learned; σ floored at ``min_scale``."""
        return cls(df, min_scale, data_dim)

    def __init__(self, df: float | None = None, min_scale: float = 1e-3,
                 data_dim: int | None = None) -> None:
        super().__init__(min_scale)
        self.df = None if df is None else _checks.positive_float("df", df)
        self.data_dim = None if data_dim is None else _checks.positive_int("data_dim", data_dim)
        if self.df is None:
            if self.data_dim is None:
                raise ValueError("data_dim: expected an integer >= 1 when df is learned "
                                 "(df=None), got None")
            start = 5 + math.log(-math.expm1(-5))           # softplus(start) = 5
            self.raw_df = nn.Parameter(torch.full((self.data_dim,), start))

    def forward(self, raw: torch.Tensor) -> Distribution:
        """raw [..., 2D] → Independent Student-t, event [D]."""
        loc, scale = self._loc_scale(raw)
        df = (torch.full_like(loc, self.df) if self.df is not None
              else _positive(self.raw_df).expand_as(loc))
        return Independent(CentredStudentT(df, loc, scale, validate_args=False), 1,
                           validate_args=False)

    def config(self) -> dict:
        return {**super().config(), "df": self.df, "data_dim": self.data_dim}


class LogNormal(_LocationScale):
    """p(x | z) = ∏_d LogNormal(x_d; μ_d, σ_d): log x_d ~ N(μ_d, σ_d²), σ = softplus(raw) +
    ``min_scale``; for positive values (amounts, durations, concentrations)."""

    name = "log-normal"
    support = "positive"

    @classmethod
    def from_options(cls, data_dim: int | None = None, data_kind: str | None = None, *,
                     min_scale: float = 1e-3) -> Likelihood:
        """σ of log x floored at ``min_scale``."""
        return cls(min_scale)

    def forward(self, raw: torch.Tensor) -> Distribution:
        """raw [..., 2D] → Independent log-normal, event [D]."""
        loc, scale = self._loc_scale(raw)
        return Independent(D.LogNormal(loc, scale, validate_args=False), 1, validate_args=False)

    def check_support(self, x: torch.Tensor, name: str = "x") -> torch.Tensor:
        if x.numel() and x.min().item() <= 0:
            raise ValueError(f"{name}: the {self.name} likelihood expects positive values "
                             f"(> 0), got values down to {x.min().item():g}")
        return x
