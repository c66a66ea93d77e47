"""``DIR/study.json``: what a tuning study is and how its trials went, for people and reports.

Role in vaelab: after every trial (by whichever process ran it) the study's state is written
to ``DIR/study.json`` atomically — the data, the budget, the search space, every trial (number,
state, score, parameters, run directory, why it failed) — and at the end the re-ranking by
validation log-likelihood, the chosen trial, its recipe and the parameter importances.
``vaelab report DIR`` reads this file and the trials' run directories; it needs neither Optuna
nor the database (which may be a server the reader cannot reach).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from vaelab._files import atomic_write_json

STUDY_FILE = "study.json"
FORMAT = "vaelab-study/1"
#: Parameter importances are computed from at least this many complete trials.
MIN_TRIALS_FOR_IMPORTANCE = 3


def is_study(folder: str | Path) -> bool:
    """Whether ``folder`` holds a tuning study written by ``vaelab tune``."""
    return (Path(folder) / STUDY_FILE).is_file()


def read_summary(folder: str | Path) -> dict:
    """The study.json of ``folder``; ValueError naming the file when unreadable."""
    path = Path(folder) / STUDY_FILE
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ValueError(f"DIR: cannot read {str(path)!r}: {exc}") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise ValueError(f"DIR: {str(path)!r} is not a vaelab study (expected format "
                         f"{FORMAT!r})")
    return data


def trial_rows(study: Any) -> list[dict]:
    """One JSON row per trial of ``study``, in trial order."""
    rows = []
    for t in study.get_trials(deepcopy=False):
        values = t.intermediate_values
        rows.append({"number": t.number, "state": t.state.name.lower(), "value": t.value,
                     "params": {k: _plain(v) for k, v in t.params.items()},
                     "run_dir": t.user_attrs.get("run_dir"),
                     "baseline": bool(t.user_attrs.get("baseline", False)),
                     "epochs": max(values) if values else 0,
                     "error": t.user_attrs.get("error"),
                     "warning": t.user_attrs.get("warning"),
                     "seconds": (t.duration.total_seconds() if t.duration is not None
                                 else None)})
    return rows


def _plain(value: object) -> object:
    return value if isinstance(value, (str, int, float, bool)) or value is None else str(value)


def importances(study: Any) -> dict[str, float]:
    """Optuna's parameter importances (fANOVA, Hutter et al. 2014: the share of the score's
    variance over the space each parameter explains; 16 seeded trees, a few seconds) over
    the complete trials; {} with fewer
    than :data:`MIN_TRIALS_FOR_IMPORTANCE` or when they cannot be computed (e.g. every
    parameter constant)."""
    import optuna
    from optuna.trial import TrialState

    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if len(complete) < MIN_TRIALS_FOR_IMPORTANCE:
        return {}
    # The parameters every sampled trial has (the baseline trial has none, and a component's
    # options only the trials that chose it): Optuna then uses the trials that have them all.
    sampled = [set(t.params) for t in complete if t.params]
    params = sorted(set.intersection(*sampled)) if sampled else []
    if len(sampled) < MIN_TRIALS_FOR_IMPORTANCE or not params:
        return {}
    try:
        evaluator = optuna.importance.FanovaImportanceEvaluator(n_trees=16, seed=0)
        found = optuna.importance.get_param_importances(study, evaluator=evaluator,
                                                        params=params)
    except (RuntimeError, ValueError):
        return {}
    return {name: float(value) for name, value in found.items()}


def write_summary(study: Any, search: Any, final: dict | None = None) -> Path:
    """Write ``DIR/study.json`` from the database (``final``: the end-of-search entries —
    ranking, best trial, recipe, importances — kept from an earlier write otherwise)."""
    from vaelab.tune.storage import shown_url

    path = Path(search.out) / STUDY_FILE
    old: dict = {}
    if final is None and path.is_file():
        try:
            old = read_summary(search.out)
        except ValueError:
            old = {}
    summary = {"format": FORMAT, "study_name": search.study_name,
               "storage": shown_url(search.url), "data": search.base["train"].get("data"),
               "budget": str(search.budget), "epochs": search.epochs,
               "pruner": search.pruner,
               "score": "best validation ELBO over the epochs (nats per example)",
               "space": {name: p.describe() for name, p in search.space.items()},
               "trials": trial_rows(study)}
    for key in ("ranking", "best", "recipe", "importances", "rank_by"):
        if final is not None and key in final:
            summary[key] = final[key]
        elif key in old:
            summary[key] = old[key]
    return atomic_write_json(path, summary, allow_nan=False)
