"""vaelab.show.study_page: what the study page says about trials without a score, the
re-ranking's two errors and missing importances (HTML parsed, no browser)."""

from __future__ import annotations

import json

from conftest import html_tables

from vaelab.show import study_page


def _study(tmp_path):
    trials = [{"number": 0, "state": "complete", "value": -10.0, "epochs": 3, "seconds": 1.0,
               "params": {}, "error": None, "run_dir": "trials/0000", "baseline": True},
              {"number": 1, "state": "fail", "value": None, "epochs": 0, "seconds": 0.5,
               "params": {"lr": 0.01}, "error": "invalid combination", "run_dir": None},
              {"number": 2, "state": "complete", "value": -11.0, "epochs": 3, "seconds": 1.0,
               "params": {"lr": 0.001}, "error": None, "run_dir": "trials/0002"}]
    ranking = [{"number": 0, "run_dir": "trials/0000", "val_elbo": -10.0,
                "val_log_likelihood": -9.5, "se": 0.4, "se_mc": 0.02, "k": 50,
                "num_examples": 28, "difference": None, "difference_se": None},
               {"number": 2, "run_dir": "trials/0002", "val_elbo": -11.0,
                "val_log_likelihood": -9.9, "se": 0.5, "se_mc": 0.03, "k": 50,
                "num_examples": 28, "difference": -0.4, "difference_se": 0.3}]
    (tmp_path / "study.json").write_text(json.dumps(
        {"format": "vaelab-study/1", "trials": trials, "ranking": ranking, "space": {},
         "importances": {}, "best": 0, "recipe": None, "score": "best validation ELBO",
         "rank_by": "validation log p̂(x)", "data": "table.csv", "budget": "3-trials",
         "epochs": 3, "pruner": "median", "storage": "sqlite:///study.db",
         "study_name": "study"}))
    return tmp_path


def test_a_trial_without_a_score_shows_none_and_the_ranking_both_errors(tmp_path):
    html = study_page.render_study(_study(tmp_path))
    cells = html_tables(html)
    trials = [row for row in cells.tables["trials-table"] if row and row[0] in "012"]
    assert [row[2] for row in trials] == ["-10.000", "—", "-11.000"]
    ranking = [row for row in cells.tables["ranking-table"] if row and row[0] in "12"]
    assert ranking[0][3:5] == ["-9.500 ± 0.400", "0.020"]
    assert ranking[1][5] == "-0.400 ± 0.300"
    assert "the baseline trial, vaelab's defaults, samples none" in html
