"""Every number evaluate and gaps print or save can be trusted.

* a diverged model (−inf ELBO, NaN ESS) is reported, not crashed on: strict JSON
  with null + reason, a one-line "appears to have diverged" warning, exit 0 from the CLI;
* every statistic of eval.json and gaps.json that is undefined (one example, one
  importance sample) is null with a reason, printed as "undefined", never "± 0.000"; tiny ESS
  gets a warning line;
* gaps.png's error bars are the paired standard errors of the differences;
* the standard errors themselves against hand-computed values (0, 1, 2, 3 → mean 1.5,
  SE = sd/√n = 1.2910/2 = 0.6455), so SD/n or SD/√(n−1) fail.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from vaelab import ModelConfig, build_vae, cli
from vaelab.measure import evaluate, honest
from vaelab.measure.gaps import GapReport, gap_panels
from vaelab.model.families import DiagonalNormal
from vaelab.show import tables

SE_0123 = math.sqrt(5 / 3) / 2          # sd of 0, 1, 2, 3 (n − 1 denominator) / √4


def nulls_without_reason(report, path="") -> list[str]:
    """Paths of None values whose dict does not say why in its "undefined" mapping."""
    bad = []
    if isinstance(report, dict):
        reasons = report.get("undefined") or {}
        for key, value in report.items():
            if value is None and key not in reasons:
                bad.append(f"{path}.{key}")
            elif isinstance(value, list) and any(v is None for v in value) and key not in reasons:
                bad.append(f"{path}.{key}[]")
            else:
                bad += nulls_without_reason(value, f"{path}.{key}")
    return bad


def diverged_vae() -> torch.nn.Module:
    """A 784-64-4 VAE whose encoder's last bias is 1e20 (a small input that diverges)."""
    torch.manual_seed(0)
    model = build_vae(ModelConfig(data_dim=784, latent_dim=4, hidden=(64,)))
    with torch.no_grad():
        [p for n, p in model.encoder.named_parameters() if n.endswith("bias")][-1].fill_(1e20)
    return model


# --------------------------------------------------------------------------- a diverged model


def test_diverged_model_gives_strict_json_with_reasons_and_a_warning():
    x = torch.rand(12, 784, generator=torch.Generator().manual_seed(1)).bernoulli()
    r = evaluate.evaluate_model(diverged_vae(), x, num_samples=8, per_example=True)
    json.dumps(r, allow_nan=False)                                  # valid JSON, no NaN
    assert r["log_likelihood"]["mean"] is None
    assert r["log_likelihood"]["undefined"]["mean"] == "non-finite: -inf"
    assert r["ess"]["mean"] is None and r["ess"]["undefined"]["mean"] == "non-finite: nan"
    assert nulls_without_reason(r) == []
    diverged = [w for w in r["warnings"] if "appears to have diverged" in w]
    assert len(diverged) == 1 and "12 of 12" in diverged[0]
    table = tables.format_evaluation(r)
    assert "-inf" in table and "appears to have diverged" in table


def test_finite_model_has_no_divergence_warning():
    torch.manual_seed(0)
    model = build_vae(ModelConfig(data_dim=20, latent_dim=2, hidden=(8,)))
    x = torch.rand(30, 20, generator=torch.Generator().manual_seed(1)).bernoulli()
    r = evaluate.evaluate_model(model, x, num_samples=200)
    assert not any("diverged" in w for w in r["warnings"])
    assert nulls_without_reason(r) == [] and "undefined" not in r["elbo"]


@pytest.fixture(scope="module")
def diverged_run(tmp_path_factory) -> Path:
    """A run trained for one epoch on 64-pixel binary arrays, then its weights blown up."""
    folder = tmp_path_factory.mktemp("diverged")
    rng = np.random.default_rng(0)
    np.save(folder / "x.npy", (rng.random((200, 64)) < 0.3).astype(np.float32))
    run = folder / "run"
    assert cli.main(["train", "--data", str(folder / "x.npy"), "--out", str(run), "--epochs",
                     "1", "--hidden", "16", "--latent-dim", "2", "--quiet"]) == 0
    from safetensors.torch import load_file

    weights = load_file(run / "model.safetensors")
    key = [k for k in weights if k.startswith("encoder") and k.endswith("bias")][-1]
    weights[key] = torch.full_like(weights[key], 1e20)
    save_file(weights, run / "model.safetensors", metadata={"format": "vaelab-run-1"})
    return run


def test_cli_evaluate_and_gaps_survive_a_diverged_model(diverged_run, tmp_path, capsys):
    capsys.readouterr()
    assert cli.main(["evaluate", str(diverged_run), "--k", "8", "--limit", "20",
                     "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "appears to have diverged" in out
    saved = json.loads((diverged_run / "eval.json").read_text())
    assert saved["log_likelihood"]["mean"] is None and nulls_without_reason(saved) == []
    assert cli.main(["gaps", str(diverged_run), "--limit", "5", "--k", "8", "--steps", "3",
                     "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    gaps = json.loads((tmp_path / "gaps.json").read_text())     # strict: NaN would fail
    assert nulls_without_reason(gaps) == []
    assert "appears to have diverged" in out and (tmp_path / "gaps.png").is_file()


# --------------------------------------------------------------------------- undefined statistics


def test_every_statistic_of_one_example_and_one_sample_is_undefined_with_a_reason():
    torch.manual_seed(0)
    model = build_vae(ModelConfig(data_dim=20, latent_dim=3, hidden=(8,)))
    x = torch.rand(3, 20, generator=torch.Generator().manual_seed(1)).bernoulli()
    r = evaluate.evaluate_model(model, x, num_samples=1, limit=1)
    for name in ("elbo", "rate", "distortion", "gap", "log_likelihood"):
        assert r[name]["std"] is None and r[name]["se"] is None, name
        assert "2 examples" in r[name]["undefined"]["std"]
        assert math.isfinite(r[name]["mean"])
    ll = r["log_likelihood"]
    assert ll["se_mc"] is None and "k = 1" in ll["undefined"]["se_mc"]
    assert ll["se_data"] is None                      # 1 of 3 rows: the spread is needed
    assert r["nll_bits_per_dim"]["se"] is None and r["nll_bits_per_dim"]["undefined"]["se"]
    assert r["active_units"] is None and r["undefined"]["active_units"]
    assert nulls_without_reason(r) == []
    json.dumps(r, allow_nan=False)
    table = tables.format_evaluation(r)
    rows = table.splitlines()[2:8]                 # ELBO ... log p(x) − ELBO
    assert len(rows) == 6 and all(row.endswith(" undefined") for row in rows)
    assert "0.000" not in table and "nan" not in table
    assert any("k = 1" in w for w in r["warnings"])


def test_whole_population_has_zero_subsampling_error_even_with_one_example():
    torch.manual_seed(0)
    model = build_vae(ModelConfig(data_dim=20, latent_dim=3, hidden=(8,)))
    x = torch.rand(1, 20, generator=torch.Generator().manual_seed(1)).bernoulli()
    ll = evaluate.evaluate_model(model, x, num_samples=50)["log_likelihood"]
    assert ll["se_data"] == 0.0 and ll["se"] == pytest.approx(ll["se_mc"], rel=1e-12)
    assert ll["std"] is None and set(ll["undefined"]) == {"std"}


def test_tiny_ess_gets_a_warning_line():
    torch.manual_seed(0)
    model = build_vae(ModelConfig(data_dim=20, latent_dim=2, hidden=(8,)))
    x = torch.rand(6, 20, generator=torch.Generator().manual_seed(1)).bernoulli()

    def far_q(xb):                          # a needle far from p(z|x): ESS ≈ 1
        return DiagonalNormal.from_params(torch.full((xb.shape[0], 2), 6.0),
                                          torch.full((xb.shape[0], 2), 0.05))

    r = evaluate.evaluate_model(model, x, num_samples=100, infer=far_q, per_example=True)
    tiny = sum(e < 10 for e in r["per_example"]["ess"])
    assert tiny >= 3 and r["ess"]["num_tiny"] == tiny and r["ess"]["min"] < 10
    assert any("tiny effective sample size" in w and f"{tiny} of 6" in w for w in r["warnings"])
    assert "tiny effective sample size" in tables.format_evaluation(r)
    assert "ESS (of k)" in tables.format_evaluation(r)


def test_gap_report_of_one_example_and_of_non_finite_bounds():
    one = GapReport(torch.tensor([-90.0]), torch.tensor([-91.0]), torch.tensor([-93.0]), 10, 5)
    d = one.to_dict()
    json.dumps(d, allow_nan=False)
    for name, stats in d["summary"].items():
        assert stats["stderr"] is None and "2 examples" in stats["undefined"]["stderr"], name
    assert d["summary"]["amortization_gap"]["mean"] == pytest.approx(2.0)
    assert "undefined" in one.table() and "nan" not in one.table()
    bad = GapReport(torch.tensor([-math.inf, -90.0]), torch.tensor([-91.0, math.nan]),
                    torch.tensor([-93.0, -95.0]), 10, 5)
    d = bad.to_dict()
    json.dumps(d, allow_nan=False)
    assert nulls_without_reason(d) == []
    assert d["summary"]["log_likelihood"]["undefined"]["mean"] == "non-finite: -inf"
    assert "appears to have diverged" in bad.table()


# --------------------------------------------------------------------------- SE by hand


def test_rate_distortion_elbo_and_gap_standard_errors_by_hand():
    f64 = torch.float64
    values = torch.tensor([0.0, 1.0, 2.0, 3.0], dtype=f64)
    m = {"elbo": -values, "rate": values, "distortion": 2 * values,
         "log_likelihood": -values + torch.tensor([0.0, 2.0, 0.0, 2.0], dtype=f64),
         "ll_stderr": torch.tensor([0.1, 0.2, 0.2, 0.4], dtype=f64),
         "ess": torch.full((4,), 50.0, dtype=f64),
         "q_mean": torch.randn(4, 2)}
    r = evaluate._report(m, population_size=8, num_samples=100, elbo_samples=1,
                         threshold=0.01)
    assert r["rate"]["mean"] == pytest.approx(1.5)
    assert r["rate"]["se"] == pytest.approx(0.6455, abs=5e-5)
    assert r["rate"]["se"] == pytest.approx(SE_0123, rel=1e-12)
    assert r["distortion"]["se"] == pytest.approx(2 * SE_0123, rel=1e-12)
    assert r["elbo"]["se"] == pytest.approx(SE_0123, rel=1e-12)
    assert r["gap"]["mean"] == pytest.approx(1.0)                      # gaps 0, 2, 0, 2
    assert r["gap"]["se"] == pytest.approx(math.sqrt(4 / 3) / 2, rel=1e-12)
    ll = r["log_likelihood"]                    # -0, 1, -2, -1: sd √(5/3), n = 4 of N = 8
    assert ll["se_mc"] == pytest.approx(math.sqrt(0.01 + 0.04 + 0.04 + 0.16) / 4, rel=1e-12)
    assert ll["se_data"] == pytest.approx(math.sqrt(5 / 3) * math.sqrt(0.5 / 4), rel=1e-12)
    assert ll["se"] == pytest.approx(math.hypot(ll["se_mc"], ll["se_data"]), rel=1e-12)


def test_gap_report_standard_errors_by_hand():
    values = torch.tensor([0.0, 1.0, 2.0, 3.0], dtype=torch.float64)
    report = GapReport(values - 100, torch.full((4,), -100.0, dtype=torch.float64),
                       torch.full((4,), -101.0, dtype=torch.float64), 10, 5)
    summary = report.summary()
    assert summary["approximation_gap"] == pytest.approx((1.5, 0.6455), abs=5e-5)
    assert summary["approximation_gap"][1] == pytest.approx(SE_0123, rel=1e-12)
    assert summary["amortization_gap"] == (1.0, 0.0)
    stats = report.to_dict()["summary"]["inference_gap"]
    assert stats["mean"] == pytest.approx(2.5) and stats["stderr"] == pytest.approx(SE_0123)


# --------------------------------------------------------------------------- paired error bars


def test_gaps_figure_shows_paired_standard_errors_not_the_spread_between_examples():
    g = torch.Generator().manual_seed(0)
    level = 120 * torch.randn(100, generator=g, dtype=torch.float64)      # examples differ a lot
    amortized = level
    optimized = level + 2.0 + 0.3 * torch.randn(100, generator=g, dtype=torch.float64)
    loglik = optimized + 0.5 + 0.1 * torch.randn(100, generator=g, dtype=torch.float64)
    report = GapReport(loglik, optimized, amortized, 100, 50)
    panels = gap_panels(report)
    _, means, errs = panels["ladder"]
    paired = [0.0, float((optimized - amortized).std() / 10),
              float((loglik - amortized).std() / 10)]
    assert means[0] == 0.0
    assert means[1] == pytest.approx(float((optimized - amortized).mean()), rel=1e-12)
    assert errs == pytest.approx(paired, rel=1e-12)
    assert max(errs) < 0.05 < float(level.std() / 10)                   # not the ±12-nat spread
    labels, means, errs = panels["gaps"]
    assert errs == pytest.approx([float((loglik - optimized).std() / 10), paired[1]], rel=1e-12)
    assert honest.json_safe({"a": [1.0, math.nan]})["undefined"]["a"].startswith("1 of 2")


def test_divergence_warning_for_an_astronomically_low_but_finite_elbo():
    from vaelab.infer.objectives import DIVERGED_ELBO
    from vaelab.measure.honest import divergence_warning

    ok = torch.tensor([-300.0, -250.0])
    assert divergence_warning({"ELBO": ok, "log p(x)": ok}) is None
    low = torch.tensor([-300.0, 10 * DIVERGED_ELBO])
    line = divergence_warning({"ELBO": low, "log p(x)": low})
    assert line.startswith("warning: the model appears to have diverged: ELBO down to -1e+09")
    gaps = divergence_warning({"log_likelihood": ok, "elbo_amortized": low})   # gaps' names
    assert gaps is not None and "-1e+09" in gaps
