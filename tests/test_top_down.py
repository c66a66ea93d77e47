"""vaelab.model.top_down: the two-path hierarchy (q(z2|x) q(z1|x,z2), p(x|z1,z2)) against
independent computations — its joint density by hand and log p(x) by Gauss-Hermite
quadrature, which importance sampling with its own q must reproduce."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from vaelab.config import ModelConfig
from vaelab.measure.evaluate import log_likelihood
from vaelab.model.top_down import SkipDecoder, TopDownEncoder
from vaelab.model.vae import build_vae


def tiny_model(prior: str = "standard_normal") -> torch.nn.Module:
    torch.manual_seed(3)
    config = ModelConfig(data_dim=3, latent_dim=(1, 1), hidden=(6,), hierarchy="top-down",
                         gated=True, prior=prior, prior_components=3)
    return build_vae(config).double().eval()


X = torch.tensor([[0.0, 1.0, 1.0], [1.0, 0.0, 0.0], [1.0, 1.0, 1.0]], dtype=torch.float64)


def test_builds_the_two_path_structure():
    model = tiny_model()
    assert isinstance(model.encoder, TopDownEncoder)
    assert isinstance(model.decoder, SkipDecoder)
    assert model.encoder.lower[0][0].in_features == 3 + 1       # q(z1 | x, z2) sees both


def test_log_joint_equals_the_hand_computation():
    model = tiny_model()
    torch.manual_seed(0)
    z = torch.randn(4, 3, 2, dtype=torch.float64)               # [k, B, z1 z2]
    z1, z2 = z[..., :1], z[..., 1:]
    cond = model.conditionals[0](z2).base_dist                 # p(z1 | z2)
    log_p = (torch.distributions.Normal(0.0, 1.0).log_prob(z2).squeeze(-1)
             + torch.distributions.Normal(cond.loc, cond.scale).log_prob(z1).squeeze(-1))
    logits = model.decoder.net(torch.cat([z1, z2], dim=-1))     # the decoder reads z1 AND z2
    log_px = (X * logits - torch.nn.functional.softplus(logits)).sum(-1)
    torch.testing.assert_close(model.log_joint(X, z), log_p + log_px)
    moved = z.clone()
    moved[..., 1] += 1.0                                        # change z2 only
    assert not torch.allclose(model.decode(moved).log_prob(X), model.decode(z).log_prob(X))


def quadrature_log_px(model, x: torch.Tensor, nodes: int = 80) -> np.ndarray:
    """log ∫∫ N(z2; 0, 1) p(z1 | z2) p(x | z1, z2) dz1 dz2 by nested Gauss-Hermite in float64."""
    t, w = np.polynomial.hermite.hermgauss(nodes)
    t, w = torch.from_numpy(t), torch.from_numpy(w) / math.sqrt(math.pi)
    z2 = (math.sqrt(2.0) * t)[:, None]                          # [n, 1], N(0, 1) nodes
    cond = model.conditionals[0](z2).base_dist
    z1 = cond.loc + cond.scale * math.sqrt(2.0) * t[None, :]    # [n, n]: p(z1 | z2) nodes
    z = torch.stack([z1, z2.expand_as(z1)], dim=-1)             # [n, n, 2]
    out = []
    for row in x:
        log_px = model.decode(z).log_prob(row)                  # [n, n]
        out.append(torch.logsumexp(log_px + w.log()[None, :] + w.log()[:, None], dim=(0, 1)))
    return torch.stack(out).detach().numpy()


def test_quadrature_is_converged():
    model = tiny_model()
    with torch.no_grad():
        np.testing.assert_allclose(quadrature_log_px(model, X, 60),
                                   quadrature_log_px(model, X, 90), atol=1e-9)


def test_importance_sampling_with_the_top_down_q_matches_quadrature():
    model = tiny_model()
    torch.manual_seed(1)
    with torch.no_grad():
        exact = quadrature_log_px(model, X)
        estimate = log_likelihood(model, model.encode(X), X, num_samples=40_000)
    got, se = estimate.log_likelihood.numpy(), estimate.stderr.numpy()
    assert np.all(se < 0.02)
    assert np.all(np.abs(got - exact) < 5 * se), (got, exact, se)


def test_vamp_prior_on_the_top_layer_mixes_q_of_z2():
    model = tiny_model("vamp")
    u = model.top_prior.pseudo_inputs.detach()
    q = model.encoder.top_posterior(u)                           # [K] components
    z2 = torch.linspace(-3, 3, 7, dtype=torch.float64)[:, None]
    expected = torch.logsumexp(q.log_prob(z2[:, None, :]), dim=1) - math.log(3)
    torch.testing.assert_close(model.top_prior().log_prob(z2), expected)


def test_per_example_family_starts_at_the_encoder():
    model = tiny_model()
    family, raw = model.encoder.per_example(X)
    torch.manual_seed(0)
    z = model.encode(X).sample((5,))
    torch.testing.assert_close(family(raw).log_prob(z), model.encode(X).log_prob(z))


def test_bottom_up_still_refuses_the_vamp_prior():
    with pytest.raises(ValueError, match="top-down"):
        build_vae(ModelConfig(data_dim=3, latent_dim=(1, 1), hidden=(6,), prior="vamp"))
