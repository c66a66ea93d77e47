"""TrainStep semantics: one step is Adam on the −ELBO, skipped steps touch nothing, the fast
and compiled paths compute what ``vaelab.infer.objectives`` defines."""

from __future__ import annotations

import copy
import importlib
import math
import os
import pathlib
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.distributions import Bernoulli, Independent, Normal, kl_divergence

from vaelab import cli, data
from vaelab.config import ModelConfig
from vaelab.fit import runs
from vaelab.fit import step as step_mod
from vaelab.fit.step import TrainStep
from vaelab.infer.objectives import elbo_terms
from vaelab.infer.schemes import Amortized
from vaelab.model.vae import build_vae

D, L, B = 7, 3, 5


def make(prior: str = "standard_normal", seed: int = 0, dtype=torch.float64):
    torch.manual_seed(seed)
    model = build_vae(ModelConfig(data_dim=D, latent_dim=L, hidden=(6,), prior=prior)).to(dtype)
    return model, Amortized(model.encoder)


def batch(seed: int = 1, dtype=torch.float64) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.bernoulli(torch.full((B, D), 0.4, dtype=dtype), generator=g)


class FixedNoise:
    """Stands in for step._standard_normal: hands out the given ε tensors in order."""

    def __init__(self, eps: list[torch.Tensor]):
        self.eps, self.calls = list(eps), 0

    def __call__(self, shape, like):
        out = self.eps[self.calls]
        self.calls += 1
        assert tuple(out.shape) == tuple(shape)
        return out.to(like.device, like.dtype)


def independent_neg_elbo(model, x, eps):
    """−ELBO batch mean from torch.distributions directly, with z = loc + scale·ε."""
    loc, raw = model.encoder.net(x).chunk(2, dim=-1)
    scale = torch.nn.functional.softplus(raw) + model.encoder.family.min_scale
    q = Independent(Normal(loc, scale), 1)
    z = loc + scale * eps
    log_lik = Independent(Bernoulli(logits=model.decoder.net(z)), 1).log_prob(x)
    kl = kl_divergence(q, Independent(Normal(torch.zeros(L, dtype=x.dtype),
                                             torch.ones(L, dtype=x.dtype)), 1))
    return (kl - log_lik).mean()


def hand_adam(params, grads, state, lr=1e-3, betas=(0.9, 0.999), eps=1e-8):
    """Adam (Kingma & Ba 2015, Algorithm 1) written out; updates params and state in place."""
    state["t"] = state.get("t", 0) + 1
    t = state["t"]
    for i, (p, g) in enumerate(zip(params, grads, strict=True)):
        m = state.setdefault(("m", i), torch.zeros_like(p))
        v = state.setdefault(("v", i), torch.zeros_like(p))
        m.mul_(betas[0]).add_((1 - betas[0]) * g)
        v.mul_(betas[1]).add_((1 - betas[1]) * g * g)
        m_hat, v_hat = m / (1 - betas[0] ** t), v / (1 - betas[1] ** t)
        p.sub_(lr * m_hat / (v_hat.sqrt() + eps))


def test_standard_vae_takes_the_fast_path_and_others_do_not():
    model, inf = make()
    assert TrainStep(model, inf)._fast is not None
    model2, inf2 = make(prior="learned_normal")
    assert TrainStep(model2, inf2)._fast is None
    assert TrainStep(model, inf, schedule="alternating", phi_steps=1)._fast is None


def test_two_steps_equal_hand_computed_adam_on_independent_elbo(monkeypatch):
    model, inf = make()
    twin = copy.deepcopy(model)
    eps = [torch.randn(B, L, dtype=torch.float64) for _ in range(2)]
    monkeypatch.setattr(step_mod, "_standard_normal", FixedNoise(eps))
    step = TrainStep(model, inf, lr=1e-2)
    params = list(twin.parameters())
    state: dict = {}
    for i, x in enumerate([batch(1), batch(2)]):
        loss = independent_neg_elbo(twin, x, eps[i])
        grads = torch.autograd.grad(loss, params)
        result = step(x, torch.arange(B))
        assert not result.skipped
        assert result.elbo == pytest.approx(-loss.item(), rel=1e-10)
        assert result.rate + result.distortion == pytest.approx(-result.elbo, rel=1e-10)
        with torch.no_grad():
            hand_adam(params, grads, state, lr=1e-2)
    for (name, p), q in zip(model.named_parameters(), twin.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-9, atol=1e-12, msg=name)


def test_fast_terms_equal_objectives_elbo_terms(monkeypatch):
    """The plain-tensor loss is elbo_terms with the same ε, for several z samples."""
    model, inf = make()
    x = batch(3)
    for num_samples in (1, 4):
        eps = torch.randn((num_samples, B, L) if num_samples > 1 else (B, L),
                          dtype=torch.float64)
        fast = TrainStep(model, inf, num_samples=num_samples)._fast
        loss, log_lik, kl = fast(x, eps, torch.tensor(0.5, dtype=torch.float64))
        q = inf(x)
        monkeypatch.setattr(q, "rsample", lambda shape, e=eps, q=q: q.mean + q.stddev * e.reshape(
            *shape, B, L))
        terms = elbo_terms(model, q, x, num_samples)
        torch.testing.assert_close(log_lik, terms.expected_log_likelihood.mean())
        torch.testing.assert_close(kl, terms.kl.mean())
        torch.testing.assert_close(loss, (0.5 * terms.kl - terms.expected_log_likelihood).mean())


def test_general_path_step_equals_hand_adam():
    """A model off the fast path (learned prior) goes through objectives.elbo_terms."""
    model, inf = make(prior="learned_normal")
    twin = copy.deepcopy(model)
    x = batch(4)
    torch.manual_seed(7)
    step = TrainStep(model, inf, lr=1e-2)
    result = step(x, None)
    torch.manual_seed(7)
    twin_params = list(twin.parameters())
    terms = elbo_terms(twin, twin.encoder(x), x, 1)
    loss = (terms.kl - terms.expected_log_likelihood).mean()
    grads = [torch.zeros_like(p) if g is None else g for p, g in zip(
        twin_params, torch.autograd.grad(loss, twin_params, allow_unused=True), strict=True)]
    with torch.no_grad():
        hand_adam(twin_params, grads, {}, lr=1e-2)
    assert result.elbo == pytest.approx(-loss.item(), rel=1e-10)
    for p, q in zip(model.parameters(), twin.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("prior", ["standard_normal", "learned_normal"])
@pytest.mark.parametrize("grad_clip", [None, 1.0])
def test_nonfinite_step_is_skipped_and_touches_nothing(prior, grad_clip):
    model, inf = make(prior=prior)
    step = TrainStep(model, inf, grad_clip=grad_clip)
    step(batch(1), None)                          # Adam state exists now
    before = {k: v.clone() for k, v in model.state_dict().items()}
    opt_before = copy.deepcopy(step.state_dict())
    bad = batch(2)
    bad[0, 0] = math.nan
    for x, kl_weight in ((bad, 1.0), (batch(2), math.inf)):
        result = step(x, None, kl_weight)
        assert result.skipped
        for k, v in model.state_dict().items():
            assert torch.equal(v, before[k]), k
        after = step.state_dict()["theta"]["state"]
        for key, st in opt_before["theta"]["state"].items():
            for name, value in st.items():
                assert torch.equal(after[key][name], value), (key, name)
    assert not step(batch(3), None).skipped


def test_nonfinite_gradient_with_finite_loss_is_skipped(monkeypatch):
    model, inf = make()
    step = TrainStep(model, inf)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    weight = model.decoder.net[0].weight
    weight.register_hook(lambda g: torch.full_like(g, math.nan))
    assert step(batch(1), None).skipped
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_state_dict_round_trip_continues_identically():
    model, inf = make()
    step = TrainStep(model, inf)
    for i in range(3):
        step(batch(i), None)
    model2 = copy.deepcopy(model)
    step2 = TrainStep(model2, Amortized(model2.encoder))
    step2.load_state_dict(copy.deepcopy(step.state_dict()))
    torch.manual_seed(5)
    step(batch(9), None)
    torch.manual_seed(5)
    step2(batch(9), None)
    for p, q in zip(model.parameters(), model2.parameters(), strict=True):
        assert torch.equal(p, q)


def test_set_lr_and_alternating_schedule():
    model, inf = make(prior="learned_normal")
    step = TrainStep(model, inf, schedule="alternating", phi_steps=2)
    step.set_lr(0.5)
    assert all(g["lr"] == 0.5 for o in step._optimizers() for g in o.param_groups)
    theta = [p.clone() for p in step.theta]
    phi = [p.clone() for p in step.phi]
    assert not step(batch(1), None).skipped
    assert all(not torch.equal(a, b) for a, b in zip(theta, step.theta, strict=True))
    assert any(not torch.equal(a, b) for a, b in zip(phi, step.phi, strict=True))


def test_compile_auto_compiles_only_long_runs(monkeypatch):
    calls = []
    monkeypatch.setattr(torch, "compile", lambda fn, **kw: calls.append(kw) or fn)
    monkeypatch.setattr(step_mod, "AUTO_COMPILE_DEVICES", ("cpu",))
    model, inf = make()
    short = TrainStep(model, inf)                               # length unknown: eager
    long = TrainStep(model, inf, expected_steps=step_mod.AUTO_COMPILE_MIN_STEPS)
    off = TrainStep(model, inf, compile=False, expected_steps=10**9)
    for s in (short, long, off):
        for i in range(step_mod.COMPILE_AFTER_STEPS + 2):
            s(batch(i), None)
    assert not short.compiled and not off.compiled and long.compiled
    assert len(calls) == 1
    monkeypatch.setattr(step_mod, "AUTO_COMPILE_DEVICES", ("cuda",))
    cpu_long = TrainStep(model, inf, expected_steps=10**9)      # CPU: auto stays eager
    assert not cpu_long._want_compile
    with pytest.raises(ValueError, match="compile"):
        TrainStep(model, inf, compile="yes")


def test_compile_failure_falls_back_to_identical_eager_steps(monkeypatch):
    def broken(fn, **kw):
        def run(*a, **k):
            raise RuntimeError("no compiler here")
        return run

    model, inf = make()
    twin = copy.deepcopy(model)
    monkeypatch.setattr(torch, "compile", broken)
    compiled = TrainStep(model, inf, compile=True)
    eager = TrainStep(twin, Amortized(twin.encoder), compile=False)
    for i in range(step_mod.COMPILE_AFTER_STEPS + 3):
        torch.manual_seed(100 + i)
        if i == step_mod.COMPILE_AFTER_STEPS:
            with pytest.warns(RuntimeWarning, match="continuing eagerly"):
                a = compiled(batch(i), None)
        else:
            a = compiled(batch(i), None)
        torch.manual_seed(100 + i)
        b = eager(batch(i), None)
        assert a == b
    assert not compiled.compiled
    for p, q in zip(model.parameters(), twin.parameters(), strict=True):
        assert torch.equal(p, q)


def test_compiled_and_eager_steps_agree():
    try:
        torch.compile(lambda t: t.sin() + 1)(torch.ones(3))
    except Exception as exc:  # no C++ compiler: nothing to compare against
        pytest.skip(f"torch.compile (Inductor) unavailable here: {exc}")
    model, inf = make(dtype=torch.float32)
    twin = copy.deepcopy(model)
    compiled = TrainStep(model, inf, compile=True)
    eager = TrainStep(twin, Amortized(twin.encoder), compile=False)
    for i in range(step_mod.COMPILE_AFTER_STEPS + 4):
        x = batch(i, torch.float32)
        torch.manual_seed(200 + i)
        a = compiled(x, None, kl_weight=0.5 + 0.1 * i)
        torch.manual_seed(200 + i)
        b = eager(x, None, kl_weight=0.5 + 0.1 * i)
        assert a.elbo == pytest.approx(b.elbo, rel=1e-4, abs=1e-4)
    assert compiled.compiled and compiled.compile_seconds is not None
    for p, q in zip(model.parameters(), twin.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-5)


def test_phi_lr_sets_the_per_datapoint_optimizer_and_follows_lr_schedules():
    from vaelab.infer.schemes import PerDatapoint

    model = build_vae(ModelConfig(data_dim=6, latent_dim=2, hidden=(4,)))
    table = PerDatapoint(model.encoder.family, num_data=10)
    step = TrainStep(model, table, lr=1e-3, phi_lr=5e-2)
    assert [g["lr"] for g in step.phi_opt.param_groups] == [5e-2]
    assert [g["lr"] for g in step.theta_opt.param_groups] == [1e-3]
    step.set_lr(5e-4)                      # a schedule halves lr: φ's rate halves with it
    assert step.phi_opt.param_groups[0]["lr"] == pytest.approx(2.5e-2)
    assert step.theta_opt.param_groups[0]["lr"] == pytest.approx(5e-4)
    before = table.table.weight.detach().clone()
    step(torch.rand(3, 6), torch.tensor([0, 1, 2]))
    moved = (table.table.weight.detach() - before).abs().amax(1)
    # Adam's first step moves each touched parameter by ≈ its learning rate (2.5e-2 here).
    assert moved[:3].tolist() == pytest.approx([2.5e-2] * 3, rel=1e-3)
    assert bool((moved[3:] == 0).all())
    with pytest.raises(ValueError, match="phi_lr"):
        TrainStep(model, table, phi_lr=0.0)


def test_bf16_autocast_step_runs_on_autograd_and_tracks_the_float32_step():
    """precision="bf16": forward under bfloat16 autocast, float32 weights and Adam, no hand
    gradient; with the same noise its ELBO and update stay within bfloat16 rounding of fp32."""
    model, inf = make(dtype=torch.float32)
    twin = copy.deepcopy(model)
    half = TrainStep(model, inf, lr=1e-2, precision="bf16")
    full = TrainStep(twin, Amortized(twin.encoder), lr=1e-2)
    assert half._grad is None and full._grad is not None
    calls = []
    original = torch.autocast.__init__

    def spy(self, device_type, dtype=None, enabled=True, **kw):
        calls.append((device_type, dtype, enabled))
        original(self, device_type, dtype=dtype, enabled=enabled, **kw)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(torch.autocast, "__init__", spy)
        for i in range(3):
            x = batch(i, torch.float32)
            torch.manual_seed(300 + i)
            a = half(x, None)
            torch.manual_seed(300 + i)
            b = full(x, None)
            assert a.elbo == pytest.approx(b.elbo, rel=2e-2)
    assert calls and all(c == ("cpu", torch.bfloat16, True) for c in calls)
    for p, q in zip(model.parameters(), twin.parameters(), strict=True):
        assert p.dtype == torch.float32
        torch.testing.assert_close(p, q, rtol=0, atol=5e-3)
    with pytest.raises(ValueError, match="precision: expected one of 'fp32', 'bf16'"):
        TrainStep(model, inf, precision="fp16")


def test_a_failed_compile_restores_every_gpu_generator(monkeypatch, fake_cuda):
    """The compiled attempt may draw its noise on the GPU before failing: the retry starts
    from the generators as they were, the GPUs' included (it restored only the CPU's)."""
    def broken(fn, **kw):
        def run(*a, **k):
            fake_cuda[0].manual_seed(999)         # the failed attempt's draw on cuda:0
            raise RuntimeError("no compiler here")
        return run

    monkeypatch.setattr(torch, "compile", broken)
    model, inf = make()
    step = TrainStep(model, inf, compile=True)
    for i in range(step_mod.COMPILE_AFTER_STEPS):
        step(batch(i), None)
    fake_cuda[1].manual_seed(7)
    before = [int(g.state) for g in fake_cuda]
    with pytest.warns(RuntimeWarning, match="continuing eagerly"):
        step(batch(0), None)
    assert [int(g.state) for g in fake_cuda] == before


@pytest.mark.device
@pytest.mark.parametrize("path", ["hand gradient", "autograd", "clipped", "bf16"])
def test_fast_paths_on_the_device_take_the_cpu_steps(monkeypatch, device, path):
    """Same weights, same ε, same batches: float32 steps on the device end where float64
    steps on the CPU do (bf16: the reported ELBOs agree to bf16 precision)."""
    eps = [torch.randn(B, L, dtype=torch.float64) for _ in range(3)]
    runs = []
    for where, dtype in ((torch.device("cpu"), torch.float64), (device, torch.float32)):
        model, _ = make()
        model = model.to(where, dtype)
        if path == "autograd":                    # a hook sends the step to autograd
            model.decoder.net.register_forward_hook(lambda *_: None)
        options = {"grad_clip": 0.5} if path == "clipped" else {}
        if path == "bf16" and dtype == torch.float32:
            options["precision"] = "bf16"
        monkeypatch.setattr(step_mod, "_standard_normal", FixedNoise(eps))
        step = TrainStep(model, Amortized(model.encoder), lr=1e-2, compile=False, **options)
        elbos = [step(batch(i).to(where, dtype), None).elbo for i in range(3)]
        runs.append((model, elbos))
    (cpu, cpu_elbos), (dev, dev_elbos) = runs
    if path == "bf16":
        assert dev_elbos == pytest.approx(cpu_elbos, rel=3e-2)
        return
    assert dev_elbos == pytest.approx(cpu_elbos, rel=1e-5)
    for p, q in zip(dev.parameters(), cpu.parameters(), strict=True):
        assert p.device.type == device.type
        torch.testing.assert_close(p.detach().cpu().double(), q.detach(), rtol=1e-4, atol=1e-5)


# ----------------------------------------------------------------------------------- one-line bugs
# Tests against one-line bugs: each test here fails on a one-line bug that
# the suite used to let pass, with the right value as its expectation.
#
# * gradient clipping above every gradient norm changes nothing (a clip that also scales small
#   gradients up would) — on the hand-gradient path and on the autograd path;
# * the reparameterization noise differs between epochs, while validation draws are identical
#   (the resume tests repeat a "same noise every epoch" mistake on both sides, so cannot see it);
# * a failure inside the checkpoint write (any of its renames raising) leaves a readable
#   checkpoint of the previous or the new epoch;
# * a ``.npy`` object array whose pickle payload would create a file is refused unexecuted;
# * a KL weight strictly between 0 and 1 on the autograd path: the gradient is exactly the
#   weighted sum of the reconstruction and KL gradients (float64, to rounding).
# (The standard errors against hand-computed values are in ``test_honest.py``.)


train_mod = importlib.import_module("vaelab.fit.train")
F64 = torch.float64
pytestmark = pytest.mark.usefixtures("one_thread")


def binary_batch(seed: int, n: int = 16, d: int = 12, dtype=torch.float32) -> torch.Tensor:
    return torch.rand(n, d, generator=torch.Generator().manual_seed(seed), dtype=dtype).bernoulli()


# --------------------------------------------------------------------------- clipping


@pytest.mark.parametrize("prior", ["standard_normal", "learned_normal"])   # hand / autograd
def test_clipping_above_every_gradient_norm_changes_nothing(prior):
    torch.manual_seed(0)
    model = build_vae(ModelConfig(data_dim=12, latent_dim=3, hidden=(8,), prior=prior))
    twin = copy.deepcopy(model)
    clipped = TrainStep(model, Amortized(model.encoder), lr=1e-2, grad_clip=1e6, compile=False)
    plain = TrainStep(twin, Amortized(twin.encoder), lr=1e-2, compile=False)
    assert (clipped._grad is not None) == (prior == "standard_normal")
    norms = []
    for i in range(5):
        torch.manual_seed(100 + i)
        a = clipped(binary_batch(i))
        torch.manual_seed(100 + i)
        b = plain(binary_batch(i))
        assert a == b
        grads = [p.grad for p in twin.parameters() if p.grad is not None]
        if grads:
            norms.append(float(torch.linalg.vector_norm(torch.cat([g.flatten() for g in grads]))))
    assert all(n < 1e6 for n in norms)
    for p, q in zip(model.parameters(), twin.parameters(), strict=True):
        assert torch.equal(p, q)


def test_clipping_below_the_norm_does_change_the_step():     # the oracle above can fail
    torch.manual_seed(0)
    model = build_vae(ModelConfig(data_dim=12, latent_dim=3, hidden=(8,)))
    twin = copy.deepcopy(model)
    clipped = TrainStep(model, Amortized(model.encoder), lr=1e-2, grad_clip=1e-3, compile=False)
    plain = TrainStep(twin, Amortized(twin.encoder), lr=1e-2, compile=False)
    for i in range(3):
        torch.manual_seed(100 + i)
        clipped(binary_batch(i))
        torch.manual_seed(100 + i)
        plain(binary_batch(i))
    assert any(not torch.equal(p, q) for p, q in zip(model.parameters(), twin.parameters(),
                                                      strict=True))


# --------------------------------------------------------------------------- noise per epoch


def test_training_noise_differs_between_epochs_and_validation_draws_do_not(tmp_path,
                                                                          monkeypatch):
    noise: list[torch.Tensor] = []
    original = step_mod._standard_normal

    def record(shape, like):
        eps = original(shape, like)
        noise.append(eps.clone())
        return eps

    val_states: list[torch.Tensor] = []
    elbo_terms = train_mod.elbo_terms

    def record_val(*args, **kwargs):          # only validate() calls it in the loop
        val_states.append(torch.get_rng_state())
        return elbo_terms(*args, **kwargs)

    monkeypatch.setattr(step_mod, "_standard_normal", record)
    monkeypatch.setattr(train_mod, "elbo_terms", record_val)
    x = binary_batch(0, n=40)
    config = {"model": {"hidden": [8], "latent_dim": 3},
              "train": {"epochs": 3, "batch_size": 32, "val_fraction": 0.2}}
    train_mod.train(config, tmp_path / "run", dataset=data.Dataset(x, None, None, "b"),
                    log=None, progress=False)
    assert len(noise) == 3 and len(val_states) == 3            # one binary_batch of 32 per epoch
    assert all(n.shape == (32, 3) for n in noise)
    assert not torch.equal(noise[0], noise[1]) and not torch.equal(noise[1], noise[2])
    assert not torch.equal(noise[0], noise[2])
    assert torch.equal(val_states[0], val_states[1]) and torch.equal(val_states[1],
                                                                     val_states[2])


# --------------------------------------------------------------------------- checkpoint swap


def _state(epoch: int) -> tuple[dict[str, torch.Tensor], dict]:
    return {"w": torch.full((3,), float(epoch))}, {"epoch": epoch}


@pytest.mark.parametrize("failing_call", [1, 2, 3, 4])
def test_a_failing_rename_inside_the_checkpoint_write_leaves_a_readable_checkpoint(
        tmp_path, monkeypatch, failing_call):
    """A write renames four times: the tensors' and the JSON's temp files (os.replace), then
    the folder swap checkpoint -> checkpoint.old, checkpoint.new -> checkpoint (os.rename).
    Whichever raises, a complete checkpoint of epoch 1 or 2 remains and the next write works."""
    runs.write_checkpoint(tmp_path, *_state(1))
    calls = []
    real = {"rename": os.rename, "replace": os.replace}

    def flaky(name):
        def call(src, dst, *args, **kwargs):
            calls.append(name)
            if len(calls) == failing_call:
                raise OSError(28, "No space left on device", str(dst))
            return real[name](src, dst, *args, **kwargs)
        return call

    monkeypatch.setattr(os, "rename", flaky("rename"))
    monkeypatch.setattr(os, "replace", flaky("replace"))
    with pytest.raises(OSError, match="No space left"):
        runs.write_checkpoint(tmp_path, *_state(2))
    monkeypatch.undo()
    assert calls[-1] == ("replace" if failing_call <= 2 else "rename")
    tensors, state = runs.read_checkpoint(tmp_path)
    assert state["epoch"] in (1, 2)
    assert torch.equal(tensors["w"], torch.full((3,), float(state["epoch"])))
    runs.write_checkpoint(tmp_path, *_state(3))            # and the next write recovers
    assert runs.read_checkpoint(tmp_path)[1]["epoch"] == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint"]


# --------------------------------------------------------------------------- pickles


class _Payload:
    """Unpickling this calls Path(target).touch(): proof that the pickle ran."""

    def __init__(self, target: Path) -> None:
        self.target = target

    def __reduce__(self):
        return (pathlib.Path.touch, (pathlib.Path(self.target),))


def test_npy_object_array_with_a_pickle_payload_is_refused_unexecuted(tmp_path, capsys):
    target = tmp_path / "pwned"
    array = np.empty(2, dtype=object)
    array[0], array[1] = _Payload(target), _Payload(target)
    path = tmp_path / "evil.npy"
    np.save(path, array, allow_pickle=True)
    assert not target.exists()
    np.load(path, allow_pickle=True)                  # the payload is live: it runs here
    assert target.exists()
    target.unlink()
    with pytest.raises((ValueError, TypeError)):
        data.load_dataset(str(path))
    assert not target.exists()
    capsys.readouterr()
    assert cli.main(["train", "--data", str(path), "--out", str(tmp_path / "run")]) == 1
    err = capsys.readouterr().err
    assert err.startswith("vaelab: error: ") and err.count("\n") == 1
    assert not target.exists() and not (tmp_path / "run").exists()
    np.savez(tmp_path / "evil.npz", x=array, allow_pickle=True)
    with pytest.raises((ValueError, TypeError)):
        data.load_dataset(str(tmp_path / "evil.npz"))
    assert not target.exists()


# --------------------------------------------------------------------------- KL weight


def test_kl_weight_between_zero_and_one_on_the_autograd_path_is_linear_in_the_weight():
    """The loss is mean(w·KL − E log p): its gradient at w = 0.3 must be 0.7·g(0) + 0.3·g(1)
    with the same noise and weights (float64, to rounding), and the reported ELBO the true
    one (w plays no part in it)."""
    torch.manual_seed(0)
    model = build_vae(ModelConfig(data_dim=12, latent_dim=3, hidden=(8,),
                                  prior="learned_normal")).to(F64)
    step = TrainStep(model, Amortized(model.encoder), lr=1e-2, compile=False)
    assert step._fast is None and step._grad is None             # the autograd path
    step.theta_opt.step = lambda *a, **k: None                    # keep the weights: read grads
    x = binary_batch(3, dtype=F64)
    grads, results = {}, {}
    for w in (0.0, 1.0, 0.3):
        torch.manual_seed(7)
        results[w] = step(x, None, kl_weight=w)
        grads[w] = [p.grad.clone() for p in model.parameters()]
    for g0, g1, gw in zip(grads[0.0], grads[1.0], grads[0.3], strict=True):
        torch.testing.assert_close(gw, 0.7 * g0 + 0.3 * g1, rtol=1e-12, atol=1e-14)
    assert any(not torch.allclose(g0, g1) for g0, g1 in zip(grads[0.0], grads[1.0],
                                                            strict=True))
    assert results[0.3] == results[1.0] == results[0.0]          # the true ELBO, rate, dist.
