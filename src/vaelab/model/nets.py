"""The networks of each ``--net`` choice: which units (``vaelab.model.units``) make the encoder
and the decoder, for one latent layer and for the hierarchies; nothing probabilistic lives here.

The networks produce the raw parameters that ``likelihoods`` and ``families`` turn into
distributions: the lecture's μ_θ(z), σ_θ(z) for the decoder and the encoder's φ(x).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from vaelab import _trust, catalogue
from vaelab.model import weight_norm as wn

# The units are re-exported: ``nets.GatedLinear``, ``nets.MLP``, … are their long-standing names.
from vaelab.model.units import (  # noqa: F401
    ACTIVATIONS,
    MLP,
    ChannelCondition,
    ConvDecoder,
    ConvEncoder,
    GatedLinear,
    GatedMLP,
    ResidualBlock,
    _halvings,
    _image_shape,
    activation_class,
    has_hooks,
    mlp,
    weight_normalise_mlps,
)


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
        # The encoder first: a seed gives the same initial weights as before this option.
        encoder = self.encoder(data_dim, family_params, image_shape)
        decoder = mlp(latent_dim, tuple(reversed(self.hidden)), data_dim * params_per_dim,
                      self.activation, self.gated)
        return encoder, wn.normalise(decoder) if self.weight_norm else decoder

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
        _check_shape(self.factory, "encoder net", encoder, "x", data_dim, family_params,
                     "encoder_out: q's raw parameters")
        _check_shape(self.factory, "decoder net", decoder, "z", latent_dim,
                     data_dim * params_per_dim, f"decoder_out: {data_dim} data values x "
                     f"{params_per_dim} likelihood parameter(s) each")
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


def _check_shape(factory: str, which: str, net: nn.Module, name: str, in_features: int,
                 out_features: int, meaning: str) -> None:
    """Run ``net`` once on zeros [2, in_features] and check it gives [2, out_features], so a
    factory's wrong size is said before training (and before anything is written), naming
    the factory and the net. Eval mode, no gradients, the RNG state kept: the probe changes
    no weight, batch-norm statistic or random draw of the run."""
    first = next(net.parameters(), None)
    dummy = torch.zeros(2, in_features, dtype=first.dtype if first is not None and
                        first.is_floating_point() else torch.get_default_dtype(),
                        device=None if first is None else first.device)
    modes = [(m, m.training) for m in net.modules()]
    net.eval()
    try:
        with torch.no_grad(), torch.random.fork_rng(devices=[]):
            out = net(dummy)
    except Exception as err:   # the user's code: said as theirs, in one line
        text = str(err).strip().splitlines()[0] if str(err).strip() else ""
        raise ValueError(f"net_options.factory: the {which} of {factory!r} failed on {name} "
                         f"of shape [2, {in_features}]: {type(err).__name__}: {text}") from None
    finally:
        for module, training in modes:
            module.training = training
    got = list(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
    if got != [2, out_features]:
        raise ValueError(f"net_options.factory: the {which} of {factory!r} maps {name} "
                         f"[2, {in_features}] to {got}; expected [2, {out_features}] "
                         f"({meaning})")


def build_nets(config, family_params: int, params_per_dim: int) -> tuple[nn.Module, nn.Module]:
    """(encoder net, decoder net) of a ``vaelab.config.ModelConfig``: its network kind
    (``net``: :class:`MLPNets`, :class:`ConvNets`) built from its options."""
    entry, options = catalogue.chosen(config, "network")
    return entry.build(**options).pair(config.data_dim, config.latent_dim, family_params,
                                       params_per_dim, config.image_shape)
