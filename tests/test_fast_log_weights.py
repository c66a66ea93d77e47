"""The plain-tensor log-weights of the standard VAE (``vaelab.model._bernoulli_fast``).

Oracles: the generic torch.distributions path with the same seed (the same draws, the same
numbers and gradients), exact log p(x) by quadrature for a one-dimensional latent, and a
compensated (``math.fsum``) sum of softplus for the softplus-sum identity.
"""

from __future__ import annotations

import contextlib
import math

import pytest
import torch
from torch import nn
from torch.distributions import Independent, Normal

import vaelab
from vaelab.config import ModelConfig
from vaelab.infer import objectives
from vaelab.model import _bernoulli_fast, likelihoods, priors
from vaelab.model import vae as models

F64 = torch.float64


def build(data_dim: int = 12, latent_dim: int = 3, hidden: tuple[int, ...] = (16,),
          activation: str = "relu", dtype: torch.dtype = F64, seed: int = 3,
          **config) -> models.VAE:
    """A standard VAE whose decoder weights are tripled, so the logits reach ±10 and beyond."""
    torch.manual_seed(seed)
    model = models.build_vae(ModelConfig(data_dim=data_dim, latent_dim=latent_dim,
                                         hidden=hidden, activation=activation, **config))
    with torch.no_grad():
        for p in model.decoder.parameters():
            p.mul_(3.0)
    return model.to(dtype)


def grey(batch: int, data_dim: int, dtype: torch.dtype = F64, seed: int = 4) -> torch.Tensor:
    return torch.rand(batch, data_dim, dtype=dtype, generator=torch.Generator().manual_seed(seed))


def binary(batch: int, data_dim: int, dtype: torch.dtype = F64, seed: int = 4) -> torch.Tensor:
    return torch.bernoulli(grey(batch, data_dim, dtype, seed))


@pytest.fixture
def fast_calls(monkeypatch) -> list[int]:
    """Record num_samples of every call to the fast path (empty: the generic path ran)."""
    calls: list[int] = []
    original = _bernoulli_fast.log_weights

    def spy(model, q, x, num_samples):
        calls.append(num_samples)
        return original(model, q, x, num_samples)

    monkeypatch.setattr(_bernoulli_fast, "log_weights", spy)
    return calls


@contextlib.contextmanager
def generic_path():
    """Send every model down the generic torch.distributions path inside the block."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(_bernoulli_fast, "applies", lambda *args: False)
        yield


def same_seed(fn, seed: int = 11):
    torch.manual_seed(seed)
    return fn()


# ------------------------------------------------------------------------------- dispatch


def test_standard_vae_takes_the_fast_path_everywhere(fast_calls):
    model, x = build(), binary(4, 12)
    q = model.encode(x)
    assert objectives.log_weights(model, q, x, 5).shape == (5, 4)
    assert vaelab.iwae_bound(model, q, x, 6).shape == (4,)
    vaelab.log_likelihood(model, q, x, num_samples=10, chunk_size=4)
    assert fast_calls == [5, 6, 4, 4, 2]


def _not_mlp_decoder() -> models.VAE:
    net = nn.Sequential(nn.Linear(3, 16), nn.ReLU(), nn.Linear(16, 12))
    decoder = models.Decoder(net, likelihoods.Bernoulli(), data_dim=12)
    return models.VAE(priors.StandardNormal(3), decoder).double()


def _decode_overridden() -> models.VAE:
    model = build()
    model.decode = lambda z: models.VAE.decode(model, z)
    return model


@pytest.mark.parametrize("make", [
    lambda: build(likelihood="gaussian"),
    lambda: build(prior="learned_normal"),
    lambda: build(family="full_covariance_normal"),
    _not_mlp_decoder,
    _decode_overridden,
], ids=["gaussian_likelihood", "learned_prior", "full_covariance_q", "non_mlp_net",
        "decode_overridden"])
def test_other_models_take_the_generic_path(make, fast_calls):
    model = make()
    x = binary(4, 12)
    q = Independent(Normal(torch.zeros(4, 3, dtype=F64), torch.ones(4, 3, dtype=F64)), 1)
    if model.encoder is not None:
        q = model.encode(x)
    assert objectives.log_weights(model, q, x, 5).shape == (5, 4)
    vaelab.log_likelihood(model, q, x, num_samples=10, chunk_size=4)
    assert fast_calls == []


def test_a_q_of_another_dtype_takes_the_generic_path(fast_calls):
    model, x = build(), binary(4, 12)
    q = Independent(Normal(torch.zeros(4, 3), torch.ones(4, 3)), 1)     # float32 q
    assert not _bernoulli_fast.applies(model, q, x)
    assert _bernoulli_fast.applies(model, model.encode(x), x)


def test_a_hooked_decoder_takes_the_generic_path_and_its_hook_runs(fast_calls):
    model, x = build(), binary(4, 12)
    seen: list[tuple[int, ...]] = []
    model.decoder.net[-1].register_forward_hook(lambda m, i, out: seen.append(tuple(out.shape)))
    objectives.log_weights(model, model.encode(x), x, 5)
    assert fast_calls == [] and seen == [(5, 4, 12)]


# ------------------------------------------------------------------- the same numbers


def test_the_same_seed_gives_the_same_z(monkeypatch):
    model, x = build(), grey(5, 12)
    q = model.encode(x)
    seen = []
    original = _bernoulli_fast._log_likelihood
    monkeypatch.setattr(_bernoulli_fast, "_log_likelihood",
                        lambda net, x, z: seen.append(z) or original(net, x, z))
    same_seed(lambda: objectives.log_weights(model, q, x, 7))
    z = same_seed(lambda: q.rsample((7,)))
    assert torch.equal(seen[0], z)


ARCHITECTURES = [((), "relu"), ((16,), "relu"), ((16,), "tanh"), ((20, 9), "relu"),
                 ((20, 9), "tanh"), ((8,), "gelu"), ((8,), "softplus")]


@pytest.mark.parametrize("hidden, activation", ARCHITECTURES)
@pytest.mark.parametrize("batch, k, row_block", [(5, 7, 16), (40, 3, 16), (3, 700, None)])
@pytest.mark.parametrize("data", [binary, grey])
def test_float64_log_weights_equal_the_generic_path(hidden, activation, batch, k, row_block,
                                                    data, fast_calls, monkeypatch):
    if row_block is not None:          # small blocks: k·B and B not multiples of the block
        monkeypatch.setattr(_bernoulli_fast, "ROW_BLOCK", row_block)
    model, x = build(hidden=hidden, activation=activation), data(batch, 12)
    q = model.encode(x)
    fast = same_seed(lambda: objectives.log_weights(model, q, x, k))
    with generic_path():
        slow = same_seed(lambda: objectives.log_weights(model, q, x, k))
    assert fast_calls == [k]
    assert fast.shape == slow.shape == (k, batch)
    assert slow.std() > 1.0                                  # the weights are not all alike
    torch.testing.assert_close(fast, slow, rtol=0, atol=1e-10)


@pytest.mark.parametrize("hidden, activation", [((16,), "relu"), ((20, 9), "tanh")])
@pytest.mark.parametrize("data", [binary, grey])
def test_float32_log_weights_equal_the_generic_path(hidden, activation, data,
                                                    monkeypatch):
    monkeypatch.setattr(_bernoulli_fast, "ROW_BLOCK", 64)
    model = build(data_dim=200, latent_dim=4, hidden=hidden, activation=activation,
                  dtype=torch.float32)
    x = data(9, 200, torch.float32)
    q = model.encode(x)
    fast = same_seed(lambda: objectives.log_weights(model, q, x, 50))
    with generic_path():
        slow = same_seed(lambda: objectives.log_weights(model, q, x, 50))
    torch.testing.assert_close(fast, slow, rtol=1e-4, atol=1e-4)


def test_log_likelihood_estimate_equals_the_generic_path(fast_calls):
    model, x = build(hidden=(20, 9)), binary(6, 12)
    q = model.encode(x)
    fast = same_seed(lambda: vaelab.log_likelihood(model, q, x, num_samples=100, chunk_size=30))
    with generic_path():
        slow = same_seed(lambda: vaelab.log_likelihood(model, q, x, num_samples=100,
                                                       chunk_size=30))
    assert fast_calls == [30, 30, 30, 10]
    for a, b in [(fast.log_likelihood, slow.log_likelihood), (fast.ess, slow.ess),
                 (fast.stderr, slow.stderr)]:
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


def test_inference_mode_gives_the_same_numbers(fast_calls):
    model, x = build(), grey(4, 12)
    with torch.inference_mode():
        q = model.encode(x)
        fast = same_seed(lambda: objectives.log_weights(model, q, x, 9))
        with generic_path():
            slow = same_seed(lambda: objectives.log_weights(model, q, x, 9))
    assert fast_calls == [9] and fast.is_inference()
    torch.testing.assert_close(fast, slow, rtol=0, atol=1e-10)


def test_decoder_blocks_stay_within_the_row_block(monkeypatch):
    monkeypatch.setattr(_bernoulli_fast, "ROW_BLOCK", 32)
    model, x = build(hidden=(16,)), binary(7, 12)
    rows: list[int] = []
    original = _bernoulli_fast.half_centred_softplus_sum
    monkeypatch.setattr(_bernoulli_fast, "half_centred_softplus_sum",
                        lambda logits: rows.append(logits.shape[0]) or original(logits))
    with torch.no_grad():
        objectives.log_weights(model, model.encode(x), x, 50)
    assert max(rows) <= 32 and sum(rows) == 50 * 7


# ----------------------------------------------------------------------------- gradients


@pytest.mark.parametrize("hidden, activation", [((16,), "relu"), ((20, 9), "tanh")])
def test_iwae_gradients_equal_the_generic_path(hidden, activation, fast_calls):
    model, x = build(hidden=hidden, activation=activation), grey(5, 12)

    def gradients() -> list[torch.Tensor]:
        model.zero_grad()
        torch.manual_seed(12)
        vaelab.iwae_bound(model, model.encode(x), x, 8).sum().backward()
        return [p.grad.clone() for p in model.parameters()]

    fast = gradients()
    with generic_path():
        slow = gradients()
    assert fast_calls == [8]
    assert all(g.abs().max() > 1e-3 for g in slow)          # every parameter gets a gradient
    for a, b in zip(fast, slow, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-10)


# ----------------------------------------------------------------- exact log p(x) oracle


def quadrature_log_marginal(model: models.VAE, x: torch.Tensor, points: int = 20001):
    """log p(x) = log ∫ N(z; 0, 1) p(x | z) dz on a grid over [−10, 10]; also the posterior
    mean and standard deviation per data point. x [B, D] → three tensors [B]."""
    z = torch.linspace(-10.0, 10.0, points, dtype=F64)
    with torch.no_grad():
        log_joint = (model.decode(z.view(-1, 1, 1)).log_prob(x)
                     + Normal(0.0, 1.0).log_prob(z).view(-1, 1))                  # [G, B]
    log_p = log_joint.logsumexp(0) + math.log(z[1] - z[0])
    post = (log_joint - log_p).exp() * (z[1] - z[0])
    mean = (post * z.view(-1, 1)).sum(0)
    sd = (post * (z.view(-1, 1) - mean).square()).sum(0).sqrt()
    return log_p, mean, sd


def test_log_likelihood_matches_quadrature_for_a_one_dimensional_latent(fast_calls):
    model = build(data_dim=15, latent_dim=1, hidden=(10,), activation="tanh", seed=5)
    x = binary(4, 15, seed=6)
    exact, mean, sd = quadrature_log_marginal(model, x)
    q = Independent(Normal(mean.view(-1, 1), 1.2 * sd.view(-1, 1)), 1)
    torch.manual_seed(7)
    est = vaelab.log_likelihood(model, q, x, num_samples=100_000, chunk_size=25_000)
    assert fast_calls == [25_000] * 4
    assert bool((est.stderr > 1e-4).all()) and bool((est.stderr < 2e-3).all())
    error = (est.log_likelihood - exact).abs()
    assert bool((error < 4 * est.stderr).all()), (error, est.stderr)
    assert bool((error < 5e-3).all())
    one_sample = vaelab.log_likelihood(model, q, x, num_samples=1).log_likelihood
    assert bool(((one_sample - exact).abs() > 1e-3).any())   # a one-sample guess is not exact


# ---------------------------------------------------------------------- softplus identity


def fsum_softplus(logits: torch.Tensor) -> torch.Tensor:
    """Σ_d softplus(l_d) per row, each term to a few ulp in float64, summed exactly."""
    def softplus(v: float) -> float:
        return max(v, 0.0) + math.log1p(math.exp(-abs(v)))

    return torch.tensor([math.fsum(softplus(v) for v in row) for row in logits.double().tolist()],
                        dtype=F64)


def extreme_logits(size: int, dtype: torch.dtype) -> torch.Tensor:
    """Rows of ±100, ±1e4, 0, alternating ±1e4, and spread random logits; [8, size]."""
    g = torch.Generator().manual_seed(size)
    rows = [torch.full((size,), v, dtype=F64) for v in (100.0, -100.0, 1e4, -1e4, 0.0)]
    alternating = torch.full((size,), 1e4, dtype=F64)
    alternating[1::2] = -1e4
    rows += [alternating, 10 * torch.randn(size, generator=g, dtype=F64),
             torch.randn(size, generator=g, dtype=F64)]
    return torch.stack(rows).to(dtype)


@pytest.mark.parametrize("dtype", [torch.float32, F64])
@pytest.mark.parametrize("size", [1, 7, 64, 65, 784, 1001])
def test_half_centred_softplus_sum_is_exact_to_rounding(dtype, size):
    logits = extreme_logits(size, dtype)
    exact = fsum_softplus(logits) - torch.tensor(
        [math.fsum(row) / 2 for row in logits.double().tolist()], dtype=F64)
    u = torch.finfo(dtype).eps / 2
    tolerance = {"rtol": 8 * u * math.ceil(math.log2(size) + 1), "atol": 4 * size * u}
    fast = _bernoulli_fast.half_centred_softplus_sum(logits.clone())
    assert fast.dtype == dtype and bool(fast.isfinite().all())
    torch.testing.assert_close(fast.double(), exact, **tolerance)
    graph = logits.clone().requires_grad_()
    recorded = _bernoulli_fast.half_centred_softplus_sum(graph)
    torch.testing.assert_close(recorded.detach().double(), exact, **tolerance)
    recorded.sum().backward()                          # d/dl log(2 cosh(l/2)) = tanh(l/2)/2
    torch.testing.assert_close(graph.grad.double(), torch.tanh(logits.double() / 2) / 2,
                               rtol=0, atol=4 * u)


def test_group_size_cannot_overflow():
    for dtype in (torch.float16, torch.bfloat16, torch.float32, F64):
        for size in (1, 63, 64, 65, 784, 5000):
            group = _bernoulli_fast._group_size(size, dtype)
            assert 1 <= group <= size and 2.0**group < torch.finfo(dtype).max
    assert _bernoulli_fast._group_size(784, torch.float32) <= 64



def test_blocks_are_cache_sized_on_the_cpu_and_launch_sized_elsewhere():
    assert _bernoulli_fast.row_block(torch.device("cpu")) == _bernoulli_fast.ROW_BLOCK == 1024
    assert _bernoulli_fast.row_block(torch.device("cuda")) == 1 << 16


@pytest.mark.device
def test_log_weights_on_the_device_equal_the_generic_path(device, fast_calls):
    """On the device under test (its own block size), the fast path's log-weights equal
    torch.distributions' with the same seed, in float64."""
    model, x = build().to(device), binary(40, 12).to(device)
    q = model.encode(x)
    fast = same_seed(lambda: objectives.log_weights(model, q, x, 300))
    with generic_path():
        slow = same_seed(lambda: objectives.log_weights(model, q, x, 300))
    assert fast_calls == [300] and fast.device.type == device.type
    torch.testing.assert_close(fast, slow, rtol=0, atol=1e-9)
