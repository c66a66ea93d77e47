"""``vaelab tune``'s one call: search, re-rank, write the recipe and the study's summary.

Role in vaelab: :func:`tune` puts the parts of :mod:`vaelab.tune` together — the data's kind
decides the default space (``vaelab.tune.space``), the study opens in its database
(``vaelab.tune.storage``), this process and ``workers - 1`` more run trials until the budget
is spent (``vaelab.tune.study``), the best trials by validation ELBO are re-ranked by
validation log-likelihood (``vaelab.tune.rank``), and ``DIR/best.toml`` and ``DIR/study.json``
(``vaelab.tune.summary``) are written. Running it again on the same DIR resumes the study.
"""

from __future__ import annotations

import dataclasses
import multiprocessing
import os
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from vaelab.config import RunConfig, load_config_file, merge
from vaelab.tune.budget import Budget
from vaelab.tune.space import (
    Param,
    check_combinations,
    check_likelihoods,
    default_space,
    likelihood_for,
    load_space,
)
from vaelab.tune.study import Search, open_search_study, run_trials

RANK_BY = "importance-sampled validation log p̂(x)"
#: What ranks the trials when none is re-ranked: a bound can prefer the wrong model, so the
#: recipe says it was chosen by the bound alone.
RANK_BY_BOUND = "validation ELBO (no trial re-ranked: --rerank 0)"


@dataclass(frozen=True)
class TuneResult:
    """What :func:`tune` returns.

    Attributes:
        out: the study's folder.
        trials: the study's trials by state ({"complete": 7, "pruned": 5, ...}).
        ranking: the re-ranked trials, best first (see ``vaelab.tune.rank.rerank``).
        best: the chosen trial's number (None when no trial completed).
        recipe: ``DIR/best.toml`` (None when no trial completed).
    """

    out: Path
    trials: dict[str, int]
    ranking: list[dict]
    best: int | None
    recipe: Path | None


def base_config(data: str, kind: str, config_file: str | os.PathLike | None, *,
                epochs: int, seed: int, limit: int | None,
                val_fraction: float | None = None) -> dict:
    """The settings every trial starts from: a config file (or vaelab's defaults), the data,
    the likelihood and binarization for the data's kind (unless the file chooses them), the
    seed (the same validation rows for every trial) and a --limit. ValueError when the
    result is not a valid config or has no validation rows."""
    base = load_config_file(Path(config_file)) if config_file is not None else {"model": {},
                                                                         "train": {}}
    fixed = likelihood_for(kind)
    overrides = {"data": data, "seed": seed, "limit": limit, "epochs": epochs,
                 "binarize": None if "binarize" in base["train"] else fixed["binarize"],
                 "likelihood": None if "likelihood" in base["model"] else fixed["likelihood"]}
    if val_fraction is not None:
        overrides["val_fraction"] = val_fraction
    if base["train"].get("early_stopping_patience") is None:
        # Keep each trial's weights of its best validation epoch (a patience of all the
        # epochs never stops one early): the score is the best validation ELBO, so the
        # saved model, re-ranked and evaluated, is the one the score measured, not a later
        # one that has overfitted a small table since.
        overrides["early_stopping_patience"] = epochs
    merged = merge(base, overrides)
    config = RunConfig.from_dict(merged)
    if config.train.val_fraction == 0:
        raise ValueError("val_fraction: tuning compares trials on validation rows; expected "
                         "a fraction > 0, got 0")
    return merged


def data_kind(source: str) -> tuple[str, int, int]:
    """(kind, values per example, rows) of the training data at ``source``."""
    from vaelab import data

    dataset = data.load_dataset(source, "train", keep_uint8=True, mmap=True)
    return data.kind_of(dataset), int(dataset.x.shape[1]), int(dataset.x.shape[0])


def tune(data: str, out: str | os.PathLike, budget: Budget, *, epochs: int = 20,
         space_file: str | os.PathLike | None = None, config_file: str | os.PathLike | None = None,
         storage: str | None = None, study_name: str = "vaelab", workers: int = 1,
         pruner: str = "median", seed: int = 0, limit: int | None = None,
         val_fraction: float | None = None, rerank_top: int = 3,
         rerank_k: int = 1000, rerank_limit: int | None = 1000, baseline: bool = True,
         progress: bool = True,
         figures: Callable[..., object] | None = None,
         log: Callable[[str], object] | None = print) -> TuneResult:
    """Search for the best model of ``data`` within ``budget`` into the folder ``out``.

    Args:
        data: a dataset name or path (as ``vaelab train --data``).
        out: the study's folder: ``trials/NNNN`` run directories, ``study.db`` (unless
            ``storage``), ``study.json``, ``best.toml``. An existing study there resumes.
        budget: trials for the study or time for this call (``vaelab.tune.budget``).
        epochs: epochs per trial (a pruned trial stops earlier).
        space_file: a TOML/JSON file overriding the default search space.
        config_file: the config every trial starts from (default: vaelab's defaults).
        storage: an Optuna database URL (default: SQLite in ``out``).
        study_name: the study's name in the database.
        workers: processes running trials (this one and ``workers - 1`` more).
        pruner: "median", "halving" or "none".
        seed: the runs' seed (their validation split) and the sampler's.
        limit: use the first N training rows only.
        val_fraction: the fraction of the training rows held out for validation (None: the
            config file's, else vaelab's default).
        rerank_top, rerank_k, rerank_limit: re-rank the best ``rerank_top`` trials by
            log p̂(x) with k draws on the first ``rerank_limit`` validation rows (None: all).
        baseline: the study's first trial is the starting config itself, unsampled (so the
            search never ends worse on validation than where it started).
        progress: progress bars (on a terminal).
        figures: draws each trial's pictures (the CLI passes the run figures).
        log: where notes go (None: nowhere).

    Raises:
        ValueError: a bad budget, space file, config, data or database (one line).
    """
    from vaelab.tune.storage import require_optuna, storage_url

    require_optuna()
    out = Path(out).expanduser()
    if workers < 1:
        raise ValueError(f"--workers: expected an integer >= 1, got {workers}")
    from vaelab.fit.runs import run_exists

    if out.is_dir() and run_exists(out):
        raise ValueError(f"--out: {str(out)!r} is a training run (it holds config.json); "
                         "expected an empty or new folder, or a study's folder")
    url = storage_url(out, storage)
    kind, width, rows = data_kind(data)
    base = base_config(data, kind, config_file, epochs=epochs, seed=seed, limit=limit,
                       val_fraction=val_fraction)
    space = default_space(kind, width, rows if limit is None else min(rows, limit))
    if space_file is not None:
        space = load_space(Path(space_file), space)
        check_likelihoods(space, kind)
        check_combinations(space, base, epochs, f"--space {str(space_file)!r}")
    search = Search(out=out, url=url, study_name=study_name, base=base, space=space,
                    epochs=epochs, budget=budget, pruner=pruner, seed=seed, progress=progress,
                    figures=figures, log=log, baseline=baseline)
    study = _open_in_out(search)
    helpers = _start_workers(search, workers - 1)
    try:
        run_trials(search)
    finally:
        for process in helpers:
            process.join()
    return finish(study, search, rerank_top=rerank_top, rerank_k=rerank_k,
                  rerank_limit=rerank_limit)


def _open_in_out(search: Search) -> Any:
    """Create the study's folder (only now: the data, config and space were checked first)
    and open its study; a refusal here removes the folders this call created while they are
    still empty, as ``vaelab train`` does, so a failed command leaves no empty --out."""
    from vaelab.data import first_missing, remove_empty_dirs

    created = first_missing(search.out)
    try:
        try:
            search.out.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ValueError(f"--out: cannot create {str(search.out)!r}: "
                             f"{exc.strerror or exc}") from None
        study = open_search_study(search)          # a database that cannot be opened: now
        check_same_setup(study, search)
    except BaseException:
        remove_empty_dirs(search.out, created)
        raise
    return study


#: What defines a study, with the flags that set it: resuming a study under other values
#: would mix trials of different settings in one ranking. A setting of the starting config
#: that no flag of its own sets came from --config.
SETUP_FLAGS = {"epochs": "--epochs", "space": "--space", "pruner": "--pruner",
               "data": "--data", "seed": "--seed", "limit": "--limit",
               "val_fraction": "--val-fraction"}


def _setup(search: Search) -> dict:
    import json

    space = {name: dataclasses.asdict(param) for name, param in search.space.items()}
    # through JSON, so that the values compare as the database gives them back
    return json.loads(json.dumps({"epochs": search.epochs, "base": search.base,
                                  "space": space, "pruner": search.pruner}, default=str))


def check_same_setup(study: Any, search: Search) -> None:
    """Record the study's setup on its first start; on a resume, refuse (one line naming the
    flag) a setup that differs from the recorded one."""
    setup = _setup(search)
    recorded = study.user_attrs.get("setup")
    if recorded is None:
        study.set_user_attr("setup", setup)
        return
    differs = _first_difference(recorded, setup)
    if differs is not None:
        key, was, now = differs
        flag = SETUP_FLAGS.get(key, "--config")
        values = (_space_difference(was or {}, now) if key == "space" else
                  tuple(f"{key} unset (the default)" if v is None else f"{key} = {v!r}"
                        for v in (was, now)))
        raise ValueError(f"{flag}: the study {search.study_name!r} in {str(search.out)!r} was "
                         f"started with {values[0]}; expected the same to resume it (or a new "
                         f"--out or --study-name), got {values[1]}")


def _space_difference(was: dict, now: dict) -> tuple[str, str]:
    """How the recorded and the new search space differ, as the first parameter (by name) that
    differs on each side: "the space's latent_dim [1, 3]", "... latent_dim [1, 4]" (the user
    sees which entry of the space file, or its absence, changed)."""
    def side(space: dict, name: str) -> str:
        if name not in space:
            return f"the space without {name}"
        return f"the space's {name} {Param(**space[name]).describe()}"

    name = next(n for n in sorted(set(was) | set(now)) if was.get(n) != now.get(n))
    return side(was, name), side(now, name)


def _first_difference(recorded: dict, setup: dict) -> tuple[str, Any, Any] | None:
    """(key, recorded value, new value) of the first setting that differs; the starting
    config's settings are compared one by one, so the message names the one that changed."""
    for key in ("epochs", "space", "pruner"):
        if recorded.get(key) != setup[key]:
            return key, recorded.get(key), setup[key]
    old = recorded.get("base") or {}
    for section, values in setup["base"].items():
        before = old.get(section) or {}
        for name in sorted(set(values) | set(before)):
            if before.get(name) != values.get(name):
                return name, before.get(name), values.get(name)
    return None


def _start_workers(search: Search, count: int) -> list[Any]:
    """``count`` more processes running trials of the same study (spawned: a fresh
    interpreter each, no state shared but the database and the folder)."""
    context = multiprocessing.get_context("spawn")
    quiet = replace(search, progress=False, log=None, baseline=False)
    processes = [context.Process(target=run_trials, args=(quiet,), daemon=True)
                 for _ in range(count)]
    for process in processes:
        process.start()
    return processes


def _best_by_bound(rows: list[dict]) -> dict | None:
    """The complete trial of the highest validation ELBO (None when none completed): the
    choice when no trial is re-ranked (``--rerank 0``)."""
    complete = [r for r in rows if r["state"] == "complete" and r["value"] is not None]
    return max(complete, key=lambda r: r["value"]) if complete else None


def finish(study: Any, search: Search, *, rerank_top: int, rerank_k: int,
           rerank_limit: int | None) -> TuneResult:
    """Re-rank, write the recipe and the final study.json; → the result."""
    from vaelab.tune.rank import rerank, write_recipe
    from vaelab.tune.summary import importances, trial_rows, write_summary

    rows = trial_rows(study)
    ranking = rerank(search.out, rows, top=rerank_top, k=rerank_k, limit=rerank_limit,
                     log=search.log)
    chosen, rank_by = (ranking[0], RANK_BY) if ranking else (_best_by_bound(rows), RANK_BY_BOUND)
    best = None if chosen is None else chosen["number"]
    recipe = None if chosen is None else write_recipe(search.out, chosen, rank_by)
    final = {"ranking": ranking, "best": best, "rank_by": rank_by,
             "recipe": None if recipe is None else recipe.name,
             "importances": importances(study)}
    write_summary(study, search, final)
    counts: dict[str, int] = {}
    for row in rows:
        counts[row["state"]] = counts.get(row["state"], 0) + 1
    return TuneResult(search.out, counts, ranking, best, recipe)
