"""The search loop of ``vaelab tune``: trials as run directories, pruned, resumable, shared.

Role in vaelab: each trial is one ``vaelab.fit.train.train`` call writing a normal run
directory, ``DIR/trials/NNNN`` (NNNN = the Optuna trial number), so ``vaelab report``,
``runs`` and ``evaluate`` work on it. Its score is its best validation ELBO over the epochs
(nats per example, maximized), reported to Optuna after every epoch; the pruner (the median
rule of Optuna's MedianPruner, or successive halving, Li et al. 2017) stops a trial whose
validation ELBO at an epoch is worse than the others' at that epoch. The sampler is TPE
(Bergstra et al. 2011).

Resume and parallel processes. A trial's process holds its run directory's lock
(``vaelab.fit.lock``: an OS lock the kernel releases when the process dies, SIGKILL
included) for as long as it trains it. A trial the database says is RUNNING but whose lock
can be taken was left by a killed process: the next ``vaelab tune`` on the study takes it over
*as the same trial* (same number, same parameters), resumes its run directory from its last
checkpoint (``train(resume=True)``) and reports it — no trial is lost and none runs twice.
Several processes on one study (``--workers``, or several commands on one ``--storage``)
each ask Optuna for the next trial; the database hands each a different one.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from vaelab.config import RunConfig, merge
from vaelab.fit import lock
from vaelab.tune.budget import Budget
from vaelab.tune.space import Param, sample

TRIALS_DIR = "trials"
#: A RUNNING trial with no run directory recorded is taken over only after this long: its
#: process may be between asking for the trial and locking its folder.
CLAIM_GRACE_S = 60.0
PRUNERS = ("median", "halving", "none")
#: A validation rate (the mean over the rows of log q(z|x) − log p(z) at z ~ q, an unbiased
#: estimate of a KL, which is never negative) below minus this many nats per example is a
#: numerically broken q or prior, not noise: the estimate's spread is about √(2·KL/n) for n
#: rows, and KL − √(2·KL/n) > −1 for every KL ≥ 0 and n ≥ 1. (A wine trial with a
#: full-covariance q and a flow prior had a rate of −5.4e8 at epoch 1, so a validation
#: "ELBO" of +5.4e8 that would have won the study and been kept as its best epoch.)
RATE_FLOOR = -1.0


class BrokenEstimate(Exception):
    """A validation epoch whose numbers no valid model can give (see :data:`RATE_FLOOR`)."""


@dataclass
class Search:
    """What every process of one study searches with (picklable, for ``--workers``)."""

    out: Path
    url: str
    study_name: str
    base: dict
    space: dict[str, Param]
    epochs: int
    budget: Budget
    pruner: str = "median"
    seed: int = 0
    progress: bool = True
    figures: Callable[..., object] | None = None
    log: Callable[[str], object] | None = None
    started: float = field(default_factory=time.monotonic)
    #: Make the study's first trial the base config itself (vaelab's defaults or --config),
    #: unsampled: the search then never ends worse on validation than where it started.
    baseline: bool = True

    def say(self, line: str) -> None:
        if self.log is not None:
            self.log(line)


def trial_dir(out: Path, number: int) -> Path:
    """The run directory of trial ``number``."""
    return out / TRIALS_DIR / f"{number:04d}"


def make_pruner(name: str, epochs: int = 1) -> Any:
    """Optuna's pruner called ``name`` (:data:`PRUNERS`): the median rule after three
    trials, successive halving from a tenth of the epochs, or none. Neither judges a trial
    in its first fifth (a tenth) of ``epochs``: early validation ELBOs rank warm-ups and
    decaying learning rates poorly."""
    import optuna

    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=max(1, epochs // 5))
    if name == "halving":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=max(1, epochs // 10),
                                                      reduction_factor=3)
    if name == "none":
        return optuna.pruners.NopPruner()
    raise ValueError(f"--pruner: expected one of {', '.join(map(repr, PRUNERS))}, got {name!r}")


def open_search_study(search: Search) -> Any:
    """The study with TPE (seeded per process: processes sharing a study must not propose
    the same points) and the search's pruner."""
    import optuna

    from vaelab.tune.storage import open_study

    sampler = optuna.samplers.TPESampler(seed=search.seed * 100003 + os.getpid() % 100003,
                                         n_startup_trials=5)
    return open_study(search.url, search.study_name, sampler=sampler,
                      pruner=make_pruner(search.pruner, search.epochs))


# --------------------------------------------------------------------------- the loop


def run_trials(search: Search) -> None:
    """Run trials until the budget is spent: first any trial a killed process left, then new
    ones. Returns when this process may start no more."""
    study = open_search_study(search)
    with _study_bar(search) as bar:
        while not _time_is_up(search):
            orphan = take_orphan(study, search.out)
            if orphan is not None:
                search.say(f"trial {orphan.number}: its process was stopped; resuming it")
                _run(study, _as_trial(study, orphan), search)
            elif _trials_are_up(study, search.budget):
                return
            else:
                trial = study.ask()
                folder = trial_dir(search.out, trial.number)
                lock.lock_run(folder, "--out")
                trial.set_user_attr("run_dir", str(folder.relative_to(search.out)))
                trial.set_user_attr("worker", worker())
                if search.baseline and not any(t.user_attrs.get("baseline") for t in
                                               study.get_trials(deepcopy=False)):
                    trial.set_user_attr("baseline", True)
                _run(study, trial, search)
            _advance(bar, study, search)


def _study_bar(search: Search) -> Any:
    """The study's progress bar: trials ended of the budget, or seconds spent of it."""
    from tqdm import tqdm

    budget = search.budget
    total = budget.trials if budget.trials is not None else round(budget.seconds or 0)
    return tqdm(total=total, desc="study", unit="trial" if budget.trials else "s",
                disable=None if search.progress else True, dynamic_ncols=True, position=0)


def _advance(bar: Any, study: Any, search: Search) -> None:
    from optuna.trial import TrialState

    ended = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
    if search.budget.trials is not None:
        bar.n = min(bar.total, len(study.get_trials(deepcopy=False, states=ended)))
    else:
        bar.n = min(bar.total, round(time.monotonic() - search.started))
    try:
        bar.set_postfix(best=f"{study.best_value:.2f}")
    except ValueError:              # no complete trial yet
        bar.refresh()


def _time_is_up(search: Search) -> bool:
    seconds = search.budget.seconds
    return seconds is not None and time.monotonic() - search.started >= seconds


def _trials_are_up(study: Any, budget: Budget) -> bool:
    from optuna.trial import TrialState

    if budget.trials is None:
        return False
    counted = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL, TrialState.RUNNING)
    return len(study.get_trials(deepcopy=False, states=counted)) >= budget.trials


def take_orphan(study: Any, out: Path) -> Any:
    """A RUNNING trial whose process is gone (its run directory's lock is free), now locked
    by this process; None when there is none."""
    from optuna.trial import TrialState

    now = datetime.now(timezone.utc).replace(tzinfo=None)
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        started = trial.datetime_start or now
        if "run_dir" not in trial.user_attrs and (
                (now - started.replace(tzinfo=None)).total_seconds() < CLAIM_GRACE_S):
            continue
        folder = trial_dir(out, trial.number)
        try:
            lock.lock_run(folder, "--out")
        except lock.RunLocked:
            continue
        # Its process may have told the study and unlocked between our read and our lock.
        if study._storage.get_trial(trial._trial_id).state == TrialState.RUNNING:
            return trial
        lock.unlock_run(folder)
    return None


def _as_trial(study: Any, frozen: Any) -> Any:
    """A live trial object on a RUNNING trial of the database (to report and prune it)."""
    import optuna

    trial = optuna.trial.Trial(study, frozen._trial_id)
    trial.set_user_attr("run_dir", f"{TRIALS_DIR}/{frozen.number:04d}")
    trial.set_user_attr("resumed_by", worker())
    return trial


def worker() -> str:
    """This process, as the trials record who ran them: 'host:pid'."""
    import socket

    return f"{socket.gethostname()}:{os.getpid()}"


def trial_config(trial: Any, search: Search) -> RunConfig:
    """The run config of a trial: the base config, the sampled settings over it (none for
    the baseline trial), the search's epochs. Raises ValueError/TypeError for a combination
    the config refuses."""
    baseline = trial.user_attrs.get("baseline", False)
    settings = {} if baseline else sample(trial, search.space)
    merged = merge(search.base, {**settings, "epochs": search.epochs})
    return RunConfig.from_dict(merged)


def _run(study: Any, trial: Any, search: Search) -> None:
    """Train one trial and tell the study how it ended; its lock is released at the end."""
    from optuna.trial import TrialState

    folder = trial_dir(search.out, trial.number)
    try:
        state, value, error = _train_trial(trial, folder, search)
    except KeyboardInterrupt:
        raise                      # left RUNNING: the next tune resumes it
    except BaseException as exc:
        trial.set_user_attr("error", f"unexpected {type(exc).__name__}: {exc}")
        study.tell(trial, state=TrialState.FAIL)
        lock.unlock_run(folder)
        raise
    if error is not None:
        trial.set_user_attr("error", error)
        search.say(f"trial {trial.number} {'failed' if state == TrialState.FAIL else 'refused'}"
                   f": {error}")
    study.tell(trial, value if state == TrialState.COMPLETE else None, state=state)
    lock.unlock_run(folder)
    from vaelab.tune.summary import write_summary

    write_summary(study, search)


def _train_trial(trial: Any, folder: Path, search: Search) -> tuple[Any, float | None, str | None]:
    """(state, value, error) of one trial, trained into ``folder``."""
    import optuna
    from optuna.trial import TrialState

    from vaelab.fit.resume import TrainingError
    from vaelab.fit.train import train

    try:
        config = trial_config(trial, search)
    except (TypeError, ValueError) as exc:      # a combination the config refuses
        # Told as pruned before its first epoch, not failed: TPE leaves failed trials out of
        # its model, so it proposed the same refused point again and again (a wine study
        # spent 118 of 134 trials on mixture q + iwae-dreg); a pruned trial with no value
        # counts among the bad ones, and the sampler moves away from it.
        return TrialState.PRUNED, None, f"invalid combination: {exc}"
    resume = (folder / "config.json").is_file()
    bar = _trial_bar(trial.number, search)
    try:
        result = train(None if resume else config, folder, resume=resume, overwrite=not resume,
                       progress=False, log=None, figures=search.figures,
                       on_epoch=_reporter(trial, bar, search.epochs))
    except optuna.TrialPruned:
        return TrialState.PRUNED, None, None
    except BrokenEstimate as exc:
        return TrialState.FAIL, None, str(exc)
    except (TrainingError, ValueError) as exc:
        return TrialState.FAIL, None, " ".join(str(exc).split())
    finally:
        bar.close()
    if result.warnings:
        # Told as a failed trial's error is: with the trial's number through the study's log
        # (silent under --quiet) and kept in study.json and on the study page; train was
        # given log=None, so it printed nothing bare to stderr.
        trial.set_user_attr("warning", " ".join(result.warnings))
        for line in result.warnings:
            search.say(f"trial {trial.number}: {line}")
    value = best_val_elbo(result.metrics)
    if value is None:
        return TrialState.FAIL, None, "no finite validation ELBO (diverged?)"
    return TrialState.COMPLETE, value, None


def best_val_elbo(metrics: list[dict]) -> float | None:
    """The best finite validation ELBO of a run's metrics rows (None when there is none)."""
    values = [r.get("val_elbo") for r in metrics]
    finite = [float(v) for v in values if isinstance(v, (int, float)) and math.isfinite(v)]
    return max(finite) if finite else None


def _reporter(trial: Any, bar: Any, epochs: int) -> Callable[[dict], None]:
    """The per-epoch hook: report the validation ELBO, stop the trial if the pruner says."""
    import optuna

    def on_epoch(row: dict) -> None:
        bar.update(1)
        rate = row.get("val_rate")
        if isinstance(rate, (int, float)) and rate < RATE_FLOOR:   # checked before reporting
            raise BrokenEstimate(
                f"validation KL estimate {rate:.3g} nats at epoch {row['epoch']}: a KL is "
                f"never negative, so q's or the prior's log-density is numerically broken")
        value = row.get("val_elbo")
        if isinstance(value, (int, float)) and math.isfinite(value):
            bar.set_postfix(val_elbo=f"{value:.2f}")
            trial.report(float(value), int(row["epoch"]))
            if row["epoch"] < epochs and trial.should_prune():   # the last epoch: complete
                raise optuna.TrialPruned(f"pruned after epoch {row['epoch']}")
    return on_epoch


def _trial_bar(number: int, search: Search) -> Any:
    from tqdm import tqdm

    return tqdm(total=search.epochs, desc=f"trial {number}", unit="epoch", leave=False,
                disable=None if search.progress else True, dynamic_ncols=True, position=1)
