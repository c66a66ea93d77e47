"""Shared pieces of the before/after speed benchmarks (``*_before_after.py``): a module as it was
at a git revision, contenders timed in rotating rounds, speed ratios and the results tables.

Nothing here imports vaelab, so the pieces serve any contender.
"""

from __future__ import annotations

import json
import math
import statistics
import subprocess
import sys
import time
import types
from collections.abc import Callable, Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def module_at(rev: str, path: str, name: str,
              replace: Sequence[tuple[str, str]] = ()) -> types.ModuleType:
    """The file ``path`` of the repository as it was at ``rev``, loaded as module ``name``
    (registered in ``sys.modules``, which dataclasses need), after the textual ``replace``
    pairs (to point its imports at other modules loaded this way)."""
    source = subprocess.run(["git", "-C", str(ROOT), "show", f"{rev}:{path}"], check=True,
                            capture_output=True, text=True).stdout
    for old, new in replace:
        source = source.replace(old, new)
    module = types.ModuleType(name)
    module.__file__ = f"{rev}:{path}"
    sys.modules[name] = module
    exec(compile(source, module.__file__, "exec"), module.__dict__)  # noqa: S102
    return module


def head_revision() -> str:
    """What "after" is: the checked-out commit and whatever the working tree changes."""
    return subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
                          capture_output=True, text=True).stdout.strip() + " + working tree"


def timed_rounds(names: Sequence[str], rounds: int, run: Callable[[str, int], None], tag: str,
                 prepare: Callable[[str], None] | None = None
                 ) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """Seconds of ``run(name, round)`` for every contender in every round, as (wall clock,
    this thread's CPU time), each name → one value per round. The order rotates from round to
    round, so no contender always runs first (or right after the same other one); ``prepare``
    runs untimed before each."""
    wall: dict[str, list[float]] = {n: [] for n in names}
    cpu: dict[str, list[float]] = {n: [] for n in names}
    for r in range(rounds):
        for name in [*names[r % len(names):], *names[: r % len(names)]]:
            if prepare is not None:
                prepare(name)
            w0, c0 = time.perf_counter(), time.thread_time()
            run(name, r)
            c1, w1 = time.thread_time(), time.perf_counter()
            wall[name].append(w1 - w0)
            cpu[name].append(c1 - c0)
        print(f"[{tag}] round {r + 1}/{rounds}", file=sys.stderr)
    return wall, cpu


def speed_ratio(seconds: dict[str, list[float]], a: str, b: str) -> float:
    """How many times faster ``a`` is than ``b``: the median over rounds of b's time / a's
    (NaN when either did not run)."""
    if a not in seconds or b not in seconds:
        return math.nan
    return statistics.median(y / x for x, y in zip(seconds[a], seconds[b], strict=True))


def per_round(seconds: dict[str, list[float]], value: Callable[[float], float]) -> dict:
    """name → {"median", "rounds"} of ``value(seconds)`` (a rate, or a time per step)."""
    return {n: {"median": statistics.median(value(s) for s in v), "rounds": [value(s) for s in v]}
            for n, v in seconds.items()}


def speed_tables(names: Sequence[str], pairs: Sequence[tuple[str, str]],
                 wall: dict[str, list[float]], cpu: dict[str, list[float]], unit: str,
                 value: Callable[[float], float], digits: int) -> list[str]:
    """The two Markdown tables of a results file: each contender's median ``value`` (in
    ``unit``, ``digits`` decimals) by wall clock and CPU time, then each pair's speed ratio."""
    lines = [f"| contender | wall {unit} | CPU {unit} |", "|---|---|---|"]
    for n in names:
        w, c = (statistics.median(value(s) for s in clock[n]) for clock in (wall, cpu))
        lines.append(f"| {n} | {w:,.{digits}f} | {c:,.{digits}f} |")
    lines += ["", "| speed ratio | wall | CPU time |", "|---|---|---|"]
    for a, b in pairs:
        lines.append(f"| {a} / {b} | {speed_ratio(wall, a, b):.3f} | "
                     f"{speed_ratio(cpu, a, b):.3f} |")
    return lines


def write_results(out: Path, report: dict, lines: list[str]) -> None:
    """``out``.json (the report) and ``out``.md (the lines), printed as well."""
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(report, indent=1) + "\n")
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
