"""Does `vaelab tune` beat vaelab's defaults on small real tables? (held-out log-likelihood)

For each scikit-learn table (wine: 178 × 13, breast cancer: 569 × 30) the rows are split once
(seeded, 80/20) into train and test, written as an .npz (x_train, x_test). Then

* defaults: `vaelab train --data T.npz --likelihood gaussian --binarize none --epochs E
  --val-fraction 0.2` (every other setting vaelab's default);
* tuned: `vaelab tune --data T.npz --budget N-trials --epochs E` from a config holding the
  same validation fraction (so both train on the same rows; the search scores and re-ranks
  on the validation rows), and its chosen trial's run directory as it is (no retraining);

both evaluated once on the test rows (`vaelab evaluate RUN --split test --k K --limit 0`, the
same seed), and compared by the paired difference of their per-row log p̂(x) (a density of
the raw values: the standardization's Jacobian is included). The test rows are never seen by
the search.

    python benchmarks/tune_tables.py --trials 12 --epochs 100 --out .bench/tune-tables
"""

from __future__ import annotations

import argparse
import json
import math
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


def compare(name: str, out: Path, trials: int, epochs: int, k: int) -> dict:
    folder = out / name
    folder.mkdir(parents=True, exist_ok=True)
    data = write_table(name, folder)
    defaults = folder / "defaults"
    if not (defaults / "model.safetensors").is_file():
        run("train", "--data", data, "--likelihood", "gaussian", "--binarize", "none",
            "--epochs", epochs, "--val-fraction", VAL_FRACTION, "--out", defaults, "--quiet")
    base = folder / "base.toml"
    base.write_text(f"[train]\nval_fraction = {VAL_FRACTION}\n")
    run("tune", "--data", data, "--budget", f"{trials}-trials", "--epochs", epochs,
        "--config", base, "--out", folder / "tune", "--rerank", 3, "--rerank-k", k,
        "--rerank-limit", 0, "--quiet")
    best = json.loads((folder / "tune" / "study.json").read_text())
    chosen = folder / "tune" / next(r["run_dir"] for r in best["ranking"]
                                    if r["number"] == best["best"])
    a, b = evaluate(defaults, k), evaluate(chosen, k)
    pa = np.array(a["per_example"]["log_likelihood"])
    pb = np.array(b["per_example"]["log_likelihood"])
    d = pb - pa
    return {"table": name, "test_rows": len(d), "trials": trials, "epochs": epochs, "k": k,
            "defaults": {"log_likelihood": a["log_likelihood"]["mean"],
                         "se": a["log_likelihood"]["se"]},
            "tuned": {"trial": best["best"], "log_likelihood": b["log_likelihood"]["mean"],
                      "se": b["log_likelihood"]["se"],
                      "params": next(t["params"] for t in best["trials"]
                                     if t["number"] == best["best"])},
            "difference": float(d.mean()), "difference_se": float(d.std(ddof=1)
                                                                 / math.sqrt(len(d)))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--trials", type=int, default=12)
    parser.add_argument("--epochs", type=int, default=100)
    parser.add_argument("--k", type=int, default=1000)
    parser.add_argument("--tables", nargs="+", default=list(TABLES), choices=TABLES)
    parser.add_argument("--out", type=Path, default=Path(".bench/tune-tables"))
    parser.add_argument("--results", type=Path, default=Path("benchmarks/results/tune-tables.json"))
    args = parser.parse_args()
    rows = [compare(t, args.out, args.trials, args.epochs, args.k) for t in args.tables]
    args.results.write_text(json.dumps(rows, indent=1) + "\n")
    for r in rows:
        print(f"{r['table']}: defaults {r['defaults']['log_likelihood']:.2f} ± "
              f"{r['defaults']['se']:.2f}, tuned (trial {r['tuned']['trial']}) "
              f"{r['tuned']['log_likelihood']:.2f} ± {r['tuned']['se']:.2f}; paired "
              f"difference {r['difference']:+.2f} ± {r['difference_se']:.2f} nats per row "
              f"({r['test_rows']} test rows, k = {r['k']})")


if __name__ == "__main__":
    main()
