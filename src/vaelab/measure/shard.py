"""Evaluation across processes: shard the examples over torchrun ranks, same result as one.

``torchrun --nproc-per-node N -m vaelab evaluate RUN …`` starts N processes (RANK,
WORLD_SIZE, MASTER_ADDR/PORT in the environment). The examples are cut into batches of
``batch_size`` rows; batch j goes to rank j mod N, and before it runs the random number
generator is seeded from (seed, the batch's first row index), so every batch draws the same
numbers whichever process runs it and however many there are: the gathered per-example values
are identical to a single process's at the same seed and batch size (the test checks it with two
gloo processes). The per-batch results are gathered to every rank (gloo, on CPU tensors:
evaluation exchanges a few numbers per example, so any backend's speed is irrelevant) and put
back in example order; the caller writes files on rank 0 only (:func:`is_main_process`).

Without torchrun (no WORLD_SIZE or WORLD_SIZE = 1) it is a plain loop over the batches.
This is a tiny process-group helper of its own (``vaelab.measure`` does not import
``vaelab.fit``, whose ``distributed`` module serves training).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.distributed as dist

from vaelab._collectives import all_gather_objects
from vaelab._runtime import isolated_rng, join_group, joined, rank_and_world_size

#: Offsets the per-batch seeds so they do not collide with seeds users pass elsewhere.
_SEED_STRIDE = 1_000_003


def process_group() -> tuple[int, int]:
    """(rank, world size): joins the torchrun job (gloo) once when WORLD_SIZE > 1."""
    rank, world = rank_and_world_size()
    if world <= 1 or joined():
        return rank, world
    join_group("gloo", timeout_s=3600)
    return dist.get_rank(), world


def is_main_process() -> bool:
    """True on rank 0 and when not distributed: the process that prints and writes files."""
    return not joined() or dist.get_rank() == 0


def batch_seed(seed: int, first_row: int) -> int:
    """The seed of the batch starting at row ``first_row``: depends on nothing else."""
    return (seed * _SEED_STRIDE + first_row) % (2**63 - 1)


def measure_batches(measure: Callable[[int, int], dict[str, torch.Tensor]], n: int,
                    batch_size: int, seed: int, progress: bool = False
                    ) -> dict[str, torch.Tensor]:
    """``measure(start, stop)`` over the batches of n rows, sharded and seeded per batch.

    Args:
        measure: (start, stop) → {key: tensor [stop − start, ...]} for rows start … stop − 1.
        n: number of rows; batch_size: rows per batch; seed: the base seed.
        progress: a tqdm bar on rank 0.

    Returns:
        {key: tensor [n, ...]} in row order, on the CPU, identical on every rank.
    """
    rank, world = process_group()
    starts = list(range(0, n, batch_size))[rank::world]
    if progress and rank == 0:
        from tqdm.auto import tqdm

        starts = tqdm(starts, desc="evaluate", unit="batch", leave=False, dynamic_ncols=True)
    mine: dict[int, dict[str, torch.Tensor]] = {}
    for start in starts:
        with isolated_rng(batch_seed(seed, start)):
            mine[start] = {k: v.detach().cpu() for k, v in
                           measure(start, min(start + batch_size, n)).items()}
    if world > 1:
        mine = {s: part for shard in all_gather_objects(mine) for s, part in shard.items()}
    ordered = [mine[s] for s in sorted(mine)]
    return {key: torch.cat([part[key] for part in ordered]) for key in ordered[0]}
