"""vaelab: variational autoencoders and variational inference on PyTorch.

Re-exports only; see the modules for the maths and the papers.
"""

from vaelab.config import ModelConfig
from vaelab.evaluate import LogLikelihoodEstimate, log_likelihood
from vaelab.inference import Amortized, Inference
from vaelab.models import VAE, Decoder, Encoder, LatentVariableModel, build_vae
from vaelab.objectives import ELBOTerms, elbo, elbo_terms, iwae_bound

__version__ = "0.1.0"

__all__ = [
    "VAE",
    "Amortized",
    "Decoder",
    "ELBOTerms",
    "Encoder",
    "Inference",
    "LatentVariableModel",
    "LogLikelihoodEstimate",
    "ModelConfig",
    "build_vae",
    "elbo",
    "elbo_terms",
    "iwae_bound",
    "log_likelihood",
]
