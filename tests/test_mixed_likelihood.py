"""The composite likelihood of mixed tables (vaelab.model.mixed_likelihood) against scipy.

Oracles: log p(x | z) of a table with one column of every kind equals the sum of scipy's
float64 log-pmfs / log-pdfs, each at the parameters the raw outputs and the learned per-column
parameters map to (softplus, normalisation and floors computed here in numpy); the probability
of a table of discrete columns sums to one over every possible row; the masked bound ignores
whatever stands in missing cells and equals the sum over observed cells; the categorical mean
is the softmax (so importance-weighted imputations are predictive probabilities).
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from scipy import special, stats

from vaelab import catalogue
from vaelab.data.schema import Schema
from vaelab.infer.masked import masked_draws, per_dim_log_prob
from vaelab.model import likelihoods
from vaelab.model.mixed_likelihood import MixedDistribution, MixedLikelihood

F64 = torch.float64
pytestmark = pytest.mark.usefixtures("one_thread")

COLUMNS = [
    {"name": "colour", "likelihood": "categorical", "labels": ["red", "green", "blue"]},
    {"name": "height", "likelihood": "gaussian", "loc": 170.0, "scale": 9.0},
    {"name": "loss", "likelihood": "student-t", "loc": -2.0, "scale": 3.0},
    {"name": "loss3", "likelihood": "student-t", "options": {"df": 3.0}, "loc": 1.0,
     "scale": 0.5},
    {"name": "price", "likelihood": "log-normal", "loc": 2.0, "scale": 0.7},
    {"name": "smoker", "likelihood": "bernoulli"},
    {"name": "hits", "likelihood": "binomial", "options": {"trials": 16}},
    {"name": "visits", "likelihood": "poisson", "loc": 0.0, "scale": 4.5},
    {"name": "reads", "likelihood": "negative-binomial", "loc": 0.0, "scale": 120.0},
    {"name": "umis", "likelihood": "zero-inflated-negative-binomial", "loc": 0.0,
     "scale": 2.0},
]
#: One row per column kind: a code (one-hot), then one value each.
ROWS = np.array([
    [0, 1, 0, 181.5, -7.0, 1.2, 14.0, 1, 9, 3, 240, 0],
    [0, 0, 1, 150.0, 30.0, -4.0, 0.3, 0, 16, 0, 0, 5],
    [1, 0, 0, 170.0, -2.0, 1.0, 7.4, 1, 0, 12, 75, 0],
], dtype=np.float64)


def _softplus(raw):
    return np.logaddexp(0.0, raw)


def _likelihood(seed: int = 0) -> MixedLikelihood:
    lik = MixedLikelihood(COLUMNS).double()
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():               # learned parameters away from their starting values
        for p in lik.parameters():
            p.copy_(torch.randn(p.shape, generator=generator, dtype=F64))
    return lik


def _learned(lik: MixedLikelihood, i: int, part: str) -> float:
    return float(lik.learned[f"c{i}_{part}"].detach())


def _scipy_row(lik: MixedLikelihood, raw: np.ndarray, x: np.ndarray) -> float:
    """Σ_columns scipy log-pmf/pdf at the parameters written out from the module docstring."""
    total = 0.0
    for i, (c, start, stop) in enumerate(lik.schema.blocks()):
        r, v = raw[start:stop], x[start:stop]
        if c.likelihood == "categorical":
            total += special.log_softmax(r)[int(np.argmax(v))]
            continue
        r, v = r[0], v[0]
        if c.likelihood in ("gaussian", "student-t", "log-normal"):
            sigma = c.scale * (_softplus(_learned(lik, i, "scale")) + 1e-3)
            loc = c.loc + c.scale * r
            if c.likelihood == "gaussian":
                total += stats.norm.logpdf(v, loc, sigma)
            elif c.likelihood == "log-normal":
                total += stats.lognorm.logpdf(v, s=sigma, scale=math.exp(loc))
            else:
                df = c.options.get("df") or _softplus(_learned(lik, i, "df")) + 1e-8
                total += stats.t.logpdf(v, df, loc, sigma)
        elif c.likelihood == "bernoulli":
            total += stats.bernoulli.logpmf(v, special.expit(r))
        elif c.likelihood == "binomial":
            total += stats.binom.logpmf(v, c.options["trials"], special.expit(r))
        else:
            mean = c.scale * _softplus(r) / math.log(2) + 1e-8
            if c.likelihood == "poisson":
                total += stats.poisson.logpmf(v, mean)
                continue
            theta = _softplus(_learned(lik, i, "dispersion")) + 1e-8
            nb = stats.nbinom.logpmf(v, theta, theta / (theta + mean))
            if c.likelihood == "negative-binomial":
                total += nb
                continue
            pi = special.expit(_learned(lik, i, "zero_logit"))
            total += (np.log(pi + (1 - pi) * np.exp(nb)) if v == 0 else np.log1p(-pi) + nb)
    return float(total)


@pytest.mark.parametrize("scale", [0.1, 1.0, 4.0])
def test_log_prob_is_the_sum_of_scipy_per_column_log_probabilities(scale):
    lik = _likelihood()
    raw = scale * torch.randn(len(ROWS), lik.schema.width, generator=torch.Generator()
                              .manual_seed(1), dtype=F64)
    got = lik(raw).log_prob(torch.tensor(ROWS)).detach().numpy()
    want = [_scipy_row(lik, r, x) for r, x in zip(raw.numpy(), ROWS, strict=True)]
    np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-10)


def test_log_prob_at_extreme_raw_outputs_stays_finite_and_matches_scipy():
    lik = _likelihood(3)
    raw = torch.full((len(ROWS), lik.schema.width), 8.0, dtype=F64)
    raw[1] = -8.0
    got = lik(raw).log_prob(torch.tensor(ROWS)).detach().numpy()
    want = [_scipy_row(lik, r, x) for r, x in zip(raw.numpy(), ROWS, strict=True)]
    assert np.isfinite(got).all()
    np.testing.assert_allclose(got, want, rtol=1e-9)


@pytest.mark.parametrize("size", [1.0, 30.0])
def test_a_table_of_discrete_columns_sums_to_one_over_every_row(size):
    """Normalised at ordinary and at extreme raw outputs (logits ±30 and beyond)."""
    columns = [COLUMNS[0], COLUMNS[5], {"name": "hits", "likelihood": "binomial",
                                        "options": {"trials": 3}}]
    lik = MixedLikelihood(columns).double()
    raw = size * torch.randn(5, generator=torch.Generator().manual_seed(2), dtype=F64)
    rows = [[*np.eye(3)[k], b, n] for k, b, n in itertools.product(range(3), (0, 1), range(4))]
    total = lik(raw).log_prob(torch.tensor(rows, dtype=F64)).logsumexp(0)
    assert float(total) == pytest.approx(0.0, abs=1e-12)
    assert lik.meaning_on("continuous") == "probability"
    assert MixedLikelihood(COLUMNS).meaning_on("binary") == "density"


def test_mean_and_draws_are_in_the_data_units_and_categories_are_one_hot():
    lik = _likelihood()
    raw = torch.zeros(4000, lik.schema.width, dtype=F64)
    px = lik(raw)
    assert px.batch_shape == (4000,) and px.event_shape == (lik.schema.width,)
    mean = px.mean[0].detach()
    np.testing.assert_allclose(mean[:3].numpy(), [1 / 3] * 3)       # softmax of equal logits
    assert float(mean[3]) == pytest.approx(170.0)                     # the recorded loc
    assert float(mean[9]) == pytest.approx(4.5)                       # r = 0: the mean count
    torch.manual_seed(0)
    draws = px.sample()
    assert torch.equal(draws[:, :3].sum(1), torch.ones(4000, dtype=F64))
    assert set(draws[:, :3].unique().tolist()) == {0.0, 1.0}
    assert float(draws[:, 3].std()) == pytest.approx(
        9.0 * (math.log1p(math.exp(_learned(lik, 1, "scale"))) + 1e-3), rel=0.05)
    assert float(draws[:, 9].mean()) == pytest.approx(4.5, rel=0.05)


def test_masked_cells_contribute_nothing():
    """The masked bound's likelihood is the sum over observed cells only: whatever stands in
    the missing cells (0, as the masked model fills them, or anything) changes nothing, and a
    missing categorical cell (its whole block) contributes 0 to it."""
    lik = _likelihood()
    raw = torch.randn(3, lik.schema.width, generator=torch.Generator().manual_seed(4),
                      dtype=F64)
    px = lik(raw)
    x = torch.tensor(ROWS)
    observed = torch.ones_like(x, dtype=torch.bool)
    observed[0, :3] = False                        # the category of row 0
    observed[1, 6] = False                         # the log-normal of row 1
    observed[2, 9:] = False                        # the counts of row 2
    filled = torch.where(observed, x, torch.zeros_like(x))
    other = torch.where(observed, x, torch.full_like(x, 0.5))
    per = per_dim_log_prob(px, filled)
    assert bool(torch.isfinite(per).all())
    got = (per * observed).sum(-1)
    torch.testing.assert_close(got, (per_dim_log_prob(px, other) * observed).sum(-1))
    full = px.log_prob_per_dim(x, masked=False)
    want = torch.stack([full[b, observed[b]].sum() for b in range(3)])
    torch.testing.assert_close(got, want)
    # the per-cell terms of row 2 add up to scipy's log p of its observed columns
    keep = [i for i, c in enumerate(COLUMNS) if c["name"] not in ("visits", "reads", "umis")]
    sub = MixedLikelihood([COLUMNS[i] for i in keep]).double()
    with torch.no_grad():
        for i, j in enumerate(keep):
            for part in ("scale", "df", "dispersion", "zero_logit"):
                if f"c{j}_{part}" in lik.learned:
                    sub.learned[f"c{i}_{part}"].copy_(lik.learned[f"c{j}_{part}"])
    assert float(got[2].detach()) == pytest.approx(_scipy_row(sub, raw[2, :9].numpy(), ROWS[2, :9]),
                                          rel=1e-10)


def test_the_masked_bound_runs_through_a_mixed_decoder():
    lik = _likelihood()

    class Model:
        def prior(self):
            return torch.distributions.Independent(
                torch.distributions.Normal(torch.zeros(2, dtype=F64), torch.ones(2, dtype=F64)), 1)

        def decode(self, z):
            return lik(torch.cat([z, z, z, z, z, z], -1))

    x = torch.tensor(ROWS)
    mask = torch.rand(x.shape, generator=torch.Generator().manual_seed(0)) < 0.7
    q = torch.distributions.Independent(torch.distributions.Normal(
        torch.zeros(3, 2, dtype=F64), torch.ones(3, 2, dtype=F64)), 1)
    draws = masked_draws(Model(), q, torch.where(mask, x, 0 * x), mask, 5,
                         want_imputations=True)
    assert bool(torch.isfinite(draws.log_weights).all())
    assert draws.mean is not None and draws.mean.shape == (5, 3, 12)


def test_support_checks_name_the_column():
    lik = MixedLikelihood(COLUMNS)
    x = torch.tensor(ROWS, dtype=torch.float32)
    lik.check_support(x)
    bad = x.clone()
    bad[0, 9] = -1
    with pytest.raises(ValueError, match=r"column 'visits'.*negative"):
        lik.check_support(bad)
    bad = x.clone()
    bad[0, :3] = torch.tensor([1.0, 1.0, 0.0])
    with pytest.raises(ValueError, match=r"column 'colour'.*one-hot"):
        lik.check_support(bad)
    bad = x.clone()
    bad[0, 8] = 17
    with pytest.raises(ValueError, match=r"column 'hits'.*16"):
        lik.check_support(bad)


def test_gradients_reach_raw_and_every_learned_parameter():
    lik = _likelihood()
    raw = torch.randn(3, lik.schema.width, dtype=F64, requires_grad=True)
    lp = lik(raw).log_prob(torch.tensor(ROWS)).sum()
    grads = torch.autograd.grad(lp, [raw, *lik.parameters()])
    assert all(bool((g != 0).all()) for g in grads)
    assert isinstance(lik(raw), MixedDistribution)


def test_catalogue_entry_config_round_trip_and_required_schema():
    lik = catalogue.get("likelihood", "mixed").build(12, "continuous", columns=COLUMNS)
    again = likelihoods.from_config(lik.config())
    assert type(again) is MixedLikelihood and again.config() == lik.config()
    assert again.schema == Schema.from_list(COLUMNS)
    with pytest.raises(ValueError, match="needs the table's schema"):
        catalogue.get("likelihood", "mixed").build(12, "continuous")
    with pytest.raises(ValueError, match="12 model columns, got 5"):
        MixedLikelihood(COLUMNS, data_dim=5)
