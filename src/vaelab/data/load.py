"""The one entry point: :func:`load_dataset` reads a named dataset or user data by its source.

Role in vaelab: a source is a dataset name (:mod:`vaelab.data.named`) or a path to user data
(:mod:`vaelab.data.readers`); either way the result is a :class:`vaelab.data.Dataset` read by
the one rule of :mod:`vaelab.data.kinds`, optionally cut to its first ``limit`` rows.
"""

from __future__ import annotations

import math
import os
import zipfile
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from vaelab import _checks
from vaelab.data.kinds import SPLITS, Dataset, _arrays_to_dataset, _describe
from vaelab.data.named import DEFAULT_DATASET, NAMED_SOURCES, _load_named
from vaelab.data.readers import (
    _label_index,
    _read_csv,
    _read_image_folder,
    _read_npy,
    _read_npz,
    csv_header,
)
from vaelab.dataset_names import DATA_PROTOCOLS, data_names


def _load_path(path: Path, split: str, label_column: str | int | None,
               keep_uint8: bool = False, mmap: bool = False) -> Dataset:
    """User data at ``path`` (.npy, .npz, .csv or a folder of images) → Dataset."""
    if not path.exists():
        raise FileNotFoundError(f"source: expected a dataset name ({', '.join(data_names())}) "
                                f"or an existing file or folder, got {str(path)!r}, which does "
                                f"not exist")
    suffix = path.suffix.lower()
    if label_column is not None and (path.is_dir() or suffix != ".csv"):
        raise ValueError(f"label_column: only applies to .csv files, got {label_column!r} for "
                         f"{path}")
    if path.is_dir():
        x, labels = _read_image_folder(path, split)
    elif suffix == ".npy":
        x, labels = _read_npy(path, split, mmap)
    elif suffix == ".npz":
        x, labels = _read_npz(path, split)
    elif suffix == ".csv":
        x, labels = _read_csv(path, split, label_column)
    else:
        raise ValueError(f"source: expected a .npy, .npz or .csv file or a folder of images, "
                         f"got {str(path)!r} (unknown format {suffix or 'without suffix'!r})")
    dataset = _arrays_to_dataset(x, labels, path.stem if path.is_file() else path.name,
                                 str(path), keep_uint8)
    return (_with_header(dataset, path, label_column) if suffix == ".csv" and path.is_file()
            else dataset)


def _with_header(dataset: Dataset, path: Path, label_column: str | int | None) -> Dataset:
    """A CSV's dataset with its header row's names as ``columns`` (without the label column),
    so a run records them and later data are matched to them by name
    (:mod:`vaelab.data.columns`); as it is for a CSV without a header."""
    header = csv_header(path)
    if header is None:
        return dataset
    if label_column is not None:
        del header[_label_index(label_column, header, len(header), path)]
    if len(header) != dataset.x.shape[1]:
        return dataset
    return replace(dataset, columns=tuple(header))


def is_named(source: str | os.PathLike) -> bool:
    """Whether ``source`` names a dataset (``NAMED_SOURCES``) rather than a path."""
    return _named(source) is not None


def has_split(source: str | os.PathLike, split: str) -> bool:
    """Whether ``source`` holds a part of its own for ``split`` (a named dataset has both;
    user data: an npz key ``x_<split>`` or a ``<split>/`` folder beside ``train/``; a file
    without splits is the train split only)."""
    if is_named(source):
        return True
    path = Path(source).expanduser()
    if path.is_dir():
        return (path / "train").is_dir() and (path / split).is_dir()
    if path.suffix.lower() == ".npz" and path.is_file():
        try:
            with np.load(path, allow_pickle=False) as archive:
                return f"x_{split}" in archive.files or (
                    split == "train" and "x_test" not in archive.files)
        except (ValueError, OSError, EOFError, zipfile.BadZipFile):
            return False
    return split == "train"


def location(source: str | os.PathLike) -> str:
    """``source`` as a run records it: a dataset name as it is, a path made absolute (so the
    run can be evaluated from any folder)."""
    if is_named(source):
        return str(source)
    return str(Path(source).expanduser().resolve())


def _named(source: str | os.PathLike) -> str | None:
    """The canonical dataset name if ``source`` is a str naming one, else None."""
    if not isinstance(source, str):
        return None
    key = source.strip().lower().replace("_", "-")
    # a data protocol of vaelab.config.DATA_PROTOCOLS reads its dataset's files
    protocols = {name: protocol["data"] for name, protocol in DATA_PROTOCOLS.items()}
    key = {"fashionmnist": "fashion-mnist", **protocols}.get(key, key)
    return key if key in NAMED_SOURCES else None


def load_dataset(source: str | os.PathLike = DEFAULT_DATASET, split: str = "train", *,
                 root: str | os.PathLike | None = None, download: bool = True,
                 limit: int | None = None, label_column: str | int | None = None,
                 keep_uint8: bool = False, mmap: bool = False,
                 allow_missing: bool = False) -> Dataset:
    """Load a named dataset or user data as a :class:`Dataset` with rows x [N, D].

    Args:
        source: "fashion-mnist" or "mnist" (IDX files found through :func:`search_dirs`,
            else downloaded into :func:`cache_dir` when ``download``), or a path to user data:
            a .npy (N×D, N×H×W or N×C×H×W), a .npz (data key "x", "data" or its single array;
            labels "y" or "labels"), a .csv of numbers (header row auto-detected) or a folder
            of same-size png/jpg images (class sub-folders give labels). A str that is a
            dataset name is the named dataset; write "./mnist" for a local path of that name.
            Kinds and scaling follow the rule of :mod:`vaelab.data.kinds`: 8-bit data (uint8,
            integers 0–255) become k/255 in [0, 1] and ``notes`` says so; floats are kept as
            they are.
            4-dim arrays may be N×C×H×W or N×H×W×C (C = 1, 3 or 4 last).
        split: "train" or "test". User data is one "train" split (the whole file) unless it
            has its own: npz keys x_train/x_test (y_train/y_test), or train/ and test/ folders.
        root: folder searched first for the IDX files of a named dataset.
        download: fetch a missing named dataset (MD5-checked, written atomically).
        limit: keep only the first ``limit`` examples.
        label_column: for .csv only, the header name or index of an integer label column.
        keep_uint8: keep 8-bit data as uint8 k in memory (4× less; :func:`to_unit` and
            :class:`Batches` convert per batch).
        mmap: memory-map a .npy file (read-only) instead of reading it; with float32 data, or
            uint8 data and ``keep_uint8``, the rows stay on disk until a batch needs them.
        allow_missing: keep NaN (and empty CSV cells, read as NaN) in user .npy/.npz/.csv
            data as marks of missing entries (:func:`_load_with_missing`); otherwise they are
            an error that says how to opt in.
    """
    if not isinstance(source, (str, os.PathLike)):
        raise TypeError(f"source: expected a dataset name or a path, got {_describe(source)}")
    _checks.one_of("split", split, SPLITS)
    if limit is not None:
        limit = _checks.positive_int("limit", limit)
    name = _named(source)
    if name is not None and label_column is not None:
        raise ValueError(f"label_column: only applies to .csv files, got {label_column!r} for "
                         f"the named dataset {name!r}")
    if name is not None:
        dataset = _load_named(name, split, root, download, keep_uint8)
    elif allow_missing:
        dataset = _load_with_missing(Path(source), split, label_column)
    else:
        dataset = _load_path(Path(source), split, label_column, keep_uint8, mmap)
    if limit is not None and limit < len(dataset):
        dataset = dataset.subset(slice(0, limit))
        labels = None if dataset.labels is None else dataset.labels.clone()
        dataset = replace(dataset, x=dataset.x.clone(), labels=labels)  # free the full arrays
    return dataset


def _load_with_missing(path: Path, split: str, label_column: str | int | None) -> Dataset:
    """User data where NaN (or an empty CSV cell) marks a missing entry → float32 with NaN.

    The observed values follow the rule of :mod:`vaelab.data.kinds` (the kind is that of the
    observed values: missing entries are read as 0 for it, a value every kind contains). ±inf
    stays an error.
    """
    suffix = path.suffix.lower()
    if suffix == ".csv" and path.is_file():
        x, labels = _read_csv(path, split, label_column, allow_missing=True)
    elif path.is_file() and suffix in (".npy", ".npz"):
        x, labels = _read_npy(path, split) if suffix == ".npy" else _read_npz(path, split)
    else:
        return _load_path(path, split, label_column)
    x = np.asarray(x)
    missing = np.isnan(x) if x.dtype.kind == "f" else np.zeros(x.shape, bool)
    ds = _arrays_to_dataset(np.where(missing, 0, x), labels, path.stem, str(path))
    values = ds.x.to(torch.float32)
    values[torch.from_numpy(missing.reshape(values.shape))] = math.nan
    ds = replace(ds, x=values)
    return _with_header(ds, path, label_column) if suffix == ".csv" else ds
