"""The lecture's figures: their numbers against closed forms, their files at small size.

Oracles: ``torch.distributions.kl_divergence`` between Gaussians (for the grid integral), the
component-wise KL of a Gaussian sitting on one well-separated mode, the exact posterior and
log p(x) of the 1-D linear-Gaussian model, its ``elbo_closed_form``, the closed-form
φ*(θ) = θ / (θ² + σ²), and EM's tight bound right after each E-step.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch.distributions import Normal, kl_divergence

from vaelab.infer import objectives
from vaelab.model.exact import GaussianMixture
from vaelab.show import figures

F64 = torch.float64


pytestmark = pytest.mark.usefixtures("one_thread")


def t64(value: float) -> torch.Tensor:
    return torch.tensor(value, dtype=F64)


# ------------------------------------------------------------------------ bimodal posterior


def test_grid_kl_matches_the_closed_form_gaussian_kl():
    q = Normal(torch.tensor([2.0, -4.0, 0.3, 1.0], dtype=F64),
               torch.tensor([1.4, 0.75, 0.3, 3.0], dtype=F64))
    p = Normal(t64(1.0), t64(2.0))
    assert torch.allclose(figures.kl_grid(q, p), kl_divergence(q, p), atol=1e-10)


def gauss_hermite_kl(q: Normal, p, nodes: int = 200) -> float:
    """KL(q ‖ p) = E_q[log q − log p] by Gauss–Hermite quadrature: an independent integrator."""
    x, w = np.polynomial.hermite_e.hermegauss(nodes)
    z = q.loc + q.scale * torch.tensor(x, dtype=F64)
    f = q.log_prob(z) - p.log_prob(z)
    return (torch.tensor(w, dtype=F64) * f).sum().item() / math.sqrt(2 * math.pi)


def test_bimodal_candidates_kl_values():
    summary = figures.bimodal_posterior_summary(steps=100)
    p = summary["posterior"]
    for name, q, kl in summary["candidates"]:
        # quadrature converges slowly where q spans both modes (log p is far from polynomial)
        tol = 1e-3 if name.startswith("moment") else 1e-5
        assert math.isclose(kl, gauss_hermite_kl(q, p), abs_tol=tol), name
    kls = {name: kl for name, _, kl in summary["candidates"]}
    # p ≥ 0.3 N(−4, 0.8²), so KL(q ‖ p) ≤ KL(q ‖ N(−4, 0.8²)) − log 0.3, nearly tight here
    bound = kl_divergence(Normal(t64(-4.0), t64(0.75)), Normal(t64(-4.0), t64(0.8))).item()
    bound -= math.log(0.3)
    assert bound - 0.01 < kls["mean −4, std 0.75"] <= bound
    assert 0 < kls["mean 2, variance 2"] < kls["mean −4, std 0.75"]   # the lecture's verdict


def test_reverse_kl_optimum_locks_onto_one_mode():
    p = figures.bimodal_posterior()
    best, found = figures.best_reverse_kl_gaussian(p, steps=400)
    # on the heavier mode N(2, 1.2²): about that component, KL about −log 0.7
    assert abs(best.loc.item() - 2.0) < 0.05 and abs(best.scale.item() - 1.2) < 0.05
    kl_best = figures.kl_grid(best, p).item()
    assert -math.log(0.7) - 0.02 < kl_best < -math.log(0.7)
    # the start on the left finds the other, worse, local optimum: mode-seeking, not covering
    left = min(found, key=lambda q: q.loc.item())
    assert abs(left.loc.item() + 4.0) < 0.1
    assert figures.kl_grid(left, p).item() > kl_best + 0.5
    # the forward-KL Gaussian spans both modes and is worse under the reverse KL
    wide = figures.moment_matched_gaussian(p)
    assert abs(wide.loc.item() - (0.3 * -4 + 0.7 * 2)) < 1e-12
    assert figures.kl_grid(wide, p).item() > kl_best + 0.2


# ------------------------------------------------------------------------ family of bounds


def test_bound_family_lies_below_log_p_and_touches_at_its_anchor():
    x = figures.one_d_data(50)
    anchors = [0.5, 1.0, 2.2]
    thetas = torch.cat([torch.linspace(0.05, 3.0, 40, dtype=F64), torch.tensor(anchors,
                                                                               dtype=F64)])
    data = figures.bound_family(x, thetas, anchors)
    assert (data["elbo"] <= data["log_likelihood"] + 1e-10).all()
    touch = data["elbo"][:, -3:].diagonal()                  # curve j at θ = anchor j
    assert torch.allclose(touch, data["log_likelihood"][-3:], atol=1e-10)
    assert (data["log_likelihood"][-3:] - data["elbo"][:, -3:] > 1e-3).sum() == 6


def test_encoder_elbo_equals_the_linear_gaussian_closed_form():
    x = figures.one_d_data(20)
    theta, phi = 1.3, 0.4
    model = figures.linear_gaussian_1d(theta, 0.5)
    q = Normal(phi * x, 0.3 * torch.ones_like(x))
    q = torch.distributions.Independent(q, 1)
    expected = model.elbo_closed_form(x, q).mean()
    got = figures.encoder_elbo(t64(theta), t64(phi), x)
    assert torch.allclose(got, expected, atol=1e-12)
    mc = objectives.elbo(model, q, x, 20000).mean()           # and the library's own ELBO
    assert abs(mc.item() - got.item()) < 0.02


def test_alternating_climb_sits_on_the_optimal_phi_and_both_climbs_meet():
    x = figures.one_d_data()
    joint = figures.climb(x, (0.15, 1.5), "joint", steps=400, lr=0.02)
    alternating = figures.climb(x, (0.15, 1.5), "alternating", steps=400, lr=0.02)
    after_e = alternating[1::2]                                # after each φ convergence
    assert torch.allclose(after_e[:, 1], figures.optimal_phi(after_e[:, 0]), atol=1e-5)
    values = figures.encoder_elbo(alternating[:, 0], alternating[:, 1], x)
    assert (values.diff() > -1e-12).all()                      # never goes down
    assert torch.allclose(joint[-1], alternating[-1], atol=1e-3)
    theta, phi = (t.clone().requires_grad_(True) for t in joint[-1])
    grads = torch.autograd.grad(figures.encoder_elbo(theta, phi, x), (theta, phi))
    assert max(abs(g.item()) for g in grads) < 1e-3            # a stationary point


# ------------------------------------------------------------------------ EM vs VI


def test_elbo_equals_log_marginal_right_after_every_e_step():
    x = figures.mixture_data(200)
    model = GaussianMixture.init_from_data(x, 3, torch.Generator().manual_seed(0))
    gaps: list[float] = []

    def check(m: GaussianMixture, q) -> None:
        with torch.no_grad():
            bound = objectives.elbo(m, m.posterior(x), x)
            gaps.append((m.log_marginal(x) - bound).abs().max().item())
            shifted = torch.distributions.Categorical(logits=q.logits.roll(1, -1))
            assert (objectives.elbo(m, shifted, x) <= m.log_marginal(x) + 1e-9).all()

    history = model.fit_em(x, 20, tol=0.0, on_e_step=check)
    assert len(gaps) == 20 and max(gaps) < 1e-9
    assert all(b >= a - 1e-9 for a, b in zip(history, history[1:], strict=False))


def test_em_and_gradient_vi_climb_the_same_likelihood():
    x = figures.mixture_data(300)
    result = figures.em_vs_vi(x, em_iters=40, vi_steps=400)
    em, vi, vi_elbo = result["em"], result["vi"], result["vi_elbo"]
    assert em[0] == vi[0]                                      # the same start
    assert all(b >= a - 1e-9 for a, b in zip(em, em[1:], strict=False))
    assert all(e <= v + 1e-9 for e, v in zip(vi_elbo, vi, strict=False))
    assert vi[-1] > vi[0] + 0.5
    assert abs(vi[-1] - em[-1]) < 0.01                        # both reach the same optimum
    first_within = next(i for i, v in enumerate(em) if v > em[-1] - 0.01)
    assert first_within < next(i for i, v in enumerate(vi) if v > em[-1] - 0.01)


# ------------------------------------------------------------------------ the files


def test_make_all_draws_every_figure_at_small_size(tmp_path):
    paths = figures.make_all(tmp_path / "figs", small=True)
    assert [p.name for p in paths] == [f"{name}.png" for name in figures.FIGURES]
    for path in paths:
        data = path.read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20_000, path.name
    assert sorted(p.name for p in (tmp_path / "figs").iterdir()) == sorted(p.name
                                                                          for p in paths)
