"""vaelab.tune.study: trials as run directories, pruning, a killed tune resumed, two processes.

Everything runs on a tiny binary table (400 rows × 12) with a space file that fixes every
parameter but the ones a test varies, so each trial is a fraction of a second of training;
the processes are real ``python -m vaelab tune`` commands where a kill or a second process is
the point.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from vaelab.tune import space as space_
from vaelab.tune.budget import Budget
from vaelab.tune.search import tune
from vaelab.tune.storage import open_study, storage_url

optuna = pytest.importorskip("optuna")
TrialState = optuna.trial.TrialState


@pytest.fixture(scope="module")
def table(tmp_path_factory) -> Path:
    """400 binary rows of 12 values from a 2-latent logistic model (seeded)."""
    rng = np.random.default_rng(0)
    z = rng.normal(size=(400, 2))
    logits = z @ (2 * rng.normal(size=(2, 12)))
    path = tmp_path_factory.mktemp("tune_data") / "table.npy"
    np.save(path, (rng.random((400, 12)) < 1 / (1 + np.exp(-logits))).astype(np.float32))
    return path


def fixed_space(folder: Path, **chosen) -> Path:
    """A JSON space file fixing every default parameter (first choice, or the range's low
    end), a small fast model, with ``chosen`` entries over it."""
    values: dict = {}
    for name, param in space_.default_space("binary", 12).items():
        values[name] = param.choices[0] if param.choices else param.low
    values.update({"latent_dim": 2, "lr": 3e-3, "net.mlp.hidden.units": 16,
                   "batch_size": 16, **chosen})
    path = folder / "space.json"
    path.write_text(json.dumps(values))
    return path


def _study(out: Path):
    return open_study(storage_url(out, None), "vaelab")


def _epochs(run_dir: Path) -> list[int]:
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line)["epoch"] for line in lines if line.strip()]


def _command(table: Path, out: Path, space: Path, budget: str, epochs: int) -> list[str]:
    return [sys.executable, "-m", "vaelab", "tune", "--data", str(table), "--out", str(out),
            "--budget", budget, "--epochs", str(epochs), "--space", str(space),
            "--pruner", "none", "--rerank", "0", "--quiet"]


def _env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def _wait_for_epoch(run_dir: Path, process: subprocess.Popen, timeout: float = 120) -> None:
    """Return once ``run_dir`` has finished an epoch (the process still training)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        metrics = run_dir / "metrics.jsonl"
        if metrics.is_file() and metrics.read_text().strip():
            return
        assert process.poll() is None, process.stderr.read() if process.stderr else ""
        time.sleep(0.02)
    raise AssertionError(f"no epoch finished in {run_dir} within {timeout} s")


def test_trials_are_run_directories_and_the_best_is_a_recipe(table, tmp_path):
    from vaelab.config import RunConfig, load_config_file
    from vaelab.fit import runs
    from vaelab.show.runs_table import format_runs

    space = fixed_space(tmp_path, **{"latent_dim": {"low": 1, "high": 3}})
    out = tmp_path / "study"
    result = tune(str(table), out, Budget(trials=3), epochs=2, space_file=space,
                  rerank_top=2, rerank_k=5, rerank_limit=None, progress=False, log=None)
    study = _study(out)
    trials = study.get_trials()
    assert [t.number for t in trials] == [0, 1, 2]
    assert all(t.state == TrialState.COMPLETE for t in trials)
    assert trials[0].user_attrs["baseline"] and trials[0].params == {}
    base = runs.read_config(out / "trials" / "0000")   # the starting point: vaelab's defaults
    assert base.model.latent_dim == 20 and base.model.net_options["hidden"] == (512, 256)
    for t in trials:                       # a normal run: config, weights, 2 epochs of metrics
        run = out / "trials" / f"{t.number:04d}"
        if t.number > 0:
            assert runs.read_config(run).model.latent_dim == t.params["latent_dim"]
        assert _epochs(run) == [1, 2]
        # it keeps its best validation epoch's weights, the ones its score measured
        assert runs.read_config(run).train.early_stopping_patience == 2
        best = max(json.loads(x)["val_elbo"] for x in (run / "metrics.jsonl").open())
        assert t.value == pytest.approx(best)
    assert "3 runs" in format_runs(out)
    # the recipe reads back to the chosen trial's config (what the data decide aside)
    chosen = runs.read_config(out / "trials" / f"{result.best:04d}")
    recipe = RunConfig.from_dict(load_config_file(out / "best.toml"))
    assert recipe.to_dict()["train"] == chosen.to_dict()["train"]
    assert recipe.model.with_data(12, None) == chosen.model
    # re-ranked by validation log-likelihood, the best of the top two by the bound first
    assert len(result.ranking) == 2 and result.best == result.ranking[0]["number"]
    top2 = sorted((t for t in trials), key=lambda t: -t.value)[:2]
    assert {r["number"] for r in result.ranking} == {t.number for t in top2}
    assert result.ranking[0]["val_log_likelihood"] >= result.ranking[1]["val_log_likelihood"]
    summary = json.loads((out / "study.json").read_text())
    assert summary["best"] == result.best and len(summary["trials"]) == 3
    # a second call on a spent budget runs nothing and keeps every trial
    again = tune(str(table), out, Budget(trials=3), epochs=2, space_file=space,
                 rerank_top=2, rerank_k=5, rerank_limit=None, progress=False, log=None)
    assert len(_study(out).get_trials()) == 3 and again.best == result.best
    # resuming under other settings would mix trials of two setups in one ranking: refused
    with pytest.raises(ValueError, match=r"^--epochs: the study 'vaelab' in .* was started "
                                         r"with epochs = 2; expected the same to resume it "
                                         r".*got epochs = 3$"):
        tune(str(table), out, Budget(trials=4), epochs=3, space_file=space, progress=False,
             log=None)
    (tmp_path / "other").mkdir()
    other = fixed_space(tmp_path / "other", **{"latent_dim": {"low": 1, "high": 4}})
    # the refusal names the entry that changed, with its old and new range
    with pytest.raises(ValueError, match=r"^--space: the study 'vaelab' in .* was started with "
                                         r"the space's latent_dim \[1, 3\]; expected the same "
                                         r".*got the space's latent_dim \[1, 4\]$"):
        tune(str(table), out, Budget(trials=4), epochs=2, space_file=other, progress=False,
             log=None)
    # and a --space forgotten on the resume names an entry the file had set
    with pytest.raises(ValueError, match=r"^--space: .* was started with the space's "
                                         r"batch_size = 16; .*got the space without batch_size$"):
        tune(str(table), out, Budget(trials=4), epochs=2, progress=False, log=None)
    with pytest.raises(ValueError, match=r"^--val-fraction: the study 'vaelab' in .* was "
                                         r"started with val_fraction unset \(the default\); .*got "
                                         r"val_fraction = 0.3$"):
        tune(str(table), out, Budget(trials=4), epochs=2, space_file=space, val_fraction=0.3,
             progress=False, log=None)
    assert len(_study(out).get_trials()) == 3
    # a training run's folder is not a study's
    with pytest.raises(ValueError, match=r"^--out: .*0000' is a training run"):
        tune(str(table), out / "trials" / "0000", Budget(trials=1), epochs=2, progress=False,
             log=None)


def test_the_median_rule_prunes_a_hopeless_trial(table, tmp_path):
    space = fixed_space(tmp_path, lr={"choices": [3e-3, 1e-7]})
    out = tmp_path / "study"
    out.mkdir()
    study = _study(out)
    for lr in (3e-3, 3e-3, 3e-3, 1e-7):     # three that learn, then one that cannot
        study.enqueue_trial({"lr": lr})
    tune(str(table), out, Budget(trials=4), epochs=5, space_file=space, pruner="median",
         rerank_top=0, baseline=False, progress=False, log=None)
    states = [t.state for t in _study(out).get_trials()]
    assert states == [TrialState.COMPLETE] * 3 + [TrialState.PRUNED]
    hopeless = _epochs(out / "trials" / "0003")
    assert hopeless == list(range(1, len(hopeless) + 1)) and len(hopeless) < 5


def test_without_re_ranking_the_best_is_the_highest_validation_elbo(table, tmp_path):
    # --rerank 0 asks for no importance-sampled re-ranking, not for no answer: the study still
    # names its best trial and writes its recipe, saying it was chosen by the bound alone.
    space = fixed_space(tmp_path, lr={"choices": [3e-3, 1e-7]})
    out = tmp_path / "study"
    out.mkdir()
    study = _study(out)
    for lr in (1e-7, 3e-3):
        study.enqueue_trial({"lr": lr})
    result = tune(str(table), out, Budget(trials=2), epochs=2, space_file=space, pruner="none",
                  rerank_top=0, baseline=False, progress=False, log=None)
    trials = _study(out).get_trials()
    assert [t.state for t in trials] == [TrialState.COMPLETE] * 2
    highest = max(trials, key=lambda t: t.value)
    assert result.best == highest.number and result.ranking == []
    assert result.recipe is not None and "validation ELBO" in result.recipe.read_text()
    assert json.loads((out / "study.json").read_text())["best"] == highest.number


def test_a_refused_combination_is_a_bad_trial_the_sampler_sees(table, tmp_path):
    # iwae-dreg has no form for a mixture q: those trials are refused before any epoch. Told
    # as pruned (not failed, which TPE leaves out of its model and then proposes again) with
    # the reason, and the study goes on with the rest.
    space = fixed_space(tmp_path, objective="iwae-dreg",
                        family={"choices": ["mixture", "diagonal-normal"]})
    out = tmp_path / "study"
    out.mkdir()
    study = _study(out)
    for family in ("mixture", "diagonal-normal"):
        study.enqueue_trial({"family": family})
    tune(str(table), out, Budget(trials=2), epochs=1, space_file=space, pruner="none",
         rerank_top=0, baseline=False, progress=False, log=None)
    refused, trained = _study(out).get_trials()
    assert refused.state == TrialState.PRUNED and refused.intermediate_values == {}
    assert refused.user_attrs["error"].startswith("invalid combination: objective")
    assert not (out / "trials" / "0000" / "metrics.jsonl").exists()
    assert trained.state == TrialState.COMPLETE and "error" not in trained.user_attrs


def test_an_epoch_with_a_negative_kl_fails_the_trial_before_it_is_reported():
    from vaelab.tune import study as study_

    class Bar:
        def update(self, n): pass
        def set_postfix(self, **kw): pass

    study = optuna.create_study(direction="maximize")
    trial = study.ask()
    on_epoch = study_._reporter(trial, Bar(), epochs=10)
    on_epoch({"epoch": 1, "val_elbo": -20.0, "val_rate": -0.5})     # MC noise near KL 0
    with pytest.raises(study_.BrokenEstimate, match="KL estimate -5.43e.08 nats at epoch 2"):
        on_epoch({"epoch": 2, "val_elbo": 5.4e8, "val_rate": -5.43e8})
    assert study.trials[0].intermediate_values == {1: -20.0}      # the +5.4e8 never counts


def test_a_killed_tune_resumes_its_trial_without_losing_or_repeating_one(table, tmp_path):
    space = fixed_space(tmp_path)
    out = tmp_path / "study"
    argv = _command(table, out, space, "2-trials", 40)
    first = subprocess.Popen(argv, env=_env(), stderr=subprocess.PIPE, text=True)
    try:
        _wait_for_epoch(out / "trials" / "0000", first)
        first.send_signal(signal.SIGKILL)
    finally:
        first.wait(60)
    left = _study(out).get_trials()
    assert [(t.number, t.state) for t in left] == [(0, TrialState.RUNNING)]
    before = (out / "trials" / "0000" / "metrics.jsonl").read_text().splitlines()
    assert 1 <= len(before) < 40            # killed in the middle of the trial
    done = subprocess.run(argv, env=_env(), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    trials = _study(out).get_trials()
    assert [(t.number, t.state) for t in trials] == [(0, TrialState.COMPLETE),
                                                    (1, TrialState.COMPLETE)]
    after = (out / "trials" / "0000" / "metrics.jsonl").read_text().splitlines()
    assert _epochs(out / "trials" / "0000") == list(range(1, 41))
    assert after[:len(before)] == before    # resumed from its checkpoint, not run again
    assert trials[0].user_attrs["resumed_by"] != trials[0].user_attrs["worker"]
    assert sorted(p.name for p in (out / "trials").iterdir()) == ["0000", "0001"]


def test_two_processes_share_one_sqlite_study(table, tmp_path):
    space = fixed_space(tmp_path)
    out = tmp_path / "study"
    argv = _command(table, out, space, "4-trials", 15)
    first = subprocess.Popen(argv, env=_env(), stderr=subprocess.PIPE, text=True)
    try:
        _wait_for_epoch(out / "trials" / "0000", first)   # the first holds trial 0 now
        second = subprocess.run(argv, env=_env(), capture_output=True, text=True, timeout=600)
        assert second.returncode == 0, second.stderr
    finally:
        assert first.wait(600) == 0
    trials = _study(out).get_trials()
    # several processes may each start one trial beyond a trial budget (see the budget docs)
    assert 4 <= len(trials) <= 5
    assert all(t.state == TrialState.COMPLETE for t in trials)
    assert len({t.user_attrs["worker"] for t in trials}) == 2       # both ran trials
    for t in trials:                        # each trial trained once, in its own folder
        assert _epochs(out / "trials" / f"{t.number:04d}") == list(range(1, 16))


def test_a_trial_killed_before_its_figures_resumes_to_a_fresh_trials_files(table, tmp_path):
    """A trial killed after its last epoch's checkpoint, before its pictures (here: the
    figure writer interrupted), is taken over by the next tune with no epoch left to train;
    it still ends with the files of a trial that ran through (curves.png among them)."""
    from vaelab.fit import lock
    from vaelab.show.plots import write_run_figures

    def killed(*_args, **_kwargs):
        raise KeyboardInterrupt

    space = fixed_space(tmp_path)
    options = {"epochs": 2, "space_file": space, "pruner": "none", "rerank_top": 0,
               "progress": False, "log": None}
    out, fresh = tmp_path / "study", tmp_path / "fresh"
    with pytest.raises(KeyboardInterrupt):
        tune(str(table), out, Budget(trials=1), figures=killed, **options)
    lock.unlock_run(out / "trials" / "0000")          # as its process's death would
    assert [t.state for t in _study(out).get_trials()] == [TrialState.RUNNING]
    assert not (out / "trials" / "0000" / "curves.png").exists()
    tune(str(table), out, Budget(trials=1), figures=write_run_figures, **options)
    tune(str(table), fresh, Budget(trials=1), figures=write_run_figures, **options)
    trial = _study(out).get_trials()[0]
    assert trial.state == TrialState.COMPLETE and "resumed_by" in trial.user_attrs
    assert sorted(p.name for p in (out / "trials" / "0000").iterdir()) == sorted(
        p.name for p in (fresh / "trials" / "0000").iterdir())


def test_a_trials_collapse_warning_names_the_trial_and_is_kept_in_study_json(
        table, tmp_path, monkeypatch, capsys):
    # train(log=None) prints no bare warning: the study tells it with the trial's number
    # (through its log, silent under --quiet) and keeps it beside the trial, as an error is.
    from vaelab.fit import train as train_module

    line = "warning: posterior collapse: no active unit of 2"
    monkeypatch.setattr(train_module, "collapse_from_metrics", lambda *_a, **_k: line)
    space = fixed_space(tmp_path)
    said: list[str] = []
    for out, log in ((tmp_path / "loud", said.append), (tmp_path / "quiet", None)):
        out.mkdir()
        tune(str(table), out, Budget(trials=1), epochs=1, space_file=space, pruner="none",
             rerank_top=0, baseline=False, progress=False, log=log)
        assert "posterior collapse" not in capsys.readouterr().err
        (trial,) = json.loads((out / "study.json").read_text())["trials"]
        assert trial["state"] == "complete" and trial["warning"] == line
    assert f"trial 0: {line}" in said
    # a caller with a log of its own (the CLI, --quiet or not) still gets it on stderr
    result = train_module.train({"model": {"latent_dim": 2, "hidden": [8]},
                                 "train": {"data": str(table), "epochs": 1, "device": "cpu"}},
                                tmp_path / "run", progress=False, log=lambda _line: None)
    assert result.warnings == (line,) and line in capsys.readouterr().err
