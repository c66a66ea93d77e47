"""vaelab.model.nets: gated dense units compute (W1 x + b1) * sigmoid(W2 x + b2) exactly."""

from __future__ import annotations

import numpy as np
import torch

from vaelab.model import nets


def test_gated_linear_equals_its_formula_in_float64():
    torch.manual_seed(0)
    layer = nets.GatedLinear(4, 3).double()
    x = torch.randn(6, 4, dtype=torch.float64)
    w = layer.linear.weight.detach().numpy()
    b = layer.linear.bias.detach().numpy()
    w1, w2, b1, b2 = w[:3], w[3:], b[:3], b[3:]
    xn = x.numpy()
    expected = (xn @ w1.T + b1) * (1.0 / (1.0 + np.exp(-(xn @ w2.T + b2))))
    np.testing.assert_allclose(layer(x).detach().numpy(), expected, rtol=1e-12)


def test_gated_mlp_stacks_gated_layers_and_ends_linear():
    torch.manual_seed(1)
    net = nets.mlp(5, (7, 4), 2, gated=True).double()
    assert isinstance(net, nets.GatedMLP) and not isinstance(net, nets.MLP)
    x = torch.randn(3, 5, dtype=torch.float64)
    h = x
    for layer in list(net)[:-1]:
        lin = layer.linear
        a, g = (h @ lin.weight.T + lin.bias).chunk(2, dim=-1)
        h = a * torch.sigmoid(g)
    expected = h @ net[-1].weight.T + net[-1].bias
    torch.testing.assert_close(net(x), expected, rtol=1e-12, atol=1e-12)
    assert net(torch.randn(2, 3, 5, dtype=torch.float64)).shape == (2, 3, 2)


def test_plain_mlp_when_not_gated():
    net = nets.mlp(5, (7,), 2, activation="tanh")
    assert type(net) is nets.MLP and isinstance(net[1], torch.nn.Tanh)
