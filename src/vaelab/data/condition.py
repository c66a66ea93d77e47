"""The condition c of each example, from the data (conditional VAEs, Sohn et al. 2015).

How vaelab carries c: a conditional model reads each example as one *packed* row [x | c]
(x: the D data values, c: the C numbers of :mod:`vaelab.condition_spec`, one-hot or
standardized), so batches, splits, objectives and estimators treat (x, c) as one example and
need no second tensor. Packing happens after x is read, checked and binarized, so c is never
binarized or range-checked as data.

* :func:`take` — c's raw values out of a dataset (its labels, or named columns removed from x);
* :func:`resolve` — the levels or loc/scale of an unresolved spec, from the training values;
* :func:`encode` — raw values [N] or [N, k] → c [N, C], one line for an unknown level;
* :func:`pack` / :func:`packed` — [x | c] rows.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from vaelab import condition_spec
from vaelab.data.kinds import Dataset

#: A single integer column with at most this many distinct values reads as categorical.
AUTO_LEVELS = 50


def take(spec: dict, dataset: Dataset, path: str | Path | None = None,
         flag: str = "--condition") -> tuple[Dataset, np.ndarray]:
    """(dataset without the condition's columns, the raw condition values [N] or [N, k]).

    Source "labels": the dataset's labels (x unchanged). Source "columns": the named columns
    (a DataFrame's names, or the header of the CSV at ``path``) removed from x.
    """
    if spec["source"] == "given":
        raise ValueError(f"{flag}: the run was conditioned on values given beside x in Python "
                         f"(dataset=(x, c)); pass c with the data the same way")
    if spec["source"] == "labels":
        if dataset.labels is None:
            raise ValueError(f"{flag} labels: expected data with class labels, got "
                             f"{dataset.name!r}, which has none (a CSV: name its label "
                             f"column in --condition instead)")
        return dataset, dataset.labels.numpy()
    names = list(dataset.columns) if dataset.columns is not None else _header(path)
    wanted = spec["columns"]
    absent = [c for c in wanted if c not in names]
    if absent:
        raise ValueError(f"{flag}: expected column names of {dataset.name!r}, got {absent} "
                         f"(its columns: {names or 'none named, no header row'})")
    index = [names.index(c) for c in wanted]
    keep = [i for i in range(dataset.x.shape[1]) if i not in index]
    if not keep:
        raise ValueError(f"{flag}: expected columns left over for x, got every column of "
                         f"{dataset.name!r} named as the condition")
    values = dataset.x[:, index].double().numpy()
    columns = None if dataset.columns is None else tuple(names[i] for i in keep)
    return replace(dataset, x=dataset.x[:, keep].contiguous(), columns=columns), values


def _header(path: str | Path | None) -> list[str]:
    from vaelab.data.readers import csv_header

    if path is None or Path(path).suffix.lower() != ".csv" or not Path(path).is_file():
        return []
    return csv_header(Path(path)) or []


def resolve(spec: dict, values: object, flag: str = "--condition") -> dict:
    """``spec`` with its kind and levels (categorical) or loc/scale (real) from ``values``.

    Kind when not given: labels, text and a single integer-valued column with at most
    :data:`AUTO_LEVELS` distinct values are categorical; anything else is real.
    """
    if condition_spec.is_resolved(spec):
        return spec
    array = np.asarray(values)
    kind = spec.get("kind") or _kind(spec, array)
    if kind == "categorical":
        if array.ndim == 2 and array.shape[1] == 1:
            array = array[:, 0]
        if array.ndim != 1:
            raise ValueError(f"{flag}: a categorical condition is one value per example, got "
                             f"shape {list(array.shape)}; give one column, or kind 'real'")
        levels = sorted({_level(v, flag) for v in array.tolist()}, key=_order)
        if len(levels) > condition_spec.MAX_LEVELS:
            raise ValueError(condition_spec.too_many_levels(len(levels), flag))
        return {**spec, "kind": kind, "levels": levels}
    real = _real(array, flag)
    scale = real.std(0)
    return {**spec, "kind": kind, "loc": real.mean(0).tolist(),
            "scale": np.where(scale > 0, scale, 1.0).tolist()}


def _kind(spec: dict, array: np.ndarray) -> str:
    if spec["source"] == "labels" or array.dtype.kind in "OUSb":
        return "categorical"
    flat = array.reshape(len(array), -1)
    integral = (flat.shape[1] == 1 and array.dtype.kind in "iuf"
                and bool(np.all(np.isfinite(flat))) and bool(np.all(flat == np.round(flat))))
    return ("categorical" if integral and len(np.unique(flat)) <= AUTO_LEVELS
            else "real")


def _level(value: object, flag: str) -> int | str:
    """A level as JSON keeps it: an integer (also a whole float) or a string."""
    if isinstance(value, (bool, np.bool_)):
        return int(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)) and float(value).is_integer():
        return int(value)
    if isinstance(value, str):
        return value
    raise ValueError(f"{flag}: expected category levels that are integers or text, got "
                     f"{value!r}; pass numbers as a real condition (kind 'real')")


def _order(level: int | str) -> tuple[int, int | str]:
    return (0, level) if isinstance(level, int) else (1, level)


def _real(array: np.ndarray, flag: str) -> np.ndarray:
    try:
        real = np.asarray(array, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"{flag}: a real condition needs numbers, got values of type "
                         f"{array.dtype}") from None
    real = real.reshape(len(real), -1)
    if not np.all(np.isfinite(real)):
        raise ValueError(f"{flag}: expected finite condition values, got "
                         f"{int((~np.isfinite(real)).sum())} non-finite")
    return real


def encode(spec: dict, values: object, flag: str = "--condition") -> torch.Tensor:
    """Raw condition values (N of them) → c [N, C] float32 (one-hot, or standardized)."""
    array = np.asarray(values)
    if spec["kind"] == "categorical":
        array = array.reshape(-1) if array.ndim == 2 and array.shape[1] == 1 else array
        if array.ndim != 1:
            raise ValueError(f"{flag}: expected one condition value per example, got shape "
                             f"{list(array.shape)}")
        lookup = {str(level): i for i, level in enumerate(spec["levels"])}
        keys = [str(_level(v, flag)) for v in array.tolist()]
        unknown = sorted({k for k in keys if k not in lookup})
        if unknown:
            shown = spec["levels"] if len(spec["levels"]) <= 20 else spec["levels"][:20]
            raise ValueError(f"{flag}: expected the run's condition levels {shown}, got "
                             f"levels never seen in training: {unknown[:5]}")
        index = torch.tensor([lookup[k] for k in keys], dtype=torch.int64)
        return torch.nn.functional.one_hot(index, len(lookup)).to(torch.float32)
    real = _real(array, flag)
    if real.shape[1] != condition_spec.dim(spec):
        raise ValueError(f"{flag}: expected {condition_spec.dim(spec)} condition value(s) per "
                         f"example, got {real.shape[1]}")
    loc, scale = np.asarray(spec["loc"]), np.asarray(spec["scale"])
    return torch.from_numpy((real - loc) / scale).to(torch.float32)


def pack(x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """[x | c]: x [N, D] and c [N, C] (or [C], the same c for every row) → [N, D + C]."""
    c = c.to(x.device, x.dtype if x.is_floating_point() else torch.float32)
    if c.dim() == 1:
        c = c.expand(x.shape[0], -1)
    return torch.cat([x.float() if not x.is_floating_point() else x, c], dim=-1)


def packed(dataset: Dataset, c: torch.Tensor) -> Dataset:
    """``dataset`` whose rows are [x | c] (float32; image_shape dropped: rows are not images)."""
    x = dataset.floats().x
    return replace(dataset, x=pack(x, c), image_shape=None, columns=None)


def for_dataset(spec: dict, dataset: Dataset, path: str | Path | None = None,
                flag: str = "--condition") -> tuple[Dataset, torch.Tensor]:
    """(dataset without condition columns, c [N, C]) for held-out data of a trained run."""
    dataset, values = take(spec, dataset, path, flag)
    return dataset, encode(spec, values, flag)
