"""Where this process runs: its device and its place in a torchrun job.

Role in vaelab: a leaf (torch only) shared by training (``vaelab.fit``), evaluation
(``vaelab.measure``, which does not import ``fit``) and the command line, so that "which
device" and "which rank of how many" are answered in one place:

* :func:`resolve_device` — "auto" (CUDA when available, else CPU), "cpu" or "cuda"; under
  torchrun CUDA means ``cuda:LOCAL_RANK``, the worker's own GPU;
* :func:`read_env` — RANK, WORLD_SIZE and LOCAL_RANK as torchrun sets them, checked;
* :func:`rank_and_world_size` — of the joined process group, else of the environment (what
  this process is, or will be once it joins).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

import torch
import torch.distributed as dist

ENV_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK")
DEVICES = ("auto", "cpu", "cuda")


def resolve_device(name: str, what: str = "device") -> torch.device:
    """The torch device for ``name`` ("auto", "cpu" or "cuda"); ``what`` names the setting in
    errors (``--device`` on the command line). Raises ValueError for "cuda" without CUDA."""
    if name not in DEVICES:
        raise ValueError(f"{what}: expected one of {', '.join(map(repr, DEVICES))}, "
                         f"got {name!r}")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"{what}: expected 'cpu' or 'auto' here (torch.cuda.is_available() is "
                         f"False), got 'cuda'")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and os.environ.get("LOCAL_RANK"):
        return torch.device("cuda", read_env().local_rank)
    return torch.device(name)


@dataclass(frozen=True)
class DistEnv:
    """This process's place in the job: rank, world_size, local_rank (0, 1, 0 alone)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _env_int(name: str, default: int, environ: Mapping[str, str]) -> int:
    raw = environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise ValueError(f"{name}: expected an integer in the environment, got {raw!r}") from None


def read_env(environ: Mapping[str, str] | None = None) -> DistEnv:
    """RANK, WORLD_SIZE and LOCAL_RANK from the environment, checked; defaults 0, 1, 0."""
    environ = os.environ if environ is None else environ
    world = _env_int("WORLD_SIZE", 1, environ)
    rank = _env_int("RANK", 0, environ)
    local = _env_int("LOCAL_RANK", rank if world > 1 else 0, environ)
    if world < 1:
        raise ValueError(f"WORLD_SIZE: expected an integer >= 1, got {world}")
    if not 0 <= rank < world:
        raise ValueError(f"RANK: expected 0 <= RANK < WORLD_SIZE = {world}, got {rank}")
    if local < 0:
        raise ValueError(f"LOCAL_RANK: expected an integer >= 0, got {local}")
    return DistEnv(rank, world, local)


def joined() -> bool:
    """True when this process has joined a process group."""
    return dist.is_available() and dist.is_initialized()


def rank_and_world_size() -> tuple[int, int]:
    """(rank, world size) of the joined process group, else of the environment (0, 1 alone)."""
    if joined():
        return dist.get_rank(), dist.get_world_size()
    env = read_env()
    return env.rank, env.world_size
