"""Does `vaelab tune` beat vaelab's defaults on small real tables? (held-out log-likelihood)

For each scikit-learn table (wine: 178 × 13, breast cancer: 569 × 30) the rows are split once
(seeded, 80/20) into train and test, written as an .npz (x_train, x_test). Then

* defaults: `vaelab train --data T.npz --likelihood gaussian --binarize none --epochs E
  --val-fraction 0.2` (every other setting vaelab's default);
* tuned: `vaelab tune --data T.npz --budget B --epochs E --rerank R` from a config holding
  the same validation fraction (so both train on the same rows; the search scores and
  re-ranks on the validation rows), and its chosen trial's run directory as it is (no
  retraining);
* a control: the defaults again with another seed (other initial weights and other
  validation rows of the same training rows), to show how far two runs of one config are
  apart on the test rows — a spread the paired standard error (over rows, one run each)
  does not contain;

both evaluated once on the test rows (`vaelab evaluate RUN --split test --k K --limit 0`, the
same seed), and compared by the paired difference of their per-row log p̂(x) (a density of
the raw values: the standardization's Jacobian is included). The test rows are never seen by
the search.

    python benchmarks/tune_tables.py --budget 20m --epochs 100 --out .bench/tune-tables
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np

from vaelab import cli

TABLES = ("wine", "breast_cancer")
#: Of the training rows, held out for validation (5 % of 142 wine rows would be 7 rows).
VAL_FRACTION = 0.2


def write_table(name: str, folder: Path, seed: int = 0) -> Path:
    from sklearn import datasets

    x = getattr(datasets, f"load_{name}")().data.astype(np.float32)
    order = np.random.default_rng(seed).permutation(len(x))
    cut = int(0.8 * len(x))
    path = folder / f"{name}.npz"
    np.savez(path, x_train=x[order[:cut]], x_test=x[order[cut:]])
    return path


def run(*argv: object) -> None:
    code = cli.main([str(a) for a in argv])
    if code != 0:
        raise SystemExit(f"failed ({code}): vaelab {' '.join(map(str, argv))}")


def evaluate(run_dir: Path, k: int) -> dict:
    run("evaluate", run_dir, "--split", "test", "--k", k, "--limit", 0, "--quiet")
    return json.loads((run_dir / "eval.json").read_text())


def train_defaults(data: Path, run_dir: Path, epochs: int, seed: int) -> None:
    if not (run_dir / "model.safetensors").is_file():
        run("train", "--data", data, "--likelihood", "gaussian", "--binarize", "none",
            "--epochs", epochs, "--val-fraction", VAL_FRACTION, "--seed", seed,
            "--out", run_dir, "--quiet")


def paired(a: dict, b: dict) -> tuple[float, float]:
    """Mean and standard error of b − a over the same test rows."""
    d = (np.array(b["per_example"]["log_likelihood"])
         - np.array(a["per_example"]["log_likelihood"]))
    return float(d.mean()), float(d.std(ddof=1) / math.sqrt(len(d)))


def compare(name: str, out: Path, budget: str, epochs: int, k: int, rerank: int) -> dict:
    folder = out / name
    folder.mkdir(parents=True, exist_ok=True)
    data = write_table(name, folder)
    defaults, other = folder / "defaults", folder / "defaults-seed1"
    train_defaults(data, defaults, epochs, 0)
    train_defaults(data, other, epochs, 1)
    base = folder / "base.toml"
    base.write_text(f"[train]\nval_fraction = {VAL_FRACTION}\n")
    started = time.monotonic()
    run("tune", "--data", data, "--budget", budget, "--epochs", epochs,
        "--config", base, "--out", folder / "tune", "--rerank", rerank, "--rerank-k", k,
        "--rerank-limit", 0, "--quiet")
    seconds = time.monotonic() - started
    study = json.loads((folder / "tune" / "study.json").read_text())
    chosen = folder / "tune" / next(r["run_dir"] for r in study["ranking"]
                                    if r["number"] == study["best"])
    a, b, c = evaluate(defaults, k), evaluate(chosen, k), evaluate(other, k)
    diff, diff_se = paired(a, b)
    spread, spread_se = paired(a, c)
    states: dict[str, int] = {}
    for t in study["trials"]:
        states[t["state"]] = states.get(t["state"], 0) + 1
    return {"table": name, "test_rows": a["num_examples"], "budget": budget,
            "trials": states, "tune_seconds": round(seconds), "epochs": epochs, "k": k,
            "rerank": rerank, "ranking": study["ranking"],
            "defaults": {"log_likelihood": a["log_likelihood"]["mean"],
                         "se": a["log_likelihood"]["se"]},
            "tuned": {"trial": study["best"], "log_likelihood": b["log_likelihood"]["mean"],
                      "se": b["log_likelihood"]["se"],
                      "params": next(t["params"] for t in study["trials"]
                                     if t["number"] == study["best"])},
            "difference": diff, "difference_se": diff_se,
            "defaults_seed1": {"log_likelihood": c["log_likelihood"]["mean"],
                               "se": c["log_likelihood"]["se"],
                               "difference": spread, "difference_se": spread_se}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--budget", default="12-trials", help="vaelab tune's --budget")
    parser.add_argument("--rerank", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=100)
    parser.add_argument("--k", type=int, default=1000)
    parser.add_argument("--tables", nargs="+", default=list(TABLES), choices=TABLES)
    parser.add_argument("--out", type=Path, default=Path(".bench/tune-tables"))
    parser.add_argument("--results", type=Path, default=Path("benchmarks/results/tune-tables.json"))
    args = parser.parse_args()
    rows = []
    for table in args.tables:     # written after each table: a later one may be stopped
        rows.append(compare(table, args.out, args.budget, args.epochs, args.k, args.rerank))
        args.results.write_text(json.dumps(rows, indent=1) + "\n")
    for r in rows:
        print(f"{r['table']}: defaults {r['defaults']['log_likelihood']:.2f} ± "
              f"{r['defaults']['se']:.2f}, tuned (trial {r['tuned']['trial']}) "
              f"{r['tuned']['log_likelihood']:.2f} ± {r['tuned']['se']:.2f}; paired "
              f"difference {r['difference']:+.2f} ± {r['difference_se']:.2f} nats per row "
              f"({r['test_rows']} test rows, k = {r['k']}); defaults with seed 1 "
              f"{r['defaults_seed1']['difference']:+.2f} ± "
              f"{r['defaults_seed1']['difference_se']:.2f}")


if __name__ == "__main__":
    main()
