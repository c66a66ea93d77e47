"""Data-parallel training under torchrun: process group, gradient averaging, metric reduction.

torchrun (``torch.distributed.run``) starts one process per worker and describes the job in
environment variables: ``RANK`` (0 … WORLD_SIZE−1), ``WORLD_SIZE``, ``LOCAL_RANK`` (the
worker's index on its machine, which picks its GPU) and ``MASTER_ADDR``/``MASTER_PORT``. Every
worker holds a full copy of θ and φ, takes its own share of each global batch, and averages
the gradients over workers before the optimizer step, so the update equals the one a single
process would make on the whole global batch (synchronous data-parallel SGD; Goyal et al.
2017). Backend: gloo on CPU, nccl on CUDA.

Without torchrun (no WORLD_SIZE, or WORLD_SIZE=1) every helper here is a cheap no-op, so the
training loop calls them unconditionally.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from numbers import Real

import torch
import torch.distributed as dist
from torch import nn

# Re-exported for training's callers; they live in vaelab._runtime (evaluation shares them).
from vaelab._collectives import all_reduce, comm_device
from vaelab._runtime import ENV_VARS as ENV_VARS
from vaelab._runtime import DistEnv as DistEnv
from vaelab._runtime import join_group, leave_group
from vaelab._runtime import joined as _active
from vaelab._runtime import read_env as read_env


def backend_for(device: torch.device | str | None) -> str:
    """nccl for CUDA devices, gloo otherwise."""
    return "nccl" if device is not None and torch.device(device).type == "cuda" else "gloo"


def init_from_env(device: torch.device | str | None = None, *, backend: str | None = None,
                  timeout_s: float = 1800.0) -> tuple[int, int]:
    """Join the torchrun job the environment describes; → (rank, world_size).

    Initializes the default process group once (gloo on CPU, nccl on CUDA unless ``backend``
    says otherwise) when WORLD_SIZE > 1 and none exists yet; with WORLD_SIZE ≤ 1 it does
    nothing and returns (0, 1). On CUDA it also selects the device ``cuda:LOCAL_RANK``.
    """
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    env = read_env()
    if not env.is_distributed:
        return 0, 1
    if not dist.is_available():
        raise RuntimeError("torch.distributed is not available in this build of torch; "
                           "run without torchrun (WORLD_SIZE=1)")
    backend = backend or backend_for(device)
    if backend == "nccl":
        torch.cuda.set_device(env.local_rank)
    join_group(backend, timeout_s)
    return env.rank, env.world_size


def world_size() -> int:
    """Number of processes in the job (1 when not distributed)."""
    return dist.get_world_size() if _active() else 1


def rank() -> int:
    """This process's rank (0 when not distributed)."""
    return dist.get_rank() if _active() else 0


def is_main_process() -> bool:
    """True on rank 0 (and when not distributed): the process that logs and writes files."""
    return rank() == 0


def barrier() -> None:
    """Wait for every process (no-op when not distributed)."""
    if _active() and world_size() > 1:
        dist.barrier()


def cleanup() -> None:
    """Leave the process group if this process joined one, once every rank is here
    (``vaelab._runtime.leave_group``; safe to call twice)."""
    leave_group()


def wrap(module: nn.Module, device: torch.device | str | None = None) -> nn.Module:
    """``DistributedDataParallel(module)`` when distributed and it has trainable parameters.

    Returns the module unchanged otherwise. Gradients are averaged over processes during
    backward (bucketed all-reduce overlapped with the backward pass). On CUDA the module is
    pinned to ``device`` (its local GPU).
    """
    if world_size() == 1 or not any(p.requires_grad for p in module.parameters()):
        return module
    from torch.nn.parallel import DistributedDataParallel

    device = torch.device(device) if device is not None else None
    ids = [device] if device is not None and device.type == "cuda" else None
    return DistributedDataParallel(module, device_ids=ids)


def unwrap(module: nn.Module) -> nn.Module:
    """The module inside a DistributedDataParallel wrapper (or the module itself)."""
    return getattr(module, "module", module)


def average_gradients(params: Iterable[torch.Tensor]) -> None:
    """Average ``p.grad`` over processes in one flat all-reduce (call after backward).

    For code that does not use :func:`wrap`: equivalent to DDP's averaging, one message for
    all dense gradients. Parameters without a gradient are skipped; every process must hold
    gradients for the same parameters. No-op when not distributed.
    """
    n = world_size()
    if n == 1:
        return
    grads = [p.grad for p in params if p.grad is not None and not p.grad.is_sparse]
    if not grads:
        return
    flat = shared_flat_buffer(grads)
    if flat is not None:                  # TrainStep's hand gradient: reduce it in place
        all_reduce(flat)
        flat.div_(n)
        return
    flat = torch.cat([g.reshape(-1) for g in grads])
    all_reduce(flat)
    flat.div_(n)
    offset = 0
    for g in grads:
        g.copy_(flat[offset:offset + g.numel()].view_as(g))
        offset += g.numel()


def shared_flat_buffer(tensors: list[torch.Tensor]) -> torch.Tensor | None:
    """The 1-D tensor that ``tensors`` tile exactly, in order, as contiguous views; else None.

    For gradients that are views of one flat buffer (``GaussianBernoulliELBOGrad``), so they
    are all-reduced in place without a gather and a scatter copy.
    """
    base = tensors[0]._base if tensors else None
    if base is None or base.dim() != 1 or not base.is_contiguous():
        return None
    offset = base.storage_offset()
    for t in tensors:
        if t._base is not base or not t.is_contiguous() or t.storage_offset() != offset:
            return None
        offset += t.numel()
    return base if offset == base.storage_offset() + base.numel() else None


def all_reduce_mean(value):
    """Mean over processes of a number, a tensor, or a dict of them (same keys everywhere).

    Numbers come back as floats, tensors as tensors of the same shape; identity when not
    distributed. One all-reduce for a whole dict.
    """
    if isinstance(value, Mapping):
        keys = sorted(value)
        reduced = all_reduce_mean(torch.stack([torch.as_tensor(value[k], dtype=torch.float64)
                                               .reshape(()) for k in keys]))
        return {k: float(v) for k, v in zip(keys, reduced.tolist(), strict=True)}
    if isinstance(value, torch.Tensor):
        if world_size() == 1:
            return value
        out = value.detach().to(comm_device()).clone()
        if not out.is_floating_point():
            out = out.double()
        all_reduce(out)
        return out.div_(world_size()).to(value.device)
    if isinstance(value, Real) and not isinstance(value, bool):
        return float(all_reduce_mean(torch.tensor(float(value), dtype=torch.float64)))
    raise TypeError(f"value: expected a number, a tensor or a dict of them, "
                    f"got {type(value).__name__}")
