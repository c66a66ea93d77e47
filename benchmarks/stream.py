"""Training throughput streamed from disk (``--stream-block``) against the same data in memory.

The same uint8 .npy file (grey images, 784 values a row) trained for one epoch by
``vaelab.fit.train.train`` twice per round, in alternating order: held in memory (the default:
memory-mapped, then indexed at random) and streamed in blocks (``stream_block``). The figure
is the loop's own samples/s (metrics.jsonl's ``samples_per_s``: every training step with its
batch production, without validation or checkpoint). The file is freshly written, so the
streamed reads come from the page cache (a file larger than memory comes from the disk: then
its read speed bounds the stream, see docs). Results: median over rounds and their ratio.

    python benchmarks/stream.py --rows 30000 --rounds 3 --out benchmarks/results/stream.json
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from vaelab.fit.train import train


def one_epoch(data: Path, out: Path, block: int | None, hidden: list[int]) -> float:
    result = train({"model": {"hidden": hidden, "latent_dim": 20},
                    "train": {"data": str(data), "epochs": 1, "batch_size": 128,
                              "val_fraction": 0.01, "stream_block": block}},
                   out, log=None, progress=False)
    return float(result.metrics[0]["samples_per_s"])


def batches_only(data: Path, block: int) -> dict[str, float]:
    """Rows/s of batch production alone (dynamic binarization included), no training: the
    stream's own cost beside the in-memory batches'."""
    from vaelab.data import Batches, load_dataset
    from vaelab.data.stream import BlockBatches, RowFile, split_blocks

    rows = RowFile(data)
    blocks, _ = split_blocks(rows.rows, block, 0.0, 0)
    streamed = BlockBatches(rows, blocks, block, 128, binarize="dynamic")
    x = load_dataset(data, keep_uint8=True, mmap=True).x
    in_memory = Batches(x, 128, binarize="dynamic")
    out = {}
    for name, source in (("in memory", in_memory), ("streamed", streamed)):
        start, n = time.perf_counter(), 0
        for epoch in range(3):
            for xb, _ in source.epoch(epoch):
                n += len(xb)
        out[name] = n / (time.perf_counter() - start)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=30_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--block", type=int, default=4096, help="rows per streamed block")
    parser.add_argument("--hidden", type=int, nargs="*", default=[400])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rates: dict[str, list[float]] = {"in memory": [], "streamed": []}
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "grey.npy"
        rng = np.random.default_rng(0)
        np.save(data, rng.integers(0, 256, (args.rows, 28, 28), dtype=np.uint8))
        for r in range(args.rounds):
            order = [("in memory", None), ("streamed", args.block)]
            for name, block in (order if r % 2 == 0 else order[::-1]):
                rate = one_epoch(data, Path(tmp) / f"{name}-{r}", block, args.hidden)
                rates[name].append(rate)
                print(f"round {r + 1} {name}: {rate:.0f} samples/s", flush=True)
        production = batches_only(data, args.block)
    print("batch production alone, rows/s: " + ", ".join(f"{k} {v:.0f}"
                                                         for k, v in production.items()))
    median = {k: statistics.median(v) for k, v in rates.items()}
    ratio = median["streamed"] / median["in memory"]
    print(f"streamed / in memory: {ratio:.3f} (median of {args.rounds} rounds)")
    if args.out is not None:
        args.out.write_text(json.dumps({
            "command": "python " + " ".join(sys.argv), "when": time.strftime("%Y-%m-%d %H:%M"),
            "cpu": platform.processor() or platform.machine(), "threads": args.threads,
            "model": f"784-{'-'.join(map(str, args.hidden))}-20 Bernoulli VAE, batch 128",
            "rows": args.rows, "block": args.block, "samples_per_s": rates,
            "median": median, "streamed_over_in_memory": ratio,
            "batch_production_rows_per_s": production}, indent=1) + "\n")


if __name__ == "__main__":
    main()
