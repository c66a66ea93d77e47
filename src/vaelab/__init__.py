"""vaelab: variational autoencoders and variational inference on PyTorch.

Re-exports only; see the modules for the maths and the papers. Training lives in
``vaelab.train.train``; a finished run is reopened with :func:`load`.
"""

from vaelab.config import ModelConfig, RunConfig, TrainConfig
from vaelab.data import Dataset, load_dataset
from vaelab.evaluate import LogLikelihoodEstimate, log_likelihood
from vaelab.inference import Amortized, Inference
from vaelab.models import VAE, Decoder, Encoder, LatentVariableModel, build_vae
from vaelab.objectives import ELBOTerms, elbo, elbo_terms, iwae_bound
from vaelab.runs import TrainedModel, load

__version__ = "0.1.0"

__all__ = [
    "VAE",
    "Amortized",
    "Dataset",
    "Decoder",
    "ELBOTerms",
    "Encoder",
    "Inference",
    "LatentVariableModel",
    "LogLikelihoodEstimate",
    "ModelConfig",
    "RunConfig",
    "TrainConfig",
    "TrainedModel",
    "build_vae",
    "elbo",
    "elbo_terms",
    "iwae_bound",
    "load",
    "load_dataset",
    "log_likelihood",
]
