"""Oracles for the importance-sampling proposals and the estimator dispatch
(vaelab.measure.proposals, vaelab.measure.estimators) on the linear-Gaussian model: its exact
posterior is Gaussian, so a full-covariance q refined per example reaches it and every
estimator fed the exact posterior returns log p(x) exactly."""

from __future__ import annotations

import pytest
import torch
from conftest import F64, linear_encoder, make_linear_gaussian

from vaelab.measure import estimators, proposals
from vaelab.measure.evaluate import evaluate_model, log_likelihood
from vaelab.measure.gaps import DeterministicMixture
from vaelab.model import families


@pytest.fixture
def lg_with_encoder():
    """LinearGaussian (D = 5, L = 2) with a crude linear full-covariance encoder attached."""
    model = make_linear_gaussian(5, 2).requires_grad_(False)
    model.encoder = linear_encoder(5, families.FullCovarianceNormal(2), scale=0.2)
    x = model.sample(6, generator=torch.Generator().manual_seed(3))
    return model, x, model.log_marginal(x)


def test_is_with_the_exact_posterior_is_exact(lg_with_encoder):
    """w = p(x, z) / p(z | x) = p(x) for every z: log p̂ = log p(x), SE 0, ESS = k."""
    model, x, exact_ll = lg_with_encoder
    est = log_likelihood(model, model.posterior(x), x, 50)
    torch.testing.assert_close(est.log_likelihood, exact_ll, rtol=0, atol=1e-10)
    assert (est.stderr < 1e-6).all()
    torch.testing.assert_close(est.ess, torch.full((6,), 50.0, dtype=F64))
    for estimator in (estimators.build_estimator("is", num_samples=20),
                      estimators.build_estimator("ais", steps=4, chains=3, leapfrog=2),
                      estimators.build_estimator("bdmc", steps=4, chains=3, leapfrog=2)):
        out = estimator(model, model.posterior(x), x)
        torch.testing.assert_close(out.log_likelihood, exact_ll, rtol=0, atol=1e-9)


def test_refined_q_reaches_the_exact_posterior(lg_with_encoder):
    """The family holds p(z | x), so q* ≈ p(z | x): its mean within 0.1 of the exact mean
    (Adam on a noisy ELBO); IS with it is within 0.02 nat of log p(x) with 200 draws, while
    the crude encoder's q has ESS < k/2 and errors of about 0.15 nat at the same k; the
    mixture is within 0.05 nat."""
    model, x, exact_ll = lg_with_encoder
    with torch.no_grad():
        q = model.encoder(x)
    q_star, grads = proposals.build_proposal("refined", model, q, x, steps=200)
    assert 0 < grads <= 400 * 8
    torch.testing.assert_close(q_star.mean, model.posterior(x).mean, rtol=0, atol=0.1)
    refined, encoder = (log_likelihood(model, p, x, 200) for p in (q_star, q))
    assert ((refined.log_likelihood - exact_ll).abs() < 0.02).all()
    assert (encoder.log_likelihood - exact_ll).abs().mean() > 0.08
    assert (refined.ess > 180).all() and (encoder.ess < 100).all()
    mix, _ = proposals.build_proposal("mixture", model, q, x, steps=200)
    assert isinstance(mix, DeterministicMixture)
    mixed = log_likelihood(model, mix, x, 200).log_likelihood
    assert ((mixed - exact_ll).abs() < 0.05).all()
    assert proposals.build_proposal("encoder", model, q, x) == (q, 0)


def test_evaluate_model_dispatches_to_the_estimator(lg_with_encoder):
    """evaluate_model(estimator=…) reports that estimator's log p̂ per example; the refined
    proposal is much closer to the exact log p(x) than the encoder's q at the same k."""
    model, x, exact_ll = lg_with_encoder
    model.encode = model.encoder.forward
    plain = evaluate_model(model, x, num_samples=100, per_example=True, seed=0)
    refined = evaluate_model(model, x, num_samples=100, per_example=True, seed=0,
                             estimator=estimators.ImportanceSampling("refined", num_samples=100,
                                                                     refine_steps=200))
    err = {name: (torch.tensor(r["per_example"]["log_likelihood"], dtype=F64) - exact_ll).abs()
           for name, r in (("plain", plain), ("refined", refined))}
    assert err["refined"].max() < 0.05 and 3 * err["refined"].mean() < err["plain"].mean()
    assert refined["elbo"] == plain["elbo"]        # the ELBO is always the encoder's


def test_seeded_evaluation_depends_on_the_seed_not_the_batching_order(lg_with_encoder):
    """seed=…: each batch is seeded from its first row, so repeating gives identical results
    and a different seed different ones."""
    model, x, _ = lg_with_encoder
    model.encode = model.encoder.forward
    runs = [evaluate_model(model, x, num_samples=30, batch_size=2, per_example=True, seed=s)
            for s in (4, 4, 5)]
    assert runs[0]["per_example"] == runs[1]["per_example"]
    assert runs[0]["per_example"] != runs[2]["per_example"]


def test_estimator_options_are_checked_by_name(lg_with_encoder):
    with pytest.raises(ValueError, match="estimator 'ais' has no option 'proposal'"):
        estimators.build_estimator("ais", proposal="refined")
    with pytest.raises(ValueError, match="estimator: expected one of 'is', 'ais', 'bdmc'"):
        estimators.build_estimator("vi")
    with pytest.raises(ValueError, match="chains: expected an integer >= 1, got 0"):
        estimators.build_estimator("ais", chains=0)
    with pytest.raises(ValueError, match="proposal: expected one of"):
        estimators.ImportanceSampling("prior")
    model, x, _ = lg_with_encoder
    plain = make_linear_gaussian(5, 2)
    with pytest.raises(TypeError, match="encoder"):
        proposals.build_proposal("refined", plain, model.posterior(x), x)
    e = estimators.build_estimator("ais", steps=10, chains=4, leapfrog=3)
    assert e.cost() == {"forward": 0, "gradient": 4 * (1 + 9 * 3)} and e.draws == 4
    assert estimators.build_estimator("is", num_samples=7).cost() == {"forward": 7,
                                                                      "gradient": 0}
    refined = estimators.build_estimator("is", proposal="refined", num_samples=7,
                                         refine_steps=5, refine_draws=3)
    assert refined.cost() == {"forward": 7, "gradient": 15} and refined.draws == 7
    assert refined.describe()["summary"] == "IS, k = 7, refined proposal"
    assert estimators.summary_of({"name": "ais", "steps": 10, "chains": 4, "leapfrog": 3,
                                  "ais_init": "prior"}) == ("AIS, 10 steps × 4 chains, "
                                                            "3 leapfrog, from the prior")
    assert "lower bound" in e.describe()["meaning"]
