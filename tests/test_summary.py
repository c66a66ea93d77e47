"""vaelab.tune.summary: study.json from the database, and parameter importances.

The importance oracle: a study whose score depends on one parameter only must credit that
parameter with almost all the importance.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from vaelab.tune import summary
from vaelab.tune.budget import Budget
from vaelab.tune.space import Param

optuna = pytest.importorskip("optuna")


def _study(n: int):
    study = optuna.create_study(direction="maximize",
                                sampler=optuna.samplers.RandomSampler(seed=0))
    study.optimize(lambda t: -(t.suggest_float("x", -3, 3) ** 2)
                   + 0 * t.suggest_float("y", -3, 3), n_trials=n)
    return study


def test_importance_goes_to_the_parameter_the_score_depends_on():
    found = summary.importances(_study(20))
    assert set(found) == {"x", "y"} and found["x"] > 0.8 and found["x"] > 5 * found["y"]
    assert summary.importances(_study(2)) == {}        # too few trials: none, not noise


@dataclass
class _Search:
    out: Path
    url: str = "sqlite:///x.db"
    study_name: str = "s"
    base: dict = field(default_factory=lambda: {"train": {"data": "d.npy"}})
    budget: Budget = Budget(trials=3)
    epochs: int = 2
    pruner: str = "median"
    space: dict = field(default_factory=lambda: {"lr": Param("lr", "float", 1e-4, 1e-2,
                                                             log=True)})


def test_study_json_keeps_the_final_entries_between_writes(tmp_path):
    study = _study(3)
    search = _Search(tmp_path)
    summary.write_summary(study, search, {"best": 1, "ranking": [], "recipe": "best.toml"})
    data = summary.read_summary(tmp_path)
    assert data["space"] == {"lr": "[0.0001, 0.01] log"} and len(data["trials"]) == 3
    assert data["trials"][1]["value"] == pytest.approx(study.trials[1].value)
    summary.write_summary(study, search)          # a later trial's write keeps them
    assert summary.read_summary(tmp_path)["best"] == 1 and summary.is_study(tmp_path)
    (tmp_path / "study.json").write_text(json.dumps({"format": "other"}))
    with pytest.raises(ValueError, match="is not a vaelab study"):
        summary.read_summary(tmp_path)
