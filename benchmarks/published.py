"""The published Fashion-MNIST table, row by row: train each recipe, evaluate it, write the table.

Every row is one recipe file, ``recipes/fashion-mnist/<row>.toml``, trained by exactly the
command a user would type and measured the same way:

    vaelab train --config recipes/fashion-mnist/<row>.toml --out RUNS/<row>
    vaelab evaluate RUNS/<row> --k 5000 --limit 0        # all 10,000 test images

A row whose run directory already holds a checkpoint is resumed (``--resume``), so a killed or
unfinished benchmark continues where it stopped; a finished row is not retrained, and an
evaluation already on disk with the same k and limit is reused. The published numbers are
Norouzi et al. (2020), "Exemplar VAE", Table 1, dynamically binarized Fashion-MNIST (test NLL
in nats, k = 5000, all 10,000 test images); the protocol is the data name
``binarized-fashion-mnist`` (``vaelab.config.DATA_PROTOCOLS``).

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/published.py --rows vae,hvae --threads 1

Writes ``benchmarks/results/published-fashion-mnist.json`` and ``.md`` (the table: published vs
vaelab with its standard error and the gap in standard errors, epochs, wall-clock time,
threads, machine, command) and ``published-fashion-mnist-curves.png`` (validation bound per
epoch of every row). Rows evaluated on the same test images are also compared pairwise
(mean ± SE of the per-example difference).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from common import command_line, machine  # noqa: E402

#: row → (model, published NLL, its ±) from Norouzi et al. 2020, Table 1 (Fashion-MNIST).
PUBLISHED = {
    "vae": ("MLP VAE, N(0, I) prior", 228.70, 0.15),
    "vamp": ("MLP VAE, VampPrior", 227.35, 0.05),
    "hvae": ("two stochastic layers (MLP)", 227.37, 0.10),
    "hvae-vamp": ("two layers, VampPrior", 226.72, 0.08),
    "convhvae": ("convolutional two-layer HVAE", 225.38, 0.08),
    "convhvae-vamp": ("convolutional two-layer HVAE, VampPrior", 224.67, 0.03),
    "hvae3": ("three stochastic layers (MLP), top-down", None, None),
    "iwae": ("the vae row trained with IWAE, k = 5", None, None),
    "iaf": ("MLP VAE with an IAF posterior", None, None),
}
RECIPES = ROOT / "recipes" / "fashion-mnist"


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rows", default="vae,vamp,hvae,hvae-vamp",
                   help=f"comma list of rows ({', '.join(PUBLISHED)})")
    p.add_argument("--runs", type=Path, default=ROOT / "benchmarks" / "runs" / "published",
                   help="where the run directories live (kept: resumable)")
    p.add_argument("--k", type=int, default=5000, help="importance samples per test image")
    p.add_argument("--limit", type=int, default=0, help="test images (0: all 10,000)")
    p.add_argument("--threads", type=int, default=1,
                   help="OMP threads per process (1 beside any other job on 2 cores)")
    p.add_argument("--train-only", action="store_true")
    p.add_argument("--eval-only", action="store_true",
                   help="evaluate (and tabulate) whatever the runs hold now")
    p.add_argument("--out", type=Path,
                   default=ROOT / "benchmarks" / "results" / "published-fashion-mnist")
    return p.parse_args(argv)


def vaelab(*args: str, threads: int) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    cmd = [sys.executable, "-m", "vaelab", *args]
    print("$ vaelab " + " ".join(args), flush=True)
    subprocess.run(cmd, check=True, env=env)


def train_row(row: str, runs: Path, threads: int) -> None:
    run = runs / row
    if (run / "checkpoint").is_dir():
        vaelab("train", "--resume", str(run), "--quiet", threads=threads)
    else:
        vaelab("train", "--config", str(RECIPES / f"{row}.toml"), "--out", str(run), "--quiet",
               threads=threads)


def evaluate_row(row: str, runs: Path, k: int, limit: int, threads: int) -> dict:
    path = runs / row / f"eval-k{k}-n{limit or 'all'}.json"
    if not path.exists() or path.stat().st_mtime < (runs / row / "model.safetensors").stat(
            ).st_mtime:
        vaelab("evaluate", str(runs / row), "--k", str(k), "--limit", str(limit), "--quiet",
               "--out", str(path), threads=threads)
    return json.loads(path.read_text())


def metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def summarise(row: str, run: Path, ev: dict) -> dict:
    rows = metrics(run)
    config = json.loads((run / "config.json").read_text())
    state = json.loads((run / "checkpoint" / "state.json").read_text())
    ll = ev["per_example"]["log_likelihood"]
    n = len(ll)
    mean = sum(ll) / n
    se = math.sqrt(sum((v - mean) ** 2 for v in ll) / (n - 1) / n)   # across test images
    mc_se = ev["log_likelihood"]["se"]      # Monte Carlo only when the whole split is used
    model, published, published_se = PUBLISHED[row]
    finished = state["stopped_early"] or state["epoch"] >= config["train"]["epochs"]
    out = {"row": row, "model": model, "published_nll": published,
           "published_se": published_se, "nll": -mean, "nll_se_images": se,
           "nll_se_monte_carlo": mc_se, "num_test": n,
           "k": ev.get("num_samples", ev.get("estimator", {}).get("draws")),
           "epochs_done": state["epoch"], "epochs_max": config["train"]["epochs"],
           "best_epoch": state.get("best_epoch"), "finished": finished,
           "stopped_early": state["stopped_early"],
           "train_hours": sum(r["seconds"] for r in rows) / 3600,
           "best_val_elbo": state.get("best_val_elbo"),
           "val_rate_per_layer": rows[-1].get("val_rate_per_layer"),
           "command": f"vaelab train --config recipes/fashion-mnist/{row}.toml --out RUN && "
                      f"vaelab evaluate RUN --k {ev.get('num_samples', 5000)} --limit 0"}
    if published is not None:
        # The same 10,000 test images on both sides: the images' spread cancels; what is left
        # is vaelab's Monte Carlo error and the spread of the published runs.
        out["gap_nats"] = out["nll"] - published
        out["gap_in_se"] = out["gap_nats"] / math.sqrt(mc_se ** 2 + published_se ** 2)
    out["per_example"] = ll
    return out


def paired(a: list[float], b: list[float]) -> tuple[float, float]:
    d = [x - y for x, y in zip(a, b, strict=True)]
    m = sum(d) / len(d)
    return m, math.sqrt(sum((v - m) ** 2 for v in d) / (len(d) - 1) / len(d))


def table(results: list[dict], args: argparse.Namespace) -> str:
    lines = ["| row | model | published NLL | vaelab NLL (± Monte Carlo) | vaelab − published "
             "| epochs (best) | train h | finished |", "|---|---|---|---|---|---|---|---|"]
    for r in results:
        pub = "—" if r["published_nll"] is None else (
            f"{r['published_nll']:.2f} ± {r['published_se']:.2f}")
        gap = "—" if r["published_nll"] is None else (
            f"{r['gap_nats']:+.2f} ({r['gap_in_se']:+.1f} SE)")
        lines.append(f"| {r['row']} | {r['model']} | {pub} | {r['nll']:.2f} ± "
                     f"{r['nll_se_monte_carlo']:.3f} | {gap} | "
                     f"{r['epochs_done']}/{r['epochs_max']} ({r['best_epoch']}) | "
                     f"{r['train_hours']:.2f} | "
                     f"{'yes' if r['finished'] else 'no: resumable'} |")
    pairs = [(a, b) for i, a in enumerate(results) for b in results[i + 1:]
             if a["num_test"] == b["num_test"]]
    if pairs:
        lines += ["", "Paired differences of test NLL on the same images (row − row):", ""]
        for a, b in pairs:
            m, se = paired(b["per_example"], a["per_example"])   # NLL_a − NLL_b = ll_b − ll_a
            lines.append(f"* {a['row']} − {b['row']}: {m:+.3f} ± {se:.3f} nats")
    lines += ["", "Both sides are the same test images, so their spread (± "
              + ", ".join(f"{r['nll_se_images']:.2f}" for r in results) + " nats as an SE across "
              "images) cancels in the difference; the gap's SE combines vaelab's Monte Carlo "
              "error with the published ± (the spread of their runs; vaelab's row is one seed).",
              "", f"Machine: {machine()}; {args.threads} thread(s) per process; "
              f"k = {args.k}, {results[0]['num_test'] if results else 0} test images.",
              f"Command: `{command_line()}`"]
    return "\n".join(lines) + "\n"


def curves(results: list[dict], runs: Path, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for r in results:
        rows = metrics(runs / r["row"])
        ax.plot([x["epoch"] for x in rows], [-x["val_elbo"] for x in rows], label=r["row"])
        if r["published_nll"] is not None:
            ax.axhline(r["published_nll"], ls=":", lw=0.8, color=ax.lines[-1].get_color())
    ax.set(xlabel="epoch", ylabel="validation −ELBO (nats)", ylim=(220, 260),
           title="Fashion-MNIST recipes: validation bound (dotted: published test NLL)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    rows = [r.strip() for r in args.rows.split(",") if r.strip()]
    unknown = [r for r in rows if r not in PUBLISHED or not (RECIPES / f"{r}.toml").exists()]
    if unknown:
        sys.exit(f"--rows: no recipe for {unknown}; expected rows with a file in {RECIPES}")
    args.runs.mkdir(parents=True, exist_ok=True)
    start = time.time()
    results = []
    for row in rows:
        if not args.eval_only:
            train_row(row, args.runs, args.threads)
        if args.train_only or not (args.runs / row / "model.safetensors").exists():
            continue
        ev = evaluate_row(row, args.runs, args.k, args.limit, args.threads)
        results.append(summarise(row, args.runs / row, ev))
    if args.train_only or not results:
        return 0
    args.out.parent.mkdir(parents=True, exist_ok=True)
    text = table(results, args)
    args.out.with_suffix(".md").write_text(text)
    args.out.with_suffix(".json").write_text(json.dumps(
        {"command": command_line(), "machine": machine(), "threads": args.threads,
         "seconds": time.time() - start,
         "rows": [{k: v for k, v in r.items() if k != "per_example"} for r in results]},
        indent=1))
    curves(results, args.runs, args.out.with_name(args.out.name + "-curves.png"))
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
