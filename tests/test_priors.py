"""The mixture-of-Gaussians prior learns all of its parameters: the gradient of Σ_n log p(z_n)
against the responsibilities computed independently in numpy (float64)."""

from __future__ import annotations

import numpy as np
import torch

from vaelab.model import priors


def test_mixture_of_gaussians_gradients_are_the_responsibility_sums():
    """With π = softmax(a), r_nk = π_k N(z_n; μ_k, σ_k²) / p(z_n):
    ∂/∂a_k = Σ_n r_nk − N π_k; ∂/∂μ_k = Σ_n r_nk (z_n − μ_k)/σ_k²;
    ∂/∂ρ_k = Σ_n r_nk ((z_n − μ_k)²/σ_k³ − 1/σ_k) · sigmoid(ρ_k), σ = softplus(ρ)."""
    prior = priors.MixtureOfGaussians(2, 3).double()
    g = torch.Generator().manual_seed(21)
    with torch.no_grad():
        prior.logits.copy_(torch.tensor([0.3, -0.2, 0.5], dtype=torch.float64))
        prior.component_loc.copy_(torch.randn(3, 2, generator=g, dtype=torch.float64))
        prior.raw_scale.copy_(torch.randn(3, 2, generator=g, dtype=torch.float64))
    z = torch.randn(5, 2, generator=g, dtype=torch.float64)
    total = prior().log_prob(z).sum()
    got = torch.autograd.grad(total, [prior.logits, prior.component_loc, prior.raw_scale])

    a = np.array([0.3, -0.2, 0.5])
    mu = prior.component_loc.detach().numpy()
    rho = prior.raw_scale.detach().numpy()
    sigma = np.log1p(np.exp(rho))
    zz = z.numpy()
    pi = np.exp(a) / np.exp(a).sum()
    diff = zz[:, None, :] - mu[None]                                        # [N, K, L]
    log_comp = (-0.5 * (diff / sigma) ** 2 - np.log(sigma) - 0.5 * np.log(2 * np.pi)).sum(-1)
    joint = np.log(pi) + log_comp                                           # [N, K]
    r = np.exp(joint - np.logaddexp.reduce(joint, axis=1, keepdims=True))
    want_logits = r.sum(0) - 5 * pi
    want_loc = (r[:, :, None] * diff / sigma**2).sum(0)
    want_raw = ((r[:, :, None] * (diff**2 / sigma**3 - 1 / sigma)).sum(0)
                / (1 + np.exp(-rho)))
    np.testing.assert_allclose(got[0].numpy(), want_logits, rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(got[1].numpy(), want_loc, rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(got[2].numpy(), want_raw, rtol=1e-12, atol=1e-13)
    assert np.abs(want_logits).min() > 1e-3                     # every weight would move
