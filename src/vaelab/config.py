"""Frozen configuration dataclasses, validated on construction.

Every check names the field, what was expected and what was received.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from vaelab import _checks

LIKELIHOOD_NAMES = ("bernoulli", "gaussian")
PRIOR_NAMES = ("standard_normal", "learned_normal")
FAMILY_NAMES = ("diagonal_normal", "full_covariance_normal")


@dataclass(frozen=True)
class ModelConfig:
    """Architecture of an MLP VAE: x [D] → hidden → q(z|x); z [L] → reversed hidden → p(x|z)."""

    data_dim: int
    latent_dim: int = 20
    hidden: tuple[int, ...] = (512, 256)
    activation: str = "relu"
    likelihood: str = "bernoulli"
    gaussian_scale: str = "network"
    min_scale: float = 1e-3
    prior: str = "standard_normal"
    family: str = "diagonal_normal"
    image_shape: tuple[int, ...] | None = field(default=None)

    def __post_init__(self) -> None:
        _checks.positive_int("data_dim", self.data_dim)
        _checks.positive_int("latent_dim", self.latent_dim)
        if isinstance(self.hidden, (str, bytes)) or not hasattr(self.hidden, "__iter__"):
            raise TypeError(f"hidden: expected a sequence of integers, got {self.hidden!r}")
        object.__setattr__(self, "hidden",
                           tuple(_checks.positive_int("hidden", h) for h in self.hidden))
        _checks.one_of("likelihood", self.likelihood, LIKELIHOOD_NAMES)
        _checks.one_of("gaussian_scale", self.gaussian_scale, ("network", "learned", "fixed"))
        _checks.positive_float("min_scale", self.min_scale)
        _checks.one_of("prior", self.prior, PRIOR_NAMES)
        _checks.one_of("family", self.family, FAMILY_NAMES)
        if self.image_shape is not None:
            object.__setattr__(self, "image_shape", tuple(int(s) for s in self.image_shape))

    def to_dict(self) -> dict:
        """JSON-serializable dict (tuples become lists)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> ModelConfig:
        """Inverse of :meth:`to_dict`; unknown keys are an error naming them."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"model config: unknown keys {unknown}; expected a subset of "
                             f"{sorted(known)}")
        data = dict(data)
        if data.get("hidden") is not None:
            data["hidden"] = tuple(data["hidden"])
        return cls(**data)
