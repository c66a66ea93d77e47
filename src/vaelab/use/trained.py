"""A trained model, reopened from its run directory and ready to use.

:func:`load` reads ``config.json`` and ``model.safetensors`` (JSON and safetensors only, never
a pickle, never code from the files; format in :mod:`vaelab.fit.runs`) and returns a
:class:`TrainedModel`: encode, ELBO, importance-sampled log-likelihood, sample, reconstruct.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from torch.distributions import Distribution

from vaelab import _checks, _trust, condition_spec, data_forms
from vaelab.config import RunConfig
from vaelab.data import Dataset
from vaelab.data import condition as condition_
from vaelab.data.columns import column_order, in_run_order
from vaelab.fit.resume import check_consistent
from vaelab.fit.runs import CONFIG_FILE, RunError, read_config, read_metrics, read_model
from vaelab.infer.objectives import elbo_terms
from vaelab.infer.schemes import scheme_for
from vaelab.measure.evaluate import LogLikelihoodEstimate, log_likelihood
from vaelab.model.conditional import NEEDS_CONDITION, ConditionalVAE
from vaelab.model.hierarchical import HierarchicalVAE
from vaelab.model.masked import build_model
from vaelab.model.mixed_likelihood import schema_of
from vaelab.model.vae import VAE


class TrainedModel:
    """A trained VAE loaded from a run directory, ready to use.

    Attributes:
        model: the :class:`~vaelab.model.vae.VAE` (in eval mode).
        config: the run's :class:`~vaelab.config.RunConfig`.
        run_dir: where it was loaded from.
        metrics: the per-epoch metrics of ``metrics.jsonl``.

    Data arguments ``x`` are float tensors [B, D] (or [B, *image_shape], flattened here) with
    values the likelihood accepts ([0, 1] for Bernoulli), or any form of
    :mod:`vaelab.data_forms` (numpy, a DataFrame, a torch Dataset or DataLoader), read by the
    same rule as training data. q(z | x) is the trained encoder's,
    refined as in training for ``inference="semi-amortized"`` runs
    (``vaelab.infer.schemes.scheme_for``: the same steps, step size and draws as training);
    runs with ``inference="per-datapoint"`` trained no encoder, so only :meth:`sample` works.
    """

    def __init__(self, model: VAE | HierarchicalVAE | ConditionalVAE, config: RunConfig,
                 run_dir: Path,
                 metrics: list[dict]) -> None:
        self.model, self.config, self.run_dir, self.metrics = model, config, run_dir, metrics

    def training_progress(self) -> dict:
        """How far the run's training got (eval.json's ``training``): epochs done of its
        ``epochs``, whether early stopping ended it, whether it is finished, and the KL weight of
        its last epoch against β (below β under a linear schedule: it stopped inside the warm-up,
        so the saved model was trained on a down-weighted KL)."""
        import json

        from vaelab.fit import runs

        tc, metrics = self.config.train, self.metrics
        last = metrics[-1] if metrics else {}
        done = int(last.get("epoch", 0))
        stopped_early = False
        folder = runs.checkpoint_path(self.run_dir)
        if folder is not None:
            try:
                state = json.loads((folder / runs.STATE_JSON).read_text())
                stopped_early = bool(state.get("stopped_early", False))
            except (OSError, ValueError, AttributeError):
                pass              # loading the run checked its checkpoint; no claim without it
        weight = last.get("kl_weight")
        in_warmup = (tc.kl_schedule == "linear" and isinstance(weight, (int, float))
                     and weight < tc.beta * (1 - 1e-9))
        return {"epochs_done": done, "epochs": tc.epochs, "stopped_early": stopped_early,
                "finished": stopped_early or done >= tc.epochs, "last_kl_weight": weight,
                "in_warmup": in_warmup}

    def __repr__(self) -> str:
        return f"TrainedModel(run_dir={str(self.run_dir)!r}, model={self.config.model})"

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def columns(self) -> tuple[str, ...] | None:
        """The column names of the table the run was trained on (a DataFrame's), else None."""
        meta = _json_object(self.run_dir / CONFIG_FILE).get("dataset")
        names = meta.get("columns") if isinstance(meta, dict) else None
        return tuple(map(str, names)) if isinstance(names, list) else None

    def in_run_order(self, x: Any, where: str = "x") -> Any:
        """``x`` with its columns in the run's order when both name them (a DataFrame's or a
        Dataset's names against :attr:`columns`, by ``vaelab.data.columns``: one line naming
        ``where`` for a missing or unknown name); other data as they are (by position)."""
        order = column_order(data_forms.columns_of(x), self.columns, where)
        if order is None:
            return x
        if isinstance(x, Dataset):
            return in_run_order(x, self.columns, where)
        return x.iloc[:, order]

    def _data(self, x: object, c: object = None) -> torch.Tensor:
        schema = schema_of(self.model)          # a mixed table's DataFrame: by its schema
        x = schema.encode(x, "x") if schema is not None and data_forms.is_dataframe(x) else x
        x = data_forms.as_rows(self.in_run_order(x), where="x")
        shape = self.config.model.image_shape
        if shape is not None and tuple(x.shape[1:]) == tuple(shape):
            x = x.reshape(x.shape[0], -1)
        x = x.to(self.device, torch.float32)
        packed = c is None and x.shape[1] == self.model.data_dim    # [x | c] rows already
        if (self.config.model.condition is not None or c is not None) and not packed:
            x = condition_.pack(x, self.condition(c, len(x)))     # (model.conditional)
        return self.model.check_data(x, "x")

    def condition(self, c: object, n: int | None = None, flag: str = "c") -> torch.Tensor:
        """A conditional run's c from raw values: one value (a level, or the real numbers)
        → [C]; one per example (n of them) → [n, C]. One line for an unknown level."""
        spec = self.config.model.condition
        if spec is None:
            raise ValueError(f"{flag}: this run is not conditional (trained without a "
                             f"condition); expected no condition, got {type(c).__name__}")
        if c is None:
            raise ValueError(NEEDS_CONDITION)
        ndim = np.ndim(cast(Any, c))        # a str is one value (ndim 0); C > 1 reals: [C] is one
        one = ndim == 0 or (spec["kind"] == "real" and ndim == 1
                            and condition_spec.dim(spec) > 1)
        spec = condition_spec.with_class_names(spec, self.config.train.data)   # "Sneaker"
        coded = (torch.tensor(condition_spec.encode_value(spec, c, flag)) if one
                 else condition_.encode(spec, c, flag))
        if not one and n is not None and len(coded) != n:
            raise ValueError(f"{flag}: expected one condition per example ({n}), got "
                             f"{len(coded)}")
        return coded.to(self.device)

    def _q(self, x: object, what: str, c: object = None) -> tuple[torch.Tensor, Distribution]:
        """(x checked and flattened [B, D], q(z | x) batch [B]) without gradients."""
        if self.config.train.inference == "per-datapoint":
            raise ValueError(f"{what}: this run used inference='per-datapoint', which trains no "
                             f"encoder, so q(z | x) is not available for new x")
        x = self._data(x, c)
        scheme = scheme_for(self.config.train, self.model)
        with torch.no_grad():
            return x, scheme(x, None)

    def encode(self, x: torch.Tensor, c: object = None) -> Distribution:
        """q(z | x) for x [B, D] (q(z | x, c) for a conditional run: ``c`` one value or one
        per example, see :meth:`condition`): a Distribution with batch [B], event [L]."""
        return self._q(x, "encode", c)[1]

    def elbo(self, x: torch.Tensor, num_samples: int = 1, c: object = None) -> torch.Tensor:
        """ELBO per example with the encoder's q, [B] (noise from torch's global RNG)."""
        num_samples = _checks.positive_int("num_samples", num_samples)
        x, q = self._q(x, "elbo", c)
        with torch.no_grad():
            return elbo_terms(self.model, q, x, num_samples, validate=False).elbo

    def log_likelihood(self, x: torch.Tensor, num_samples: int = 5000,
                       chunk_size: int | None = None, c: object = None
                       ) -> LogLikelihoodEstimate:
        """Importance-sampled log p(x) (log p(x | c) given ``c``) with the encoder's q as
        proposal (tensors [B])."""
        x, q = self._q(x, "log_likelihood", c)
        return log_likelihood(self.model, q, x, num_samples, chunk_size)

    def sample(self, n: int, *, mean: bool = False, generator: torch.Generator | None = None,
               c: object = None) -> torch.Tensor:
        """n draws x ~ p(x) (x ~ p(x | c) given ``c``), [n, D] (``mean=True``: E[x | z])."""
        if self.config.model.condition is None and c is None:
            return self.model.sample(n, mean=mean, generator=generator)
        model = cast(ConditionalVAE, self.model)
        return model.sample(n, self.condition(c, n), mean=mean, generator=generator)

    def reconstruct(self, x: torch.Tensor, c: object = None, to: object = None) -> torch.Tensor:
        """E[x | z = mean of q(z | x)], [B, D]; a conditional run encodes under ``c`` and
        decodes under ``to`` (None: ``c``): x as if its condition had been ``to``."""
        x, q = self._q(x, "reconstruct", c)
        with torch.no_grad():
            if self.config.model.condition is None:
                return self.model.decode(q.mean).mean
            model = cast(ConditionalVAE, self.model)
            target = model.split(x)[1] if to is None else self.condition(to, len(x))
            return model.decode(q.mean, target).mean


def _json_object(path: Path) -> dict:
    """A JSON file's top-level object ({} when it is not one or cannot be read)."""
    try:
        value = json.loads(path.read_text("utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def load(run_dir: str | Path, *, device: str | torch.device = "cpu",
         trust: str | Iterable[str] | None = None) -> TrainedModel:
    """Load a trained model from a run directory (JSON + safetensors only, no code).

    A run trained on your own networks (``vaelab.fit``, net ``"factory"``) names the import
    path of their factory; importing it runs code, so it is imported only when ``trust`` names
    its module or a package above it (``trust=["mypkg"]``), and refused in one line otherwise.
    Runs of the built-in networks never import anything.

    Raises RunError (a ValueError) naming the file if the config is missing or invalid, or
    if the weights are missing, truncated or do not fit the config's shapes.
    """
    run_dir = Path(run_dir).expanduser()
    if not run_dir.is_dir():
        raise RunError(f"run_dir: expected a run folder, got {str(run_dir)!r} "
                       f"({'a file' if run_dir.exists() else 'it does not exist'})")
    config = read_config(run_dir)
    if config.model.data_dim is None:
        raise RunError(f"config: {str(run_dir / CONFIG_FILE)!r} has no data_dim (not written "
                       f"by a training run)")
    with _trust.trusting(trust):
        model = build_model(config.model)     # a MaskedVAE for runs on incomplete data
    read_model(run_dir, model)        # the weights fit config.json (names and shapes)
    check_consistent(run_dir)         # config, checkpoint and metrics describe one run
    model.to(device).eval()
    return TrainedModel(model, config, run_dir, read_metrics(run_dir))
