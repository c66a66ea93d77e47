"""Collectives that return only once the backend has let go of their tensors.

Role in vaelab: a leaf (torch only) through which training (``vaelab.fit``) and evaluation
(``vaelab.measure``) make every collective call of their own, so the rule below is kept in one
place.

Why: gloo runs each collective on a worker thread of its own, and ``work.wait()`` returns as
soon as the result is in the tensor, while that thread still holds the work, and with it a
reference to every tensor the call was given. The thread drops it a moment later, and
dropping the last C++ reference to a tensor that has a Python object releases that object,
which needs the interpreter lock. If the main thread has meanwhile reached the interpreter's
shutdown (the collective was the job's last), the worker cannot take the lock and the process
aborts ("terminate called without an active exception", SIGABRT) after all its results were
written: one run in 15 to 30 on a loaded two-core machine, always at exit. A reference the
worker still holds is visible as one more Python reference to the tensor
(``sys.getrefcount``), so after each gloo collective these helpers wait, sleeping so that the
worker can take the lock, until every tensor is back to the count it had before the call.
NCCL (CUDA) keeps its works on a watchdog thread that polls, so waiting there would slow every
step; only gloo is waited for.
"""

from __future__ import annotations

import pickle
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.distributed as dist

#: How long to wait for gloo's worker to let go of a collective's tensors before going on
#: regardless (it normally takes microseconds; a deadlock must never come from waiting here).
SETTLE_TIMEOUT_S = 10.0


def comm_device() -> torch.device:
    """Where collective tensors must live: the current GPU under nccl, else the CPU."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _reference_counts(tensors: Sequence[torch.Tensor]) -> list[int]:
    """Python references to each tensor, counted the same way before and after a call."""
    return [sys.getrefcount(t) for t in tensors]


def _settled(tensors: Sequence[torch.Tensor], collective: Callable[[], object]) -> None:
    """Run ``collective`` (a blocking call on ``tensors``), then, under gloo, wait until no
    other thread holds a reference to any of them."""
    if dist.get_backend() != "gloo":
        collective()
        return
    before = _reference_counts(tensors)
    collective()
    deadline = time.monotonic() + SETTLE_TIMEOUT_S
    while any(now > then for now, then in zip(_reference_counts(tensors), before, strict=True)):
        if time.monotonic() > deadline:
            return
        time.sleep(1e-5)          # sleeping releases the interpreter lock the worker needs


def all_reduce(tensor: torch.Tensor, op: dist.ReduceOp.RedOpType = dist.ReduceOp.SUM) -> None:
    """``dist.all_reduce(tensor, op)`` in place, returning once the backend has released it."""
    _settled([tensor], lambda: dist.all_reduce(tensor, op=op))


def broadcast(tensor: torch.Tensor, src: int = 0) -> None:
    """``dist.broadcast(tensor, src)`` in place, returning once the backend has released it."""
    _settled([tensor], lambda: dist.broadcast(tensor, src))


def all_gather_objects(obj: Any) -> list[Any]:
    """Every rank's ``obj`` (picklable), in rank order, on every rank.

    What ``dist.all_gather_object`` does (pickle to bytes, gather the sizes, gather the padded
    bytes), with tensors held here so that their release can be waited for (module docstring).
    """
    world = dist.get_world_size()
    device = comm_device()
    data = torch.frombuffer(bytearray(pickle.dumps(obj)), dtype=torch.uint8).to(device)
    size = torch.tensor([data.numel()], dtype=torch.int64, device=device)
    sizes = [torch.zeros_like(size) for _ in range(world)]
    _settled([size, *sizes], lambda: dist.all_gather(sizes, size))
    longest = int(max(s.item() for s in sizes))
    padded = torch.zeros(longest, dtype=torch.uint8, device=device)
    padded[:data.numel()] = data
    parts = [torch.empty_like(padded) for _ in range(world)]
    _settled([padded, *parts], lambda: dist.all_gather(parts, padded))
    return [pickle.loads(part[:int(s.item())].cpu().numpy().tobytes())
            for part, s in zip(parts, sizes, strict=True)]
