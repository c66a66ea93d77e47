"""Top-down inference for stacked latents: q(z | x) = q(z_n | x) Π_{i<n} q(z_i | x, z_{i+1}).

The two-layer VAE of the VampPrior paper (Tomczak & Welling 2018, "VAE with a VampPrior", §3.2
and its reference code) infers the top layer from x alone and every lower layer from x and
the layer above it — the same order in which the generative model samples them. Two things
follow, and both are why this structure trains better than bottom-up inference
(q(z_1 | x) q(z_2 | z_1), Burda et al. 2016) on binary images:

* the top layer's q(z_n | x) is a closed-form Gaussian of x, so a VampPrior on z_n — the
  mixture of q(z_n | u_k) at learned pseudo-inputs u_k — is available;
* each lower q sees x directly, so the lower layers are not forced to carry everything the
  upper ones need.

The decoder of that model reads every layer (p(x | z_1, …, z_n), a skip path from each z_i to
x): :class:`SkipDecoder`. The generative conditionals p(z_i | z_{i+1}) stay those of
``vaelab.model.hierarchical``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.distributions import Distribution

from vaelab import _checks
from vaelab.model.layered import (
    LayeredDistribution,
    LikelihoodDecoder,
    PerExampleLayers,
    _diagonal,
)


class TopDownEncoder(nn.Module):
    """x [B, D] → layered q with q(z_n | x) = N(top(x)) and q(z_i | x, z_{i+1}) =
    N(``lower[i]([x, z_{i+1}])``), each a diagonal Normal (softplus scale + ``min_scale``).

    Args:
        top: a net x [.., D] → [.., 2 L_n] (raw location and pre-softplus scale).
        lower: n − 1 nets, ``lower[i]`` maps ``[x, z_{i+1}]``, shape ``[.., D + L_{i+1}]``,
            → [.., 2 L_i] (or, with ``reads_x_apart``, ``(x [B, D], z_{i+1} [.., B, L])``).
        sizes: L_1, …, L_n, bottom to top.
    """

    def __init__(self, top: nn.Module, lower: Sequence[nn.Module], sizes: Sequence[int],
                 min_scale: float = 1e-3) -> None:
        super().__init__()
        self.sizes = tuple(_checks.positive_int("latent_dim", s) for s in sizes)
        if len(lower) != len(self.sizes) - 1:
            raise ValueError(f"lower: expected {len(self.sizes) - 1} nets (one per layer below "
                             f"the top), got {len(lower)}")
        self.top, self.lower = top, nn.ModuleList(lower)
        self.latent_dim = sum(self.sizes)
        self.min_scale = float(min_scale)

    def _lower_raw(self, i: int, x: torch.Tensor, above: torch.Tensor) -> torch.Tensor:
        """raw of q(z_i | x, z_{i+1}); x [B, D] broadcast against z_{i+1} [..., B, L]. A net
        with ``reads_x_apart`` (``vaelab.model.conv_hierarchy.ConvLowerNet``) gets x and
        z_{i+1} separately, so that it computes x's features once for every draw of z_{i+1}."""
        if getattr(self.lower[i], "reads_x_apart", False):
            return self.lower[i](x, above)
        x = x.expand(*above.shape[:-1], x.shape[-1])
        return self.lower[i](torch.cat([x, above], dim=-1))

    def top_posterior(self, x: torch.Tensor) -> Distribution:
        """q(z_n | x), batch [B], event [L_n]: what a VampPrior on z_n mixes at its
        pseudo-inputs."""
        return _diagonal(self.top(x), self.min_scale)

    def forward(self, x: torch.Tensor) -> LayeredDistribution:
        n = len(self.sizes)

        def step(i: int, layers: dict[int, torch.Tensor]) -> Distribution:
            if i == n - 1:
                return self.top_posterior(x)
            return _diagonal(self._lower_raw(i, x, layers[i + 1]), self.min_scale)

        return LayeredDistribution(self.sizes, range(n - 1, -1, -1), step, x.shape[:1])

    def per_example(self, x: torch.Tensor) -> tuple[PerExampleLayers, torch.Tensor]:
        """(family, raw [B, Σ 2 L_i]) with ``family(raw)`` = this encoder's q(z | x) at the start.

        The per-example form of the top-down structure: the top layer's (μ, raw σ) become free
        per example (the encoder's output as the start); each lower q(z_i | x, z_{i+1}) keeps
        its network, with a free per-example offset added to its raw output (zero at the
        start), so the dependence on the layer above stays. raw is detached.
        """
        n = len(self.sizes)
        with torch.no_grad():
            raw = torch.cat([x.new_zeros(x.shape[0], 2 * s) for s in self.sizes[:-1]]
                            + [self.top(x)], dim=-1)

        def step(i: int, chunk: torch.Tensor, layers: dict[int, torch.Tensor]) -> Distribution:
            if i == n - 1:
                return _diagonal(chunk, self.min_scale)
            return _diagonal(self._lower_raw(i, x, layers[i + 1]) + chunk, self.min_scale)

        return PerExampleLayers(self.sizes, range(n - 1, -1, -1), [2 * s for s in self.sizes],
                                step), raw


class SkipDecoder(LikelihoodDecoder):
    """z [..., Σ L] (every layer) → p(x | z_1, …, z_n) = ``likelihood(net(z))``.

    The same module as ``LikelihoodDecoder``; ``reads_all_layers`` tells
    ``HierarchicalVAE.decode`` to pass the whole concatenated z rather than z_1 alone.
    """

    reads_all_layers = True
