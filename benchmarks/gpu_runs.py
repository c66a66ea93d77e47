"""The published-quality recipes' seconds per epoch, and the standard protocol's wall time, on
one device, through the ``vaelab`` command exactly as a user runs it (in-process, so torch is
imported once).

``--part recipes``: ``vaelab train --config recipes/fashion-mnist/NAME.toml --epochs E
--device D`` for each recipe; seconds per epoch (training and validation) and the training
samples/s come from the run's own metrics, beside the command's wall time
(start-up, checkpoints and figures included).

``--part protocol``: ``vaelab evaluate RUN --k 5000 --limit 0`` (k = 5000 importance samples
on all 10,000 test images) on the default model's run and a hierarchical one's, both from
the recipes part (trained for a few epochs only: the wall time, not the number, is measured).

The JSON (``--out``) is rewritten after every run, so a part stopped by its time limit keeps
what it finished. ``--smoke``: a few hundred examples (random binary images when
Fashion-MNIST is missing), small k and limit, two recipes.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SMOKE_RECIPES = ("vae", "hvae")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--part", choices=("recipes", "protocol"), required=True)
    p.add_argument("--device", default="cuda")
    p.add_argument("--recipes", type=Path, default=ROOT / "recipes" / "fashion-mnist")
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--runs", type=Path, required=True, help="folder for the runs")
    p.add_argument("--protocol-runs", nargs="+", default=["vae", "hvae"])
    p.add_argument("--k", type=int, default=5000)
    p.add_argument("--limit", type=int, default=0, help="evaluate: 0 = all test images")
    p.add_argument("--card", default="")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--smoke", action="store_true")
    return p.parse_args(argv)


def _cli(argv: list[str]) -> tuple[int, float]:
    from vaelab import cli

    start = time.perf_counter()
    code = cli.main([str(a) for a in argv])
    return code, time.perf_counter() - start


def _smoke_data(runs: Path) -> list[str]:
    """--data for the smoke test: none when Fashion-MNIST is installed, else random bits."""
    from vaelab import data

    if any((d / "train-images-idx3-ubyte.gz").exists() for d in data.search_dirs("fashion-mnist")):
        return ["--limit", "200"]
    import numpy as np

    path = runs / "random-binary.npy"
    rng = np.random.default_rng(0)
    np.save(path, (rng.random((200, 28, 28)) < 0.3).astype(np.float32))
    return ["--data", path]


def recipes(args, result: dict) -> None:
    names = sorted(p.stem for p in args.recipes.glob("*.toml"))
    # the protocol's runs first, so a part stopped at its limit still leaves them
    names = [n for n in args.protocol_runs if n in names] + [
        n for n in names if n not in args.protocol_runs]
    if args.smoke:
        names = [n for n in names if n in SMOKE_RECIPES]
    extra = _smoke_data(args.runs) if args.smoke else []
    for name in names:
        run = args.runs / name
        argv = ["train", "--config", args.recipes / f"{name}.toml", "--epochs", args.epochs,
                "--device", args.device, "--out", run, "--overwrite", "--quiet", *extra]
        row = {"recipe": name, "command": "vaelab " + " ".join(map(str, argv))}
        try:
            code, wall = _cli(argv)
            row.update(exit_code=code, wall_s=wall)
            if code != 0:
                raise RuntimeError(f"vaelab train exited {code} (its message is in the log)")
            metrics = [json.loads(line) for line in
                       (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
            seconds = [m["seconds"] for m in metrics]     # each epoch: training + validation
            row.update(epochs=len(seconds), seconds_per_epoch=sum(seconds) / len(seconds),
                       epochs_per_s=len(seconds) / sum(seconds),
                       train_samples_per_s=metrics[-1].get("samples_per_s"))
        except BaseException as exc:      # SystemExit from the CLI included
            row["error"] = f"{type(exc).__name__}: {exc}"
        result["recipes"].append(row)
        _write(args, result)
        print(f"[gpu_runs] recipe {name}: {row.get('seconds_per_epoch', row.get('error'))} "
              "s/epoch", flush=True)


def protocol(args, result: dict) -> None:
    for name in args.protocol_runs:
        run = args.runs / name
        out = args.runs / f"{name}-protocol.json"
        argv = ["evaluate", run, "--k", args.k, "--limit", args.limit, "--device", args.device,
                "--out", out, "--quiet"]
        if args.smoke and (args.runs / "random-binary.npy").exists():
            argv += ["--split", "train"]
        row = {"run": name, "k": args.k, "limit": args.limit,
               "command": "vaelab " + " ".join(map(str, argv))}
        if not (run / "config.json").is_file():
            row["error"] = f"no run {run} (the recipes part did not finish it)"
        else:
            try:
                code, wall = _cli(argv)
                if code != 0:
                    raise RuntimeError(f"vaelab evaluate exited {code} (see the log)")
                report = json.loads(out.read_text())
                row.update(exit_code=code, wall_s=wall,
                           num_examples=report.get("num_examples"),
                           images_per_s=(report.get("num_examples") or 0) / wall)
            except BaseException as exc:
                row["error"] = f"{type(exc).__name__}: {exc}"
        result["protocol"].append(row)
        _write(args, result)
        print(f"[gpu_runs] protocol {name}: {row.get('wall_s', row.get('error'))} s", flush=True)


def _write(args, result: dict) -> None:
    args.out.write_text(json.dumps(result, indent=1, default=str) + "\n")


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.smoke:
        args.k, args.limit = min(args.k, 20), args.limit or 50
    args.runs.mkdir(parents=True, exist_ok=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    import torch

    result = {"card": args.card, "device": args.device, "torch": torch.__version__,
              "part": args.part, "recipes": [], "protocol": []}
    (recipes if args.part == "recipes" else protocol)(args, result)
    _write(args, result)
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT / "src"))
    raise SystemExit(main())
