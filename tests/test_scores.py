"""Anomaly scores (vaelab.use.scores) and detection metrics (vaelab.use.detect).

Oracles: hand-computed AUROC / AUPRC / FPR@95 on tiny cases; the linear-Gaussian model, whose
log p(x) and posterior are exact, so with q = p(z | x) the ELBO and the importance-sampled
log-likelihood equal log p(x) to rounding and rank points exactly by their true density, the
likelihood ratio is the closed-form difference of two marginals, and the regret of a shifted q
is KL(q ‖ p(z | x)) in closed form; zlib for compressed lengths; a tiny one-class run on real
Fashion-MNIST in which inverted and noise images score as anomalous.
"""

from __future__ import annotations

import math
import zlib

import numpy as np
import pytest
import torch
from conftest import F64, make_linear_gaussian
from torch import nn
from torch.distributions import MultivariateNormal, kl_divergence

from vaelab import data
from vaelab.model import families
from vaelab.model import vae as models
from vaelab.use.detect import anomaly_metrics, check_labels, roc_points
from vaelab.use.scores import (
    SCORE_NAMES,
    ScoreOptions,
    anomaly_scores,
    check_names,
    compressed_bits,
    likelihood_regret,
)

pytestmark = pytest.mark.usefixtures("one_thread")   # tiny tensors on shared cores

# --------------------------------------------------------------------------- metrics


def test_metrics_on_a_hand_computed_case():
    # pairs (anomaly, normal): 0.35>0.1, 0.35<0.4, 0.8>0.1, 0.8>0.4 → AUROC 3/4.
    # Ranked by score: 0.8 (A), 0.4 (N), 0.35 (A), 0.1 (N): AP = (1/1 + 2/3) / 2 = 5/6.
    # Flagging both anomalies needs threshold 0.35, which also flags 0.4: FPR = 1/2.
    m = anomaly_metrics([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1])
    assert m["auroc"] == pytest.approx(0.75, abs=1e-12)
    assert m["auprc"] == pytest.approx(5 / 6, abs=1e-12)
    assert m["fpr_at_95_tpr"] == pytest.approx(0.5, abs=1e-12)
    assert (m["num_normal"], m["num_anomalous"]) == (2, 2)


def test_metrics_perfect_reversed_tied_and_infinite_scores():
    assert anomaly_metrics([0, 1, 2, 3], [0, 0, 1, 1])["auroc"] == 1.0
    assert anomaly_metrics([0, 1, 2, 3], [0, 0, 1, 1])["fpr_at_95_tpr"] == 0.0
    assert anomaly_metrics([3, 2, 1, 0], [0, 0, 1, 1])["auroc"] == 0.0
    assert anomaly_metrics([3, 2, 1, 0], [0, 0, 1, 1])["fpr_at_95_tpr"] == 1.0
    assert anomaly_metrics([1, 1, 1, 1], [0, 1, 0, 1])["auroc"] == 0.5
    # ±inf keep their place at the ends (a zero likelihood is the most anomalous score)
    inf = math.inf
    assert anomaly_metrics([-inf, 0.0, 5.0, inf], [0, 0, 1, 1])["auroc"] == 1.0
    assert anomaly_metrics([inf, 0.0, 5.0, 1.0], [0, 1, 0, 1])["auroc"] == pytest.approx(0.0)
    # 95% TPR with 20 anomalies: 19 flagged suffice; the last anomaly is below every normal
    scores = np.r_[np.arange(10), 100 + np.arange(19), -1.0]
    labels = np.r_[np.zeros(10), np.ones(20)]
    assert anomaly_metrics(scores, labels)["fpr_at_95_tpr"] == 0.0
    assert anomaly_metrics(scores, labels)["auroc"] == pytest.approx(19 / 20)


def test_roc_points_go_from_0_0_to_1_1():
    fpr, tpr = roc_points([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1])
    assert (fpr[0], tpr[0], fpr[-1], tpr[-1]) == (0, 0, 1, 1)
    assert np.trapezoid(tpr, fpr) == pytest.approx(0.75)


@pytest.mark.parametrize("labels, message", [
    ([0, 1, 1], "shape (4,)"), ([0, 1, 2, 1], "0 (normal) or 1"),
    ([0, 0, 0, 0], "both normal"), (["a", "b", "c", "d"], "0 (normal) or 1")])
def test_bad_labels_are_named(labels, message):
    with pytest.raises(ValueError, match="labels") as info:
        check_labels(labels, 4)
    assert message in str(info.value)


def test_nan_scores_are_refused():
    with pytest.raises(ValueError, match="scores: expected no NaN, got 1"):
        anomaly_metrics([0.0, math.nan, 1.0], [0, 1, 1])


def test_score_names_are_checked():
    assert check_names(["elbo", "regret", "elbo"]) == ("elbo", "regret")
    with pytest.raises(ValueError, match="score.*'likelihood'"):
        check_names(["likelihood"])
    with pytest.raises(ValueError, match="scores: expected a non-empty list"):
        check_names("elbo")
    with pytest.raises(ValueError, match="num_samples"):
        ScoreOptions(num_samples=0)


# --------------------------------------------------------------------------- compressed lengths


def test_compressed_bits_is_zlib_without_an_image_shape_and_png_with_one():
    g = torch.Generator().manual_seed(0)
    x = torch.cat([torch.zeros(1, 784), torch.rand(1, 784, generator=g),
                   (torch.rand(1, 784, generator=g) < 0.5).float()])
    bits = compressed_bits(x)
    for row, got in zip(x, bits, strict=True):
        raw = (row.double() * 255).round().to(torch.uint8).numpy().tobytes()
        assert got == 8 * len(zlib.compress(raw, 9))
    png = compressed_bits(x, (1, 28, 28))
    assert png[0] < png[2] < png[1]          # constant < binary noise < 8-bit noise
    assert png[1] > 784 * 7.5                # uniform 8-bit noise is incompressible
    with pytest.raises(ValueError, match=r"x: input-complexity .* values in \[-1, 0\]"):
        compressed_bits(torch.tensor([[-1.0, 0.0]]))


# --------------------------------------------------------------------------- exact model


class ExactPosterior(nn.Module):
    """x → raw parameters of p(z | x) in FullCovarianceNormal form (+ an optional shift)."""

    def __init__(self, model, family: families.FullCovarianceNormal, shift=None) -> None:
        super().__init__()
        self.model, self.family = model, family
        self.shift = torch.zeros(model.latent_dim, dtype=F64) if shift is None else shift

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        post = self.model.posterior(x)
        tril = post.scale_tril.reshape(-1, *post.event_shape * 2)[0]   # shared by rows
        diag = tril.diagonal() - self.family.min_scale
        raw_diag = diag + torch.log(-torch.expm1(-diag))            # softplus⁻¹
        tril = tril.tril(-1) + torch.diag(raw_diag)
        rows, cols = torch.tril_indices(self.model.latent_dim, self.model.latent_dim)
        return torch.cat([post.loc + self.shift, tril[rows, cols].expand(x.shape[0], -1)], -1)


def exact_encoder(model, shift=None) -> models.Encoder:
    family = families.FullCovarianceNormal(model.latent_dim)
    return models.Encoder(ExactPosterior(model, family, shift), family)


def test_exact_posterior_encoder_is_the_posterior():
    model = make_linear_gaussian()
    x = model.sample(4, generator=torch.Generator().manual_seed(3))
    q, post = exact_encoder(model)(x), model.posterior(x)
    assert torch.allclose(q.loc, post.loc, atol=1e-12)
    assert torch.allclose(q.covariance_matrix, post.covariance_matrix, atol=1e-12)


def test_elbo_and_log_likelihood_scores_are_exact_and_rank_by_true_density():
    model = make_linear_gaussian()
    x = model.sample(40, generator=torch.Generator().manual_seed(4)) * 1.5
    scores = anomaly_scores(model, x, ["elbo", "log-likelihood"], encoder=exact_encoder(model),
                            options=ScoreOptions(num_samples=7, elbo_samples=4000, batch_size=16))
    truth = -model.log_marginal(x).detach().numpy()
    # importance weights p(x, z) / p(z | x) are all p(x): exact for any k, SE 0
    np.testing.assert_allclose(scores["nll"], truth, rtol=0, atol=1e-9)
    np.testing.assert_allclose(scores["nll_se"], 0, atol=1e-6)
    assert (np.argsort(scores["nll"]) == np.argsort(truth)).all()
    # the ELBO uses the analytic KL, so only its expectation is log p(x): Monte Carlo error
    # ~ sd / √4000 ≈ 0.03 nats here; the ranking is exact wherever densities differ by more
    np.testing.assert_allclose(scores["neg_elbo"], truth, rtol=0, atol=0.15)
    order = np.argsort(truth)
    gaps = np.diff(truth[order])
    assert (np.diff(scores["neg_elbo"][order])[gaps > 0.3] > 0).all()


def test_likelihood_ratio_is_the_difference_of_the_two_exact_marginals():
    model, background = make_linear_gaussian(seed=1), make_linear_gaussian(seed=5)
    x = model.sample(10, generator=torch.Generator().manual_seed(6))
    scores = anomaly_scores(model, x, ["likelihood-ratio"], encoder=exact_encoder(model),
                            background=(background, exact_encoder(background)),
                            options=ScoreOptions(num_samples=5))
    truth = (background.log_marginal(x) - model.log_marginal(x)).detach().numpy()
    np.testing.assert_allclose(scores["neg_llr"], truth, rtol=0, atol=1e-9)
    np.testing.assert_allclose(scores["nll_background"],
                               -background.log_marginal(x).detach().numpy(), atol=1e-9)


def test_input_complexity_is_nll_in_bits_minus_the_zlib_length():
    model = make_linear_gaussian(data_dim=16, latent_dim=2)
    x = torch.rand(6, 16, generator=torch.Generator().manual_seed(7), dtype=F64)
    x[0] = 0.5                                # a constant row compresses best
    scores = anomaly_scores(model, x, ["input-complexity"], encoder=exact_encoder(model))
    bits = compressed_bits(x).numpy()
    truth = -model.log_marginal(x).detach().numpy() / math.log(2) - bits
    np.testing.assert_allclose(scores["input_complexity"], truth, rtol=0, atol=1e-8)
    np.testing.assert_allclose(scores["compressed_bits"], bits)


def test_regret_of_a_shifted_q_is_its_kl_to_the_posterior():
    """q = p(z|x) shifted by s: ELBO(q) = log p(x) − ½ sᵀ Σ⁻¹ s, and q* = p(z|x) after fitting."""
    model = make_linear_gaussian(latent_dim=2)
    x = model.sample(5, generator=torch.Generator().manual_seed(8))
    shift = torch.tensor([1.5, -1.0], dtype=F64)
    encoder = exact_encoder(model, shift)
    raw = encoder.net(x)
    post = model.posterior(x)
    kl = kl_divergence(MultivariateNormal(post.loc + shift, scale_tril=post.scale_tril), post)
    regret = likelihood_regret(model, x, raw, encoder.family, steps=300, lr=5e-2,
                               num_samples=16, eval_samples=20000)
    assert kl.min() > 3
    # the rest: the optimizer stops ~0.002 nats short; Monte Carlo sd of the difference ~0.01
    torch.testing.assert_close(regret, kl.detach(), atol=0.05, rtol=0)
    # the exact posterior cannot be improved on: regret 0 up to optimizer noise
    exact = exact_encoder(model)
    zero = likelihood_regret(model, x, exact.net(x), exact.family, steps=200, lr=1e-3,
                             num_samples=16, eval_samples=20000)
    assert zero.abs().max() < 0.01


def test_scoring_needs_what_each_score_needs():
    model = make_linear_gaussian()
    x = model.sample(3)
    with pytest.raises(ValueError, match="background: the likelihood-ratio score needs"):
        anomaly_scores(model, x, ["likelihood-ratio"], encoder=exact_encoder(model))
    with pytest.raises(ValueError, match="encoder: scoring new data needs q"):
        anomaly_scores(model, x, ["elbo"])
    with pytest.raises(ValueError, match="score: regret re-fits q's parameters"):
        anomaly_scores(model, x, ["regret"], encoder=model.posterior)


# --------------------------------------------------------------------------- real data


@pytest.mark.skipif(
    not any((d / "train-images-idx3-ubyte.gz").is_file() or (d / "train-images-idx3-ubyte")
            .is_file() for d in data.search_dirs("fashion-mnist")),
    reason="Fashion-MNIST is not installed")
def test_one_class_fashion_mnist_flags_inverted_and_noise_images(tmp_path):
    from vaelab.config import RunConfig
    from vaelab.fit.train import train

    config = RunConfig.from_dict({"model": {"hidden": [64], "latent_dim": 8}, "train": {
        "classes": [1], "limit": 1500, "epochs": 3, "compile": False, "device": "cpu"}})
    model = train(config, tmp_path / "run", progress=False, log=None).model.eval()
    test = data.select_classes(data.load_dataset("fashion-mnist", "test"), [1]).x[:60]
    g = torch.Generator().manual_seed(0)
    normal = data.binarize(test, g)
    foreign = torch.cat([data.binarize(1 - test[:30], g),
                         data.binarize(torch.rand(30, 784, generator=g), g)])
    x = torch.cat([normal, foreign])
    labels = np.r_[np.zeros(60), np.ones(60)]
    scores = anomaly_scores(model, x, ["elbo", "log-likelihood", "regret"],
                            options=ScoreOptions(num_samples=20, regret_steps=10))
    for column in ("neg_elbo", "nll"):
        assert anomaly_metrics(scores[column], labels)["auroc"] == 1.0
        assert scores[column][60:].min() > scores[column][:60].max()
    assert set(SCORE_NAMES) == {"elbo", "log-likelihood", "input-complexity",
                                "likelihood-ratio", "regret", "typicality", "hierarchical-llr",
                                "latent-density", "latent-knn"}


def test_scores_carry_the_effective_sample_size_behind_nll_se():
    """nll_ess is the ESS of the same weights: the delta-method nll_se = √((k/ESS − 1)/(k − 1))
    (a crude encoder makes both vary across rows)."""
    model = make_linear_gaussian()
    x = model.sample(12, generator=torch.Generator().manual_seed(5))
    k = 9
    scores = anomaly_scores(model, x, ["log-likelihood"], encoder=exact_encoder(model, 1.5),
                            options=ScoreOptions(num_samples=k))
    ess = scores["nll_ess"]
    assert ess.shape == (12,) and bool(((ess >= 1 - 1e-9) & (ess <= k + 1e-9)).all())
    np.testing.assert_allclose(scores["nll_se"], np.sqrt((k / ess - 1).clip(0) / (k - 1)),
                               rtol=1e-6, atol=1e-9)
    assert ess.std() > 0.1


def test_score_warnings_are_evaluates():
    """The warnings about nll (and the background's nll) are honest.reliability_warnings of
    the columns, worded by what the likelihood means: tiny ESS, huge SE, k = 1."""
    from vaelab.measure import honest
    from vaelab.use.scores import sampling_warnings

    ess = np.array([1.0, 1.02, 40.0, 3.0])
    se = np.sqrt((50 / ess - 1) / 49)                          # ≈ 1 where ESS ≈ 1
    columns = {"nll": np.zeros(4), "nll_se": se, "nll_ess": ess}
    lines = sampling_warnings(columns, 50)
    assert lines == honest.reliability_warnings(torch.tensor(ess), torch.tensor(se), 50)
    assert len(lines) == 1 and "for 3 of 4 examples" in lines[0]
    assert "unnormalised score rests" in sampling_warnings(columns, 50, "score")[0]
    background = {**columns, "nll_background_se": se, "nll_background_ess": ess}
    assert "the background model's log p(x)" in sampling_warnings(background, 50)[1]
    one = sampling_warnings({"nll_se": np.full(4, np.nan), "nll_ess": np.ones(4)}, 1)
    assert one == honest.reliability_warnings(torch.ones(4), torch.full((4,), math.nan), 1)
    assert "single-sample bound" in one[0]


def test_detection_metrics_take_tensors_from_any_device():
    """Scores straight from a model (a tensor that needs grad, or bf16, as on a GPU) give the
    numbers of the plain list: np.asarray of such a tensor raised."""
    scores, labels = [0.1, 0.4, 0.35, 0.8, 0.5], [0, 0, 1, 1, 0]
    expected = anomaly_metrics(scores, labels)
    tracked = torch.tensor(scores, requires_grad=True)
    assert anomaly_metrics(tracked, torch.tensor(labels)) == expected
    assert anomaly_metrics(tracked.to(torch.bfloat16), torch.tensor(labels)) == expected
    fpr, tpr = roc_points(tracked, torch.tensor(labels))
    np.testing.assert_array_equal(fpr, roc_points(scores, labels)[0])


def test_anomaly_scores_hand_x_to_the_models_device(monkeypatch):
    """CPU data reach a GPU model's encoder on its device ('meta' stands for cuda here)."""
    from conftest import ArrivedOn, arrival

    from vaelab.config import ModelConfig
    from vaelab.model.vae import build_vae
    from vaelab.use import scores

    monkeypatch.setattr(scores, "device_of", lambda _model: torch.device("meta"))
    model = build_vae(ModelConfig(data_dim=6, latent_dim=2, hidden=(4,)))
    with pytest.raises(ArrivedOn) as seen:
        scores.anomaly_scores(model, (torch.rand(3, 6) > 0.5).float(), ["elbo"],
                              encoder=arrival)
    assert seen.value.device == torch.device("meta")


def _log_marginal_by_quadrature(model, x: torch.Tensor) -> torch.Tensor:
    """log p(x_obs) = log ∫ p(z) Π_{d observed} p(x_d | z) dz on a grid of the 1-d latent
    (NaN = missing): an oracle that uses no encoder and no importance sampling."""
    grid = torch.linspace(-9, 9, 6001)
    step = float(grid[1] - grid[0])
    with torch.no_grad():
        px = model.decode(grid[:, None, None])                       # batch [G, 1]
        dims = px.base_dist if hasattr(px, "base_dist") else px
        observed = ~torch.isnan(x)
        per_dim = dims.log_prob(torch.where(observed, x, torch.zeros_like(x)))   # [G, B, D]
        log_lik = (per_dim * observed).sum(-1)
        log_joint = log_lik + torch.distributions.Normal(0.0, 1.0).log_prob(grid)[:, None]
    return log_joint.logsumexp(0) + math.log(step)


def test_a_masked_model_scores_rows_with_missing_cells_by_the_observed_likelihood():
    """A model trained with missing="mask" defines p(x_obs): nll of a row with NaN cells is
    −log p(x_obs) (a quadrature oracle), complete rows are scored the same way, and the
    scores of the whole x are refused in one line on incomplete rows."""
    from vaelab.config import ModelConfig
    from vaelab.model.masked import build_model

    torch.manual_seed(0)
    model = build_model(ModelConfig(data_dim=3, latent_dim=1, hidden=(8,), missing="mask",
                                    likelihood="gaussian"))
    x = torch.randn(6, 3, generator=torch.Generator().manual_seed(2))
    x[0, 1] = x[3, 0] = x[3, 2] = math.nan
    torch.manual_seed(1)
    scores = anomaly_scores(model, x, ["elbo", "log-likelihood", "latent-knn"],
                            reference=x, options=ScoreOptions(num_samples=4000))
    truth = -_log_marginal_by_quadrature(model, x).numpy()
    np.testing.assert_allclose(scores["nll"], truth, rtol=0,
                               atol=max(0.02, 5 * float(scores["nll_se"].max())))
    assert (scores["neg_elbo"] >= truth - 0.05).all()           # a bound, nats above
    assert np.isfinite(scores["latent_knn"]).all()
    with pytest.raises(ValueError) as caught:
        anomaly_scores(model, x, ["regret"])
    assert "regret is defined on complete rows only" in str(caught.value)
    assert "got 2 rows with missing cells" in str(caught.value)
