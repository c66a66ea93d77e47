"""vaelab._runtime: the one device resolution and the one rank/world-size helper."""

from __future__ import annotations

import os

import pytest
import torch

from vaelab import _runtime
from vaelab._collectives import all_reduce


def test_resolve_device(monkeypatch):
    assert _runtime.resolve_device("cpu") == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert _runtime.resolve_device("auto") == torch.device("cpu")
    with pytest.raises(ValueError, match=r"--device: expected 'cpu' or 'auto' here "
                                         r"\(torch.cuda.is_available\(\) is False\), got 'cuda'"):
        _runtime.resolve_device("cuda", "--device")
    with pytest.raises(ValueError, match="device: expected one of 'auto', 'cpu', 'cuda', "
                                         "got 'tpu'"):
        _runtime.resolve_device("tpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("LOCAL_RANK", "1")
    current = []
    monkeypatch.setattr(torch.cuda, "set_device", current.append)
    assert _runtime.resolve_device("auto") == torch.device("cuda", 1)   # the worker's own GPU
    assert current == [torch.device("cuda", 1)]                          # and the current one
    monkeypatch.delenv("LOCAL_RANK")
    assert _runtime.resolve_device("cuda") == torch.device("cuda")


def test_rank_and_world_size_follow_the_environment_until_a_group_is_joined(monkeypatch):
    for name in _runtime.ENV_VARS:
        monkeypatch.delenv(name, raising=False)
    assert _runtime.rank_and_world_size() == (0, 1)
    monkeypatch.setenv("RANK", "2")
    monkeypatch.setenv("WORLD_SIZE", "4")
    assert _runtime.rank_and_world_size() == (2, 4)
    assert _runtime.read_env().local_rank == 2       # torchrun's default: LOCAL_RANK = RANK
    monkeypatch.setenv("RANK", "4")
    with pytest.raises(ValueError, match="RANK: expected 0 <= RANK < WORLD_SIZE = 4, got 4"):
        _runtime.rank_and_world_size()


# ------------------------------------------------------------ isolated_rng and device_of

def test_isolated_rng_seeds_then_restores_the_cpu_generator():
    torch.manual_seed(5)
    expected_after = torch.rand(3)             # the global stream as if nothing happened
    torch.manual_seed(5)
    with _runtime.isolated_rng(17):
        inside = torch.rand(4)
    assert torch.equal(inside, torch.rand(4, generator=torch.Generator().manual_seed(17)))
    assert torch.equal(torch.rand(3), expected_after)
    torch.manual_seed(5)
    with _runtime.isolated_rng(None):          # not reseeded, still restored
        unseeded = torch.rand(3)
    assert torch.equal(unseeded, expected_after)
    assert torch.equal(torch.rand(3), expected_after)
    torch.manual_seed(5)
    with _runtime.isolated_rng(17, enabled=False):   # off: draws advance the global stream
        assert torch.equal(torch.rand(3), expected_after)


def test_isolated_rng_seeds_and_restores_every_initialised_gpu(fake_cuda):
    seen = []
    with _runtime.isolated_rng(9):
        seen = [int(g.state) for g in fake_cuda]
        fake_cuda[1].manual_seed(77)         # draws inside move a GPU's generator
    assert seen == [9, 9]
    assert [int(g.state) for g in fake_cuda] == [101, 202]
    with pytest.raises(RuntimeError, match="boom"), _runtime.isolated_rng(3):
        raise RuntimeError("boom")           # restored on the way out of an error too
    assert [int(g.state) for g in fake_cuda] == [101, 202]


def test_isolated_rng_leaves_an_uninitialised_cuda_alone(monkeypatch):
    def untouched(*_args, **_kwargs):
        raise AssertionError("a CUDA generator was touched before CUDA was initialised")

    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: False)
    for name in ("get_rng_state", "set_rng_state", "manual_seed_all", "manual_seed"):
        monkeypatch.setattr(torch.cuda, name, untouched)
    with _runtime.isolated_rng(4):
        torch.rand(2)


def _vae():
    from vaelab.config import ModelConfig
    from vaelab.model.masked import build_model

    return build_model(ModelConfig(data_dim=6, latent_dim=2, hidden=(5,)))


def _seeded_draws():
    """Each function that promises seeded draws leaving the global generators alone."""
    from vaelab.measure import bdmc
    from vaelab.use import encode, scores

    vae = _vae()
    x = torch.rand(4, 6).round()

    def regret():
        raw = vae.encoder.net(x).detach()
        scores.likelihood_regret(vae, x, raw, vae.encoder.family, steps=2, seed=3)

    return {"VAE.sample": lambda: vae.sample(3, generator=torch.Generator().manual_seed(1)),
            "bdmc.simulate": lambda: bdmc.simulate(vae, 3, torch.Generator().manual_seed(1)),
            "encode(sample=True)": lambda: encode.encode(
                vae.encoder, x, sample=True, generator=torch.Generator().manual_seed(1)),
            "likelihood_regret": regret}


@pytest.mark.parametrize("name", list(_seeded_draws()))
def test_seeded_draws_leave_every_gpu_generator_as_it_was(fake_cuda, name):
    """torch.manual_seed inside fork_rng(devices=[]) reseeded the GPUs without restoring
    them; every seeded draw now goes through isolated_rng."""
    draw = _seeded_draws()[name]          # building the model draws its weights: before
    cpu_before = torch.get_rng_state()
    draw()
    assert [int(g.state) for g in fake_cuda] == [101, 202]
    if name != "likelihood_regret":          # regret's optimisation draws from the global RNG
        assert torch.equal(torch.get_rng_state(), cpu_before)


def test_device_of():
    assert _runtime.device_of(torch.nn.Linear(2, 2, device="meta")) == torch.device("meta")
    buffered = torch.nn.BatchNorm1d(2, affine=False, device="meta")
    assert _runtime.device_of(buffered) == torch.device("meta")      # buffers only
    assert _runtime.device_of(torch.nn.ReLU()) == torch.device("cpu")
    assert _runtime.device_of(object()) == torch.device("cpu")


def test_exact_cuda_turns_off_tf32_and_picks_deterministic_kernels(monkeypatch):
    calls = []
    monkeypatch.setattr(torch, "use_deterministic_algorithms",
                        lambda mode, warn_only=False: calls.append((mode, warn_only)))
    monkeypatch.setattr(torch.utils.deterministic, "fill_uninitialized_memory", True)
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    monkeypatch.delenv("VAELAB_ALLOW_TF32", raising=False)
    monkeypatch.delenv("VAELAB_DETERMINISTIC", raising=False)
    matmul, cudnn = torch.backends.cuda.matmul, torch.backends.cudnn
    saved = (matmul.allow_tf32, cudnn.allow_tf32, cudnn.benchmark, cudnn.deterministic)
    try:     # torch's flag objects refuse monkeypatch: set the opposite, restore by hand
        matmul.allow_tf32, cudnn.allow_tf32, cudnn.benchmark, cudnn.deterministic = (
            True, True, True, False)
        _runtime.exact_cuda()
        assert not matmul.allow_tf32 and not cudnn.allow_tf32
        assert cudnn.deterministic and not cudnn.benchmark
        assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
        assert calls == [(True, True)] and not torch.utils.deterministic.fill_uninitialized_memory
        monkeypatch.setenv("VAELAB_ALLOW_TF32", "1")       # the opt-outs, for speed
        monkeypatch.setenv("VAELAB_DETERMINISTIC", "0")
        _runtime.exact_cuda()
        assert matmul.allow_tf32 and cudnn.allow_tf32
        assert not cudnn.deterministic and calls[-1] == (False, True)
    finally:
        matmul.allow_tf32, cudnn.allow_tf32, cudnn.benchmark, cudnn.deterministic = saved


def _join_and_sum(rank: int, port: int, start: int, late: float, out: str,
                  plain: bool = False) -> None:
    """One worker of a two-rank job on a key-value store hosted elsewhere (as torchrun's
    agent hosts it): join, all-reduce the rank + 1, write the sum."""
    import time

    import torch.distributed as dist

    os.environ.update(RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port),
                      TORCHELASTIC_USE_AGENT_STORE="True",
                      TORCHELASTIC_RESTART_COUNT=str(start))
    torch.set_num_threads(1)
    time.sleep(late)
    if plain:       # what torch does alone: every start reads the same keys
        dist.init_process_group("gloo", timeout=__import__("datetime").timedelta(seconds=20))
    else:
        _runtime.join_group("gloo", timeout_s=20)
    total = torch.tensor([rank + 1.0])
    all_reduce(total)             # returns once gloo's thread lets go of it (_collectives)
    with open(f"{out}.{start}.{rank}", "w") as f:
        f.write(str(total.item()))


def _start_workers(port: int, start: int, out: str, plain: bool = False) -> list[int | None]:
    import multiprocessing

    spawn = multiprocessing.get_context("spawn")
    # the restarted rank 1 comes late, so the new rank 0 reads the store before it writes
    workers = [spawn.Process(target=_join_and_sum,
                             args=(rank, port, start, 3.0 * rank * (start > 0), out, plain))
               for rank in (0, 1)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(60)
        if w.is_alive():
            w.kill()
            w.join()
    return [w.exitcode for w in workers]


@pytest.mark.torchrun
def test_a_restarted_job_joins_on_keys_of_its_own_start(tmp_path):
    """torchrun keeps one store across restarts: the keys of the workers that died (their
    gloo addresses) are still in it. The restarted workers join on keys of their own start
    and sum as if the store were new."""
    import socket

    import torch.distributed as dist

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    store = dist.TCPStore("127.0.0.1", port, is_master=True, wait_for_workers=False)
    out = str(tmp_path / "sum")
    assert _start_workers(port, 0, out) == [0, 0]
    assert _start_workers(port, 1, out) == [0, 0]
    for start in (0, 1):
        assert [open(f"{out}.{start}.{r}").read() for r in (0, 1)] == ["3.0", "3.0"]
    del store
