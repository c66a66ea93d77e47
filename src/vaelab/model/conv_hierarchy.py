"""The convolutional nets of the two-path hierarchy (``--net conv --hierarchy top-down``).

The convolutional two-layer HVAE of the VampPrior code lineage (Tomczak & Welling 2018, "VAE
with a VampPrior", §3.2 and §4, the model behind the "convHVAE" rows of their tables and of
Norouzi et al. 2020, Table 1):

* q(z_n | x): a convolutional stack over the image (wide kernels first: 7×7, then 5×5), each
  stage a size-keeping convolution and a stride-2 one, ending in a 3×3 convolution to a few
  channels; flattened, a linear layer gives (μ, raw σ) — :class:`ConvTopNet`;
* q(z_i | x, z_{i+1}): a second stack (3×3 kernels) over x, and a dense unit mapping z_{i+1}
  to as many features; both concatenated, a dense unit of ``width``, a linear layer —
  :class:`ConvLowerNet`. It reads x and z_{i+1} apart (``reads_x_apart``), so x's features are
  computed once per image, not once per draw of z_{i+1};
* p(z_i | z_{i+1}): a dense net of two hidden layers of ``width`` (built by the hierarchy, as
  for the MLP nets);
* p(x | z_1, …, z_n): a dense unit of ``width`` per layer, their concatenation mapped by a dense
  unit to an image (C × H × W), four size-keeping 3×3 convolutions and a 1×1 convolution to the
  likelihood's parameters — :class:`ConvSkipNet`.

With ``gated`` every unit is gated, h = (W₁ ∗ x + b₁) ⊙ σ(W₂ ∗ x + b₂) (Dauphin et al. 2017),
as in the reference code; otherwise a convolution or linear map followed by ``activation``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from vaelab import _checks
from vaelab.model.units import GatedLinear, _halvings, _image_shape, activation_class

#: Channels of the last convolution of an encoder stack: x's features are this many maps at
#: the stack's smallest resolution (6 × 7 × 7 = 294 for 28 × 28 images, as in the reference).
FEATURE_CHANNELS = 6
#: Size-keeping 3×3 convolutions of the decoder after the dense map to the image.
DECODER_LAYERS = 4
#: Most images the decoder convolves at once. Importance sampling asks for thousands of draws
#: per image (k = 5000) in one call, and each image's activations are 2 · channels maps of
#: H × W: in pieces of this many, a 28 × 28 decoder of 64 channels holds ~0.4 GB per layer.
DECODER_PIECE = 1024


class GatedConv2d(nn.Module):
    """h = conv₁(x) ⊙ σ(conv₂(x)), padding k // 2 (size kept at stride 1, ⌈H/2⌉ at stride 2).

    Shapes: [N, in, H, W] → [N, out, H', W']. The two convolutions are held as one with 2·out
    channels (one call).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel: int, stride: int = 1
                 ) -> None:
        super().__init__()
        self.out_channels = _checks.positive_int("out_channels", out_channels)
        self.conv = nn.Conv2d(in_channels, 2 * self.out_channels, kernel, stride,
                              padding=kernel // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, g = self.conv(x).chunk(2, dim=1)
        return h * torch.sigmoid(g)


def conv_unit(in_channels: int, out_channels: int, kernel: int, stride: int, gated: bool,
              activation: str) -> nn.Module:
    """A :class:`GatedConv2d` or a convolution followed by ``activation`` (same padding)."""
    if gated:
        return GatedConv2d(in_channels, out_channels, kernel, stride)
    return nn.Sequential(nn.Conv2d(in_channels, out_channels, kernel, stride,
                                   padding=kernel // 2), activation_class(activation)())


def dense_unit(in_features: int, out_features: int, gated: bool, activation: str) -> nn.Module:
    """A :class:`~vaelab.model.units.GatedLinear` or a linear map followed by ``activation``."""
    if gated:
        return GatedLinear(in_features, out_features)
    return nn.Sequential(nn.Linear(in_features, out_features), activation_class(activation)())


class ConvFeatures(nn.Module):
    """x [..., C·H·W] → features [..., F]: per stage j a size-keeping convolution of kernel
    ``kernels[j]`` to ``channels[j]`` maps and a 3×3 stride-2 one, then a 3×3 convolution to
    :data:`FEATURE_CHANNELS` maps, flattened (F = 6 · H' · W')."""

    def __init__(self, image_shape: Sequence[int] | None, channels: Sequence[int],
                 kernels: Sequence[int], gated: bool, activation: str) -> None:
        super().__init__()
        self.image_shape = _image_shape(image_shape)
        c, h, w = self.image_shape
        layers: list[nn.Module] = []
        for a, b, k in zip([c, *channels[:-1]], channels, kernels, strict=True):
            layers += [conv_unit(a, b, k, 1, gated, activation),
                       conv_unit(b, b, 3, 2, gated, activation)]
        layers.append(conv_unit(channels[-1], FEATURE_CHANNELS, 3, 1, gated, activation))
        self.body = nn.Sequential(*layers, nn.Flatten())
        last = _halvings((h, w), len(channels))[-1]
        self.out_features = FEATURE_CHANNELS * last[0] * last[1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lead = x.shape[:-1]
        return self.body(x.reshape(-1, *self.image_shape)).reshape(*lead, self.out_features)


class ConvTopNet(nn.Module):
    """x [..., C·H·W] → [..., out_features]: q(z_n | x)'s raw parameters from a stack with
    7×7 then 5×5 first kernels (the reference's wider view for the top layer)."""

    def __init__(self, image_shape: Sequence[int] | None, channels: Sequence[int],
                 out_features: int, gated: bool, activation: str) -> None:
        super().__init__()
        kernels = [7, *[5] * (len(channels) - 1)]
        self.features = ConvFeatures(image_shape, channels, kernels, gated, activation)
        self.head = nn.Linear(self.features.out_features, out_features)
        self.out_features = out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


class ConvLowerNet(nn.Module):
    """(x [B, C·H·W], z_above [..., B, L]) → [..., B, out_features]: q(z_i | x, z_{i+1})'s raw
    parameters from x's convolutional features and a dense map of z_{i+1}, joined by a dense
    unit of ``width``.

    ``reads_x_apart`` tells ``vaelab.model.top_down.TopDownEncoder`` to pass x and z_{i+1}
    separately (not concatenated): x's features are computed once and broadcast over the
    draws of z_{i+1}.
    """

    reads_x_apart = True

    def __init__(self, image_shape: Sequence[int] | None, channels: Sequence[int],
                 above: int, out_features: int, width: int, gated: bool,
                 activation: str) -> None:
        super().__init__()
        self.features = ConvFeatures(image_shape, channels, [3] * len(channels), gated,
                                     activation)
        f = self.features.out_features
        self.above = dense_unit(_checks.positive_int("latent_dim", above), f, gated, activation)
        self.joint = dense_unit(2 * f, width, gated, activation)
        self.head = nn.Linear(width, out_features)
        self.out_features = out_features

    def forward(self, x: torch.Tensor, above: torch.Tensor) -> torch.Tensor:
        hz = self.above(above)
        hx = self.features(x).expand_as(hz)
        return self.head(self.joint(torch.cat([hx, hz], dim=-1)))


class ConvSkipNet(nn.Module):
    """z [..., Σ L_i] (every layer) → [..., P·C·H·W], laid out [P, C, H, W] flattened
    (parameter-major, as ``vaelab.model.likelihoods`` reads them): a dense unit of ``width``
    per layer, their concatenation mapped to an image by a dense unit, :data:`DECODER_LAYERS`
    3×3 convolutions of ``channels`` maps and a 1×1 convolution to P·C maps."""

    def __init__(self, sizes: Sequence[int], image_shape: Sequence[int] | None,
                 params_per_dim: int, width: int, channels: int, gated: bool,
                 activation: str) -> None:
        super().__init__()
        self.image_shape = _image_shape(image_shape)
        self.sizes = tuple(_checks.positive_int("latent_dim", s) for s in sizes)
        c, h, w = self.image_shape
        self.paths = nn.ModuleList(dense_unit(s, width, gated, activation) for s in self.sizes)
        self.joint = dense_unit(len(self.sizes) * width, c * h * w, gated, activation)
        ins = [c, *[channels] * (DECODER_LAYERS - 1)]
        self.body = nn.Sequential(*(conv_unit(a, channels, 3, 1, gated, activation)
                                    for a in ins))
        self.out = nn.Conv2d(channels, params_per_dim * c, 1)
        self.in_features = sum(self.sizes)
        self.out_features = params_per_dim * c * h * w

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        lead = z.shape[:-1]
        flat = z.reshape(-1, z.shape[-1])
        pieces = [self._images(piece) for piece in flat.split(DECODER_PIECE)]
        return torch.cat(pieces).reshape(*lead, self.out_features)

    def _images(self, z: torch.Tensor) -> torch.Tensor:
        """z [N, Σ L_i] → [N, P·C·H·W]."""
        parts = z.split(self.sizes, dim=-1)
        h = torch.cat([path(p) for path, p in zip(self.paths, parts, strict=True)], dim=-1)
        image = self.joint(h).reshape(-1, *self.image_shape)
        return self.out(self.body(image)).reshape(z.shape[0], self.out_features)
