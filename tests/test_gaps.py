"""Gap decomposition (Cremer et al. 2018) against closed forms on linear-Gaussian models.

Oracles: exact log p(x) (``LinearGaussian.log_marginal``); with a full-covariance family the
best q is the exact posterior, so the approximation gap is 0; with a diagonal family the best q
under KL(q ‖ p) has the posterior mean and precisions diag(Λ), Λ the posterior precision, so
the approximation gap is KL(q* ‖ p(z | x)) = ½ (Σᵢ log Λᵢᵢ − log det Λ) for every x.
"""

from __future__ import annotations

import json
import math

import pytest
import torch
from conftest import linear_encoder  # noqa: E402

from vaelab.config import ModelConfig
from vaelab.infer.schemes import optimize_q
from vaelab.measure import gaps
from vaelab.model import exact, families
from vaelab.model import vae as models

F64 = torch.float64


pytestmark = pytest.mark.usefixtures("one_thread")


def correlated_linear_gaussian() -> exact.LinearGaussian:
    """D = 6, L = 2 with a posterior correlation of about −0.45 (importance weights of a
    diagonal proposal keep a finite variance, which needs |correlation| < ½ in 2-D)."""
    g = torch.Generator().manual_seed(0)
    weight = torch.randn(6, 2, generator=g, dtype=F64)
    weight[:, 1] = 0.2 * weight[:, 0] + 0.5 * weight[:, 1]
    return exact.LinearGaussian(weight, torch.zeros(6, dtype=F64), 0.7)



def best_diagonal_kl(model: exact.LinearGaussian, x: torch.Tensor) -> float:
    precision = torch.linalg.inv(model.posterior(x[:1]).covariance_matrix[0])
    return 0.5 * (precision.diagonal().log().sum() - torch.logdet(precision)).item()


def test_full_covariance_q_star_closes_the_approximation_gap(make_lg):
    model = make_lg(5, 2)
    x = model.sample(16, generator=torch.Generator().manual_seed(3))
    family = families.FullCovarianceNormal(2)
    report = gaps.gaps(model, x, encoder=linear_encoder(5, family, scale=0.2), num_samples=2000,
                       steps=3000, lr=5e-2, optimizer_samples=16, patience=50, seed=0)
    log_p = model.log_marginal(x)
    assert torch.allclose(report.log_likelihood, log_p, atol=0.02)
    approx, se = report.summary()["approximation_gap"]
    assert abs(approx) < 0.01 + 3 * se
    assert (log_p - report.elbo_optimized).mean() < 0.01
    assert (report.amortization_gap > 0.5).all()   # the crude encoder loses on every x
    q_phi = linear_encoder(5, family, scale=0.2)(x)
    exact_amortized = model.elbo_closed_form(x, q_phi)
    # L[q_φ] = 2000-sample mean of log p(x | z) minus the analytic KL: its standard error
    with torch.no_grad():
        se_phi = model.decode(q_phi.sample((2000,))).log_prob(x).std(0) / math.sqrt(2000)
    assert ((report.elbo_amortized - exact_amortized).abs() < 5 * se_phi + 1e-3).all()
    gap_error = report.amortization_gap - (log_p - exact_amortized)
    assert (gap_error.abs() < 5 * se_phi + 0.02).all()


def test_diagonal_approximation_gap_is_the_closed_form_kl():
    model = correlated_linear_gaussian()
    x = model.sample(16, generator=torch.Generator().manual_seed(3))
    kl_star = best_diagonal_kl(model, x)
    assert 0.08 < kl_star < 0.3                              # a gap worth measuring
    family = families.DiagonalNormal(2)
    report = gaps.gaps(model, x, encoder=linear_encoder(6, family, scale=0.2), num_samples=4000,
                       steps=3000, lr=2e-2, optimizer_samples=16, patience=100, seed=0)
    approx, se = report.summary()["approximation_gap"]
    assert abs(approx - kl_star) < 0.02 + 3 * se
    exact_gap = model.log_marginal(x) - report.elbo_optimized
    assert abs(exact_gap.mean().item() - kl_star) < 0.02


def test_optimized_diagonal_q_is_the_reverse_kl_optimum():
    """q* = N(posterior mean, diag(1 / Λᵢᵢ)), not the posterior's marginal variances."""
    model = correlated_linear_gaussian()
    x = model.sample(8, generator=torch.Generator().manual_seed(4))
    family = families.DiagonalNormal(2)
    raw, _ = optimize_q(model, x, family.initial_params(8, dtype=F64), family, steps=3000,
                        lr=2e-2, num_samples=16, patience=100)
    post = model.posterior(x)
    precision = torch.linalg.inv(post.covariance_matrix[0])
    q = family(raw)
    assert torch.allclose(q.mean, post.mean, atol=0.03)
    assert torch.allclose(q.stddev, precision.diagonal().rsqrt().expand(8, 2), rtol=0.04)
    marginal_sd = post.covariance_matrix[0].diagonal().sqrt()   # √(1 − ρ²) ≈ 0.87 times wider
    assert (q.stddev < 0.93 * marginal_sd).all()


def test_vae_gaps_are_non_negative_up_to_their_standard_errors():
    torch.manual_seed(0)
    model = models.build_vae(ModelConfig(data_dim=24, latent_dim=3, hidden=(16,),
                                         activation="tanh"))
    with torch.no_grad():
        for p in model.decoder.parameters():
            p.mul_(3)
    x = model.sample(24, generator=torch.Generator().manual_seed(1))
    report = gaps.gaps(model, x, num_samples=1000, steps=500, patience=50, seed=0)
    summary = report.summary()
    for name in ("approximation_gap", "amortization_gap", "inference_gap"):
        mean, se = summary[name]
        assert mean > -3 * se - 1e-3, name
    mean, se = summary["amortization_gap"]
    assert mean > 3 * se                # an untrained encoder leaves a real amortization gap
    total = report.approximation_gap + report.amortization_gap
    assert torch.allclose(total, report.inference_gap)


def test_report_gaps_writes_json_and_png_atomically(tmp_path, make_lg):
    model = make_lg(5, 2)
    x = model.sample(6, generator=torch.Generator().manual_seed(3))
    family = families.DiagonalNormal(2)
    report = gaps.report_gaps(model, x, num_samples=200, steps=200, out_dir=tmp_path / "out",
                              encoder=linear_encoder(5, family, scale=0.2), seed=1)
    files = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert files == ["gaps.json", "gaps.png"]                # no temporary files left
    saved = json.loads((tmp_path / "out" / "gaps.json").read_text())
    assert saved == json.loads(json.dumps(report.to_dict()))
    assert saved["num_examples"] == 6 and saved["num_samples"] == 200
    mean = saved["summary"]["amortization_gap"]["mean"]
    assert math.isclose(mean, report.amortization_gap.mean().item(), rel_tol=1e-6)
    assert len(saved["per_example"]["approximation_gap"]) == 6
    png = (tmp_path / "out" / "gaps.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    table = report.table()
    for label in ("log p(x)", "L[q*]", "L[q_phi]", "approximation_gap", "amortization_gap"):
        assert label in table


def test_gaps_is_reproducible_with_a_seed(make_lg):
    model = make_lg(5, 2)
    x = model.sample(4, generator=torch.Generator().manual_seed(3))
    encoder = linear_encoder(5, families.DiagonalNormal(2), scale=0.2)
    runs = [gaps.gaps(model, x, encoder=encoder, num_samples=100, steps=50, seed=3)
            for _ in range(2)]
    assert torch.equal(runs[0].log_likelihood, runs[1].log_likelihood)
    assert torch.equal(runs[0].elbo_optimized, runs[1].elbo_optimized)


def test_gaps_rejects_a_model_without_encoder_by_name(make_lg):
    model = make_lg(5, 2)
    with pytest.raises(TypeError, match="encoder: expected a vaelab.model.vae.Encoder"):
        gaps.gaps(model, torch.zeros(2, 5, dtype=F64))
    with pytest.raises(ValueError, match=r"x: expected shape \[batch, 5\]"):
        gaps.gaps(model, torch.zeros(2, 4, dtype=F64),
                  encoder=linear_encoder(5, families.DiagonalNormal(2), scale=0.2))


def test_gaps_hand_x_to_the_models_device(monkeypatch):
    """CPU data reach a GPU model's encoder on its device ('meta' stands for cuda here)."""
    from conftest import ArrivedOn, arrival

    class Encoder:
        per_example = staticmethod(arrival)

    monkeypatch.setattr(gaps, "device_of", lambda _model: torch.device("meta"))
    model = models.build_vae(ModelConfig(data_dim=6, latent_dim=2, hidden=(4,)))
    with pytest.raises(ArrivedOn) as seen:
        gaps.gaps(model, (torch.rand(3, 6) > 0.5).float(), encoder=Encoder())
    assert seen.value.device == torch.device("meta")
