"""Training on incomplete data: the masked data, the model's standardization and the step.

``vaelab.fit.train`` switches here when ``ModelConfig.missing == "mask"`` (NaN marks missing
entries; Mattei & Frellsen 2019, MIWAE; with ``missing_model="self-masking"`` Ipsen, Mattei &
Frellsen 2021, not-MIWAE):

* :func:`load_masked_data` loads with NaN kept, checks the observed values only, splits, and
  binarizes statically with the NaN left in place;
* :func:`build_masked_model` builds the :class:`~vaelab.model.masked.MaskedVAE` and, for
  real-valued data with a Gaussian likelihood, standardizes each column on its observed
  training entries (saved in the weights);
* :class:`MaskedTrainStep` wraps the ordinary ``TrainStep`` (its optimizers, gradient reduction,
  finiteness test and clipping, checkpointed state) but computes the loss from
  ``vaelab.infer.masked``: objective "elbo" → −mean_b mean_k [log p(x_obs | z_k) − β (log q −
  log p(z_k))]; "iwae"/"iwae-dreg" → −mean_b log (1/K) Σ_k w_k with β-tempered weights (the
  MIWAE bound for β = 1; "iwae-dreg" trains q's parameters with the doubly-reparameterized
  gradient of that bound, ``vaelab.infer.objectives.dreg_surrogate``). The fast paths never
  run: they assume every entry is observed. Dynamic binarization happens here, with NaN kept, from
  torch's RNG (which the trainer reseeds every epoch, so resumed runs stay bit-identical).
  Reported: the true masked ELBO (β = 1) from the same draws; rate = the Monte Carlo KL.
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import cast

import torch

from vaelab import catalogue
from vaelab import data as data_
from vaelab.config import RunConfig
from vaelab.fit.step import StepResult, TrainStep
from vaelab.infer.masked import ELBOTerms, masked_draws
from vaelab.infer.objectives import dreg_surrogate
from vaelab.model.masked import MaskedVAE, build_masked_vae, fit_standardization


def _binarize_keep_nan(x: torch.Tensor, generator: torch.Generator | None = None
                       ) -> torch.Tensor:
    """Bernoulli(x) draws for observed entries of x [N, D] in [0, 1]; NaN stays NaN."""
    u = torch.rand(x.shape, generator=generator, dtype=x.dtype, device=x.device)
    return torch.where(torch.isnan(x), x, (u < x).to(x.dtype))


def _check_observed(ds: data_.Dataset, config: RunConfig) -> None:
    x = ds.x
    if bool(torch.isinf(x).any()):
        raise ValueError(f"data: expected finite values or NaN (missing), got "
                         f"{int(torch.isinf(x).sum())} infinite entries in {ds.name!r}")
    observed = x[~torch.isnan(x)]
    if observed.numel() == 0:
        raise ValueError(f"data: expected some observed values, got none in {ds.name!r} "
                         f"(every entry is missing)")
    _check_seen(x, ds.name, "", ds.image_shape is None)
    lo, hi = float(observed.min()), float(observed.max())
    if (lo < 0 or hi > 1) and config.train.binarize != "none":
        raise ValueError(f"binarize: {config.train.binarize!r} needs data in [0, 1], got values "
                         f"in [{lo:g}, {hi:g}]; use binarize='none'")
    likelihood = catalogue.get("likelihood", config.model.likelihood).resolve()
    if (lo < 0 or hi > 1) and likelihood.support == "unit-interval":
        raise ValueError(f"data: likelihood={config.model.likelihood!r} needs values in [0, 1], "
                         f"got values in [{lo:g}, {hi:g}]; use likelihood='gaussian' or rescale "
                         f"the data")


def _listed(indices: list[int], limit: int = 10) -> str:
    more = f" and {len(indices) - limit} more" if len(indices) > limit else ""
    return ", ".join(map(str, indices[:limit])) + more


def _check_seen(x: torch.Tensor, name: str, where: str, table: bool = True) -> None:
    """Refuse columns (of a ``table``) and rows of x [N, D] without one observed value, naming
    them: nothing can be learned about a column never seen, and its imputations would be
    invented. Pixels of images are not columns: a convolutional decoder shares its weights
    across positions, so a region never observed is filled in from what it learned elsewhere."""
    seen = ~torch.isnan(x)
    columns = [i + 1 for i in (~seen.any(0)).nonzero().flatten().tolist()] if table else []
    if columns:
        raise ValueError(f"data: expected every column to have an observed value{where}, got "
                         f"{len(columns)} column(s) missing in every row of {name!r}: "
                         f"{_listed(columns)} (1-based); remove them from the data")
    rows = [i + 1 for i in (~seen.any(1)).nonzero().flatten().tolist()]
    if rows:
        raise ValueError(f"data: expected every row to have an observed value{where}, got "
                         f"{len(rows)} row(s) with every entry missing in {name!r}: "
                         f"{_listed(rows)} (1-based, header excluded); remove them from the "
                         f"data or pass --drop-empty-rows")


def _drop_empty_rows(ds: data_.Dataset) -> data_.Dataset:
    """``ds`` without its rows whose every entry is missing, with a note naming them."""
    seen = (~torch.isnan(ds.x)).any(1)
    empty = [i + 1 for i in (~seen).nonzero().flatten().tolist()]
    if not empty:
        return ds
    kept = ds.subset(seen.nonzero().flatten())
    note = (f"note: --drop-empty-rows: trained without {len(empty)} row(s) of {ds.name!r} "
            f"with every entry missing: {_listed(empty)} (1-based)")
    return replace(kept, notes=(*kept.notes, note))


def load_masked_data(config: RunConfig, dataset: data_.Dataset | None
                     ) -> tuple[data_.Dataset, data_.Dataset | None]:
    """(train, validation) with NaN for missing entries; static binarization keeps NaN."""
    tc = config.train
    if dataset is None:
        dataset = data_.load_dataset(tc.data, "train", allow_missing=True,
                                     limit=tc.limit if tc.classes is None else None)
    elif not isinstance(dataset, data_.Dataset):
        raise TypeError(f"dataset: expected a vaelab.data.Dataset or None, "
                        f"got {type(dataset).__name__}")
    if tc.perturb_fraction:
        raise ValueError("perturb_fraction: expected 0 with missing='mask', "
                         f"got {tc.perturb_fraction:g}")
    dataset = data_.select_classes(dataset, tc.classes)
    if tc.limit is not None and tc.limit < len(dataset):
        dataset = dataset.subset(slice(0, tc.limit))
    x = dataset.x.to(torch.float32)
    if tc.drop_empty_rows:
        dataset = _drop_empty_rows(replace(dataset, x=x))
        x = dataset.x
    kind = dataset.kind or data_.infer_kind(torch.nan_to_num(x, nan=0.0))   # 0: in every kind
    dataset = replace(dataset, x=x, kind=kind)
    _check_observed(dataset, config)
    train, val = dataset, None
    if tc.val_fraction > 0:
        train, val = data_.train_val_split(dataset, tc.val_fraction, tc.seed)
        _check_seen(train.x, dataset.name, " among the training rows (--val-fraction "
                    f"{tc.val_fraction:g} holds some rows out)", dataset.image_shape is None)
    if tc.binarize == "static":
        gen = torch.Generator().manual_seed(tc.seed)
        train = replace(train, x=_binarize_keep_nan(train.x, gen), kind="binary")
    if val is not None and tc.binarize != "none":
        gen = torch.Generator().manual_seed(tc.seed + 1)
        val = replace(val, x=_binarize_keep_nan(val.x, gen), kind="binary")
    return train, val


def build_masked_model(config: RunConfig, x_train: torch.Tensor) -> MaskedVAE:
    """The MaskedVAE of ``config.model``; Gaussian on real-valued data → standardized columns."""
    if config.train.inference != "amortized":
        raise ValueError(f"inference: missing='mask' needs 'amortized' inference (the encoder "
                         f"reads the mask), got {config.train.inference!r}")
    if config.train.schedule != "joint":
        raise ValueError(f"schedule: missing='mask' trains θ and φ jointly, got "
                         f"{config.train.schedule!r}")
    model = build_masked_vae(config.model)
    observed = x_train[~torch.isnan(x_train)]
    real = observed.numel() > 0 and (float(observed.min()) < 0 or float(observed.max()) > 1)
    wanted = config.model.standardize       # "auto": a run from before it was recorded
    if wanted == "on" or (wanted == "auto" and model.decoder.likelihood.support == "real"
                          and real):
        fit_standardization(model, x_train)
    return model


class MaskedTrainStep:
    """``step(x, index, kl_weight) → StepResult`` on x [B, D] with NaN for missing entries.

    Args:
        step: the ordinary :class:`~vaelab.fit.step.TrainStep` built for the same model and
            inference (its optimizers and helpers are used; its own ``__call__`` never is).
        objective: "elbo", "iwae" or "iwae-dreg" (MIWAE's bound; DReG gradients for q).
        dynamic_binarize: draw Bernoulli(x) for the observed entries of every batch.
    """

    def __init__(self, step: TrainStep, *, objective: str = "elbo",
                 dynamic_binarize: bool = False) -> None:
        if not isinstance(step.model, MaskedVAE):
            raise TypeError(f"step.model: expected a MaskedVAE, got {type(step.model).__name__}")
        self.inner, self.objective = step, objective
        self.dynamic_binarize = dynamic_binarize

    def __getattr__(self, name: str):
        if name == "inner":
            raise AttributeError(name)
        return getattr(self.inner, name)

    def _draws(self, x: torch.Tensor, index: torch.Tensor | None, path_log_q: bool = False):
        model = cast(MaskedVAE, self.inner.model)    # this step is built for masked models only
        mask = ~torch.isnan(x)
        values = torch.where(mask, x, torch.zeros_like(x))
        q = self.inner.inference(x, index)
        logits = model.missing_logits if model.missingness is not None else None
        return masked_draws(model, q, values, mask, self.inner.num_samples,
                            missing_logits=logits, path_log_q=path_log_q)

    def __call__(self, x: torch.Tensor, index: torch.Tensor | None = None,
                 kl_weight: float = 1.0) -> StepResult:
        inner = self.inner
        inner.steps += 1
        if self.dynamic_binarize:
            x = _binarize_keep_nan(x)
        inner._zero_grad()
        with inner._autocast():          # --precision bf16: the forward pass under autocast
            d = self._draws(x, index, path_log_q=self.objective == "iwae-dreg")
        kl = d.log_q - d.log_prior
        lw = d.log_likelihood - kl_weight * kl
        if self.objective == "elbo":
            loss = -lw.mean()
        elif self.objective == "iwae-dreg":
            loss = -dreg_surrogate(lw, d.z, kl_weight).mean()
        else:
            loss = -(lw.logsumexp(0) - math.log(lw.shape[0])).mean()
        stats = torch.stack([loss, (d.log_likelihood - kl).mean(), kl.mean(),
                             d.log_likelihood.mean()]).detach().tolist()
        ok = inner._backprop(loss, math.isfinite(stats[0]), inner.params)
        if ok:
            for opt in inner._optimizers():
                opt.step()
        return StepResult(stats[1], stats[2], -stats[3], not ok)

    @torch.no_grad()
    def terms(self, x: torch.Tensor) -> ELBOTerms:
        """The masked ELBO terms [B] of a batch (validation), with the step's K draws."""
        d = self._draws(x, None)
        expected, kl = d.log_likelihood.mean(0), (d.log_q - d.log_prior).mean(0)
        return ELBOTerms(expected - kl, expected, kl)
