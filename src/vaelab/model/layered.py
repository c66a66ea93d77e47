"""Distributions over stacked latent layers, sampled one layer at a time, and their parts.

The building blocks every hierarchical structure of vaelab shares (``vaelab.model.hierarchical``
for bottom-up and ladder inference, ``vaelab.model.top_down`` for the two-path structure):
:class:`LayeredDistribution` presents n Gaussian layers z_1, …, z_n as one distribution over
the concatenated z (``rsample``, ``log_prob``, per-layer terms), :func:`layer_rates` splits the
KL into one rate per layer, :class:`GaussianConditional` is one diagonal-Normal layer from an
MLP, :class:`LikelihoodDecoder` is p(x | z_1), and :class:`PerExampleLayers` is the per-example
form of a layered q (free parameters per data point, for the gaps of Cremer et al. 2018).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn
from torch.distributions import Distribution, Independent, Normal, constraints

from vaelab import _checks
from vaelab.model import draws, likelihoods, nets

#: step(i, layers) → the distribution of layer i given the layers sampled so far (a dict
#: index → tensor [..., L_j]); it reads only layer i's parents.
LayerStep = Callable[[int, dict[int, torch.Tensor]], Distribution]


class LayeredDistribution(Distribution):
    """A distribution over z = [z_1, …, z_n] (concatenated) sampled one layer at a time.

    Args:
        sizes: L_1, …, L_n (event [Σ L_i]).
        order: the order in which layers are sampled (each layer's parents come earlier).
        step: :data:`LayerStep`; its distributions have event [L_i] and a batch that
            broadcasts to ``sample_shape + batch_shape``.
        batch_shape: [B] for a q, [] for a prior.

    ``rsample(shape)`` → [*shape, *batch, Σ L]; ``log_prob(z)`` and :meth:`layer_log_probs`
    take z [..., *batch, Σ L] → [..., *batch].
    """

    arg_constraints: dict = {}
    support = constraints.real_vector
    has_rsample = True
    #: the last draw (``vaelab.model.draws``) and the ε each layer drew it with (or None)
    _drawn: tuple[draws.DrawRecord, dict[int, torch.Tensor | None]] | None = None

    def __init__(self, sizes: Sequence[int], order: Sequence[int], step: LayerStep,
                 batch_shape: torch.Size | tuple[int, ...] = ()) -> None:
        self.sizes = tuple(int(s) for s in sizes)
        self.order = tuple(int(i) for i in order)
        if sorted(self.order) != list(range(len(self.sizes))):
            raise ValueError(f"order: expected a permutation of 0..{len(self.sizes) - 1}, "
                             f"got {list(self.order)}")
        self.step = step
        super().__init__(torch.Size(batch_shape), torch.Size([sum(self.sizes)]),
                         validate_args=False)

    def split(self, z: torch.Tensor) -> dict[int, torch.Tensor]:
        """z [..., Σ L] → {i: z_i [..., L_i]}."""
        return dict(enumerate(z.split(self.sizes, dim=-1)))

    def _draw(self, sample_shape: torch.Size | list[int] | tuple[int, ...], reparameterized: bool
              ) -> torch.Tensor:
        shape = torch.Size(sample_shape) + self.batch_shape
        layers: dict[int, torch.Tensor] = {}
        eps: dict[int, torch.Tensor | None] = {}
        for i in self.order:
            d = self.step(i, layers)
            if d.batch_shape != shape:
                d = d.expand(shape)
            layers[i] = d.rsample() if reparameterized else d.sample()
            eps[i] = getattr(d, "drawn_eps", None)
        z = torch.cat([layers[i] for i in range(len(self.sizes))], dim=-1)
        self._drawn = (draws.record(z), eps)
        return z

    def rsample(self, sample_shape: torch.Size | list[int] | tuple[int, ...] = ()) -> torch.Tensor:
        """Reparameterized ancestral draw [*shape, *batch, Σ L]; every layer needs rsample."""
        return self._draw(sample_shape, True)

    def sample(self, sample_shape: torch.Size | list[int] | tuple[int, ...] = ()) -> torch.Tensor:
        """Ancestral draw without gradients; layers without rsample (a mixture prior at the
        top) are drawn with their own ``sample``."""
        with torch.no_grad():
            return self._draw(sample_shape, False)

    def layer_log_probs(self, z: torch.Tensor) -> list[torch.Tensor]:
        """[log density of layer i given its parents, for i = 0 … n−1], each [...].

        At this distribution's own last draw, a layer that drew z_i = loc + L ε
        (``vaelab.model.families.DrawnMultivariateNormal``) is evaluated from that ε rather
        than by solving ε back from the rounded z_i, which an ill-conditioned L turns into
        log q off by 1e30 in float32 (the one-layer full-covariance q's fault, here per layer).
        """
        layers = self.split(z)
        drawn = self._drawn[1] if self._drawn and draws.is_draw(z, self._drawn[0]) else {}
        out = []
        for i in range(len(self.sizes)):
            d, eps = self.step(i, layers), drawn.get(i)
            out.append(d.log_prob(layers[i]) if eps is None or not hasattr(d, "log_prob_at")
                       else d.log_prob_at(layers[i], eps))
        return out

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        return torch.stack(self.layer_log_probs(value)).sum(0)

    @property
    def mean(self) -> torch.Tensor:
        """The plug-in path: each layer's conditional mean at its parents' means, [*batch, Σ L]."""
        layers: dict[int, torch.Tensor] = {}
        for i in self.order:
            layers[i] = self.step(i, layers).mean.expand(*self.batch_shape, self.sizes[i])
        return torch.cat([layers[i] for i in range(len(self.sizes))], dim=-1)

    def free_bits_groups(self, prior: LayeredDistribution, free_bits: float
                         ) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-layer free-bits groups for ``vaelab.infer.objectives.free_bits_kl``
        (:func:`free_bits_groups`): rates [B, n] and thresholds λ · L_i [n]."""
        return free_bits_groups(self, prior, free_bits)

    def layer_means(self) -> list[torch.Tensor]:
        """:attr:`mean` split by layer: [[*batch, L_i] for each layer]."""
        return list(self.mean.split(self.sizes, dim=-1))


def layer_rates(q: LayeredDistribution, prior: LayeredDistribution,
                num_samples: int = 1) -> torch.Tensor:
    """Monte Carlo rate per layer, E_q[log q(z_i | ·) − log p(z_i | parents)]; → [B, n].

    The n columns sum to the Monte Carlo estimate of KL(q ‖ p(z)) from the same draws.
    """
    num_samples = _checks.positive_int("num_samples", num_samples)
    z = q.rsample((num_samples,))
    lq, lp = q.layer_log_probs(z), prior.layer_log_probs(z)
    return torch.stack([(a - b).mean(0) for a, b in zip(lq, lp, strict=True)], dim=-1)


# --------------------------------------------------------------------------- networks


def _diagonal(raw: torch.Tensor, min_scale: float) -> Distribution:
    """raw [..., 2L] = [loc, raw scale] → N(loc, diag (softplus + min_scale)²), event [L]."""
    loc, raw_scale = raw.chunk(2, dim=-1)
    scale = nn.functional.softplus(raw_scale) + min_scale
    return Independent(Normal(loc, scale, validate_args=False), 1, validate_args=False)


class GaussianConditional(nn.Module):
    """z_in [..., in_dim] → N(μ(z_in), diag σ²(z_in)), event [out_dim], from one MLP."""

    def __init__(self, in_dim: int, hidden: Sequence[int], out_dim: int,
                 activation: str = "relu", min_scale: float = 1e-3, gated: bool = False) -> None:
        super().__init__()
        self.net = nets.mlp(in_dim, hidden, 2 * out_dim, activation, gated)
        self.min_scale = float(min_scale)

    def forward(self, z: torch.Tensor) -> Distribution:
        return _diagonal(self.net(z), self.min_scale)


class LikelihoodDecoder(nn.Module):
    """z_1 [..., L_1] → p(x | z_1) = ``likelihood(net(z_1))`` (same duck type as vae.Decoder)."""

    def __init__(self, net: nn.Module, likelihood: likelihoods.Likelihood, data_dim: int):
        super().__init__()
        self.net, self.likelihood = net, likelihood
        self.data_dim = _checks.positive_int("data_dim", data_dim)

    def forward(self, z: torch.Tensor) -> Distribution:
        return self.likelihood(self.net(z))


class PerExampleLayers:
    """A layered q whose x-dependent parameters are free per example: raw [B, P] → q.

    What a hierarchical encoder's ``per_example(x)`` returns (with the encoder's raw for x),
    so that ``vaelab.infer.schemes.optimize_q`` can fit q* of the *same structure* for the
    gaps of Cremer et al. (2018). ``raw`` is split into one chunk per layer (``chunks``
    numbers each); ``step(i, chunk_i, layers)`` gives layer i's distribution given its chunk
    and the layers sampled so far. Duck-types a ``vaelab.model.families.Family``
    (``param_size``, call); the encoder's networks inside ``step`` are not optimized.
    """

    def __init__(self, sizes: Sequence[int], order: Sequence[int], chunks: Sequence[int],
                 step: Callable[[int, torch.Tensor, dict[int, torch.Tensor]], Distribution]):
        self.sizes, self.order, self.chunks = tuple(sizes), tuple(order), tuple(chunks)
        self.latent_dim = sum(self.sizes)
        self._step = step

    @property
    def param_size(self) -> int:
        return sum(self.chunks)

    def __call__(self, raw: torch.Tensor) -> LayeredDistribution:
        if raw.shape[-1] != self.param_size:
            raise ValueError(f"raw: expected last dimension {self.param_size}, "
                             f"got {list(raw.shape)}")
        parts = raw.split(self.chunks, dim=-1)

        def step(i: int, layers: dict[int, torch.Tensor]) -> Distribution:
            return self._step(i, parts[i], layers)

        return LayeredDistribution(self.sizes, self.order, step, raw.shape[:-1])


def free_bits_groups(q: LayeredDistribution, prior: LayeredDistribution, free_bits: float
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """Free bits per latent layer (Kingma et al. 2016, §C.8, one group per layer).

    Returns (the Monte Carlo rate of every layer from one fresh draw of q, [B, n]; the
    thresholds λ · L_i, [n]): a layer whose batch-mean rate is below λ · L_i costs the
    constant λ · L_i (no gradient), so λ stays "nats per latent unit" as for one layer.
    """
    rates = layer_rates(q, prior, 1)
    return rates, free_bits * torch.tensor(q.sizes, dtype=rates.dtype, device=rates.device)
