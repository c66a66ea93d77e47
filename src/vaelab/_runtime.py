"""Where this process runs: its device and its place in a torchrun job.

Role in vaelab: a leaf (torch only) shared by training (``vaelab.fit``), evaluation
(``vaelab.measure``, which does not import ``fit``) and the command line, so that "which
device" and "which rank of how many" are answered in one place:

* :func:`resolve_device` — "auto" (CUDA when available, else CPU), "cpu" or "cuda"; under
  torchrun CUDA means ``cuda:LOCAL_RANK``, the worker's own GPU;
* :func:`read_env` — RANK, WORLD_SIZE and LOCAL_RANK as torchrun sets them, checked;
* :func:`restart_count` — how many times torchrun has restarted this worker group;
* :func:`rank_and_world_size` — of the joined process group, else of the environment (what
  this process is, or will be once it joins);
* :func:`join_group` — join the job's process group on a key-value store of this restart's
  own, and leave it when the interpreter exits;
* :func:`isolated_rng` — seeded draws that leave every global generator (CPU and CUDA) as it
  was (:func:`rng_states` / :func:`restore_rng_states` save and restore them all);
* :func:`exact_cuda` — the settings under which a CUDA run repeats bit for bit.
"""

from __future__ import annotations

import atexit
import datetime
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
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
        device = torch.device("cuda", read_env().local_rank)
        # also the current device, so what names plain "cuda" (nccl, CUDA RNG calls without
        # an index) is this worker's GPU rather than every rank's cuda:0
        torch.cuda.set_device(device)
        return device
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


def restart_count(environ: Mapping[str, str] | None = None) -> int:
    """TORCHELASTIC_RESTART_COUNT: 0 on torchrun's first start of the workers (and without
    torchrun), n after its n-th restart of them (``--max-restarts``), which starts every
    worker again with the very same arguments."""
    count = _env_int("TORCHELASTIC_RESTART_COUNT", 0, os.environ if environ is None else environ)
    if count < 0:
        raise ValueError(f"TORCHELASTIC_RESTART_COUNT: expected an integer >= 0, got {count}")
    return count


def joined() -> bool:
    """True when this process has joined a process group."""
    return dist.is_available() and dist.is_initialized()


def rank_and_world_size() -> tuple[int, int]:
    """(rank, world size) of the joined process group, else of the environment (0, 1 alone)."""
    if joined():
        return dist.get_rank(), dist.get_world_size()
    env = read_env()
    return env.rank, env.world_size


def join_group(backend: str, timeout_s: float) -> None:
    """Join the process group the environment (torchrun's, or MASTER_ADDR/PORT) describes.

    torchrun's agent keeps one key-value store for the whole job and hands it to the workers
    again after each restart (``--max-restarts``), so the keys the dead workers wrote (each
    rank's address for the gloo mesh, the init counters) are still there when the new workers
    read them: a new rank 0 could read the dead rank 1's address (gloo: "Connection refused")
    or a counter already full (a hang in the group's constructor), depending on who writes
    first. Every start of the workers therefore works under a key prefix of its own restart
    count. The group is left again when the interpreter exits (:func:`leave_group`): gloo's
    threads still running then abort the process ("terminate called without an active
    exception", exit -6) after every result was written.
    """
    env = read_env()
    timeout = datetime.timedelta(seconds=timeout_s)
    store, _, _ = next(dist.rendezvous("env://", env.rank, env.world_size, timeout=timeout))
    store = dist.PrefixStore(f"vaelab/start-{restart_count()}/", store)
    dist.init_process_group(backend, store=store, rank=env.rank, world_size=env.world_size,
                            timeout=timeout)
    atexit.register(_leave_group)


#: How long a process leaving at exit waits for the others to reach the same point.
LEAVE_TIMEOUT_S = 60.0


def leave_group(wait_s: float | None = None) -> None:
    """Leave the process group: first wait until every rank is here (a rank that destroys
    its group while a peer is still finishing the last collective leaves that peer waiting
    for the whole timeout, and its gloo threads then abort it), then destroy it (local).
    ``wait_s``: give up waiting after that long (a rank that died never comes), for the exit
    path; None waits as long as the group's own timeout."""
    if not joined():
        return
    try:
        if wait_s is None:
            dist.barrier()
        else:
            dist.monitored_barrier(timeout=datetime.timedelta(seconds=wait_s))
    except RuntimeError:
        pass           # a rank is gone: leaving is all that is left to do
    dist.destroy_process_group()


def _leave_group() -> None:
    leave_group(LEAVE_TIMEOUT_S)


@contextmanager
def isolated_rng(seed: int | None = None, *, enabled: bool = True) -> Iterator[None]:
    """Inside: torch's global generators seeded with ``seed`` (kept as they are for None);
    on exit every generator touched is back where it was.

    ``torch.random.fork_rng(devices=[])`` + ``torch.manual_seed`` restored only the CPU's
    generator while reseeding every GPU's, so on a GPU draws that promised to leave the global
    RNG alone replaced its stream with a fixed one. Here the CPU generator and, when CUDA is
    initialised, every CUDA device's are saved and restored, and only those are reseeded: an
    uninitialised CUDA is left untouched (``torch.manual_seed`` would queue a seed for it).
    ``enabled=False`` is a no-op (the draws then advance the global generators).
    """
    if not enabled:
        yield
        return
    saved = rng_states()
    try:
        if seed is not None:
            torch.default_generator.manual_seed(seed)
            for d in saved.cuda:
                torch.cuda.default_generators[d].manual_seed(seed)
        yield
    finally:
        restore_rng_states(saved)


@dataclass(frozen=True)
class RNGStates:
    """The CPU generator's state and, by device index, every initialised GPU's."""

    cpu: torch.Tensor
    cuda: dict[int, torch.Tensor]


def rng_states() -> RNGStates:
    """Every global generator's state: the CPU's and, when CUDA is initialised, each GPU's
    (an uninitialised CUDA is not initialised for it)."""
    cuda = range(torch.cuda.device_count()) if torch.cuda.is_initialized() else range(0)
    return RNGStates(torch.get_rng_state(), {d: torch.cuda.get_rng_state(d) for d in cuda})


def restore_rng_states(states: RNGStates) -> None:
    """Put back what :func:`rng_states` saved."""
    torch.set_rng_state(states.cpu)
    for d, state in states.cuda.items():
        torch.cuda.set_rng_state(state, d)


#: cuBLAS's fixed workspace, which makes its matrix products reproducible run to run (NVIDIA's
#: documented setting; read when cuBLAS starts, so set before the first CUDA product).
CUBLAS_WORKSPACE = ":4096:8"


def exact_cuda(*, allow_tf32: bool | None = None, deterministic: bool | None = None) -> None:
    """Settings under which a CUDA run repeats bit for bit (what resume promises).

    TF32 (10-bit mantissa products) is off for matrix products and convolutions (torch turns
    it on for cuDNN convolutions by default) unless ``allow_tf32``; cuDNN picks deterministic
    algorithms without benchmarking; cuBLAS gets a fixed workspace; with ``deterministic``
    torch uses deterministic kernels where it has them (warning where it has none). None
    reads the environment: VAELAB_ALLOW_TF32=1 allows TF32, VAELAB_DETERMINISTIC=0 turns
    the deterministic kernels off (both for speed at the cost of exact repeats).
    """
    if allow_tf32 is None:
        allow_tf32 = os.environ.get("VAELAB_ALLOW_TF32", "0") == "1"
    if deterministic is None:
        deterministic = os.environ.get("VAELAB_DETERMINISTIC", "1") != "0"
    torch.backends.cuda.matmul.allow_tf32 = allow_tf32
    torch.backends.cudnn.allow_tf32 = allow_tf32
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.deterministic = deterministic
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", CUBLAS_WORKSPACE)
    torch.use_deterministic_algorithms(deterministic, warn_only=True)
    # vaelab reads no uninitialised memory, so filling every new buffer with NaN (what the
    # deterministic mode does by default) would cost time and change no result
    torch.utils.deterministic.fill_uninitialized_memory = False  # type: ignore[attr-defined]


def device_of(module: object) -> torch.device:
    """Where ``module``'s weights live: its first parameter's (else buffer's) device, the CPU
    for anything without tensors. Functions move every tensor they receive from outside to
    this device at their boundary, so a CUDA model accepts the CPU data a user holds."""
    for tensors in ("parameters", "buffers"):
        found = getattr(module, tensors, None)
        if callable(found):
            for tensor in found():
                return tensor.device
    return torch.device("cpu")
