"""Run directories: atomic files and pickle-free checkpoints (``vaelab.use.trained`` loads them).

A run directory written by ``vaelab.fit.train`` holds

* ``config.json`` — the :class:`~vaelab.config.RunConfig` with ``data_dim``/``image_shape``
  resolved from the data, plus ``format``, ``vaelab_version`` and ``torch_version``;
* ``model.safetensors`` — the weights: the VAE's ``state_dict`` keys as they are, plus
  ``inference.<name>`` for inference parameters that are not part of the VAE (the
  per-datapoint table); updated at the end of every epoch, with early stopping to the best
  epoch's weights so far (:func:`saved_epoch` says which epoch a run saved);
* ``metrics.jsonl`` — one JSON object per completed epoch: ``epoch`` (1-based), ``step``
  (optimizer steps so far), ``train_elbo``/``train_rate``/``train_distortion`` (means over the
  epoch's non-skipped examples, true ELBO even during KL warm-up), ``val_elbo``/``val_rate``/
  ``val_distortion`` (null without validation), ``samples_per_s`` (training only, all ranks),
  ``lr`` and ``kl_weight`` (at the epoch's last step), ``skipped_steps`` (non-finite steps),
  ``seconds`` (the whole epoch incl. validation); with validation, ``val_active_units`` (one
  latent layer) or ``val_rate_per_layer``/``val_active_units_per_layer`` (a hierarchy), what
  tells posterior collapse; NaN is written as null;
* ``checkpoint/`` — ``state.safetensors`` (every tensor: model, inference, optimizer moments,
  best weights) and ``state.json`` (scalars, the optimizer's structure, RNG states as hex,
  and the SHA-256 of ``state.safetensors``);
* figures (``*.png``) written by ``vaelab.show.plots``.

Every file is written to a temporary name in the same folder, fsynced and renamed over the old
one (``os.replace``), so a reader sees the old or the new file, never a torn one. The checkpoint
is swapped as a folder: the new one is completed in ``checkpoint.new/``, then ``checkpoint/``
becomes ``checkpoint.old/`` and ``checkpoint.new/`` becomes ``checkpoint/``; a kill between the
two renames leaves both complete, and :func:`checkpoint_path` picks the newer one. Nothing is
ever pickled (``torch.save`` is pickle): tensors go to safetensors, the rest to JSON.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from vaelab._files import atomic_write_bytes, atomic_write_json, fsync_dir
from vaelab.config import RunConfig

CONFIG_FILE = "config.json"
MODEL_FILE = "model.safetensors"
METRICS_FILE = "metrics.jsonl"
CHECKPOINT_DIR = "checkpoint"
STATE_TENSORS = "state.safetensors"
STATE_JSON = "state.json"
FIGURES = ("samples.png", "reconstructions.png", "curves.png", "latent.png")
RUN_FORMAT = "vaelab-run/1"
CHECKPOINT_FORMAT = "vaelab-checkpoint/1"
#: Results other commands write into a run (evaluate, gaps, report, --tensorboard): they
#: describe the old model, so ``--overwrite`` deletes them with the run.
RESULT_FILES = ("eval.json", "gaps.json", "gaps.png", "report.html", "tensorboard")
#: What a run directory may hold; config.json first, so a half-cleared folder is no run.
RUN_FILES = (CONFIG_FILE, MODEL_FILE, METRICS_FILE, CHECKPOINT_DIR, CHECKPOINT_DIR + ".new",
             CHECKPOINT_DIR + ".old", *FIGURES, *RESULT_FILES)


class RunError(ValueError):
    """A run directory (or a file in it) is missing, corrupt, incompatible or unwritable."""


# --------------------------------------------------------------------------- atomic files


def _cpu(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Detached, contiguous CPU copies that share no memory (what safetensors needs)."""
    return {k: v.detach().to("cpu", copy=True).contiguous() for k, v in tensors.items()}


def tensors_to_bytes(tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> bytes:
    """Serialize tensors (any device) to safetensors bytes."""
    return st_save(_cpu(tensors), metadata=metadata)


def read_safetensors(path: Path, what: str) -> dict[str, torch.Tensor]:
    """Load a safetensors file → {name: CPU tensor}; RunError naming the file if unreadable."""
    try:
        return st_load(path.read_bytes())
    except FileNotFoundError:
        raise RunError(f"{what}: {str(path)!r} does not exist") from None
    except (OSError, SafetensorError, ValueError, RuntimeError) as exc:
        raise RunError(f"{what}: {str(path)!r} is not a valid safetensors file "
                       f"(truncated or corrupt?): {exc}") from None


def read_json(path: Path, what: str) -> object:
    """Parse a JSON file; RunError naming the file if it is missing or invalid."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise RunError(f"{what}: {str(path)!r} does not exist") from None
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise RunError(f"{what}: {str(path)!r} is not valid JSON (truncated or corrupt?): "
                       f"{exc}") from None


# --------------------------------------------------------------------------- pickle-free trees


def pack_tree(obj: object, tensors: dict[str, torch.Tensor], prefix: str) -> object:
    """Split a nested state (e.g. an optimizer ``state_dict``) into JSON and tensors.

    Tensors are moved into ``tensors`` under ``prefix + <n>`` and replaced by
    ``{"__tensor__": name}``; tuples become ``{"__tuple__": [...]}``, dicts (whose keys may be
    ints) ``{"__dict__": [[key, value], ...]}``, non-finite floats ``{"__float__": "nan"}``.
    Supports None, bool, int, float, str, list, tuple, dict and tensors; anything else is a
    TypeError (so nothing ever needs pickle).
    """
    if isinstance(obj, torch.Tensor):
        name = f"{prefix}{len(tensors)}"
        tensors[name] = obj
        return {"__tensor__": name}
    if obj is None or isinstance(obj, (bool, int, str)):
        return obj
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else {"__float__": repr(obj)}
    if isinstance(obj, (list, tuple)):
        items = [pack_tree(v, tensors, prefix) for v in obj]
        return items if isinstance(obj, list) else {"__tuple__": items}
    if isinstance(obj, dict):
        for key in obj:
            if isinstance(key, bool) or not isinstance(key, (int, str)):
                raise TypeError(f"state: expected str or int dict keys, got {key!r}")
        return {"__dict__": [[k, pack_tree(v, tensors, prefix)] for k, v in obj.items()]}
    raise TypeError(f"state: cannot store a {type(obj).__name__} without pickle")


def unpack_tree(obj: object, tensors: dict[str, torch.Tensor]) -> object:
    """Inverse of :func:`pack_tree`; RunError if a named tensor is missing."""
    if isinstance(obj, list):
        return [unpack_tree(v, tensors) for v in obj]
    if not isinstance(obj, dict):
        return obj
    if "__tensor__" in obj:
        if obj["__tensor__"] not in tensors:
            raise RunError(f"checkpoint: tensor {obj['__tensor__']!r} is missing from "
                           f"{STATE_TENSORS}")
        return tensors[obj["__tensor__"]]
    if "__tuple__" in obj:
        return tuple(unpack_tree(v, tensors) for v in obj["__tuple__"])
    if "__float__" in obj:
        return float(obj["__float__"])
    if "__dict__" in obj:
        return {k: unpack_tree(v, tensors) for k, v in obj["__dict__"]}
    raise RunError(f"checkpoint: unexpected entry {sorted(obj)} in {STATE_JSON}")


def rng_to_json(state: torch.Tensor) -> str:
    """A torch RNG state (uint8 tensor) → hex string."""
    return bytes(state.cpu().tolist()).hex()


def rng_from_json(text: str) -> torch.Tensor:
    """Inverse of :func:`rng_to_json`."""
    return torch.tensor(list(bytes.fromhex(text)), dtype=torch.uint8)


# --------------------------------------------------------------------------- the run folder


def run_exists(run_dir: Path) -> bool:
    """Whether ``run_dir`` holds (part of) a vaelab run."""
    return any((run_dir / name).exists() for name in RUN_FILES[:6])


def prepare_run_dir(out_dir: str | Path, *, resume: bool, overwrite: bool) -> Path:
    """Check (before any training) that ``out_dir`` can take this run; create it if needed.

    Raises RunError if ``out_dir`` holds another run and neither ``resume`` nor ``overwrite``
    is set, if ``resume`` finds no run, or if the folder cannot be written. Deletes nothing:
    ``overwrite`` replaces the old run later, through :func:`clear_run`.
    """
    if resume and overwrite:
        raise ValueError("resume, overwrite: expected at most one of them, got both True")
    run_dir = Path(out_dir).expanduser()
    if run_dir.exists() and not run_dir.is_dir():
        raise RunError(f"out_dir: expected a folder, got the file {str(run_dir)!r}")
    if resume and not (run_dir / CONFIG_FILE).is_file():
        raise RunError(f"out_dir: no run to resume at {str(run_dir)!r} (no {CONFIG_FILE})")
    if not resume and not overwrite and run_dir.is_dir() and run_exists(run_dir):
        raise RunError(f"out_dir: {str(run_dir)!r} already holds a run; pass resume=True to "
                       f"continue it or overwrite=True to replace it")
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=run_dir):
            pass
    except OSError as exc:
        raise RunError(f"out_dir: cannot write to {str(run_dir)!r}: "
                       f"{exc.strerror or exc}") from None
    return run_dir


def clear_run(run_dir: Path) -> None:
    """Delete the files of a previous run (config.json first); other files are left alone."""
    for name in RUN_FILES:
        path = run_dir / name
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()
    fsync_dir(run_dir)


def _versions() -> dict[str, str]:
    try:
        from importlib.metadata import version
        vaelab_version = version("vaelab")
    except Exception:  # not installed (e.g. run from a source tree)
        vaelab_version = "unknown"
    return {"vaelab_version": vaelab_version, "torch_version": torch.__version__}


def write_config(run_dir: Path, config: RunConfig, *, dataset: dict | None = None) -> None:
    """Write ``config.json``: format, versions, a description of the data, the RunConfig."""
    meta: dict[str, object] = {"format": RUN_FORMAT, **_versions()}
    if dataset is not None:
        meta["dataset"] = dataset
    atomic_write_json(run_dir / CONFIG_FILE, {**meta, **config.to_dict()})


def read_config(run_dir: str | Path) -> RunConfig:
    """Read a run's ``config.json`` → RunConfig; RunError if missing, corrupt or invalid."""
    path = Path(run_dir) / CONFIG_FILE
    data = read_json(path, "config")
    if not isinstance(data, dict) or data.get("format") != RUN_FORMAT:
        got = data.get("format") if isinstance(data, dict) else type(data).__name__
        raise RunError(f"config: {str(path)!r} is not a vaelab run config (expected format "
                       f"{RUN_FORMAT!r}, got {got!r})")
    try:
        return RunConfig.from_dict(data)
    except (TypeError, ValueError) as exc:
        raise RunError(f"config: {str(path)!r} is invalid: {exc}") from None


def write_metrics(run_dir: Path, rows: list[dict]) -> None:
    """(Re)write ``metrics.jsonl`` atomically: one JSON object per line."""
    text = "".join(json.dumps(row, allow_nan=False) + "\n" for row in rows)
    atomic_write_bytes(run_dir / METRICS_FILE, text.encode("utf-8"))


def read_metrics(run_dir: str | Path) -> list[dict]:
    """Parse ``metrics.jsonl`` → list of dicts ([] if the file does not exist)."""
    path = Path(run_dir) / METRICS_FILE
    if not path.exists():
        return []
    try:
        return [json.loads(line) for line in path.read_text("utf-8").splitlines() if line]
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise RunError(f"metrics: {str(path)!r} is not valid JSON lines: {exc}") from None


# --------------------------------------------------------------------------- saved epoch


@dataclass(frozen=True)
class SavedEpoch:
    """Which epoch's weights ``model.safetensors`` holds, with its validation ELBO.

    With early stopping on (``early_stopping_patience``) the training loop keeps and saves the
    weights of the epoch with the best finite validation ELBO (the first such, ties kept);
    otherwise the last epoch's (the moving average's when ``ema_decay`` is set, which is also
    what that epoch validated). Found from ``metrics.jsonl`` and the config alone, so old runs
    are read the same way.

    Attributes:
        epoch: 1-based epoch whose weights are saved.
        val_elbo: its validation ELBO (None when not finite or not measured).
        last_epoch: the last finished epoch.
        last_val_elbo: the last epoch's validation ELBO (None likewise).
        best: whether early stopping chose ``epoch`` as the best one.
    """

    epoch: int
    val_elbo: float | None
    last_epoch: int
    last_val_elbo: float | None
    best: bool

    def describe(self) -> str:
        """One line that ties the number to the saved weights, e.g. "best val ELBO -229.09
        at epoch 312 (saved); last epoch 362: -229.30"."""
        if self.val_elbo is None:
            return f"weights of epoch {self.epoch} saved (no validation ELBO)"
        what = "best val ELBO" if self.best else "val ELBO"
        line = f"{what} {_elbo(self.val_elbo)} at epoch {self.epoch}"
        if self.epoch == self.last_epoch:
            return f"{line} (saved; the last epoch)"
        return f"{line} (saved); last epoch {self.last_epoch}: {_elbo(self.last_val_elbo)}"


def _elbo(value: float | None) -> str:
    if value is None:
        return "n/a"
    return f"{value:.6g}" if abs(value) >= 1e6 else f"{value:.2f}"


def _finite(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def saved_epoch(metrics: list[dict], early_stopping_patience: object) -> SavedEpoch | None:
    """The epoch whose weights a run saved (see :class:`SavedEpoch`); None without epochs.

    ``metrics``: the rows of ``metrics.jsonl``; ``early_stopping_patience``: the config's
    value (a positive int turns early stopping on; None, 0 or anything else: off).
    """
    rows = [row for row in metrics if isinstance(row, dict)]
    if not rows:
        return None

    def epoch(i: int) -> int:
        number = rows[i].get("epoch")
        return number if isinstance(number, int) and not isinstance(number, bool) else i + 1

    last = len(rows) - 1
    keeps_best = (isinstance(early_stopping_patience, int)
                  and not isinstance(early_stopping_patience, bool)
                  and early_stopping_patience > 0)
    values = [_finite(row.get("val_elbo")) for row in rows]
    finite = [i for i, v in enumerate(values) if v is not None]
    chosen = last
    if keeps_best and finite:
        chosen = max(finite, key=lambda i: (values[i], -i))   # the first of equal bests
    return SavedEpoch(epoch(chosen), values[chosen], epoch(last), values[last],
                      best=keeps_best and bool(finite))


# --------------------------------------------------------------------------- weights


def extra_inference_tensors(model: torch.nn.Module,
                            inference: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The inference scheme's parameters and buffers that are not the model's (by identity)."""
    shared = {id(t) for t in model.state_dict(keep_vars=True).values()}
    return {k: v for k, v in inference.state_dict(keep_vars=True).items() if id(v) not in shared}


def write_model(run_dir: Path, model_state: dict[str, torch.Tensor],
                inference_state: dict[str, torch.Tensor]) -> None:
    """Write ``model.safetensors``: the VAE's state_dict plus ``inference.<name>`` tensors."""
    tensors = dict(model_state)
    tensors.update({f"inference.{k}": v for k, v in inference_state.items()})
    atomic_write_bytes(run_dir / MODEL_FILE, tensors_to_bytes(tensors, {"format": RUN_FORMAT}))


def check_state(what: str, expected: dict[str, torch.Tensor],
                got: dict[str, torch.Tensor]) -> None:
    """RunError unless ``got`` has exactly the keys, shapes and dtypes of ``expected``."""
    missing, unexpected = sorted(set(expected) - set(got)), sorted(set(got) - set(expected))
    if missing or unexpected:
        raise RunError(f"{what}: weights do not match the config: missing {missing[:5]}, "
                       f"unexpected {unexpected[:5]}")
    for key, ref in expected.items():
        if tuple(got[key].shape) != tuple(ref.shape) or got[key].dtype != ref.dtype:
            raise RunError(f"{what}: {key!r} expected shape {list(ref.shape)} ({ref.dtype}), "
                           f"got {list(got[key].shape)} ({got[key].dtype})")


def split_prefix(tensors: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """The entries whose names start with ``prefix``, with the prefix removed."""
    return {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}


def load_module_state(what: str, module: torch.nn.Module,
                      state: dict[str, torch.Tensor]) -> None:
    """Validate ``state`` against ``module`` (keys, shapes, dtypes), then load it in place."""
    check_state(what, module.state_dict(), state)
    module.load_state_dict(state)


def read_model(run_dir: Path, model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Load ``model.safetensors`` into ``model``; return the ``inference.`` tensors."""
    tensors = read_safetensors(run_dir / MODEL_FILE, "model")
    model_state = {k: v for k, v in tensors.items() if not k.startswith("inference.")}
    load_module_state(f"model {str(run_dir / MODEL_FILE)!r}", model, model_state)
    return split_prefix(tensors, "inference.")


# --------------------------------------------------------------------------- checkpoints


def _checkpoint_dirs(run_dir: Path) -> tuple[Path, Path, Path]:
    return (run_dir / CHECKPOINT_DIR, run_dir / (CHECKPOINT_DIR + ".new"),
            run_dir / (CHECKPOINT_DIR + ".old"))


def checkpoint_path(run_dir: Path) -> Path | None:
    """The newest complete checkpoint folder, or None.

    ``checkpoint/`` only ever appears by renaming a complete folder. If it is absent while
    ``checkpoint.old/`` exists, the writer stopped between its two renames, after completing
    ``checkpoint.new/``, which is then the newest complete checkpoint.
    """
    final, new, old = _checkpoint_dirs(run_dir)
    if final.is_dir():
        return final
    if old.is_dir():
        return new if new.is_dir() else old
    return None


def _recover_checkpoint(run_dir: Path) -> None:
    """Settle an interrupted swap so that ``checkpoint/`` is the newest complete one."""
    final, new, old = _checkpoint_dirs(run_dir)
    current = checkpoint_path(run_dir)
    if current is not None and current != final:
        os.rename(current, final)
    for stale in (new, old):
        if stale.exists():
            shutil.rmtree(stale)
    fsync_dir(run_dir)


def write_checkpoint(run_dir: Path, tensors: dict[str, torch.Tensor], state: dict) -> None:
    """Write a checkpoint atomically (see the module docstring): tensors + JSON state."""
    _recover_checkpoint(run_dir)
    final, new, old = _checkpoint_dirs(run_dir)
    new.mkdir()
    blob = tensors_to_bytes(tensors, {"format": CHECKPOINT_FORMAT})
    atomic_write_bytes(new / STATE_TENSORS, blob)
    state = {"format": CHECKPOINT_FORMAT, "sha256": hashlib.sha256(blob).hexdigest(), **state}
    atomic_write_json(new / STATE_JSON, state)
    if final.exists():
        os.rename(final, old)
    os.rename(new, final)
    fsync_dir(run_dir)
    if old.exists():
        shutil.rmtree(old)


def read_checkpoint(run_dir: Path) -> tuple[dict[str, torch.Tensor], dict] | None:
    """The newest complete checkpoint as (tensors, state), None if there is none.

    Raises RunError if it is truncated or corrupt (checked against the SHA-256 in state.json).
    """
    folder = checkpoint_path(run_dir)
    if folder is None:
        return None
    state = read_json(folder / STATE_JSON, "checkpoint")
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise RunError(f"checkpoint: {str(folder / STATE_JSON)!r} is not a vaelab checkpoint "
                       f"(expected format {CHECKPOINT_FORMAT!r})")
    try:
        blob = (folder / STATE_TENSORS).read_bytes()
    except OSError as exc:
        raise RunError(f"checkpoint: cannot read {str(folder / STATE_TENSORS)!r}: "
                       f"{exc.strerror or exc}") from None
    if hashlib.sha256(blob).hexdigest() != state.get("sha256"):
        raise RunError(f"checkpoint: {str(folder / STATE_TENSORS)!r} does not match the "
                       f"SHA-256 in {STATE_JSON} (truncated or corrupt)")
    try:
        return st_load(blob), state
    except (SafetensorError, ValueError, RuntimeError) as exc:
        raise RunError(f"checkpoint: {str(folder / STATE_TENSORS)!r} is corrupt: {exc}") from None


# --------------------------------------------------------------------------- a failed start


def run_files(run_dir: Path) -> set[str]:
    """The names of :data:`RUN_FILES` present in ``run_dir`` now."""
    return {name for name in RUN_FILES if (run_dir / name).exists()}


def remove_unfinished(run_dir: Path, created: Path | None, before: set[str]) -> None:
    """After a training that failed before saving an epoch: remove the run files it wrote
    (``before``: :func:`run_files` when it started) and the folders it created (``created``:
    ``vaelab.data.first_missing`` then), so that the same command can simply be run again.
    Files and folders that were there before, and a run with a saved epoch (to resume), are
    left alone; under torchrun only rank 0, which writes the run, removes anything."""
    from vaelab import _runtime
    from vaelab.data import remove_empty_dirs

    if _runtime.rank_and_world_size()[0] != 0 or checkpoint_path(run_dir) is not None:
        return
    written = run_files(run_dir) - before
    for name in (name for name in RUN_FILES if name in written):   # config.json first
        if (run_dir / name).is_dir():
            shutil.rmtree(run_dir / name)
        else:
            (run_dir / name).unlink()
    remove_empty_dirs(run_dir, created)
