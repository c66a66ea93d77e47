"""Your own generative model and q(z | x), trained and measured as vaelab's own VAE.

Where :class:`vaelab.model.nets.FactoryNets` takes only the two networks and keeps vaelab's
family, prior and likelihood, a whole user model brings all of p_θ(x, z) = p(z) p_θ(x | z) and
q_φ(z | x) as torch distributions, the lecture's three parts (Kingma & Welling 2014). The run
config says ``net = "model"`` with ``net_options = {"factory": "pkg.mod:fn", "args": {...}}``;
vaelab calls (only with the caller's consent, :mod:`vaelab._trust`)

    factory(data_dim=D, latent_dim=L, image_shape=(C, H, W) or None, **args) → (model, q)

and wraps the pair in :class:`UserVAE`, a :class:`~vaelab.model.vae.VAE`, so the objectives,
the trainer, checkpoints, evaluation and the uses read it through the same protocol:

* ``model.prior()`` → a Distribution over z, batch [], event [L];
* ``model.decode(z)`` → p(x | z) for z [..., B, L]: a Distribution, batch [..., B], event [D];
* ``q(x)`` (its ``forward``) → q(z | x) for x [B, D]: batch [B], event [L], with ``rsample``
  and ``log_prob``;
* optional ``model.meaning_on(kind)`` → what log p(x | z) is on data of ``kind`` ("binary",
  "8-bit", "unit-interval", "continuous"): "probability", "bound", "density" or "score"
  (undeclared: a density on real-valued data, a score on discrete data, so no bits/dim);
* optional ``q.per_example(x)`` → (family, raw [B, P]) with ``family(raw)`` = q(z | x) and
  ``family.param_size`` = P: q's parameters free per example, which ``gaps`` and the refined
  proposals optimize (without it those refuse in one line).

θ is the model's parameters, φ the q's; both are saved in safetensors under ``decoder.model.``
and ``encoder.q.``. Only one latent layer, complete data and amortized inference: a
hierarchy, missing values and per-column standardization are the model's own business, so
they are refused in one line.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

import torch
from torch import nn
from torch.distributions import Distribution

from vaelab import _checks, _trust
from vaelab.config import ModelConfig
from vaelab.model.likelihoods import MEANINGS
from vaelab.model.vae import VAE

WHERE = "net_options.factory"


def _distribution(value: object, what: str, reference: str) -> Distribution:
    if not isinstance(value, Distribution):
        raise TypeError(f"{WHERE}: expected {what} of {reference!r} to return a "
                        f"torch.distributions.Distribution, got {type(value).__name__}")
    return value


class UserLikelihood:
    """What the user's log p(x | z) means on each kind of data, for what evaluate reports
    (``vaelab.measure.evaluate.likelihood_meaning``): the model's own ``meaning_on(kind)``
    when it declares one, else what vaelab can vouch for without knowing the model — a
    density on real-valued data, a score on discrete data (no bits/dim)."""

    def __init__(self, model: nn.Module, reference: str) -> None:
        self.model, self.name = model, reference

    def meaning_on(self, kind: str | None) -> str:
        declared = getattr(self.model, "meaning_on", None)
        if not callable(declared):
            return "density" if kind in ("continuous", "unit-interval") else "score"
        meaning = declared(kind)
        if meaning not in MEANINGS:
            raise ValueError(f"{WHERE}: expected model.meaning_on({kind!r}) of {self.name!r} "
                             f"to be one of {list(MEANINGS)}, got {meaning!r}")
        return meaning

    def remedy(self) -> str:
        return ("if your p(x | z) is a normalised probability of these data, say so with a "
                "method meaning_on(kind) on your model returning 'probability'")


class UserDecoder(nn.Module):
    """z [..., B, L] → the user's p(x | z); holds the user's model (θ)."""

    def __init__(self, model: nn.Module, data_dim: int, reference: str) -> None:
        super().__init__()
        self.model, self.data_dim, self.reference = model, data_dim, reference
        self.likelihood = UserLikelihood(model, reference)

    def forward(self, z: torch.Tensor) -> Distribution:
        return _distribution(cast(Any, self.model).decode(z), "model.decode(z)", self.reference)


class _PriorView(nn.Module):
    """``prior()`` of the user's model; owns no parameters (they are the decoder's module's),
    so the weights are saved once."""

    def __init__(self, decoder: UserDecoder) -> None:
        super().__init__()
        self._decoder = [decoder]        # a list: not registered as a submodule

    def forward(self) -> Distribution:
        decoder = self._decoder[0]
        return _distribution(cast(Any, decoder.model).prior(), "model.prior()", decoder.reference)


class UserEncoder(nn.Module):
    """x [B, D] → the user's q(z | x) (φ)."""

    def __init__(self, q: nn.Module, latent_dim: int, reference: str) -> None:
        super().__init__()
        self.q, self.latent_dim, self.reference = q, latent_dim, reference

    def forward(self, x: torch.Tensor) -> Distribution:
        return _distribution(self.q(x), "q(x)", self.reference)

    @property
    def family(self) -> object:
        raise ValueError("inference (--inference): your own q(z | x) (net 'model') is trained "
                         "amortized; expected 'amortized', got a scheme that needs vaelab's "
                         "family of q")

    def per_example(self, x: torch.Tensor) -> tuple[Callable, torch.Tensor]:
        """(family, raw) from ``q.per_example(x)``, raw detached; refused in one line when
        the user's q has none."""
        if not callable(getattr(self.q, "per_example", None)):
            raise ValueError(f"q: the gaps and the refined proposals optimize q's parameters "
                             f"per example; expected {self.reference!r}'s q to have "
                             f"per_example(x) -> (family, raw), got none")
        with torch.no_grad():
            family, raw = cast(Any, self.q).per_example(x)
        if not callable(family) or not isinstance(getattr(family, "param_size", None), int):
            raise TypeError(f"q.per_example: expected (family, raw) with family(raw) a "
                            f"Distribution and an integer family.param_size, got "
                            f"{type(family).__name__}")
        return family, raw.detach()


class UserVAE(VAE):
    """The user's (model, q) as a :class:`~vaelab.model.vae.VAE`: ``prior()``, ``decode(z)``,
    ``encode(x)``, θ = the model's parameters."""

    def __init__(self, model: nn.Module, q: nn.Module, data_dim: int, reference: str) -> None:
        decoder = UserDecoder(model, data_dim, reference)
        prior = _PriorView(decoder)
        latent = prior().event_shape
        if len(latent) != 1:
            raise ValueError(f"{WHERE}: expected model.prior() of {reference!r} over vectors "
                             f"z [L] (event_shape [L]), got event_shape {list(latent)}")
        super().__init__(prior, decoder, UserEncoder(q, int(latent[0]), reference))  # type: ignore[arg-type]

    def check_data(self, x: object, name: str = "x") -> torch.Tensor:
        """A float batch [B, data_dim], finite (the model's log_prob judges its support)."""
        return _checks.data_batch(name, x, self.data_dim)


@dataclass(frozen=True)
class UserModel:
    """The user's own model and q (``net = "model"``): ``factory`` names a function
    (``"mypkg.models:make_model"``) returning (model, q); ``args`` its JSON keywords."""

    factory: str
    args: dict

    #: What this network kind builds: a whole model (``vaelab.model.vae.build_vae`` asks).
    whole = True

    @classmethod
    def from_options(cls, *, factory: str | None = None, args: dict | None = None
                     ) -> UserModel:
        if factory is None:
            raise ValueError(f"{WHERE}: net 'model' needs the import path of your model "
                             f"factory, such as 'mypkg.models:make_model', got none")
        if args is not None and not isinstance(args, dict):
            raise TypeError(f"net_options.args: expected a dict of JSON values (the factory's "
                            f"keyword arguments), got {type(args).__name__}")
        return cls(_trust.check_reference(factory, WHERE), dict(args or {}))

    def model(self, config: ModelConfig) -> UserVAE:
        """The :class:`UserVAE` of ``config`` (its data resolved), from the user's factory
        (imported only when trusted); refuses what the model cannot be asked for."""
        _refuse_unsupported(config)
        make = _trust.import_factory(self.factory, WHERE)
        pair = make(data_dim=config.data_dim, latent_dim=config.latent_dim,
                    image_shape=None if config.image_shape is None else tuple(config.image_shape),
                    **self.args)
        if (not isinstance(pair, (tuple, list)) or len(pair) != 2
                or not all(isinstance(p, nn.Module) for p in pair)):
            raise TypeError(f"{WHERE}: expected {self.factory!r} to return (model, q), two "
                            f"torch modules, got {type(pair).__name__}")
        model = UserVAE(pair[0], pair[1], int(config.data_dim), self.factory)  # type: ignore[arg-type]
        if model.latent_dim != config.latent_dim:
            raise ValueError(f"latent_dim: expected the prior of {self.factory!r} over "
                             f"{config.latent_dim} latent values (the run's latent_dim), got "
                             f"{model.latent_dim}")
        model.config = config
        return model

    def pair(self, *args: object, **kwargs: object) -> tuple[nn.Module, nn.Module]:
        """Only :meth:`model`: the user's model is no pair of nets for vaelab's parts."""
        raise ValueError("net: 'model' is your whole model and q, not networks for vaelab's "
                         "family, prior and likelihood; expected one latent layer on complete "
                         "data with it")

    encoder = pair


def _refuse_unsupported(config: ModelConfig) -> None:
    """One line for each part vaelab would add around a user's model but cannot."""
    for key, value in (("family", config.family), ("prior", config.prior)):
        default = ModelConfig.__dataclass_fields__[key].default
        if value != default:
            raise ValueError(f"{key}: net 'model' brings its own p(z) and q(z | x); expected "
                             f"the default {default!r}, got {value!r}")
    if isinstance(config.latent_dim, tuple):
        raise ValueError(f"latent_dim: net 'model' is one latent layer (a hierarchy is the "
                         f"model's own business); expected an integer, got "
                         f"{list(config.latent_dim)}")
    if config.missing != "none":
        raise ValueError(f"missing: net 'model' is trained on complete data (vaelab's masked "
                         f"encoder cannot wrap your q); expected 'none', got {config.missing!r}")
    if config.standardize == "on":
        raise ValueError("standardize: net 'model' reads the data as given (standardize "
                         "inside your model); expected 'off' (set standardize = 'off'), got "
                         "'on'")
    if config.data_dim is None:
        raise ValueError("data_dim: net 'model' needs the data's dimension, got None")
