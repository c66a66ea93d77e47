"""Training on incomplete data refuses what was never observed (``vaelab.fit.masked``).

A column missing in every row (or a row missing every entry) carries nothing to learn, and
whatever the model "imputed" there would be invented: ``vaelab train --missing mask`` stops
with one line naming them, 1-based like every other position in a CSV message.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from conftest import run_cli
from scipy import integrate, special, stats
from torch.distributions import Independent, MultivariateNormal, Normal

from vaelab import data as data_
from vaelab.config import ModelConfig
from vaelab.infer import masked
from vaelab.infer.objectives import elbo_terms, log_weights
from vaelab.model import likelihoods, nets, priors
from vaelab.model.exact import LinearGaussian
from vaelab.model.masked import MaskedVAE, build_model, fit_standardization, split_missing
from vaelab.model.missingness import SelfMasking
from vaelab.model.vae import VAE, Decoder, build_vae
from vaelab.use.impute import impute, impute_with


def _csv(path, cells) -> None:
    path.write_text("a,b,c,d,e\n" + "\n".join(",".join(row) for row in cells) + "\n")


@pytest.fixture()
def cells():
    rng = np.random.default_rng(0)
    x = np.round(rng.random((40, 5)) * 10 - 5, 3)
    return [["" if rng.random() < 0.2 else repr(v) for v in row] for row in x.tolist()]


TRAIN = ["--missing", "mask", "--likelihood", "gaussian", "--binarize", "none", "--epochs", "1",
         "--hidden", "8", "--latent-dim", "2", "--quiet"]


def _one_error(code: int, out: str, err: str) -> str:
    assert code == 1 and out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("vaelab: error: "), err
    return lines[0]


def test_columns_never_observed_are_refused_by_name(cells, tmp_path, capsys):
    for row in cells:
        row[1], row[4] = "", "nan"           # the 2nd and 5th columns: never observed
    _csv(tmp_path / "t.csv", cells)
    line = _one_error(*run_cli(capsys, "train", "--data", tmp_path / "t.csv", "--out",
                               tmp_path / "run", *TRAIN))
    assert "2 column(s) missing in every row" in line and ": 2, 5 (1-based)" in line
    assert not (tmp_path / "run").exists()


def test_rows_never_observed_are_refused_by_name(cells, tmp_path, capsys):
    cells[6] = [""] * 5                      # data rows 7 and 30: every entry missing
    cells[29] = ["nan"] * 5
    _csv(tmp_path / "t.csv", cells)
    line = _one_error(*run_cli(capsys, "train", "--data", tmp_path / "t.csv", "--out",
                               tmp_path / "run", *TRAIN))
    assert "2 row(s) with every entry missing" in line and ": 7, 30 (1-based" in line


def test_a_column_seen_only_in_held_out_rows_is_refused(cells, tmp_path, capsys):
    for row in cells:
        row[2] = ""
    cells[0][2] = "1.5"                      # one value, in data row 1
    _csv(tmp_path / "t.csv", cells)
    from vaelab import data

    ds = data.load_dataset(tmp_path / "t.csv", allow_missing=True)
    train, _ = data.train_val_split(ds, 0.5, 1)
    assert np.isnan(train.x[:, 2].numpy()).all()   # seed 1 holds data row 1 out
    line = _one_error(*run_cli(capsys, "train", "--data", tmp_path / "t.csv", "--out",
                               tmp_path / "run", *TRAIN, "--val-fraction", "0.5", "--seed", "1"))
    assert "among the training rows" in line and ": 3 (1-based)" in line
    code, _, err = run_cli(capsys, "train", "--data", tmp_path / "t.csv", "--out",
                           tmp_path / "run0", *TRAIN, "--val-fraction", "0.5", "--seed", "0")
    assert code == 0, err                          # seed 0 keeps it for training


def test_drop_empty_rows_trains_without_them_and_says_which(cells, tmp_path, capsys):
    import json

    cells[6] = [""] * 5
    cells[29] = ["nan"] * 5
    _csv(tmp_path / "t.csv", cells)
    argv = [a for a in TRAIN if a != "--quiet"]
    code, out, err = run_cli(capsys, "train", "--data", tmp_path / "t.csv", "--out",
                             tmp_path / "run", *argv, "--val-fraction", "0", "--drop-empty-rows")
    assert code == 0, err
    assert "trained without 2 row(s)" in out and ": 7, 30 (1-based)" in out
    meta = json.loads((tmp_path / "run" / "config.json").read_text())
    assert meta["dataset"]["num_train"] == 38
    assert meta["train"]["drop_empty_rows"] is True


def test_drop_empty_rows_needs_missing_mask(tmp_path, capsys):
    np.save(tmp_path / "d.npy", np.random.default_rng(0).random((20, 3)).astype(np.float32))
    code, _, err = run_cli(capsys, "train", "--data", tmp_path / "d.npy", "--out",
                           tmp_path / "run", "--drop-empty-rows", "--epochs", "1")
    assert code == 2 and "--drop-empty-rows: needs --missing mask" in err


@pytest.mark.device
def test_masked_training_and_imputation_on_the_device(tmp_path, device):
    """Masked training runs on the device under test, and imputing CPU rows with the
    device model gives the CPU copy's imputations (to Monte Carlo error, K = 4000), with the
    observed entries returned bit for bit."""
    import copy

    import torch

    from vaelab.fit.train import train
    from vaelab.use.impute import impute

    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 2)) @ rng.normal(size=(2, 5)) + 0.1 * rng.normal(size=(200, 5))
    holes = np.where(rng.random(x.shape) < 0.2, np.nan, x)
    config = {"model": {"hidden": [16], "latent_dim": 2, "missing": "mask",
                        "likelihood": "gaussian"},
              "train": {"epochs": 2, "batch_size": 50, "binarize": "none",
                        "device": device.type}}
    run = train(config, tmp_path / "run", dataset=holes, log=None)
    model = run.model
    assert next(model.parameters()).device.type == device.type
    rows = holes[:20]
    torch.manual_seed(0)
    on_device = impute(model, rows, num_samples=4000)
    on_cpu = impute(copy.deepcopy(model).cpu(), rows, num_samples=4000)
    seen = ~np.isnan(rows)
    assert isinstance(on_device, np.ndarray) and np.array_equal(on_device[seen], rows[seen])
    np.testing.assert_allclose(on_device, on_cpu, atol=0.05 * np.nanstd(x))


# ------------------------------------------------------------------- learning from incomplete data
# Oracles for learning from incomplete data: the masked bounds of
# ``vaelab.infer.masked`` on probabilistic PCA (closed forms via numpy/scipy), not-MIWAE's
# missingness terms against enumeration and quadrature, the masked model's standardization,
# and training on data with NaN.


D, L = 6, 2


@pytest.fixture()
def _no_grad():
    """The oracles of this section compare values and do not differentiate (used by each of
    them, not autouse: the training tests above need autograd)."""
    with torch.no_grad():
        yield


def _ppca(seed: int = 0) -> LinearGaussian:
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(D, L, generator=g, dtype=torch.float64)
    b = torch.randn(D, generator=g, dtype=torch.float64)
    scale = 0.3 + torch.rand(D, generator=g, dtype=torch.float64)
    return LinearGaussian(w, b, scale)


def _data(model: LinearGaussian, n: int, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """x [n, D] from p(x) and a random mask (True = observed) with at least one observed."""
    torch.manual_seed(seed)
    x = model.marginal().sample((n,))
    mask = torch.rand(n, D) < 0.6
    mask[:, 0] |= ~mask.any(1)
    return x, mask


def _exact_observed(model: LinearGaussian, x: torch.Tensor, mask: torch.Tensor):
    """numpy/scipy per row: log p(x_o), posterior mean m and covariance S of z | x_o."""
    w, b = model.weight.detach().numpy(), model.bias.detach().numpy()
    s2 = model.noise_scale.detach().numpy() ** 2
    logp, means, covs = [], [], []
    for xi, mi in zip(x.numpy(), mask.numpy(), strict=True):
        wo, bo, so = w[mi], b[mi], s2[mi]
        logp.append(stats.multivariate_normal(bo, wo @ wo.T + np.diag(so)).logpdf(xi[mi]))
        cov = np.linalg.inv(np.eye(L) + wo.T @ (wo / so[:, None]))
        means.append(cov @ wo.T @ ((xi[mi] - bo) / so))
        covs.append(cov)
    return np.array(logp), np.array(means), np.array(covs)


def _posterior_q(means: np.ndarray, covs: np.ndarray, widen: float = 1.0, shift: float = 0.0):
    loc = torch.from_numpy(means) + shift
    return MultivariateNormal(loc, covariance_matrix=torch.from_numpy(covs) * widen**2)


# ------------------------------------------------------------------ closed forms (PPCA)


@pytest.mark.usefixtures("_no_grad")
def test_masked_log_weights_at_the_exact_posterior_equal_the_observed_log_marginal():
    model = _ppca()
    x, mask = _data(model, 40)
    logp, means, covs = _exact_observed(model, x, mask)
    q = _posterior_q(means, covs)
    values = torch.where(mask, x, torch.zeros_like(x))
    torch.manual_seed(3)
    lw = masked.masked_draws(model, q, values, mask, 16).log_weights          # [16, 40]
    # q = p(z | x_o) makes every weight p(x_o): zero variance, the bound is tight
    np.testing.assert_allclose(lw.numpy(), np.broadcast_to(logp, lw.shape), atol=1e-9)
    bound = masked.masked_iwae_bound(model, q, values, mask, 8)
    np.testing.assert_allclose(bound.numpy(), logp, atol=1e-9)
    terms = masked.masked_elbo_terms(model, q, values, mask, 4)
    np.testing.assert_allclose(terms.elbo.numpy(), logp, atol=1e-9)


@pytest.mark.usefixtures("_no_grad")
def test_masked_bounds_below_the_observed_marginal_and_rise_with_k():
    model = _ppca(2)
    x, mask = _data(model, 30, seed=4)
    logp, means, covs = _exact_observed(model, x, mask)
    q = _posterior_q(means, covs, widen=1.6, shift=0.4)
    values = torch.where(mask, x, torch.zeros_like(x))
    torch.manual_seed(0)
    elbo = masked.masked_elbo_terms(model, q, values, mask, 4000).elbo.numpy()
    iwae = masked.masked_iwae_bound(model, q, values, mask, 4000).numpy()
    assert np.all(elbo < logp - 1e-3)                    # a strict gap for a wrong q
    assert np.all(elbo < iwae)
    # L_K → log p(x_o): within 5 standard errors of the importance-sampling estimate
    lw = masked.masked_draws(model, q, values, mask, 20000).log_weights.numpy()
    w = np.exp(lw - lw.max(0))
    rel_se = w.std(0) / w.mean(0) / np.sqrt(w.shape[0])
    estimate = np.log(w.mean(0)) + lw.max(0)
    assert np.all(np.abs(estimate - logp) < 5 * rel_se + 1e-9)
    assert rel_se.max() < 0.05


@pytest.mark.usefixtures("_no_grad")
def test_missing_entries_do_not_enter_the_bound():
    model = _ppca()
    x, mask = _data(model, 10)
    _, means, covs = _exact_observed(model, x, mask)
    q = _posterior_q(means, covs, widen=1.3)
    junk = torch.where(mask, x, torch.full_like(x, 1e6))
    zero = torch.where(mask, x, torch.zeros_like(x))
    torch.manual_seed(5)
    a = masked.masked_draws(model, q, junk, mask, 7).log_weights
    torch.manual_seed(5)
    b = masked.masked_draws(model, q, zero, mask, 7).log_weights
    assert torch.equal(a, b)


@pytest.mark.usefixtures("_no_grad")
def test_no_missing_values_give_the_ordinary_bounds():
    """All entries observed: the same numbers as vaelab.infer.objectives, same draws."""
    model = _ppca()
    x = _data(model, 12)[0]
    mask = torch.ones_like(x, dtype=torch.bool)
    q = _posterior_q(*_exact_observed(model, x, mask)[1:], widen=1.4, shift=0.3)
    torch.manual_seed(9)
    ours = masked.masked_draws(model, q, x, mask, 5).log_weights
    torch.manual_seed(9)
    ref = log_weights(model, q, x, 5)
    torch.testing.assert_close(ours, ref, rtol=0, atol=1e-12)
    torch.manual_seed(2)
    ours_elbo = masked.masked_elbo_terms(model, q, x, mask, 3)
    torch.manual_seed(2)
    ref_elbo = elbo_terms(model, q, x, 3, kl="mc")
    torch.testing.assert_close(ours_elbo.elbo, ref_elbo.elbo, rtol=0, atol=1e-12)


@pytest.mark.usefixtures("_no_grad")
def test_a_row_with_nothing_observed_has_bound_zero_under_the_prior():
    """log p(x_∅) = 0: with q = p(z) every log-weight is exactly 0 for an empty row."""
    model = _ppca()
    x, mask = _data(model, 5)
    mask[2] = False
    q = Independent(Normal(torch.zeros(5, L, dtype=torch.float64),
                           torch.ones(5, L, dtype=torch.float64)), 1)
    lw = masked.masked_draws(model, q, torch.where(mask, x, 0 * x), mask, 11).log_weights
    assert torch.equal(lw[:, 2], torch.zeros(11, dtype=torch.float64))


# ------------------------------------------------------------------ imputation (PPCA)


def _conditional_mean(model, means, mask, x):
    w, b = model.weight.detach().numpy(), model.bias.detach().numpy()
    return np.where(mask.numpy(), x.numpy(), means @ w.T + b)


@pytest.mark.usefixtures("_no_grad")
def test_importance_weighted_imputation_converges_to_the_exact_conditional_mean():
    model = _ppca(1)
    x, mask = _data(model, 25, seed=6)
    _, means, covs = _exact_observed(model, x, mask)
    exact = _conditional_mean(model, means, mask, x)
    q = _posterior_q(means, covs, widen=1.5, shift=0.5)          # a poor proposal
    values = torch.where(mask, x, torch.zeros_like(x))
    errors = {}
    for k in (10, 100, 20000):
        torch.manual_seed(k)
        est = impute_with(model, q, values, mask, k).numpy()
        errors[k] = np.abs(est - exact)[~mask.numpy()].max()
    assert errors[20000] < 0.03
    assert errors[20000] < errors[100] < errors[10]


@pytest.mark.usefixtures("_no_grad")
def test_multiple_imputations_are_draws_from_the_exact_conditional():
    """SIR draws of x_mis: mean W_m m + b_m, covariance W_m S W_mᵀ + diag σ_m² (closed form)."""
    model = _ppca(3)
    x, mask = _data(model, 1, seed=2)
    mask[0] = torch.tensor([True, False, True, False, False, True])
    _, means, covs = _exact_observed(model, x, mask)
    q = _posterior_q(means, covs, widen=1.3)
    values = torch.where(mask, x, torch.zeros_like(x))
    torch.manual_seed(0)
    draws = impute_with(model, q, values, mask, 4000, draws=6000)[:, 0].numpy()  # [M, D]
    mis = ~mask[0].numpy()
    w, b = model.weight.detach().numpy()[mis], model.bias.detach().numpy()[mis]
    s2 = model.noise_scale.detach().numpy()[mis] ** 2
    cov = w @ covs[0] @ w.T + np.diag(s2)
    np.testing.assert_allclose(draws[:, mis].mean(0), w @ means[0] + b,
                               atol=4 * np.sqrt(np.diag(cov) / 6000).max() + 0.02)
    np.testing.assert_allclose(np.cov(draws[:, mis].T), cov, atol=0.1 * np.abs(cov).max())


def _interval_coverage(draws: np.ndarray, x: np.ndarray, hidden: np.ndarray,
                       level: float = 0.9) -> float:
    """Share of the hidden x inside the central ``level`` interval of draws [M, N, D]."""
    lo, hi = np.quantile(draws, [(1 - level) / 2, (1 + level) / 2], axis=0)
    return float(((x >= lo) & (x <= hi))[hidden].mean())


@pytest.mark.usefixtures("_no_grad")
def test_intervals_of_multiple_imputations_cover_the_hidden_values_at_their_level():
    """x ~ p(x) and the mask is MCAR, so each hidden value is a draw from the exact conditional
    p(x_mis | x_obs): the central 90 % interval of M SIR draws (many importance draws behind
    a poor proposal) must hold ~90 % of them."""
    model = _ppca(4)
    x, mask = _data(model, 600, seed=7)
    _, means, covs = _exact_observed(model, x, mask)
    q = _posterior_q(means, covs, widen=1.4, shift=0.3)
    torch.manual_seed(0)
    draws = impute_with(model, q, torch.where(mask, x, 0 * x), mask, 2000, draws=200).numpy()
    hidden = ~mask.numpy()
    assert hidden.sum() > 1000          # binomial SE of the share below 0.01
    assert 0.87 < _interval_coverage(draws, x.numpy(), hidden) < 0.93


@pytest.mark.usefixtures("_no_grad")
def test_each_multiple_imputation_draws_its_own_value_given_the_picked_z():
    """With K = 1 every pick is z_1, so a row's M draws are M draws of p(x | z_1) =
    N(W z_1 + b, σ²): their variance is the decoder's σ², not 0 (one value repeated M
    times, which made the intervals of few effective importance draws far too narrow)."""
    model = _ppca(4)
    x, mask = _data(model, 300, seed=7)
    _, means, covs = _exact_observed(model, x, mask)
    torch.manual_seed(0)
    draws = impute_with(model, _posterior_q(means, covs), torch.where(mask, x, 0 * x), mask,
                        1, draws=400).numpy()                        # [M, N, D]
    hidden = ~mask.numpy()
    row_var = np.where(hidden, draws.var(0, ddof=1), np.nan)         # [N, D]
    s2 = model.noise_scale.numpy() ** 2
    np.testing.assert_allclose(np.nanmean(row_var, 0), s2, rtol=0.05)


# ------------------------------------------------------------------ not-MIWAE terms


def _bernoulli_model(d: int, seed: int = 0) -> VAE:
    torch.manual_seed(seed)
    dec = Decoder(nets.MLP(2, (8,), d), likelihoods.Bernoulli())
    return VAE(priors.StandardNormal(2), dec)


@pytest.mark.usefixtures("_no_grad")
def test_bernoulli_missing_values_are_summed_out_exactly():
    """log p(x_o, m | z) vs enumeration of every x_mis ∈ {0,1}^|mis| (independent code)."""
    d = 4
    model = _bernoulli_model(d).double()
    mech = SelfMasking(d).double()
    with torch.no_grad():
        mech.weight.copy_(torch.tensor([1.5, -2.0, 0.7, 3.0]))
        mech.bias.copy_(torch.tensor([-0.3, 0.4, 0.0, -1.0]))
    x = torch.tensor([[1.0, 0.0, 1.0, 0.0]], dtype=torch.float64)
    mask = torch.tensor([[True, False, True, False]])
    q = Independent(Normal(torch.zeros(1, 2, dtype=torch.float64),
                           torch.ones(1, 2, dtype=torch.float64)), 1)
    torch.manual_seed(1)
    d_ = masked.masked_draws(model, q, torch.where(mask, x, 0 * x), mask, 3,
                             missing_logits=mech, want_imputations=True)
    torch.manual_seed(1)
    z = q.rsample((3,))
    probs = torch.sigmoid(model.decoder.net(z)).detach().numpy()[:, 0]      # [3, D]
    w, c = mech.weight.detach().numpy(), mech.bias.detach().numpy()
    miss_p = lambda v: 1 / (1 + np.exp(-(w * v + c)))                       # noqa: E731
    for k in range(3):
        total = 0.0
        for xm in itertools.product((0.0, 1.0), repeat=2):
            full = np.array([1.0, xm[0], 1.0, xm[1]])
            px = np.prod(np.where(full == 1, probs[k], 1 - probs[k]))
            m = np.array([0.0, 1.0, 0.0, 1.0])
            pm = np.prod(np.where(m == 1, miss_p(full), 1 - miss_p(full)))
            total += px * pm
        assert d_.log_likelihood[k, 0].item() == pytest.approx(math.log(total), abs=1e-10)
        # E[x_d | z, m] for the missing entries by the same enumeration
        p1 = probs[k, 1] * miss_p(1.0)[1] / (probs[k, 1] * miss_p(1.0)[1]
                                             + (1 - probs[k, 1]) * miss_p(0.0)[1])
        assert d_.mean[k, 0, 1].item() == pytest.approx(p1, abs=1e-10)


@pytest.mark.usefixtures("_no_grad")
def test_gaussian_missingness_term_is_unbiased_for_the_quadrature():
    """exp(term) for one missing Gaussian entry estimates ∫ N(x; μ, σ²) σ(w x + c) dx."""
    mu, sigma, w, c = 0.4, 0.8, 2.0, -0.5
    px = Independent(Normal(torch.full((200000, 1, 1), mu, dtype=torch.float64),
                            torch.full((200000, 1, 1), sigma, dtype=torch.float64)), 1)
    mask = torch.zeros(1, 1, dtype=torch.bool)
    torch.manual_seed(0)
    term, _, _ = masked._missingness_term(px, torch.zeros(1, 1, dtype=torch.float64), mask,
                                          lambda v: w * v + c, False)
    vals = term.exp().numpy().ravel()
    exact = integrate.quad(lambda t: stats.norm.pdf(t, mu, sigma) * special.expit(w * t + c),
                           -np.inf, np.inf)[0]
    assert abs(vals.mean() - exact) < 4 * vals.std() / math.sqrt(len(vals))


@pytest.mark.usefixtures("_no_grad")
def test_self_masking_log_prob_is_the_logistic_likelihood():
    mech = SelfMasking(3)
    with torch.no_grad():
        mech.weight.copy_(torch.tensor([1.0, -2.0, 0.5]))
        mech.bias.copy_(torch.tensor([0.1, 0.2, -0.3]))
    x = torch.tensor([[0.5, -1.0, 2.0]])
    m = torch.tensor([[True, False, True]])
    p = 1 / (1 + np.exp(-(np.array([1.0, -2.0, 0.5]) * x.numpy() + [0.1, 0.2, -0.3])))
    expected = np.log(np.where(m.numpy(), p, 1 - p)).sum()
    assert mech.log_prob(m, x).item() == pytest.approx(expected, abs=1e-6)


# ------------------------------------------------------------------ the masked model


def _masked_model(likelihood: str = "gaussian", missing_model: str = "none") -> MaskedVAE:
    torch.manual_seed(0)
    cfg = ModelConfig(data_dim=D, latent_dim=L, hidden=(16,), likelihood=likelihood,
                      missing="mask", missing_model=missing_model)
    return build_model(cfg)


@pytest.mark.usefixtures("_no_grad")
def test_standardization_uses_observed_entries_and_the_density_keeps_its_jacobian():
    model = _masked_model()
    g = torch.Generator().manual_seed(0)
    x = torch.randn(50, D, generator=g) * torch.arange(1.0, D + 1) + 10
    x[torch.rand(50, D, generator=g) < 0.3] = math.nan
    x[:, 3] = math.nan                                    # a column with nothing observed
    fit_standardization(model, x)
    arr = x.numpy().astype(np.float64)
    loc = np.where(np.isnan(arr).all(0), 0.0, np.nanmean(np.where(np.isnan(arr).all(0)[None],
                                                                   0.0, arr), 0))
    std = np.nanstd(np.where(np.isnan(arr).all(0)[None], 0.0, arr), 0, ddof=1)
    std[3] = 1.0
    np.testing.assert_allclose(model.data_loc.numpy(), loc, rtol=1e-5)
    np.testing.assert_allclose(model.data_scale.numpy(), std, rtol=1e-5)
    z = torch.randn(4, L)
    base = model.decoder(z)                                # standardized units
    raw = model.decode(z)                                  # the data's units
    y = torch.randn(4, D) * 3 + 10
    jac = model.data_scale.log().sum()
    torch.testing.assert_close(raw.log_prob(y),
                               base.log_prob((y - model.data_loc) / model.data_scale) - jac)


@pytest.mark.usefixtures("_no_grad")
def test_the_encoder_sees_zero_filled_values_and_the_mask():
    model = _masked_model()
    x = torch.tensor([[1.0, math.nan, 2.0, math.nan, 0.5, -1.0]])
    expected_in = torch.tensor([[1.0, 0.0, 2.0, 0.0, 0.5, -1.0, 1, 0, 1, 0, 1, 1]])
    torch.testing.assert_close(model.encoder.net(x), model.encoder.net.net(expected_in))


@pytest.mark.usefixtures("_no_grad")
def test_missingness_parameters_are_trained_with_theta():
    model = _masked_model(missing_model="self-masking")
    ids = {id(p) for p in model.generative_parameters()}
    assert {id(model.missingness.weight), id(model.missingness.bias)} <= ids
    assert id(model.encoder.net.net[0].weight) not in ids


@pytest.mark.usefixtures("_no_grad")
def test_imputation_keeps_observed_entries_bit_for_bit():
    model = _masked_model().double()
    g = torch.Generator().manual_seed(1)
    x = torch.randn(30, D, generator=g, dtype=torch.float64) * 1e3 + math.pi
    x[torch.rand(30, D, generator=g) < 0.4] = math.nan
    x[4] = math.nan                                                # a whole row missing
    observed = ~torch.isnan(x)
    for draws in (None, 3):
        out = impute(model, x, num_samples=20, draws=draws, seed=0)
        assert out.dtype == torch.float64 and not bool(torch.isnan(out).any())
        stacked = out if draws else out[None]
        for single in stacked:
            assert torch.equal(single[observed].view(torch.int64), x[observed].view(torch.int64))
    as_numpy = impute(model, x.numpy(), num_samples=20, seed=0)
    assert isinstance(as_numpy, np.ndarray)
    assert np.array_equal(as_numpy, impute(model, x, num_samples=20, seed=0).numpy())


@pytest.mark.usefixtures("_no_grad")
def test_binary_imputation_is_the_mode():
    model = _masked_model("bernoulli")
    x = (torch.rand(8, D) < 0.5).float()
    x[torch.rand(8, D) < 0.5] = math.nan
    out = impute(model, x, num_samples=50, seed=0)
    assert set(out.unique().tolist()) <= {0.0, 1.0}
    mean = impute(model, x, num_samples=50, seed=0, binary=False)
    missing = torch.isnan(x)
    assert torch.equal(out[missing], (mean[missing] > 0.5).float())


# ------------------------------------------------------------------ bad input


@pytest.mark.usefixtures("_no_grad")
def test_bad_masks_and_values_are_refused():
    x = torch.zeros(2, 3)
    with pytest.raises(TypeError, match="mask: expected a bool tensor"):
        masked.check_mask(torch.ones(2, 3), x)
    with pytest.raises(ValueError, match=r"mask: expected shape \[2, 3\]"):
        masked.check_mask(torch.ones(3, 2, dtype=torch.bool), x)
    x[1, 2] = math.nan
    with pytest.raises(ValueError, match="mask: marks 1 non-finite"):
        masked.check_mask(torch.ones(2, 3, dtype=torch.bool), x)
    with pytest.raises(ValueError, match="infinite"):
        split_missing(torch.tensor([[1.0, math.inf]]), 2)
    with pytest.raises(ValueError, match=r"expected shape \[batch, 3\]"):
        split_missing(torch.zeros(2, 4), 3)
    model = _masked_model("bernoulli")
    bad = torch.full((1, D), 0.5)
    bad[0, 1], bad[0, 2] = math.nan, 3.0
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        impute(model, bad)
    with pytest.raises(TypeError, match="missing='mask'"):
        impute(build_vae(ModelConfig(data_dim=D, latent_dim=L, hidden=(4,))), bad)
    with pytest.raises(ValueError, match="num_samples"):
        impute(model, torch.zeros(1, D), num_samples=0)


@pytest.mark.usefixtures("_no_grad")
def test_config_refuses_a_missingness_model_without_masks():
    with pytest.raises(ValueError, match="missing_model: 'self-masking' needs missing='mask'"):
        ModelConfig(missing_model="self-masking")
    with pytest.raises(ValueError, match="missing: expected one of"):
        ModelConfig(missing="drop")


@pytest.mark.usefixtures("_no_grad")
def test_nan_without_opting_in_says_how(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("a,b\n1,2\n,3\n")
    with pytest.raises(ValueError, match="--missing mask"):
        data_.load_dataset(path)
    np.save(tmp_path / "t.npy", np.array([[1.0, np.nan]]))
    with pytest.raises(ValueError, match="--missing mask"):
        data_.load_dataset(tmp_path / "t.npy")
    ds = data_.load_dataset(path, allow_missing=True)
    assert torch.isnan(ds.x[1, 0]) and ds.x[1, 1] == 3 and ds.kind == "continuous"


# ------------------------------------------------------------------ 8-bit likelihoods, conv nets


@pytest.mark.parametrize("name", ["discretized-logistic", "discretized-logistic-mixture",
                                  "gaussian"])
@pytest.mark.usefixtures("_no_grad")
def test_eight_bit_likelihoods_give_per_dimension_terms_that_sum_to_log_prob(name):
    cfg = ModelConfig(data_dim=D, latent_dim=L, hidden=(8,), likelihood=name,
                      data_kind="8-bit", likelihood_components=3)
    torch.manual_seed(0)
    model = build_vae(cfg).double()
    x = torch.randint(0, 256, (5, D)).double() / 255
    px = model.decode(torch.randn(4, 5, L, dtype=torch.float64))
    torch.manual_seed(1)                     # the dequantized Gaussian draws u from torch's RNG
    per = masked.per_dim_log_prob(px, x)
    torch.manual_seed(1)
    whole = px.log_prob(x)
    assert per.shape == (4, 5, D)
    torch.testing.assert_close(per.sum(-1), whole, rtol=0, atol=1e-10)


@pytest.mark.usefixtures("_no_grad")
def test_a_masked_conv_model_on_8_bit_images_trains_and_imputes(tmp_path):
    from vaelab.fit.train import train

    torch.manual_seed(0)
    x = torch.randint(0, 256, (48, 36)).float() / 255
    x[torch.rand(48, 36) < 0.3] = math.nan
    x[:, :6] = math.nan                                  # the top row of every image
    ds = data_.Dataset(x, None, (1, 6, 6), "tiny", "8-bit")
    with torch.enable_grad():
        res = train({"model": {"latent_dim": 2, "net": "conv", "conv_channels": [4],
                               "likelihood": "discretized-logistic", "missing": "mask"},
                     "train": {"epochs": 1, "batch_size": 16, "binarize": "none",
                               "device": "cpu", "objective": "iwae", "num_samples": 2}},
                    tmp_path / "r", dataset=ds, log=None, progress=False)
    assert math.isfinite(res.metrics[-1]["train_elbo"])
    assert res.model.encoder.net.net.image_shape == (2, 6, 6)
    observed = ~torch.isnan(x)
    single = impute(res.model, x[:8].reshape(8, 1, 6, 6), num_samples=8, seed=0)
    assert single.shape == (8, 1, 6, 6)
    assert torch.equal(single.reshape(8, 36)[observed[:8]], x[:8][observed[:8]])
    draws = impute(res.model, x[:8], num_samples=8, draws=2, seed=0)
    k = draws[:, ~observed[:8]] * 255
    assert torch.allclose(k, k.round(), atol=1e-3)        # draws are 8-bit values


@pytest.mark.usefixtures("_no_grad")
def test_with_nothing_missing_the_masked_step_is_the_ordinary_elbo_step():
    """Same model, same draws: MaskedTrainStep's reported terms and its gradient are those of
    the ordinary ELBO (Monte Carlo KL) computed by vaelab.infer.objectives."""
    from vaelab.fit.masked import MaskedTrainStep
    from vaelab.fit.step import TrainStep
    from vaelab.infer.schemes import Amortized

    model = _masked_model().double()
    x = torch.randn(16, D, dtype=torch.float64)
    with torch.enable_grad():
        torch.manual_seed(4)
        ref = elbo_terms(model, model.encoder(x), x, 3, kl="mc")
        (-ref.elbo.mean()).backward()
        expected = [p.grad.clone() for p in model.parameters()]
        model.zero_grad()
        inner = TrainStep(model, Amortized(model.encoder), lr=1e-3, num_samples=3,
                          compile=False)
        step = MaskedTrainStep(inner, objective="elbo")
        inner._optimizers = lambda: []                     # keep the weights: compare grads
        torch.manual_seed(4)
        result = step(x)
    assert result.elbo == pytest.approx(ref.elbo.mean().item(), abs=1e-10)
    assert result.rate == pytest.approx(ref.kl.mean().item(), abs=1e-10)
    for p, g in zip(model.parameters(), expected, strict=True):
        torch.testing.assert_close(p.grad, g, rtol=1e-9, atol=1e-12)


@pytest.mark.usefixtures("_no_grad")
@pytest.mark.parametrize("objective", ["iwae", "iwae-dreg"])
def test_with_nothing_missing_the_masked_iwae_steps_are_the_ordinary_ones(objective):
    """With every entry observed, MaskedTrainStep's gradient for "iwae" and "iwae-dreg" equals
    vaelab.infer.objectives.training_terms' on the same draws (β = 0.7 tempers the weights);
    and DReG's encoder gradient really differs from plain IWAE's (it is not IWAE renamed)."""
    from vaelab.fit.masked import MaskedTrainStep
    from vaelab.fit.step import TrainStep
    from vaelab.infer.objectives import training_terms
    from vaelab.infer.schemes import Amortized

    model = _masked_model().double()
    x = torch.randn(16, D, dtype=torch.float64)

    def grads(fn) -> list[torch.Tensor]:
        model.zero_grad()
        torch.manual_seed(5)
        with torch.enable_grad():
            fn()
        return [p.grad.clone() for p in model.parameters()]

    def ordinary(name: str) -> None:
        terms = training_terms(model, model.encoder(x), x, objective=name, num_samples=4,
                               kl_weight=0.7)
        (-terms.surrogate.mean()).backward()

    inner = TrainStep(model, Amortized(model.encoder), lr=1e-3, num_samples=4, compile=False)
    inner._optimizers = lambda: []                         # keep the weights: compare grads
    step = MaskedTrainStep(inner, objective=objective)
    got = grads(lambda: step(x, kl_weight=0.7))
    for g, e in zip(got, grads(lambda: ordinary(objective)), strict=True):
        torch.testing.assert_close(g, e, rtol=1e-9, atol=1e-12)
    if objective == "iwae-dreg":
        plain = grads(lambda: ordinary("iwae"))
        enc = {id(p) for p in model.encoder.parameters()}
        differs = [not torch.allclose(g, e) for p, g, e in zip(model.parameters(), got, plain,
                                                               strict=True) if id(p) in enc]
        assert any(differs)
