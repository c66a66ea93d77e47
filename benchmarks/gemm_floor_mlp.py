"""The matrix-product floor of one training step of the richer-model rows: a cap on the
speed of any implementation that does the same products.

For MLP stacks of the rows' shapes (encoder 784 → 512 → 256 → q's parameters on B rows; decoder
L → 256 → 512 → 784 on B·K rows for K samples per image), time only the matrix products of a
training step with nn.Linear's shapes and transposes: forward addmm for every layer; backward
grad_input = grad @ W for every layer but the first (x needs no gradient) and grad_W =
gradᵀ @ input for every layer. Activations, losses, sampling, the optimizer and data are left
out, so the samples/s reached is a cap on any implementation that uses these products, vaelab's
and pythae's alike. Comparing a row's measured samples/s with its floor says how much faster
any library could be on this machine at these shapes.

    OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python benchmarks/gemm_floor_mlp.py \
        --out benchmarks/results/gemm-floor-richer

Rows (the shapes of ``benchmarks/richer.py`` at ``--hidden 512,256 --latent 32``, batch 128):
VAE (K = 1), IWAE K = 5, IWAE K = 50; VampPrior K = 50 adds an encoder pass over its 50
pseudo-inputs (forward and backward).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import torch


def stack_products(sizes: list[int], rows: int, first_needs_grad: bool,
                   g: torch.Generator) -> list[tuple[torch.Tensor, ...]]:
    """Operands of one MLP's products: per layer (input [rows, a], W [b, a], bias [b],
    grad_out [rows, b], needs grad_input)."""
    out = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
        out.append((torch.randn(rows, a, generator=g), torch.randn(b, a, generator=g),
                    torch.randn(b, generator=g), torch.randn(rows, b, generator=g),
                    i > 0 or first_needs_grad))
    return out


def run_products(layers: list[tuple[torch.Tensor, ...]]) -> None:
    for x, w, bias, grad, needs_input_grad in layers:
        torch.addmm(bias, x, w.t())
        if needs_input_grad:
            grad.mm(w)
        grad.t().mm(x)


def floor_samples_per_s(encoder: list[int], decoder: list[int], batch: int, k: int,
                        extra_encoder_rows: int, steps: int, repeats: int) -> dict:
    g = torch.Generator().manual_seed(0)
    parts = stack_products(encoder, batch, False, g) + stack_products(decoder, batch * k,
                                                                      True, g)
    if extra_encoder_rows:
        parts += stack_products(encoder, extra_encoder_rows, True, g)
    run_products(parts)                                    # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(steps):
            run_products(parts)
        times.append((time.perf_counter() - start) / steps)
    best, median = min(times), statistics.median(times)
    return {"seconds_per_step_median": median, "seconds_per_step_best": best,
            "samples_per_s_median": batch / median, "samples_per_s_best": batch / best}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--hidden", default="512,256")
    p.add_argument("--latent", type=int, default=32)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args()
    hidden = [int(h) for h in args.hidden.split(",")]
    L, D = args.latent, 784
    encoder = [D, *hidden, 2 * L]
    decoder = [L, *reversed(hidden), D]
    rows = {"VAE": (1, 0), "IWAE K=5": (5, 0), "IWAE K=50": (50, 0),
            "VampPrior (K=50)": (1, 50)}
    results = {name: floor_samples_per_s(encoder, decoder, args.batch, k, extra, args.steps,
                                         args.repeats)
               for name, (k, extra) in rows.items()}
    header = (f"GEMM floor of one training step (matrix products only), encoder {encoder}, "
              f"decoder {decoder}, batch {args.batch}; torch {torch.__version__}, "
              f"{torch.get_num_threads()} thread(s), load average "
              f"{[round(v, 2) for v in os.getloadavg()]}\n"
              f"command: OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', '?')} python "
              f"benchmarks/gemm_floor_mlp.py --hidden {args.hidden} --latent {args.latent} "
              f"--batch {args.batch} --steps {args.steps} --repeats {args.repeats} "
              f"--out {args.out}\n")
    lines = [f"{'row':<20}{'floor samples/s (median)':>26}{'(best)':>10}"]
    for name, r in results.items():
        lines.append(f"{name:<20}{r['samples_per_s_median']:>26.0f}"
                     f"{r['samples_per_s_best']:>10.0f}")
    text = header + "\n".join(lines) + "\n"
    args.out.parent.mkdir(parents=True, exist_ok=True)
    Path(f"{args.out}.txt").write_text(text)
    Path(f"{args.out}.json").write_text(json.dumps({"args": {k: str(v) for k, v in
                                                             vars(args).items()},
                                                    "rows": results}, indent=1))
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
