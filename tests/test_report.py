"""``vaelab report`` / ``vaelab runs`` and their reader: numbers, pairing, missing pieces.

The paired difference is checked against a hand computation; the page's tables against the
eval.json they render; a run with missing or broken files still renders and says what is
missing; ``--tensorboard`` writes events that TensorBoard's own reader reads back.
"""

from __future__ import annotations

import json
import math
import os
import re
import time
from html import unescape
from pathlib import Path

import numpy as np
import pytest
from conftest import html_tables
from safetensors.numpy import save_file

from vaelab import cli
from vaelab.show import report, runinfo, runs_table


def _eval(values: list[float], **extra) -> dict:
    n = len(values)
    mean = sum(values) / n
    return {"data": "fashion-mnist", "split": "test", "seed": 0, "binarized": True,
            "num_examples": n, "population_size": 100, "num_samples": 10, "latent_dim": 2,
            "log_likelihood": {"mean": mean, "se": 0.5},
            "elbo": {"mean": mean - 1, "se": 0.4}, "rate": {"mean": 3.0, "se": 0.1},
            "distortion": {"mean": 5.0, "se": 0.2}, "gap": {"mean": 1.0, "se": 0.05},
            "nll_bits_per_dim": {"mean": 0.5, "se": 0.001}, "ess": {"mean": 5.0, "min": 1.2},
            "active_units": 2,
            "per_example": {"log_likelihood": values}, **extra}


def _run(folder: Path, evaluation: dict | None = None, metrics: list[dict] | None = None,
         config: dict | None = None) -> Path:
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps(config or {
        "model": {"latent_dim": 2, "family": "diagonal_normal"},
        "train": {"epochs": 2, "data": "fashion-mnist"},
        "dataset": {"name": "fashion-mnist", "num_train": 90, "num_val": 10}}))
    rows = metrics if metrics is not None else [
        {"epoch": 1, "train_elbo": -300.0, "val_elbo": -290.0, "samples_per_s": 1000.0,
         "seconds": 1.5},
        {"epoch": 2, "train_elbo": -280.0, "val_elbo": -270.0, "samples_per_s": 1200.0,
         "seconds": 1.25}]
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    save_file({"w": np.zeros(2, np.float32)}, folder / "model.safetensors")  # before results
    if evaluation is not None:
        (folder / "eval.json").write_text(json.dumps(evaluation))
    return folder


# --------------------------------------------------------------------------- pairing


def test_paired_difference_matches_a_hand_computation():
    a = _eval([1.0, 2.0, 4.0, 7.0])
    b = _eval([0.0, 1.0, 2.0, 3.0])
    diff = runinfo.paired_difference(a, b)
    # d = 1, 1, 2, 4: mean 2, sample sd sqrt(2), SE sqrt(2)/2
    assert diff.n == 4 and diff.mean == pytest.approx(2.0, abs=1e-12)
    assert diff.se == pytest.approx(math.sqrt(2.0) / 2, abs=1e-12)


def test_no_pairing_across_different_examples_or_without_per_example_values():
    a = _eval([1.0, 2.0, 3.0])
    assert runinfo.paired_difference(a, _eval([1.0, 2.0, 3.0], seed=1)) is None
    assert runinfo.paired_difference(a, _eval([1.0, 2.0, 3.0], split="train")) is None
    assert runinfo.paired_difference(a, _eval([1.0, 2.0])) is None
    plain = {k: v for k, v in a.items() if k != "per_example"}
    assert runinfo.paired_difference(a, plain) is None
    single = runinfo.paired_difference(_eval([5.0]), _eval([2.0]))
    assert single.mean == 3.0 and single.se is None          # undefined, never 0


def test_fmt_shows_undefined_and_non_finite_plainly():
    assert str(report.fmt(None)) == '<span class="undefined">undefined</span>'
    assert "non-finite (nan)" in str(report.fmt(float("nan")))
    assert "non-finite (-inf)" in str(report.fmt(float("-inf")))
    assert str(report.fmt(1.23456, 2)) == "1.23"


# --------------------------------------------------------------------------- the page


def test_two_runs_comparison_table_holds_the_right_numbers(tmp_path):
    a = _run(tmp_path / "a", _eval([-10.0, -12.0, -11.0, -9.0]))
    b = _run(tmp_path / "b", _eval([-9.0, -11.5, -10.0, -8.0]))
    out = report.write_report([a, b], tmp_path / "r.html")
    page = html_tables(out.read_text())
    rows = page.tables["comparison-table"]
    assert rows[0][:4] == ["run", "data", "test log p̂(x) ± SE (nats)",
                           "paired Δ vs first ± SE (nats)"]
    assert rows[1][0] == "a" and rows[1][2] == "-10.500 ± 0.500" and rows[1][3] == "reference"
    # d = 1, 0.5, 1, 1: mean 0.875, sd 0.25, SE 0.125
    assert rows[2][0] == "b" and rows[2][2] == "-9.625 ± 0.500"
    assert rows[2][3] == "0.875 ± 0.125"
    assert rows[2][8] == "1200" and rows[2][9] == "2.8"  # last samples/s; 1.5 + 1.25 s
    assert all(img["src"].startswith("data:image/png;base64,") and img.get("alt")
               for img in page.images) and page.images  # the overlaid curves


def test_comparison_never_sets_different_quantities_side_by_side(tmp_path):
    a = _run(tmp_path / "a", _eval([-10.0, -12.0]))
    score = _run(tmp_path / "score", _eval([-9.0, -11.0], log_likelihood_normalised=False))
    other = _run(tmp_path / "wine", _eval([-25.0, -26.0], data="wine.csv", likelihood_meaning={
        "meaning": "density", "data_kind": "continuous", "note": "density"}))
    ais = _run(tmp_path / "ais", _eval([-9.5, -11.5], estimator={
        "name": "ais", "steps": 100, "chains": 8, "leapfrog": 3}))
    html = unescape(report.render_report([a, score, other, ais]))
    rows = html_tables(html).tables["comparison-table"]
    assert rows[0][-2] == "log p̂ estimated by" and rows[1][-2] == "IS, k = 10, encoder proposal"
    assert rows[0][-1] == "problems" and rows[1][-1] == ""
    assert rows[2][2].endswith("(score, not log p(x))") and rows[2][3] == "undefined"
    assert rows[3][2].endswith("(density)") and rows[3][3] == "undefined"
    assert rows[4][3] == "0.500 ± 0.000"            # d = 0.5, 0.5: a computed SE of 0
    assert rows[4][-2] == "AIS, 100 steps × 8 chains, 3 leapfrog"
    assert "score's log p̂ is a score while a's is a probability" in html
    assert "wine was evaluated on other data (wine.csv test continuous)" in html


def test_model_row_lists_only_settings_in_use(tmp_path):
    run = _run(tmp_path / "r", config={"model": {
        "latent_dim": 2, "family": "diagonal_normal", "q_components": 4, "prior": "mog",
        "prior_components": 10, "net": "mlp", "conv_channels": [32, 64], "likelihood":
        "bernoulli", "likelihood_components": 5, "hierarchy": "ladder"}, "train": {}})
    html = report.render_report([run])
    assert "prior_components = 10" in html and "q_components" not in html
    assert "conv_channels" not in html and "likelihood_components" not in html
    assert "hierarchy" not in html and "2 epochs finished" in html


def test_a_run_with_missing_and_broken_pieces_still_renders(tmp_path):
    run = _run(tmp_path / "bare", metrics=[])
    (run / "gaps.json").write_text("{not json")
    (run / "latent.png").write_bytes(b"not a png")
    (run / "scores.json").write_text(json.dumps({"auroc": 0.93, "per_class": [0.9, 0.95]}))
    html = report.render_report([run])
    assert "Test evaluation: not computed" in html and f"vaelab evaluate {run}" in html
    assert "Inference gaps: not computed" in html
    assert "gaps.json: unreadable" in html and "latent.png: not a readable PNG" in html
    assert "No pictures in this run." in html
    tables = html_tables(html).tables
    extra = [t for t in tables.values() if t and ["auroc", "0.93"] in t]
    assert extra and ["per_class", "0.9, 0.95"] in extra[0]   # other results shown generically
    assert "none recorded" in html                            # no validation ELBO


def test_single_run_metrics_table_and_unnormalised_label(tmp_path):
    run = _run(tmp_path / "r", _eval([-3.0, -5.0]))
    metrics = [t for t in html_tables(report.render_report([run])).tables.values()
               if t and t[0] == ["quantity", "mean", "± SE"]][0]
    assert ["log p̂(x) (nats)", "-4.000", "0.500"] in metrics
    assert ["NLL (bits/dim)", "0.5000", "0.0010"] in metrics
    assert ["ESS (min over examples)", "1.2", "—"] in metrics        # a minimum has no SE
    score = _run(tmp_path / "s", _eval([-3.0, -5.0], log_likelihood_normalised=False))
    html = report.render_report([score])
    assert "unnormalised log-score" in html and "NLL (bits/dim)" not in html
    density = _run(tmp_path / "d", _eval([-3.0, -5.0], likelihood_meaning={
        "meaning": "density", "note": "nats of density are reported, not bits/dim"}))
    html = report.render_report([density])
    assert "log density p̂(x) (nats, not a probability)" in html
    assert "NLL (bits/dim)" not in html and "nats of density are reported" in html


def test_stale_evaluation_is_flagged(tmp_path):
    run = _run(tmp_path / "r", _eval([-3.0, -5.0]))
    (run / "model.safetensors").write_bytes(b"weights")
    old = time.time() - 100
    os.utime(run / "eval.json", (old, old))
    assert any("eval.json" in p and "older model" in p for p in runinfo.read_run(run).problems)


def test_write_report_is_atomic_and_checks_its_arguments(tmp_path):
    run = _run(tmp_path / "r")
    with pytest.raises(ValueError, match=r"--out: expected a path ending in \.html"):
        report.write_report([run], tmp_path / "r.txt")
    with pytest.raises(ValueError, match="RUN: expected a run directory"):
        report.write_report([tmp_path / "missing"], tmp_path / "x.html")
    with pytest.raises(ValueError, match="at least one run"):
        report.render_report([])
    with pytest.raises(ValueError, match=r"--out: cannot write '.*nowhere/r\.html'"):
        report.write_report([run], tmp_path / "nowhere" / "r.html")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r"]  # nothing half-written


# --------------------------------------------------------------------------- runs table


def test_runs_table_newest_first_with_honest_gaps(tmp_path):
    old = _run(tmp_path / "old", _eval([-3.0, -5.0]))
    new = _run(tmp_path / "nested" / "new")
    past = time.time() - 1000
    for f in old.iterdir():
        os.utime(f, (past, past))
    text = runs_table.format_runs(tmp_path)
    lines = text.splitlines()
    assert lines[0].split()[0] == "run" and lines[-1] == "2 runs"
    assert lines[2].startswith("nested/new") and lines[3].startswith("old")
    assert "-4.00 ± 0.50" in lines[3] and "0.5000" in lines[3]
    assert lines[2].count("—") >= 2 and "-270.00" in lines[2]  # not evaluated: shown as —
    assert new.name == "new"
    broken = _run(tmp_path / "broken", metrics=[{"epoch": 1, "val_elbo": -3.6e30}])
    (broken / "eval.json").write_text('{"log_lik')
    row = [r for r in runs_table.format_runs(tmp_path).splitlines() if r.startswith("broken")]
    assert "-3.6e+30" in row[0] and "unreadable  " in row[0]
    assert row[0].rstrip().endswith("eval.json unreadable")
    (tmp_path / "empty").mkdir()
    assert runs_table.format_runs(tmp_path / "empty").startswith("no runs under")


def test_cli_report_and_runs_errors(tmp_path, capsys):
    assert cli.main(["report", str(tmp_path / "nope")]) == 1
    err = capsys.readouterr().err
    assert re.fullmatch(r"vaelab: error: RUN: expected a run directory, got '.*nope', which "
                        r"does not exist\n", err)
    assert cli.main(["runs", str(tmp_path / "nope")]) == 1
    assert "DIR: expected a folder" in capsys.readouterr().err
    run = _run(tmp_path / "r", _eval([-1.0, -2.0]))
    assert cli.main(["report", str(run)]) == 0
    assert capsys.readouterr().out.strip() == f"report: {run / 'report.html'}"
    assert (run / "report.html").is_file()


# --------------------------------------------------------------------------- tensorboard


def test_tensorboard_flag_without_the_package_is_one_line(tmp_path, capsys, monkeypatch):
    from vaelab.show import tensorboard

    monkeypatch.setattr(tensorboard, "available", lambda: False)
    assert cli.main(["train", "--out", str(tmp_path / "run"), "--tensorboard"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("vaelab: error: --tensorboard: needs the 'tensorboard' package")
    assert not (tmp_path / "run").exists()


def test_tensorboard_logger_writes_scalars_tensorboard_reads_back(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from vaelab.show.tensorboard import open_logger

    logger = open_logger(tmp_path)
    logger({"epoch": 1, "step": 5, "train_elbo": -100.5, "val_elbo": None, "lr": 1e-3})
    logger({"epoch": 2, "step": 10, "train_elbo": -90.25, "val_elbo": -95.0, "lr": 1e-3})
    logger.close()
    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    assert sorted(events.Tags()["scalars"]) == ["lr", "train/elbo", "val/elbo"]
    assert [(e.step, e.value) for e in events.Scalars("train/elbo")] == [(1, -100.5),
                                                                          (2, -90.25)]
    assert [(e.step, e.value) for e in events.Scalars("val/elbo")] == [(2, -95.0)]


def test_settings_come_from_the_catalogue_for_nested_and_flat_configs():
    """The same run described with nested options (this version's config.json) and with the
    older flat keys gives the same settings; only the chosen components' options appear."""
    nested = {"family": "iaf", "family_options": {"flow_steps": 3}, "prior": "vamp",
              "prior_options": {"components": 50}}
    flat = {"family": "iaf", "q_flow_steps": 3, "q_components": 7, "prior": "vamp",
            "prior_components": 50, "prior_flow_steps": 9}
    for model in (nested, flat):
        got = report.component_settings(model, report.MODEL_KINDS)
        assert got == ["likelihood = bernoulli", "net = mlp", "hidden = [512, 256]",
                       "activation = relu", "gated = False", "weight_norm = False",
                       "family = iaf", "q_flow_steps = 3", "q_flow_update = affine",
                       "prior = vamp",
                       "prior_components = 50", "prior_init = uniform"]
    train = {"kl_schedule": "cyclical", "kl_cycles": 2, "lr_schedule": "exponential",
             "lr_decay": 0.5, "free_bits": 0.1}
    assert report.component_settings(train, ("kl-schedule", "lr-schedule", "objective")) == [
        "kl_schedule = cyclical", "kl_cycles = 2", "kl_ratio = 0.5",
        "lr_schedule = exponential", "lr_decay = 0.5", "objective = elbo", "free_bits = 0.1"]


def test_report_labels_both_standard_error_rules_and_the_k1_lower_bound(tmp_path):
    """With k = 1 the ± of log p̂(x) and bits/dim is undefined but its between-example part is
    not: the report shows it as "≥" (the value eval.json keeps as se_data); the notes name the
    rule behind each ± from eval.json's se_rules."""
    from vaelab.measure.evaluate import SE_RULES

    evaluation = _eval([-3.0, -5.0], num_samples=1, se_rules=SE_RULES,
                       log_likelihood={"mean": -4.0, "se": None, "se_data": 0.25,
                                       "undefined": {"se": "k = 1"}},
                       nll_bits_per_dim={"mean": 0.5, "se": None, "se_data": 0.0125})
    html = report.render_report([_run(tmp_path / "r", evaluation)])
    metrics = [t for t in html_tables(html).tables.values()
               if t and t[0] == ["quantity", "mean", "± SE"]][0]
    assert ["log p̂(x) (nats)", "-4.000", "≥0.250"] in metrics
    assert ["NLL (bits/dim)", "0.5000", "≥0.0125"] in metrics
    assert ["ELBO (nats)", "-5.000", "0.400"] in metrics
    text = unescape(html)
    assert SE_RULES["across examples"] in text and SE_RULES["split mean"] in text


def test_runs_table_and_report_show_the_saved_epochs_validation_elbo(tmp_path):
    """Early stopping saved epoch 2's weights: its bound is shown, labelled, not epoch 3's."""
    metrics = [{"epoch": e, "train_elbo": -300.0, "val_elbo": v}
               for e, v in ((1, -290.0), (2, -229.09), (3, -229.3))]
    config = {"model": {"latent_dim": 2}, "dataset": {"name": "fashion-mnist"},
              "train": {"epochs": 3, "early_stopping_patience": 5}}
    stopped = _run(tmp_path / "stopped", metrics=metrics, config=config)
    plain = _run(tmp_path / "plain", metrics=metrics,
                 config={**config, "train": {"epochs": 3, "early_stopping_patience": None}})
    rows = {r.split()[0]: r for r in runs_table.format_runs(tmp_path).splitlines()[2:-1]}
    assert "-229.09 (epoch 2, best)" in rows["stopped"] and "-229.30" not in rows["stopped"]
    assert "-229.30 (epoch 3)" in rows["plain"]
    about = dict(report._about(runinfo.read_run(stopped)))
    assert about["validation ELBO of the saved model (nats)"] == (
        "best val ELBO -229.09 at epoch 2 (saved); last epoch 3: -229.30")
    html = unescape(report.render_report([plain]))
    assert "val ELBO -229.30 at epoch 3 (saved; the last epoch)" in html
