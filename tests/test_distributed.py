"""vaelab.fit.distributed: two gloo processes on a tiny VAE take the same steps as one process on
the same global batch; environment parsing and the single-process no-ops."""

from __future__ import annotations

import math
import socket

import pytest
import torch
import torch.multiprocessing as mp

from vaelab.config import ModelConfig
from vaelab.fit import distributed
from vaelab.fit import step as step_mod
from vaelab.fit.step import TrainStep
from vaelab.infer.schemes import Amortized
from vaelab.model.vae import build_vae

D, L, GLOBAL_B, STEPS, WORLD = 6, 2, 8, 3, 2


def _model():
    torch.manual_seed(0)
    return build_vae(ModelConfig(data_dim=D, latent_dim=L, hidden=(5,))).double()


def _data():
    g = torch.Generator().manual_seed(1)
    x = torch.bernoulli(torch.full((STEPS, GLOBAL_B, D), 0.5, dtype=torch.float64), generator=g)
    eps = torch.randn(STEPS, GLOBAL_B, L, generator=g, dtype=torch.float64)
    return x, eps


class _Noise:
    """step._standard_normal stand-in: the rows of a fixed global ε table this process owns."""

    def __init__(self, eps, rows):
        self.eps, self.rows, self.t = eps, rows, 0

    def __call__(self, shape, like):
        out = self.eps[self.t, self.rows]
        self.t += 1
        return out.to(like.device)


def _run(rank: int, world: int, rows_per_rank: int, port: int, out_path: str,
         device: str = "cpu") -> None:
    import os

    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    assert distributed.init_from_env("cpu") == (rank, world)
    model = _model().to(device)
    model.encoder.net = distributed.wrap(model.encoder.net, device)
    model.decoder.net = distributed.wrap(model.decoder.net, device)
    x, eps = _data()
    x = x.to(device)
    rows = slice(rank * rows_per_rank, (rank + 1) * rows_per_rank)
    step_mod._standard_normal = _Noise(eps, rows)
    step = TrainStep(model, Amortized(model.encoder), lr=1e-2, compile=False)
    elbos = [step(x[t, rows], None).elbo for t in range(STEPS)]
    mean = distributed.all_reduce_mean({"elbo": elbos[-1], "rank": float(rank)})
    distributed.barrier()
    if distributed.is_main_process():
        state = {k: v.cpu().clone() for k, v in model.state_dict().items()}
        torch.save({"state": state, "mean": mean, "elbos": elbos}, out_path)
    distributed.cleanup()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("on", ["cpu", pytest.param("device", marks=pytest.mark.device)])
def test_two_gloo_processes_match_one_process_on_the_global_batch(tmp_path, request, on):
    """Also on the device under test: both ranks on its one GPU, reducing CUDA gradients
    through gloo (nccl refuses two ranks on one GPU)."""
    where = "cpu" if on == "cpu" else str(request.getfixturevalue("device"))
    out = tmp_path / "rank0.pt"
    mp.spawn(_run, args=(WORLD, GLOBAL_B // WORLD, _free_port(), str(out), where),
             nprocs=WORLD, join=True)
    got = torch.load(out)

    model = _model()
    x, eps = _data()
    saved = step_mod._standard_normal
    try:
        step_mod._standard_normal = _Noise(eps, slice(None))
        step = TrainStep(model, Amortized(model.encoder), lr=1e-2, compile=False)
        elbos = [step(x[t], None).elbo for t in range(STEPS)]
    finally:
        step_mod._standard_normal = saved
    for key, value in model.state_dict().items():
        ddp_key = key.replace("net.", "net.module.")
        torch.testing.assert_close(got["state"][ddp_key], value, rtol=1e-10, atol=1e-12,
                                   msg=key)
    # each rank's ELBO is over its half; their mean is the global batch's ELBO
    assert got["mean"]["elbo"] == pytest.approx(elbos[-1], rel=1e-10)
    assert got["mean"]["rank"] == pytest.approx(0.5)


def test_single_process_helpers_are_no_ops(monkeypatch):
    for var in distributed.ENV_VARS:
        monkeypatch.delenv(var, raising=False)
    assert distributed.init_from_env() == (0, 1)
    assert distributed.world_size() == 1 and distributed.rank() == 0
    assert distributed.is_main_process()
    net = torch.nn.Linear(2, 2)
    assert distributed.wrap(net) is net and distributed.unwrap(net) is net
    t = torch.tensor([1.0, 3.0])
    assert distributed.all_reduce_mean(t) is t
    assert distributed.all_reduce_mean({"a": 2, "b": 1.5}) == {"a": 2.0, "b": 1.5}
    assert distributed.all_reduce_mean(4) == 4.0
    net.weight.grad = torch.ones(2, 2)
    distributed.average_gradients(net.parameters())
    assert torch.equal(net.weight.grad, torch.ones(2, 2))
    distributed.barrier()
    distributed.cleanup()
    with pytest.raises(TypeError, match="value"):
        distributed.all_reduce_mean("x")


def test_read_env_validates():
    env = distributed.read_env({"RANK": "1", "WORLD_SIZE": "4", "LOCAL_RANK": "1"})
    assert env == distributed.DistEnv(1, 4, 1) and env.is_distributed and not env.is_main
    assert distributed.read_env({}) == distributed.DistEnv()
    with pytest.raises(ValueError, match="RANK"):
        distributed.read_env({"RANK": "4", "WORLD_SIZE": "4"})
    with pytest.raises(ValueError, match="WORLD_SIZE"):
        distributed.read_env({"WORLD_SIZE": "two"})
    assert distributed.backend_for("cpu") == "gloo"
    assert distributed.backend_for(torch.device("cuda", 0)) == "nccl"


def test_shared_flat_buffer_finds_the_one_buffer_gradients_tile():
    flat = torch.arange(10.0)
    views = [flat[:6].view(2, 3), flat[6:]]
    assert distributed.shared_flat_buffer(views) is flat
    assert distributed.shared_flat_buffer(views[:1]) is None            # a gap at the end
    assert distributed.shared_flat_buffer(views[::-1]) is None          # out of order
    assert distributed.shared_flat_buffer([torch.zeros(3), torch.zeros(2)]) is None
    assert distributed.shared_flat_buffer([flat[:6].view(3, 2).t(), flat[6:]]) is None


def _flat(model) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


def _lonely_failures(rank: int, world: int, port: int, out_path: str) -> None:
    """Rank 1 alone meets a non-finite loss (a NaN in its batch), on each path of the step;
    then rank 1 alone holds no validation rows for a hierarchy's layer metrics."""
    import os

    import torch.distributed as dist

    from vaelab.model.hierarchical import layer_metrics

    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    distributed.init_from_env("cpu", timeout_s=30)     # a rank left waiting fails in 30 s
    x = torch.bernoulli(torch.full((4, D), 0.5, dtype=torch.float64),
                        generator=torch.Generator().manual_seed(1))
    if rank == 1:
        x[0, 0] = math.nan
    out: dict = {}
    for path, options in {"hand gradient": {}, "autograd": {"hook": True},
                          "objectives": {"objective": "iwae", "num_samples": 2}}.items():
        model = _model()
        if options.pop("hook", False):                # a hook sends the step to autograd
            model.decoder.net.register_forward_hook(lambda *_: None)
        before = _flat(model)
        step = TrainStep(model, Amortized(model.encoder), lr=1e-2, compile=False,
                         reduce_gradients=distributed.average_gradients, **options)
        result = step(x, None)
        out[path] = (result.skipped, torch.equal(_flat(model), before))
    sizes_model = build_vae(ModelConfig(data_dim=D, latent_dim=(3, 2), hidden=(5,))).double()
    qs = [] if rank == 1 else [sizes_model.encode(x)]

    def all_reduce_sum(t):
        dist.all_reduce(t)
        return t

    with torch.no_grad():
        out["layers"] = layer_metrics(sizes_model, qs, 4, all_reduce_sum)
    torch.save(out, f"{out_path}.{rank}")
    distributed.cleanup()


def test_a_rank_alone_with_a_non_finite_loss_or_no_rows_still_joins_the_all_reduce(tmp_path):
    """Before, the rank with a non-finite loss skipped backward and so the gradient
    all-reduce the other rank waited in (torchrun's 30-minute hang), and a rank with no
    validation rows skipped the layer metrics' sum. Now every rank skips the step together
    (weights unchanged everywhere) and both ranks get the same per-layer rates."""
    out = tmp_path / "out"
    mp.spawn(_lonely_failures, args=(WORLD, _free_port(), str(out)), nprocs=WORLD, join=True)
    ranks = [torch.load(f"{out}.{r}") for r in range(WORLD)]
    for path in ("hand gradient", "autograd", "objectives"):
        assert [r[path] for r in ranks] == [(True, True)] * WORLD, path
    rates = [r["layers"]["val_rate_per_layer"] for r in ranks]
    assert len(rates[0]) == 2 and all(v > 0 for v in rates[0]) and rates[1] == rates[0]
    assert ranks[1]["layers"]["val_active_units_per_layer"] is None   # no rows of its own


def test_layer_metrics_join_the_sum_with_no_rows():
    """A process without rows contributes zeros (sizes + count) to the sum, and alone it
    reports nothing."""
    model = build_vae(ModelConfig(data_dim=D, latent_dim=(3, 2), hidden=(5,))).double()
    from vaelab.model.hierarchical import layer_metrics

    seen = []
    assert layer_metrics(model, [], 4, lambda t: seen.append(t.clone()) or t) == {}
    assert len(seen) == 1 and torch.equal(seen[0], torch.zeros(3, dtype=torch.float64))
