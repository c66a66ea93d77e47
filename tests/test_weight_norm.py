"""vaelab.model.weight_norm: w = g·v/‖v‖ in every dense layer of the MLP and gated MLP, and
the data-dependent initialisation gives each layer's pre-activations mean 0 and standard
deviation 1 on the batch it saw (checked in numpy float64, layer after layer)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from vaelab.config import ModelConfig
from vaelab.infer.objectives import elbo_terms
from vaelab.model import nets, weight_norm
from vaelab.model.vae import build_vae

pytestmark = pytest.mark.usefixtures("one_thread")


def _gvb(layer: nn.Linear) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    p = layer.parametrizations.weight
    return (p.original0.detach().double().numpy(), p.original1.detach().double().numpy(),
            layer.bias.detach().double().numpy())


def weight_of(layer: nn.Linear) -> np.ndarray:
    """w = g v / ‖v‖ (rows), float64."""
    g, v, _ = _gvb(layer)
    return g * v / np.linalg.norm(v, axis=1, keepdims=True)


def pre_activations(layer: nn.Linear, x: np.ndarray) -> np.ndarray:
    return x @ weight_of(layer).T + _gvb(layer)[2]


def test_normalise_reparameterises_every_dense_layer_without_changing_the_function():
    torch.manual_seed(0)
    for net in (nets.MLP(5, [7, 6], 3), nets.GatedMLP(5, [7], 3)):
        x = torch.randn(4, 5)
        before = net(x)
        weight_norm.normalise(net)
        dense = [m for m in net.modules() if isinstance(m, nn.Linear)]
        assert dense and weight_norm.layers(net) == dense        # all of them, once
        torch.testing.assert_close(net(x), before, rtol=1e-6, atol=1e-6)
        names = {n for n, _ in net.named_parameters()}
        assert any(n.endswith("parametrizations.weight.original0") for n in names)
        assert not any(n.endswith(".weight") for n in names)     # g and v are trained, not w
        weight_norm.normalise(net)                               # idempotent
        assert weight_norm.layers(net) == dense
        for layer in dense:
            np.testing.assert_allclose(layer.weight.detach().double().numpy(),
                                       weight_of(layer), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("gated", [False, True])
def test_data_dependent_init_standardises_each_layer_on_the_first_batch(gated):
    torch.manual_seed(0)
    model = build_vae(ModelConfig(data_dim=12, latent_dim=3, hidden=(9, 7), gated=gated,
                                  weight_norm=True))
    x = torch.bernoulli(torch.full((64, 12), 0.3))
    with torch.no_grad(), weight_norm.initialising(model) as found:
        elbo_terms(model, model.encoder(x), x)
    assert len(found) == 6                               # encoder 3, decoder 3 dense layers
    enc = [m for m in model.encoder.net.modules() if weight_norm.is_weight_normalised(m)]
    h = x.double().numpy()
    for i, layer in enumerate(enc):
        a = pre_activations(layer, h)                        # [64, units], float64
        np.testing.assert_allclose(a.mean(0), 0.0, atol=1e-5)
        np.testing.assert_allclose(a.std(0), 1.0, atol=1e-4)
        # the weights stay w = g v / ‖v‖, now with g = 1 / std of v·x/‖v‖
        np.testing.assert_allclose(layer.weight.detach().double().numpy(), weight_of(layer),
                                   rtol=1e-6, atol=1e-7)
        if i + 1 < len(enc):                                 # the next layer's inputs
            if gated:
                u, g = np.split(a, 2, axis=1)
                h = u / (1 + np.exp(-g))
            else:
                h = np.maximum(a, 0)
    # the hooks are gone: a second pass changes nothing
    state = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        elbo_terms(model, model.encoder(x[:5]), x[:5])
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())


def test_layers_the_pass_never_reaches_keep_their_weights():
    torch.manual_seed(0)
    used, unused = weight_norm.normalise(nn.Linear(3, 2)), weight_norm.normalise(nn.Linear(3, 2))
    before = unused.weight.detach().clone()
    with torch.no_grad(), weight_norm.initialising(used, unused):
        used(torch.randn(10, 3))
    assert torch.equal(unused.weight.detach(), before)
    np.testing.assert_allclose(pre_activations(used, np.zeros((1, 3))).ravel(),
                               _gvb(used)[2], rtol=0)


def test_hierarchies_weight_normalise_every_mlp():
    model = build_vae(ModelConfig(data_dim=10, latent_dim=(3, 2), hidden=(8,), weight_norm=True,
                                  hierarchy="top-down"))
    mlps = [m for m in model.modules() if isinstance(m, (nets.MLP, nets.GatedMLP))]
    assert mlps and all(weight_norm.layers(m) == [x for x in m.modules()
                                                  if isinstance(x, nn.Linear)] for m in mlps)
    off = build_vae(ModelConfig(data_dim=10, latent_dim=(3, 2), hidden=(8,)))
    assert not weight_norm.layers(off)
