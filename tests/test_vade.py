"""VaDE-style clustering (vaelab.use.vade).

Oracles: scikit-learn's own GaussianMixture (the prior built from it has its weights, means
and variances, and its responsibilities are the GMM's ``predict_proba``); a scipy float64
computation of p(c | z); the Hungarian accuracy of a permuted perfect clustering; a tiny
well-separated synthetic mixture whose labels a pretrained VAE + VaDE recovers.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.special import logsumexp, softmax
from scipy.stats import norm

from vaelab.model import families, likelihoods, nets, priors
from vaelab.model.vae import VAE, Decoder, Encoder
from vaelab.use.cluster import cluster_metrics, matched_accuracy, prior_responsibilities
from vaelab.use.vade import VadeOptions, assign, fit_gmm, mixture_prior, vade

pytestmark = pytest.mark.usefixtures("one_thread")

CENTRES = np.array([[4.0, 0, 0, 0, 0, 0], [0, 4.0, 0, 0, 0, 0], [0, 0, 0, -4.0, 4.0, 0]])


def _mixture(n_per: int = 100, seed: int = 0) -> tuple[torch.Tensor, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(3), n_per)
    x = CENTRES[labels] + 0.4 * rng.normal(size=(len(labels), 6))
    return torch.tensor(x, dtype=torch.float32), labels


def _codes(seed: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.concatenate([rng.normal([-3, 0], [0.5, 1.0], (40, 2)),
                           rng.normal([3, 1], [1.2, 0.3], (60, 2))])


def test_hungarian_accuracy_of_a_permuted_perfect_clustering_is_one():
    labels = np.repeat([0, 1, 2, 3], 5)
    permuted = np.array([2, 0, 3, 1])[labels]
    assert matched_accuracy(labels, permuted) == 1.0
    assert cluster_metrics(labels, permuted) == pytest.approx(
        {"accuracy": 1.0, "nmi": 1.0, "ari": 1.0})


def test_the_prior_is_the_fitted_gmm():
    gmm = fit_gmm(_codes(), 2, seed=0)
    p = mixture_prior(gmm)()
    np.testing.assert_allclose(p.mixture_distribution.probs.detach().numpy(), gmm.weights_,
                               rtol=1e-5)
    comp = p.component_distribution.base_dist
    np.testing.assert_allclose(comp.loc.detach().numpy(), gmm.means_, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(comp.scale.detach().numpy() ** 2, gmm.covariances_, rtol=1e-4)
    with pytest.raises(ValueError, match="expected at most the 100 training codes, got 101"):
        fit_gmm(_codes(), 101)


def test_responsibilities_sum_to_one_and_match_scipy_and_sklearn():
    z = _codes()
    gmm = fit_gmm(z, 2, seed=0)
    resp = prior_responsibilities(mixture_prior(gmm)(), torch.tensor(z, dtype=torch.float32))
    resp = resp.double().numpy()
    np.testing.assert_allclose(resp.sum(1), 1.0, atol=1e-6)
    # float64 Bayes rule with scipy: log π_c + Σ_l log N(z_l; μ_cl, σ_cl²), normalised
    logs = np.log(gmm.weights_) + np.stack(
        [norm.logpdf(z, gmm.means_[c], np.sqrt(gmm.covariances_[c])).sum(1) for c in range(2)],
        axis=1)
    np.testing.assert_allclose(resp, softmax(logs, axis=1), atol=1e-5)
    np.testing.assert_allclose(resp, gmm.predict_proba(z), atol=1e-5)
    assert np.allclose(logsumexp(logs, axis=1), gmm.score_samples(z))


def _pretrained(x: torch.Tensor) -> VAE:
    torch.manual_seed(0)
    model = VAE(priors.StandardNormal(2),
                Decoder(nets.mlp(2, (32,), 12), likelihoods.Gaussian(6, "network")),
                Encoder(nets.mlp(6, (32,), 4), families.DiagonalNormal(2)))
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-2)
    for _ in range(100):
        loss = -model_elbo(model, x)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval()


def model_elbo(model: VAE, x: torch.Tensor) -> torch.Tensor:
    from vaelab.infer.objectives import elbo

    return elbo(model, model.encoder(x), x, validate=False).mean()


def test_vade_recovers_a_well_separated_mixture_and_leaves_the_input_model():
    x, labels = _mixture()
    model = _pretrained(x)
    result = vade(model, x, 3, options=VadeOptions(epochs=2, batch_size=100, lr=1e-3), seed=0)
    assert isinstance(model.prior_module, priors.StandardNormal)          # untouched
    assert isinstance(result.model.prior_module, priors.MixtureOfGaussians)
    assert len(result.history) == 2 and np.isfinite(result.history).all()
    test_x, test_labels = _mixture(50, seed=5)
    z, found, resp = assign(result.model, test_x)
    assert z.shape == (150, 2) and resp.shape == (150, 3)
    torch.testing.assert_close(resp.sum(1), torch.ones(150))
    metrics = cluster_metrics(test_labels, found)
    assert metrics["accuracy"] >= 0.98 and metrics["nmi"] >= 0.9
    # the GMM alone (epochs 0) already separates them; fine-tuning keeps the clusters
    start = vade(model, x, 3, options=VadeOptions(epochs=0), seed=0)
    assert start.history == []
    assert cluster_metrics(test_labels, assign(start.model, test_x)[1])["accuracy"] >= 0.98


def test_vade_needs_a_one_layer_model_with_an_encoder():
    from conftest import make_linear_gaussian

    with pytest.raises(ValueError, match=r"model \(--method vade\): VaDE replaces the prior"):
        vade(make_linear_gaussian(), torch.zeros(4, 5), 2)
