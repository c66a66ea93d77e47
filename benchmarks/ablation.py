"""What each piece of training craft is worth: switch it off (or on) in a recipe, short budget.

Each variant is a recipe of ``recipes/fashion-mnist/`` with a few settings changed, trained for
``--epochs`` epochs (50 by default; the KL warm-up is scaled to the same quarter of the budget
as the recipe's 100 of 400 epochs, so every variant ends at β = 1), then evaluated on the same
fixed test images (``--limit``, binarized once by ``vaelab evaluate``'s seed 0) with the same
k. Rows are compared with the recipe's own short-budget run by *paired* differences (mean ±
SE of the per-example difference of log p̂(x)): positive means the variant is better.

    nohup nice -n 10 env OMP_NUM_THREADS=1 .venv/bin/python benchmarks/ablation.py \
        --recipe vae > /tmp/ablation-vae.log 2>&1 &

Resumable: a variant whose run holds a checkpoint is resumed, a finished one is reused.
Writes ``benchmarks/results/ablation-<recipe>.json`` and ``.md``.
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

import tomllib

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from common import command_line, machine  # noqa: E402

#: recipe → variant → (what it changes, settings over the recipe: "section.key" = value).
VARIANTS: dict[str, dict[str, tuple[str, dict]]] = {
    "vae": {
        "recipe": ("the recipe itself", {}),
        "no-gated": ("ReLU MLP instead of gated dense units", {"model.gated": False}),
        "no-ema": ("live weights instead of their moving average", {"train.ema_decay": None}),
        "no-warmup": ("no KL warm-up (β = 1 from the start)",
                      {"train.kl_warmup_epochs": 0.0}),
        "lr-5e-4": ("Adam lr 5e-4 instead of 1e-3 (both decayed)", {"train.lr": 5e-4}),
        "plateau": ("halve the lr after 5 epochs without a better validation bound, "
                    "instead of the cosine decay",
                    {"train.lr_schedule": "plateau", "train.lr_patience": 5}),
        "constant-lr": ("a constant lr instead of the recipe's cosine decay",
                        {"train.lr_schedule": None}),
        "adamax": ("Adamax at lr 2e-3 (the IAF code's optimizer) instead of Adam",
                   {"train.optimizer": "adamax", "train.lr": 2e-3}),
        "weight-norm": ("weight normalisation of every dense layer",
                        {"model.weight_norm": True}),
        "logvar-bounds": ("q's log σ² clamped to [-6, 2]",
                          {"model.q_min_logvar": -6.0, "model.q_max_logvar": 2.0}),
    },
    "hvae": {
        "recipe": ("the recipe itself", {}),
        "bottom-up": ("bottom-up inference q(z1|x) q(z2|z1), decoder p(x|z1)",
                      {"model.hierarchy": "bottom-up"}),
        "no-gated": ("ReLU MLPs instead of gated dense units", {"model.gated": False}),
        "no-warmup": ("no KL warm-up", {"train.kl_warmup_epochs": 0.0}),
        "no-ema": ("live weights instead of their moving average", {"train.ema_decay": None}),
        "constant-lr": ("a constant 5e-4 (the lineage's) instead of the recipe's 1e-3 "
                        "decayed on a cosine", {"train.lr": 5e-4, "train.lr_schedule": None}),
    },
}


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--recipe", choices=tuple(VARIANTS), default="vae")
    p.add_argument("--variants", help="comma list (default: all of the recipe's)")
    p.add_argument("--epochs", type=int, default=50)
    p.add_argument("--k", type=int, default=1000)
    p.add_argument("--limit", type=int, default=2000, help="test images")
    p.add_argument("--runs", type=Path, default=ROOT / "benchmarks" / "runs" / "ablation")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, default=None)
    return p.parse_args(argv)


def toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    return repr(value)


def variant_config(recipe: str, changes: dict, epochs: int) -> dict:
    config = tomllib.loads((ROOT / "recipes" / "fashion-mnist" / f"{recipe}.toml").read_text())
    train = config["train"]
    scale = epochs / train["epochs"]
    train["epochs"] = epochs
    if train.get("kl_warmup_epochs"):
        train["kl_warmup_epochs"] = train["kl_warmup_epochs"] * scale
    train.pop("early_stopping_patience", None)   # the short budget runs to its end
    for key, value in changes.items():
        section, name = key.split(".")
        if value is None:
            config[section].pop(name, None)
        elif name == "kl_warmup_epochs" and value == 0:
            config[section].pop(name, None)
        else:
            config[section][name] = value
    return config


def write_toml(config: dict, path: Path) -> None:
    lines = []
    for section, values in config.items():
        lines.append(f"[{section}]")
        lines += [f"{k} = {toml_value(v)}" for k, v in values.items()]
    path.write_text("\n".join(lines) + "\n")


def vaelab(*args: str, threads: int) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    print("$ vaelab " + " ".join(args), flush=True)
    subprocess.run([sys.executable, "-m", "vaelab", *args], check=True, env=env)


def run_variant(run: Path, config_path: Path, args: argparse.Namespace) -> dict:
    if (run / "checkpoint").is_dir():
        vaelab("train", "--resume", str(run), "--quiet", threads=args.threads)
    else:
        vaelab("train", "--config", str(config_path), "--out", str(run), "--quiet",
               threads=args.threads)
    path = run / f"eval-k{args.k}-n{args.limit}.json"
    if not path.exists():
        vaelab("evaluate", str(run), "--k", str(args.k), "--limit", str(args.limit), "--quiet",
               "--out", str(path), threads=args.threads)
    return json.loads(path.read_text())


def mean_se(values: list[float]) -> tuple[float, float]:
    m = sum(values) / len(values)
    return m, math.sqrt(sum((v - m) ** 2 for v in values) / (len(values) - 1) / len(values))


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    variants = VARIANTS[args.recipe]
    names = args.variants.split(",") if args.variants else list(variants)
    start, results = time.time(), {}
    for name in names:
        run = args.runs / f"{args.recipe}-{name}-{args.epochs}ep"
        run.parent.mkdir(parents=True, exist_ok=True)
        config_path = args.runs / f"{args.recipe}-{name}-{args.epochs}ep.toml"
        write_toml(variant_config(args.recipe, variants[name][1], args.epochs), config_path)
        ev = run_variant(run, config_path, args)
        rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        results[name] = {"what": variants[name][0], "changes": variants[name][1],
                         "ll": ev["per_example"]["log_likelihood"],
                         "elbo": ev["per_example"]["elbo"],
                         "active_units": ev.get("active_units"),
                         "train_seconds": sum(r["seconds"] for r in rows)}
    base = results.get("recipe")
    lines = [f"Ablation of recipes/fashion-mnist/{args.recipe}.toml at {args.epochs} epochs; "
             f"test NLL by IS with k = {args.k} on the first {args.limit} test images.", "",
             "| variant | what changes | test NLL | ELBO | Δ log p vs recipe (paired) "
             "| active units | train min |", "|---|---|---|---|---|---|---|"]
    for name, r in results.items():
        nll, se = mean_se([-v for v in r["ll"]])
        elbo, _ = mean_se(r["elbo"])
        delta = "—"
        if base is not None and name != "recipe":
            d, dse = mean_se([a - b for a, b in zip(r["ll"], base["ll"], strict=True)])
            r["delta"], r["delta_se"] = d, dse
            delta = f"{d:+.3f} ± {dse:.3f}"
        r["nll"], r["nll_se"], r["mean_elbo"] = nll, se, elbo
        lines.append(f"| {name} | {r['what']} | {nll:.2f} ± {se:.2f} | {elbo:.2f} | {delta} | "
                     f"{r['active_units']} | {r['train_seconds'] / 60:.1f} |")
    lines += ["", "Positive Δ: the variant is better than the recipe (higher log p̂(x)).",
              f"Machine: {machine()}; {args.threads} thread(s) per process.",
              f"Command: `{command_line()}`"]
    text = "\n".join(lines) + "\n"
    out = args.out or ROOT / "benchmarks" / "results" / f"ablation-{args.recipe}"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".md").write_text(text)
    out.with_suffix(".json").write_text(json.dumps(
        {"command": command_line(), "machine": machine(), "seconds": time.time() - start,
         "epochs": args.epochs, "k": args.k, "limit": args.limit,
         "variants": {k: {kk: vv for kk, vv in v.items() if kk not in ("ll", "elbo")}
                      for k, v in results.items()}}, indent=1))
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
