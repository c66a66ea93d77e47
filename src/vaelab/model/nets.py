"""Tensor → tensor building blocks; nothing probabilistic lives here.

The networks produce the raw parameters that ``likelihoods`` and ``families`` turn into
distributions: the lecture's μ_θ(z), σ_θ(z) for the decoder and the encoder's φ(x).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from vaelab import _checks

ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "tanh": nn.Tanh,
    "gelu": nn.GELU,
    "silu": nn.SiLU,
    "elu": nn.ELU,
    "softplus": nn.Softplus,
    "leaky_relu": nn.LeakyReLU,
}


class MLP(nn.Sequential):
    """Multi-layer perceptron ``in_features → hidden[0] → … → out_features``.

    Shapes: input [..., in_features] → output [..., out_features]. The last layer is linear
    (no activation): its outputs are raw distribution parameters.
    """

    def __init__(
        self,
        in_features: int,
        hidden: Sequence[int],
        out_features: int,
        activation: str = "relu",
    ) -> None:
        in_features = _checks.positive_int("in_features", in_features)
        out_features = _checks.positive_int("out_features", out_features)
        hidden = [_checks.positive_int("hidden", h) for h in hidden]
        act = ACTIVATIONS[_checks.one_of("activation", activation, tuple(ACTIVATIONS))]
        layers: list[nn.Module] = []
        sizes = [in_features, *hidden]
        for a, b in zip(sizes[:-1], sizes[1:], strict=True):
            layers += [nn.Linear(a, b), act()]
        layers.append(nn.Linear(sizes[-1], out_features))
        super().__init__(*layers)
        self.in_features = in_features
        self.out_features = out_features

    def forward(self, input: torch.Tensor) -> torch.Tensor:  # noqa: A002 - torch's name
        return super().forward(input)


def has_hooks(*modules: nn.Module) -> bool:
    """True when running ``modules`` by hand would skip a hook: a global module hook, a forward,
    pre-forward or backward hook on any of their submodules, or a tensor hook on a parameter.

    The plain-tensor fast paths (training step, importance weights) check this and fall back
    to the modules and autograd whenever it is True, so user hooks always run.
    """
    from torch.nn.modules import module as module_

    if (module_._global_forward_hooks or module_._global_forward_pre_hooks
            or module_._global_backward_hooks or module_._global_backward_pre_hooks):
        return True
    for root in modules:
        for m in root.modules():
            if (m._forward_hooks or m._forward_pre_hooks or m._backward_hooks
                    or m._backward_pre_hooks):
                return True
        for p in root.parameters():
            if p._backward_hooks or getattr(p, "_post_accumulate_grad_hooks", None):
                return True
    return False
