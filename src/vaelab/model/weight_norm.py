"""Weight normalisation with data-dependent initialisation (Salimans & Kingma 2016).

Each dense layer y = W x + b is re-parameterised as W = g · v / ‖v‖ (one g per output unit,
‖v‖ the norm of v's row), torch's ``torch.nn.utils.parametrizations.weight_norm``: the
length of every weight vector is decoupled from its direction, which conditions gradient
descent better (the paper's section 2). The optimizer trains g and v (saved as
``parametrizations.weight.original0`` and ``original1``) and b.

Data-dependent initialisation (the paper's section 2.2): on the first training batch, each
layer, in the order the forward pass reaches it, computes the pre-activations
t = v·x / ‖v‖ of its inputs x and sets

    g ← 1 / √(Var[t] + ε),   b ← −E[t] / √(Var[t] + ε)     (per unit, over the batch),

so that its pre-activations y = g t + b have mean 0 and standard deviation 1 on that batch
(the layers after it then see normalised inputs). ε = 1e-8 only keeps a constant unit finite.
Layers the pass never reaches keep torch's initial g = ‖v‖ (W unchanged).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize
from torch.nn.utils.parametrizations import weight_norm

#: Added to each unit's variance in the initialisation (a constant unit stays finite).
EPS = 1e-8


def normalise(net: nn.Module) -> nn.Module:
    """``net`` with every ``nn.Linear`` inside it weight-normalised (in place; a layer that is
    already parameterised is left as it is, so calling twice changes nothing)."""
    for layer in list(net.modules()):
        if isinstance(layer, nn.Linear) and not parametrize.is_parametrized(layer):
            weight_norm(layer, "weight", dim=0)
    return net


def is_weight_normalised(layer: nn.Module) -> bool:
    """True for a dense layer re-parameterised by :func:`normalise`."""
    return (isinstance(layer, nn.Linear) and parametrize.is_parametrized(layer, "weight")
            and hasattr(cast(Any, layer).parametrizations.weight, "original0"))


def direction_and_length(layer: nn.Linear) -> tuple[torch.Tensor, torch.Tensor]:
    """(v [out, in], g [out, 1]) of a weight-normalised layer: its trained parameters."""
    weight = cast(Any, layer).parametrizations.weight
    return weight.original1, weight.original0


def layers(*modules: nn.Module) -> list[nn.Linear]:
    """The weight-normalised dense layers of ``modules`` (each once)."""
    seen: dict[int, nn.Linear] = {}
    for module in modules:
        for layer in module.modules():
            if is_weight_normalised(layer):
                seen.setdefault(id(layer), cast(nn.Linear, layer))
    return list(seen.values())


@torch.no_grad()
def _initialise(layer: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    """Set ``layer``'s g and b from its inputs x [..., in] (module docstring) → its output."""
    v, g = direction_and_length(layer)
    t = F.linear(x.reshape(-1, x.shape[-1]), v / v.norm(dim=1, keepdim=True))
    mean, var = t.mean(0), t.var(0, unbiased=False)
    scale = torch.rsqrt(var + EPS)
    g.copy_(scale.reshape(-1, 1))
    if layer.bias is None:
        raise ValueError("weight_norm: data-dependent initialisation sets each unit's bias; "
                         "expected dense layers with a bias, got one without")
    layer.bias.copy_(-mean * scale)
    return F.linear(x, layer.weight, layer.bias)


@contextmanager
def initialising(*modules: nn.Module) -> Iterator[list[nn.Linear]]:
    """Inside: each weight-normalised layer of ``modules`` sets its g and b from the first
    input it receives (:func:`_initialise`) and passes the normalised output on; a forward
    pass of the model on a batch initialises every layer it reaches, in order. Yields the
    layers; those never reached are left unchanged. The hooks are gone on exit."""
    handles: dict[int, torch.utils.hooks.RemovableHandle] = {}

    def hook(layer: nn.Module, inputs: tuple, output: torch.Tensor) -> torch.Tensor:
        handles.pop(id(layer)).remove()                # the first input only
        return _initialise(cast(nn.Linear, layer), inputs[0])

    found = layers(*modules)
    for layer in found:
        handles[id(layer)] = layer.register_forward_hook(hook)
    try:
        yield found
    finally:
        for handle in handles.values():
            handle.remove()
