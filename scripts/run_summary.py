"""One line about a trained and evaluated run, for the end of scripts/quickstart.sh.

Usage: python scripts/run_summary.py RUN SECONDS
Prints what was trained (architecture, likelihood, data, epochs), its test log-likelihood from
RUN/eval.json with the standard error (or why there is none), where the pictures are, and how
long it took. Reads only JSON; exits 1 with one line if the run is incomplete.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def _number(stats: dict, key: str) -> str:
    value = stats.get(key)
    if isinstance(value, (int, float)):
        return f"{value:.2f}"
    return str((stats.get("undefined") or {}).get(key, "undefined"))


def summary(run: Path, seconds: float) -> str:
    config = json.loads((run / "config.json").read_text(encoding="utf-8"))
    result = json.loads((run / "eval.json").read_text(encoding="utf-8"))
    model, train = config["model"], config["train"]
    sizes = "-".join(str(s) for s in [model.get("data_dim"), *model.get("hidden", []),
                                       model.get("latent_dim")])
    ll = result["log_likelihood"]
    label = "log p(x)" if result.get("log_likelihood_normalised", True) else "score"
    minutes, secs = divmod(round(seconds), 60)
    return (f"quickstart: a {sizes} {model.get('likelihood', '')} VAE trained on "
            f"{train.get('data')} for {train.get('epochs')} epochs; test {label} "
            f"{_number(ll, 'mean')} ± {_number(ll, 'se')} nats "
            f"(k = {result.get('num_samples')}, {result.get('num_examples')} images); "
            f"pictures: {run}/*.png; took {minutes} min {secs} s")


def main(argv: list[str]) -> int:
    try:
        print(summary(Path(argv[0]), float(argv[1])))
    except (IndexError, ValueError, OSError, KeyError, TypeError) as exc:
        print(f"run_summary: error: {' '.join(str(exc).split())}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
