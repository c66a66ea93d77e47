"""vaelab: variational autoencoders and variational inference on PyTorch.

Re-exports only; see the modules for the maths and the papers. Training lives in
``vaelab.fit.train.train``; a finished run is reopened with :func:`load`.

The re-exports are resolved on first use (PEP 562 ``__getattr__``), so ``import vaelab`` and
``vaelab --help`` do not pay for importing torch (seconds, on every call): ``vaelab.elbo`` imports
``vaelab.infer.objectives`` the first time it is touched, and ``from vaelab import elbo`` works
as before.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # what static tools see; at run time the names resolve lazily below
    from vaelab.config import ModelConfig, RunConfig, TrainConfig
    from vaelab.data import Dataset, load_dataset
    from vaelab.infer.objectives import ELBOTerms, elbo, elbo_terms, iwae_bound
    from vaelab.infer.schemes import (
        Amortized,
        Inference,
        PerDatapoint,
        SemiAmortized,
        build_inference,
        optimize_q,
    )
    from vaelab.measure.evaluate import LogLikelihoodEstimate, evaluate_model, log_likelihood
    from vaelab.measure.gaps import GapReport, report_gaps
    from vaelab.model.vae import VAE, Decoder, Encoder, LatentVariableModel, build_vae
    from vaelab.use.impute import impute
    from vaelab.use.trained import TrainedModel, load

__version__ = "0.1.0"

#: Where each re-exported name lives.
_EXPORTS = {
    "vaelab.config": ("ModelConfig", "RunConfig", "TrainConfig"),
    "vaelab.data": ("Dataset", "load_dataset"),
    "vaelab.infer.objectives": ("ELBOTerms", "elbo", "elbo_terms", "iwae_bound"),
    "vaelab.infer.schemes": ("Amortized", "Inference", "PerDatapoint", "SemiAmortized",
                             "build_inference", "optimize_q"),
    "vaelab.measure.evaluate": ("LogLikelihoodEstimate", "evaluate_model", "log_likelihood"),
    "vaelab.measure.gaps": ("GapReport", "report_gaps"),
    "vaelab.model.vae": ("VAE", "Decoder", "Encoder", "LatentVariableModel", "build_vae"),
    "vaelab.use.impute": ("impute",),
    "vaelab.use.trained": ("TrainedModel", "load"),
}
_HOME = {name: module for module, names in _EXPORTS.items() for name in names}
#: Subpackages reached as attributes: ``vaelab.fit(...)`` (a callable wing: train your own
#: networks, ``vaelab.fit.custom``) and ``vaelab.sklearn`` (the scikit-learn estimators).
_SUBMODULES = ("fit", "sklearn")


def __getattr__(name: str):
    """Import a re-exported name's module on first use (PEP 562)."""
    if name in _SUBMODULES:
        return importlib.import_module(f"vaelab.{name}")
    module = _HOME.get(name)
    if module is None:
        raise AttributeError(f"module 'vaelab' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_HOME) | set(_SUBMODULES))


__all__ = [
    "VAE",
    "Amortized",
    "Dataset",
    "Decoder",
    "ELBOTerms",
    "Encoder",
    "GapReport",
    "Inference",
    "LatentVariableModel",
    "LogLikelihoodEstimate",
    "ModelConfig",
    "PerDatapoint",
    "RunConfig",
    "SemiAmortized",
    "TrainConfig",
    "TrainedModel",
    "build_inference",
    "build_vae",
    "elbo",
    "elbo_terms",
    "evaluate_model",
    "impute",
    "iwae_bound",
    "load",
    "load_dataset",
    "log_likelihood",
    "optimize_q",
    "report_gaps",
]
