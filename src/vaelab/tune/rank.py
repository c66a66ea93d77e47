"""The end of a search: re-rank the best trials by validation log-likelihood, write a recipe.

Role in vaelab: the search scores trials by their best validation ELBO, cheap enough to
compute every epoch, but a bound, not the quantity wanted. log p(x) = ELBO(x) + KL(q(z|x) ‖
p(z|x)): a model whose encoder fits its own posterior more tightly has a smaller gap and can
win on the bound while having the worse likelihood — an IWAE-trained model, a richer q or a
mixture prior trade the two differently. So the top trials by the bound are re-ranked by an
importance-sampled estimate of log p(x) (``vaelab.measure.evaluate``, k draws from q, the
bound of Burda et al. 2016 that tends to log p(x) as k grows) on the same validation rows,
with each trial's paired difference to the leader (the same rows, so the between-example
spread cancels). The test split is never read: it stays for the one final evaluation.

The chosen trial's config is written as a recipe (TOML, like ``recipes/``), which ``vaelab
train --config`` reads back to the same config.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from vaelab._files import atomic_write_bytes, atomic_write_json
from vaelab.config import RunConfig

#: The file each re-ranked trial's estimate is kept in (inside its run directory).
VAL_LL_FILE = "val_ll.json"
RECIPE_FILE = "best.toml"


def validation_log_likelihood(run_dir: Path, *, k: int, limit: int | None,
                              seed: int = 0) -> dict:
    """log p̂(x) of a trial's model on its validation rows: {"mean", "se", "per_example",
    "k", "num_examples"}, kept in ``run_dir/val_ll.json`` and read back when the same k and
    limit were asked before (the draws are seeded, so the numbers would be the same)."""
    cached = run_dir / VAL_LL_FILE
    if cached.is_file():
        try:
            old = json.loads(cached.read_text(encoding="utf-8"))
            if old.get("k") == k and old.get("limit") == limit and old.get("seed") == seed:
                return old
        except (OSError, ValueError):
            pass
    from vaelab.fit.train_data import validation_rows
    from vaelab.measure.evaluate import evaluate_model
    from vaelab.use.trained import load

    trained = load(run_dir)
    rows = validation_rows(trained.config)
    if rows is None:
        raise ValueError(f"{run_dir}: no validation rows (val_fraction 0) to re-rank on")
    report = evaluate_model(trained.model, rows.x, num_samples=k, limit=limit, seed=seed,
                            per_example=True, data_kind=rows.kind)
    ll = report["log_likelihood"]
    result = {"split": "validation", "k": k, "limit": limit, "seed": seed,
              "num_examples": report["num_examples"], "mean": ll["mean"], "se": ll["se"],
              "per_example": report["per_example"]["log_likelihood"]}
    atomic_write_json(cached, result)
    return result


def paired(a: list[float], b: list[float]) -> tuple[float, float | None]:
    """Mean of a − b over paired examples and its standard error (None below 2 examples)."""
    d = [x - y for x, y in zip(a, b, strict=True)]
    mean = sum(d) / len(d)
    if len(d) < 2:
        return mean, None
    var = sum((x - mean) ** 2 for x in d) / (len(d) - 1)
    return mean, math.sqrt(var / len(d))


def rerank(out: Path, trials: list[dict], *, top: int, k: int, limit: int | None,
           log: Any = None) -> list[dict]:
    """The ``top`` complete trials by validation ELBO (rows of ``summary.trial_rows``),
    ordered by validation log p̂(x), each with its paired difference to the first."""
    complete = [t for t in trials if t["state"] == "complete" and t["value"] is not None]
    chosen = sorted(complete, key=lambda t: -t["value"])[:top]
    ranked = []
    for t in chosen:
        if log is not None:
            log(f"re-ranking trial {t['number']}: validation log p̂(x) with k = {k}")
        ll = validation_log_likelihood(out / t["run_dir"], k=k, limit=limit)
        # "se" is the standard error of the mean over the validation rows (what a reader
        # takes "±" to mean: how far another draw of rows could move it); the estimator's
        # own Monte Carlo error on these very rows is much smaller and kept apart, as se_mc.
        ranked.append({"number": t["number"], "run_dir": t["run_dir"], "val_elbo": t["value"],
                       "val_log_likelihood": ll["mean"], "se": _se_over_rows(ll["per_example"]),
                       "se_mc": ll["se"], "k": k, "num_examples": ll["num_examples"],
                       "_per": ll["per_example"]})
    ranked.sort(key=lambda r: -r["val_log_likelihood"])
    for i, r in enumerate(ranked):      # the leader is the reference: no difference
        r["difference"], r["difference_se"] = ((None, None) if i == 0
                                               else paired(r["_per"], ranked[0]["_per"]))
    for r in ranked:
        del r["_per"]
    return ranked


#: A runner-up whose paired difference to the leader is within this many standard errors is
#: not told apart from it by the validation rows.
SEPARATED_SE = 2.0


def _se_over_rows(per_example: list[float]) -> float | None:
    n = len(per_example)
    if n < 2:
        return None
    mean = sum(per_example) / n
    return math.sqrt(sum((v - mean) ** 2 for v in per_example) / (n - 1) / n)


def not_separated(ranking: list[dict]) -> list[dict]:
    """The runners-up of ``ranking`` (from :func:`rerank`) whose paired difference to the
    leader is within :data:`SEPARATED_SE` standard errors (or undefined): the validation
    rows do not say the leader is better than them."""
    return [r for r in ranking[1:] if r["difference_se"] is None
            or abs(r["difference"]) <= SEPARATED_SE * r["difference_se"]]


# --------------------------------------------------------------------------- the recipe


#: Config keys a recipe leaves out: they are read from the data when it trains.
FROM_DATA = ("data_dim", "image_shape")


def recipe_text(config: RunConfig, header: str) -> str:
    """``config`` as a TOML recipe (``[model]`` and ``[train]`` tables) that
    ``vaelab.config.load_config_file`` reads back to the same config. Settings that are None
    (TOML has no null) and :data:`FROM_DATA` are left out; ``header`` becomes comments."""
    lines = [f"# {line}" if line else "#" for line in header.splitlines()]
    for section, values in config.to_dict().items():
        lines += ["", f"[{section}]"]
        for key, value in values.items():
            if value is None or key in FROM_DATA:
                continue
            lines.append(f"{key} = {toml_value(value)}")
    return "\n".join(lines) + "\n"


def toml_value(value: object) -> str:
    """A JSON-like value as TOML (strings, numbers, booleans, lists, inline tables)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"recipe: {value!r} has no TOML form")
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        items = [f"{k} = {toml_value(v)}" for k, v in value.items() if v is not None]
        return "{" + ", ".join(items) + "}"
    raise TypeError(f"recipe: cannot write {type(value).__name__} {value!r} as TOML")


def write_recipe(out: Path, best: dict, rank_by: str) -> Path:
    """The chosen trial's config as ``out/best.toml``."""
    from vaelab.fit import runs

    config = runs.read_config(out / best["run_dir"])
    header = (f"The best trial of `vaelab tune` in {out}: trial {best['number']} "
              f"({best['run_dir']}),\nchosen by {rank_by} on the validation rows.\n"
              f"vaelab train --config {out / RECIPE_FILE} --out RUN")
    path = out / RECIPE_FILE
    atomic_write_bytes(path, recipe_text(config, header).encode("utf-8"))
    return path


def _num(value: float | None) -> str:
    return "undefined" if value is None else f"{value:.3f}"


def ranking_lines(ranking: list[dict]) -> list[str]:
    """The re-ranking as lines for a terminal: each trial's validation log p̂(x) ± its standard
    error over the rows (the Monte Carlo error apart), its paired difference to the leader,
    and a note when the rows do not separate the leader from a runner-up."""
    lines = []
    for i, r in enumerate(ranking):
        diff = ("" if i == 0 else
                f"  ({r['difference']:+.3f} ± {_num(r['difference_se'])} paired)")
        lines.append(f"{i + 1}. trial {r['number']}: validation log p̂(x) "
                     f"{r['val_log_likelihood']:.3f} ± {_num(r.get('se'))} over "
                     f"{r['num_examples']} rows (Monte Carlo ± {_num(r.get('se_mc'))}, "
                     f"k={r['k']}), ELBO {r['val_elbo']:.3f}{diff}")
    close = not_separated(ranking)
    if close:
        trials = ", ".join(str(r["number"]) for r in close)
        lines.append(f"note: the leader, trial {ranking[0]['number']}, is not ahead of trial(s) "
                     f"{trials} by more than {SEPARATED_SE:g} paired standard errors on "
                     f"{ranking[0]['num_examples']} validation rows: the choice between them "
                     "is not supported by the data (more validation rows, --val-fraction, "
                     "would tell them apart)")
    return lines
