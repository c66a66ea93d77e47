"""Tensor → tensor building blocks; nothing probabilistic lives here.

The networks produce the raw parameters that ``likelihoods`` and ``families`` turn into
distributions: the lecture's μ_θ(z), σ_θ(z) for the decoder and the encoder's φ(x).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar, TypeVar

import torch
from torch import nn

from vaelab import _checks, _trust, catalogue
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


@dataclass(frozen=True)
class MLPNets:
    """The "mlp" networks: encoder x [D] → ``hidden`` → q's raw parameters, decoder z [L] →
    reversed ``hidden`` → p(x | z)'s raw parameters (:func:`mlp`: ``gated`` units or
    ``activation`` after every hidden layer)."""

    hidden: tuple[int, ...] = (512, 256)
    activation: str = "relu"
    gated: bool = False
    #: Every dense layer weight-normalised (``vaelab.model.weight_norm``).
    weight_norm: bool = False

    @classmethod
    def from_options(cls, *, hidden: tuple[int, ...] = (512, 256), activation: str = "relu",
                     gated: bool = False, weight_norm: bool = False) -> MLPNets:
        return cls(tuple(hidden), activation, gated, weight_norm)

    def pair(self, data_dim: int, latent_dim: int, family_params: int, params_per_dim: int,
             image_shape: Sequence[int] | None = None) -> tuple[nn.Module, nn.Module]:
        """(encoder net, decoder net) for x [D], z [L], q's and the likelihood's sizes."""
        decoder = mlp(latent_dim, tuple(reversed(self.hidden)), data_dim * params_per_dim,
                      self.activation, self.gated)
        return (self.encoder(data_dim, family_params, image_shape),
                wn.normalise(decoder) if self.weight_norm else decoder)

    def conditional_encoder(self, data_dim: int, condition_dim: int, out_features: int,
                            image_shape: Sequence[int] | None = None) -> nn.Module:
        """q(z | x, c)'s net on packed rows [x | c] [..., D + C]: an MLP reading both."""
        return self.encoder(data_dim + condition_dim, out_features, image_shape)

    def encoder(self, in_features: int, out_features: int,
                image_shape: Sequence[int] | None = None) -> nn.Module:
        """The encoder net alone: [..., in_features] → [..., out_features]."""
        net = mlp(in_features, self.hidden, out_features, self.activation, self.gated)
        return wn.normalise(net) if self.weight_norm else net

    # ---- the parts of a hierarchy (vaelab.model.hierarchical asks these)

    #: The inference structures of a hierarchy these nets build.
    hierarchies: ClassVar[tuple[str, ...]] = ("bottom-up", "ladder", "top-down")

    @property
    def latent_width(self) -> int:
        """Width of the two hidden layers of every net between latent layers
        (p(z_i | z_{i+1}), bottom-up q(z_{i+1} | z_i)): hidden[-1]."""
        return self.hidden[-1]

    def top_down_encoder(self, data_dim: int, sizes: Sequence[int],
                         image_shape: Sequence[int] | None = None
                         ) -> tuple[nn.Module, list[nn.Module]]:
        """(top, lower) of ``vaelab.model.top_down.TopDownEncoder``: x [.., D] → [.., 2 L_n]
        and, per layer below the top, [x, z_{i+1}] [.., D + L_{i+1}] → [.., 2 L_i]."""
        top = mlp(data_dim, self.hidden, 2 * sizes[-1], self.activation, self.gated)
        lower = [mlp(data_dim + above, self.hidden, 2 * below, self.activation, self.gated)
                 for below, above in zip(sizes[:-1], sizes[1:], strict=True)]
        return top, lower

    def skip_decoder(self, sizes: Sequence[int], data_dim: int, params_per_dim: int,
                     image_shape: Sequence[int] | None = None) -> nn.Module:
        """z [..., Σ L_i] (every layer) → reversed(hidden) → [..., D·P]."""
        return mlp(sum(sizes), tuple(reversed(self.hidden)), data_dim * params_per_dim,
                   self.activation, self.gated)


@dataclass(frozen=True)
class ConvNets:
    """The "conv" networks over the images' (C, H, W) with ``channels`` per stage.

    One latent layer: :class:`ConvEncoder` and :class:`ConvDecoder` (residual nets of
    ``activation`` units). A top-down hierarchy: the convolutional two-layer HVAE of the
    VampPrior code lineage (``vaelab.model.conv_hierarchy``), with ``gated`` units or
    ``activation`` ones and dense units of ``width``.
    """

    channels: tuple[int, ...] = (32, 64)
    activation: str = "relu"
    gated: bool = False
    width: int = 300

    @classmethod
    def from_options(cls, *, channels: tuple[int, ...] = (32, 64), activation: str = "relu",
                     gated: bool = False, width: int = 300) -> ConvNets:
        return cls(tuple(channels), activation, gated, width)

    def pair(self, data_dim: int, latent_dim: int, family_params: int, params_per_dim: int,
             image_shape: Sequence[int] | None = None) -> tuple[nn.Module, nn.Module]:
        if self.gated:
            raise ValueError("gated (--gated): --net conv has gated units in a top-down "
                             "hierarchy only (--hierarchy top-down with two or more "
                             "--latent-dim sizes); the one-layer conv nets are residual nets "
                             f"of --activation units; expected gated off with latent_dim "
                             f"{latent_dim}, got on")
        return (self.encoder(data_dim, family_params, image_shape),
                ConvDecoder(latent_dim, image_shape, self.channels, params_per_dim,
                            self.activation))

    def conditional_encoder(self, data_dim: int, condition_dim: int, out_features: int,
                            image_shape: Sequence[int] | None = None) -> nn.Module:
        """q(z | x, c)'s net on packed rows [x | c]: the conv encoder over the image with c
        broadcast as ``condition_dim`` extra constant channels (every filter sees c)."""
        from vaelab.model.conditional import ChannelCondition

        c, h, w = _image_shape(image_shape)
        net = self.encoder(data_dim, out_features, (c + condition_dim, h, w))
        return ChannelCondition(net, (c, h, w), condition_dim)

    def encoder(self, in_features: int, out_features: int,
                image_shape: Sequence[int] | None = None) -> nn.Module:
        """The encoder net alone over images of ``image_shape`` (C, H, W)."""
        return ConvEncoder(image_shape, self.channels, out_features, self.activation)

    # ---- the parts of a hierarchy (vaelab.model.hierarchical asks these)

    #: The inference structures of a hierarchy these nets build: top-down only (its top q
    #: reads x alone and every lower q reads x, so each has its own convolutional stack).
    hierarchies: ClassVar[tuple[str, ...]] = ("top-down",)

    @property
    def latent_width(self) -> int:
        """Width of the two hidden layers of each p(z_i | z_{i+1})."""
        return self.width

    def top_down_encoder(self, data_dim: int, sizes: Sequence[int],
                         image_shape: Sequence[int] | None = None
                         ) -> tuple[nn.Module, list[nn.Module]]:
        """(top, lower) of ``vaelab.model.top_down.TopDownEncoder``: a
        ``conv_hierarchy.ConvTopNet`` and one ``ConvLowerNet`` per layer below the top."""
        from vaelab.model.conv_hierarchy import ConvLowerNet, ConvTopNet

        top = ConvTopNet(image_shape, self.channels, 2 * sizes[-1], self.gated, self.activation)
        lower: list[nn.Module] = [
            ConvLowerNet(image_shape, self.channels, above, 2 * below, self.width, self.gated,
                         self.activation)
            for below, above in zip(sizes[:-1], sizes[1:], strict=True)]
        return top, lower

    def skip_decoder(self, sizes: Sequence[int], data_dim: int, params_per_dim: int,
                     image_shape: Sequence[int] | None = None) -> nn.Module:
        """``conv_hierarchy.ConvSkipNet`` with channels[-1] maps: z [..., Σ L_i] →
        [..., P·C·H·W]."""
        from vaelab.model.conv_hierarchy import ConvSkipNet

        return ConvSkipNet(sizes, image_shape, params_per_dim, self.width, self.channels[-1],
                           self.gated, self.activation)


@dataclass(frozen=True)
class FactoryNets:
    """The user's own networks (``net = "factory"``): ``factory`` names a function
    (``"mypkg.nets:make_nets"``) that vaelab calls, with the JSON ``args`` as more keywords, as

        factory(data_dim=D, latent_dim=L, image_shape=(C, H, W) or None,
                encoder_out=P, decoder_out=D·k, **args) → (encoder net, decoder net)

    The encoder net maps x [B, D] to q's P raw parameters [B, P] (the family's
    ``param_size``); the decoder net maps z [..., L] to the likelihood's raw parameters
    [..., D·k] (k per data value, laid out as the chosen likelihood reads them: k = 1 for
    Bernoulli and for a Gaussian with a learned or fixed scale). Everything else — q's family,
    the prior, the likelihood, the objective, the trainer — is vaelab's, chosen as for any
    run. The run stores the path and the arguments, never the networks pickled; importing the
    path needs the caller's consent (``vaelab._trust``).
    """

    factory: str
    args: dict

    @classmethod
    def from_options(cls, *, factory: str | None = None, args: dict | None = None
                     ) -> FactoryNets:
        if factory is None:
            raise ValueError("net_options.factory: net 'factory' needs the import path of "
                             "your network factory, such as 'mypkg.nets:make_nets', got none")
        if args is not None and not isinstance(args, dict):
            raise TypeError(f"net_options.args: expected a dict of JSON values (the factory's "
                            f"keyword arguments), got {type(args).__name__}")
        return cls(_trust.check_reference(factory, "net_options.factory"), dict(args or {}))

    def pair(self, data_dim: int, latent_dim: int, family_params: int, params_per_dim: int,
             image_shape: Sequence[int] | None = None) -> tuple[nn.Module, nn.Module]:
        """(encoder net, decoder net) from the user's factory (imported only when trusted)."""
        if not isinstance(latent_dim, int):
            raise ValueError(f"net: 'factory' builds one latent layer's networks, expected an "
                             f"integer latent_dim, got {latent_dim!r}")
        make = _trust.import_factory(self.factory, "net_options.factory")
        nets = make(data_dim=data_dim, latent_dim=latent_dim,
                    image_shape=None if image_shape is None else tuple(image_shape),
                    encoder_out=family_params, decoder_out=data_dim * params_per_dim,
                    **self.args)
        if (not isinstance(nets, (tuple, list)) or len(nets) != 2
                or not all(isinstance(n, nn.Module) for n in nets)):
            raise TypeError(f"net_options.factory: expected {self.factory!r} to return "
                            f"(encoder net, decoder net), two torch modules, got "
                            f"{type(nets).__name__}")
        encoder, decoder = nets
        if getattr(decoder, "out_features", None) is None:   # how the decoder tells D (vae)
            decoder.out_features = data_dim * params_per_dim
        return encoder, decoder

    def conditional_encoder(self, data_dim: int, condition_dim: int, out_features: int,
                            image_shape: Sequence[int] | None = None) -> nn.Module:
        """Not built from a factory: how c enters the user's networks is the user's to say."""
        raise ValueError("condition (--condition): a conditional VAE is built from the mlp or "
                         "conv networks; expected --net mlp or conv with it, got factory")

    def encoder(self, in_features: int, out_features: int,
                image_shape: Sequence[int] | None = None) -> nn.Module:
        """Only :meth:`pair`: an encoder alone (incomplete data, hierarchies) is not built
        from a factory."""
        raise ValueError("net: 'factory' networks are built as an (encoder, decoder) pair for "
                         "a one-layer VAE on complete data; expected missing 'none' and one "
                         "latent layer with them")

    #: A factory builds one latent layer's nets: no hierarchy.
    hierarchies: ClassVar[tuple[str, ...]] = ()


def build_nets(config, family_params: int, params_per_dim: int) -> tuple[nn.Module, nn.Module]:
    """(encoder net, decoder net) of a ``vaelab.config.ModelConfig``: its network kind
    (``net``: :class:`MLPNets`, :class:`ConvNets`) built from its options."""
    entry, options = catalogue.chosen(config, "network")
    return entry.build(**options).pair(config.data_dim, config.latent_dim, family_params,
                                       params_per_dim, config.image_shape)
