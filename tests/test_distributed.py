"""vaelab.fit.distributed: two gloo processes on a tiny VAE take the same steps as one process on
the same global batch; environment parsing and the single-process no-ops."""

from __future__ import annotations

import math
import socket

import pytest
import torch
import torch.multiprocessing as mp

from vaelab._collectives import all_reduce
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

    from vaelab.model.hierarchical import layer_metrics

    # The key-value store lives in the test's process, as torchrun's agent hosts it, so that
    # a rank leaving first cannot take the store away from the other.
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port),
                      TORCHELASTIC_USE_AGENT_STORE="True")
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
        all_reduce(t)             # returns once gloo's thread lets go of it (_collectives)
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
    import torch.distributed as dist

    out, port = tmp_path / "out", _free_port()
    store = dist.TCPStore("127.0.0.1", port, is_master=True, wait_for_workers=False)
    mp.spawn(_lonely_failures, args=(WORLD, port, str(out)), nprocs=WORLD, join=True)
    del store
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


# ------------------------------------------- torchrun launches: two nodes, a restarted worker

#: A torchrun worker: ``vaelab`` itself without the end-of-run pictures (not compared here),
#: and, when TEST_DIE_AT="rank:step" is set, that rank exits abruptly at that global step on
#: torchrun's first start of the workers only: a worker lost mid-epoch, test code only.
WORKER = """
import os, sys
import torch
torch.set_num_threads(1)
from vaelab.show import plots
plots.write_run_figures = lambda *args, **kwargs: None
die = os.environ.get("TEST_DIE_AT")
if die and os.environ.get("TORCHELASTIC_RESTART_COUNT") == "0":
    rank, step = map(int, die.split(":"))
    if int(os.environ["RANK"]) == rank:
        from vaelab.fit import train as train_mod
        one_step = train_mod._Trainer._one_step
        def dying(self, x, index, sums):
            if self.state.step == step:
                os._exit(3)
            return one_step(self, x, index, sums)
        train_mod._Trainer._one_step = dying
from vaelab.cli import main
sys.exit(main(sys.argv[1:]))
"""

#: 360 training rows, 2 ranks x 50 rows: 4 steps per epoch, 3 epochs.
TRAIN_FLAGS = ["train", "--epochs", "3", "--batch-size", "50", "--hidden", "16",
               "--latent-dim", "2", "--val-fraction", "0.1"]


def _torchrun(*flags: str) -> list[str]:
    import sys

    return [sys.executable, "-m", "torch.distributed.run", *flags]


def _launch_env(**extra: str) -> dict[str, str]:
    import os

    return {**os.environ, "OMP_NUM_THREADS": "1", **extra}


@pytest.fixture(scope="module")
def launch(tmp_path_factory):
    """(worker script, its training flags with --data, the one-node two-rank reference run)."""
    import subprocess

    import numpy as np

    where = tmp_path_factory.mktemp("launch")
    images = where / "x.npy"
    rng = np.random.default_rng(0)
    np.save(images, (rng.random((400, 28, 28)) < 0.3).astype(np.uint8) * 255)
    script = where / "worker.py"
    script.write_text(WORKER)
    flags = [str(script), *TRAIN_FLAGS, "--data", str(images)]
    reference = where / "one-node"
    done = subprocess.run(_torchrun("--standalone", "--nproc-per-node", "2", *flags,
                                    "--out", str(reference)),
                          capture_output=True, text=True, timeout=300, env=_launch_env())
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    return flags, reference


def _same_run(run, reference) -> None:
    """Bit-identical weights, checkpoint and per-epoch metrics (timings aside)."""
    from safetensors.torch import load_file

    from vaelab.fit import runs

    for name in ("model.safetensors", "checkpoint/state.safetensors"):
        got, want = load_file(str(run / name)), load_file(str(reference / name))
        assert got.keys() == want.keys()
        for key in want:
            assert torch.equal(got[key], want[key]), (name, key)
    timing = {"samples_per_s", "seconds"}
    rows = [{k: v for k, v in row.items() if k not in timing} for row in runs.read_metrics(run)]
    assert rows == [{k: v for k, v in row.items() if k not in timing}
                    for row in runs.read_metrics(reference)]
    assert [row["step"] for row in rows] == [4, 8, 12]


@pytest.mark.torchrun
def test_two_nodes_train_the_weights_of_one_node_with_two_ranks(launch, tmp_path):
    """Two torchrun launches, one per simulated node (--nnodes 2, one rank each, a c10d
    rendezvous on 127.0.0.1), reach the weights of one launch with two ranks, bit for bit."""
    import subprocess

    flags, reference = launch
    out, port = tmp_path / "two-nodes", _free_port()
    nodes = [subprocess.Popen(_torchrun("--nnodes", "2", "--node-rank", str(node),
                                        "--nproc-per-node", "1", "--rdzv-backend", "c10d",
                                        "--rdzv-endpoint", f"127.0.0.1:{port}",
                                        "--rdzv-id", "two-nodes", *flags, "--out", str(out)),
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              env=_launch_env())
             for node in (0, 1)]
    logs = [node.communicate(timeout=300)[0] for node in nodes]
    assert [node.returncode for node in nodes] == [0, 0], "\n".join(logs)[-3000:]
    _same_run(out, reference)


@pytest.mark.torchrun
def test_a_worker_lost_mid_epoch_is_restarted_and_the_run_ends_as_if_never_stopped(
        launch, tmp_path):
    """--max-restarts: rank 1 dies at step 6 (mid-epoch 2, after epoch 1's checkpoint);
    torchrun restarts both workers with the same flags, the run continues from the
    checkpoint in --out and ends with the uninterrupted run's weights, bit for bit."""
    import subprocess

    flags, reference = launch
    out = tmp_path / "restarted"
    done = subprocess.run(_torchrun("--standalone", "--nproc-per-node", "2", "--max-restarts",
                                    "1", *flags, "--out", str(out)),
                          capture_output=True, text=True, timeout=300,
                          env=_launch_env(TEST_DIE_AT="1:6"))
    log = done.stdout + done.stderr
    assert done.returncode == 0, log[-3000:]
    assert "exitcode: 3" in log and f"resuming {out} after epoch 1" in log, log[-3000:]
    _same_run(out, reference)

