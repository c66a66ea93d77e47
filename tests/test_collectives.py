"""vaelab._collectives: gloo collectives that return only once gloo's thread has let go of
their tensors, checked on two real gloo processes."""

from __future__ import annotations

import socket
import sys

import pytest
import torch
import torch.multiprocessing as mp

CALLS = 300


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, port: int, out: str) -> None:
    import os

    import torch.distributed as dist

    from vaelab import _collectives

    os.environ.update(RANK=str(rank), WORLD_SIZE="2", MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    # With dist.all_reduce itself 5 to 15 % of calls return while gloo's thread still holds
    # the tensor (one Python reference more than before the call).
    held = 0
    sums = []
    for i in range(CALLS):
        u = torch.tensor([float(rank + i)], dtype=torch.float64)
        before = sys.getrefcount(u)
        _collectives.all_reduce(u)
        held += sys.getrefcount(u) > before
        sums.append(u.item())
    # a weight's .data, as the weight-norm initialisation broadcasts rank 0's values
    weight = torch.nn.Parameter(torch.full((3,), float(rank + 5)))
    data = weight.data
    before = sys.getrefcount(data)
    _collectives.broadcast(data, 0)
    held += sys.getrefcount(data) > before
    broadcast = weight.detach().tolist()
    maxima = torch.tensor([float(rank), -1.0])
    _collectives.all_reduce(maxima, dist.ReduceOp.MAX)
    # objects of different pickled sizes, and one with a tensor in it
    gathered = _collectives.all_gather_objects({"rank": rank, "pad": "x" * (1000 * rank),
                                                "t": torch.arange(rank + 2)})
    dist.barrier()
    torch.save({"held": held, "broadcast": broadcast, "sums": sums, "maxima": maxima.tolist(),
                "gathered": gathered}, f"{out}.{rank}")
    dist.destroy_process_group()


def test_collectives_return_sums_broadcasts_and_objects_only_after_gloo_lets_go(tmp_path):
    out = str(tmp_path / "out")
    mp.spawn(_worker, args=(_free_port(), out), nprocs=2, join=True)
    for rank in (0, 1):
        got = torch.load(f"{out}.{rank}", weights_only=False)
        assert got["held"] == 0                      # never a reference left behind
        assert got["sums"] == [float(2 * i + 1) for i in range(CALLS)]
        assert got["maxima"] == [1.0, -1.0]
        assert got["broadcast"] == [5.0, 5.0, 5.0]        # rank 0's values everywhere
        assert [g["rank"] for g in got["gathered"]] == [0, 1]
        assert [len(g["pad"]) for g in got["gathered"]] == [0, 1000]
        for r, g in enumerate(got["gathered"]):
            assert torch.equal(g["t"], torch.arange(r + 2))


def test_collectives_are_plain_calls_alone():
    """Without a process group there is nothing to reduce: asking is an error from torch,
    not a silent no-op (callers check the world size first)."""
    from vaelab import _collectives

    with pytest.raises((RuntimeError, ValueError)):
        _collectives.all_reduce(torch.zeros(1))
