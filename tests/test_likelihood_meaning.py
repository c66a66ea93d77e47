"""A score that is not a normalised log-likelihood is never reported as
log p(x) or bits/dim. One rule: each likelihood declares on which data kinds its log_prob is
a probability, a bound on one, or a density (``Likelihood.meaning``); evaluate follows it."""

from __future__ import annotations

import json
import math

import pytest
import torch

from vaelab import catalogue
from vaelab.config import ModelConfig
from vaelab.data import DATA_KINDS
from vaelab.measure.evaluate import evaluate_model, likelihood_meaning
from vaelab.model import likelihoods
from vaelab.model.vae import build_vae
from vaelab.show import tables

pytestmark = pytest.mark.usefixtures("one_thread")   # small tensors, shared cores

#: The rule, written out: (likelihood, data kind) → meaning; every other pair is a score.
EXPECTED = {
    ("bernoulli", "binary"): "probability",
    ("discretized-logistic", "8-bit"): "probability",
    ("discretized-logistic", "binary"): "probability",
    ("discretized-logistic-mixture", "8-bit"): "probability",
    ("discretized-logistic-mixture", "binary"): "probability",
    ("gaussian (dequantized)", "8-bit"): "bound",
    ("gaussian (dequantized)", "binary"): "bound",
    ("gaussian", "continuous"): "density",
    ("gaussian", "unit-interval"): "density",
    ("continuous-bernoulli", "unit-interval"): "density",
    **{(name, kind): "probability" for kind in ("binary", "continuous")
       for name in ("poisson", "negative-binomial", "zero-inflated-negative-binomial",
                    "binomial", "categorical")},
    **{(name, kind): "density" for kind in ("continuous", "unit-interval")
       for name in ("student-t", "log-normal")},
    **{("mixed", kind): "density" for kind in DATA_KINDS},   # its REQUIRED schema has a real
}
#: The options a likelihood cannot do without (the number of trials, of categories).
REQUIRED = {"binomial": {"trials": 16}, "categorical": {"categories": 3},
            "mixed": {"columns": [{"name": "a", "likelihood": "poisson"},
                                  {"name": "b", "likelihood": "gaussian"},
                                  {"name": "c", "likelihood": "categorical",
                                   "labels": ["x", "y"]}]}}


def _likelihoods() -> dict[str, likelihoods.Likelihood]:
    out = {name: catalogue.get("likelihood", name).build(4, None, **REQUIRED.get(name, {}))
           for name in likelihoods.LIKELIHOODS}
    out["gaussian (dequantized)"] = likelihoods.Gaussian(dequantize=True)
    return out


@pytest.mark.parametrize("kind", DATA_KINDS)
def test_every_likelihood_declares_its_meaning_on_every_kind(kind):
    for name, lik in _likelihoods().items():
        assert lik.meaning_on(kind) == EXPECTED.get((name, kind), "score"), (name, kind)


def test_issue_input_bernoulli_on_grey_levels_reports_no_log_px_or_bits():
    torch.manual_seed(0)
    model = build_vae(ModelConfig(data_dim=784, latent_dim=2, hidden=(16,)))
    r = evaluate_model(model, torch.full((3, 784), 0.5), num_samples=8)
    json.dumps(r, allow_nan=False)
    meaning = r["likelihood_meaning"]
    assert (meaning["data_kind"], meaning["likelihood"], meaning["meaning"]) == (
        "unit-interval", "bernoulli", "score")
    assert r["log_likelihood_normalised"] is False
    assert r["nll_bits_per_dim"]["mean"] is None and r["nll_bits_per_dim"]["se"] is None
    assert r["neg_elbo_bits_per_dim"] is None
    assert "not log p(x)" in meaning["note"] and "--binarize dynamic" in meaning["note"]
    table = tables.with_meaning(tables.format_evaluation({**r, "data": "x", "split": "test"}), r)
    assert "log p(x) (nats)" not in table and "unnormalised score" in table
    assert "not log p(x)" in table


def test_the_same_model_on_binary_data_reports_a_probability_and_its_bits():
    torch.manual_seed(0)
    model = build_vae(ModelConfig(data_dim=784, latent_dim=2, hidden=(16,)))
    x = torch.bernoulli(torch.full((3, 784), 0.5))
    r = evaluate_model(model, x, num_samples=8)
    assert r["likelihood_meaning"]["meaning"] == "probability"
    assert r["log_likelihood_normalised"] is True
    bpd = r["nll_bits_per_dim"]["mean"]
    assert bpd == pytest.approx(-r["log_likelihood"]["mean"] / (784 * math.log(2)), rel=1e-12)
    assert bpd > 0


def test_a_density_reports_nats_and_no_bits():
    from tests.conftest import make_linear_gaussian

    model = make_linear_gaussian()
    q = lambda x: model.posterior(x)  # noqa: E731 - the exact posterior as q
    r = evaluate_model(model, model.sample(6, generator=torch.Generator().manual_seed(3)),
                       num_samples=4, infer=q)
    assert r["likelihood_meaning"]["meaning"] == "density"
    assert r["log_likelihood_normalised"] is True
    assert math.isfinite(r["log_likelihood"]["mean"])
    assert r["nll_bits_per_dim"]["mean"] is None and r["neg_elbo_bits_per_dim"] is None
    table = tables.with_meaning(tables.format_evaluation({**r, "data": "x", "split": "test"}), r)
    assert "log density (nats)" in table and "not bits/dim" in table


@pytest.mark.parametrize("name, meaning", [("discretized-logistic", "probability"),
                                           ("discretized-logistic-mixture", "probability"),
                                           ("gaussian", "bound")])
def test_eight_bit_likelihoods_report_bits(name, meaning):
    torch.manual_seed(0)
    config = ModelConfig(data_dim=12, latent_dim=2, hidden=(8,), likelihood=name,
                         likelihood_components=2, data_kind="8-bit")
    model = build_vae(config)
    x = torch.randint(0, 256, (5, 12)).double().div(255).float()
    r = evaluate_model(model, x, num_samples=16, data_kind="8-bit")
    assert r["likelihood_meaning"]["meaning"] == meaning
    assert r["nll_bits_per_dim"]["mean"] > 0      # a probability (or bound) is at most 1


def test_data_kind_is_inferred_when_not_given():
    model = build_vae(ModelConfig(data_dim=4, latent_dim=2, hidden=(8,)))
    assert likelihood_meaning(model, torch.tensor([[0.0, 1, 1, 0]]))["meaning"] == "probability"
    assert likelihood_meaning(model, torch.tensor([[0.0, 1 / 255, 1, 0]]))["data_kind"] == "8-bit"
    assert likelihood_meaning(model, torch.tensor([[0.0, 1 / 255, 1, 0]]))["meaning"] == "score"
    with pytest.raises(ValueError, match="data_kind"):
        likelihood_meaning(model, torch.zeros(1, 4), "grey")


@pytest.mark.parametrize("kind", ["binary", "8-bit"])
def test_a_nats_only_report_does_not_promise_bits_per_dim(kind):
    """gaps reports nats only: its note (bits_per_dim=False) keeps what log p(x) is but does
    not say bits/dim are reported, while evaluate's note does."""
    likelihood = "bernoulli" if kind == "binary" else "discretized-logistic"
    model = build_vae(ModelConfig(data_dim=4, latent_dim=2, likelihood=likelihood))
    x = torch.tensor([[0.0, 1.0, 1.0, 0.0]]) if kind == "binary" else torch.tensor(
        [[0.0, 128.0, 255.0, 3.0]]) / 255
    with_bits = likelihood_meaning(model, x, kind)
    nats = likelihood_meaning(model, x, kind, bits_per_dim=False)
    assert with_bits["meaning"] == nats["meaning"] in ("probability", "bound")
    assert "bits/dim" in with_bits["note"] and "bits/dim" not in nats["note"]
    assert nats["note"].endswith("reported in nats")
    assert with_bits["note"].split(": ")[0] == nats["note"].split(": ")[0]
