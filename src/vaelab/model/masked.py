"""A VAE for incomplete data: the encoder sees the zero-filled values and the mask (MIWAE).

Mattei & Frellsen (2019), "MIWAE: Deep generative modelling and imputation of incomplete data
sets", §3: with x = (x_obs, x_mis) and the mask m (True = observed here), the encoder reads
ι(x) = [x ⊙ m, m] (missing values set to 0, the mask appended), q(z | x_obs) = family(net(ι(x))),
and the decoder is the ordinary p_θ(x | z); only the observed entries enter the likelihood
(``vaelab.infer.masked``). Missing entries are NaN everywhere in vaelab.

Real-valued tables are standardized per column on their observed entries (mean and standard
deviation, :func:`fit_standardization`); the two vectors live in the model's weights
(``encoder.net.loc``/``scale``, saved with the run). The encoder sees (x − loc)/scale and the
decoder's Gaussian is mapped back, p(x | z) = N(loc + scale·μ, (scale·σ)²), so every density,
sample and imputation is on the data's own scale (the Jacobian is part of the density).
With loc = 0, scale = 1 (binary and image data) both maps are the identity, bit for bit.
With ``net="conv"`` the encoder reads [values, mask] as an image of 2·C channels.
Optional: a model of the missingness p(m | x) (``vaelab.model.missingness``, not-MIWAE).
"""

from __future__ import annotations

from typing import cast

import torch
from torch import nn
from torch.distributions import Distribution

from vaelab import _checks, catalogue
from vaelab.config import ModelConfig
from vaelab.model import missingness as missingness_
from vaelab.model.conditional import ConditionalVAE, build_conditional
from vaelab.model.hierarchical import HierarchicalVAE
from vaelab.model.standardize import (
    StandardizedInput,
    column_stats,
    standardize_model,
    to_data_units,
)
from vaelab.model.vae import VAE, Decoder, Encoder, build_vae


class MaskedInput(StandardizedInput):
    """x [..., D] with NaN for missing → net([(x − loc)/scale ⊙ m, m]) (Mattei & Frellsen 2019).

    ``loc`` and ``scale`` [D] are the standardized input's buffers (saved with the weights);
    ``net`` takes 2·D inputs.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        observed = ~torch.isnan(x)
        values = torch.where(observed, (x - self.loc) / self.scale, torch.zeros_like(x))
        return self.net(torch.cat([values, observed.to(x.dtype)], dim=-1))


class MaskedVAE(VAE):
    """A :class:`~vaelab.model.vae.VAE` whose encoder reads (values, mask); NaN = missing.

    Args:
        prior, decoder: as for VAE.
        encoder: an Encoder whose ``net`` is a :class:`MaskedInput`.
        missingness: None (MIWAE: missing at random) or a model of p(m | x) such as
            :class:`~vaelab.model.missingness.SelfMasking` (not-MIWAE), fed standardized values.
    """

    encoder: Encoder          # required here (a plain VAE's may be None)

    def __init__(self, prior: nn.Module, decoder: Decoder, encoder: Encoder,
                 missingness: nn.Module | None = None) -> None:
        super().__init__(prior, decoder, encoder)
        if not isinstance(encoder.net, MaskedInput):
            raise TypeError(f"encoder.net: expected a MaskedInput, got "
                            f"{type(encoder.net).__name__}")
        self.missingness = missingness

    @property
    def data_loc(self) -> torch.Tensor:
        """Per-column mean of the observed training values, [D] (0 when not standardized)."""
        return self.masked_input.loc

    @property
    def data_scale(self) -> torch.Tensor:
        """Per-column standard deviation of the observed training values, [D] (1: none)."""
        return self.masked_input.scale

    @property
    def masked_input(self) -> MaskedInput:
        """The encoder's input layer (checked to be a MaskedInput at construction)."""
        return cast(MaskedInput, self.encoder.net)

    def decode(self, z: torch.Tensor) -> Distribution:
        """p(x | z) on the data's scale: a Gaussian or Student-t is mapped back from
        standardized units (``standardize.to_data_units``)."""
        px = self.decoder(z)
        mapped = to_data_units(px, self.data_loc, self.data_scale)
        return px if mapped is None else mapped

    def generative_parameters(self) -> list[nn.Parameter]:
        """θ: prior, decoder and the missingness model (trained jointly, Ipsen et al. 2021)."""
        extra = [] if self.missingness is None else list(self.missingness.parameters())
        return [*super().generative_parameters(), *extra]

    def missing_logits(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of P(m_d = 1 (missing) | x) for values x [..., D] on the data's scale."""
        if self.missingness is None:
            raise ValueError("missing_model: this model has no missingness model "
                             "(train with missing_model='self-masking')")
        return self.missingness((x - self.data_loc) / self.data_scale)

    def check_masked(self, x: object, name: str = "x") -> tuple[torch.Tensor, torch.Tensor]:
        """x [B, D] with NaN for missing → (values with 0 for missing [B, D], observed bool)."""
        return split_missing(x, self.data_dim, name, self.decoder.likelihood.check_support)

    def encode(self, x: torch.Tensor) -> Distribution:
        """q(z | x_obs) for x [B, D] with NaN marking missing entries: batch [B], event [L]."""
        self.check_masked(x)
        return self.encoder(x)


def split_missing(x: object, data_dim: int, name: str = "x",
                  check_support=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Validate a batch with NaN for missing entries → (zero-filled values, observed mask).

    Raises TypeError for a non-float tensor and ValueError for a wrong shape, ±inf, or observed
    values outside the likelihood's support (``check_support(values, name)``).
    """
    x = _checks.tensor(name, x)
    if x.dim() != 2 or x.shape[-1] != data_dim:
        raise ValueError(f"{name}: expected shape [batch, {data_dim}], got {list(x.shape)}")
    if bool(torch.isinf(x).any()):
        raise ValueError(f"{name}: expected finite values or NaN (missing), got "
                         f"{int(torch.isinf(x).sum())} infinite values")
    observed = ~torch.isnan(x)
    values = torch.where(observed, x, torch.zeros_like(x))
    if check_support is not None and values.numel():
        check_support(values, name)
    return values, observed


@torch.no_grad()
def fit_standardization(model: MaskedVAE, x: torch.Tensor) -> None:
    """Set the model's per-column loc/scale from the observed (non-NaN) entries of x [N, D].

    Columns with fewer than 2 observed values or zero spread keep scale 1 (and loc = their
    mean, or 0 when nothing is observed).
    """
    mean, std = column_stats(x)           # the same rule as every standardized table
    model.masked_input.loc.copy_(mean)
    model.masked_input.scale.copy_(std)


def build_model(config: ModelConfig) -> VAE | HierarchicalVAE | ConditionalVAE:
    """``build_vae(config)``, a :class:`MaskedVAE` when ``config.missing == "mask"``, or a
    ``ConditionalVAE`` when ``config.condition`` is set (``vaelab.model.conditional``)."""
    if config.condition is not None:
        return build_conditional(config)
    if getattr(config, "missing", "none") == "none":
        model = build_vae(config)         # standardized columns inside the model when asked
        return standardize_model(model) if config.standardize == "on" else model
    return build_masked_vae(config)


def build_masked_vae(config: ModelConfig) -> MaskedVAE:
    """A :class:`MaskedVAE` of ``config`` (one latent layer): ``build_vae``'s model with an
    encoder that reads [values, mask], and the missingness model ``config.missing_model``."""
    if isinstance(config.latent_dim, tuple):
        raise ValueError(f"missing: 'mask' is implemented for one latent layer, got "
                         f"latent_dim={config.latent_dim!r}")
    if config.data_dim is None:
        raise ValueError("data_dim: a masked model needs the data's dimension, got None")
    model = build_vae(config)
    # One latent layer (checked above) builds a flat VAE, which always has an encoder.
    assert isinstance(model, VAE) and model.encoder is not None
    encoder = model.encoder
    d, out = config.data_dim, encoder.family.param_size
    shape = config.image_shape     # [values, mask]: an image of 2C channels, or 2D numbers
    shape = None if shape is None else (2 * shape[0], *shape[1:])
    entry, options = catalogue.chosen(config, "network")
    net = entry.build(**options).encoder(2 * d, out, shape)
    encoder.net = MaskedInput(net, d)
    masked = MaskedVAE(model.prior_module, model.decoder, encoder,
                       missingness_.build(getattr(config, "missing_model", "none"), d))
    masked.config = config
    return masked
