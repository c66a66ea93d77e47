"""The VampPrior training step before and after a change to the prior, side by side in one process.

The model is the benchmark's 784-400-20 Bernoulli VAE (``common.Shapes``) with a VampPrior of
``--components`` pseudo-inputs, trained as vaelab trains it (``Batches(binarize="dynamic")``
feeding ``TrainStep``, batch 128). "before" is the same model whose prior's ``forward`` is
``VampPrior.forward`` of ``src/vaelab/model/priors.py`` at a git revision (``--before``),
loaded from ``git show`` under another module name; "after" is the installed vaelab. Both start
from the same weights and batches.

Beside them runs the step's matrix-product floor: the products any implementation of this
step must do, timed alone on preallocated random operands with nn.Linear's shapes and
transposes (``gemm_floor_mlp.run_products``):

* the encoder (784 → 400 → 40) on the batch: forward, grad_W (no grad_input for x);
* the decoder (20 → 400 → 784) on the batch: forward, grad_input, grad_W;
* the encoder on the K pseudo-inputs: forward, grad_input (the pseudo-inputs are learned),
  grad_W — the VampPrior's own cost (Tomczak & Welling 2018);
* the mixture density of B codes under K diagonal components as products: two
  [B, L] × [L, K] forward, and their backward (two [B, K] × [K, L] for the codes, two
  [K, B] × [B, L] for the components' parameters), in float32.

Activations, the log-densities' elementwise work, sampling, Adam and the data are left out, so
the floor caps any implementation. Every round records wall clock and this thread's CPU time
(``time.thread_time``); on a shared machine the CPU time's ratios are the steadier figure.
Each ratio is the median over rounds of the per-round ratio.

Before timing, both models train ``--check-steps`` steps from one seed, one after the other,
and the script records how far apart their weights and reported ELBOs end (the prior's
density is equal to float32 rounding, not bit for bit, so they drift at that level).

    OMP_NUM_THREADS=1 python benchmarks/vamp_step_before_after.py --before REV --out PREFIX
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
from common import Shapes  # noqa: E402
from gemm_floor_mlp import run_products, stack_products  # noqa: E402
from vaelab_contender import cycle_batches  # noqa: E402


def load_before_prior(rev: str) -> types.ModuleType:
    """``vaelab.model.priors`` as it was at ``rev``."""
    return before_after.module_at(rev, "src/vaelab/model/priors.py", "_before_priors")


class VampTrainer:
    """``TrainStep`` over ``Batches(binarize="dynamic")`` for the VampPrior VAE."""

    def __init__(self, s: Shapes, data: torch.Tensor, state: dict, components: int,
                 seed: int, before: types.ModuleType | None, name: str) -> None:
        from vaelab.config import ModelConfig
        from vaelab.data import Batches
        from vaelab.fit.step import TrainStep
        from vaelab.infer.schemes import Amortized
        from vaelab.model.vae import build_vae

        self.name = name
        config = ModelConfig(data_dim=s.data_dim, latent_dim=s.latent, hidden=(s.hidden,),
                             likelihood="bernoulli", family="diagonal_normal", prior="vamp",
                             prior_components=components, activation="relu")
        self.model = build_vae(config)
        self.model.load_state_dict(state)
        if before is not None:
            prior = self.model.prior_module
            prior.forward = types.MethodType(before.VampPrior.forward, prior)
        torch.manual_seed(seed)
        self.step = TrainStep(self.model, Amortized(self.model.encoder), lr=s.lr,
                              compile=False)
        self.batches = Batches(data, s.batch, seed=seed, binarize="dynamic", drop_last=True)
        self._batches = cycle_batches(self.batches)
        self.elbos: list[float] = []

    def run(self, steps: int) -> None:
        for _ in range(steps):
            x, index = next(self._batches)
            self.elbos.append(self.step(x, index).elbo)


class Floor:
    """The step's matrix products alone (module docstring)."""

    name = "gemm_floor"

    def __init__(self, s: Shapes, components: int) -> None:
        g = torch.Generator().manual_seed(0)
        encoder, decoder = [s.data_dim, s.hidden, 2 * s.latent], [s.latent, s.hidden,
                                                                   s.data_dim]
        self.parts = (stack_products(encoder, s.batch, False, g)
                      + stack_products(decoder, s.batch, True, g)
                      + stack_products(encoder, components, True, g))
        self.codes = torch.randn(s.batch, s.latent, generator=g)
        self.comp = torch.randn(components, s.latent, generator=g)
        self.grad = torch.randn(s.batch, components, generator=g)

    def run(self, steps: int) -> None:
        z, c, g = self.codes, self.comp, self.grad
        for _ in range(steps):
            run_products(self.parts)
            for _ in range(2):
                z.mm(c.t())
                g.mm(c)
                g.t().mm(z)


def drift(s, data, state, components, before, steps: int) -> dict:
    """Train before and after ``steps`` steps from seed 0; how far apart do they end?"""
    runs = []
    for module, name in ((before, "before"), (None, "after")):
        t = VampTrainer(s, data, state, components, 0, module, name)
        torch.manual_seed(1)
        t.run(steps)
        runs.append(t)
    a, b = runs
    weights = max(float((p - q).abs().max()) for p, q in
                  zip(a.model.parameters(), b.model.parameters(), strict=True))
    elbo = max(abs(x - y) for x, y in zip(a.elbos, b.elbos, strict=True))
    return {"steps": steps, "max_abs_weight_difference": weights,
            "max_abs_elbo_difference_nats": elbo, "first_elbo": [a.elbos[0], b.elbos[0]],
            "last_elbo": [a.elbos[-1], b.elbos[-1]]}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--before", required=True, help="git revision of the 'before' prior")
    p.add_argument("--components", type=int, default=500)
    p.add_argument("--rounds", type=int, default=15)
    p.add_argument("--steps", type=int, default=10, help="steps per contender per round")
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--check-steps", type=int, default=20)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, required=True, help="PREFIX: writes PREFIX.json, .md")
    args = p.parse_args(argv)
    common.set_threads(args.threads)
    s = Shapes()
    data = common.load_images("train")
    before = load_before_prior(args.before)
    torch.manual_seed(0)
    from vaelab.config import ModelConfig
    from vaelab.model.vae import build_vae

    state = build_vae(ModelConfig(data_dim=s.data_dim, latent_dim=s.latent,
                                  hidden=(s.hidden,), likelihood="bernoulli",
                                  family="diagonal_normal", prior="vamp",
                                  prior_components=args.components,
                                  activation="relu")).state_dict()
    check = drift(s, data, state, args.components, before, args.check_steps)

    contenders = {"gemm_floor": Floor(s, args.components),
                  "before": VampTrainer(s, data, state, args.components, 0, before, "before"),
                  "after": VampTrainer(s, data, state, args.components, 0, None, "after")}
    load_start = common.load_average()
    for t in contenders.values():
        t.run(args.warmup)
    names = list(contenders)
    wall, cpu = before_after.timed_rounds(names, args.rounds,
                             lambda name, r: contenders[name].run(args.steps),
                             "vamp_step_before_after")

    def ms_per_step(seconds: float) -> float:
        return seconds / args.steps * 1e3

    pairs = [("after", "gemm_floor"), ("before", "gemm_floor"), ("after", "before")]
    report = {
        "command": common.command_line(), "machine": common.machine(),
        "torch": torch.__version__, "threads": args.threads, "before": args.before,
        "after": before_after.head_revision(),
        "model": f"784-{s.hidden}-{s.latent} Bernoulli VAE, VampPrior K = {args.components}, "
                 f"batch {s.batch}",
        "load_average": {"start": load_start, "end": common.load_average()},
        "rounds": args.rounds, "steps_per_round": args.steps, "warmup": args.warmup,
        "before_vs_after_training": check,
        "ms_per_step": {clock: before_after.per_round(values, ms_per_step)
                        for clock, values in (("wall", wall), ("cpu", cpu))},
        "speed_ratios": {clock: {f"{a}/{b}": before_after.speed_ratio(values, a, b)
                                 for a, b in pairs}
                         for clock, values in (("wall", wall), ("cpu", cpu))},
    }
    lines = [f"# VampPrior training step before ({args.before}) and after, one process", "",
             f"Command: `OMP_NUM_THREADS={args.threads} {report['command']}`", "",
             f"Model: {report['model']}. Machine: {report['machine']}; load average "
             f"{load_start} at start, {report['load_average']['end']} at end.",
             f"{args.rounds} rounds x {args.steps} steps per contender, order rotating; "
             "medians over rounds; each speed ratio the median of per-round ratios "
             "(time of b / time of a).",
             f"After {check['steps']} steps from one seed, before and after differ by at most "
             f"{check['max_abs_weight_difference']:.2e} in any weight and "
             f"{check['max_abs_elbo_difference_nats']:.2e} nats in the reported ELBO.",
             ""]
    lines += before_after.speed_tables(names, pairs, wall, cpu, "ms/step", ms_per_step, 2)
    before_after.write_results(args.out, report, lines)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
