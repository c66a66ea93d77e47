"""``vaelab report``: one self-contained HTML page for one run or a comparison of several.

Role in vaelab: the place to look at what the other commands measured. For each run: what it
is (data, model, objective, training time), its test metrics with standard errors
(``eval.json``), its inference gaps (``gaps.json``), any other JSON result a command wrote
into the run (anomaly scores, clustering, imputation, AIS...; shown as tables of their
numbers), and every picture (learning curves, samples, reconstructions, latent view, gaps...).
With several runs, a comparison table with the *paired* difference of test log p̂(x) against
the first run where both were evaluated on the same examples (see
:mod:`vaelab.show.runinfo`) and the ELBO curves overlaid.

The page is rendered by Jinja2 from ``templates/report.html.j2`` with autoescaping; images
are embedded as ``data:`` URIs, so the file opens from disk with no server and no network.
It is written atomically (no half-written page is ever left).
"""

from __future__ import annotations

import base64
import io
import math
import os
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from pathlib import Path

from markupsafe import Markup, escape

from vaelab import catalogue
from vaelab._files import atomic_write_bytes
from vaelab.show.runinfo import (
    RUN_PICTURES,
    RunInfo,
    model_problems,
    paired_difference,
    read_run,
    stat,
)

TEMPLATE = "report.html.j2"
UNDEFINED = Markup('<span class="undefined">undefined</span>')
#: The SE cell of a quantity that is not a mean over examples (a count, a minimum).
NOT_AN_AVERAGE = Markup('<span class="undefined">—</span>')
#: The log-likelihood row's label by what log p̂ means (``measure.evaluate.likelihood_meaning``).
LL_LABELS = {"probability": "log p̂(x) (nats)",
             "bound": "log p̂(x), a lower bound (nats, dequantized)",
             "density": "log density p̂(x) (nats, not a probability)",
             "score": "unnormalised log-score (nats, not log p(x))"}
#: Largest picture embedded (bytes); larger ones are linked by path instead.
MAX_EMBED_BYTES = 8 << 20


def fmt(value: float | None, digits: int = 3) -> Markup:
    """A number for a table cell: fixed digits; None → 'undefined'; NaN/inf said plainly."""
    if value is None:
        return UNDEFINED
    if not math.isfinite(value):
        return Markup(f'<span class="undefined">non-finite ({escape(str(value))})</span>')
    return Markup(f"{value:.{digits}f}")


def _png_uri(path: Path) -> str | None:
    try:
        data = path.read_bytes()
    except OSError:
        return None
    if len(data) > MAX_EMBED_BYTES or not data.startswith(b"\x89PNG"):
        return None
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


# --------------------------------------------------------------------------- per run


def _about(run: RunInfo) -> list[tuple[str, str]]:
    config = run.config or {}
    model, train = config.get("model") or {}, config.get("train") or {}
    dataset = config.get("dataset") or {}
    rows = []
    if dataset:
        rows.append(("data", f"{dataset.get('name', train.get('data', '?'))}: "
                             f"{dataset.get('num_train', '?')} train, "
                             f"{dataset.get('num_val', '?')} validation examples"))
    elif train.get("data"):
        rows.append(("data", str(train["data"])))
    if model:
        rows.append(("model", ", ".join(_other_settings(model, MODEL_KINDS)
                                        + component_settings(model, MODEL_KINDS))))
    k = train.get("num_samples")
    objective = component_settings({"objective": "elbo", **train}, ("objective",))
    rows.append(("objective", ", ".join(objective) + (f", num_samples = {k}" if k else "")))
    if train:
        rows.append(("schedules", ", ".join(component_settings(
            train, ("kl-schedule", "lr-schedule")))))
    if train:
        rows.append(("training", f"{train.get('epochs', '?')} epochs of batch "
                                 f"{train.get('batch_size', '?')}, lr {train.get('lr', '?')}, "
                                 f"inference {train.get('inference', 'amortized')}, binarize "
                                 f"{train.get('binarize', '?')}, seed {train.get('seed', '?')}"))
    seconds = run.training_seconds()
    done = len(run.metrics)
    rows.append(("progress", f"{done} epoch{'' if done == 1 else 's'} finished"
                             + (f" in {seconds:.1f} s" if seconds is not None else "")))
    saved = run.saved_epoch()     # the epoch whose weights model.safetensors holds
    rows.append(("validation ELBO of the saved model (nats)",
                 "none recorded" if saved is None or saved.val_elbo is None
                 else saved.describe()))
    if run.config is None:
        rows.insert(0, ("config", "config.json is missing or unreadable"))
    return rows


#: The component kinds of a run's "model" section (``vaelab.catalogue``).
MODEL_KINDS = ("likelihood", "network", "family", "prior")


def component_settings(section: dict, kinds: tuple[str, ...]) -> list[str]:
    """'prior = mog', 'prior_components = 10', … for each component ``kinds`` names in a
    config section: the chosen component (the catalogue's first when absent) and its options —
    nested (``prior_options``) or the older flat keys — each named by its flat key. Options of
    components not chosen are left out: they do nothing."""
    out = []
    for kind in kinds:
        field = catalogue.FIELDS[kind]
        entry = catalogue.CATALOGUE[kind].get(str(catalogue.canonical(
            section.get(field, catalogue.names(kind)[0]))))
        if entry is None:                      # a name this version does not know: as given
            out.append(f"{field} = {section.get(field)}")
            continue
        nested = section.get(f"{field}_options") or {}
        out.append(f"{field} = {section.get(field, entry.name)}")
        for option in entry.options:
            value = nested.get(option.name, section.get(option.key or "", option.default))
            label = option.key or f"{field}_{option.name}"
            out.append(f"{label} = {list(value) if isinstance(value, tuple) else value}")
    return out


def _other_settings(section: dict, kinds: tuple[str, ...]) -> list[str]:
    """The settings of a section that are no component's: bookkeeping left out, ``hierarchy``
    only for several latent layers, ``missing_model`` only for incomplete data."""
    owned = {"data_dim", "image_shape"}
    for kind in kinds:
        field = catalogue.FIELDS[kind]
        owned |= {field, f"{field}_options"}
        owned |= {o.key for e in catalogue.entries(kind) for o in e.options if o.key}
    layers = isinstance(section.get("latent_dim"), list) and len(section["latent_dim"]) > 1
    if not layers:
        owned.add("hierarchy")
    if section.get("missing") in (None, "none"):
        owned.add("missing_model")
    return [f"{k} = {v}" for k, v in section.items() if k not in owned and v is not None]


def estimator_text(evaluation: dict | None) -> str:
    """How log p̂ was estimated, in words: 'IS, encoder proposal, k = 1000' or 'AIS from q,
    T = 100 steps, C = 8 chains, L = 3 leapfrog' (older eval.json: IS with its num_samples)."""
    if not evaluation:
        return "not computed"
    from vaelab.measure.estimators import summary_of

    est = evaluation.get("estimator")
    est = est if isinstance(est, dict) else {"name": "is"}
    return summary_of({"num_samples": evaluation.get("num_samples", 1000), **est})


def meaning_of(evaluation: dict | None) -> str | None:
    """'probability', 'bound', 'density' or 'score' (None when not evaluated)."""
    if not evaluation:
        return None
    meaning = evaluation.get("likelihood_meaning")
    kind = meaning.get("meaning") if isinstance(meaning, dict) else None
    if evaluation.get("log_likelihood_normalised", True) is False:
        return "score"
    return kind or "probability"


def _evaluation(evaluation: dict | None) -> dict | None:
    if not evaluation:
        return None
    meaning = evaluation.get("likelihood_meaning") or {}
    kind = meaning_of(evaluation)
    normalised = kind != "score"
    ll_label = LL_LABELS.get(kind or "probability", LL_LABELS["probability"])
    rows = [(label, *map(fmt, stat(evaluation, key))) for key, label in (
        ("elbo", "ELBO (nats)"), ("rate", "rate KL(q‖p) (nats)"),
        ("distortion", "distortion (nats)"))]
    mean, _ = stat(evaluation, "log_likelihood")
    rows.append((ll_label, fmt(mean), _se_or_part(evaluation, "log_likelihood", 3)))
    if kind in (None, "probability", "bound") and "nll_bits_per_dim" in evaluation:
        mean, _ = stat(evaluation, "nll_bits_per_dim")
        rows.append(("NLL (bits/dim)", fmt(mean, 4), _se_or_part(evaluation,
                                                                 "nll_bits_per_dim", 4)))
    rows.append(("log p̂(x) − ELBO (nats)", *map(fmt, stat(evaluation, "gap"))))
    ess = evaluation.get("ess") or {}
    for key in ("mean", "min"):
        if key in ess:
            value = ess[key] if isinstance(ess[key], (int, float)) else None
            rows.append((f"ESS ({key} over examples)", fmt(value, 1), NOT_AN_AVERAGE))
    units = evaluation.get("active_units")
    rows.append(("active units", Markup(escape(f"{units if units is not None else 'n/a'} of "
                                               f"{evaluation.get('latent_dim', '?')}")),
                 NOT_AN_AVERAGE))
    notes = [str(n) for n in evaluation.get("warnings") or [] if isinstance(n, str)]
    rules = evaluation.get("se_rules")
    if isinstance(rules, dict) and {"across examples", "split mean"} <= set(rules):
        notes.append(f"± of ELBO, rate, distortion and the gap: {rules['across examples']}. "
                     f"± of log p̂(x) and bits/dim: {rules['split mean']}. A ≥ marks the "
                     f"between-example part alone (one importance sample: the Monte Carlo "
                     f"part is undefined).")
    if isinstance(meaning, dict) and meaning.get("note") and kind != "probability":
        notes.append(str(meaning["note"]))
    elif not normalised:
        notes.append("The likelihood is not a normalised probability of these data, so no "
                     "log p(x) or bits/dim is reported.")
    caption = (f"Test metrics: {evaluation.get('data', '?')} {evaluation.get('split', '')}, "
               f"{evaluation.get('num_examples', '?')} of {evaluation.get('population_size', '?')}"
               f" examples; log p̂ by {estimator_text(evaluation)}")
    return {"rows": rows, "notes": notes, "caption": caption}


def _se_or_part(evaluation: dict, key: str, digits: int) -> Markup:
    """The ± cell of log p̂ or bits/dim: its SE, or ≥ its between-example part when only that
    is defined (k = 1), else undefined."""
    entry = evaluation.get(key) or {}
    _, se = stat(evaluation, key)
    part = entry.get("se_data")
    if se is None and isinstance(part, (int, float)) and math.isfinite(part) and part > 0:
        return Markup("≥") + fmt(float(part), digits)
    return fmt(se, digits)


def _gaps(gaps: dict | None) -> dict | None:
    summary = (gaps or {}).get("summary")
    if not isinstance(summary, dict):
        return None
    rows = []
    for key, entry in summary.items():
        if isinstance(entry, dict):
            mean = entry.get("mean")
            se = entry.get("stderr", entry.get("se"))
            rows.append((key.replace("_", " "),
                         fmt(mean if isinstance(mean, (int, float)) else None),
                         fmt(se if isinstance(se, (int, float)) else None)))
    found = gaps or {}
    caption = (f"{found.get('num_examples', '?')} examples, {found.get('num_samples', '?')} "
               f"samples, {found.get('optimizer_steps', '?')} optimizer steps")
    return {"rows": rows, "caption": caption}


def _flatten(value: object, prefix: str = "", depth: int = 0) -> list[tuple[str, str]]:
    """Scalars of a JSON result as (dotted key, text); long lists summarised, not dumped."""
    if isinstance(value, dict) and depth < 4:
        rows = []
        for key, sub in value.items():
            rows.extend(_flatten(sub, f"{prefix}.{key}" if prefix else str(key), depth + 1))
        return rows
    if isinstance(value, list):
        if len(value) <= 10 and all(not isinstance(v, (dict, list)) for v in value):
            return [(prefix, ", ".join(_scalar(v) for v in value))]
        return [(prefix, f"[{len(value)} entries]")]
    return [(prefix, _scalar(value))]


def _scalar(value: object) -> str:
    if value is None:
        return "undefined"
    if isinstance(value, float):
        return f"{value:.4g}" if math.isfinite(value) else f"non-finite ({value})"
    return str(value)


def _extra(run: RunInfo) -> list[dict]:
    results = []
    for name, value in sorted(run.extra.items()):
        rows = _flatten(value)[:200]
        results.append({"title": f"{name}", "rows": rows})
    return results


def _pictures(run: RunInfo) -> list[dict]:
    captions = dict(RUN_PICTURES)
    order = [n for n, _ in RUN_PICTURES if n in run.pictures]
    order += sorted(n for n in run.pictures if n not in captions)
    pictures = []
    for name in order:
        src = _png_uri(run.pictures[name])
        if src is None:
            run.problems.append(f"{name}: not a readable PNG (or larger than "
                                f"{MAX_EMBED_BYTES >> 20} MB), not shown")
            continue
        caption = captions.get(name, name)
        pictures.append({"src": src, "caption": f"{caption} ({name})",
                         "alt": f"{caption} — {run.name}/{name}"})
    return pictures


def _run_view(run: RunInfo) -> dict:
    pictures = _pictures(run)  # may add problems
    return {"name": run.name, "path": str(run.path),
            "modified": run.modified.strftime("%Y-%m-%d %H:%M UTC") if run.modified else None,
            "about": _about(run), "evaluation": _evaluation(run.evaluation),
            "gaps": _gaps(run.gaps), "extra": _extra(run), "pictures": pictures,
            "problems": [p.line for p in model_problems(run)] + list(run.problems)}


# --------------------------------------------------------------------------- comparison


def _mean_se(result: dict | None, key: str, digits: int = 3) -> Markup:
    mean, se = stat(result, key)
    if mean is None:
        return UNDEFINED if result else Markup('<span class="missing">not computed</span>')
    return Markup(f"{fmt(mean, digits)} ± {fmt(se, digits)}")


def comparison_rows(runs: Sequence[RunInfo]) -> tuple[list[str], list[list], list[str]]:
    """(headers, rows, notes) of the comparison table; the first run is the reference."""
    headers = ["run", "data", "test log p̂(x) ± SE (nats)", "paired Δ vs first ± SE (nats)",
               "NLL (bits/dim)", "test ELBO ± SE", "rate (nats)", "active units",
               "samples/s", "training (s)", "log p̂ estimated by", "problems"]
    reference = runs[0].evaluation
    rows, notes = [], []
    for i, run in enumerate(runs):
        ev = run.evaluation
        kind = meaning_of(ev)
        if i == 0:
            delta = Markup("reference")
        else:
            diff = paired_difference(ev, reference)
            if kind != meaning_of(reference):
                diff = None
            delta = (Markup(f"{fmt(diff.mean)} ± {fmt(diff.se)}") if diff is not None
                     else UNDEFINED)
            notes.extend(_comparability(run, runs[0], diff))
        units = (ev or {}).get("active_units")
        speed = run.last_metric("samples_per_s")
        seconds = run.training_seconds()
        data = (ev or {}).get("data") or ((run.config or {}).get("dataset") or {}).get("name")
        ll = _mean_se(ev, "log_likelihood")
        if kind in MEANING_MARKS and stat(ev, "log_likelihood")[0] is not None:
            ll = Markup(f"{ll} {MEANING_MARKS[kind]}")
        rows.append([run.name, escape(str(data or "?")), ll, delta,
                     _mean_se(ev, "nll_bits_per_dim", 4), _mean_se(ev, "elbo"),
                     _mean_se(ev, "rate"),
                     escape(str(units)) if units is not None else UNDEFINED,
                     fmt(speed, 0), fmt(seconds, 1), escape(estimator_text(ev)),
                     escape(", ".join(p.tag for p in model_problems(run)))])
    return headers, rows, notes


#: How a log p̂ that is not a probability is marked in the comparison table.
MEANING_MARKS = {"score": "(score, not log p(x))", "density": "(density)",
                 "bound": "(dequantized bound)"}


def _data_of(ev: dict | None) -> tuple:
    meaning = (ev or {}).get("likelihood_meaning")
    kind = meaning.get("data_kind") if isinstance(meaning, dict) else None
    return (ev or {}).get("data"), (ev or {}).get("split"), kind


def _comparability(run: RunInfo, first: RunInfo, diff: object) -> list[str]:
    """Notes on why ``run``'s numbers cannot be set against the first run's."""
    a, b = run.evaluation, first.evaluation
    if not a or not b:
        return []
    notes = []
    if _data_of(a) != _data_of(b):
        data_a = " ".join(str(v) for v in _data_of(a) if v)
        data_b = " ".join(str(v) for v in _data_of(b) if v)
        notes.append(f"{run.name} was evaluated on other data ({data_a}) than {first.name} "
                     f"({data_b}): its numbers are not comparable with the reference's.")
    elif meaning_of(a) != meaning_of(b):
        notes.append(f"{run.name}'s log p̂ is a {meaning_of(a)} while {first.name}'s is a "
                     f"{meaning_of(b)}: they are different quantities, not compared.")
    elif diff is None:
        notes.append(f"{run.name}: no paired difference — not evaluated on the same examples "
                     f"as {first.name} (or without per-example values).")
    return notes


def _curve(run: RunInfo) -> tuple[list[tuple], str]:
    """(epoch, ELBO) points of a run (validation where present, else training), its label."""
    key = "val_elbo" if run.last_metric("val_elbo") is not None else "train_elbo"
    points = [(r.get("epoch"), r.get(key)) for r in run.metrics]
    points = [(e, v) for e, v in points if isinstance(e, (int, float))
              and isinstance(v, (int, float)) and math.isfinite(v)]
    return points, f"{run.name} ({key.split('_')[0]})"


def curve_groups(runs: Sequence[RunInfo]) -> tuple[list[RunInfo], list[RunInfo]]:
    """(runs whose curves share one axis, diverged runs drawn apart on their own scale): an
    ELBO of −1e11 would flatten every other curve into a line."""
    diverged = [r for r in runs if any(p.tag.startswith("diverged") for p in model_problems(r))]
    return [r for r in runs if r not in diverged], diverged


def _curves_uri(runs: Sequence[RunInfo]) -> str | None:
    """Overlaid ELBO curves as a PNG data URI; diverged runs on a second axis of their own."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    good, diverged = curve_groups(runs)
    groups = [(group, title) for group, title in ((good, None),
                                                 (diverged, "diverged runs (their own scale)"))
              if any(_curve(r)[0] for r in group)]
    if not groups:
        return None
    fig = Figure(figsize=(7 if len(groups) == 1 else 11, 3.6), dpi=110)
    for i, (group, title) in enumerate(groups):
        ax = fig.add_subplot(1, len(groups), i + 1)
        for run in group:
            points, label = _curve(run)
            if points:
                ax.plot(*zip(*points, strict=True), marker="o", ms=3, label=label)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("epoch")
        ax.set_ylabel("ELBO (nats)")
        if title:
            ax.set_title(title, fontsize=9)
        ax.grid(alpha=.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


# --------------------------------------------------------------------------- the page


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("vaelab")
    except PackageNotFoundError:
        return "unknown"


def render_report(run_dirs: Sequence[str | os.PathLike], title: str | None = None) -> str:
    """The report's HTML for one or more run directories (first = reference).

    Raises:
        ValueError: no run given, or a path that is not a folder.
    """
    import jinja2

    if not run_dirs:
        raise ValueError("RUN: expected at least one run directory, got none")
    runs = [read_run(path) for path in run_dirs]
    env = jinja2.Environment(loader=jinja2.PackageLoader("vaelab.show", "templates"),
                             autoescape=True, undefined=jinja2.StrictUndefined)
    comparison = None
    if len(runs) > 1:
        headers, rows, notes = comparison_rows(runs)
        comparison = {"headers": headers, "rows": rows, "notes": notes,
                      "curves": _curves_uri(runs)}
    title = title or ("vaelab report: " + ", ".join(r.name for r in runs))
    written = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return env.get_template(TEMPLATE).render(
        title=title, version=_version(), written=written,
        runs=[_run_view(r) for r in runs], comparison=comparison)


def write_report(run_dirs: Sequence[str | os.PathLike], out: str | os.PathLike,
                 title: str | None = None) -> Path:
    """Render :func:`render_report` and write it atomically to ``out`` (an .html path).

    Raises:
        ValueError: as :func:`render_report`, or ``out`` not ending in .html/.htm.
    """
    return write_html(out, lambda: render_report(run_dirs, title))


def write_html(out: str | os.PathLike, render: Callable[[], str]) -> Path:
    """Check that ``out`` ends in .html/.htm, then write ``render()`` to it atomically (a
    one-line ``--out`` error for a wrong suffix or an unwritable path)."""
    out = Path(out).expanduser()
    if out.suffix.lower() not in (".html", ".htm"):
        raise ValueError(f"--out: expected a path ending in .html, got {str(out)!r}")
    html = render()
    try:
        atomic_write_bytes(out, html.encode("utf-8"))
    except OSError as exc:
        raise ValueError(f"--out: cannot write {str(out)!r}: {exc.strerror or exc}") from None
    return out
