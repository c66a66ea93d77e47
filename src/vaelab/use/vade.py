"""Clusters as in VaDE: a mixture prior initialised by a GMM on a pretrained model's codes,
fine-tuned with the ELBO, its responsibilities as the clusters (Jiang, Zheng, Tan, Tang & Zhou
2017, "Variational Deep Embedding"; Dilokthanakul et al. 2016 train the same mixture prior).

The recipe of VaDE, on a model trained first with any prior:

1. encode the training rows: codes μ(x_n) = E_q[z | x_n];
2. fit a Gaussian mixture with diagonal covariances to the codes (scikit-learn
   ``GaussianMixture``, EM with k-means starts) and make it the prior:
   p(z) = Σ_c π_c N(z; μ_c, diag σ_c²) (:class:`vaelab.model.priors.MixtureOfGaussians`);
3. fine-tune encoder, decoder and prior together by maximizing the ELBO
   E_q[log p(x | z)] − KL(q(z | x) ‖ p(z)) (the KL to a mixture is Monte Carlo);
4. assign each example to argmax_c p(c | z) ∝ π_c N(z; μ_c, σ_c²) at z = its code
   (:func:`vaelab.use.cluster.prior_responsibilities`).

Step 2 is why VaDE trains at all: started from random components, the mixture prior's
clusters collapse or stay empty. The fine-tuning loop is a small Adam loop here rather than
``vaelab.fit``'s (which trains a run from its config and writes a run folder): it adapts a
loaded model in memory, whose prior has just been swapped. VaDE's entropy or cluster-balance
terms are not added.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from vaelab import _checks, data_forms
from vaelab._runtime import device_of, isolated_rng
from vaelab.infer.objectives import elbo
from vaelab.model.priors import MixtureOfGaussians
from vaelab.use.cluster import prior_responsibilities
from vaelab.use.latent_scores import codes


@dataclass(frozen=True)
class VadeOptions:
    """Fine-tuning settings: ``epochs`` passes over the training rows (0: the GMM prior
    alone), Adam step ``lr``, ``batch_size`` rows per step, ``num_samples`` draws of z per
    ELBO; ``n_init`` EM restarts of the GMM."""

    epochs: int = 10
    lr: float = 5e-4
    batch_size: int = 128
    num_samples: int = 1
    n_init: int = 5

    def __post_init__(self) -> None:
        _checks.non_negative_int("epochs", self.epochs)
        for name in ("batch_size", "num_samples", "n_init"):
            _checks.positive_int(name, getattr(self, name))
        _checks.positive_float("lr", self.lr)


@dataclass
class VadeResult:
    """What :func:`vade` found: the fine-tuned ``model`` (a copy; its prior is the mixture),
    the scikit-learn ``gmm`` that initialised the prior, and the mean training ELBO after each
    epoch (``history``, nats)."""

    model: Any
    gmm: Any
    history: list[float]


def fit_gmm(z: object, clusters: int, *, seed: int = 0, n_init: int = 5) -> Any:
    """sklearn ``GaussianMixture`` (diagonal covariances) fitted to codes z [N, L]."""
    from sklearn.mixture import GaussianMixture

    z = _checks.to_numpy(z, np.float64)
    clusters = _checks.positive_int("clusters", clusters)
    if z.ndim != 2 or clusters > z.shape[0]:
        raise ValueError(f"clusters (--clusters): expected at most the {z.shape[0]} training "
                         f"codes, got {clusters}")
    return GaussianMixture(clusters, covariance_type="diag", n_init=n_init,
                           random_state=_checks.non_negative_int("seed", seed)).fit(z)


def mixture_prior(gmm: Any) -> MixtureOfGaussians:
    """A :class:`MixtureOfGaussians` equal to a fitted diagonal ``GaussianMixture``:
    π = ``weights_``, μ = ``means_``, σ² = ``covariances_`` (float32)."""
    if getattr(gmm, "covariance_type", None) != "diag":
        raise ValueError(f"gmm: expected a fitted GaussianMixture with covariance_type 'diag', "
                         f"got {getattr(gmm, 'covariance_type', type(gmm).__name__)!r}")
    clusters, latent_dim = gmm.means_.shape
    prior = MixtureOfGaussians(latent_dim, clusters)
    scale = np.sqrt(gmm.covariances_)
    with torch.no_grad():
        prior.logits.copy_(torch.as_tensor(np.log(gmm.weights_)))
        prior.component_loc.copy_(torch.as_tensor(gmm.means_))
        # softplus⁻¹(σ) = log(expm1(σ)), the prior's own parametrisation of σ
        prior.raw_scale.copy_(torch.as_tensor(scale + np.log(-np.expm1(-scale))))
    return prior


def fine_tune(model: Any, x: torch.Tensor, options: VadeOptions, *, seed: int = 0,
              progress: Callable[[str], object] | None = None) -> list[float]:
    """Maximize the mean ELBO of ``model`` (encoder, decoder and prior) on rows x [N, D] for
    ``options.epochs`` epochs of shuffled mini-batches; → the mean ELBO of each epoch."""
    parameters = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(parameters, lr=options.lr)
    history: list[float] = []
    model.train()
    with isolated_rng(seed):
        for epoch in range(options.epochs):
            total = 0.0
            for index in torch.randperm(x.shape[0]).split(options.batch_size):
                batch = x[index.to(x.device)]
                bound = elbo(model, model.encoder(batch), batch, options.num_samples,
                             validate=False)
                optimizer.zero_grad()
                (-bound.mean()).backward()
                optimizer.step()
                total += float(bound.detach().sum())
            history.append(total / x.shape[0])
            if progress is not None:
                progress(f"VaDE epoch {epoch + 1}/{options.epochs}: ELBO {history[-1]:.2f}")
    model.eval()
    return history


def vade(model: Any, x: torch.Tensor, clusters: int, *, options: VadeOptions | None = None,
         seed: int = 0, progress: Callable[[str], object] | None = None) -> VadeResult:
    """VaDE from a pretrained one-layer ``model`` and its training rows x [N, D] (module
    docstring): a copy of the model with the GMM's mixture prior, fine-tuned; the input model
    is left as it was. Raises ValueError (one line) for a model without an encoder or a
    single prior to replace (a hierarchy)."""
    options = options or VadeOptions()
    if not hasattr(model, "prior_module") or getattr(model, "encoder", None) is None:
        raise ValueError("model (--method vade): VaDE replaces the prior of a model with one "
                         "latent layer and an encoder; expected a VAE (not a hierarchy, not "
                         f"per-datapoint inference), got {type(model).__name__}")
    model = copy.deepcopy(model)
    x = model.check_data(data_forms.as_rows(x), "x").to(device_of(model))
    gmm = fit_gmm(codes(model.encoder, x).cpu(), clusters, seed=seed, n_init=options.n_init)
    parameter = next(model.parameters())
    model.prior_module = mixture_prior(gmm).to(parameter.device, parameter.dtype)
    history = fine_tune(model, x, options, seed=seed, progress=progress)
    return VadeResult(model, gmm, history)


def assign(model: Any, x: torch.Tensor, batch_size: int = 500
           ) -> tuple[torch.Tensor, np.ndarray, torch.Tensor]:
    """(codes [N, L], clusters int64 [N], responsibilities p(c | z) [N, K]) of rows x under a
    model whose prior is a mixture (e.g. :func:`vade`'s)."""
    x = model.check_data(data_forms.as_rows(x), "x").to(device_of(model))
    z = codes(model.encoder, x, batch_size)
    resp = prior_responsibilities(model.prior(), z)
    return z, resp.argmax(-1).cpu().numpy().astype(np.int64), resp



def vade_clusters(model: Any, train: torch.Tensor, x: torch.Tensor, clusters: int, *,
                  options: VadeOptions | None = None, seed: int = 0,
                  progress: Callable[[str], object] | None = None
                  ) -> tuple[str, torch.Tensor, np.ndarray]:
    """(how, codes [N, L], clusters [N]) of rows x [N, D] by :func:`vade` fitted on the
    training rows ``train`` — what ``vaelab cluster --method vade`` reports."""
    options = options or VadeOptions()
    result = vade(model, train, clusters, options=options, seed=seed, progress=progress)
    z, found, _ = assign(result.model, x)
    how = (f"VaDE: mixture prior from a GMM on {train.shape[0]} training codes, "
           f"{options.epochs} epochs of ELBO fine-tuning, p(c | z)")
    return how, z, found
