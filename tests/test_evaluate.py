"""Oracles for ``vaelab.measure.evaluate.evaluate_model``: closed-form log p(x), ELBO and KL of a
linear-Gaussian model, the standard-error formula, bits/dim and active units."""

from __future__ import annotations

import math

import pytest
import torch
from torch.distributions import Independent, Normal

from vaelab.config import ModelConfig
from vaelab.measure import evaluate
from vaelab.model.exact import LinearGaussian
from vaelab.model.vae import build_vae
from vaelab.show import tables

F64 = torch.float64


def linear_gaussian(data_dim: int = 6, latent_dim: int = 3, seed: int = 1,
                    dead_unit: int | None = None) -> LinearGaussian:
    g = torch.Generator().manual_seed(seed)
    weight = torch.randn(data_dim, latent_dim, generator=g, dtype=F64)
    if dead_unit is not None:
        weight[:, dead_unit] = 0.0
    return LinearGaussian(weight, torch.randn(data_dim, generator=g, dtype=F64), 0.6)


def data(model: LinearGaussian, n: int, seed: int = 2) -> torch.Tensor:
    return model.sample(n, generator=torch.Generator().manual_seed(seed))


def widened(model: LinearGaussian, factor: float = 1.6):
    """A diagonal q(z|x) with the exact posterior mean and wider marginal scales (gap > 0)."""
    def infer(x: torch.Tensor) -> Independent:
        post = model.posterior(x)
        scale = factor * post.covariance_matrix.diagonal(dim1=-2, dim2=-1).sqrt()
        return Independent(Normal(post.mean, scale.expand_as(post.mean)), 1)
    return infer


def test_exact_posterior_gives_exact_log_likelihood_with_zero_error():
    model = linear_gaussian()
    x = data(model, 40)
    r = evaluate.evaluate_model(model, x, num_samples=64, batch_size=16, infer=model.posterior)
    exact = model.log_marginal(x)
    assert r["log_likelihood"]["mean"] == pytest.approx(exact.mean().item(), abs=1e-8)
    assert r["log_likelihood"]["se_mc"] == pytest.approx(0.0, abs=1e-5)
    assert r["ess"]["min"] == pytest.approx(64, rel=1e-6)
    # with q = p(z|x) the ELBO is log p(x): only the distortion's Monte Carlo noise remains
    assert abs(r["gap"]["mean"]) < 4 * r["gap"]["se"] + 1e-9


def paired_within(estimates: list[float], exact: torch.Tensor, z: float = 4.0) -> bool:
    """Whether per-example estimates match exact values up to z standard errors of the
    paired differences (which carry only Monte Carlo noise)."""
    diff = torch.tensor(estimates, dtype=F64) - exact
    return abs(diff.mean().item()) < z * diff.std().item() / math.sqrt(len(diff)) + 1e-9


def test_elbo_rate_and_log_likelihood_match_closed_forms():
    model = linear_gaussian()
    x = data(model, 60)
    infer = widened(model)
    r = evaluate.evaluate_model(model, x, num_samples=500, elbo_samples=50, infer=infer,
                                per_example=True)
    q, per = infer(x), r["per_example"]
    kl = torch.distributions.kl_divergence(q, model.prior())
    assert per["rate"] == pytest.approx(kl.tolist(), rel=1e-9)
    assert r["rate"]["mean"] == pytest.approx(kl.mean().item(), rel=1e-9)
    assert r["rate"]["std"] == pytest.approx(kl.std().item(), rel=1e-6)
    elbo = model.elbo_closed_form(x, q)
    assert paired_within(per["elbo"], elbo)
    assert r["elbo"]["mean"] == pytest.approx(elbo.mean().item(), abs=0.2)
    ll = model.log_marginal(x)
    assert paired_within(per["log_likelihood"], ll)
    assert r["log_likelihood"]["mean"] == pytest.approx(ll.mean().item(), abs=0.05)
    assert r["gap"]["mean"] > 0.1                     # a wider q leaves a real gap
    assert r["gap"]["mean"] == pytest.approx((ll - elbo).mean().item(), abs=0.2)
    assert len(per["ess"]) == len(per["ll_stderr"]) == 60


def test_monte_carlo_standard_error_is_calibrated():
    """The reported se_mc matches the spread of the mean log p̂(x) over independent reruns."""
    model = linear_gaussian()
    x = data(model, 20)
    infer = widened(model, 2.5)
    means, ses = [], []
    for seed in range(25):
        torch.manual_seed(seed)
        r = evaluate.evaluate_model(model, x, num_samples=30, elbo_samples=1, infer=infer)
        means.append(r["log_likelihood"]["mean"])
        ses.append(r["log_likelihood"]["se_mc"])
    spread = torch.tensor(means).std().item()
    assert 0.6 < spread / (sum(ses) / len(ses)) < 1.6


def test_standard_error_combines_monte_carlo_and_subsampling():
    model = linear_gaussian()
    x = data(model, 50)
    full = evaluate.evaluate_model(model, x, num_samples=20, infer=widened(model))
    ll = full["log_likelihood"]
    assert full["population_size"] == full["num_examples"] == 50
    assert ll["se_data"] == 0.0 and ll["se"] == pytest.approx(ll["se_mc"])
    torch.manual_seed(3)
    part = evaluate.evaluate_model(model, x, num_samples=20, limit=20, infer=widened(model))
    ll = part["log_likelihood"]
    assert (part["num_examples"], part["population_size"]) == (20, 50)
    assert ll["se_data"] == pytest.approx(ll["std"] * math.sqrt((1 - 20 / 50) / 20))
    assert ll["se"] == pytest.approx(math.hypot(ll["se_mc"], ll["se_data"]))
    assert ll["std"] > 0 and ll["se_data"] > 0


def test_limit_evaluates_the_first_rows():
    model = linear_gaussian()
    x = data(model, 30)
    torch.manual_seed(5)
    a = evaluate.evaluate_model(model, x, num_samples=10, limit=7, infer=widened(model))
    torch.manual_seed(5)
    b = evaluate.evaluate_model(model, x[:7], num_samples=10, infer=widened(model))
    assert a["log_likelihood"]["mean"] == b["log_likelihood"]["mean"]
    assert a["elbo"] == b["elbo"]


def test_bits_per_dim_are_consistent_with_nats():
    # bits/dim exist only for a probability of discrete data (a density is no code length): a
    # Bernoulli model on binary data; the linear-Gaussian density gets none (see
    # test_likelihood_meaning)
    model = build_vae(ModelConfig(data_dim=6, latent_dim=2, hidden=(8,)))
    r = evaluate.evaluate_model(model, torch.bernoulli(torch.full((10, 6), 0.3)), num_samples=5)
    ll = r["log_likelihood"]
    assert r["data_dim"] == 6
    assert r["nll_bits_per_dim"]["mean"] == pytest.approx(-ll["mean"] / (6 * math.log(2)))
    assert r["nll_bits_per_dim"]["se"] == pytest.approx(ll["se"] / (6 * math.log(2)))
    assert r["neg_elbo_bits_per_dim"] == pytest.approx(-r["elbo"]["mean"] / (6 * math.log(2)))


def test_active_units_count_the_units_whose_mean_varies():
    """A latent column with zero weight has posterior mean 0 for every x: inactive."""
    model = linear_gaussian(latent_dim=4, dead_unit=2)
    x = data(model, 200)
    r = evaluate.evaluate_model(model, x, num_samples=2, infer=model.posterior)
    activity = model.posterior(x).mean.var(0)
    assert r["active_units"] == int((activity > 0.01).sum()) == 3
    assert r["unit_activity"][2] == pytest.approx(0.0, abs=1e-12)
    assert r["unit_activity"] == pytest.approx(activity.tolist())
    assert r["latent_dim"] == 4 and r["active_threshold"] == 0.01


def test_vae_report_is_finite_json_and_ordered():
    torch.manual_seed(0)
    vae = build_vae(ModelConfig(data_dim=12, latent_dim=3, hidden=(16,)))
    x = torch.bernoulli(torch.full((25, 12), 0.3))
    r = evaluate.evaluate_model(vae, x, num_samples=50, batch_size=10, progress=True)
    import json

    text = json.dumps(r, allow_nan=False)
    assert json.loads(text) == r
    assert r["elbo"]["mean"] == pytest.approx(-(r["rate"]["mean"] + r["distortion"]["mean"]))
    assert r["rate"]["mean"] >= 0
    assert r["elbo"]["mean"] <= r["log_likelihood"]["mean"] + 3 * r["gap"]["se"]
    assert 1 <= r["ess"]["min"] <= r["ess"]["mean"] <= 50


@pytest.mark.parametrize("kwargs, message", [
    ({"num_samples": 0}, "num_samples"),
    ({"limit": 0}, "limit"),
    ({"batch_size": 0}, "batch_size"),
    ({"elbo_samples": 0}, "elbo_samples"),
])
def test_bad_arguments_name_themselves(kwargs, message):
    vae = build_vae(ModelConfig(data_dim=4, latent_dim=2, hidden=(8,)))
    with pytest.raises((ValueError, TypeError), match=message):
        evaluate.evaluate_model(vae, torch.rand(5, 4), **kwargs)


def test_bad_data_is_refused():
    vae = build_vae(ModelConfig(data_dim=4, latent_dim=2, hidden=(8,)))
    with pytest.raises(ValueError, match=r"x: expected shape \[batch, 4\]"):
        evaluate.evaluate_model(vae, torch.rand(5, 3))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        evaluate.evaluate_model(vae, torch.rand(5, 4) + 1)
    with pytest.raises(ValueError, match="finite"):
        evaluate.evaluate_model(vae, torch.full((5, 4), math.nan))


def _measures(num_samples: int) -> dict[str, torch.Tensor]:
    """Per-example measures of 4 examples: log p̂ = 0, −1, 0, 1 (sd √(2/3)), ELBO 0, 1, 2, 3."""
    values = torch.tensor([0.0, 1.0, 2.0, 3.0], dtype=F64)
    stderr = (torch.full((4,), math.nan, dtype=F64) if num_samples == 1
              else torch.tensor([0.1, 0.2, 0.2, 0.4], dtype=F64))
    return {"elbo": values, "rate": values, "distortion": 2 * values,
            "log_likelihood": torch.tensor([0.0, -1.0, 0.0, 1.0], dtype=F64),
            "ll_stderr": stderr, "ess": torch.ones(4, dtype=F64), "q_mean": torch.randn(4, 2)}


def test_with_one_importance_sample_the_between_example_part_is_shown():
    """k = 1: the whole ± of log p(x) is undefined (no Monte Carlo error), but its
    between-example part √((1 − n/N)/n)·sd is not: the JSON gives it (se_data, in bits/dim
    too) with the reason, and the table shows it as a lower bound "≥" with a note."""

    r = evaluate._add_bits_per_dim(evaluate._report(_measures(1), 8, 1, 1, 0.01), 10)
    ll, bpd = r["log_likelihood"], r["nll_bits_per_dim"]
    part = math.sqrt(2 / 3) * math.sqrt((1 - 4 / 8) / 4)
    assert ll["se"] is None and ll["se_mc"] is None
    assert ll["se_data"] == pytest.approx(part, rel=1e-12)
    assert "k = 1" in ll["undefined"]["se"] and "se_data" in ll["undefined"]["se"]
    assert bpd["se"] is None and bpd["se_data"] == pytest.approx(part / (10 * math.log(2)),
                                                                 rel=1e-12)
    table = tables.format_evaluation(r)
    row = next(line for line in table.splitlines() if line.startswith("log p(x) (nats)"))
    assert row.split()[-1] == f"≥{part:.3f}"
    bits = next(line for line in table.splitlines() if line.startswith("NLL (bits/dim)"))
    assert bits.split()[-1] == f"≥{part / (10 * math.log(2)):.4f}"
    assert "Monte Carlo part of the ± of log p(x) (and bits/dim) is undefined" in table
    assert "k = 1 importance sample" in table                    # the warning as before


def test_each_standard_error_names_its_rule_and_follows_it():
    """ELBO, rate, distortion and the gap: sd/√n (no finite-population correction); log p(x):
    √(se_mc² + (1 − n/N) sd²/n). Each summary says which, the JSON explains both, the table
    labels both."""

    r = evaluate._add_bits_per_dim(evaluate._report(_measures(100), 8, 100, 1, 0.01), 10)
    sd = math.sqrt(5 / 3)                                      # of 0, 1, 2, 3
    for key in ("elbo", "rate", "gap"):
        assert r[key]["se_rule"] == "across examples"
    assert r["elbo"]["se"] == pytest.approx(sd / 2, rel=1e-12)
    ll = r["log_likelihood"]
    assert ll["se_rule"] == r["nll_bits_per_dim"]["se_rule"] == "split mean"
    se_mc = math.sqrt(0.01 + 0.04 + 0.04 + 0.16) / 4
    se_data = math.sqrt(2 / 3) * math.sqrt(0.5 / 4)
    assert ll["se"] == pytest.approx(math.hypot(se_mc, se_data), rel=1e-12)
    assert set(r["se_rules"]) == {"across examples", "split mean"}
    assert "finite-population" in r["se_rules"]["split mean"]
    table = tables.format_evaluation(r)
    assert ("± of ELBO, rate, distortion, gap: std/√n across examples; ± of log p(x), "
            "bits/dim: Monte Carlo error ⊕ sampling n of N examples (finite-population "
            "correction)") in table


def test_evaluate_model_hands_x_to_the_models_device(monkeypatch):
    """CPU data reach a GPU model on its device ('meta' stands for cuda here)."""
    from conftest import ArrivedOn, arrival

    monkeypatch.setattr(evaluate, "device_of", lambda _model: torch.device("meta"))
    model = build_vae(ModelConfig(data_dim=6, latent_dim=2, hidden=(4,)))
    with pytest.raises(ArrivedOn) as seen:
        evaluate.evaluate_model(model, (torch.rand(3, 6) > 0.5).float(), num_samples=2,
                                infer=arrival)
    assert seen.value.device == torch.device("meta")
