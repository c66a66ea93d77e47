"""``vaelab report DIR`` on a tuning study: one self-contained HTML page of the search.

Role in vaelab: the place to look at what ``vaelab tune`` found. The page shows what was
searched (data, budget, space), the chosen trial and its recipe, the re-ranking of the best
trials by validation log-likelihood (with each one's paired difference to the leader), the
parameter importances, the validation-ELBO curves of the best trials, and every trial
(state, score, epochs, parameters, why it failed). It reads ``DIR/study.json``
(``vaelab.tune.summary``) and the trials' run directories only — neither Optuna nor the
database — and is rendered like the run report (Jinja2, autoescaped, pictures embedded).
"""

from __future__ import annotations

import json
import os
from datetime import datetime, timezone
from pathlib import Path

from markupsafe import Markup

from vaelab.show import report
from vaelab.show.report import _curves_uri, _version, fmt
from vaelab.show.runinfo import read_run

TEMPLATE = "study.html.j2"
STUDY_FILE = "study.json"      # = vaelab.tune.summary.STUDY_FILE (show does not import tune)
#: The best trials whose validation curves are drawn.
CURVES = 5


def is_study(folder: str | os.PathLike) -> bool:
    """Whether ``folder`` holds a tuning study (``vaelab tune``'s study.json)."""
    return (Path(folder) / STUDY_FILE).is_file()


def _read(folder: Path) -> dict:
    path = folder / STUDY_FILE
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ValueError(f"RUN: cannot read the study {str(path)!r}: {exc}") from None
    if not isinstance(data, dict) or not isinstance(data.get("trials"), list):
        raise ValueError(f"RUN: {str(path)!r} is not a study written by `vaelab tune`")
    return data


def _params(params: dict) -> str:
    return ", ".join(f"{k} = {f'{v:.4g}' if isinstance(v, float) else v}"
                     for k, v in params.items())


def _trial_rows(trials: list[dict]) -> list[list]:
    rows = []
    for t in trials:
        seconds = t.get("seconds")
        # a trial that failed or was refused before its first epoch has no score at all
        value = t.get("value")
        score = fmt(value) if value is not None or t["state"] == "complete" else "—"
        rows.append([t["number"], t["state"], score, t.get("epochs", 0),
                     "—" if seconds is None else f"{seconds:.1f}", _params(t.get("params", {})),
                     t.get("error") or t.get("warning") or ""])
    return rows


def _ranking_rows(ranking: list[dict]) -> list[list]:
    rows = []
    for i, r in enumerate(ranking):
        diff = (Markup("reference") if i == 0 else
                Markup(f"{fmt(r['difference'])} ± {fmt(r['difference_se'])}"))
        rows.append([i + 1, r["number"], fmt(r["val_elbo"]),
                     Markup(f"{fmt(r['val_log_likelihood'])} ± {fmt(r['se'])}"),
                     fmt(r.get("se_mc")), diff, r["k"], r["num_examples"]])
    return rows


def _best_runs(folder: Path, data: dict) -> list:
    """The run directories of the best trials by score (complete or pruned), best first."""
    scored = [t for t in data["trials"] if t.get("value") is not None and t.get("run_dir")]
    scored.sort(key=lambda t: -t["value"])
    return [read_run(folder / t["run_dir"]) for t in scored[:CURVES]
            if (folder / t["run_dir"]).is_dir()]


def render_study(folder: str | os.PathLike, title: str | None = None) -> str:
    """The study page's HTML. Raises ValueError when ``folder`` holds no readable study."""
    import jinja2

    folder = Path(folder)
    data = _read(folder)
    counts: dict[str, int] = {}
    for t in data["trials"]:
        counts[t["state"]] = counts.get(t["state"], 0) + 1
    recipe = folder / data["recipe"] if data.get("recipe") else None
    importances = sorted((data.get("importances") or {}).items(), key=lambda kv: -kv[1])
    env = jinja2.Environment(loader=jinja2.PackageLoader("vaelab.show", "templates"),
                             autoescape=True, undefined=jinja2.StrictUndefined)
    return env.get_template(TEMPLATE).render(
        title=title or f"vaelab tune: {folder.name}", version=_version(),
        written=datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), study=data,
        counts=", ".join(f"{n} {s}" for s, n in sorted(counts.items())) or "none",
        space=sorted(data.get("space", {}).items()),
        recipe_text=recipe.read_text(encoding="utf-8") if recipe and recipe.is_file() else None,
        ranking=_ranking_rows(data.get("ranking") or []),
        importances=[(name, fmt(value), round(100 * value)) for name, value in importances],
        curves=_curves_uri(_best_runs(folder, data)), trials=_trial_rows(data["trials"]))


def write_study_report(folder: str | os.PathLike, out: str | os.PathLike,
                       title: str | None = None) -> Path:
    """Render :func:`render_study` and write it atomically to ``out`` (an .html path)."""
    return report.write_html(out, lambda: render_study(folder, title))
