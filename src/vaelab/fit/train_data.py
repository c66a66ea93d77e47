"""The data a training run reads: loaded once, checked whole, split, binarized as trained.

Role in vaelab: ``vaelab.fit.train`` asks this module for its :class:`_Data` (train rows, the
validation rows and, for a user's DataLoader, the loader itself), after the whole data file
was read and checked as ``vaelab evaluate`` will read it (parses, same width, finite, in the
likelihood's range), so what would stop an evaluation later stops training now. It also
records where the data are (an absolute path, so the run can be evaluated from any folder)
and what they were (their SHA-256) in the run's ``config.json``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import cached_property
from pathlib import Path

import torch

from vaelab import data as data_
from vaelab import data_forms
from vaelab.config import RunConfig, TrainConfig
from vaelab.fit import conditioned, runs
from vaelab.fit.masked import load_masked_data

#: Validation rows per forward pass.


@dataclass(frozen=True)
class _Data:
    train: data_.Dataset
    val: data_.Dataset | None
    #: the user's DataLoader, whose batches training takes as they come (else None)
    loader: torch.utils.data.DataLoader | None = None
    #: a conditional model's resolved condition and the rows' c [N, C] (``fit.conditioned``)
    condition: dict | None = None
    c_train: torch.Tensor | None = None
    c_val: torch.Tensor | None = None

    @cached_property
    def sha256(self) -> str:
        """Fingerprint of the training rows (checked on resume)."""
        x = self.train.x.detach().cpu().contiguous()
        return hashlib.sha256(x.numpy().data).hexdigest()

    @property
    def num_train(self) -> int:
        """Training rows (a streamed file's all, ``fit.train_stream``)."""
        return len(self.train)


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
    if tc.stream_block is not None:      # read in blocks by vaelab.fit.train_stream instead
        raise ValueError("stream_block (--stream-block): a streamed file is loaded by "
                         "vaelab.fit.train_stream.load_streamed, not held in memory")
    _, dataset = mixed_table(config, dataset)       # a table read by its schema (else as is)
    if config.model.condition is not None:     # x and c (vaelab.fit.conditioned)
        data, spec, c_train, c_val = conditioned.load(config, dataset, _load_data)
        return replace(data, condition=spec, c_train=c_train, c_val=c_val)
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


def validation_rows(config: RunConfig) -> data_.Dataset | None:
    """The validation rows of a run of ``config`` on its recorded data: the same seeded split
    and the same one binarization as during training (None without validation rows).
    ``vaelab tune`` re-ranks its trials on them, never on the test split."""
    return _load_data(config, None).val


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


#: What a run trained on data handed to ``train(dataset=...)`` records as its data: no name or
#: path can find those rows again, so commands reading the run must be given ``--data``.
IN_MEMORY = "in-memory"


def _where_data_are(config: RunConfig, run_dir: Path, resume: bool,
                    in_memory: bool = False) -> RunConfig:
    """A new run records its data path made absolute (usable from any folder); a resumed run
    keeps what it recorded when ``config`` names the same data (a relative path included).
    Data handed over in memory are recorded as :data:`IN_MEMORY`, never as the config's
    default dataset, which would silently stand in for them later."""
    if in_memory:
        return replace(config, train=replace(config.train, data=IN_MEMORY))
    data = data_.location(config.train.data)
    if resume and (run_dir / runs.CONFIG_FILE).is_file():
        stored = runs.read_config(run_dir).train.data
        data = stored if data_.location(stored) == data else config.train.data
    return replace(config, train=replace(config.train, data=data))


def _data_info(data: _Data) -> dict:
    info = {"name": data.train.name, "num_train": data.num_train,
            "num_val": 0 if data.val is None else len(data.val)}
    if data.train.columns is not None:       # a DataFrame's column names, for the outputs
        info["columns"] = list(data.train.columns)
    return info


def mixed_table(config: RunConfig, dataset: object,
                log: Callable[[str], object] | None = None) -> tuple[RunConfig, object]:
    """For a likelihood that reads a table by its schema (``--likelihood mixed``): the table
    (``dataset``, a DataFrame, or the CSV at ``config.train.data``) with its schema inferred
    (or the run's own, on resume) and shown, encoded as a Dataset of model columns, and the
    config with the schema in its likelihood options (so config.json records it). Any other
    likelihood: ``(config, dataset)`` as they came."""
    from vaelab import catalogue
    from vaelab.data.schema import Schema, table_dataset

    entry, options = catalogue.chosen(config.model, "likelihood")
    if not getattr(entry.resolve(), "reads_schema", False) or isinstance(dataset,
                                                                          data_.Dataset):
        return config, dataset
    tc = config.train
    if config.model.condition is not None:
        raise ValueError(f"--condition: --likelihood {entry.name} does not take a condition yet "
                         f"(its schema would model the condition's columns too); drop "
                         f"--condition, or encode the table as numbers for a conditional run")
    if tc.binarize != "none":
        raise ValueError(f"--binarize: --likelihood {entry.name} keeps every column's values "
                         f"for its own likelihood, so expected --binarize none, got "
                         f"--binarize {tc.binarize}")
    if dataset is None:
        from vaelab.data.schema import read_table

        dataset, name = read_table(tc.data), Path(tc.data).stem
    elif data_forms.is_dataframe(dataset):
        name = "dataframe"
    else:
        raise TypeError(f"dataset: --likelihood {entry.name} reads a pandas DataFrame or a CSV "
                        f"file (its columns named), got {type(dataset).__name__}")
    schema = (Schema.from_list(options["columns"], "likelihood_options.columns")
              if options["columns"] is not None else
              Schema.infer(dataset, options["column_types"]))
    if log is not None:
        log(schema.describe())
    table = table_dataset(schema, dataset, name=name, where="data",
                          allow_missing=config.model.missing != "none")
    options = {**options, "columns": schema.to_list()}
    return replace(config, model=replace(config.model, likelihood_options=options)), table
