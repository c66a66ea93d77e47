"""Merge the stages of ``benchmarks/gpu.sh`` into one JSON and a short Markdown summary, each
naming the card it ran on.

Usage (gpu.sh calls it): ``python gpu_report.py WORK_DIR OUT_STEM CARD``; reads
WORK_DIR/stages.jsonl, tests.xml, speed.json, recipes.json, protocol.json (whichever exist)
and writes OUT_STEM.json and OUT_STEM.md.
"""

from __future__ import annotations

import json
import sys
import xml.etree.ElementTree as ET
from pathlib import Path


def _json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def tests_summary(path: Path) -> dict | None:
    """Counts and the failed tests' ids from pytest's JUnit XML."""
    try:
        root = ET.parse(path).getroot()
    except (OSError, ET.ParseError):
        return None
    suite = root if root.tag == "testsuite" else root.find("testsuite")
    if suite is None:
        return None
    failed = [f"{case.get('classname')}::{case.get('name')}" for case in suite.iter("testcase")
              if case.find("failure") is not None or case.find("error") is not None]
    return {key: int(suite.get(key, 0)) for key in ("tests", "failures", "errors", "skipped")
            } | {"seconds": float(suite.get("time", 0)), "failed": failed}


def _fmt(value, spec: str = ",.0f") -> str:
    return "—" if value is None else format(value, spec)


def markdown(report: dict) -> str:
    lines = [f"# vaelab on {report['card']}", "",
             f"`{report['command']}` · torch {report.get('torch', '?')} · "
             f"{report.get('started', '')}", "", "| stage | exit | seconds | limit |",
             "|---|---|---|---|"]
    for s in report["stages"]:
        lines.append(f"| {s['stage']} | {s['rc']}{' (timed out)' if s['rc'] in (124, 137) else ''}"
                     f" | {s['seconds']:.1f} | {s['limit_s']} |")
    tests = report.get("tests")
    if tests:
        lines += ["", f"Device tests (`pytest -m device`): {tests['tests']} run, "
                  f"{tests['failures']} failed, {tests['errors']} errors, "
                  f"{tests['skipped']} skipped."]
        lines += [f"- failed: `{name}`" for name in tests["failed"]]
    speed = report.get("speed") or {}
    if speed.get("rows"):
        lines += ["", "Training throughput (samples/s; 784-400-20 Bernoulli VAE):", "",
                  "| contender | batch | precision | samples/s | ms/step | set-up s |",
                  "|---|---|---|---|---|---|"]
        for r in speed["rows"]:
            lines.append(f"| {r['contender']} | {r['batch']} | {r['precision']} | "
                         f"{_fmt(r.get('samples_per_s'))} | {_fmt(r.get('ms_per_step'), '.3f')}"
                         f" | {_fmt(r.get('setup_s'), '.1f')} |"
                         if "error" not in r else
                         f"| {r['contender']} | {r['batch']} | {r['precision']} | error: "
                         f"{r['error'][:80]} | | |")
    runs = report.get("recipes") or {}
    if runs.get("recipes"):
        lines += ["", "Recipes (`vaelab train --config recipes/fashion-mnist/NAME.toml`):", "",
                  "| recipe | s/epoch | epochs/s | train samples/s | command wall s |",
                  "|---|---|---|---|---|"]
        for r in runs["recipes"]:
            lines.append(f"| {r['recipe']} | {_fmt(r.get('seconds_per_epoch'), '.2f')} | "
                         f"{_fmt(r.get('epochs_per_s'), '.3f')} | "
                         f"{_fmt(r.get('train_samples_per_s'))} | {_fmt(r.get('wall_s'), '.1f')}"
                         + (f" (error: {r['error'][:60]})" if "error" in r else "") + " |")
    protocol = report.get("protocol") or {}
    if protocol.get("protocol"):
        lines += ["", "Standard protocol (`vaelab evaluate RUN --k K --limit 0`):", "",
                  "| run | k | images | wall s | images/s |", "|---|---|---|---|---|"]
        for r in protocol["protocol"]:
            lines.append(f"| {r['run']} | {r['k']} | {_fmt(r.get('num_examples'), 'd')} | "
                         f"{_fmt(r.get('wall_s'), '.1f')} | {_fmt(r.get('images_per_s'), '.1f')}"
                         + (f" (error: {r['error'][:60]})" if "error" in r else "") + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> int:
    work, stem, card = Path(argv[0]), Path(argv[1]), argv[2]
    meta = _json(work / "meta.json") or {}
    stages = [json.loads(line) for line in (work / "stages.jsonl").read_text().splitlines()
              if line.strip()] if (work / "stages.jsonl").exists() else []
    report = {"card": card, **meta, "stages": stages, "tests": tests_summary(work / "tests.xml"),
              "speed": _json(work / "speed.json"), "recipes": _json(work / "recipes.json"),
              "protocol": _json(work / "protocol.json")}
    stem.parent.mkdir(parents=True, exist_ok=True)
    stem.with_suffix(".json").write_text(json.dumps(report, indent=1, default=str) + "\n")
    stem.with_suffix(".md").write_text(markdown(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
