"""Training throughput on one device: vaelab against the loop written by hand, its compiled and
CUDA-graph forms, the matrix-product floor and the peers (pythae, Pyro), at a launch-bound and
a compute-bound batch, in fp32, TF32 and bf16.

The model is the benchmark's 784-400-20 Bernoulli VAE (``common.Shapes``) on Fashion-MNIST
held on the device, dynamically binarized, Adam(lr=1e-3), every contender from the same
initial weights. Rows:

* ``floor``: the step's eleven matrix products alone (``reference.GemmFloor`` on the device);
* ``hand-eager``: ``reference.ReferenceTrainer`` (index, bernoulli, forward, backward, Adam,
  ``loss.item()`` every step: the loop a user writes);
* ``hand-compile``: the same loop with ``torch.compile(model)``;
* ``hand-graph``: the whole step (forward, backward, Adam with ``capturable=True``) captured
  once as a CUDA graph and replayed (CUDA only);
* ``vaelab-eager``: ``TrainStep(compile=False)`` fed by ``Batches`` on the device;
* ``vaelab-default``: ``TrainStep`` as training builds it (``compile="auto"`` with a long
  run: compiled on CUDA after its first steps);
* ``pythae``, ``pyro``: the peers' own loops on the device (fp32 only, when installed).

Precisions: ``fp32`` (TF32 off: exact), ``tf32`` (TF32 products and convolutions allowed),
``bf16`` (autocast to bfloat16; vaelab's ``precision="bf16"``). The global settings are those
of vaelab's training (``vaelab._runtime.exact_cuda``) for every contender alike.

Each row: ``--warmup`` steps (compiling happens there; its seconds are recorded), then
``--steps`` timed steps between device synchronizations. The JSON (``--out``) is rewritten
after every row, so a stage stopped by its time limit keeps the rows it finished. Rows run
eager first (both batches), then graphs, then compiled forms, the slowest to set up last.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
import traceback
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402
import peers  # noqa: E402
import reference  # noqa: E402
from common import Shapes  # noqa: E402

PRECISIONS = ("fp32", "tf32", "bf16")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--batches", type=int, nargs="+", default=[128, 4096])
    p.add_argument("--precisions", nargs="+", default=list(PRECISIONS), choices=PRECISIONS)
    p.add_argument("--steps", type=int, default=200, help="timed steps per row (batch 128)")
    p.add_argument("--warmup", type=int, default=30)
    p.add_argument("--rows", type=int, default=None, help="training images (default: all)")
    p.add_argument("--only", nargs="*", default=None, help="contenders to run")
    p.add_argument("--card", default="", help="the card's name, recorded in the JSON")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--smoke", action="store_true",
                   help="tiny sizes, eager rows only, random data if Fashion-MNIST is missing")
    return p.parse_args(argv)


# ------------------------------------------------------------------------------ contenders


def _to(obj, device, dtype=None):
    """Every tensor attribute of obj (and tensors in its dict attributes) moved."""
    for name, value in vars(obj).items():
        if isinstance(value, torch.Tensor):
            setattr(obj, name, value.to(device, dtype) if value.is_floating_point()
                    else value.to(device))
        elif isinstance(value, dict) and all(isinstance(v, torch.Tensor) for v in value.values()):
            setattr(obj, name, {k: v.to(device, dtype) for k, v in value.items()})
    return obj


class Floor:
    def __init__(self, s, data, weights, seed, device, precision):
        dtype = torch.bfloat16 if precision == "bf16" else None
        self.inner = _to(reference.GemmFloor(s, data.cpu(), weights, seed), device, dtype)

    def run(self, steps):
        self.inner.run(steps)


class HandEager:
    """reference.ReferenceTrainer on the device (autocast for bf16), optionally compiled."""

    def __init__(self, s, data, weights, seed, device, precision, compiled=False):
        self.inner = reference.ReferenceTrainer(s, data, weights, seed)
        self.inner.model.to(device)
        if compiled:
            self.inner.model = torch.compile(self.inner.model, dynamic=False)
        self.autocast = torch.autocast(torch.device(device).type, dtype=torch.bfloat16,
                                       enabled=precision == "bf16")

    def run(self, steps):
        with self.autocast:
            self.inner.run(steps)


class HandGraph:
    """The whole step captured as one CUDA graph (PyTorch's whole-network capture recipe)."""

    def __init__(self, s, data, weights, seed, device, precision):
        model = reference.HandVAE(s)
        model.load_state_dict(weights)
        self.model = model.to(device)
        self.opt = torch.optim.Adam(model.parameters(), lr=s.lr, capturable=True)
        self.data, self.order = data, common.EpochOrder(data.shape[0], s.batch, seed)
        self.x = torch.bernoulli(data[self.order.next()])
        # no autocast weight cache across a capture (PyTorch's advice for CUDA graphs)
        self.autocast = torch.autocast("cuda", dtype=torch.bfloat16, cache_enabled=False,
                                       enabled=precision == "bf16")
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(3):
                self._step()
        torch.cuda.current_stream().wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        self.opt.zero_grad(set_to_none=True)
        with torch.cuda.graph(self.graph):
            self.loss = self._step()

    def _step(self):
        self.opt.zero_grad(set_to_none=False)
        with self.autocast:
            loss = self.model(self.x)
        loss.backward()
        self.opt.step()
        return loss

    def run(self, steps):
        for _ in range(steps):
            self.x.copy_(torch.bernoulli(self.data[self.order.next()]))
            self.graph.replay()


class Vaelab:
    """TrainStep over Batches on the device, as vaelab's training loop runs it."""

    def __init__(self, s, data, weights, seed, device, precision, compile_mode):
        from vaelab.data import Batches
        from vaelab.fit.step import TrainStep
        from vaelab.infer.schemes import Amortized
        from vaelab_contender import build_model, cycle_batches

        torch.manual_seed(seed)
        self.model = build_model(s, weights).to(device)
        self.step = TrainStep(self.model, Amortized(self.model.encoder), lr=s.lr,
                              compile=compile_mode, expected_steps=10**6,
                              precision="bf16" if precision == "bf16" else "fp32")
        self.batches = Batches(data, s.batch, seed=seed, binarize="dynamic", drop_last=True,
                               device=device)
        self.batches_forever = cycle_batches(self.batches)

    def run(self, steps):
        for _ in range(steps):
            x, index = next(self.batches_forever)
            self.step(x, index)


def build(name, s, data, weights, seed, device, precision):
    if name == "floor":
        return Floor(s, data, weights, seed, device, precision)
    if name in ("hand-eager", "hand-compile"):
        return HandEager(s, data, weights, seed, device, precision, name == "hand-compile")
    if name == "hand-graph":
        return HandGraph(s, data, weights, seed, device, precision)
    if name in ("vaelab-eager", "vaelab-default"):
        return Vaelab(s, data, weights, seed, device, precision,
                      False if name == "vaelab-eager" else "auto")
    if name == "pythae":
        return peers.PythaeTrainer(s, data, weights, seed, device=device)
    if name == "pyro":
        return peers.PyroTrainer(s, data, weights, seed, device=device)
    raise ValueError(f"unknown contender {name!r}")


# ------------------------------------------------------------------------------ the matrix


def plan(args, status: dict) -> list[tuple[str, int, str]]:
    """(contender, batch, precision) in the order they run: cheap to set up first, and the
    compiled rows (tens of seconds each to compile) last, fp32 before bf16 before TF32, so a
    stage stopped at its limit loses the least telling rows."""
    cuda = torch.device(args.device).type == "cuda"
    peers_ = [n for n in ("pythae", "pyro") if not status[n].startswith("missing")]
    order = [p for p in ("fp32", "bf16", "tf32") if p in args.precisions
             and (cuda or p != "tf32")]
    rows = [(n, b, p) for b in args.batches for p in order
            for n in ("floor", "hand-eager", "vaelab-eager")]
    rows += [(n, b, "fp32") for b in args.batches for n in peers_ if "fp32" in order]
    if cuda:
        rows += [("hand-graph", b, p) for p in order for b in args.batches]
    if cuda and not args.smoke:
        rows += [(n, b, p) for p in order for n in ("vaelab-default", "hand-compile")
                 for b in args.batches]
    return [r for r in rows if args.only is None or r[0] in args.only]


def set_precision(device: str, precision: str) -> None:
    if torch.device(device).type == "cuda":
        from vaelab._runtime import exact_cuda

        exact_cuda(allow_tf32=precision == "tf32")


def sync(device: str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def time_row(name, batch, precision, args, data, weights) -> dict:
    s = Shapes(batch=batch)
    set_precision(args.device, precision)
    steps = max(1, args.steps if batch <= 128 else args.steps // 4)
    warmup = args.warmup
    if name == "pythae":       # its epoch draws rows without replacement: at most N of them
        steps = max(1, min(steps, data.shape[0] // batch))
        warmup = min(warmup, steps)
    row = {"contender": name, "batch": batch, "precision": precision}
    try:
        start = time.perf_counter()
        trainer = build(name, s, data, weights, 0, args.device, precision)
        _prepare(trainer, warmup)
        trainer.run(warmup)
        sync(args.device)
        row["setup_s"] = time.perf_counter() - start
        _prepare(trainer, steps)         # pythae: an epoch of exactly that many batches
        start = time.perf_counter()
        trainer.run(steps)
        sync(args.device)
        seconds = time.perf_counter() - start
        row.update(steps=steps, seconds=seconds, samples_per_s=steps * batch / seconds,
                   ms_per_step=1000 * seconds / steps)
        step = getattr(trainer, "step", None)
        if step is not None:             # vaelab: did it compile, and how long that took
            row.update(compiled=step.compiled, compile_s=step.compile_seconds)
    except Exception as exc:   # one broken row is reported, the rest still run
        row["error"] = f"{type(exc).__name__}: {exc}"
        traceback.print_exc()
    return row


def _prepare(trainer, steps: int) -> None:
    if hasattr(trainer, "prepare"):
        trainer.prepare(steps)


def ratios(rows: list[dict]) -> dict:
    """Per (batch, precision): vaelab-default (else eager) over each other contender."""
    out = {}
    by = {(r["contender"], r["batch"], r["precision"]): r.get("samples_per_s") for r in rows}
    for (name, batch, precision), value in by.items():
        mine = by.get(("vaelab-default", batch, precision)) or by.get(
            ("vaelab-eager", batch, precision))
        if name.startswith("vaelab") or not value or not mine:
            continue
        out[f"vaelab/{name} b{batch} {precision}"] = mine / value
    # the targets: batch 128 >= 5x the hand-written eager loop in fp32; batch 4096
    # >= 0.7x the fp32 floor
    return out


def load_data(args) -> tuple[torch.Tensor, str]:
    try:
        x = common.load_images("train")
        source = "fashion-mnist train"
    except FileNotFoundError:
        if not args.smoke:
            raise
        x, source = torch.rand(512, 784), "random [512, 784] (Fashion-MNIST not found)"
    if args.rows:
        x = x[: args.rows]
    return x.to(args.device), source


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.smoke:
        args.batches, args.steps, args.warmup = [16], 3, 1
        args.rows = args.rows or 256
    status = peers.availability()
    data, source = load_data(args)
    weights = common.initial_weights(Shapes())
    result = {"card": args.card, "device": args.device, "torch": torch.__version__,
              "cuda": torch.version.cuda, "data": source, "command": common.command_line(),
              "peers": status, "rows": []}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    for name, batch, precision in plan(args, status):
        row = time_row(name, batch, precision, args, data, weights)
        result["rows"].append(row)
        result["ratios"] = ratios(result["rows"])
        args.out.write_text(json.dumps(result, indent=1, default=str) + "\n")
        value = row.get("samples_per_s")
        print(f"[gpu_speed] {name:15s} b{batch:<5d} {precision:5s} "
              + (f"{value:12,.0f} samples/s" if value and math.isfinite(value)
                 else row.get("error", "?")), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
