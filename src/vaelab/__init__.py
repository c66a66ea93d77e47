"""vaelab: variational autoencoders and variational inference on PyTorch.

Re-exports only; see the modules for the maths and the papers. Training lives in
``vaelab.fit.train.train``; a finished run is reopened with :func:`load`.
"""

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
from vaelab.use.trained import TrainedModel, load

__version__ = "0.1.0"

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
    "iwae_bound",
    "load",
    "load_dataset",
    "log_likelihood",
    "optimize_q",
    "report_gaps",
]
