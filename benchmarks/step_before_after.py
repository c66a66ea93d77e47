"""vaelab's training step before and after a change, side by side in one process.

The "before" step is the code of ``src/vaelab/fit/step.py`` and ``src/vaelab/fit/_elbo_grad.py``
at a git revision (``--before``), loaded from ``git show`` under other module names; the
"after" step is the installed vaelab. Both run as ``benchmarks/bench.py`` runs vaelab
(``Batches(binarize="dynamic")`` feeding ``TrainStep``, the 784-400-20 Bernoulli VAE, batch 128,
from the same initial weights), beside the matrix-product floor, the hand-written loop and
pythae (when installed), in ``--rounds`` rounds whose order rotates. Every round records
wall-clock and this thread's CPU time (``time.thread_time``): on a shared machine the CPU time
leaves out the time other processes held the core, so its ratios are the steadier figure.
Each ratio is the median over rounds of the per-round ratio (contenders of one round ran
seconds apart).

Before timing, both steps train ``--check-steps`` steps from the same seed one after the other,
and the script records whether their weights are bit-identical (the comparison a change that
claims to keep the numbers must pass).

    OMP_NUM_THREADS=1 python benchmarks/step_before_after.py --before REV --out PREFIX
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
from vaelab_contender import VaelabTrainer  # noqa: E402

BEFORE_FILES = ("src/vaelab/model/_bernoulli_fast.py", "src/vaelab/fit/_elbo_grad.py",
                "src/vaelab/fit/step.py")


def load_before(rev: str) -> types.ModuleType:
    """The step module at ``rev``, with the hand-gradient and fast-likelihood modules of that
    revision (the current ones may lack what the old step imports)."""
    before_after.module_at(rev, BEFORE_FILES[0], "_before_bernoulli_fast")
    before_after.module_at(rev, BEFORE_FILES[1], "_before_elbo_grad", [(
        "from vaelab.model._bernoulli_fast import", "from _before_bernoulli_fast import")])
    return before_after.module_at(rev, BEFORE_FILES[2], "_before_step", [(
        "from vaelab.fit._elbo_grad import", "from _before_elbo_grad import")])


class StepTrainer(VaelabTrainer):
    """bench.py's vaelab contender with the step class of a given module."""

    def __init__(self, s: Shapes, data: torch.Tensor, weights: dict, seed: int,
                 step_module: types.ModuleType | None, name: str) -> None:
        super().__init__(s, data, weights, seed)
        self.name = name
        if step_module is not None:
            torch.manual_seed(seed)
            self.step = step_module.TrainStep(self.model, self.inference, lr=s.lr)


def weights_identical(s, data, weights, before, steps: int) -> bool:
    """Train both steps ``steps`` steps from seed 0, one after the other; equal weights?"""
    runs = []
    for module, name in ((before, "before"), (None, "after")):
        torch.manual_seed(0)
        t = StepTrainer(s, data, weights, 0, module, name)
        torch.manual_seed(1)
        t.run(steps)
        runs.append([p.detach().clone() for p in t.model.parameters()])
    return all(torch.equal(a, b) for a, b in zip(*runs, strict=True))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--before", required=True, help="git revision of the 'before' step")
    p.add_argument("--rounds", type=int, default=15)
    p.add_argument("--steps", type=int, default=50, help="steps per contender per round")
    p.add_argument("--warmup", type=int, default=30)
    p.add_argument("--check-steps", type=int, default=20)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--no-peers", action="store_true", help="leave pythae out")
    p.add_argument("--out", type=Path, required=True, help="PREFIX: writes PREFIX.json, .md")
    args = p.parse_args(argv)
    common.set_threads(args.threads)
    s = Shapes()
    data = common.load_images("train")
    weights = common.initial_weights(s, 0)
    before = load_before(args.before)
    identical = weights_identical(s, data, weights, before, args.check_steps)

    trainers = {"gemm_floor": reference.GemmFloor(s, data, weights, 0),
                "reference": reference.ReferenceTrainer(s, data, weights, 0),
                "before": StepTrainer(s, data, weights, 0, before, "before"),
                "after": StepTrainer(s, data, weights, 0, None, "after")}
    missing = None
    if not args.no_peers:
        try:
            import peers

            trainers["pythae"] = peers.PythaeTrainer(s, data, weights, 0)
        except ImportError as exc:
            missing = f"pythae: {exc}"
    load_start = common.load_average()
    for t in trainers.values():
        if hasattr(t, "prepare"):
            t.prepare(args.warmup)
        t.run(args.warmup)
    names = list(trainers)

    def prepare(name: str) -> None:
        if hasattr(trainers[name], "prepare"):
            trainers[name].prepare(args.steps)

    wall, cpu = before_after.timed_rounds(
        names, args.rounds, lambda name, r: trainers[name].run(args.steps), "step_before_after",
        prepare)

    def rate(seconds: float) -> float:
        return args.steps * s.batch / seconds

    pairs = [("after", "gemm_floor"), ("before", "gemm_floor"), ("after", "before"),
             ("after", "pythae"), ("before", "pythae"), ("after", "reference"),
             ("before", "reference")]
    report = {
        "command": common.command_line(), "machine": common.machine(),
        "torch": torch.__version__, "threads": args.threads, "before": args.before,
        "after": before_after.head_revision(),
        "load_average": {"start": load_start, "end": common.load_average()},
        "rounds": args.rounds, "steps_per_round": args.steps, "warmup": args.warmup,
        "weights_bit_identical_after_check_steps": identical, "check_steps": args.check_steps,
        "missing": missing,
        "samples_per_s": {clock: before_after.per_round(values, rate)
                          for clock, values in (("wall", wall), ("cpu", cpu))},
        "ratios": {clock: {f"{a}/{b}": before_after.speed_ratio(values, a, b) for a, b in pairs}
                   for clock, values in (("wall", wall), ("cpu", cpu))},
    }
    lines = [f"# Training step before ({args.before}) and after, one process", "",
             f"Command: `{report['command']}`", "",
             f"Machine: {report['machine']}; "
             f"load average {load_start} at start, {report['load_average']['end']} at end.",
             f"{args.rounds} rounds x {args.steps} steps per contender, order rotating; "
             f"medians over rounds; each ratio the median of per-round ratios.",
             f"Weights bit-identical after {args.check_steps} steps from one seed: {identical}.",
             ""]
    lines += before_after.speed_tables(names, pairs, wall, cpu, "samples/s", rate, 0)
    before_after.write_results(args.out, report, lines)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
