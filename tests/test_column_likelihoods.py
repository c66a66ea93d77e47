"""The likelihoods for table columns (vaelab.model.column_likelihoods) against scipy.stats.

Oracles: scipy's log-pmf / log-pdf and means in float64 at the parameters the raw network
outputs map to (softplus and the floors computed here independently, in numpy). Then the
support checks (one line each), what evaluate may call each one and the saved configs.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import stats

from vaelab import catalogue
from vaelab.model import column_likelihoods as cl
from vaelab.model import likelihoods

F64 = torch.float64
pytestmark = pytest.mark.usefixtures("one_thread")


def _softplus(raw: np.ndarray) -> np.ndarray:
    return np.logaddexp(0.0, raw)


def _raw(*rows: list[float]) -> torch.Tensor:
    return torch.tensor(rows, dtype=F64)


COUNTS = np.array([0.0, 1.0, 3.0, 17.0, 250.0])


def test_poisson_matches_scipy():
    raw = np.array([-30.0, -1.0, 0.5, 3.0, 260.0])
    px = cl.Poisson()(_raw(list(raw)))
    rate = _softplus(raw) + 1e-8
    want = stats.poisson.logpmf(COUNTS, rate).sum()
    assert float(px.log_prob(torch.tensor(COUNTS))) == pytest.approx(want, rel=1e-12)
    np.testing.assert_allclose(px.mean.detach().numpy()[0], rate, rtol=1e-12)


# ------------------------------------------------------------------ support checks


COUNT_LIKELIHOODS = [cl.Poisson()]


@pytest.mark.parametrize("lik", COUNT_LIKELIHOODS, ids=lambda lik: lik.name)
@pytest.mark.parametrize("values, words", [
    ([0.0, -1.0, 2.0], r"got negative values \(the smallest -1\)"),
    ([0.0, 2.5, 3.0], r"got non-integer values \(e.g. 2.5\)"),
])
def test_count_columns_refuse_negative_and_fractional_values_in_one_line(lik, values, words):
    with pytest.raises(ValueError, match=f"--data: the {lik.name} likelihood expects .*{words}"
                       ) as err:
        lik.check_support(torch.tensor([values]), "--data")
    assert "\n" not in str(err.value)
    lik.check_support(torch.tensor([[0.0, 3.0, 16.0]]), "--data")          # counts pass


def test_eight_bit_values_get_the_hint_that_integers_were_read_as_k_over_255():
    with pytest.raises(ValueError, match="read as 8-bit data k/255: give counts as floats"):
        cl.Poisson().check_support(torch.tensor([[0.0, 3 / 255]]))


# ------------------------------------------------------------------ meaning and options


@pytest.mark.parametrize("name, options, meanings", [
    ("poisson", {}, {"continuous": "probability", "binary": "probability"}),
])
def test_what_evaluate_may_call_each_one(name, options, meanings):
    lik = catalogue.get("likelihood", name).build(4, "continuous", **options)
    for kind in ("binary", "8-bit", "unit-interval", "continuous"):
        assert lik.meaning_on(kind) == meanings.get(kind, "score"), kind


@pytest.mark.parametrize("name, options", [("poisson", {})])
def test_saved_configs_rebuild_the_same_likelihood(name, options):
    lik = catalogue.get("likelihood", name).build(6, "continuous", **options)
    again = likelihoods.from_config(lik.config())
    assert type(again) is type(lik) and again.config() == lik.config()
    assert likelihoods.LIKELIHOODS[name] is type(lik)
