"""What a command reads and where it writes: a run, its held-out data, output paths, locks.

Role in vaelab: the shared first half of every command's body. A run directory is loaded with
one clear line when it is not one (:func:`load_run`); its evaluation data are the data it was
trained on, binarized once (seeded) as in training (:func:`held_out`); every output path is
checked writable before anything is computed (:func:`out_path`, :func:`writable_dir`), and a
run directory about to be written is locked, one writer per run (:func:`claim`).
"""

from __future__ import annotations

import argparse
import tempfile
from collections.abc import Callable
from pathlib import Path

from vaelab.cli.errors import one_line


def writable_dir(path: Path, what: str) -> Path:
    """Create ``path`` if needed and check a file can be written in it (else OSError→ValueError)."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as exc:
        raise ValueError(f"{what}: cannot write to {str(path)!r}: {exc.strerror or exc}") from None
    return path


def png_path(path: Path, what: str) -> Path:
    """:func:`out_path` for a .png, naming a folder called *.png as a folder."""
    if path.suffix.lower() == ".png" and path.is_dir():
        raise ValueError(f"{what}: expected a file name, got the folder {str(path)!r}")
    return out_path(path, ".png", what)


def out_path(path: Path, suffix: str, flag: str) -> Path:
    """``path`` checked to end in ``suffix``, not a folder, in a writable folder."""
    if path.suffix.lower() != suffix or path.is_dir():
        raise ValueError(f"{flag}: expected a {suffix} file name, got {str(path)!r}")
    writable_dir(path.parent, flag)
    return path


def load_run(run_dir: Path, device: str = "cpu"):
    """``vaelab.use.trained.load`` with a clear message for a folder that is not a run."""
    from vaelab.fit import runs
    from vaelab.use.trained import load

    if not run_dir.is_dir():
        state = "is a file" if run_dir.exists() else "does not exist"
        raise ValueError(f"RUN: expected a run directory written by `vaelab train`, got "
                         f"{str(run_dir)!r}, which {state}")
    if not (run_dir / runs.CONFIG_FILE).is_file():
        raise ValueError(f"RUN: {str(run_dir)!r} is not a vaelab run directory (no "
                         f"{runs.CONFIG_FILE}); expected a folder written by `vaelab train`")
    from vaelab._runtime import resolve_device

    return load(run_dir, device=resolve_device(device, "--device"))


def claim(*paths: Path) -> None:
    """Lock every run directory that one of ``paths`` (files about to be written) lies in:
    one writer per run (``vaelab.fit.lock``); other folders need no lock."""
    from vaelab.fit import lock, runs

    for path in paths:
        folder = path.parent
        if (folder / runs.CONFIG_FILE).is_file():
            lock.lock_run(folder)


def masked_run(trained) -> bool:
    """Whether the run was trained with --missing mask (its encoder reads NaN)."""
    return trained.config.model.missing == "mask"


def _load_held_out(trained, source: str, split: str, allow_missing: bool):
    """load_dataset, with one line for a --missing mask run given incomplete data."""
    from vaelab import data
    from vaelab.model.mixed_likelihood import schema_of

    schema = schema_of(trained)        # a mixed table: read and encoded by the run's schema
    try:
        if schema is not None:
            if not data.has_split(source, split):
                raise ValueError(f"split: {source} holds no {split!r} split")
            from vaelab.data.schema import table_dataset

            return table_dataset(schema, source, name=Path(source).stem,
                                 allow_missing=allow_missing)
        return data.load_dataset(source, split, allow_missing=allow_missing)
    except ValueError as err:
        if not masked_run(trained) or data.MISSING_HINT not in str(err):
            raise
        # the run already reads missing cells: the limit is this command's, not training's
        raise ValueError(f"--data: expected complete rows (no NaN or empty cells) for this "
                         f"command, got missing entries in {source!r}; `vaelab score RUN --data "
                         f"{source}` scores incomplete rows by log p̂(x_obs), the likelihood "
                         f"of their observed cells, "
                         f"`vaelab impute` fills them in and `vaelab encode` reads them") from None


def _run_data(trained) -> str:
    """The data a run was trained on, as it recorded them; one line naming the stored path
    and --data when that path is gone (the data moved, or an older run stored it relative to
    the folder it was trained in)."""
    from vaelab import data

    source = trained.config.train.data
    if source == "in-memory":     # vaelab.fit.train_data.IN_MEMORY (cli imports no torch here)
        raise ValueError("RUN: it was trained on data handed over in memory (Python), which "
                         "no name or path finds again; pass --data PATH to a file of them")
    if data.is_named(source) or Path(source).expanduser().exists():
        return source
    relative = "" if Path(source).is_absolute() else (
        ", a path relative to the folder the run was trained in")
    raise ValueError(f"RUN: its training data {source!r}{relative} no longer exist (moved or "
                     f"deleted?); pass --data PATH to where they are now")


def _same_file(a: str, b: str) -> bool:
    try:
        return Path(a).resolve() == Path(b).resolve()
    except (OSError, RuntimeError):
        return False


def _in_sample_note(source: str) -> str:
    # the very rows the model was fitted to: an in-sample figure, optimistic
    return (f"note: {source} has no test split and is the run's training data: using all of "
            f"its examples, the rows the model was trained on (in-sample, not held out; pass "
            f"--data with rows it has not seen)")


def streamed_source(trained, source: str | None, limit: int, note: Callable) -> str:
    """The .npy file ``encode --stream-block`` reads: --data, else the run's training data as
    plain encode takes it (all of a file's rows, with the same note). Refused in one line,
    like ``train --stream-block``: a named dataset (not one .npy file) and --limit (every
    row is read)."""
    from vaelab import data

    if limit:
        raise ValueError(f"--limit: --stream-block encodes every row of the file, so expected "
                         f"no --limit (or 0) with --stream-block, got --limit {limit}")
    if source is None:
        source = _run_data(trained)
        if data.is_named(source):
            raise ValueError(f"--stream-block: reads a .npy file, but the run was trained on "
                             f"the named dataset {source!r}; expected --data FILE.npy")
    if _same_file(source, trained.config.train.data):
        note(_in_sample_note(source))
    return source


def held_out(trained, source: str | None, split: str | None, seed: int, note: Callable,
              allow_missing: bool = False, condition: str | None = None,
              per_row: bool = False, flag: str = "--data"):
    """The run's evaluation data: (Dataset, split), binarized once (seeded) like training;
    ``per_row``: by ``vaelab.data.binarize_rows`` (each row its own draw, as a file read in
    blocks gets; encode), else by one generator over all rows (the evaluation protocol).
    A file with a header row meets a run that recorded column names by name
    (``vaelab.data.columns``: reordered to the run's order, one line naming ``flag`` for a
    missing or unknown name); a file without names, by position.

    ``allow_missing``: NaN / empty cells stay as missing entries (e.g. encode of a masked run).
    A conditional run's rows are [x | c] (``vaelab.data.condition``): c from the data, or
    ``condition`` (the --condition value) for every row.
    """
    from vaelab import data

    tc = trained.config.train
    source = source or _run_data(trained)
    try:
        dataset = _load_held_out(trained, source, split or "test", allow_missing)
        split = split or "test"
    except ValueError:
        if split is not None or not Path(source).exists():   # only user files lack splits
            raise
        dataset, split = _load_held_out(trained, source, "train", allow_missing), "train"
        if _same_file(source, trained.config.train.data):
            note(_in_sample_note(source))
        else:
            note(f"note: {source} has no test split; using all of its examples")
    dataset, c = _condition_of(trained, dataset, source, condition)
    dataset = _by_name(trained, dataset, flag, source)
    width = getattr(trained.model, "x_dim", trained.model.data_dim)
    if dataset.x.shape[1] != width:
        raise ValueError(f"data: the run's model expects {width} values per "
                         f"example, got {dataset.x.shape[1]} from {source!r}")
    if tc.binarize != "none" and per_row:             # NaN kept
        from dataclasses import replace

        dataset = replace(dataset, x=data.binarize_rows(data.to_unit(dataset.x), seed),
                          kind="binary")
    elif tc.binarize != "none" and allow_missing:       # one seeded draw, NaN kept
        from dataclasses import replace

        import torch

        from vaelab.fit.masked import _binarize_keep_nan

        x = _binarize_keep_nan(dataset.x.float(), torch.Generator().manual_seed(seed))
        dataset = replace(dataset, x=x, kind="binary")
    elif tc.binarize != "none":
        dataset = data.static_binarize(dataset, seed)
    likelihood = getattr(getattr(trained.model, "decoder", None), "likelihood", None)
    if likelihood is not None and hasattr(likelihood, "check_support"):   # outside: one line
        likelihood.check_support(dataset.x.nan_to_num(0.0) if allow_missing else dataset.x,
                                 "--data")
    if c is not None:
        from vaelab.condition_spec import describe
        from vaelab.data.condition import packed

        dataset = packed(dataset, c)
        note(f"note: a conditional run: every example is read with its condition c "
             f"({describe(trained.config.model.condition)}): log p(x | c), q(z | x, c)")
    return dataset, split


def _by_name(trained, dataset, flag: str, source: str):
    """``dataset`` in the run's column order when both name their columns (a mixed table's
    schema already read it by name)."""
    from vaelab.data.columns import in_run_order
    from vaelab.model.mixed_likelihood import schema_of

    if schema_of(trained) is not None:
        return dataset
    return in_run_order(dataset, trained.columns, flag, repr(str(source)))


def _condition_of(trained, dataset, source: str, value: str | None):
    """(dataset without condition columns, c [N, C] or [C]) of a conditional run, else
    (dataset, None); --condition without a conditional run is one line."""
    spec = trained.config.model.condition
    if spec is None:
        if value is not None:
            raise ValueError(f"--condition: the run is not conditional (trained without "
                             f"--condition); expected no --condition, got {value!r}")
        return dataset, None
    import torch

    from vaelab import condition_spec
    from vaelab.data import condition

    named = condition_spec.with_class_names(spec, trained.config.train.data)   # "Sneaker"
    if value is not None and spec["source"] != "columns":   # c given: the data's not needed
        return dataset, torch.tensor(condition_spec.encode_value(named, value))
    dataset, c = condition.for_dataset(spec, dataset, source)
    if value is not None:
        c = torch.tensor(condition_spec.encode_value(named, value))
    return dataset, c


def examples(args: argparse.Namespace, trained, allow_missing: bool = False,
             per_row: bool = False):
    """The data a use-command works on: (Dataset, split), the first --limit rows
    (``per_row``: see :func:`held_out`)."""
    dataset, split = held_out(trained, args.data, args.split, args.seed, printer(False),
                               allow_missing, getattr(args, "condition", None), per_row)
    if args.limit:
        dataset = dataset.subset(slice(0, args.limit))
    return dataset, split


def inference_of(trained) -> Callable | None:
    """q(z|x) for held-out x as the run was trained: the encoder, refined if semi-amortized."""
    tc = trained.config.train
    if tc.inference == "per-datapoint":
        raise ValueError("RUN: this run used --inference per-datapoint, which trains no "
                         "encoder, so q(z|x) for new data is not available")
    from vaelab.infer.schemes import Amortized, scheme_for

    scheme = scheme_for(tc, trained.model)     # refined as in training (same draws and steps)
    return None if isinstance(scheme, Amortized) else (lambda x: scheme(x))


def read_labels(path: Path, flag: str):
    """One number per example from a .npy (never unpickled), .txt or .csv file → array [N]."""
    import warnings

    import numpy as np

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")          # an empty file: reported by the caller
            if path.suffix.lower() == ".npy":
                values = np.load(path, allow_pickle=False)
            else:
                values = np.loadtxt(path, ndmin=1,
                                    delimiter="," if path.suffix.lower() == ".csv" else None)
    except (OSError, ValueError) as exc:
        raise ValueError(f"{flag}: cannot read one number per example from {str(path)!r}: "
                         f"{one_line(exc)}") from None
    values = values.reshape(-1) if values.ndim == 2 and 1 in values.shape else values
    if values.ndim != 1:
        raise ValueError(f"{flag}: expected one value per example, got shape "
                         f"{list(values.shape)} from {str(path)!r}")
    return values


def printer(quiet: bool) -> Callable[[str], None]:
    """print, flushed (or nothing when ``quiet``)."""
    return (lambda _line: None) if quiet else (lambda line: print(line, flush=True))


def progress_bar(desc: str) -> Callable:
    """A progress bar over batches, labelled ``desc`` (for a terminal)."""
    from tqdm.auto import tqdm

    return lambda items: tqdm(items, desc=desc, unit="batch", leave=False, dynamic_ncols=True)
