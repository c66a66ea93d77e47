"""The training loop: maximize the ELBO over θ and φ, epoch by epoch, with resumable runs.

``train(config, out_dir)`` loads the data (seeded train/validation split, binarization),
builds the VAE and the inference scheme (amortized, per-datapoint or semi-amortized), and runs
``vaelab.fit.step.TrainStep`` over deterministic per-epoch batches (``vaelab.data.Batches``) with

* the objective (``objective``: ELBO, IWAE or IWAE-DReG, ``vaelab.infer.objectives``) with
  the KL weight β_t of ``vaelab.fit.kl_schedule`` (constant β, linear warm-up over
  ``kl_warmup_epochs``, Bowman et al. 2016, or cyclical, Fu et al. 2019) and free bits; the
  reported ELBO is always the true one while the optimized objective is e.g.
  E_q[log p(x|z)] − β_t·KL;
* a learning-rate schedule (constant, cosine over all steps, or exponential per epoch);
* the validation ELBO, rate and distortion after every epoch, with early stopping on it that
  keeps the best weights;
* non-finite steps skipped (TrainStep changes no weight then) and counted; after
  ``max_nonfinite_steps`` in a row training stops with :class:`TrainingError`, leaving the
  last checkpoint and model.safetensors (both finite) as they were.

Validation with ``inference="per-datapoint"``: that scheme trains no encoder, so there is no
q(z|x) for held-out x without a fresh optimization per example; the validation metrics are
reported as null and only the training ELBO is tracked (early stopping is refused by the
config). The held-out rows are still split off, so every inference scheme sees the same
training rows. Validation q noise comes from a fixed seed (the same draws every epoch) and
does not touch the training RNG stream.

Resume: every epoch ends with an atomic checkpoint (``vaelab.fit.runs``) holding the weights,
the optimizer moments, torch's RNG state and the counters. The batches depend only on
(seed, epoch) and torch's global RNG (the reparameterization noise) is reseeded at the start
of every epoch from (seed, epoch, rank), so ``train(..., resume=True)`` after an interruption
reaches the same final weights and metrics, bit for bit, as an uninterrupted run on the same
machine and thread count (and each rank of a distributed run draws its own noise).

Distributed: under ``torchrun`` (WORLD_SIZE > 1; ``vaelab.fit.distributed.init_from_env``) each
rank trains on its shard of every global batch (``Batches(rank=, world_size=)``), the
gradients are averaged across ranks in one flat all-reduce right after they are computed
(``TrainStep(reduce_gradients=vaelab.fit.distributed.average_gradients)``: DistributedDataParallel's
averaging, done once per step because the hand-derived gradient of the fast path never passes
through the autograd hooks DDP relies on; the state-dict keys stay those of the plain model),
the metrics are all-reduced and only rank 0 writes the run directory. On the fast path every
rank reaches the all-reduce even when its own loss is not finite, and the non-finite
gradient then reaches every rank, so all skip the step together; on the autograd paths a step
whose loss is non-finite on some ranks only would leave the others waiting in the all-reduce
(torchrun then stops the job). ``inference="per-datapoint"`` is refused with several ranks.
"""

from __future__ import annotations

import hashlib
import math
import os
import sys
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, replace
from functools import cached_property
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from vaelab import catalogue, data_forms
from vaelab import data as data_
from vaelab._runtime import exact_cuda, isolated_rng, resolve_device
from vaelab.config import RunConfig, TrainConfig
from vaelab.fit import distributed, runs
from vaelab.fit.ema import WeightAverage
from vaelab.fit.kl_schedule import kl_weight_for
from vaelab.fit.lr_schedule import ConstantLR
from vaelab.fit.masked import MaskedTrainStep, build_masked_model, load_masked_data
from vaelab.fit.resume import (
    Checkpointed,
    RunState,
    TrainingError,
    check_consistent,
    check_resumable,
)
from vaelab.fit.step import TrainStep, nan_to_none
from vaelab.infer.objectives import DIVERGED_ELBO, elbo_terms
from vaelab.infer.schemes import Inference, scheme_for
from vaelab.model import standardize
from vaelab.model.hierarchical import (
    HierarchicalVAE,
    collapse_from_metrics,
    collapse_warning,
    layer_metrics,
)
from vaelab.model.masked import build_model
from vaelab.model.vae import VAE

#: Validation rows per forward pass.
VAL_BATCH_SIZE = 4096
METRIC_KEYS = ("epoch", "step", "train_elbo", "train_rate", "train_distortion", "val_elbo",
               "val_rate", "val_distortion", "samples_per_s", "lr", "kl_weight",
               "skipped_steps", "seconds")


@dataclass(frozen=True)
class TrainResult:
    """What :func:`train` returns.

    Attributes:
        run_dir: the run directory.
        config: the resolved RunConfig (data_dim/image_shape from the data).
        model: the trained VAE (the best weights when early stopping is on).
        inference: the inference scheme it was trained with.
        metrics: one dict per epoch, as in metrics.jsonl.
        stopped_early: whether early stopping ended the run.
        best_epoch: 1-based epoch of the best validation ELBO (None without validation).
    """

    run_dir: Path
    config: RunConfig
    model: VAE
    inference: Inference
    metrics: list[dict]
    stopped_early: bool
    best_epoch: int | None
    #: resume=True on a run that had already finished all its epochs: the line saying so
    #: (nothing was trained or written); None otherwise.
    nothing_to_do: str | None = None


# --------------------------------------------------------------------------- schedules


def kl_weight(config: TrainConfig, step: int, steps_per_epoch: int) -> float:
    """Weight β_t of the KL term at global step ``step`` (0-based): the config's beta and
    kl_schedule (``vaelab.fit.kl_schedule.kl_weight_for``; linear: β · min(1, step / warm-up
    steps))."""
    return kl_weight_for(config, step, steps_per_epoch)


def learning_rate(config: TrainConfig, step: int, steps_per_epoch: int,
                  plateau_scale: float = 1.0) -> float:
    """Learning rate at global step ``step`` (0-based): lr × the chosen schedule's factor
    (``vaelab.fit.lr_schedule``; plateau: ``plateau_scale``, kept by the loop). With
    ``lr_warmup_epochs`` W > 0 the result is also multiplied by
    min(1, (step + 1) / (W · steps_per_epoch)).
    """
    lr = config.lr * lr_schedule_of(config).factor(step, steps_per_epoch, config.epochs,
                                                   plateau_scale)
    warmup = getattr(config, "lr_warmup_epochs", 0.0) * steps_per_epoch
    return lr * min(1.0, (step + 1) / warmup) if warmup > 0 else lr


def lr_schedule_of(config: TrainConfig) -> ConstantLR:
    """The learning-rate schedule a TrainConfig chose, built from its options."""
    entry, options = catalogue.chosen(config, "lr-schedule")
    return entry.build(**options)


def noise_seed(seed: int, epoch: int, rank: int) -> int:
    """Seed of torch's global RNG (the reparameterization noise) for one epoch on one rank."""
    state = np.random.SeedSequence([seed, epoch, rank, 0x5EED]).generate_state(1, np.uint64)
    return int(state[0]) & ((1 << 63) - 1)


# --------------------------------------------------------------------------- distributed


@dataclass(frozen=True)
class _Dist:
    """This process's place in a torchrun job (rank 0 of 1 when not distributed)."""

    rank: int = 0
    world_size: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    def all_reduce_sum(self, values: torch.Tensor) -> torch.Tensor:
        """Sum a tensor over ranks (identity when world_size == 1)."""
        if self.world_size > 1:
            torch.distributed.all_reduce(values)
        return values

    def barrier(self) -> None:
        if self.world_size > 1:
            torch.distributed.barrier()


def _distributed(device: torch.device) -> _Dist:
    """Join the torchrun job described by the environment, if any (``vaelab.fit.distributed``)."""
    rank, world_size = distributed.init_from_env(device)
    return _Dist(rank, world_size)


# --------------------------------------------------------------------------- data


@dataclass(frozen=True)
class _Data:
    train: data_.Dataset
    val: data_.Dataset | None
    #: the user's DataLoader, whose batches training takes as they come (else None)
    loader: torch.utils.data.DataLoader | None = None

    @cached_property
    def sha256(self) -> str:
        """Fingerprint of the training rows (checked on resume)."""
        x = self.train.x.detach().cpu().contiguous()
        return hashlib.sha256(x.numpy().data).hexdigest()


def _check_range(ds: data_.Dataset, config: RunConfig) -> str | None:
    """Refuse data the run cannot use, naming CLI flags (the rule of ``vaelab.data``); → a
    note when the likelihood gives only an unnormalised score on them (else None)."""
    from vaelab.model import likelihoods

    x = ds.x
    if config.model.missing != "none" and x.is_floating_point():   # check observed entries
        x = x[~torch.isnan(x)]
    if x.is_floating_point() and not bool(torch.isfinite(x).all()):
        raise ValueError(f"data: expected finite values, got {int((~torch.isfinite(x)).sum())} "
                         f"non-finite entries in {ds.name!r}")
    lo, hi = float(data_.to_unit(x.min())), float(data_.to_unit(x.max()))
    binarize = config.train.binarize
    if (lo < 0 or hi > 1) and binarize != "none":
        raise ValueError(f"data: --binarize {binarize} needs values in [0, 1], got "
                         f"{data_.kind_of(ds)} data with values in [{lo:g}, {hi:g}]; pass "
                         f"--binarize none (and --likelihood gaussian for real-valued data)")
    values = x if binarize == "none" else None     # what the model sees: checked as given
    return likelihoods.check_data_kind(config.model, _model_kind(ds, config.train), lo, hi,
                                       values, ds.x.shape[1])


def _model_kind(ds: data_.Dataset, tc: TrainConfig) -> str:
    """The kind of data the model sees: binary when binarized, else the dataset's kind."""
    if tc.binarize != "none":
        return "binary"
    return data_.infer_kind(ds.x) if getattr(tc, "perturb_fraction", 0) else data_.kind_of(ds)


def _model_input(ds: data_.Dataset, tc: TrainConfig) -> data_.Dataset:
    """8-bit data stay uint8 in memory (converted per batch by ``data.Batches``) unless the
    inputs are perturbed; everything else becomes float32."""
    if ds.x.dtype == torch.uint8 and not getattr(tc, "perturb_fraction", 0):
        return ds
    return replace(ds.floats(), x=ds.floats().x.to(torch.float32))


def _check_whole(config: RunConfig, train: data_.Dataset) -> None:
    """Check now what later commands will read of the data file, so that a problem that
    would stop ``vaelab evaluate`` stops training instead: its test split (loaded whole:
    every row parses, same values per example, finite and in range), and, when --limit or
    --classes kept only some training rows, all of them (evaluate reads every row of a file
    without a test split)."""
    tc, masked = config.train, config.model.missing != "none"
    if data_.is_named(tc.data):
        return                                   # our own files, checked by their MD5
    parts = [("test", "its test split")] if data_.has_split(tc.data, "test") else []
    if not parts and (tc.limit is not None or tc.classes is not None) and not masked:
        parts = [("train", "rows beyond --limit / --classes")]
    for split, what in parts:
        try:
            whole = data_.load_dataset(tc.data, split, keep_uint8=True, mmap=True,
                                       allow_missing=masked)
            if whole.x[0].numel() != train.x.shape[1]:
                raise ValueError(f"expected {train.x.shape[1]} values per example (as in the "
                                 f"training rows), got {whole.x[0].numel()}")
            if not masked:
                _check_range(_model_input(whole, tc), config)
        except ValueError as err:
            raise ValueError(f"data: {what} of {tc.data!r} (read later by vaelab evaluate) "
                             f"cannot be used: {err}") from None


def _load_data(config: RunConfig, dataset: object) -> _Data:
    """Load, check, split and (statically) binarize the data (``dataset``: any form of
    ``vaelab.data_forms``, or None for ``config.train.data``)."""
    tc = config.train
    if dataset is not None and not isinstance(dataset, data_.Dataset):
        loader = dataset if data_forms.is_loader(dataset) else None
        dataset = data_forms.as_dataset(dataset, where="dataset", seed=tc.seed,
                                        allow_missing=config.model.missing != "none")
        if loader is not None:      # its batches are the training batches (_loader_config)
            return replace(_load_data(config, dataset), loader=loader)
    if config.model.missing != "none":      # NaN marks missing entries (vaelab.fit.masked)
        return _Data(*load_masked_data(config, dataset))
    if dataset is None:
        dataset = data_.load_dataset(tc.data, "train", keep_uint8=True, mmap=True,
                                     limit=tc.limit if tc.classes is None else None)
    elif not isinstance(dataset, data_.Dataset):
        raise TypeError(f"dataset: expected a vaelab.data.Dataset or None, "
                        f"got {type(dataset).__name__}")
    dataset = data_.select_classes(dataset, tc.classes)     # the one-class protocol
    if tc.limit is not None and tc.limit < len(dataset):
        dataset = dataset.subset(slice(0, tc.limit))
    dataset = _model_input(dataset, tc)
    _check_range(dataset, config)
    dataset = data_.perturb(dataset, tc.perturb_fraction, tc.seed)   # a background model
    train, val = dataset, None
    if tc.val_fraction > 0:
        train, val = data_.train_val_split(dataset, tc.val_fraction, tc.seed)
    if tc.binarize == "static":
        train = data_.static_binarize(train, tc.seed)
    if val is not None and tc.binarize != "none":  # one fixed draw: comparable across epochs
        val = data_.static_binarize(val, tc.seed + 1)
    return _Data(train, None if val is None else val.floats())


# --------------------------------------------------------------------------- the loop


def _resolve_config(config: RunConfig | dict | None, run_dir: Path, resume: bool) -> RunConfig:
    if config is None and resume:
        return runs.read_config(run_dir)
    if isinstance(config, dict):
        return RunConfig.from_dict(config)
    if not isinstance(config, RunConfig):
        raise TypeError(f"config: expected a RunConfig or a dict, got {type(config).__name__}")
    return config




def _build_model(config: RunConfig, x_train: torch.Tensor) -> VAE:
    """The VAE of ``config.model``, its columns standardized on the training rows when the
    config says so (``vaelab.model.standardize``)."""
    model = build_model(config.model)
    if config.model.standardize == "on":
        standardize.fit_columns(model, x_train)
    return model


#: Draws a finished run's pictures: (run_dir, model, dataset, metrics, *, log) -> None.
FigureWriter = Callable[..., object]


class _Trainer(Checkpointed):
    """One training run; built by :func:`train`."""

    figures: FigureWriter | None = None
    on_epoch: Callable[[dict], object] | None = None

    def __init__(self, config: RunConfig, run_dir: Path, data: _Data, dist: _Dist,
                 device: torch.device, *, progress: bool, log: Callable[[str], object]) -> None:
        self.config, self.tc, self.run_dir, self.data = config, config.train, run_dir, data
        self.dist, self.device, self.progress, self.log = dist, device, progress, log
        torch.manual_seed(self.tc.seed)
        masked = config.model.missing != "none"       # incomplete data: vaelab.fit.masked
        self.model = (build_masked_model(config, data.train.x) if masked
                      else _build_model(config, data.train.x)).to(device)
        self.inference = self._build_inference().to(device)
        binarize = "dynamic" if self.tc.binarize == "dynamic" and not masked else "none"
        self.batches: data_.Batches | data_forms.LoaderBatches = (
            data_.Batches(data.train.x, self.tc.batch_size, seed=self.tc.seed, device=device,
                          binarize=binarize, rank=dist.rank, world_size=dist.world_size)
            if data.loader is None else
            data_forms.LoaderBatches(data.loader, data.train, seed=self.tc.seed, device=device,
                                     binarize=binarize, rank=dist.rank, where="dataset"))
        self.step = TrainStep(self.model, self.inference, lr=self.tc.lr, betas=self.tc.betas,
                              grad_clip=self.tc.grad_clip, schedule=self.tc.schedule,
                              phi_steps=self.tc.phi_steps, phi_lr=self.tc.phi_lr,
                              num_samples=self.tc.num_samples, objective=self.tc.objective,
                              free_bits=self.tc.free_bits,
                              compile=self.tc.compile, precision=self.tc.precision,
                              expected_steps=self.tc.epochs * len(self.batches),
                              reduce_gradients=(distributed.average_gradients
                                                if dist.world_size > 1 else None))
        if masked:   # the masked bound instead of the ELBO; no fast path
            self.step = MaskedTrainStep(self.step, objective=self.tc.objective,
                                        dynamic_binarize=self.tc.binarize == "dynamic")
        self.val_x = None if data.val is None else data.val.x[dist.rank::dist.world_size]
        self.val_x = None if self.val_x is None else self.val_x.to(device)
        self.state = RunState()
        self.best: dict[str, torch.Tensor] | None = None
        self.ema = (None if self.tc.ema_decay is None
                    else WeightAverage(self._weights(), self.tc.ema_decay))

    @cached_property
    def remedy(self) -> str:
        """What a divergence warning advises (the data's scale before the optimizer's)."""
        return divergence_remedy(self.config, self.data.train.x)

    def _build_inference(self) -> Inference:
        if self.tc.inference == "per-datapoint" and self.dist.world_size > 1:
            raise ValueError("inference: 'per-datapoint' is not supported with more than one "
                             "process (its table would differ between ranks)")
        return scheme_for(self.tc, self.model, len(self.data.train), training=True)

    # ---- one epoch

    def _progress_bar(self, epoch: int) -> tqdm:
        enabled = self.progress and self.dist.main and sys.stderr.isatty()
        return tqdm(total=len(self.batches), desc=f"epoch {epoch + 1}/{self.tc.epochs}",
                    leave=False, disable=not enabled, unit="batch", dynamic_ncols=True)

    def _one_step(self, x: torch.Tensor, index: torch.Tensor | None,
                  sums: list[float]) -> None:
        """One step; adds to ``sums`` in place (Python floats: no tensor per step)."""
        n = len(self.batches)
        lr = learning_rate(self.tc, self.state.step, n, self.state.lr_scale)
        self.step.set_lr(lr)
        result = self.step(x, index, kl_weight(self.tc, self.state.step, n))
        self.state.step += 1
        b = x.shape[0]
        sums[5] += b
        if not result.skipped:
            if self.ema is not None:
                self.ema.update()
            self.state.consecutive_nonfinite = 0
            sums[0] += result.elbo * b
            sums[1] += result.rate * b
            sums[2] += result.distortion * b
            sums[3] += b
            return
        self.state.consecutive_nonfinite += 1
        sums[4] += 1
        if self.state.consecutive_nonfinite >= self.tc.max_nonfinite_steps:
            raise TrainingError(
                f"training diverged: {self.state.consecutive_nonfinite} consecutive steps had a "
                f"non-finite loss or gradient (epoch {self.state.epoch + 1}, step "
                f"{self.state.step}); the run directory keeps the last finite checkpoint "
                f"(epoch {self.state.epoch}); try a smaller lr (now {self.tc.lr:g}) or grad_clip")

    def train_epoch(self, epoch: int) -> dict:
        """Run one epoch; → its training metrics (all-reduced over ranks)."""
        self.model.train()
        self.inference.train()
        sums = [0.0] * 6   # elbo, rate, distortion, n ok, skipped, n
        torch.manual_seed(noise_seed(self.tc.seed, epoch, self.dist.rank))
        start = time.perf_counter()
        with self._progress_bar(epoch) as bar:
            for i, (x, index) in enumerate(self.batches.epoch(epoch)):
                self._one_step(x, index, sums)
                bar.update(1)
                if i % 20 == 0 and sums[3] > 0:
                    seconds = time.perf_counter() - start
                    bar.set_postfix(elbo=f"{sums[0] / sums[3]:.2f}",
                                    samples_s=f"{sums[5] * self.dist.world_size / seconds:.0f}")
        seconds = time.perf_counter() - start
        sums = self.dist.all_reduce_sum(
            torch.tensor(sums, dtype=torch.float64, device=self.device)).cpu()
        mean = (sums[:3] / sums[3]).tolist() if sums[3] > 0 else [math.nan] * 3
        return {"train_elbo": mean[0], "train_rate": mean[1], "train_distortion": mean[2],
                "samples_per_s": float(sums[5]) / seconds, "skipped_steps": int(sums[4]),
                "train_seconds": seconds}

    @torch.no_grad()
    def validate(self) -> tuple[float, float, float] | None:
        """Mean validation (ELBO, rate, distortion); None without validation data."""
        if self.val_x is None or self.tc.inference == "per-datapoint":
            return None
        self.model.eval()
        self.inference.eval()
        sums = torch.zeros(4, dtype=torch.float64, device=self.device)
        with isolated_rng(self.tc.seed + 7919):
            for x in self._val_batches():
                terms = (self.step.terms(x) if isinstance(self.step, MaskedTrainStep) else
                         elbo_terms(self.model, self.inference(x, None), x,
                                    self.tc.num_samples, validate=False))
                sums += torch.stack([terms.elbo.sum(), terms.kl.sum(),
                                     -terms.expected_log_likelihood.sum(),
                                     torch.tensor(x.shape[0], device=self.device)]).double()
        sums = self.dist.all_reduce_sum(sums).cpu()
        return tuple((sums[:3] / sums[3]).tolist())

    def _val_batches(self) -> list[torch.Tensor]:
        """This process's validation rows in batches; none (not one empty batch) when a
        rank's share is empty, so it only joins the metrics' all-reduce."""
        return [] if self.val_x is None or not len(self.val_x) else list(
            self.val_x.split(VAL_BATCH_SIZE))

    def _early_stopping(self, val_elbo: float | None) -> None:
        s = self.state
        if val_elbo is None or not math.isfinite(val_elbo):
            s.epochs_since_best += 1
        elif s.best_val_elbo is None or val_elbo > s.best_val_elbo:
            s.best_val_elbo, s.best_epoch, s.epochs_since_best = val_elbo, s.epoch, 0
            if self.tc.early_stopping_patience is not None:
                self.best = {k: v.detach().clone() for k, v in self._eval_weights().items()}
        else:
            s.epochs_since_best += 1
        patience = self.tc.early_stopping_patience
        s.stopped_early = patience is not None and s.epochs_since_best >= patience
        schedule = lr_schedule_of(self.tc)
        if schedule.watches_validation:     # reduce on plateau: halve, then wait again
            s.lr_scale, s.plateau_epochs = schedule.after_epoch(
                s.lr_scale, s.plateau_epochs, s.epochs_since_best == 0)

    def _eval_weights(self) -> dict[str, torch.Tensor]:
        """The weights that are validated, kept as best and saved: the moving average when
        ``ema_decay`` is set, else the live weights."""
        return self.ema.average if self.ema is not None else self._weights()

    @contextmanager
    def _averaged(self):
        """Inside: the model holds the moving-average weights (no-op without EMA); the live
        weights come back on exit."""
        if self.ema is None:
            yield
            return
        live = {k: v.detach().clone() for k, v in self._weights().items()}
        self._load_weights(self.ema.average, "moving-average")
        try:
            yield
        finally:
            self._load_weights(live, "live")

    @torch.no_grad()
    def _layer_metrics(self) -> dict:
        """val_rate_per_layer / val_active_units_per_layer of a hierarchical model, else
        :meth:`_active_units`."""
        if not isinstance(self.model, HierarchicalVAE):
            return self._active_units()
        if self.val_x is None:
            return {}
        self.model.eval()
        self.inference.eval()
        with isolated_rng(self.tc.seed + 7919):
            qs = (self.inference(x, None) for x in self._val_batches())
            out = layer_metrics(self.model, qs, self.tc.num_samples, self.dist.all_reduce_sum)
        warning = collapse_warning(
            [i + 1 for i, a in enumerate(out.get("val_active_units_per_layer") or []) if a == 0],
            self.model.sizes, out.get("val_rate_per_layer"))
        if warning is not None and self.dist.main and self.state.epoch == self.tc.epochs:
            self.log(warning + " (validation set)")
        return out

    @torch.no_grad()
    def _active_units(self) -> dict:
        """{"val_active_units": the units whose q mean varies over this process's validation
        rows, Var_x E_q[z_u|x] > 0.01} of a one-layer model with an encoder, else {}: with the
        rate it tells posterior collapse (``hierarchical.collapse_from_metrics``)."""
        if self.val_x is None or self.tc.inference != "amortized" or len(self.val_x) < 2:
            return {}
        self.model.eval()
        self.inference.eval()
        devices = [self.device] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):   # a flow's mean may draw: keep the stream
            torch.manual_seed(self.tc.seed + 7919)
            means = torch.cat([self.inference(x, None).mean.reshape(len(x), -1)
                               for x in self.val_x.split(VAL_BATCH_SIZE)])
        return {"val_active_units": int((means.double().var(0) > 1e-2).sum())}

    def run_epoch(self) -> dict:
        """Train, validate, early-stopping bookkeeping, checkpoint, log; → the metrics row."""
        epoch, start = self.state.epoch, time.perf_counter()
        row = self.train_epoch(epoch)
        with self._averaged():
            val = self.validate()
            layers = self._layer_metrics()
        self.state.epoch = epoch + 1
        n = len(self.batches)
        row = {"epoch": epoch + 1, "step": self.state.step, **row,
               "val_elbo": None if val is None else val[0],
               "val_rate": None if val is None else val[1],
               "val_distortion": None if val is None else val[2],
               "lr": learning_rate(self.tc, self.state.step - 1, n, self.state.lr_scale),
               "kl_weight": kl_weight(self.tc, self.state.step - 1, n),
               "seconds": time.perf_counter() - start}
        row.pop("train_seconds")
        row = {k: nan_to_none(row[k]) if isinstance(row[k], float) else row[k]
               for k in METRIC_KEYS}
        row.update(layers)      # a hierarchy: rate and active units per layer
        self._early_stopping(row["val_elbo"])
        self.state.metrics.append(row)
        self.save()
        if self.dist.main:
            self.log(_describe(row, self.tc.epochs, n * self.dist.world_size, self.remedy))
            if self.on_epoch is not None:
                self.on_epoch(row)
        return row

    def finish(self) -> None:
        """Restore the best weights (early stopping) and write the figures (rank 0)."""
        if self.best is not None:
            self._load_weights(self.best, "best")
        elif self.ema is not None:
            self._load_weights(self.ema.average, "moving-average")
        if self.dist.main:
            model = self.model
            if self.tc.inference == "per-datapoint":  # its encoder was never trained
                model = VAE(self.model.prior_module, self.model.decoder, None)
            if self.figures is not None:
                self.figures(self.run_dir, model, self.data.val or self.data.train.floats(),
                             self.state.metrics, log=self.log)


#: What to try when training diverges and the data's scale is not to blame.
OPTIMIZER_REMEDY = "try a smaller --lr or --grad-clip"


def divergence_remedy(config: RunConfig, x_train: torch.Tensor) -> str:
    """The advice for a diverged run: the data's scale first (a Gaussian on unstandardized
    columns of wildly different scales), the optimizer's settings only after that."""
    if (config.model.likelihood != "gaussian" or config.model.standardize == "on"
            or not x_train.is_floating_point()):
        return OPTIMIZER_REMEDY
    problem = standardize.scale_problem(x_train)
    if problem is None:
        return OPTIMIZER_REMEDY
    return (f"check the data's scale first: {problem}; pass --standardize on (each column "
            f"to mean 0, standard deviation 1, undone on every output), then if it still "
            f"diverges {OPTIMIZER_REMEDY}")


def divergence_warning(row: dict, steps_per_epoch: int,
                       remedy: str = OPTIMIZER_REMEDY) -> str | None:
    """Why this epoch's numbers cannot be trusted (most steps skipped as
    non-finite, or an astronomically low ELBO), with ``remedy``; or None."""
    skipped = row["skipped_steps"]
    if steps_per_epoch > 0 and 2 * skipped > steps_per_epoch:
        return (f"training diverged: {skipped} of {steps_per_epoch} steps skipped (non-finite) "
                f"in epoch {row['epoch']}; {remedy}")
    low = [v for v in (row["train_elbo"], row["val_elbo"]) if v is not None]
    if any(v < DIVERGED_ELBO for v in low):
        return f"training diverged: ELBO {min(low):.6g} in epoch {row['epoch']}; {remedy}"
    return None


def _describe(row: dict, epochs: int, steps_per_epoch: int = 0,
              remedy: str = OPTIMIZER_REMEDY) -> str:
    def fmt(v: float | None) -> str:
        return "n/a" if v is None else f"{v:.6g}" if abs(v) >= 1e6 else f"{v:.2f}"

    val = "" if row["val_elbo"] is None else f"  val ELBO {fmt(row['val_elbo'])}"
    warning = divergence_warning(row, steps_per_epoch, remedy)
    return (f"epoch {row['epoch']}/{epochs}  ELBO {fmt(row['train_elbo'])}{val}  "
            f"rate {fmt(row['train_rate'])}  distortion {fmt(row['train_distortion'])}  "
            f"{row['samples_per_s']:.0f} samples/s  skipped {row['skipped_steps']}  "
            f"{row['seconds']:.1f} s" + ("" if warning is None else f"  WARNING: {warning}"))


# --------------------------------------------------------------------------- entry point


def train(config: RunConfig | dict | None, out_dir: str | os.PathLike, *, resume: bool = False,
          overwrite: bool = False, progress: bool = True, dataset: object = None,
          log: Callable[[str], object] | None = print,
          figures: FigureWriter | None = None,
          on_epoch: Callable[[dict], object] | None = None) -> TrainResult:
    """Train a VAE and write a run directory (see ``vaelab.fit.runs`` for its format).

    Args:
        config: a RunConfig or a config dict (``{"model": {...}, "train": {...}}``, dotted or
            bare keys); with ``resume=True`` it may be None (the run's own config is used).
        out_dir: the run directory; created if needed.
        resume: continue the run in ``out_dir`` from its last complete checkpoint (its config
            must match, except epochs/device/compile/precision).
        overwrite: replace the run in ``out_dir``. The old run's files are deleted only once
            the data are loaded and the model is built, just before the new config.json is
            written (config.json first, so the folder never mixes two runs).
        progress: show a tqdm bar (only on a terminal).
        dataset: train on these data instead of loading ``config.train.data``: a numpy
            array, a torch tensor, a pandas DataFrame (numeric columns; their names are kept
            in the run), a map-style torch Dataset (items x or (x, y)), a DataLoader (its
            batches are used as they come: no re-batching, no validation rows) or a
            ``vaelab.data.Dataset`` (``vaelab.data_forms``; the same kinds and checks for all).
        log: called with one line per epoch and notes; None for silence.
        figures: called once at the end on rank 0 as ``figures(run_dir, model, dataset,
            metrics, log=log)`` to draw the run's pictures; the CLI passes
            ``vaelab.show.plots.write_run_figures`` (injected, because ``fit`` sits below
            ``show`` in the import order). None draws nothing.
        on_epoch: called on rank 0 with each epoch's metrics row once it is saved (e.g. the
            CLI's ``--tensorboard`` logger).

    Raises:
        ValueError: invalid config or data; ``runs.RunError`` (a ValueError) for a run
            directory that is taken, unwritable, corrupt or incompatible (nothing is touched).
        TypeError: a config value of the wrong type.
        TrainingError: training diverged (the last checkpoint is kept).
    """
    log = log or (lambda _line: None)
    run_dir = Path(out_dir).expanduser()
    if resume and (run_dir / runs.CONFIG_FILE).is_file():
        check_consistent(run_dir)     # never resume a folder that mixes two runs
    config = _where_data_are(_resolve_config(config, run_dir, resume), run_dir, resume)
    device = resolve_device(config.train.device)
    if device.type == "cuda":       # what a bit-identical resume needs there
        exact_cuda()
    dist = _distributed(device)
    if dist.main:
        for note in speed_notes(config.train, device):   # stderr even when log is silent
            print(note, file=sys.stderr, flush=True)
        run_dir = runs.prepare_run_dir(run_dir, resume=resume, overwrite=overwrite)
    if data_forms.is_loader(dataset):
        config = _loader_config(config, log)
    data = _load_data(config, dataset)
    if dataset is None:
        _check_whole(config, data.train)
    config = replace(config, model=config.model.with_data(
        data.train.x.shape[1], data.train.image_shape, _model_kind(data.train, config.train)))
    if not resume:     # "auto" decided and recorded; a resumed run keeps what it recorded
        config = replace(config, model=standardize.resolve(config.model))
    elif config.model.standardize == "auto":
        recorded = runs.read_config(run_dir).model.standardize
        config = replace(config, model=replace(config.model, standardize=recorded))
    if dist.main:
        for note in (*data.train.notes, _check_range(data.train, config)):
            if note:
                log(note)
    stored = runs.read_config(run_dir) if resume else None
    if stored is not None:
        check_resumable(stored, config, run_dir)
    trainer = _Trainer(config, run_dir, data, dist, device, progress=progress, log=log)
    trainer.figures, trainer.on_epoch = figures, on_epoch
    if config.train.inference == "per-datapoint" and data.val is not None:
        log("note: inference='per-datapoint' trains no encoder, so no validation ELBO is "
            "reported (val_* are null)")
    checkpoint = runs.read_checkpoint(run_dir) if resume else None
    if checkpoint is not None:
        trainer.restore(*checkpoint)
        check_resume_epochs(trainer.state.epoch, stored, config, run_dir)
        if trainer.state.epoch >= config.train.epochs or trainer.state.stopped_early:
            return _nothing_to_do(trainer, log)
        trainer.write_outputs()
        log(f"resuming {run_dir} after epoch {trainer.state.epoch}")
    if dist.main and (stored is None or stored != config):
        if overwrite:
            runs.clear_run(run_dir)
        runs.write_config(run_dir, config, dataset=_data_info(data))
    dist.barrier()
    return _run(trainer)


def _loader_config(config: RunConfig, log: Callable[[str], object]) -> RunConfig:
    """The config for training on a DataLoader's own batches: no rows can be held out of
    them or chosen, binarized once or perturbed, and no table of per-row q is kept."""
    tc = config.train
    refused = {"limit": tc.limit is not None, "classes": tc.classes is not None,
               "perturb_fraction": bool(tc.perturb_fraction), "binarize": tc.binarize == "static",
               "inference": tc.inference == "per-datapoint"}
    for name, bad in refused.items():
        if bad:
            raise ValueError(f"{name}: a DataLoader's batches are used as they come, so "
                             f"expected the default {name} with one, got {getattr(tc, name)!r}; "
                             f"pass the data as an array, DataFrame or Dataset instead")
    if tc.val_fraction > 0:
        log(f"note: a DataLoader's batches are used as they come, so no validation rows are "
            f"held out of them (val_fraction {tc.val_fraction:g} → 0; val_* are null)")
    return replace(config, train=replace(tc, val_fraction=0.0))


def _where_data_are(config: RunConfig, run_dir: Path, resume: bool) -> RunConfig:
    """A new run records its data path made absolute (usable from any folder); a resumed run
    keeps what it recorded when ``config`` names the same data (a relative path included)."""
    data = data_.location(config.train.data)
    if resume and (run_dir / runs.CONFIG_FILE).is_file():
        stored = runs.read_config(run_dir).train.data
        data = stored if data_.location(stored) == data else config.train.data
    return replace(config, train=replace(config.train, data=data))


def speed_notes(config: TrainConfig, device: torch.device) -> list[str]:
    """One line per option that will make this run slow on ``device`` (said once, at start).

    On a CPU, ``precision="bf16"`` replaces the hand-derived fp32 gradient with autograd under
    bfloat16 autocast (about 6x slower than fp32 measured on a 2-core AMD EPYC, which has
    avx512_bf16), and ``compile=True`` spends about 50 s compiling before its first step for
    a step no faster than the eager fast path: a user who asked for either should know.
    """
    notes = []
    if device.type == "cpu" and config.precision == "bf16":
        notes.append("note: --precision bf16 on a CPU trains several times slower than fp32 "
                     "(the fast hand-derived gradient needs fp32); bf16 is meant for GPUs")
    if device.type == "cpu" and config.compile is True:
        notes.append("note: --compile on a CPU spends about a minute compiling the step, "
                     "which then runs no faster than the default eager step")
    return notes


def check_resume_epochs(finished: int, stored: RunConfig | None, config: RunConfig,
                        run_dir: Path) -> None:
    """RunError (nothing written yet) unless resuming to ``config.train.epochs`` keeps the
    run directory consistent with itself (its weights, metrics and config must describe the
    same run).

    Fewer epochs than the ``finished`` ones are refused: the weights and metrics.jsonl hold
    them, and config.json would say otherwise. More epochs extend the run, except with the
    cosine learning-rate schedule, whose finished epochs decayed towards the old end.
    """
    wanted = config.train.epochs
    if wanted < finished:
        raise runs.RunError(f"epochs (--epochs): the run at {str(run_dir)!r} has already "
                            f"finished {finished} epochs (its weights and metrics.jsonl hold "
                            f"them); expected --epochs >= {finished} to extend it, got {wanted}")
    old = None if stored is None else stored.train.epochs
    if (old is not None and wanted != old and finished > 0
            and config.train.lr_schedule == "cosine"):
        raise runs.RunError(f"epochs (--epochs): the run at {str(run_dir)!r} decays its "
                            f"learning rate on a cosine over {old} epochs, {finished} of them "
                            f"done; changing it to {wanted} would contradict them; expected "
                            f"--epochs {old}, or start a new run")


def _data_info(data: _Data) -> dict:
    info = {"name": data.train.name, "num_train": len(data.train),
            "num_val": 0 if data.val is None else len(data.val)}
    if data.train.columns is not None:       # a DataFrame's column names, for the outputs
        info["columns"] = list(data.train.columns)
    return info


def _nothing_to_do(trainer: _Trainer, log: Callable[[str], object]) -> TrainResult:
    """Resume of a finished run trains and writes nothing (unless its outputs lag
    behind its checkpoint, after a kill between the two)."""
    state, run_dir = trainer.state, trainer.run_dir
    try:
        stale = len(runs.read_metrics(run_dir)) != len(state.metrics)
    except ValueError:
        stale = True
    if stale:
        trainer.write_outputs()
    if state.stopped_early and state.epoch < trainer.tc.epochs:
        line = (f"nothing to do: {run_dir} stopped early after {state.epoch} epochs "
                f"(--early-stopping); start a new run to train it further")
    else:
        line = (f"nothing to do: {run_dir} already finished {state.epoch} epochs (pass "
                f"--epochs M > {state.epoch} to extend it)")
    log(line)
    return TrainResult(run_dir, trainer.config, trainer.model, trainer.inference,
                       list(state.metrics), state.stopped_early, state.best_epoch,
                       nothing_to_do=line)


def _divergence_summary(metrics: list[dict], steps_per_epoch: int,
                        remedy: str = OPTIMIZER_REMEDY) -> str | None:
    """One line for the end of training when some epochs diverged, else None (the per-epoch
    warnings scroll away)."""
    bad = [row["epoch"] for row in metrics if divergence_warning(row, steps_per_epoch)]
    if not bad:
        return None
    return (f"warning: training diverged in epoch(s) {', '.join(map(str, bad))} of "
            f"{len(metrics)} (most steps skipped as non-finite or an astronomically low ELBO); "
            f"the weights are not trustworthy: {remedy}")


def _run(trainer: _Trainer) -> TrainResult:
    state = trainer.state
    while state.epoch < trainer.tc.epochs and not state.stopped_early:
        trainer.run_epoch()
    if state.stopped_early:
        trainer.log(f"early stopping after epoch {state.epoch}: best val ELBO "
                    f"{state.best_val_elbo:.2f} at epoch {state.best_epoch}")
    trainer.finish()
    summary = _divergence_summary(state.metrics,   # skipped: summed over ranks
                                  len(trainer.batches) * trainer.dist.world_size,
                                  trainer.remedy)
    if summary is not None and trainer.dist.main:   # stderr even under --quiet
        print(summary, file=sys.stderr, flush=True)
    collapse = (None if isinstance(trainer.model, HierarchicalVAE) or not state.metrics
                else collapse_from_metrics(state.metrics[-1], (trainer.model.latent_dim,)))
    if collapse is not None and summary is None and trainer.dist.main:   # hierarchies: per layer
        print(collapse, file=sys.stderr, flush=True)
    trainer.dist.barrier()
    return TrainResult(trainer.run_dir, trainer.config, trainer.model, trainer.inference,
                       list(state.metrics), state.stopped_early, state.best_epoch)
