"""Conditional VAE: p_θ(x, z | c) = p(z) p_θ(x | z, c) with q_φ(z | x, c) (Sohn, Lee & Yan 2015).

c is a known condition of each example: a class label or a categorical covariate (one-hot),
or real covariates (standardized), as ``vaelab.condition_spec`` records it. The model reads
*packed* rows [x | c] (``vaelab.data.condition``), so it follows the protocol of
``vaelab.model.vae`` unchanged — ``check_data``, ``encode``, ``decode(z).log_prob``,
``log_joint`` take [B, D + C] — and every objective and estimator (ELBO, IWAE, importance-
sampled log p(x | c)) conditions on c without knowing it exists.

How c enters the networks (concatenation, as in Sohn et al.):

* decoder: p_θ(x | z, c) = likelihood(net([z, c])) — c joins z at the decoder's input, for
  every network kind (the conv decoder's first, dense layer reads [z, c]);
* encoder: q_φ(z | x, c) = family(net'(x, c)), where the network kind decides (its
  ``conditional_encoder``): the MLP reads [x, c]; the conv encoder reads the image with c
  broadcast as C extra constant channels
  (:class:`vaelab.model.units.ChannelCondition`), so every filter sees c.

The prior p(z) does not depend on c (any prior of the catalogue; a VampPrior's pseudo-inputs
are packed rows, so it learns pseudo-conditions with them): p(x | c) = ∫ p(z) p(x | z, c) dz.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.distributions import Distribution

from vaelab import _checks, catalogue, condition_spec
from vaelab.config import ModelConfig
from vaelab.model import likelihoods
from vaelab.model.vae import Decoder, Encoder, LatentVariableModel, _draw

#: The message for a conditional model asked for anything without c (generating, encoding,
#: a bound): every one of them reads c.
NEEDS_CONDITION = ("c (--condition): this model is conditional, p(x | z, c) and q(z | x, c); "
                   "expected the condition c (one per example, or one for all), got none")


class PackedLikelihood(Distribution):
    """p_θ(x | z, c) as a density of the packed row [x | c] given z: ``log_prob([x | c])`` =
    log p(x | z, c), so code written for ``decode(z).log_prob(x)`` conditions on c.

    Batch [..., B] (z's leading shape), event [D + C]. It cannot be sampled or averaged
    without c: use ``ConditionalVAE.decode(z, c)`` for that.
    """

    arg_constraints: dict = {}

    def __init__(self, model: ConditionalVAE, z: torch.Tensor) -> None:
        self._model, self._z = model, z
        super().__init__(batch_shape=z.shape[:-1], event_shape=torch.Size([model.data_dim]),
                         validate_args=False)

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        x, c = self._model.split(value)
        return self._model.decode(self._z, c).log_prob(x)

    @property
    def mean(self) -> torch.Tensor:
        raise ValueError(NEEDS_CONDITION)

    def sample(self, sample_shape: torch.Size | list[int] | tuple[int, ...] = ()
               ) -> torch.Tensor:
        raise ValueError(NEEDS_CONDITION)


class ConditionalVAE(LatentVariableModel):
    """p_θ(x, z | c) = p(z) p_θ(x | z, c) with q_φ(z | x, c), on packed rows [x | c].

    Attributes: ``x_dim`` D, ``condition_dim`` C, ``data_dim`` D + C (the packed width that
    ``check_data`` expects), ``latent_dim`` L. Methods taking c accept it encoded ([C] for
    every row, or [B, C]); ``vaelab.data.condition.encode`` turns raw values into c.
    """

    def __init__(self, prior: nn.Module, decoder: Decoder, encoder: Encoder | None,
                 condition_dim: int) -> None:
        super().__init__()
        self.prior_module, self.decoder, self.encoder = prior, decoder, encoder
        self.x_dim = decoder.data_dim
        self.condition_dim = _checks.positive_int("condition_dim", condition_dim)
        self.data_dim = self.x_dim + self.condition_dim
        self.latent_dim = int(prior().event_shape[0])
        self.config: ModelConfig | None = None

    def prior(self) -> Distribution:
        return self.prior_module()

    def split(self, xc: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """[..., D + C] → (x [..., D], c [..., C])."""
        x, c = xc.split([self.x_dim, self.condition_dim], dim=-1)
        return x, c

    def pack(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        """(x [B, D], c [C] or [B, C]) → [B, D + C]."""
        c = _checks.tensor("c", c).to(x.device, x.dtype)
        if c.shape[-1:] != (self.condition_dim,) or c.dim() > 2:
            raise ValueError(f"c (--condition): expected {self.condition_dim} numbers per "
                             f"example, got shape {list(c.shape)}")
        return torch.cat([x, c.expand(x.shape[0], -1)], dim=-1)

    def decode(self, z: torch.Tensor, c: torch.Tensor | None = None) -> Distribution:
        """p(x | z, c): z [..., B, L], c [B, C] (or [..., B, C]) → batch [..., B], event [D].

        Without c: :class:`PackedLikelihood`, whose ``log_prob`` reads c from [x | c].
        """
        if c is None:
            return PackedLikelihood(self, z)
        c = c.to(z.dtype).expand(*z.shape[:-1], self.condition_dim)
        return self.decoder(torch.cat([z, c], dim=-1))

    def check_data(self, x: object, name: str = "x") -> torch.Tensor:
        """Packed rows [B, D + C]: finite, and x inside the likelihood's support."""
        xc = super().check_data(x, name)
        self.decoder.likelihood.check_support(self.split(xc)[0], name)
        return xc

    def generative_parameters(self) -> list[nn.Parameter]:
        """θ: the prior's and the decoder's parameters (c's decoder weights included)."""
        return [*self.prior_module.parameters(), *self.decoder.parameters()]

    def encode(self, x: torch.Tensor, c: torch.Tensor | None = None) -> Distribution:
        """q(z | x, c): packed x [B, D + C], or x [B, D] with c → batch [B], event [L]."""
        if self.encoder is None:
            raise ValueError("encoder: this model has no encoder")
        return self.encoder(self.check_data(x if c is None else self.pack(x, c)))

    @torch.no_grad()
    def sample(self, n: int, c: torch.Tensor | None = None, *, mean: bool = False,
               generator: torch.Generator | None = None) -> torch.Tensor:
        """n draws x ~ p(x | c) (z ~ p(z), x ~ p(x | z, c)), c [C] or [n, C] → [n, D]."""
        n = _checks.positive_int("n", n)
        if c is None:
            raise ValueError(NEEDS_CONDITION)
        z = _draw(self.prior(), (n,), generator)
        c = self.pack(z.new_zeros(n, 0), c)          # checked and broadcast to [n, C]
        px = self.decode(z, c)
        return px.mean if mean else _draw(px, (), generator)

    @torch.no_grad()
    def reconstruct(self, x: torch.Tensor, c: torch.Tensor | None = None) -> torch.Tensor:
        """E[x | z = E q(z | x, c_own), c]: packed x [B, D + C] encoded under its own c and
        decoded under ``c`` ([C] or [B, C]; None: its own) → [B, D]. With another c this is
        the "batch-corrected" x (scvi-tools' ``transform_batch``)."""
        xc = self.check_data(x)
        own = self.split(xc)[1]
        target = own if c is None else self.pack(xc.new_zeros(xc.shape[0], 0), c)
        return self.decode(self.encode(xc).mean, target).mean


def build_conditional(config: ModelConfig) -> ConditionalVAE:
    """The :class:`ConditionalVAE` of ``config`` (a resolved ``config.condition``)."""
    if isinstance(config.latent_dim, tuple):
        raise ValueError(f"condition (--condition): a conditional VAE has one latent layer; "
                         f"expected one --latent-dim, got {list(config.latent_dim)}")
    if config.missing != "none":
        raise ValueError("condition (--condition): a conditional VAE is trained on complete "
                         "data; expected --missing none, got --missing mask")
    if config.standardize == "on":
        raise ValueError("condition (--condition): standardized columns are not implemented "
                         "for a conditional VAE; expected --standardize off")
    spec = config.condition
    if config.data_dim is None or spec is None or not condition_spec.is_resolved(spec):
        raise ValueError("config: a conditional model needs data_dim and a resolved condition "
                         "(levels or loc/scale, found in the data by training), got none")
    cond = condition_spec.dim(spec)
    entry, options = catalogue.chosen(config, "family")
    family = entry.build(config.latent_dim, **options)
    lik = likelihoods.from_model_config(config)
    nets = catalogue.chosen(config, "network")
    kind = nets[0].build(**nets[1])
    _, decoder_net = kind.pair(config.data_dim, config.latent_dim + cond, family.param_size,
                               lik.params_per_dim, config.image_shape)
    encoder = Encoder(kind.conditional_encoder(config.data_dim, cond, family.param_size,
                                               config.image_shape), family)
    entry, options = catalogue.chosen(config, "prior")
    prior = entry.build(config.latent_dim, config.data_dim + cond, encoder, **options)
    model = ConditionalVAE(prior, Decoder(decoder_net, lik, data_dim=config.data_dim),
                           encoder, cond)
    model.config = config
    return model
