"""``vaelab runs``: a plain-text table of the runs under a folder, newest first.

One row per run directory (a folder with a ``config.json``, found up to three levels down):
when it was last written, its data, latent size and family/prior, epochs finished, the
validation ELBO of the epoch whose weights were saved, labelled with that epoch (the best one
under early stopping, ``vaelab.fit.runs.saved_epoch``), and — when ``vaelab evaluate`` has
run — the test log p̂(x) with its standard error and bits/dim; then its problems (no or an
unreadable model.safetensors, no metrics.jsonl, a diverged or collapsed model, an unreadable
file).
Missing numbers are shown as ``—`` (not computed) and undefined standard errors as
``undefined``, never as 0.
"""

from __future__ import annotations

import os

from vaelab.show.runinfo import RunInfo, find_runs, model_problems, stat

COLUMNS = ("run", "written (UTC)", "data", "model", "epochs", "val ELBO (saved epoch)",
           "test log p̂(x) ± SE", "bits/dim", "problems")
MISSING = "—"


def _model(run: RunInfo) -> str:
    model = (run.config or {}).get("model") or {}
    if not model:
        return MISSING
    parts = [f"z={model.get('latent_dim', '?')}"]
    for key in ("family", "prior", "likelihood"):
        if model.get(key):
            parts.append(str(model[key]).replace("_", "-"))
    return " ".join(parts)


def _number(value: float | None, digits: int) -> str:
    if value is None:
        return MISSING
    return f"{value:.{digits}f}" if abs(value) < 1e6 else f"{value:.3g}"


def _saved_val(run: RunInfo) -> str:
    """The saved weights' validation ELBO and their epoch: "-229.09 (epoch 312, best)"."""
    saved = run.saved_epoch()
    if saved is None or saved.val_elbo is None:
        return MISSING
    return f"{_number(saved.val_elbo, 2)} (epoch {saved.epoch}{', best' if saved.best else ''})"


def run_row(run: RunInfo, root: str | os.PathLike) -> list[str]:
    """The table's cells for one run (paths relative to ``root`` where possible)."""
    try:
        name = str(run.path.relative_to(root))
    except ValueError:
        name = str(run.path)
    config = run.config or {}
    data = (config.get("dataset") or {}).get("name") or (config.get("train") or {}).get("data")
    ll, ll_se = stat(run.evaluation, "log_likelihood")
    bpd, _ = stat(run.evaluation, "nll_bits_per_dim")
    unreadable = sorted({p.split(":", 1)[0] for p in run.problems if "unreadable" in p})
    if ll is None:
        test = "unreadable" if "eval.json" in unreadable else MISSING
    else:
        test = f"{_number(ll, 2)} ± {'undefined' if ll_se is None else _number(ll_se, 2)}"
    normalised = (run.evaluation or {}).get("log_likelihood_normalised", True) is not False
    if not normalised and ll is not None:
        test, bpd = f"{test} (score)", None
    return [name or ".", run.modified.strftime("%Y-%m-%d %H:%M") if run.modified else MISSING,
            str(data or MISSING), _model(run), str(len(run.metrics)),
            _saved_val(run), test, _number(bpd, 4),
            ", ".join([p.tag for p in model_problems(run)]
                      + [f"{name} unreadable" for name in unreadable])]


def format_runs(root: str | os.PathLike) -> str:
    """The table as text (a one-line message when there is no run).

    Raises:
        ValueError: ``root`` is not a folder.
    """
    runs = find_runs(root)
    if not runs:
        return f"no runs under {str(root)!r} (a run is a folder written by `vaelab train`)"
    rows = [list(COLUMNS)] + [run_row(r, root) for r in runs]
    widths = [max(len(row[i]) for row in rows) for i in range(len(COLUMNS))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
             for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines) + f"\n{len(runs)} run{'s' if len(runs) != 1 else ''}"
