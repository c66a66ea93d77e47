"""p_θ(x | z) for a mixed-type table: one likelihood per column, their log-probabilities summed.

Role in vaelab: the composite :class:`~vaelab.model.likelihoods.Likelihood` of HI-VAE
(Nazabal, Olmos, Ghahramani & Valera 2020): given z the columns are independent, so

    log p(x | z) = Σ_columns log p_c(x_c | z),

each p_c chosen by the table's schema (``vaelab.data.schema``: real, positive, heavy-tailed,
counts, yes/no, categories). The decoder gives one raw number per model column (a categorical
column of K labels is K one-hot model columns and gets K logits); what a column needs beyond
that is a learned per-column parameter (a σ, a dispersion θ, a zero-inflation logit, ν):

* gaussian / student-t: x ~ N(loc + scale·r, (scale·σ)²) (t_ν alike), loc/scale the column's
  recorded mean and standard deviation, so the network works in standardized units and the
  density is of x itself (its Jacobian included); σ = softplus(·) + ``min_scale``;
* log-normal: log x ~ N(loc + scale·r, (scale·σ)²), loc/scale those of log x;
* poisson / negative-binomial / zero-inflated: mean μ = u·softplus(r)/log 2 (u the column's
  mean count: r = 0 starts at the mean), θ and the zero logit learned per column;
* bernoulli: logits r; binomial: n known, logits r;
* categorical: softmax over its K logits; log p = Σ_k x_k log softmax(r)_k on the one-hot
  block (a missing cell, an all-zero block in a masked batch, contributes 0).

``mean`` is on the data's scale: a categorical block gives its K probabilities and a yes/no
column its probability, so the importance-weighted imputation of ``vaelab.use.impute`` is the
posterior predictive probability and ``Schema.decode`` takes its most probable label.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import distributions as D
from torch import nn
from torch.distributions import Distribution

from vaelab.data.kinds import DATA_KINDS
from vaelab.data.schema import COUNTS, DISCRETE, Column, Schema
from vaelab.model.column_likelihoods import (
    CentredStudentT,
    ZeroInflatedNegativeBinomialDistribution,
    check_integers,
    negative_binomial,
)
from vaelab.model.likelihoods import Likelihood

_FLOOR = 1e-8
#: softplus⁻¹(1): per-column σ and θ start at 1.
_ONE = math.log(math.e - 1)
#: The zero-inflation logit starts at −2 (π ≈ 0.12).
_ZERO_LOGIT = -2.0


class MixedDistribution(Distribution):
    """The columns' distributions side by side: batch [..., B], event [D] (model columns).

    ``parts``: (column, start, stop, dist) where dist is elementwise over [..., B, 1] for a
    one-number column and the log-probabilities [..., B, K] of a categorical block.
    """

    arg_constraints: dict = {}
    has_rsample = False

    def __init__(self, parts: list[tuple[Column, int, int, Any]], raw: torch.Tensor) -> None:
        self.parts = parts
        self._dtype = raw.dtype
        super().__init__(raw.shape[:-1], raw.shape[-1:], validate_args=False)

    def log_prob_per_dim(self, value: torch.Tensor, *, masked: bool = True) -> torch.Tensor:
        """log p(x_d | z) per model column, [..., B, D]; a categorical block's log p(x_c | z)
        is spread over its one-hot columns (Σ_k x_k log p_k), so summing the observed
        columns gives the observed cells' log-likelihood (``vaelab.infer.masked``).
        ``masked``: values outside a column's support (the zeros that fill missing cells)
        get a finite term, which the mask then drops."""
        terms = []
        for column, start, stop, dist in self.parts:
            x = value[..., start:stop]
            if column.labels is not None:
                terms.append(x * dist)                          # dist: log-probabilities
                continue
            if masked and column.likelihood == "log-normal":
                x = torch.where(x > 0, x, torch.ones_like(x))
            terms.append(dist.log_prob(x))
        shape = torch.broadcast_shapes(value.shape, (*self.batch_shape, self.event_shape[0]))
        return torch.cat([t.expand(*shape[:-1], t.shape[-1]) for t in terms], dim=-1)

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        """Σ_columns log p_c(x_c | z): x [..., B, D] → [..., B]."""
        return self.log_prob_per_dim(value, masked=False).sum(-1)

    @property
    def mean(self) -> torch.Tensor:
        """E[x | z] per model column (probabilities for categorical and yes/no columns)."""
        return torch.cat([dist.exp() if column.labels is not None else dist.mean
                          for column, _, _, dist in self.parts], dim=-1)

    def sample(self, sample_shape: torch.Size | list[int] | tuple[int, ...] = ()) -> torch.Tensor:
        """One draw per column (a one-hot block for a category), [*sample_shape, ..., B, D]."""
        with torch.no_grad():
            out = []
            for column, _, _, dist in self.parts:
                if column.labels is not None:
                    code = D.Categorical(logits=dist).sample(sample_shape)
                    out.append(F.one_hot(code, column.width).to(self._dtype))
                else:
                    out.append(dist.sample(sample_shape).to(self._dtype))
            return torch.cat(out, dim=-1)


class MixedLikelihood(Likelihood):
    """One likelihood per column of a mixed table, from its schema (module docstring).

    Args:
        columns: the schema (``Schema.to_list()`` or a :class:`~vaelab.data.schema.Schema`).
        data_dim: D, checked against the schema's width when given.
        column_types: the user's overrides the schema was inferred with (kept in the run's
            config; not used once the schema exists).
    """

    name = "mixed"
    support = "mixed"
    params_per_dim = 1
    #: It maps its own columns to the data's units (a standardized model leaves it alone).
    data_units = True
    #: Training reads its data as a table and infers the schema (``vaelab.fit.train_data``).
    reads_schema = True

    @classmethod
    def from_options(cls, data_dim: int | None = None, data_kind: str | None = None, *,
                     columns: object = None, column_types: object = None) -> Likelihood:
        """The schema ``columns`` (filled in from the data by ``vaelab train``)."""
        if columns is None:
            raise ValueError("likelihood_options.columns: --likelihood mixed needs the table's "
                             "schema (one likelihood per column), inferred from the data by "
                             "vaelab train; got none")
        return cls(columns, data_dim)

    def __init__(self, columns: object, data_dim: int | None = None,
                 column_types: object = None) -> None:
        super().__init__()
        self.schema = Schema.from_list(columns, "likelihood_options.columns")
        if data_dim is not None and data_dim != self.schema.width:
            raise ValueError(f"data_dim: the schema has {self.schema.width} model columns, "
                             f"got {data_dim}")
        discrete = all(c.likelihood in DISCRETE for c in self.schema.columns)
        self.meaning = dict.fromkeys(DATA_KINDS, "probability" if discrete else "density")
        self.learned = nn.ParameterDict()
        for i, column in enumerate(self.schema.columns):
            for part, start in _learned(column).items():
                self.learned[f"c{i}_{part}"] = nn.Parameter(torch.tensor([start]))

    def _param(self, i: int, part: str) -> torch.Tensor:
        return self.learned[f"c{i}_{part}"]

    def forward(self, raw: torch.Tensor) -> Distribution:
        """raw [..., B, D] → :class:`MixedDistribution`, batch [..., B], event [D]."""
        parts = []
        for i, (column, start, stop) in enumerate(self.schema.blocks()):
            r = raw[..., start:stop]
            parts.append((column, start, stop, self._column(i, column, r)))
        return MixedDistribution(parts, raw)

    def _column(self, i: int, c: Column, r: torch.Tensor) -> Any:
        kind = c.likelihood
        if kind == "categorical":
            return r.log_softmax(-1)
        if kind == "bernoulli":
            return D.Bernoulli(logits=r, validate_args=False)
        if kind == "binomial":
            return D.Binomial(c.options["trials"], logits=r, validate_args=False)
        if kind in COUNTS:
            mean = c.scale * F.softplus(r) / math.log(2) + _FLOOR
            if kind == "poisson":
                return D.Poisson(mean, validate_args=False)
            theta = (F.softplus(self._param(i, "dispersion")) + _FLOOR).expand_as(mean)
            if kind == "negative-binomial":
                return negative_binomial(mean, theta)
            return ZeroInflatedNegativeBinomialDistribution(
                mean, theta, self._param(i, "zero_logit").expand_as(mean))
        sigma = F.softplus(self._param(i, "scale")) + c.options.get("min_scale", 1e-3)
        loc, scale = c.loc + c.scale * r, c.scale * sigma.expand_as(r)
        if kind == "log-normal":
            return D.LogNormal(loc, scale, validate_args=False)
        if kind == "student-t":
            df = c.options.get("df")
            nu = (torch.full_like(r, df) if df is not None
                  else (F.softplus(self._param(i, "df")) + _FLOOR).expand_as(r))
            return CentredStudentT(nu, loc, scale, validate_args=False)
        return D.Normal(loc, scale, validate_args=False)

    def check_support(self, x: torch.Tensor, name: str = "x") -> torch.Tensor:
        """One line naming the column when x [B, D] holds a value outside its likelihood (0
        is accepted in a log-normal column and all-zero categorical blocks: masked batches
        fill missing cells with 0)."""
        if x.dim() < 2 or x.shape[-1] != self.schema.width:
            return x                    # not rows of model columns (e.g. observed values only)
        for column, start, stop in self.schema.blocks():
            block = x[..., start:stop]
            where = f"{name} (column {column.name!r})"
            kind = column.likelihood
            if column.labels is not None:
                ok = bool(((block == 0) | (block == 1)).all()) and bool((block.sum(-1) <= 1).all())
                if not ok:
                    raise ValueError(f"{where}: expected its {column.width} one-hot model "
                                     f"columns (vaelab.data.schema.Schema.encode), got other "
                                     f"values")
            elif kind in COUNTS:
                check_integers(block, where, kind, "counts (integers >= 0)")
            elif kind == "binomial":
                n = column.options["trials"]
                check_integers(block, where, kind, f"successes in {n} trials", n)
            elif kind == "bernoulli":
                check_integers(block, where, kind, "0 or 1", 1)
            elif kind == "log-normal" and block.numel() and float(block.min()) < 0:
                raise ValueError(f"{where}: the log-normal likelihood expects positive values, "
                                 f"got values down to {float(block.min()):g}")
        return x

    def remedy(self) -> str:
        return "the mixed likelihood's log_prob is normalised on every table it accepts"

    def config(self) -> dict:
        return {"name": self.name, "columns": self.schema.to_list()}


def _learned(column: Column) -> dict[str, float]:
    """The per-column parameters a column's likelihood learns, with their starting values."""
    kind = column.likelihood
    if kind in ("gaussian", "log-normal"):
        return {"scale": _ONE}
    if kind == "student-t":
        start_df = 5 + math.log(-math.expm1(-5))          # softplus(start) = 5
        return {"scale": _ONE} if "df" in column.options else {"scale": _ONE, "df": start_df}
    if kind == "negative-binomial":
        return {"dispersion": _ONE}
    if kind == "zero-inflated-negative-binomial":
        return {"dispersion": _ONE, "zero_logit": _ZERO_LOGIT}
    return {}


def schema_of(model: object) -> Schema | None:
    """The table schema of a model (or a loaded run) with a mixed likelihood, else None."""
    model = getattr(model, "model", model)
    likelihood = getattr(getattr(model, "decoder", None), "likelihood", None)
    return likelihood.schema if isinstance(likelihood, MixedLikelihood) else None
