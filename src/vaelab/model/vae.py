"""Encoder, Decoder and the VAE p_θ(x, z) = p(z) p_θ(x | z) (Kingma & Welling 2014).

Every generative model in vaelab (the neural :class:`VAE` and the closed-form models in
``vaelab.model.exact``) follows one small protocol, so the objectives treat them alike:

* ``prior()`` → Distribution over z, batch [], event [L];
* ``decode(z)`` → p(x | z) for z [..., B, L], a Distribution with batch [..., B], event [D];
* ``log_joint(x, z)`` → log p(x, z), shape [..., B];
* ``check_data(x, name)`` → raises a clear error unless x is a valid batch [B, D].
"""

from __future__ import annotations

import torch
from torch import nn
from torch.distributions import Distribution

from vaelab import _checks, catalogue
from vaelab._runtime import isolated_rng
from vaelab.config import ModelConfig
from vaelab.model import families as families_
from vaelab.model import hierarchical, likelihoods, nets


class LatentVariableModel(nn.Module):
    """Base of the generative-model protocol; subclasses define prior(), decode(), data_dim."""

    data_dim: int
    latent_dim: int

    def prior(self) -> Distribution:  # pragma: no cover - abstract
        raise NotImplementedError

    def decode(self, z: torch.Tensor) -> Distribution:  # pragma: no cover - abstract
        raise NotImplementedError

    def log_joint(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """log p(x, z) = log p(z) + log p(x | z); x [B, D], z [..., B, L] → [..., B]."""
        return self.prior().log_prob(z) + self.decode(z).log_prob(x)

    def check_data(self, x: object, name: str = "x") -> torch.Tensor:
        """Validate a data batch: float tensor [B, data_dim], finite, inside the support."""
        return _checks.data_batch(name, x, self.data_dim)

    @torch.no_grad()
    def sample(self, n: int, *, mean: bool = False,
               generator: torch.Generator | None = None) -> torch.Tensor:
        """Draw n samples x ~ p(x) by ancestral sampling: z ~ p(z), x ~ p(x|z); → [n, D].

        With ``mean=True`` return E[x | z] instead of a draw of x (what image grids show).
        """
        n = _checks.positive_int("n", n)
        prior = self.prior()
        z = _draw(prior, (n,), generator)
        px = self.decode(z)
        return px.mean if mean else _draw(px, (), generator)


def _draw(d: Distribution, shape: tuple[int, ...], generator: torch.Generator | None):
    if generator is None:
        return d.sample(shape)
    with isolated_rng(int(torch.randint(2**62, (), generator=generator))):
        return d.sample(shape)


class Encoder(nn.Module):
    """x [B, D] → q_φ(z | x): ``family(net(x))``, batch [B], event [L] (amortized inference)."""

    def __init__(self, net: nn.Module, family: families_.Family) -> None:
        super().__init__()
        self.net = net
        self.family = family
        self.latent_dim = family.latent_dim

    def forward(self, x: torch.Tensor) -> Distribution:
        return self.family(self.net(x))

    def per_example(self, x: torch.Tensor) -> tuple[families_.Family, torch.Tensor]:
        """(family, raw [B, family.param_size]) with ``family(raw)`` = this encoder's q(z | x).

        The per-example form of q: the same family with its parameters free for each example
        (what ``vaelab.measure.gaps`` optimizes into q*, Cremer et al. 2018); raw is detached.
        """
        with torch.no_grad():
            return self.family, self.net(x)


class Decoder(nn.Module):
    """z [..., B, L] → p_θ(x | z) = ``likelihood(net(z))``, batch [..., B], event [D]."""

    def __init__(self, net: nn.Module, likelihood: likelihoods.Likelihood,
                 data_dim: int | None = None) -> None:
        super().__init__()
        self.net = net
        self.likelihood = likelihood
        if data_dim is None:
            out = getattr(net, "out_features", None)
            if out is None:
                raise ValueError("data_dim: expected an integer (the net has no out_features), "
                                 "got None")
            if out % likelihood.params_per_dim:
                raise ValueError(
                    f"net: expected out_features divisible by {likelihood.params_per_dim} "
                    f"(the {likelihood.name} likelihood's numbers per dimension), got {out}")
            data_dim = out // likelihood.params_per_dim
        self.data_dim = _checks.positive_int("data_dim", data_dim)

    def forward(self, z: torch.Tensor) -> Distribution:
        return self.likelihood(self.net(z))


class VAE(LatentVariableModel):
    """p_θ(x, z) = p(z) p_θ(x | z), optionally with the encoder q_φ(z | x) that trained it.

    Args:
        prior: a module returning p(z) when called (``vaelab.model.priors``).
        decoder: :class:`Decoder`.
        encoder: optional :class:`Encoder`; needed by :meth:`encode` and :meth:`reconstruct`.
    """

    def __init__(self, prior: nn.Module, decoder: Decoder,
                 encoder: Encoder | None = None) -> None:
        super().__init__()
        self.prior_module = prior
        self.decoder = decoder
        self.encoder = encoder
        self.latent_dim = int(prior().event_shape[0])
        self.data_dim = decoder.data_dim
        if encoder is not None and encoder.latent_dim != self.latent_dim:
            raise ValueError(f"encoder: expected latent_dim {self.latent_dim} (the prior's), "
                             f"got {encoder.latent_dim}")
        self.config: ModelConfig | None = None

    def prior(self) -> Distribution:
        return self.prior_module()

    def decode(self, z: torch.Tensor) -> Distribution:
        return self.decoder(z)

    def check_data(self, x: object, name: str = "x") -> torch.Tensor:
        x = super().check_data(x, name)
        return self.decoder.likelihood.check_support(x, name)

    def generative_parameters(self) -> list[nn.Parameter]:
        """θ: the parameters of the prior and the decoder (not the encoder's φ)."""
        return [*self.prior_module.parameters(), *self.decoder.parameters()]

    def encode(self, x: torch.Tensor) -> Distribution:
        """q_φ(z | x) for x [B, D]: batch [B], event [L]."""
        if self.encoder is None:
            raise ValueError("encoder: this model has no encoder; pass one to VAE(...)")
        return self.encoder(self.check_data(x))

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        """E[x | z = mean of q(z|x)]: x [B, D] → [B, D]."""
        return self.decode(self.encode(x).mean).mean

    @classmethod
    def from_config(cls, config: ModelConfig) -> VAE | hierarchical.HierarchicalVAE:
        """:func:`build_vae` (a hierarchical VAE when ``config`` has several latent layers)."""
        return build_vae(config)


def _no_logvar_bounds(config: ModelConfig) -> None:
    """A hierarchy's layers are diagonal Normals of their own (``vaelab.model.layered``),
    which do not read q's log-variance bounds: refused rather than silently ignored."""
    for side in ("min", "max"):
        value = (config.family_options or {}).get(f"{side}_logvar")
        if value is not None:
            raise ValueError(f"family_options.{side}_logvar (--q-{side}-logvar): bounds the "
                             f"log-variance of a one-layer model's q; a hierarchical model "
                             f"(latent_dim {config.latent_dim}) has none; expected no "
                             f"bound, got {value:g}")


def build_vae(config: ModelConfig) -> VAE | hierarchical.HierarchicalVAE:
    """MLP encoder x → hidden → family params; MLP decoder z → reversed hidden → likelihood
    (or the user's whole model and q, ``net = "model"``: ``vaelab.model.user``)."""
    if not isinstance(config, ModelConfig):
        raise TypeError(f"config: expected a ModelConfig, got {type(config).__name__}")
    if config.data_dim is None:
        raise ValueError("config.data_dim: expected an integer >= 1 (resolve it from the data "
                         "with config.with_data(...)), got None")
    entry, options = catalogue.chosen(config, "network")
    if getattr(entry.resolve(), "whole", False):   # the user's own p and q (model/user.py)
        return entry.build(**options).model(config)
    if isinstance(config.latent_dim, tuple):   # latent sizes bottom to top: a hierarchy
        _no_logvar_bounds(config)
        layered = hierarchical.build_hierarchical(config, likelihoods.from_model_config(config))
        # every MLP of the hierarchy (q's and p's conditionals too), as the option says
        return nets.weight_normalise_mlps(layered) if config.weight_norm else layered
    entry, options = catalogue.chosen(config, "family")
    family = entry.build(config.latent_dim, **options)
    lik: likelihoods.Likelihood = likelihoods.from_model_config(config)
    encoder_net, decoder_net = nets.build_nets(config, family.param_size, lik.params_per_dim)
    encoder = Encoder(encoder_net, family)
    entry, options = catalogue.chosen(config, "prior")
    prior = entry.build(config.latent_dim, config.data_dim, encoder, **options)
    model = VAE(prior, Decoder(decoder_net, lik), encoder)
    model.config = config
    return model
