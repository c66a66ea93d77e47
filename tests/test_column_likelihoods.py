"""The likelihoods for table columns (vaelab.model.column_likelihoods) against scipy.stats.

Oracles: scipy's log-pmf / log-pdf and means in float64 at the parameters the raw network
outputs map to (softplus and the floors computed here independently, in numpy); the zero
inflation as the mixture written out with scipy's negative binomial; the softmax with
scipy.special. Then the layouts (parameter-major), the support checks (one line each), what
evaluate may call each one, the required options and the saved configs.
"""

from __future__ import annotations

import json
import math
import re

import numpy as np
import pytest
import torch
from scipy import special, stats

from vaelab import catalogue
from vaelab.model import column_likelihoods as cl
from vaelab.model import likelihoods

F64 = torch.float64
pytestmark = pytest.mark.usefixtures("one_thread")


def _softplus(raw: np.ndarray) -> np.ndarray:
    return np.logaddexp(0.0, raw)


def _raw(*rows: list[float]) -> torch.Tensor:
    return torch.tensor(rows, dtype=F64)


COUNTS = np.array([0.0, 1.0, 3.0, 17.0, 250.0])


def test_poisson_matches_scipy():
    raw = np.array([-30.0, -1.0, 0.5, 3.0, 260.0])
    px = cl.Poisson()(_raw(list(raw)))
    rate = _softplus(raw) + 1e-8
    want = stats.poisson.logpmf(COUNTS, rate).sum()
    assert float(px.log_prob(torch.tensor(COUNTS))) == pytest.approx(want, rel=1e-12)
    np.testing.assert_allclose(px.mean.detach().numpy()[0], rate, rtol=1e-12)


@pytest.mark.parametrize("dispersion", ["column", "example"])
def test_negative_binomial_matches_scipy_with_mean_and_inverse_dispersion(dispersion):
    mean_raw = np.array([-5.0, 0.0, 2.0, 15.0, 200.0])
    theta_raw = np.array([-9.0, -1.0, 0.0, 4.0, 30.0])
    lik = cl.NegativeBinomial(dispersion, data_dim=5).to(F64)
    if dispersion == "column":
        with torch.no_grad():
            lik.raw_dispersion.copy_(torch.tensor(theta_raw))
        raw = _raw(list(mean_raw))
    else:
        raw = _raw([*mean_raw, *theta_raw])
    mu, theta = _softplus(mean_raw) + 1e-8, _softplus(theta_raw) + 1e-8
    px = lik(raw)
    want = stats.nbinom.logpmf(COUNTS, theta, theta / (theta + mu))
    got = px.base_dist.log_prob(torch.tensor(COUNTS)).detach().numpy()[0]
    np.testing.assert_allclose(got, want, rtol=1e-9)
    p = theta / (theta + mu)
    np.testing.assert_allclose(px.mean.detach().numpy()[0], stats.nbinom.mean(theta, p),
                               rtol=1e-9)
    np.testing.assert_allclose(px.base_dist.variance.detach().numpy()[0], mu + mu**2 / theta,
                               rtol=1e-9)


@pytest.mark.parametrize("dispersion", ["column", "example"])
def test_zero_inflated_negative_binomial_is_the_mixture_with_a_point_mass_at_zero(dispersion):
    x = np.array([0.0, 0.0, 0.0, 4.0, 40.0])
    mean_raw = np.array([1.0, 30.0, -3.0, 2.0, 5.0])
    zero_logits = np.array([-100.0, 0.3, 100.0, 2.0, -4.0])
    theta_raw = np.array([0.0, 3.0, -2.0, 1.0, 20.0])
    lik = cl.ZeroInflatedNegativeBinomial(dispersion, data_dim=5).to(F64)
    if dispersion == "column":
        with torch.no_grad():
            lik.raw_dispersion.copy_(torch.tensor(theta_raw))
        raw = _raw([*mean_raw, *zero_logits])
    else:
        raw = _raw([*mean_raw, *zero_logits, *theta_raw])
    mu, theta = _softplus(mean_raw) + 1e-8, _softplus(theta_raw) + 1e-8
    pi = special.expit(zero_logits)
    nb = stats.nbinom.pmf(x, theta, theta / (theta + mu))
    want = np.log(pi * (x == 0) + (1 - pi) * nb)
    px = lik(raw)
    np.testing.assert_allclose(px.base_dist.log_prob(torch.tensor(x)).detach().numpy()[0], want,
                               rtol=1e-9, atol=1e-12)
    keep = special.expit(-zero_logits)            # 1 − π, exact where π rounds to 1
    np.testing.assert_allclose(px.mean.detach().numpy()[0], keep * mu, rtol=1e-9)


def test_zero_inflated_draws_have_the_zero_share_of_the_mixture():
    torch.manual_seed(1)
    mu, theta, logit = 4.0, 2.0, 0.5
    dist = cl.ZeroInflatedNegativeBinomialDistribution(
        torch.tensor([mu], dtype=F64), torch.tensor([theta], dtype=F64),
        torch.tensor([logit], dtype=F64))
    draws = dist.sample((200_000,)).detach().numpy().ravel()
    pi = special.expit(logit)
    zero = pi + (1 - pi) * stats.nbinom.pmf(0, theta, theta / (theta + mu))
    se = math.sqrt(zero * (1 - zero) / draws.size)
    assert abs((draws == 0).mean() - zero) < 5 * se
    mean_se = draws.std() / math.sqrt(draws.size)
    assert abs(draws.mean() - (1 - pi) * mu) < 5 * mean_se


def test_binomial_matches_scipy():
    logits = np.array([-100.0, -2.0, 0.0, 3.0, 100.0])
    x = np.array([0.0, 3.0, 8.0, 16.0, 16.0])
    px = cl.Binomial(16)(_raw(list(logits)))
    want = stats.binom.logpmf(x, 16, special.expit(logits))
    np.testing.assert_allclose(px.base_dist.log_prob(torch.tensor(x)).detach().numpy()[0], want,
                               rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(px.mean.detach().numpy()[0], 16 * special.expit(logits), rtol=1e-12)


def test_categorical_is_a_softmax_per_column_laid_out_parameter_major():
    k = 3
    logits = np.array([[100.0, -7.0], [0.0, 2.0], [-100.0, 2.5]])     # [K, D]
    raw = _raw(list(logits.ravel()))                                    # [K·D], K-major
    px = cl.Categorical(k)(raw)
    x = np.array([1.0, 2.0])
    log_softmax = special.log_softmax(logits, axis=0)
    want = log_softmax[1, 0] + log_softmax[2, 1]
    assert float(px.log_prob(torch.tensor(x))) == pytest.approx(want, rel=1e-12)
    assert px.mean.tolist() == [[0.0, 2.0]]           # the most probable category per column
    draws = px.sample((5,))
    assert draws.dtype == F64 and set(draws[..., 0].unique().tolist()) <= {0.0}


def test_student_t_matches_scipy_with_fixed_and_learned_degrees_of_freedom():
    loc = np.array([-100.0, 0.0, 3.0])
    scale_raw = np.array([-100.0, 0.0, 5.0])
    x = np.array([-99.0, 0.5, 40.0])
    scale = _softplus(scale_raw) + 1e-3
    fixed = cl.StudentT(df=2.5, min_scale=1e-3)(_raw([*loc, *scale_raw]))
    np.testing.assert_allclose(fixed.base_dist.log_prob(torch.tensor(x)).detach().numpy()[0],
                               stats.t.logpdf(x, 2.5, loc, scale), rtol=1e-12)
    np.testing.assert_allclose(fixed.mean.detach().numpy()[0], loc)
    learned = cl.StudentT(min_scale=1e-3, data_dim=3).to(F64)
    df_raw = np.array([-3.0, 0.0, 8.0])
    with torch.no_grad():
        learned.raw_df.copy_(torch.tensor(df_raw))
    df = _softplus(df_raw) + 1e-8
    px = learned(_raw([*loc, *scale_raw]))
    np.testing.assert_allclose(px.base_dist.log_prob(torch.tensor(x)).detach().numpy()[0],
                               stats.t.logpdf(x, df, loc, scale), rtol=1e-12)
    assert float(_softplus(np.array(5 + math.log(-math.expm1(-5))))) == pytest.approx(5.0)


def test_log_normal_matches_scipy():
    loc = np.array([-30.0, 0.0, 4.0])
    scale_raw = np.array([-100.0, 0.0, 1.0])
    x = np.array([1e-13, 0.7, 80.0])
    scale = _softplus(scale_raw) + 1e-3
    px = cl.LogNormal(1e-3)(_raw([*loc, *scale_raw]))
    np.testing.assert_allclose(px.base_dist.log_prob(torch.tensor(x)).detach().numpy()[0],
                               stats.lognorm.logpdf(x, scale, scale=np.exp(loc)), rtol=1e-12)
    np.testing.assert_allclose(px.mean.detach().numpy()[0],
                               stats.lognorm.mean(scale, scale=np.exp(loc)), rtol=1e-12)


# ------------------------------------------------------------------ support checks


COUNT_LIKELIHOODS = [cl.Poisson(), cl.NegativeBinomial("example"),
                     cl.ZeroInflatedNegativeBinomial("example"), cl.Binomial(16)]


@pytest.mark.parametrize("lik", COUNT_LIKELIHOODS, ids=lambda lik: lik.name)
@pytest.mark.parametrize("values, words", [
    ([0.0, -1.0, 2.0], r"got negative values \(the smallest -1\)"),
    ([0.0, 2.5, 3.0], r"got non-integer values \(e.g. 2.5\)"),
])
def test_count_columns_refuse_negative_and_fractional_values_in_one_line(lik, values, words):
    with pytest.raises(ValueError, match=f"--data: the {lik.name} likelihood expects .*{words}"
                       ) as err:
        lik.check_support(torch.tensor([values]), "--data")
    assert "\n" not in str(err.value)
    lik.check_support(torch.tensor([[0.0, 3.0, 16.0]]), "--data")          # counts pass


def test_eight_bit_values_get_the_hint_that_integers_were_read_as_k_over_255():
    with pytest.raises(ValueError, match="read as 8-bit data k/255: give counts as floats"):
        cl.Poisson().check_support(torch.tensor([[0.0, 3 / 255]]))


def test_binomial_refuses_more_successes_than_trials_and_categorical_unknown_codes():
    with pytest.raises(ValueError, match=r"x: the binomial likelihood expects successes in 16 "
                                         r"trials \(integers 0..16\), got values up to 17, "
                                         r"above 16"):
        cl.Binomial(16).check_support(torch.tensor([[0.0, 17.0]]))
    with pytest.raises(ValueError, match=r"category codes 0..2, got values up to 3"):
        cl.Categorical(3).check_support(torch.tensor([[0.0, 3.0]]))
    with pytest.raises(ValueError, match=r"category codes 0..2, got non-integer"):
        cl.Categorical(3).check_support(torch.tensor([[0.0, 1.5]]))


def test_log_normal_refuses_values_that_are_not_positive():
    with pytest.raises(ValueError, match=r"x: the log-normal likelihood expects positive values "
                                         r"\(> 0\), got values down to 0"):
        cl.LogNormal().check_support(torch.tensor([[1.0, 0.0]]))
    cl.LogNormal().check_support(torch.tensor([[1.0, 1e-30]]))


# ------------------------------------------------------------------ meaning and options


@pytest.mark.parametrize("name, options, meanings", [
    ("poisson", {}, {"continuous": "probability", "binary": "probability"}),
    ("negative-binomial", {}, {"continuous": "probability", "binary": "probability"}),
    ("zero-inflated-negative-binomial", {}, {"continuous": "probability",
                                             "binary": "probability"}),
    ("binomial", {"trials": 16}, {"continuous": "probability", "binary": "probability"}),
    ("categorical", {"categories": 4}, {"continuous": "probability", "binary": "probability"}),
    ("student-t", {}, {"continuous": "density", "unit-interval": "density"}),
    ("log-normal", {}, {"continuous": "density", "unit-interval": "density"}),
])
def test_what_evaluate_may_call_each_one(name, options, meanings):
    lik = catalogue.get("likelihood", name).build(4, "continuous", **options)
    for kind in ("binary", "8-bit", "unit-interval", "continuous"):
        assert lik.meaning_on(kind) == meanings.get(kind, "score"), kind


@pytest.mark.parametrize("name, option", [("binomial", "trials"), ("categorical", "categories")])
def test_the_number_of_trials_and_of_categories_must_be_given(name, option):
    with pytest.raises(ValueError, match=rf"likelihood_options.{option} \(--likelihood-"
                                         rf"{option}\): expected an integer >= 1 for "
                                         rf"--likelihood {name}, got none"):
        catalogue.get("likelihood", name).build(4, "continuous")


def test_options_build_what_they_say():
    nb = catalogue.get("likelihood", "negative-binomial").build(4, None)
    assert nb.params_per_dim == 1 and nb.raw_dispersion.shape == (4,)
    nb = catalogue.get("likelihood", "negative-binomial").build(4, None, dispersion="example")
    assert nb.params_per_dim == 2 and not list(nb.parameters())
    zinb = catalogue.get("likelihood", "zero-inflated-negative-binomial").build(
        4, None, dispersion="example")
    assert zinb.params_per_dim == 3
    t = catalogue.get("likelihood", "student-t").build(4, None, df=3.0, min_scale=0.1)
    assert (t.df, t.min_scale, list(t.parameters())) == (3.0, 0.1, [])
    assert catalogue.get("likelihood", "categorical").build(4, None, categories=7
                                                            ).params_per_dim == 7
    with pytest.raises(ValueError, match="likelihood.dispersion: expected one of "
                                         "'column', 'example', got 'gene'"):
        catalogue.get("likelihood", "negative-binomial").build(4, None, dispersion="gene")


@pytest.mark.parametrize("name, options", [
    ("poisson", {}), ("negative-binomial", {"dispersion": "column"}),
    ("zero-inflated-negative-binomial", {"dispersion": "example"}), ("binomial", {"trials": 3}),
    ("categorical", {"categories": 5}), ("student-t", {}), ("student-t", {"df": 4.0}),
    ("log-normal", {"min_scale": 0.01})])
def test_saved_configs_rebuild_the_same_likelihood(name, options):
    lik = catalogue.get("likelihood", name).build(6, "continuous", **options)
    again = likelihoods.from_config(lik.config())
    assert type(again) is type(lik) and again.config() == lik.config()
    assert likelihoods.LIKELIHOODS[name] is type(lik)


# ------------------------------------------------------------------ the command line


@pytest.fixture(scope="module")
def digits_csv(tmp_path_factory):
    """The first 150 of scikit-learn's bundled digits: 64 counts 0..16 of inked pixels per
    4×4 block (16 trials), as a CSV of numbers (read as continuous data, integers as given)."""
    from sklearn.datasets import load_digits

    path = tmp_path_factory.mktemp("digits") / "digits.csv"
    np.savetxt(path, load_digits().data[:150], delimiter=",", fmt="%d")
    return path


@pytest.mark.parametrize("flags, meaning", [
    (["--likelihood", "poisson"], "probability"),
    (["--likelihood", "negative-binomial"], "probability"),
    (["--likelihood", "negative-binomial", "--likelihood-dispersion", "example"], "probability"),
    (["--likelihood", "zero-inflated-negative-binomial"], "probability"),
    (["--likelihood", "binomial", "--likelihood-trials", "16"], "probability"),
    (["--likelihood", "categorical", "--likelihood-categories", "17"], "probability"),
    (["--likelihood", "student-t", "--likelihood-df", "4"], "density"),
    (["--likelihood", "log-normal"], "density"),
])
def test_train_then_evaluate_reports_a_normalised_log_likelihood(flags, meaning, digits_csv,
                                                                 tmp_path, capsys):
    """One epoch on the digits (shifted by one for the log-normal: positive values), then
    evaluate: log p(x) of discrete data is a probability (nats and bits/dim, never above 0),
    of real data a density (nats of density, no bits/dim)."""
    from conftest import run_cli

    data = digits_csv
    if "log-normal" in flags:
        data = tmp_path / "positive.csv"
        np.savetxt(data, np.loadtxt(digits_csv, delimiter=",") + 1, delimiter=",", fmt="%g")
    run = tmp_path / "run"
    code, _, err = run_cli(capsys, "train", "--data", data, *flags, "--binarize", "none",
                           "--epochs", 1, "--latent-dim", 2, "--hidden", 16, "--out", run,
                           "--quiet")
    assert code == 0, err
    code, out, err = run_cli(capsys, "evaluate", run, "--k", 4, "--limit", 10)
    assert code == 0, err
    result = json.loads((run / "eval.json").read_text())
    said = result["likelihood_meaning"]
    assert (said["likelihood"], said["meaning"]) == (flags[1], meaning)
    assert result["log_likelihood_normalised"] is True
    if meaning == "probability":
        assert "log p(x) (nats)" in out and "NLL (bits/dim)" in out
        assert result["log_likelihood"]["mean"] < 0          # a probability is at most 1
    else:
        assert "log density (nats)" in out and "bits/dim" not in out.split("note")[0]
    options = json.loads((run / "config.json").read_text())["model"]["likelihood_options"]
    entry = catalogue.get("likelihood", flags[1])
    given = {flag[len("--likelihood-"):]: value for flag, value in zip(flags[2::2], flags[3::2],
                                                                         strict=True)}
    assert {name: options[name] for name in given} == {
        name: entry.option(name).parse(value) for name, value in given.items()}


@pytest.mark.parametrize("flags, table, message", [
    (["--likelihood", "poisson"], [[0, 1], [2, -1]],
     r"data: the poisson likelihood expects counts \(integers >= 0\), got negative values"),
    (["--likelihood", "binomial", "--likelihood-trials", "4"], [[0, 1], [2, 5]],
     r"above 4"),
    (["--likelihood", "binomial"], [[0, 1], [2, 3]],
     r"--likelihood-trials\): expected an integer >= 1 for --likelihood binomial, got none"),
    (["--likelihood", "poisson", "--likelihood-trials", "4"], [[0, 1], [2, 3]],
     r"--likelihood-trials: needs --likelihood binomial, got --likelihood poisson"),
    (["--likelihood", "categorical", "--likelihood-categories", "3"], [[0, 1.5], [2, 1]],
     r"category codes 0..2, got non-integer values \(e.g. 1.5\)"),
])
def test_bad_tables_and_flags_get_one_line(flags, table, message, tmp_path, capsys):
    from conftest import run_cli

    path = tmp_path / "t.csv"
    np.savetxt(path, np.array(table * 5, dtype=float), delimiter=",", fmt="%g")
    code, out, err = run_cli(capsys, "train", "--data", path, *flags, "--binarize", "none",
                             "--epochs", 1, "--out", tmp_path / "run")
    assert code != 0 and len(err.strip().splitlines()) == 1, err
    assert re.search(message, err), err
