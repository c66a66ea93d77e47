"""What ``vaelab runs`` and ``vaelab report`` say is wrong with a run's model.

Run folders are written by hand (config.json, metrics.jsonl, eval.json) so each case is
exact: a run whose ELBO fell to −2.6e11, one whose posterior collapsed, one that is fine.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file

from vaelab.show import report, runs_table
from vaelab.show.runinfo import model_problems, read_run


def _run(folder: Path, metrics: list[dict], latent=20, evaluation: dict | None = None) -> Path:
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({
        "format": "vaelab-run/1", "model": {"latent_dim": latent, "likelihood": "gaussian"},
        "train": {"data": "t.csv"}, "dataset": {"name": "t"}}))
    rows = [{"epoch": i + 1, "step": 10 * (i + 1), "skipped_steps": 0, "val_elbo": None,
             "train_rate": 3.0, **row} for i, row in enumerate(metrics)]
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    save_file({"w": np.zeros(2, np.float32)}, folder / "model.safetensors")  # a whole run
    if evaluation is not None:
        (folder / "eval.json").write_text(json.dumps(evaluation))
    return folder


def _three(root: Path) -> tuple[Path, Path, Path]:
    good = _run(root / "good", [{"train_elbo": -40.0}, {"train_elbo": -30.0}])
    bad = _run(root / "bad", [{"train_elbo": -2.6e11}, {"train_elbo": -2.6e11},
                              {"train_elbo": -50.0}, {"train_elbo": -9e8}])
    flat = _run(root / "flat", [{"train_elbo": -31.0, "val_rate": 0.097,
                                 "val_active_units": 0, "val_elbo": -31.5}])
    return good, bad, flat


def test_model_problems_name_divergence_and_collapse(tmp_path):
    good, bad, flat = _three(tmp_path)
    assert model_problems(read_run(good)) == []
    (diverged,) = model_problems(read_run(bad))
    assert diverged.tag == "diverged (epochs 1-2, 4)"
    (collapsed,) = model_problems(read_run(flat))
    assert collapsed.tag == "collapsed" and "no active unit of 20" in collapsed.line


def test_skipped_steps_count_as_divergence(tmp_path):
    run = _run(tmp_path / "r", [{"train_elbo": -30.0, "skipped_steps": 6},     # 6 of 10
                                {"train_elbo": -30.0, "skipped_steps": 5}])    # 5 of 10
    assert [p.tag for p in model_problems(read_run(run))] == ["diverged (epoch 1)"]


def test_evaluations_own_collapse_warning_is_used(tmp_path):
    line = "warning: posterior collapse: no active unit of 20 (...)"
    run = _run(tmp_path / "r", [{"train_elbo": -30.0}], evaluation={"warnings": [line]})
    assert [(p.tag, p.line) for p in model_problems(read_run(run))] == [("collapsed", line)]


def test_the_runs_table_fills_its_problems_column(tmp_path):
    _three(tmp_path)
    lines = runs_table.format_runs(tmp_path).splitlines()
    cells = {line.split()[0]: line for line in lines[2:-1]}
    assert cells["bad"].rstrip().endswith("diverged (epochs 1-2, 4)")
    assert cells["flat"].rstrip().endswith("collapsed")
    assert cells["good"].rstrip().endswith("—")              # no problem: an empty cell


def test_the_report_marks_problems_and_draws_a_diverged_curve_apart(tmp_path):
    good, bad, flat = _three(tmp_path)
    runs = [read_run(p) for p in (good, bad, flat)]
    headers, rows, _ = report.comparison_rows(runs)
    column = headers.index("problems")
    assert [str(r[column]) for r in rows] == ["", "diverged (epochs 1-2, 4)", "collapsed"]
    together, apart = report.curve_groups(runs)
    assert [r.name for r in together] == ["good", "flat"] and [r.name for r in apart] == ["bad"]
    html = report.render_report([good, bad, flat])
    assert "training diverged in epoch(s) 1-2, 4" in html and "posterior collapse" in html
