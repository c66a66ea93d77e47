"""vaelab evaluate's estimator flags: wrong combinations are one-line errors naming the flag,
before anything is loaded or written."""

from __future__ import annotations

import json

import pytest
from conftest import needs_fashion_mnist, run_cli

from vaelab import cli
from vaelab.show import tables


@pytest.mark.parametrize("argv, flag", [
    (["--estimator", "ais", "--proposal", "refined"], "--proposal"),
    (["--chains", "4"], "--chains"),
    (["--estimator", "is", "--ais-steps", "5"], "--ais-steps"),
    (["--refine-steps", "5"], "--refine-steps"),
    (["--proposal", "encoder", "--refine-draws", "2"], "--refine-draws"),
])
def test_bad_estimator_flags_name_the_flag(tmp_path, capsys, argv, flag):
    run = tmp_path / "no-run"
    code = cli.main(["evaluate", str(run), *argv])
    out, err = capsys.readouterr()
    assert code != 0
    lines = [line for line in err.splitlines() if line]
    assert len(lines) == 1 and lines[0].startswith("vaelab: error: " + flag), err
    assert "Traceback" not in err and not run.exists()


def test_estimator_flags_are_in_the_help(capsys):
    assert cli.main(["evaluate", "--help"]) == 0
    out = capsys.readouterr().out
    for flag in ("--estimator", "--proposal", "--ais-steps", "--chains", "--leapfrog",
                 "--refine-steps", "--refine-draws"):
        assert flag in out


@needs_fashion_mnist
def test_bdmc_from_the_cli_reports_the_sandwich_and_warns_when_it_is_wide(tmp_path, capsys):
    """`vaelab evaluate --estimator bdmc`: eval.json holds the sandwich (its gap is upper −
    lower), and a gap above 0.5 nat — a 2-step schedule usually leaves nats — is warned about
    on screen and in eval.json's warnings, and only then."""
    run = tmp_path / "run"
    code, _, _ = run_cli(capsys, "train", "--data", "fashion-mnist", "--limit", "200",
                         "--epochs", "1", "--hidden", "32", "--latent-dim", "4", "--quiet",
                         "--out", str(run))
    assert code == 0
    code, out, _ = run_cli(capsys, "evaluate", str(run), "--estimator", "bdmc",
                           "--ais-steps", "2", "--chains", "2", "--limit", "4", "--quiet")
    assert code == 0 and "BDMC on 4 simulated examples" in out
    report = json.loads((run / "eval.json").read_text())
    b = report["bdmc"]
    assert b["gap"]["mean"] == pytest.approx(b["upper"]["mean"] - b["lower"]["mean"], abs=1e-4)
    wide = b["gap"]["mean"] > 0.5
    assert any("BDMC gap" in w for w in report["warnings"]) == wide
    assert ("warning: the BDMC gap" in out) == wide


@needs_fashion_mnist
def test_the_table_says_when_log_px_se_is_monte_carlo_only(tmp_path, capsys):
    """The ELBO's ± is the spread across examples and log p(x)'s ± is Monte Carlo error plus
    the finite-population sampling of the split: the table labels both rules whatever was
    evaluated, and says Monte Carlo only when every example of the split was."""
    run = tmp_path / "run"
    assert run_cli(capsys, "train", "--data", "fashion-mnist", "--limit", "100", "--epochs",
                   "1", "--hidden", "16", "--latent-dim", "2", "--quiet", "--out",
                   str(run))[0] == 0
    code, part, _ = run_cli(capsys, "evaluate", str(run), "--k", "5", "--limit", "7", "--quiet")
    rule = ("± of ELBO, rate, distortion, gap: std/√n across examples; ± of log p(x), "
            "bits/dim: Monte Carlo error ⊕ sampling n of N examples (finite-population "
            "correction")
    assert code == 0 and rule in part and "Monte Carlo only" not in part
    r = json.loads((run / "eval.json").read_text())
    assert r["elbo"]["se_rule"] == "across examples"
    assert r["log_likelihood"]["se_rule"] == "split mean" and set(r["se_rules"]) == {
        "across examples", "split mean"}
    r["population_size"] = r["num_examples"]           # as when the whole split is evaluated
    assert rule + "; all were evaluated, so Monte Carlo only)" in tables.format_evaluation(r)


@needs_fashion_mnist
def test_the_refinement_budget_is_set_from_the_cli(tmp_path, capsys):
    """--refine-steps N --refine-draws M: the estimator records them, its cost is at most
    N x M gradient evaluations, and the evaluation runs with them."""
    run = tmp_path / "run"
    assert run_cli(capsys, "train", "--data", "fashion-mnist", "--limit", "100", "--epochs",
                   "1", "--hidden", "16", "--latent-dim", "2", "--quiet", "--out",
                   str(run))[0] == 0
    code, out, _ = run_cli(capsys, "evaluate", str(run), "--k", "5", "--limit", "6",
                           "--proposal", "mixture", "--refine-steps", "3", "--refine-draws",
                           "2", "--quiet")
    assert code == 0 and "at most 6 with gradient" in out
    e = json.loads((run / "eval.json").read_text())["estimator"]
    assert (e["refine_steps"], e["refine_draws"]) == (3, 2)
    assert e["cost_per_example"] == {"forward": 5, "gradient": 6}
