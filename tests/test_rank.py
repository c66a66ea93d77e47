"""vaelab.tune.rank: re-ranking by validation log-likelihood, paired differences, recipes.

Oracles: numpy for the paired difference and its standard error; the config loader for the
recipe (what is written reads back to the same config); cached estimates with known values
for the ordering (the estimator itself is tested in test_evaluate.py).
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from vaelab.config import ModelConfig, RunConfig, TrainConfig, load_config_file
from vaelab.tune import rank


def test_paired_difference_matches_numpy():
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=50), rng.normal(size=50)
    mean, se = rank.paired(a.tolist(), b.tolist())
    d = a - b
    assert mean == pytest.approx(d.mean(), abs=1e-12)
    assert se == pytest.approx(d.std(ddof=1) / math.sqrt(50), abs=1e-12)
    assert rank.paired([1.0], [0.5]) == (0.5, None)        # undefined, never 0


def _cached(run_dir, per_example, k=7, limit=None):
    run_dir.mkdir(parents=True)
    per = np.asarray(per_example, dtype=float)
    (run_dir / rank.VAL_LL_FILE).write_text(json.dumps({
        "split": "validation", "k": k, "limit": limit, "seed": 0, "num_examples": len(per),
        "mean": per.mean(), "se": per.std(ddof=1) / math.sqrt(len(per)),
        "per_example": per.tolist()}))


def test_the_bound_chooses_the_candidates_and_the_likelihood_orders_them(tmp_path):
    # trial 1 has the best bound but trial 2 the best likelihood (a looser gap); trial 3 is
    # out of the top 2 by the bound; trial 4 was pruned: never a candidate
    trials = [{"number": n, "state": s, "value": v, "run_dir": f"trials/{n:04d}"}
              for n, s, v in [(0, "complete", -100.0), (1, "complete", -90.0),
                              (2, "complete", -95.0), (3, "complete", -120.0),
                              (4, "pruned", -80.0)]]
    values = {0: [-99, -98, -97], 1: [-89, -90, -88], 2: [-85, -86, -84],
              3: [-80, -80, -80], 4: [-1, -1, -1]}
    for n, per in values.items():
        _cached(tmp_path / f"trials/{n:04d}", per)
    ranked = rank.rerank(tmp_path, trials, top=3, k=7, limit=None)
    assert [r["number"] for r in ranked] == [2, 1, 0]
    assert ranked[0]["difference"] is None and ranked[0]["difference_se"] is None
    mean, se = rank.paired(values[1], values[2])
    assert ranked[1]["difference"] == pytest.approx(mean) == pytest.approx(-4.0)
    assert ranked[1]["difference_se"] == pytest.approx(se)
    assert ranked[1]["val_elbo"] == -90.0 and ranked[0]["k"] == 7
    # ± is the standard error over the rows (numpy), the cached Monte Carlo error apart
    per = np.asarray(values[1], dtype=float)
    assert ranked[1]["se"] == pytest.approx(per.std(ddof=1) / math.sqrt(3))
    assert ranked[1]["se_mc"] == pytest.approx(per.std(ddof=1) / math.sqrt(3))   # _cached's


def _ranking(diffs):
    rows = [{"number": 0, "val_log_likelihood": -1.0, "se": 0.5, "se_mc": 0.01, "k": 50,
             "num_examples": 28, "val_elbo": -2.0, "difference": None, "difference_se": None}]
    for n, (d, se) in enumerate(diffs, start=1):
        rows.append({**rows[0], "number": n, "difference": d, "difference_se": se})
    return rows


def test_runners_up_within_two_paired_standard_errors_are_not_separated():
    ranking = _ranking([(-1.015, 0.984), (-3.0, 1.0), (-2.1, 1.0), (-0.5, None)])
    assert [r["number"] for r in rank.not_separated(ranking)] == [1, 4]
    lines = rank.ranking_lines(ranking)
    assert lines[0] == ("1. trial 0: validation log p̂(x) -1.000 ± 0.500 over 28 rows "
                        "(Monte Carlo ± 0.010, k=50), ELBO -2.000")
    assert lines[1].endswith("(-1.015 ± 0.984 paired)")
    assert lines[4].endswith("(-0.500 ± undefined paired)")
    assert lines[-1].startswith("note: the leader, trial 0, is not ahead of trial(s) 1, 4 by "
                                "more than 2 paired standard errors on 28 validation rows")
    assert not any(line.startswith("note") for line in rank.ranking_lines(_ranking([(-3, 1)])))


def test_a_cached_estimate_with_other_settings_is_not_reused(tmp_path, monkeypatch):
    _cached(tmp_path / "trials/0000", [-1.0, -2.0], k=5)
    called = []
    monkeypatch.setattr("vaelab.use.trained.load", lambda run: called.append(run) or 1 / 0)
    with pytest.raises(ZeroDivisionError):       # k differs: it would be computed again
        rank.validation_log_likelihood(tmp_path / "trials/0000", k=6, limit=None)
    assert called == [tmp_path / "trials/0000"]
    same = rank.validation_log_likelihood(tmp_path / "trials/0000", k=5, limit=None)
    assert same["mean"] == -1.5


def test_a_recipe_reads_back_to_the_same_config(tmp_path):
    config = RunConfig(
        ModelConfig(latent_dim=7, prior="vamp", prior_options={"components": 5},
                    family="mixture", family_options={"components": 3},
                    net_options={"hidden": (32, 32), "gated": True}),
        TrainConfig(data="some/file.npy", lr=3.5e-4, ema_decay=0.999, objective="iwae",
                    num_samples=4, kl_schedule="linear",
                    kl_schedule_options={"warmup_epochs": 2.5}, grad_clip=None))
    path = tmp_path / "best.toml"
    path.write_text(rank.recipe_text(config, "a header\n\nwith a blank line"))
    assert path.read_text().startswith("# a header\n#\n# with a blank line\n")
    assert RunConfig.from_dict(load_config_file(path)) == config


def test_toml_values():
    assert rank.toml_value({"a": [1, 2.5, True], "b": 'q"x', "c": None}) == \
        '{a = [1, 2.5, true], b = "q\\"x"}'
    with pytest.raises(ValueError, match="no TOML form"):
        rank.toml_value(float("nan"))
    with pytest.raises(TypeError, match="cannot write"):
        rank.toml_value(object())
