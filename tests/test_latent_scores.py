"""Latent-space anomaly scores (vaelab.use.latent_scores; ``latent-density``, ``latent-knn``).

Oracles: codes on a grid, whose nearest-neighbour distances are known by hand; an encoder
q(z | x) = N(x, s² I), whose aggregate posterior is a Gaussian mixture computed here with
scipy in float64; the linear-Gaussian model with its exact posterior, through anomaly_scores.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from conftest import F64, make_linear_gaussian
from scipy.special import logsumexp
from scipy.stats import multivariate_normal
from test_scores import exact_encoder
from torch.distributions import Independent, Normal

from vaelab.use.latent_scores import aggregate_posterior_nll, codes, knn_distance
from vaelab.use.scores import ScoreOptions, anomaly_scores

pytestmark = pytest.mark.usefixtures("one_thread")

GRID = np.array([[i, j] for i in range(4) for j in range(4)], dtype=float)   # 16 codes


def test_knn_distance_on_a_grid():
    query = np.array([[0.5, 0.0], [2.0, 2.0], [10.0, 0.0]])
    # (0.5, 0): nearest (0,0), (1,0) at 0.5, then (0,1), (1,1) at √1.25
    np.testing.assert_allclose(knn_distance(query, GRID, neighbours=2)[0], 0.5)
    np.testing.assert_allclose(knn_distance(query, GRID, neighbours=4)[0],
                               (1 + 2 * math.sqrt(1.25)) / 4)
    one = knn_distance(query, GRID, neighbours=1)
    np.testing.assert_allclose(one, [0.5, 0.0, 7.0])      # on a code: 0; far away: 7
    assert one.argmax() == 2                               # higher = more anomalous
    with pytest.raises(ValueError, match="neighbours .*at most the 16 reference"):
        knn_distance(query, GRID, neighbours=17)


def _shifted(scale: float):
    return lambda x: Independent(Normal(x, torch.full_like(x, scale)), 1)


def test_aggregate_posterior_is_the_mixture_of_the_reference_posteriors():
    reference = torch.tensor(GRID, dtype=F64)
    z = torch.tensor([[0.5, 0.0], [1.0, 1.0], [1.5, 1.5], [8.0, -3.0]], dtype=F64)
    s = 0.7
    got = aggregate_posterior_nll(_shifted(s), z, reference, chunk_size=5).numpy()
    logs = np.stack([multivariate_normal(mean=c, cov=s * s * np.eye(2)).logpdf(z.numpy())
                     for c in GRID], axis=1)
    want = -(logsumexp(logs, axis=1) - math.log(len(GRID)))
    np.testing.assert_allclose(got, want, rtol=1e-12)
    assert got[3] > got[:3].max()               # far from every training posterior
    with pytest.raises(ValueError, match="reference: expected codes"):
        aggregate_posterior_nll(_shifted(s), z, reference[:0])


def test_scores_through_anomaly_scores_use_the_encoder_means():
    """Linear-Gaussian model with q = p(z | x): the code is the posterior mean, the aggregate
    posterior the mixture of the reference rows' exact posteriors (full covariance)."""
    model = make_linear_gaussian(data_dim=4, latent_dim=2)
    g = torch.Generator().manual_seed(2)
    reference, x = model.sample(30, generator=g), model.sample(6, generator=g) * 2
    encoder = exact_encoder(model)
    cols = anomaly_scores(model, x, ["latent-density", "latent-knn"], encoder=encoder,
                          reference=reference, options=ScoreOptions(neighbours=3, batch_size=4))
    post, post_ref = model.posterior(x), model.posterior(reference)
    code, ref_codes = post.loc.detach().numpy(), post_ref.loc.detach().numpy()
    cov = post_ref.covariance_matrix[0].detach().numpy()
    logs = np.stack([multivariate_normal(mean=c, cov=cov).logpdf(code) for c in ref_codes], 1)
    np.testing.assert_allclose(cols["latent_nll"], -(logsumexp(logs, 1) - math.log(30)),
                               rtol=1e-9)
    distances = np.sort(np.linalg.norm(code[:, None] - ref_codes[None], axis=-1), axis=1)
    np.testing.assert_allclose(cols["latent_knn"], distances[:, :3].mean(1), rtol=1e-9)
    np.testing.assert_allclose(codes(encoder, x, 4).numpy(), code)
    with pytest.raises(ValueError, match="reference: the latent-density, latent-knn score"):
        anomaly_scores(model, x, ["latent-density", "latent-knn"], encoder=encoder)


def test_the_aggregate_posterior_of_a_hierarchy_reads_every_layer():
    """A layered q (ladder and bottom-up): the broadcast [B, N] evaluation equals one
    q(code | x_n).log_prob per pair, over the concatenated layers."""
    from test_hierarchical_llr import two_layer

    x = torch.randn(5, 1, dtype=F64, generator=torch.Generator().manual_seed(0))
    reference = torch.randn(7, 1, dtype=F64, generator=torch.Generator().manual_seed(1))
    for inference in ("ladder", "bottom-up"):
        model = two_layer(inference)
        z = model.encode(x).mean                                  # [5, 2]: both layers
        got = aggregate_posterior_nll(model.encoder, z, reference, chunk_size=3)
        pairs = torch.stack([torch.stack([model.encode(reference[n:n + 1]).log_prob(z[i:i + 1])[0]
                                          for n in range(7)]) for i in range(5)])
        want = -(pairs.logsumexp(1) - math.log(7))
        torch.testing.assert_close(got, want.detach(), rtol=1e-12, atol=1e-12)
