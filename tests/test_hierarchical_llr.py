"""The hierarchical likelihood ratio LLR^{>k} (vaelab.use.hierarchical_llr).

Oracles: a two-layer model with scalar layers and fixed linear-Gaussian weights, where every
bound is an expectation of Gaussian log-densities under a Gaussian and has a closed form
(computed here in float64 from moments, independently of the library); the limit k = 0
(nothing replaced), which must be exactly zero; the limit k = n, which is E_p(z)[log p(x|z_1)];
and the direction of the score: larger where the top layer's q does not carry x.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from conftest import F64, make_linear_gaussian
from torch import nn
from torch.distributions import Independent, Normal

from vaelab.model import likelihoods, priors
from vaelab.model.hierarchical import BottomUpEncoder, HierarchicalVAE, LadderEncoder
from vaelab.model.layered import LikelihoodDecoder
from vaelab.use.hierarchical_llr import hierarchical_llr, is_hierarchical, prior_below
from vaelab.use.scores import ScoreOptions, anomaly_scores

pytestmark = pytest.mark.usefixtures("one_thread")

A, B, S1 = 1.0, -0.3, 0.6          # p(z1 | z2) = N(A z2 + B, S1²)
C, D, S0 = 1.5, 0.5, 1.5           # p(x | z1) = N(C z1 + D, S0²)
EV = ((0.4, 0.1, 0.7), (-0.5, 0.2, 0.9))   # evidence of layer i: N(w x + u, s²), (w, u, s)
MIN_SCALE = 1e-6


class Affine(nn.Module):
    """z [..., 1] → N(a z + b, s²) (event [1])."""

    def __init__(self, a: float, b: float, s: float) -> None:
        super().__init__()
        self.a, self.b, self.s = a, b, s

    def forward(self, z: torch.Tensor) -> Independent:
        return Independent(Normal(self.a * z + self.b, torch.full_like(z, self.s)), 1)


def _head(w: float, u: float, s: float) -> nn.Linear:
    """x → raw evidence [w x + u, softplus⁻¹(s − min_scale)]."""
    head = nn.Linear(1, 2).double()
    with torch.no_grad():
        head.weight.copy_(torch.tensor([[w], [0.0]]))
        head.bias.copy_(torch.tensor([u, math.log(math.expm1(s - MIN_SCALE))]))
    return head


def two_layer(inference: str) -> HierarchicalVAE:
    conditional = nn.ModuleList([Affine(A, B, S1)])
    net = nn.Linear(1, 1).double()
    with torch.no_grad():
        net.weight.fill_(C)
        net.bias.fill_(D)
    decoder = LikelihoodDecoder(net, likelihoods.Gaussian(1, "fixed", fixed_scale=S0), 1)
    if inference == "ladder":
        encoder: nn.Module = LadderEncoder([nn.Identity(), nn.Identity()],
                                           [_head(*EV[0]), _head(*EV[1])], (1, 1), conditional,
                                           MIN_SCALE)
    else:        # q(z1 | x) = the layer-1 evidence, q(z2 | z1) = N(0.3 z1 + 0.2, 0.5²)
        encoder = BottomUpEncoder(Affine(EV[0][0], EV[0][1], EV[0][2]), [Affine(0.3, 0.2, 0.5)],
                                  (1, 1))
    return HierarchicalVAE((1, 1), priors.StandardNormal(1).double(), conditional, decoder,
                           encoder).double()


def _e_log_normal(y_mean: float, y_var: float, s: float) -> float:
    """E log N(y; 0, s²) for y with mean y_mean and variance y_var."""
    return -0.5 * math.log(2 * math.pi * s * s) - (y_mean ** 2 + y_var) / (2 * s * s)


def _bound(x: float, m2: float, v2: float, alpha: float, beta: float, t: float,
           from_prior: bool) -> float:
    """E[log p(x, z) − log proposal(z)] for z2 ~ N(m2, v2), z1 = α z2 + β + t ε, where the
    proposal of z2 is N(m2, v2) itself (q's or the prior's) and z1's is N(α z2 + β, t²).
    log p(z2) − log proposal(z2) vanishes when the proposal of z2 is the prior."""
    z1_mean, z1_var = alpha * m2 + beta, alpha ** 2 * v2 + t * t
    out = _e_log_normal(x - C * z1_mean - D, C * C * z1_var, S0)              # log p(x | z1)
    # z1 − A z2 − B = (α − A) z2 + β − B + t ε
    out += _e_log_normal((alpha - A) * m2 + beta - B, (alpha - A) ** 2 * v2 + t * t, S1)
    out -= -0.5 * math.log(2 * math.pi * t * t) - 0.5                        # − log q(z1 | .)
    if not from_prior:                                                     # log p(z2) − log q(z2)
        out += _e_log_normal(m2, v2, 1.0) + 0.5 * math.log(2 * math.pi * v2) + 0.5
    return out


def ladder_truth(x: float, k: int) -> float:
    """L^{>k}(x) of the ladder model in closed form (k = 0: the ELBO L)."""
    (w1, u1, s1), (w2, u2, s2) = EV
    if k == 0:
        t2 = 1 / (1 / s1 ** 2 + 1 / S1 ** 2)      # q(z1 | z2, x): the precision-weighted merge
        alpha, beta = t2 * A / S1 ** 2, t2 * ((w1 * x + u1) / s1 ** 2 + B / S1 ** 2)
        return _bound(x, w2 * x + u2, s2 ** 2, alpha, beta, math.sqrt(t2), from_prior=False)
    if k == 1:     # z2 ~ q(z2 | x), z1 ~ p(z1 | z2): the proposal of z1 is p(z1 | z2) itself
        return _bound(x, w2 * x + u2, s2 ** 2, A, B, S1, from_prior=False)
    # k = 2: z2 ~ p(z2), z1 ~ p(z1 | z2): only log p(x | z1) remains
    return _e_log_normal(x - C * B - D, C * C * (A * A + S1 ** 2), S0)


def test_ladder_bounds_equal_their_closed_forms():
    model = two_layer("ladder")
    x = torch.tensor([[-1.0], [1.5], [2.5]], dtype=F64)
    q = model.encode(x)
    n = 200_000
    for k in (1, 2):
        llr, above = hierarchical_llr(model, q, x, k=k, num_samples=n, seed=3)
        want_above = np.array([ladder_truth(float(v), k) for v in x[:, 0]])
        want_llr = np.array([ladder_truth(float(v), 0) for v in x[:, 0]]) - want_above
        # Monte Carlo: per-draw sd of a few nats → SE ≈ 0.01 at 200,000 draws
        np.testing.assert_allclose(above.numpy(), want_above, atol=0.05)
        np.testing.assert_allclose(llr.numpy(), want_llr, atol=0.07)
        assert np.abs(want_llr).min() > 0.07      # so a zero (or sign-flipped) LLR would fail


def test_the_layers_below_k_come_from_the_prior_and_those_above_from_q():
    """Which layer is drawn from where, read off the proposal itself: at k = 1 the top layer
    has q's distribution N(w2 x + u2, s2²) and the bottom one p(z1 | z2)'s spread S1."""
    model = two_layer("ladder")
    x = torch.tensor([[0.8]], dtype=F64)
    proposal = prior_below(model, model.encode(x), 1)
    assert proposal.order == (1, 0)
    torch.manual_seed(0)
    z = proposal.sample((200_000,))[:, 0]
    w2, u2, s2 = EV[1]
    assert float(z[:, 1].mean()) == pytest.approx(w2 * 0.8 + u2, abs=0.01)
    assert float(z[:, 1].std()) == pytest.approx(s2, abs=0.01)
    residual = z[:, 0] - (A * z[:, 1] + B)
    assert float(residual.mean()) == pytest.approx(0.0, abs=0.01)
    assert float(residual.std()) == pytest.approx(S1, abs=0.01)


def test_llr_is_exactly_zero_when_no_layer_is_replaced():
    for inference in ("ladder", "bottom-up"):
        model = two_layer(inference)
        x = torch.tensor([[0.2], [1.7]], dtype=F64)
        llr, above = hierarchical_llr(model, model.encode(x), x, k=0, num_samples=50)
        assert torch.equal(llr, torch.zeros(2, dtype=F64))
        assert prior_below(model, model.encode(x), 0).order == model.encode(x).order


def test_bottom_up_at_k_n_and_refused_between():
    """k = n: E_p(z)[log p(x | z1)] whatever q; 0 < k < n needs q(z_{>k} | x) alone, which
    bottom-up inference does not give: one line naming the way out."""
    model = two_layer("bottom-up")
    x = torch.tensor([[-0.7], [1.2]], dtype=F64)
    _, above2 = hierarchical_llr(model, model.encode(x), x, k=2, num_samples=200_000)
    for i, v in enumerate(x[:, 0].tolist()):
        assert float(above2[i]) == pytest.approx(ladder_truth(v, 2), abs=0.05)
    with pytest.raises(ValueError, match=r"expected a model with top-down or ladder inference.*"
                                         r"--hierarchy top-down or ladder \(or draw every "
                                         r"layer from the prior: k = n\)$"):
        hierarchical_llr(model, model.encode(x), x, k=1)


def _set_top_evidence(model: HierarchicalVAE, w: float, u: float, s: float) -> None:
    """The ladder's top layer: q(z2 | x) = N(w x + u, s²)."""
    with torch.no_grad():
        model.encoder.heads[1].weight.copy_(torch.tensor([[w], [0.0]]))
        model.encoder.heads[1].bias.copy_(torch.tensor([u, math.log(math.expm1(s - MIN_SCALE))]))


def test_llr_is_larger_where_the_top_layer_does_not_explain_x():
    """The score's direction on a case whose answer is known: the same model with its top
    layer's q the exact posterior p(z2 | x) (linear-Gaussian: slope Cov(z2, x) / Var x) against
    q(z2 | x) = N(0, 1) whatever x (blind). Informed, the prior's z1 given q's z2 lands where x
    needs it and L^{>1} stays near L; blind, z1 is drawn without regard to x and L^{>1} falls
    further below L (closed forms: LLR 0.03 / 0.37 / 0.72 informed against 0.57 / 0.97 / 2.15
    blind at x = −3, 4, 6)."""
    x = torch.tensor([[-3.0], [4.0], [6.0]], dtype=F64)
    # z2 ~ N(0, 1), z1 = A z2 + B + S1 ε, x = C z1 + D + S0 ε': Cov(z2, x) = C A
    variance, cov = C * C * (A * A + S1 * S1) + S0 * S0, C * A
    informed, blind = two_layer("ladder"), two_layer("ladder")
    _set_top_evidence(informed, cov / variance, -cov / variance * (C * B + D),
                      math.sqrt(1 - cov * cov / variance))
    _set_top_evidence(blind, 0.0, 0.0, 1.0)
    informed_llr, blind_llr = (hierarchical_llr(m, m.encode(x), x, k=1, num_samples=100_000,
                                                seed=1)[0] for m in (informed, blind))
    assert bool((blind_llr > informed_llr + 0.4).all()), (informed_llr, blind_llr)


def test_k_outside_the_layers_and_one_layer_models_are_refused_in_one_line():
    model = two_layer("ladder")
    x = torch.zeros(2, 1, dtype=F64)
    with pytest.raises(ValueError, match=r"k \(--llr-k\): expected a layer index in 0\.\.2"):
        hierarchical_llr(model, model.encode(x), x, k=3)
    flat = make_linear_gaussian()
    assert not is_hierarchical(flat, flat.posterior(flat.sample(2)))
    with pytest.raises(ValueError, match="expected a hierarchical model"):
        anomaly_scores(flat, flat.sample(2), ["hierarchical-llr"], encoder=flat.posterior)


def test_anomaly_scores_column_and_orientation():
    """Through anomaly_scores: the column is L − L^{>k}, and −L^{>k} comes with it."""
    model = two_layer("ladder")
    x = torch.tensor([[0.3], [4.0]], dtype=F64)
    torch.manual_seed(0)
    cols = anomaly_scores(model, x, ["hierarchical-llr"],
                          options=ScoreOptions(elbo_samples=100_000, llr_k=1))
    want = np.array([ladder_truth(v, 0) - ladder_truth(v, 1) for v in (0.3, 4.0)])
    np.testing.assert_allclose(cols["hierarchical_llr"], want, atol=0.07)
    np.testing.assert_allclose(cols["neg_elbo_above_k"],
                               [-ladder_truth(v, 1) for v in (0.3, 4.0)], atol=0.05)
