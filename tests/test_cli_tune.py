"""``vaelab tune`` on the command line: one line for each bad input, a tiny study end to end,
and ``vaelab report`` / ``vaelab runs`` on it."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import html_tables, run_cli

pytest.importorskip("optuna")


@pytest.fixture(scope="module")
def table(tmp_path_factory):
    rng = np.random.default_rng(3)
    logits = rng.normal(size=(300, 2)) @ (2 * rng.normal(size=(2, 10)))
    path = tmp_path_factory.mktemp("cli_tune") / "table.npy"
    np.save(path, (rng.random((300, 10)) < 1 / (1 + np.exp(-logits))).astype(np.float32))
    return path


def _small_space(folder):
    """Fix the expensive choices; latent size, lr and the prior stay searched."""
    path = folder / "space.toml"
    path.write_text('"net.mlp.hidden.layers" = 1\n"net.mlp.hidden.units" = 16\n'
                    'batch_size = 32\nnum_samples = 1\nfamily = "diagonal-normal"\n'
                    'prior = {choices = ["standard-normal", "learned-normal"]}\n'
                    'latent_dim = {low = 1, high = 4}\n')
    return path


@pytest.mark.parametrize("flags, message", [
    (["--budget", "0"], "--budget: expected a time such as 1h"),
    (["--budget", "0-trials"], "--budget: expected"),
    (["--budget", "2-trials", "--storage", "nosuchdb://x/y"],
     "--storage: cannot open the study database 'nosuchdb://x/y'"),
    (["--budget", "2-trials", "--storage", "sqlite:////no/such/folder/x.db"],
     "--storage: cannot open the study database"),
    (["--budget", "2-trials", "--val-fraction", "0"], "argument --val-fraction: expected a "
     "number in (0, 1)"),
])
def test_bad_input_is_one_line_and_a_non_zero_exit(capsys, table, tmp_path, flags, message):
    code, out, err = run_cli(capsys, "tune", "--data", table, "--out", tmp_path / "s", *flags)
    assert code != 0 and out == ""
    assert err.startswith(f"vaelab: error: {message}") and err.count("\n") == 1, err
    assert not (tmp_path / "s").exists()        # nor an empty --out left behind


def test_an_unknown_space_option_is_one_line_naming_the_file(capsys, table, tmp_path):
    space = tmp_path / "space.toml"
    space.write_text('"prior.vamp.component" = {low = 2, high = 5}\n')
    code, _, err = run_cli(capsys, "tune", "--data", table, "--out", tmp_path / "s",
                           "--budget", "2-trials", "--space", space)
    assert code == 1 and err.count("\n") == 1
    assert f"--space {str(space)!r}: unknown option 'prior.vamp.component'; did you mean " \
           f"'prior.vamp.components'?" in err


def test_a_space_whose_every_combination_is_invalid_is_refused_before_any_trial(
        capsys, table, tmp_path):
    space = tmp_path / "space.toml"          # the DReG form of a mixture q is not derived
    space.write_text('family = "mixture"\nobjective = {choices = ["iwae-dreg"]}\n')
    code, out, err = run_cli(capsys, "tune", "--data", table, "--out", tmp_path / "s",
                             "--budget", "2-trials", "--epochs", "1", "--space", space)
    assert code == 1 and err.count("\n") == 1 and "trial" not in out, (out, err)
    assert err.startswith(f"vaelab: error: --space {str(space)!r}: every combination it "
                          f"allows is refused as a config")
    assert "'iwae-dreg' is not available with family 'mixture'" in err
    assert not (tmp_path / "s" / "trials").exists()


@pytest.mark.parametrize("case", ["no data file", "bad space", "low > high"])
def test_a_refused_command_leaves_no_out_folder(capsys, table, tmp_path, case):
    """The data, the config and the space are checked before --out is created; a refusal
    leaves no (empty) study folder behind, nor the parents it would have created."""
    space = tmp_path / "space.toml"
    space.write_text({"no data file": "batch_size = 32\n",
                      "bad space": '"prior.vamp.component" = {low = 2, high = 5}\n',
                      "low > high": "latent_dim = {low = 8, high = 2}\n"}[case])
    data = tmp_path / "nofile.csv" if case == "no data file" else table
    out = tmp_path / "new" / "study"
    code, _, err = run_cli(capsys, "tune", "--data", data, "--out", out, "--budget",
                           "2-trials", "--space", space)
    assert code == 1 and err.startswith("vaelab: error: ") and err.count("\n") == 1, err
    assert ("--data" if case == "no data file" else "--space") in err, err
    assert not (tmp_path / "new").exists()


def _best_toml_retrains_the_best_trial(capsys, out, summary, again):
    """best.toml holds config keys as ``vaelab train --config`` reads them (underscores, as
    config.json; a flag's dashes would be refused as unknown keys), and training from it
    gives the best trial's config and, seeded alike, its validation ELBOs."""
    try:
        import tomllib
    except ModuleNotFoundError:  # Python < 3.11
        import tomli as tomllib

    recipe = tomllib.loads((out / "best.toml").read_text())
    assert all("-" not in key for section in recipe.values() for key in section)
    code, _, err = run_cli(capsys, "train", "--config", out / "best.toml", "--out", again,
                           "--quiet")
    assert code == 0, err
    best = out / f"trials/{summary['best']:04d}"
    trial, retrained = (json.loads((d / "config.json").read_text()) for d in (best, again))
    assert retrained["model"] == trial["model"] and retrained["train"] == trial["train"]
    curves = [[json.loads(line)["val_elbo"] for line in (d / "metrics.jsonl").open()]
              for d in (best, again)]
    assert curves[0] == pytest.approx(curves[1], rel=1e-5)


def test_help_lists_the_options(capsys):
    code, out, _ = run_cli(capsys, "tune", "--help")
    assert code == 0
    for flag in ("--data", "--budget", "--out", "--space", "--storage", "--workers",
                 "--pruner", "--rerank", "--epochs", "--val-fraction"):
        assert flag in out


def test_a_tiny_study_end_to_end_with_its_report(capsys, table, tmp_path):
    out = tmp_path / "study"
    code, text, err = run_cli(capsys, "tune", "--data", table, "--out", out, "--budget",
                              "3-trials", "--epochs", "2", "--space", _small_space(tmp_path),
                              "--rerank", "2", "--rerank-k", "5", "--val-fraction", "0.25",
                              "--quiet")
    assert code == 0, err
    summary = json.loads((out / "study.json").read_text())
    for trial in summary["trials"]:                # every trial holds out the same quarter
        config = json.loads((out / trial["run_dir"] / "config.json").read_text())
        assert config["train"]["val_fraction"] == 0.25
    assert len(summary["trials"]) == 3 and f"best: trial {summary['best']}" in text
    assert (out / "best.toml").is_file() and "report: vaelab report" in text
    _best_toml_retrains_the_best_trial(capsys, out, summary, tmp_path / "again")
    code, text, _ = run_cli(capsys, "runs", out)
    assert code == 0 and "3 runs" in text and "trials/0002" in text
    code, text, _ = run_cli(capsys, "report", out)
    assert code == 0
    page = (out / "report.html").read_text()
    tables = html_tables(page)
    trials = tables.tables["trials-table"][1:]
    assert [row[0] for row in trials] == ["0", "1", "2"]
    for row, trial in zip(trials, summary["trials"], strict=True):
        assert row[1] == trial["state"]
        if trial["value"] is not None:
            assert row[2] == f"{trial['value']:.3f}"
    ranking = tables.tables["ranking-table"][1:]
    assert [int(r[1]) for r in ranking] == [r["number"] for r in summary["ranking"]]
    assert ranking[0][5] == "reference"
    best = summary["ranking"][0]                     # ± over the rows, Monte Carlo apart
    assert ranking[0][3] == f"{best['val_log_likelihood']:.3f} ± {best['se']:.3f}"
    assert ranking[0][4] == f"{best['se_mc']:.3f}"
    assert "data:image/png;base64," in page          # the best trials' curves
    assert "[model]" in page and "The search space" in page
