"""How long one epoch of a published-table recipe takes, without training it to the end.

Trains ``recipes/fashion-mnist/<recipe>.toml`` exactly as ``vaelab train --config`` does
(``vaelab.fit.train.train``), but on the first ``--limit`` training rows for ``--epochs``
epochs, and records per epoch the process CPU time (``time.process_time``: what the trainer
itself spent, whatever else the machine runs) and the wall-clock time the run logged. The
protocol's split keeps 5/6 of the rows for training and 1/6 for validation at any limit, so
one protocol epoch (50,000 + 10,000 images) is the measured epoch scaled by 60,000 / limit;
the last epoch is the one to scale (the first also pays for one-off start-up work).

    nice -n 10 env OMP_NUM_THREADS=1 .venv/bin/python benchmarks/recipe_epoch_time.py \\
        --recipe convhvae --limit 600 --epochs 2

Prints one line per epoch and the scaled figures; writes nothing but the run directory
(``--out``, a temporary one by default).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from vaelab.config import load_config_file
from vaelab.fit.train import train

ROOT = Path(__file__).resolve().parents[1]
PROTOCOL_ROWS = 60_000          # 50,000 training + 10,000 validation images per epoch


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--recipe", default="convhvae", help="a recipe of recipes/fashion-mnist")
    p.add_argument("--limit", type=int, default=600, help="training rows used (5/6 train)")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--threads", type=int, default=1, help="torch threads")
    p.add_argument("--out", type=Path, default=None, help="run directory (default: temporary)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    config = load_config_file(ROOT / "recipes" / "fashion-mnist" / f"{args.recipe}.toml")
    config["train"].update(limit=args.limit, epochs=args.epochs)
    marks, rows = [time.process_time()], []

    def on_epoch(row: dict) -> None:
        marks.append(time.process_time())
        rows.append((marks[-1] - marks[-2], row["seconds"]))
        print(f"epoch {row['epoch']}: {rows[-1][0]:.1f} CPU s, {rows[-1][1]:.1f} wall s, "
              f"validation bound {row['val_elbo']:.2f}", flush=True)

    with tempfile.TemporaryDirectory() as tmp:
        train(config, args.out or Path(tmp) / "run", on_epoch=on_epoch, log=None,
              progress=False, overwrite=True)
    cpu, wall = rows[-1]
    scale = PROTOCOL_ROWS / args.limit
    print(f"{args.recipe}: one protocol epoch ≈ {cpu * scale:,.0f} CPU s of {args.threads} "
          f"thread(s) ({cpu * scale / 60:.1f} min), ≈ {wall * scale / 60:.0f} wall min on this "
          f"machine now (last epoch × {scale:g})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
