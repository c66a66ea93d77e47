"""Checkpoints and resume for the training loop: what a run saves, and how it comes back.

:class:`Checkpointed` gives the loop (``vaelab.fit.train._Trainer``) its weights/checkpoint
methods: after every epoch :meth:`Checkpointed.save` writes, in this order, the checkpoint
(weights, optimizer moments, best weights, RNG states, counters, the data's SHA-256; swapped
atomically by ``vaelab.fit.runs.write_checkpoint``), ``model.safetensors`` and
``metrics.jsonl``; :meth:`Checkpointed.restore` loads a checkpoint back and refuses one that
does not fit the run (other data, other shapes). :func:`check_resumable` decides which config
changes a resume may bring (:data:`RESUMABLE_CHANGES`); :func:`continues_after_restart`
when a torchrun restart continues the run it interrupted.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from vaelab._runtime import restart_count
from vaelab.config import RunConfig
from vaelab.fit import runs
from vaelab.infer.schemes import Inference

#: TrainConfig fields that may differ when resuming (epochs: to extend a finished run).
RESUMABLE_CHANGES = ("epochs", "device", "compile", "precision")


class TrainingError(RuntimeError):
    """Training cannot go on (e.g. it diverged); what is on disk is the last good state."""


@dataclass
class RunState:
    """Scalars of a run in progress (saved in checkpoint/state.json)."""

    epoch: int = 0
    step: int = 0
    consecutive_nonfinite: int = 0
    best_val_elbo: float | None = None
    best_epoch: int | None = None
    epochs_since_best: int = 0
    stopped_early: bool = False
    metrics: list[dict] = field(default_factory=list)
    #: The "plateau" learning-rate schedule: the factor on lr, and epochs without a better
    #: validation ELBO since the last halving.
    lr_scale: float = 1.0
    plateau_epochs: int = 0


def check_resumable(stored: RunConfig, config: RunConfig, run_dir: Path) -> None:
    """RunError unless ``config`` equals the stored one up to RESUMABLE_CHANGES."""
    a, b = stored.to_dict(), config.to_dict()
    for key in RESUMABLE_CHANGES:
        a["train"].pop(key), b["train"].pop(key)
    diff = [f"{s}.{k}" for s in a for k in a[s] if a[s][k] != b[s].get(k)]
    if diff:
        raise runs.RunError(f"resume: the config differs from the run's in {diff} (run at "
                            f"{str(run_dir)!r}); only {list(RESUMABLE_CHANGES)} may change")


def continues_after_restart(run_dir: Path, *, overwrite: bool = False) -> bool:
    """Whether this start of ``train --out run_dir`` continues the run there from its last
    checkpoint, as ``--resume run_dir`` would: yes when torchrun has restarted the workers
    (``--max-restarts``; TORCHELASTIC_RESTART_COUNT > 0) and ``run_dir`` holds a run.

    torchrun restarts a failed worker group with the arguments of its first start, so the
    restarted ``--out DIR`` finds the run its first start wrote; without this it would be
    refused as taken and every restart would fail the same way. A first start never resumes
    implicitly (a second ``--out DIR`` by hand is still refused). ``--overwrite`` starts over
    on restart as well (the run in the folder may be the one it was replacing), which still
    reaches the same weights, with every finished epoch trained again. The config is checked
    as for ``--resume``: a different run in the folder is refused, never continued.
    Every rank decides before any joins the process group, when no rank of this start has
    written yet, so all decide alike (the folder must be shared by the nodes).
    """
    return (not overwrite and restart_count() > 0
            and (Path(run_dir).expanduser() / runs.CONFIG_FILE).is_file())


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


def _config_difference(a: RunConfig, b: RunConfig) -> list[str]:
    """The fields in which two configs differ, beyond :data:`RESUMABLE_CHANGES`."""
    a_, b_ = a.to_dict(), b.to_dict()
    for key in RESUMABLE_CHANGES:
        a_["train"].pop(key, None), b_["train"].pop(key, None)
    return [f"{s}.{k}" for s in a_ for k in sorted(set(a_[s]) | set(b_.get(s, {})))
            if a_[s].get(k) != b_.get(s, {}).get(k)]


def check_consistent(run_dir: Path) -> None:
    """RunError, one line naming the files, unless a run directory's files describe one run:
    metrics.jsonl holds epochs 1, 2, …, n; the checkpoint's config (checkpoint/state.json)
    is config.json's up to :data:`RESUMABLE_CHANGES`; its epochs are metrics.jsonl's n (or
    n + 1: killed between the checkpoint and the metrics, which a resume repairs) and its
    record of them is metrics.jsonl's. (The weights are checked against config.json when
    they are loaded, and the checkpoint against its SHA-256 when it is read.)"""
    where = str(run_dir)
    config, metrics = runs.read_config(run_dir), runs.read_metrics(run_dir)
    epochs = [row.get("epoch") if isinstance(row, dict) else None for row in metrics]
    if epochs != list(range(1, len(metrics) + 1)):
        raise runs.RunError(f"RUN: {where!r} is inconsistent: {runs.METRICS_FILE} should hold "
                            f"epochs 1 to {len(metrics)} in order, got {epochs[:8]}")
    folder = runs.checkpoint_path(run_dir)
    if folder is None:
        return
    state = runs.read_json(folder / runs.STATE_JSON, "checkpoint")
    state = state if isinstance(state, dict) else {}
    mixed = f"RUN: {where!r} mixes two runs (files copied between runs?): "
    try:
        saved = RunConfig.from_dict(state["config"]) if "config" in state else None
    except (TypeError, ValueError) as exc:
        raise runs.RunError(f"{mixed}the config in checkpoint/{runs.STATE_JSON} is invalid: "
                            f"{exc}") from None
    diff = [] if saved is None else _config_difference(saved, config)
    if diff:
        raise runs.RunError(f"{mixed}{runs.CONFIG_FILE} and checkpoint/{runs.STATE_JSON} "
                            f"differ in {diff[:5]}; retrain it, or restore the run's own files")
    finished, record = state.get("epoch"), state.get("metrics")
    if isinstance(finished, int) and len(metrics) not in (finished, finished - 1):
        raise runs.RunError(f"{mixed}{runs.METRICS_FILE} holds {len(metrics)} epochs, the "
                            f"checkpoint {finished}")
    if isinstance(record, list) and record[:len(metrics)] != metrics:
        raise runs.RunError(f"{mixed}{runs.METRICS_FILE} differs from the checkpoint's record "
                            f"of the same epochs")


class Checkpointed:
    """Mixin of the training loop: weights, checkpoints, outputs and resume (rank 0 writes).

    Expects the loop to set ``config``, ``run_dir``, ``data`` (with ``train`` and ``sha256``),
    ``dist``, ``device``, ``model``, ``inference``, ``step`` (a TrainStep), ``state`` (a
    :class:`RunState`), ``best`` (the best weights or None) and ``log`` (lines to the user).
    """

    # Declared for the type checker; the loop's __init__ assigns them. The data, the
    # process group and the step are typed loosely: their classes live in the loop's module,
    # which imports this one.
    config: RunConfig
    run_dir: Path
    data: Any
    dist: Any
    device: torch.device
    model: Any                 # a VAE, HierarchicalVAE or MaskedVAE, built from the config
    inference: Inference
    step: Any
    state: RunState
    best: dict[str, torch.Tensor] | None
    log: Any                   # one line to the user (the loop's log function)

    def _weights(self) -> dict[str, torch.Tensor]:
        """Model + inference-only tensors, under the prefixes ``model.`` / ``inference.``."""
        out = {f"model.{k}": v for k, v in self.model.state_dict().items()}
        extra = runs.extra_inference_tensors(self.model, self.inference)
        out.update({f"inference.{k}": v for k, v in extra.items()})
        return out

    def _load_weights(self, tensors: dict[str, torch.Tensor], what: str) -> None:
        runs.load_module_state(f"{what} model", self.model, runs.split_prefix(tensors, "model."))
        extra = runs.extra_inference_tensors(self.model, self.inference)
        got = runs.split_prefix(tensors, "inference.")
        runs.check_state(f"{what} inference", extra, got)
        with torch.no_grad():
            for key, value in got.items():
                extra[key].copy_(value)

    def save(self) -> None:
        """Checkpoint, model.safetensors and metrics.jsonl (rank 0), in that order."""
        if not self.dist.main:
            return
        weights = self._weights()
        bad = [k for k, v in weights.items() if v.is_floating_point() and
               not bool(torch.isfinite(v).all())]
        if bad:
            raise TrainingError(f"training diverged: non-finite weights in {bad[:3]} after "
                                f"epoch {self.state.epoch}; nothing was saved for it")
        tensors = dict(weights)
        if self.best is not None:
            tensors.update({f"best.{k}": v for k, v in self.best.items()})
        ema = getattr(self, "ema", None)
        if ema is not None:
            tensors.update({f"ema.{k}": v for k, v in ema.average.items()})
        skeleton = runs.pack_tree(self.step.state_dict(), tensors, "optimizer.")
        runs.write_checkpoint(self.run_dir, tensors, {
            **asdict(self.state), "optimizer": skeleton, "rng": self._rng(),
            "ema_updates": None if ema is None else ema.updates,
            "num_train": self.data.num_train, "data_sha256": self.data.sha256,
            "config": self.config.to_dict()})
        self.write_outputs(weights)

    def write_outputs(self, weights: dict[str, torch.Tensor] | None = None) -> None:
        """model.safetensors (best or current weights) and metrics.jsonl, from memory (rank 0).

        Called after every checkpoint, and on resume so that a kill between the checkpoint
        and these files leaves no stale copy behind.
        """
        if not self.dist.main:
            return
        ema = getattr(self, "ema", None)
        final = (self.best if self.best is not None else ema.average if ema is not None
                 else weights or self._weights())
        runs.write_model(self.run_dir, runs.split_prefix(final, "model."),
                         runs.split_prefix(final, "inference."))
        runs.write_metrics(self.run_dir, self.state.metrics)

    def _rng(self) -> dict:
        rng = {"torch": runs.rng_to_json(torch.get_rng_state())}
        if self.device.type == "cuda":
            rng["cuda"] = runs.rng_to_json(torch.cuda.get_rng_state(self.device))
        return rng

    def _note_device_change(self, saved_on: str) -> None:
        """Say so when a run resumes on another kind of device than it was checkpointed on:
        the CPU and CUDA draw from different generators (and round differently), so the
        resumed run is a valid continuation but not the uninterrupted run bit for bit."""
        here = self.device.type
        if saved_on != here and self.dist.main:
            self.log(f"note: this run was checkpointed on {saved_on} and continues on {here}: "
                     f"its binarization and noise streams and its rounding differ from then "
                     f"on, so it will not equal an uninterrupted run on one device bit for bit")

    def restore(self, tensors: dict[str, torch.Tensor], state: dict) -> None:
        """Load a checkpoint read by ``runs.read_checkpoint``; RunError if it does not fit."""
        if state.get("num_train") != self.data.num_train:
            raise runs.RunError(f"checkpoint: expected {state.get('num_train')} training "
                                f"examples (as when it was written), got {self.data.num_train}")
        if state.get("data_sha256") != self.data.sha256:
            raise runs.RunError("checkpoint: the training data differ from the ones the run was "
                                "trained on (their SHA-256 does not match)")
        try:
            self._load_weights(tensors, "checkpoint")
            if any(k.startswith("best.") for k in tensors):
                self.best = runs.split_prefix(tensors, "best.")
                runs.check_state("checkpoint best", self._weights(), self.best)
            self.step.load_state_dict(runs.unpack_tree(state["optimizer"], tensors))
            ema = getattr(self, "ema", None)
            if ema is not None:
                ema.load_state(runs.split_prefix(tensors, "ema."), state["ema_updates"])
            torch.set_rng_state(runs.rng_from_json(state["rng"]["torch"]))
            if self.device.type == "cuda" and "cuda" in state["rng"]:
                torch.cuda.set_rng_state(runs.rng_from_json(state["rng"]["cuda"]), self.device)
            self._note_device_change("cuda" if "cuda" in state["rng"] else "cpu")
            defaults = asdict(RunState())   # keys added later are absent from older runs
            fields = {k: state.get(k, defaults[k]) for k in RunState.__dataclass_fields__}
        except (KeyError, TypeError, ValueError, RuntimeError) as exc:
            if isinstance(exc, runs.RunError):
                raise
            raise runs.RunError(f"checkpoint: in {str(self.run_dir)!r} does not fit this run: "
                                f"{type(exc).__name__}: {exc}") from None
        self.state = RunState(**fields)
