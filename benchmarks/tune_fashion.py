"""Does `vaelab tune`, from vaelab's defaults, find a Fashion-MNIST model as good as the
hand-made recipe, given the same budget as that recipe?

The budget is the time the published table's vae row (`recipes/fashion-mnist/vae.toml`,
400 epochs) takes to train on one thread: about one hour here. The study searches the default
space from vaelab's defaults (nothing from the recipe) on the protocol's split
(`binarized-fashion-mnist`: 50,000 dynamically binarized training images, the 10,000
validation images binarized once); its trials are scored by validation ELBO and the best few
re-ranked by importance-sampled validation log-likelihood. The test images are never read by
the search.

Then the chosen trial's run directory, as it is (no retraining), and the recipe's run are both
evaluated once by the protocol (`vaelab evaluate RUN --k 5000 --limit 0`: all 10,000 test
images, binarized once with the protocol's seed), and compared by the paired difference of
their per-image log p̂(x).

    python benchmarks/tune_fashion.py --budget 1h --epochs 100 --recipe-run RUNS/vae \\
        --out .bench/tune-fashion

A study already finished in ``--out`` (its best.toml written) is not searched again, and a
recipe run already trained is only evaluated (an evaluation newer than the weights is read
back), so the command can be run again to finish what a stopped one left.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
from pathlib import Path

RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "fashion-mnist" / "vae.toml"


def vaelab(*args: object, threads: int) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    argv = [str(a) for a in args]
    print("$ vaelab " + " ".join(argv), flush=True)
    subprocess.run([sys.executable, "-m", "vaelab", *argv], check=True, env=env)


def evaluate(run: Path, k: int, threads: int) -> dict:
    """The protocol's evaluation of ``run`` (read back when newer than its weights)."""
    path = run / f"eval-k{k}-nall.json"
    if not path.exists() or path.stat().st_mtime < (run / "model.safetensors").stat().st_mtime:
        vaelab("evaluate", run, "--k", k, "--limit", 0, "--quiet", "--out", path,
               threads=threads)
    return json.loads(path.read_text())


def train_hours(run: Path) -> float:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return sum(r["seconds"] for r in rows) / 3600


def paired(a: list[float], b: list[float]) -> tuple[float, float]:
    """Mean and standard error over images of b − a."""
    d = [y - x for x, y in zip(a, b, strict=True)]
    m = sum(d) / len(d)
    return m, math.sqrt(sum((v - m) ** 2 for v in d) / (len(d) - 1) / len(d))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--budget", default="1h", help="vaelab tune's --budget")
    parser.add_argument("--epochs", type=int, default=100, help="epochs per trial")
    parser.add_argument("--pruner", default="halving")
    parser.add_argument("--rerank", type=int, default=3)
    parser.add_argument("--rerank-k", type=int, default=1000)
    parser.add_argument("--k", type=int, default=5000, help="test importance samples")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--recipe-run", type=Path, required=True,
                        help="the vae recipe's run directory (trained here if missing)")
    parser.add_argument("--out", type=Path, default=Path(".bench/tune-fashion"))
    parser.add_argument("--results", type=Path,
                        default=Path("benchmarks/results/tune-fashion-mnist.json"))
    args = parser.parse_args(argv)

    if not (args.out / "best.toml").is_file():
        vaelab("tune", "--data", "binarized-fashion-mnist", "--budget", args.budget,
               "--epochs", args.epochs, "--pruner", args.pruner, "--rerank", args.rerank,
               "--rerank-k", args.rerank_k, "--rerank-limit", 1000, "--seed", 0,
               "--out", args.out, "--quiet", threads=args.threads)
    study = json.loads((args.out / "study.json").read_text())
    chosen = args.out / next(r["run_dir"] for r in study["ranking"]
                             if r["number"] == study["best"])
    if not (args.recipe_run / "model.safetensors").is_file():
        vaelab("train", "--config", RECIPE, "--out", args.recipe_run, "--quiet",
               threads=args.threads)
    recipe, tuned = evaluate(args.recipe_run, args.k, args.threads), evaluate(
        chosen, args.k, args.threads)
    ll_r, ll_t = (e["per_example"]["log_likelihood"] for e in (recipe, tuned))
    diff, diff_se = paired(ll_r, ll_t)
    states: dict[str, int] = {}
    for t in study["trials"]:
        states[t["state"]] = states.get(t["state"], 0) + 1
    trials_hours = sum(train_hours(args.out / "trials" / d.name)
                       for d in (args.out / "trials").iterdir()
                       if (d / "metrics.jsonl").is_file())
    result = {
        "budget": args.budget, "epochs_per_trial": args.epochs, "pruner": args.pruner,
        "trials": states, "trials_train_hours": trials_hours,
        "recipe": {"run": "recipes/fashion-mnist/vae.toml", "nll": -sum(ll_r) / len(ll_r),
                   "train_hours": train_hours(args.recipe_run)},
        "tuned": {"trial": study["best"], "nll": -sum(ll_t) / len(ll_t),
                  "train_hours": train_hours(chosen),
                  "params": next(t["params"] for t in study["trials"]
                                 if t["number"] == study["best"])},
        "ranking": study["ranking"], "num_test": len(ll_r), "k": args.k,
        "nll_tuned_minus_recipe": -diff, "se": diff_se,
        "command": "python benchmarks/tune_fashion.py " + " ".join(argv or sys.argv[1:]),
    }
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text(json.dumps(result, indent=1) + "\n")
    print(f"recipe {result['recipe']['nll']:.2f} nats ({result['recipe']['train_hours']:.2f} h), "
          f"tuned trial {study['best']} {result['tuned']['nll']:.2f} nats "
          f"({result['tuned']['train_hours']:.2f} h of {trials_hours:.2f} h of trials); "
          f"tuned − recipe {-diff:+.3f} ± {diff_se:.3f} nats (paired, {len(ll_r)} test images, "
          f"k = {args.k}; positive: the tuned model is worse)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
