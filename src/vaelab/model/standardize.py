"""Per-column standardization of real-valued tables, inside the model.

A real-valued table whose columns live on scales from 1e-3 to 1e3 makes a Gaussian decoder
start with errors of 1e6 nats per column and lets the widest columns drown the others. The
model therefore reads x̃ = (x − loc) / scale per column (loc, scale: the training rows' mean
and standard deviation, saved with the weights as ``data_loc``/``data_scale`` buffers) and its
Gaussian p(x̃ | z) = N(μ, σ²) is mapped back to the data's own units,
p(x | z) = N(loc + scale·μ, (scale·σ)²). Every density therefore keeps its Jacobian
(log p(x) = log p(x̃) − Σ_d log scale_d) and every output — samples, reconstructions,
imputations — is on the data's scale: nothing downstream needs to know.

Role in vaelab: :func:`standardize_model` wraps the net where x enters the encoder (the flat
encoder's net, the bottom-up hierarchy's first conditional, the ladder's first trunk) and the
decoder; :func:`fit_columns` sets loc/scale from data. Models on incomplete data
(``vaelab.model.masked``) carry the same two vectors in their masked input.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.distributions import Distribution, Independent, Normal, StudentT

from vaelab import catalogue


class StandardizedInput(nn.Module):
    """x [..., D] → ``net((x − loc) / scale))``; ``loc``/``scale`` [D] are buffers."""

    loc: torch.Tensor
    scale: torch.Tensor

    def __init__(self, net: nn.Module, data_dim: int) -> None:
        super().__init__()
        self.net = net
        self.register_buffer("loc", torch.zeros(data_dim))
        self.register_buffer("scale", torch.ones(data_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net((x - self.loc) / self.scale)


class StandardizedDecoder(nn.Module):
    """The decoder with its Gaussian p(x̃ | z) mapped back to the data's units.

    Keeps the inner decoder's ``net``, ``likelihood`` and ``data_dim`` (the same modules, so
    the weights keep their names) and reads loc/scale from the encoder's
    :class:`StandardizedInput` (one copy of them, saved there).
    """

    def __init__(self, decoder: Any, inputs: StandardizedInput) -> None:
        super().__init__()
        self.net, self.likelihood = decoder.net, decoder.likelihood
        self.data_dim = decoder.data_dim
        self.reads_all_layers = getattr(decoder, "reads_all_layers", False)
        self._inputs = (inputs,)            # a tuple: not a second registered copy

    def forward(self, z: torch.Tensor) -> Distribution:
        px = self.likelihood(self.net(z))
        inputs = self._inputs[0]
        mapped = to_data_units(px, inputs.loc, inputs.scale)
        if mapped is None and getattr(self.likelihood, "data_units", False):
            return px                   # a likelihood that maps its own columns (mixed tables)
        if mapped is None:
            base = getattr(px, "base_dist", None)
            raise ValueError(f"standardize: expected a Gaussian or Student-t p(x | z), got "
                             f"{type(base or px).__name__}")
        return mapped


def to_data_units(px: Distribution, loc: torch.Tensor,
                  scale: torch.Tensor) -> Distribution | None:
    """p(x̃ | z) of a location-scale family mapped to x = loc + scale·x̃ (loc, scale [D]): the
    same family with location loc + scale·μ and scale scale·σ, so log p(x) = log p(x̃) −
    Σ_d log scale_d. The families: the Gaussian and the Student-t (ν unchanged); None for
    any other distribution."""
    base = getattr(px, "base_dist", None)
    if type(px) is not Independent or not (type(base) is Normal or isinstance(base, StudentT)):
        return None
    where, spread = base.loc * scale + loc, base.scale * scale
    mapped: Distribution = (
        type(base)(base.df, where, spread, validate_args=False) if isinstance(base, StudentT)
        else Normal(where, spread, validate_args=False))
    return Independent(mapped, 1, validate_args=False)


def supports(encoder_kind: str) -> bool:
    """Whether x enters an encoder of this kind ("flat" or a ``hierarchy``) through one net."""
    return encoder_kind in ("flat", "bottom-up", "ladder")


def _wrap_entry(encoder: Any, data_dim: int) -> StandardizedInput:
    """Wrap the net x enters first (in place) → its :class:`StandardizedInput`."""
    if hasattr(encoder, "family") and hasattr(encoder, "net"):      # the flat Encoder
        owner, name = encoder, "net"
    elif hasattr(encoder, "first"):                                 # bottom-up hierarchy
        owner, name = encoder.first, "net"
    elif hasattr(encoder, "trunks"):                                # ladder hierarchy
        encoder.trunks[0] = inputs = StandardizedInput(encoder.trunks[0], data_dim)
        return inputs
    else:
        raise ValueError(f"standardize (--standardize): expected a flat, bottom-up or ladder "
                         f"encoder, got {type(encoder).__name__} (x enters several of its "
                         f"nets); use --standardize off")
    inputs = StandardizedInput(getattr(owner, name), data_dim)
    setattr(owner, name, inputs)
    return inputs


def standardize_model(model: Any) -> Any:
    """Wrap ``model`` (in place) to read standardized columns and answer in the data's units.

    loc = 0, scale = 1 until :func:`fit_columns`: the identity, so a loaded run gets its own
    values from its weights. ``model``: a flat VAE or a hierarchy (duck-typed: anything with
    ``encoder``, ``decoder`` and ``data_dim``), returned as it came.
    """
    if model.encoder is None:
        raise ValueError("standardize: expected a model with an encoder, got none")
    model.decoder = StandardizedDecoder(model.decoder, _wrap_entry(model.encoder,
                                                                   model.data_dim))
    return model


def inputs_of(model: nn.Module) -> StandardizedInput | None:
    """The model's :class:`StandardizedInput`, or None when it is not standardized."""
    decoder = getattr(model, "decoder", None)
    return decoder._inputs[0] if isinstance(decoder, StandardizedDecoder) else None


def column_stats(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean, standard deviation) per column of x [N, D] over its non-NaN entries, float64;
    a column with fewer than 2 values or no spread gets scale 1."""
    x = x.to(torch.float64)
    seen = ~torch.isnan(x)
    count = seen.sum(0).to(torch.float64)
    values = torch.where(seen, x, torch.zeros_like(x))
    mean = values.sum(0) / count.clamp_min(1)
    var = (torch.where(seen, values - mean, torch.zeros_like(values)) ** 2).sum(0)
    std = (var / (count - 1).clamp_min(1)).sqrt()
    return mean, torch.where((count >= 2) & (std > 0), std, torch.ones_like(std))


@torch.no_grad()
def fit_columns(model: nn.Module, x: torch.Tensor) -> None:
    """Set a standardized model's loc/scale from the training rows x [N, D]."""
    inputs = inputs_of(model)
    if inputs is None:
        raise ValueError("model: expected a model built with standardize='on', got one without")
    mean, std = column_stats(x)
    inputs.loc.copy_(mean)
    inputs.scale.copy_(std)


def resolve(config):
    """``config`` (a ``vaelab.config.ModelConfig`` with its data resolved) with
    ``standardize`` decided: "auto" → "on" for a Gaussian likelihood on a real-valued table
    (data kind "continuous", no image shape) whose encoder has one entry net, else "off".

    Raises ValueError for "on" without a Gaussian likelihood on real-valued data.
    """
    from dataclasses import replace

    hierarchy = config.hierarchy if isinstance(config.latent_dim, tuple) else "flat"
    # a mixed table's real columns are mapped by its likelihood; its encoder reads them scaled
    density = catalogue.get("likelihood", config.likelihood).resolve().support in ("real",
                                                                                  "mixed")
    real = density and config.data_kind in ("continuous", "unit-interval")
    if config.standardize == "on" and not real:
        raise ValueError(f"standardize (--standardize): 'on' needs --likelihood gaussian on "
                         f"real-valued data, got --likelihood {config.likelihood} on "
                         f"{config.data_kind} data")
    if config.standardize != "auto":
        return config
    wanted = (real and config.data_kind == "continuous" and config.image_shape is None
              and supports(hierarchy) and config.condition is None)   # packed [x | c] rows
    return replace(config, standardize="on" if wanted else "off")


#: Columns whose standard deviations differ by more than this factor, or values beyond
#: ±LARGE, are "on very different scales" for a Gaussian that starts at N(0, 1).
SPREAD_RATIO, LARGE = 1e3, 1e3


def scale_problem(x: torch.Tensor) -> str | None:
    """One phrase when the columns of x [N, D] are on scales a Gaussian decoder starting near
    N(0, 1) cannot fit without standardization, else None."""
    if x.numel() == 0:
        return None
    _, std = column_stats(x)
    biggest = float(torch.nan_to_num(x.to(torch.float64).abs(), nan=0.0).max())
    if float(std.max() / std.min()) <= SPREAD_RATIO and biggest <= LARGE:
        return None
    return (f"its columns have standard deviations from {float(std.min()):.3g} to "
            f"{float(std.max()):.3g} and values up to {biggest:.3g} in size")
