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

import math
import os
import sys
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, replace
from functools import cached_property
from pathlib import Path
from typing import cast

import torch
from tqdm import tqdm

from vaelab import data as data_
from vaelab import data_forms
from vaelab._collectives import all_reduce
from vaelab._runtime import exact_cuda, resolve_device
from vaelab.config import RunConfig
from vaelab.data.condition import pack
from vaelab.fit import conditioned, data_init, distributed, runs
from vaelab.fit.ema import WeightAverage
from vaelab.fit.kl_schedule import warmup_warning
from vaelab.fit.lr_schedule import PlateauLR
from vaelab.fit.masked import MaskedTrainStep, build_masked_model
from vaelab.fit.progress import (
    _describe,
    _divergence_summary,
    divergence_remedy,
    speed_notes,
)
from vaelab.fit.resume import (
    Checkpointed,
    RunState,
    TrainingError,
    check_consistent,
    check_resumable,
    check_resume_epochs,
    continues_after_restart,
)
from vaelab.fit.schedules import kl_weight, learning_rate, lr_schedule_of, noise_seed
from vaelab.fit.step import TrainStep, nan_to_none
from vaelab.fit.train_data import (
    _check_range,
    _check_whole,
    _Data,
    _data_info,
    _load_data,
    _loader_config,
    _model_kind,
    _where_data_are,
    mixed_table,
)
from vaelab.fit.train_stream import StreamedData, load_streamed
from vaelab.fit.validation import VAL_BATCH_SIZE as VAL_BATCH_SIZE  # tests read it here
from vaelab.fit.validation import Validated
from vaelab.infer.objectives import elbo_terms
from vaelab.infer.schemes import Inference, scheme_for
from vaelab.model import standardize
from vaelab.model.conditional import ConditionalVAE
from vaelab.model.hierarchical import HierarchicalVAE, collapse_from_metrics
from vaelab.model.masked import build_model
from vaelab.model.vae import VAE

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
    #: the end-of-training warnings (divergence, posterior collapse): printed to stderr
    #: unless ``log`` was None, and kept here for a caller that reports them its own way
    #: (``vaelab tune`` names the trial and records them in study.json).
    warnings: tuple[str, ...] = ()


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
            all_reduce(values)
        return values

    def barrier(self) -> None:
        if self.world_size > 1:
            torch.distributed.barrier()


def _distributed(device: torch.device) -> _Dist:
    """Join the torchrun job described by the environment, if any (``vaelab.fit.distributed``)."""
    rank, world_size = distributed.init_from_env(device)
    return _Dist(rank, world_size)


# --------------------------------------------------------------------------- the loop


def _resolve_config(config: RunConfig | dict | None, run_dir: Path, resume: bool) -> RunConfig:
    if config is None and resume:
        return runs.read_config(run_dir)
    if isinstance(config, dict):
        return RunConfig.from_dict(config)
    if not isinstance(config, RunConfig):
        raise TypeError(f"config: expected a RunConfig or a dict, got {type(config).__name__}")
    return config


def _build_model(config: RunConfig, x_train: torch.Tensor
                 ) -> VAE | HierarchicalVAE | ConditionalVAE:
    """The VAE of ``config.model``, its columns standardized on the training rows when the
    config says so (``vaelab.model.standardize``)."""
    model = build_model(config.model)
    if config.model.standardize == "on":
        standardize.fit_columns(model, x_train)
    data_init.start_from_rows(model, x_train)      # e.g. --prior-init data
    return model


#: Draws a finished run's pictures: (run_dir, model, dataset, metrics, *, log) -> None.
FigureWriter = Callable[..., object]


class _Trainer(Checkpointed, Validated):
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
        self.batches: data_.Batches | data_forms.LoaderBatches | conditioned.PackedBatches = (
            data_.Batches(data.train.x, self.tc.batch_size, seed=self.tc.seed, device=device,
                          binarize=binarize, rank=dist.rank, world_size=dist.world_size)
            if data.loader is None else
            data_forms.LoaderBatches(data.loader, data.train, seed=self.tc.seed, device=device,
                                     binarize=binarize, rank=dist.rank, where="dataset"))
        if isinstance(data, StreamedData):   # a .npy file read in blocks: Batches' interface
            self.batches = data.batches(  # type: ignore[assignment]
                self.tc, device, dist.rank, dist.world_size, binarize)
        self.step = TrainStep(self.model, self.inference, lr=self.tc.lr, betas=self.tc.betas,
                              optimizer=self.tc.optimizer,
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
        if data.c_train is not None:       # packed rows [x | c] (vaelab.fit.conditioned)
            self.batches = conditioned.PackedBatches(self.batches, data.c_train.to(device))
            self.val_x = None if data.c_val is None or self.val_x is None else pack(
                self.val_x, data.c_val[dist.rank::dist.world_size].to(device))
        self.state = RunState()
        self.best: dict[str, torch.Tensor] | None = None
        self._weight_norm_init()
        self.ema = (None if self.tc.ema_decay is None
                    else WeightAverage(self._weights(), self.tc.ema_decay))

    def _weight_norm_init(self) -> None:
        """Weight-normalised layers: g and b from the bound on the first training batch
        (``vaelab.fit.data_init``); a resumed run loads its own weights over them."""
        def first_batch() -> object:       # drawn only when there are such layers
            return self._terms(*next(iter(self.batches.epoch(0))))

        done = data_init.weight_norm_from_batch((self.model, self.inference), first_batch,
                                                self.tc.seed + 7907, self.dist.world_size)
        if done and self.dist.main:
            self.log(f"weight normalisation: g and b of {done} layers set from the first "
                     f"training batch")

    def _terms(self, x: torch.Tensor, index: torch.Tensor | None):
        """The bound's terms on x (the masked bound for incomplete data)."""
        if isinstance(self.step, MaskedTrainStep):
            return self.step.terms(x)
        return elbo_terms(self.model, self.inference(x, index), x, self.tc.num_samples,
                          validate=False)

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
            s.lr_scale, s.plateau_epochs = cast(PlateauLR, schedule).after_epoch(
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

    def finish(self, draw: bool = True) -> None:
        """Restore the best weights (early stopping) and write the figures (rank 0; not
        when ``draw`` is False)."""
        if self.best is not None:
            self._load_weights(self.best, "best")
        elif self.ema is not None:
            self._load_weights(self.ema.average, "moving-average")
        if self.dist.main and draw:
            model = self.model
            if self.tc.inference == "per-datapoint":  # its encoder was never trained
                model = VAE(self.model.prior_module, self.model.decoder, None)
            if self.figures is not None and self.config.model.condition is not None:
                self.log("figures: skipped for a conditional model; draw each condition with "
                         "`vaelab sample RUN --condition VALUE`")
            elif self.figures is not None:
                self.figures(self.run_dir, model, self.data.val or self.data.train.floats(),
                             self.state.metrics, log=self.log)


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
            must match, except epochs/device/compile/precision). Implied when torchrun has
            restarted the workers and ``out_dir`` holds a run
            (``vaelab.fit.resume.continues_after_restart``).
        overwrite: replace the run in ``out_dir``. The old run's files are deleted only once
            the data are loaded and the model is built, just before the new config.json is
            written (config.json first, so the folder never mixes two runs).
        progress: show a tqdm bar (only on a terminal).
        dataset: train on these data instead of loading ``config.train.data``: a numpy
            array, a torch tensor, a pandas DataFrame (numeric columns; their names are kept
            in the run), a map-style torch Dataset (items x or (x, y)), a DataLoader (its
            batches are used as they come: no re-batching, no validation rows) or a
            ``vaelab.data.Dataset`` (``vaelab.data_forms``; the same kinds and checks for all).
        log: called with one line per epoch and notes; None for silence (the end-of-training
            warnings are then not printed either, only returned in ``TrainResult.warnings``).
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
    # A caller passing log=None reports warnings itself (from TrainResult.warnings); the
    # CLI's --quiet passes a silent log and still wants them on stderr.
    warn = log is not None
    log = log or (lambda _line: None)
    run_dir = Path(out_dir).expanduser()
    resume = resume or continues_after_restart(run_dir, overwrite=overwrite)
    if resume and (run_dir / runs.CONFIG_FILE).is_file():
        check_consistent(run_dir)     # never resume a folder that mixes two runs
    config = _where_data_are(_resolve_config(config, run_dir, resume), run_dir, resume,
                             in_memory=dataset is not None)
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
    config, dataset = mixed_table(config, dataset, log)     # a table read by its schema
    # a .npy file streamed in blocks is never held whole
    data = (load_streamed(config, dataset) if config.train.stream_block is not None
            else _load_data(config, dataset))
    if data.condition is not None:      # the condition resolved from the data: recorded
        config = replace(config, model=replace(config.model, condition=data.condition))
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
        for line in [*data.train.notes, _check_range(data.train, config),
                     warmup_warning(config.train)]:
            if line:
                log(line)
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
    return _run(trainer, warn=warn)


def _figures_lag(run_dir: Path) -> bool:
    """Whether the run's figures are missing or older than its metrics: curves.png, which
    every figure writer draws from the metrics, is absent or older than metrics.jsonl."""
    curves, metrics = run_dir / "curves.png", run_dir / runs.METRICS_FILE
    try:
        return not curves.is_file() or curves.stat().st_mtime < metrics.stat().st_mtime
    except OSError:
        return True


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
    # Killed between its last checkpoint and its figures, a run resumed here ends as a fresh
    # one does: best weights restored, and the figures drawn when they are missing (a tune
    # trial taken over after such a kill had no curves.png).
    trainer.finish(draw=trainer.figures is not None and _figures_lag(run_dir))
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


def saved_row(metrics: list[dict], saved: runs.SavedEpoch | None) -> dict:
    """The metrics row of the epoch whose weights were saved (the last row when unknown):
    what a warning about the saved model must read, not the last epoch's."""
    if saved is not None:
        for row in metrics:
            if row.get("epoch") == saved.epoch:
                return row
    return metrics[-1]


def _run(trainer: _Trainer, *, warn: bool) -> TrainResult:
    state = trainer.state
    while state.epoch < trainer.tc.epochs and not state.stopped_early:
        trainer.run_epoch()
    saved = runs.saved_epoch(state.metrics, trainer.tc.early_stopping_patience)
    if trainer.dist.main and saved is not None and saved.val_elbo is not None:
        # the closing line names the epoch whose weights model.safetensors holds
        head = "early stopping" if state.stopped_early else "training done"
        trainer.log(f"{head} after epoch {state.epoch}: {saved.describe()}")
    trainer.finish()
    summary = _divergence_summary(state.metrics,   # skipped: summed over ranks
                                  len(trainer.batches) * trainer.dist.world_size,
                                  trainer.remedy)
    collapse = (None if isinstance(trainer.model, HierarchicalVAE) or not state.metrics
                else collapse_from_metrics(saved_row(state.metrics, saved),
                                           (trainer.model.latent_dim,), trainer.tc))
    # hierarchies warn per layer in the epoch lines; a diverged run's collapse is no news
    warnings = (summary,) if summary is not None else (collapse,) if collapse else ()
    if warn and trainer.dist.main:   # stderr even under --quiet
        for line in warnings:
            print(line, file=sys.stderr, flush=True)
    trainer.dist.barrier()
    return TrainResult(trainer.run_dir, trainer.config, trainer.model, trainer.inference,
                       list(state.metrics), state.stopped_early, state.best_epoch,
                       warnings=warnings)
