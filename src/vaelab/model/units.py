"""The layers the networks are made of: dense, gated and convolutional units, tensor → tensor.

Leaves of the model wing: nothing probabilistic and no other vaelab network lives here, so
``nets`` (which chooses and assembles these units into an encoder and a decoder) and the
hierarchies' own nets (``conv_hierarchy``, ``layered``) can all build on them without a cycle.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar

import torch
from torch import nn

from vaelab import _checks
from vaelab.model import weight_norm as wn

_M = TypeVar("_M", bound=nn.Module)

ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "tanh": nn.Tanh,
    "gelu": nn.GELU,
    "silu": nn.SiLU,
    "elu": nn.ELU,
    "softplus": nn.Softplus,
    "leaky_relu": nn.LeakyReLU,
}


def activation_class(name: str) -> type[nn.Module]:
    """The activation module class called ``name`` (a key of :data:`ACTIVATIONS`)."""
    return ACTIVATIONS[_checks.one_of("activation", name, tuple(ACTIVATIONS))]


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
        act = activation_class(activation)
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


class GatedLinear(nn.Module):
    """Gated dense unit h = (W₁x + b₁) ⊙ σ(W₂x + b₂) (Dauphin et al. 2017; the hidden layer of
    the VampPrior code lineage, Tomczak & Welling 2018).

    The sigmoid gate lets each unit switch itself off per input without a dead region: the
    product has gradient through both paths wherever the gate is open. Shapes: [..., in] →
    [..., out]. The two linear maps are held as one [2·out, in] layer (one matrix product).
    """

    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__()
        self.in_features = _checks.positive_int("in_features", in_features)
        self.out_features = _checks.positive_int("out_features", out_features)
        self.linear = nn.Linear(self.in_features, 2 * self.out_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, g = self.linear(x).chunk(2, dim=-1)
        return h * torch.sigmoid(g)


class GatedMLP(nn.Sequential):
    """``in_features → hidden[0] → … → out_features`` with :class:`GatedLinear` hidden layers
    (no other activation) and a linear last layer (raw distribution parameters).

    Shapes as :class:`MLP`. A class of its own (not an MLP option) so that code specialised
    to the plain MLP — the hand-derived training gradient — never mistakes it for one.
    """

    def __init__(self, in_features: int, hidden: Sequence[int], out_features: int) -> None:
        in_features = _checks.positive_int("in_features", in_features)
        out_features = _checks.positive_int("out_features", out_features)
        sizes = [in_features, *(_checks.positive_int("hidden", h) for h in hidden)]
        pairs = zip(sizes[:-1], sizes[1:], strict=True)
        layers: list[nn.Module] = [GatedLinear(a, b) for a, b in pairs]
        layers.append(nn.Linear(sizes[-1], out_features))
        super().__init__(*layers)
        self.in_features = in_features
        self.out_features = out_features


def mlp(in_features: int, hidden: Sequence[int], out_features: int, activation: str = "relu",
        gated: bool = False) -> nn.Module:
    """An :class:`MLP` (``activation`` after each hidden layer) or, with ``gated``, a
    :class:`GatedMLP` (``activation`` unused: the gate is the non-linearity)."""
    if gated:
        return GatedMLP(in_features, hidden, out_features)
    return MLP(in_features, hidden, out_features, activation)


def weight_normalise_mlps(model: _M) -> _M:
    """``model`` with the dense layers of every :class:`MLP` and :class:`GatedMLP` inside it
    weight-normalised (``vaelab.model.weight_norm``; in place, idempotent)."""
    for net in list(model.modules()):
        if isinstance(net, (MLP, GatedMLP)):
            wn.normalise(net)
    return model


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


# --------------------------------------------------------------------------- convolutional nets


def _halvings(size: tuple[int, int], times: int) -> list[tuple[int, int]]:
    """[(H, W), (⌈H/2⌉, ⌈W/2⌉), …]: the resolutions of ``times`` stride-2 steps (odd sizes ok)."""
    sizes = [size]
    for _ in range(times):
        h, w = sizes[-1]
        sizes.append(((h + 1) // 2, (w + 1) // 2))
    return sizes


class ResidualBlock(nn.Module):
    """x + conv3×3(act(conv3×3(act(x)))), channels and size kept (He et al. 2016, pre-act.)."""

    def __init__(self, channels: int, activation: str = "relu") -> None:
        super().__init__()
        act = activation_class(activation)
        self.body = nn.Sequential(act(), nn.Conv2d(channels, channels, 3, padding=1),
                                  act(), nn.Conv2d(channels, channels, 3, padding=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x)


def _image_shape(image_shape: Sequence[int] | None) -> tuple[int, int, int]:
    shape = tuple(image_shape) if image_shape is not None else ()
    if len(shape) != 3:
        raise ValueError(f"image_shape: expected (C, H, W) for a convolutional net (--net conv "
                         f"needs image data), got {image_shape!r}")
    c, h, w = (_checks.positive_int("image_shape", s) for s in shape)
    return c, h, w


class ConvEncoder(nn.Module):
    """x [..., C·H·W] → [..., out_features]: 3×3 stem, then per entry of ``channels`` a 3×3
    stride-2 convolution (H → ⌈H/2⌉) and a residual block, then a linear layer.

    Any C, H, W (odd sizes too): the flattened rows of an image dataset, (C, H, W) order.
    """

    def __init__(self, image_shape: Sequence[int] | None, channels: Sequence[int],
                 out_features: int, activation: str = "relu") -> None:
        super().__init__()
        self.image_shape = _image_shape(image_shape)
        channels = [_checks.positive_int("channels", c) for c in channels]
        act = activation_class(activation)
        c, h, w = self.image_shape
        layers: list[nn.Module] = [nn.Conv2d(c, channels[0], 3, padding=1)]
        for a, b in zip([channels[0], *channels[:-1]], channels, strict=True):
            layers += [act(), nn.Conv2d(a, b, 3, stride=2, padding=1), ResidualBlock(b, activation)]
        self.body = nn.Sequential(*layers, act(), nn.Flatten())
        last = _halvings((h, w), len(channels))[-1]
        self.head = nn.Linear(channels[-1] * last[0] * last[1], out_features)
        self.in_features = c * h * w
        self.out_features = _checks.positive_int("out_features", out_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lead = x.shape[:-1]
        out = self.head(self.body(x.reshape(-1, *self.image_shape)))
        return out.reshape(*lead, self.out_features)


class ConvDecoder(nn.Module):
    """z [..., L] → [..., P·C·H·W], the mirror of :class:`ConvEncoder`: a linear layer to the
    smallest resolution, then per stage a residual block, nearest-neighbour upsampling to the
    encoder's size at that stage (exact for odd sizes) and a 3×3 convolution, and a final 3×3
    convolution to P·C channels. Output laid out [P, C, H, W] flattened: ``params_per_dim`` P
    numbers per data dimension, parameter-major as ``vaelab.model.likelihoods`` reads them.
    """

    def __init__(self, latent_dim: int, image_shape: Sequence[int] | None, channels: Sequence[int],
                 params_per_dim: int = 1, activation: str = "relu") -> None:
        super().__init__()
        self.image_shape = _image_shape(image_shape)
        channels = [_checks.positive_int("channels", c) for c in channels]
        self.act = activation_class(activation)()
        c, h, w = self.image_shape
        self.sizes = _halvings((h, w), len(channels))
        self.start = (channels[-1], *self.sizes[-1])
        self.head = nn.Linear(_checks.positive_int("latent_dim", latent_dim),
                              channels[-1] * self.sizes[-1][0] * self.sizes[-1][1])
        outs = [channels[0], *channels[:-1]]
        self.blocks = nn.ModuleList(ResidualBlock(ch, activation) for ch in channels[::-1])
        self.convs = nn.ModuleList(nn.Conv2d(a, b, 3, padding=1)
                                   for a, b in zip(channels[::-1], outs[::-1], strict=True))
        self.out = nn.Conv2d(channels[0], params_per_dim * c, 3, padding=1)
        self.in_features = latent_dim
        self.out_features = params_per_dim * c * h * w

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        lead = z.shape[:-1]
        y = self.head(z.reshape(-1, z.shape[-1])).reshape(-1, *self.start)
        for i, (block, conv) in enumerate(zip(self.blocks, self.convs, strict=True)):
            size = self.sizes[len(self.sizes) - 2 - i]
            y = conv(self.act(nn.functional.interpolate(block(y), size=size, mode="nearest")))
        return self.out(self.act(y)).reshape(*lead, self.out_features)


# --------------------------------------------------------------------------- conditions


class ChannelCondition(nn.Module):
    """Packed rows [x | c] → ``net`` over the image with c as extra channels.

    x [..., C_img·H·W] is reshaped to (C_img, H, W); each of the C numbers of c becomes one
    constant H×W plane; ``net`` (built for (C_img + C, H, W)) reads the flattened stack.
    """

    def __init__(self, net: nn.Module, image_shape: Sequence[int], condition_dim: int) -> None:
        super().__init__()
        self.net = net
        self.image_shape = tuple(int(s) for s in image_shape)
        self.condition_dim = _checks.positive_int("condition_dim", condition_dim)
        c, h, w = self.image_shape
        self.in_features = c * h * w + self.condition_dim
        self.out_features = getattr(net, "out_features", None)

    def forward(self, xc: torch.Tensor) -> torch.Tensor:
        lead, (c, h, w) = xc.shape[:-1], self.image_shape
        x, cond = xc.reshape(-1, xc.shape[-1]).split([c * h * w, self.condition_dim], -1)
        planes = cond[:, :, None, None].expand(-1, -1, h, w)
        stacked = torch.cat([x.reshape(-1, c, h, w), planes], 1).flatten(1)
        out = self.net(stacked)
        return out.reshape(*lead, out.shape[-1])
