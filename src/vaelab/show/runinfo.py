"""What a run directory holds, read without loading the model: config, metrics, results.

Role in vaelab: the one reader behind ``vaelab runs`` (a table of runs) and ``vaelab report``
(one HTML page per run or per comparison). It reads JSON and PNG files and the header of
``model.safetensors`` only — never the weights themselves, never pickles — and tolerates
anything missing or unreadable: a run that lacks a result says so, a missing or corrupt
``model.safetensors`` or a missing ``metrics.jsonl`` is a problem of the run, and a file that
cannot be parsed is listed as unreadable with the reason, never raised. The validation ELBO
shown for a run is that of the epoch whose weights were saved (``vaelab.fit.runs.saved_epoch``:
the best epoch under early stopping, else the last).

Paired comparisons (what a researcher should read before "model A beats model B"): two runs
evaluated by ``vaelab evaluate`` on the same examples (same data, split, seed, binarization
and the same first n rows) have per-example log p̂(x_i) in ``eval.json``; the difference of the
means is then estimated from the paired differences d_i = log p̂_A(x_i) − log p̂_B(x_i), with
standard error sd(d) / √n (Monte Carlo noise of each estimate is part of the spread of d).
Unpaired runs get no paired SE: it is shown as undefined, never as 0.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from safetensors import SafetensorError, safe_open

from vaelab.fit.runs import CONFIG_FILE, METRICS_FILE, MODEL_FILE, SavedEpoch, saved_epoch

EVAL_FILE = "eval.json"
GAPS_FILE = "gaps.json"
#: Pictures a training run writes, in the order a reader wants them, with their captions.
RUN_PICTURES = (
    ("curves.png", "Learning curves: ELBO, rate KL(q‖p) and distortion per epoch"),
    ("samples.png", "Samples x ~ p(x) drawn ancestrally from the prior"),
    ("reconstructions.png", "Reconstructions E[x | z = mean of q(z|x)] of held-out images"),
    ("latent.png", "Latent view: encoder means E_q[z|x] (2-D PCA), coloured by label"),
    ("gaps.png", "Inference gaps: approximation and amortization, with paired SEs"),
)
#: Result files other commands may add, with the command that makes each (for "not computed").
KNOWN_RESULTS = (
    (EVAL_FILE, "test log-likelihood", "vaelab evaluate RUN"),
    (GAPS_FILE, "inference gaps", "vaelab gaps RUN"),
)


@dataclass
class RunInfo:
    """Everything readable in one run directory (missing pieces are None / empty).

    Attributes:
        path: the run directory.
        config: config.json as a dict, or None.
        metrics: the rows of metrics.jsonl (possibly empty).
        evaluation: eval.json, or None.
        gaps: gaps.json, or None.
        extra: other ``*.json`` results in the folder (name → parsed dict).
        pictures: PNG files in the folder (name → path).
        problems: one line per file that exists but could not be read.
        file_problems: a missing or unreadable model.safetensors, a missing metrics.jsonl.
        modified: the newest modification time of the run's files (UTC).
    """

    path: Path
    config: dict | None = None
    metrics: list[dict] = field(default_factory=list)
    evaluation: dict | None = None
    gaps: dict | None = None
    extra: dict[str, dict] = field(default_factory=dict)
    pictures: dict[str, Path] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    file_problems: list[Problem] = field(default_factory=list)
    modified: datetime | None = None

    @property
    def name(self) -> str:
        return self.path.name or str(self.path)

    def last_metric(self, key: str) -> float | None:
        """The last finite value of ``key`` in metrics.jsonl, or None."""
        for row in reversed(self.metrics):
            value = row.get(key)
            if isinstance(value, (int, float)) and math.isfinite(value):
                return float(value)
        return None

    def saved_epoch(self) -> SavedEpoch | None:
        """The epoch whose weights model.safetensors holds, with its validation ELBO (None
        without metrics): the best one under early stopping, else the last."""
        train = (self.config or {}).get("train")
        patience = train.get("early_stopping_patience") if isinstance(train, dict) else None
        return saved_epoch(self.metrics, patience)

    def training_seconds(self) -> float | None:
        seconds = [r.get("seconds") for r in self.metrics]
        finite = [s for s in seconds if isinstance(s, (int, float)) and math.isfinite(s)]
        return float(sum(finite)) if finite else None


def _read_json(path: Path, problems: list[str]) -> object | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        problems.append(f"{path.name}: unreadable ({type(exc).__name__}: {exc})")
        return None


def _read_metrics(path: Path, problems: list[str]) -> list[dict]:
    rows: list[dict] = []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        problems.append(f"{path.name}: unreadable ({type(exc).__name__}: {exc})")
        return rows
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            problems.append(f"{path.name}: line {number} unreadable ({exc})")
            continue
        if isinstance(row, dict):
            rows.append(row)
    return rows


def _folder(path: str | os.PathLike, flag: str, expected: str) -> Path:
    """``path`` as a Path; ValueError naming ``flag`` unless it is an existing folder."""
    path = Path(path).expanduser()
    if not path.is_dir():
        raise ValueError(f"{flag}: expected {expected}, got {str(path)!r} "
                         f"({'a file' if path.exists() else 'it does not exist'})")
    return path


def is_run(path: Path) -> bool:
    """True for a folder holding a vaelab config.json."""
    return path.is_dir() and (path / CONFIG_FILE).is_file()


def read_run(path: str | os.PathLike) -> RunInfo:
    """Read a run directory's JSON results and list its pictures; never raises on content.

    Raises:
        ValueError: ``path`` is not a folder.
    """
    path = _folder(path, "RUN", "a run directory")
    info = RunInfo(path)
    special = {CONFIG_FILE: "config", EVAL_FILE: "evaluation", GAPS_FILE: "gaps"}
    times = []
    for file in sorted(path.iterdir()):
        if not file.is_file():
            continue
        times.append(file.stat().st_mtime)
        if file.suffix == ".png":
            info.pictures[file.name] = file
        elif file.name == METRICS_FILE:
            info.metrics = _read_metrics(file, info.problems)
        elif file.suffix == ".json":
            value = _read_json(file, info.problems)
            if value is not None and not isinstance(value, dict):
                info.problems.append(f"{file.name}: expected a JSON object, got "
                                     f"{type(value).__name__}")
                value = None
            if file.name in special:
                setattr(info, special[file.name], value)
            elif value is not None:
                info.extra[file.name] = value
    if times:
        info.modified = datetime.fromtimestamp(max(times), tz=timezone.utc)
    info.file_problems = file_problems(path)
    _flag_stale(path, info)
    return info


def file_problems(path: Path) -> list[Problem]:
    """A run's missing ``metrics.jsonl`` and its missing or unreadable ``model.safetensors``
    (only its header is parsed, which also tells a truncated file: its tensors must cover
    the rest of the file exactly); [] when both are there and sound. Never raises."""
    problems = []
    model = path / MODEL_FILE
    if not model.is_file():
        problems.append(Problem(f"no {MODEL_FILE}", f"no {MODEL_FILE}: the run has no saved "
                                f"weights (no epoch finished, or the file was removed)"))
    else:
        reason = _safetensors_problem(model)
        if reason is not None:
            problems.append(Problem(f"{MODEL_FILE} unreadable: {reason}",
                                    f"{MODEL_FILE} is unreadable ({reason}): the weights "
                                    f"cannot be loaded; retrain the run, or restore the file"))
    if not (path / METRICS_FILE).is_file():
        problems.append(Problem(f"no {METRICS_FILE}", f"no {METRICS_FILE}: the run's "
                                f"training record is missing"))
    return problems


def _safetensors_problem(path: Path) -> str | None:
    """Why a safetensors file's header does not parse (one line), or None when it does."""
    try:
        with safe_open(str(path), framework="numpy") as opened:
            opened.keys()
    except OSError as exc:
        return exc.strerror or type(exc).__name__
    except (SafetensorError, ValueError, RuntimeError) as exc:
        text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        return text.removeprefix("Error while deserializing header: ")
    return None


def _flag_stale(path: Path, info: RunInfo) -> None:
    """A result computed before the model's weights were last written describes an older
    model (the run was resumed or retrained since): say so, do not hide it."""
    model = path / MODEL_FILE
    if not model.is_file():
        return
    for name, what, command in KNOWN_RESULTS:
        result = path / name
        if result.is_file() and result.stat().st_mtime < model.stat().st_mtime:
            info.problems.append(f"{name} ({what}) was computed before the model was last "
                                 f"written, so it may describe an older model: run "
                                 f"`{command.replace('RUN', str(path))}` again")


def find_runs(root: str | os.PathLike, max_depth: int = 3) -> list[RunInfo]:
    """Every run directory at or below ``root`` (to ``max_depth`` levels), newest first.

    Raises:
        ValueError: ``root`` is not a folder.
    """
    root = _folder(root, "DIR", "a folder")
    found, frontier = [], [(root, 0)]
    while frontier:
        folder, depth = frontier.pop()
        if is_run(folder):
            found.append(read_run(folder))
            continue
        if depth < max_depth:
            try:
                children = sorted(p for p in folder.iterdir() if p.is_dir())
            except OSError:
                continue
            frontier.extend((child, depth + 1) for child in children)
    oldest = datetime.min.replace(tzinfo=timezone.utc)
    return sorted(found, key=lambda r: r.modified or oldest, reverse=True)


# --------------------------------------------------------------------------- key numbers


def stat(result: dict | None, key: str) -> tuple[float | None, float | None]:
    """(mean, se) of ``result[key]`` ({"mean", "se"}); None where missing or not finite."""
    entry = (result or {}).get(key)
    if not isinstance(entry, dict):
        return None, None

    def finite(v: object) -> float | None:
        return float(v) if isinstance(v, (int, float)) and math.isfinite(v) else None

    return finite(entry.get("mean")), finite(entry.get("se"))


def evaluation_key(evaluation: dict | None) -> tuple | None:
    """What must match for two evaluations to be on the same examples, or None."""
    if not evaluation:
        return None
    per = evaluation.get("per_example")
    if not isinstance(per, dict) or not isinstance(per.get("log_likelihood"), list):
        return None
    return (evaluation.get("data"), evaluation.get("split"), evaluation.get("seed"),
            evaluation.get("binarized"), evaluation.get("num_examples"),
            evaluation.get("population_size"))


@dataclass(frozen=True)
class PairedDifference:
    """mean_i(a_i − b_i) over n shared examples, with SE sd(d)/√n (None when n < 2)."""

    mean: float
    se: float | None
    n: int


def paired_difference(a: dict | None, b: dict | None,
                      key: str = "log_likelihood") -> PairedDifference | None:
    """Paired difference of per-example ``key`` between two eval.json dicts, or None when
    they were not evaluated on the same examples (or lack per-example values)."""
    ka, kb = evaluation_key(a), evaluation_key(b)
    if a is None or b is None or ka is None or ka != kb:
        return None
    va, vb = a["per_example"].get(key), b["per_example"].get(key)
    if not isinstance(va, list) or not isinstance(vb, list) or len(va) != len(vb):
        return None
    diffs = [x - y for x, y in zip(va, vb, strict=True)
             if isinstance(x, (int, float)) and isinstance(y, (int, float))
             and math.isfinite(x) and math.isfinite(y)]
    n = len(diffs)
    if n == 0 or n != len(va):
        return None
    mean = sum(diffs) / n
    if n < 2:
        return PairedDifference(mean, None, n)
    var = sum((d - mean) ** 2 for d in diffs) / (n - 1)
    return PairedDifference(mean, math.sqrt(var / n), n)


# --------------------------------------------------------------------------- model health


@dataclass(frozen=True)
class Problem:
    """Something wrong with a run's model: a short ``tag`` for tables, the whole ``line``."""

    tag: str
    line: str


def _steps_per_epoch(metrics: list[dict], i: int) -> int:
    step = metrics[i].get("step")
    before = metrics[i - 1].get("step") if i > 0 else 0
    if isinstance(step, int) and isinstance(before, int):
        return step - before
    return 0


def _sizes(run: RunInfo) -> tuple[int, ...] | None:
    latent = ((run.config or {}).get("model") or {}).get("latent_dim")
    if isinstance(latent, int):
        return (latent,)
    if isinstance(latent, list) and latent and all(isinstance(s, int) for s in latent):
        return tuple(latent)
    return None


def model_problems(run: RunInfo) -> list[Problem]:
    """What is wrong with a run's model: its files (:func:`file_problems`: no or an unreadable
    model.safetensors, no metrics.jsonl), then a diverged training run and posterior
    collapse, by the rules training and evaluation use (``vaelab.fit.progress.
    divergence_warning``, ``vaelab.model.hierarchical``'s ``collapse_warning``): eval.json's
    own warnings first, else the metrics' last epoch."""
    from vaelab.fit.progress import divergence_warning
    from vaelab.model.hierarchical import collapse_from_metrics

    problems = list(run.file_problems)
    diverged = [row.get("epoch") for i, row in enumerate(run.metrics)
                if _diverged(row, _steps_per_epoch(run.metrics, i), divergence_warning)]
    warnings = [w for w in (run.evaluation or {}).get("warnings") or [] if isinstance(w, str)]
    if diverged:
        which = "epoch" if len(diverged) == 1 else "epochs"
        problems.append(Problem(f"diverged ({which} {_epochs(diverged)})",
                                f"training diverged in epoch(s) {_epochs(diverged)}: the "
                                f"weights are not trustworthy"))
    elif any("diverged" in w for w in warnings):
        problems.append(Problem("diverged", next(w for w in warnings if "diverged" in w)))
    collapse = next((w for w in warnings if "collapse" in w or "no information" in w), None)
    sizes = _sizes(run)
    if collapse is None and run.metrics and sizes is not None:
        collapse = collapse_from_metrics(run.metrics[-1], sizes, _training(run))
    if collapse is not None:
        problems.append(Problem("collapsed", collapse))
    return problems


def _training(run: RunInfo) -> object | None:
    """The run's training settings (its config.json), None when unreadable: they decide which
    remedies a collapse warning suggests."""
    from vaelab.config import TrainConfig

    train = (run.config or {}).get("train")
    try:
        return TrainConfig.from_dict(dict(train)) if isinstance(train, dict) and train else None
    except (TypeError, ValueError):
        return None


def _diverged(row: dict, steps: int, rule) -> bool:
    try:
        return rule({"skipped_steps": row.get("skipped_steps") or 0, "epoch": row.get("epoch"),
                     "train_elbo": _finite_or_none(row.get("train_elbo")),
                     "val_elbo": _finite_or_none(row.get("val_elbo"))}, steps) is not None
    except TypeError:
        return False


def _finite_or_none(value: object) -> float | None:
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None


def _epochs(epochs: list) -> str:
    """[1, 2, 3, 7] → "1-3, 7"."""
    numbers = [e for e in epochs if isinstance(e, int)]
    if not numbers:
        return "?"
    spans: list[str] = []
    start: int | None = numbers[0]
    for previous, current in zip(numbers, numbers[1:] + [None], strict=True):
        if current != previous + 1:
            spans.append(f"{start}" if start == previous else f"{start}-{previous}")
            start = current
    return ", ".join(spans)
