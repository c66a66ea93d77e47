"""vaelab.fit.ema: the moving average equals its closed form on a known trace, survives a
checkpoint bit for bit, and is what training validates and saves."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vaelab.fit.ema import WeightAverage, ema_factor


def closed_form(trace: list[np.ndarray], decay: float) -> np.ndarray:
    """a_0 = w_0; a_t = d_t a_{t-1} + (1 - d_t) w_t, d_t = min(decay, (1+t)/(10+t)), float64."""
    avg = trace[0].astype(np.float64)
    for t, w in enumerate(trace[1:], start=1):
        d = min(decay, (1.0 + t) / (10.0 + t))
        avg = d * avg + (1.0 - d) * w
    return avg


def test_ema_factor_warms_up_then_holds_the_decay():
    assert ema_factor(0.999, 1) == pytest.approx(2 / 11)
    assert ema_factor(0.999, 90) == pytest.approx(91 / 100)
    assert ema_factor(0.9, 1000) == 0.9


@pytest.mark.parametrize("decay", [0.5, 0.9, 0.999])
def test_average_of_an_sgd_trace_equals_the_closed_form(decay):
    torch.manual_seed(0)
    w = torch.nn.Parameter(torch.randn(5, dtype=torch.float64))
    opt = torch.optim.SGD([w], lr=0.1)
    live = {"w": w.detach()}
    ema = WeightAverage(live, decay)
    trace = [w.detach().numpy().copy()]
    for _ in range(40):
        opt.zero_grad()
        ((w - 3.0) ** 2).sum().backward()
        opt.step()
        ema.update()
        trace.append(w.detach().numpy().copy())
    np.testing.assert_allclose(ema.average["w"].numpy(), closed_form(trace, decay), rtol=1e-12)
    assert not np.allclose(ema.average["w"].numpy(), trace[-1])   # it is not the last weights


def test_integer_tensors_are_copied_not_averaged():
    count = torch.zeros((), dtype=torch.int64)
    ema = WeightAverage({"n": count}, 0.9)
    count += 7
    ema.update()
    assert int(ema.average["n"]) == 7


def test_state_round_trip_and_refusals():
    w = torch.zeros(3)
    ema = WeightAverage({"w": w}, 0.9)
    w += 1
    ema.update()
    other = WeightAverage({"w": torch.zeros(3)}, 0.9)
    other.load_state(*ema.state())
    assert other.updates == 1 and torch.equal(other.average["w"], ema.average["w"])
    with pytest.raises(ValueError, match="ema"):
        other.load_state({"v": torch.zeros(3)}, 1)
    with pytest.raises(ValueError, match="shape"):
        other.load_state({"w": torch.zeros(4)}, 1)
    with pytest.raises(ValueError, match="ema_decay"):
        WeightAverage({"w": w}, 1.0)
