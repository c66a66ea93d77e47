"""Importance-sampling evaluation before and after a change to its decoder loop, in one process.

``vaelab.log_likelihood`` of the benchmark's 784-400-20 Bernoulli VAE (``common.Shapes``, as
``benchmarks/bench.py`` calls it through ``vaelab_contender.log_likelihood``) at k samples a
point, with the evaluation's plain-tensor path (``src/vaelab/model/_bernoulli_fast.py``) as it
was at a git revision (``--before``, loaded from ``git show`` under another module name and put
in the place ``vaelab.infer.objectives`` calls it from) and as installed ("after"), beside the
decoder's matrix-product floor (``reference.decoder_gemm_floor``: the decoder's two products
for the k·P rows, in 4096-row blocks on random operands; a cap on any implementation).
``--row-blocks`` adds "after" contenders with other decoder row blocks.

The weights are the shared initial ones (``common.initial_weights``), not a trained model:
the work per point does not depend on the values. Rounds rotate the order; every round
records wall clock and this thread's CPU time; each ratio is the median of per-round ratios.
Before timing, before and after estimate log p(x) from one seed and the script records their
largest difference.

    OMP_NUM_THREADS=1 python benchmarks/eval_before_after.py --before REV --out PREFIX
"""

from __future__ import annotations

import argparse
import sys
import types
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import before_after  # noqa: E402
import common  # noqa: E402
import reference  # noqa: E402
from common import Shapes  # noqa: E402
from vaelab_contender import build_model, log_likelihood  # noqa: E402


def load_before(rev: str) -> types.ModuleType:
    return before_after.module_at(rev, "src/vaelab/model/_bernoulli_fast.py",
                                  "_before_bernoulli_fast")


def main(argv=None) -> int:
    from vaelab.infer import objectives
    from vaelab.model import _bernoulli_fast as after

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--before", required=True)
    p.add_argument("--k", type=int, default=1000)
    p.add_argument("--points", type=int, default=20)
    p.add_argument("--rounds", type=int, default=15)
    p.add_argument("--row-blocks", default="", help="extra 'after' row blocks, e.g. 512,2048")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)
    common.set_threads(args.threads)
    s = Shapes()
    weights = common.initial_weights(s, 0)
    model = build_model(s, weights).eval()
    hand = reference.HandVAE(s)
    hand.load_state_dict(weights)
    x = (common.load_images("test")[:args.points] > 0.5).float()
    before = load_before(args.before)

    def with_module(module, block=None):
        def run():
            saved, saved_block = objectives._bernoulli_fast, after.ROW_BLOCK
            objectives._bernoulli_fast = module
            if block is not None:
                after.ROW_BLOCK = block
            try:
                return log_likelihood(model, x, args.k)
            finally:
                objectives._bernoulli_fast, after.ROW_BLOCK = saved, saved_block
        return run

    fns = {"gemm_floor": lambda: reference.decoder_gemm_floor(hand, x, args.k),
           "before": with_module(before), "after": with_module(after)}
    for block in [int(b) for b in args.row_blocks.split(",") if b]:
        fns[f"after, row block {block}"] = with_module(after, block)
    values = {}
    for name in ("before", "after"):
        torch.manual_seed(0)
        values[name] = fns[name]().double()
    difference = float((values["before"] - values["after"]).abs().max())
    for fn in fns.values():
        fn()                                                     # warm-up
    load_start = common.load_average()
    names = list(fns)

    def run(name: str, r: int) -> None:
        torch.manual_seed(r)
        fns[name]()

    wall, cpu = before_after.timed_rounds(names, args.rounds, run, "eval_before_after")

    def rate(seconds: float) -> float:
        return args.points / seconds

    pairs = [(n, "gemm_floor") for n in names[1:]] + [("after", "before")]
    report = {
        "command": f"OMP_NUM_THREADS={args.threads} {common.command_line()}",
        "machine": common.machine(), "before": args.before,
        "after": before_after.head_revision(),
        "model": "784-400-20 Bernoulli VAE, shared initial weights (not trained)",
        "k": args.k, "points": args.points, "rounds": args.rounds,
        "load_average": {"start": load_start, "end": common.load_average()},
        "max_abs_log_likelihood_difference_before_after_same_seed": difference,
        "mean_log_likelihood": float(values["after"].mean()),
        "points_per_s": {clock: before_after.per_round(values_, rate)
                         for clock, values_ in (("wall", wall), ("cpu", cpu))},
        "ratios": {clock: {f"{a}/{b}": before_after.speed_ratio(values_, a, b) for a, b in pairs}
                   for clock, values_ in (("wall", wall), ("cpu", cpu))},
    }
    lines = [f"# Importance-sampling evaluation before ({args.before}) and after, one process",
             "", f"Command: `{report['command']}`", "",
             f"Model: {report['model']}; k = {args.k}, {args.points} test points (binarized at "
             f"0.5). Machine: {report['machine']}; load average {load_start} at start, "
             f"{report['load_average']['end']} at end.",
             f"{args.rounds} rounds, order rotating; medians over rounds; each ratio the median "
             "of per-round ratios of points/s.",
             f"Same seed, before vs after: log p̂(x) differs by at most {difference:.2e} nats "
             f"(mean log p̂(x) {report['mean_log_likelihood']:.2f}).",
             ""]
    lines += before_after.speed_tables(names, pairs, wall, cpu, "points/s", rate, 1)
    before_after.write_results(args.out, report, lines)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
