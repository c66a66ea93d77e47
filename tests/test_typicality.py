"""The typicality test (vaelab.use.typicality; the ``typicality`` score of vaelab.use.scores).

Oracles: hand-computed batch statistics; a linear-Gaussian model, whose log p(x) is exact and
whose entropy has the closed form H = ½ log det(2πe Σ): the typical-set distance of the mode
is exactly D/2 nats (−log p(mode) = ½ log det(2π Σ)), while a point with −log p(x) = H scores 0.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from conftest import make_linear_gaussian
from test_scores import exact_encoder

from vaelab.use.scores import ScoreOptions, anomaly_scores
from vaelab.use.typicality import typicality

pytestmark = pytest.mark.usefixtures("one_thread")


def test_an_example_at_the_training_mean_scores_zero_and_minimal():
    ref = np.array([10.0, 12.0, 14.0])                 # Ĥ = 12
    nll = np.array([5.0, 11.0, 12.0, 13.5, 30.0])
    got = typicality(nll, ref)
    np.testing.assert_array_equal(got, [7.0, 1.0, 0.0, 1.5, 18.0])
    assert got.argmin() == 2
    # both directions are anomalous: more likely than the training data too
    assert got[0] > got[1] and got[4] > got[3]


def test_batches_of_m_share_their_mean_statistic():
    ref = np.array([2.0])
    nll = np.array([1.0, 5.0, 2.0, 2.0, 9.0])
    # batches (1, 5) → |3 − 2| = 1; (2, 2) → 0; the last, shorter one (9) → 7
    np.testing.assert_array_equal(typicality(nll, ref, batch=2), [1, 1, 0, 0, 7])
    # a batch can be typical when its members are not: 1 and 3 average to Ĥ
    assert typicality([1.0, 3.0], ref, batch=2).tolist() == [0.0, 0.0]
    with pytest.raises(ValueError, match="batch"):
        typicality(nll, ref, batch=0)
    with pytest.raises(ValueError, match="reference_nll: expected finite"):
        typicality(nll, [])


def test_gaussian_typical_set_distance_has_its_closed_form():
    model = make_linear_gaussian(data_dim=5, latent_dim=2)
    g = torch.Generator().manual_seed(11)
    reference = model.sample(4000, generator=g)
    cov = model.marginal().covariance_matrix.detach()       # p(x) = N(b, W Wᵀ + σ² I)
    mode = model.bias.detach().unsqueeze(0)
    truth_ref = -model.log_marginal(reference).detach().numpy()
    entropy_hat = truth_ref.mean()
    x = torch.cat([mode, reference[:3] * 3.0])
    torch.manual_seed(0)
    cols = anomaly_scores(model, x, ["typicality"], encoder=exact_encoder(model),
                          reference=reference, options=ScoreOptions(num_samples=3))
    nll = -model.log_marginal(x).detach().numpy()
    # exact log p(x) on both sides (the exact posterior makes every importance weight p(x))
    np.testing.assert_allclose(cols["typicality"], np.abs(nll - entropy_hat), atol=1e-8)
    # closed forms: H = ½ log det(2πe Σ), −log p(mode) = ½ log det(2π Σ), distance = D / 2
    sigma = cov.numpy()
    entropy = 0.5 * np.linalg.slogdet(2 * math.pi * math.e * sigma)[1]
    assert nll[0] == pytest.approx(0.5 * np.linalg.slogdet(2 * math.pi * sigma)[1], abs=1e-9)
    se = truth_ref.std() / math.sqrt(len(truth_ref))      # ≈ √(D/2) / √4000 ≈ 0.025
    assert entropy_hat == pytest.approx(entropy, abs=4 * se)
    assert cols["typicality"][0] == pytest.approx(5 / 2, abs=4 * se)
    assert cols["nll"][0] < nll[1:].min()        # the mode is the most likely point ...
    assert cols["typicality"][0] > 2             # ... and far from typical


def test_typicality_needs_reference_examples():
    model = make_linear_gaussian()
    with pytest.raises(ValueError, match="reference: the typicality score compares"):
        anomaly_scores(model, model.sample(3), ["typicality"], encoder=exact_encoder(model))
