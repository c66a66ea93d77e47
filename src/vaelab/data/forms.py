"""Data as users hold it → a :class:`vaelab.data.Dataset`: the one conversion every entry uses.

Role in vaelab: part of :mod:`vaelab.data`. ``train(..., dataset=...)``,
``evaluate_model``, ``impute``, the loaded run's methods and the scikit-learn estimators all
call :func:`as_dataset` or :func:`as_rows`, so each accepts the same forms:

* a numpy array or a torch tensor (N×D, N×H×W, N×C×H×W or N×H×W×C);
* a pandas ``DataFrame`` of numeric (or bool) columns: its column names are kept
  (:attr:`Dataset.columns`), recorded in the run and given back on outputs; a text, date or
  category column is refused in one line naming it;
* a map-style torch ``Dataset`` whose items are x or (x, y): the items are stacked in index
  order (x of one shape and dtype for every item; an integer y becomes the labels);
* a ``DataLoader``, whose batches (x or (x, y)) are read once, in the order of one pass, for
  the checks and statistics; training then takes its batches as they come
  (:class:`LoaderBatches`: vaelab does not re-batch or re-shuffle them);
* a :class:`vaelab.data.Dataset`, as it is.

After that every form goes through the same rule of :mod:`vaelab.data` (kinds binary, 8-bit,
unit-interval, continuous; 8-bit integers read as k/255; NaN refused unless missing entries are
wanted) with the same one-line messages, so an array and its DataFrame, Dataset or DataLoader
give the same rows, bit for bit, and the same trained weights under the same seed.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import replace
from typing import TypeGuard

import numpy as np
import torch

from vaelab.data.batches import _derive_seed, _UniformStream
from vaelab.data.kinds import Dataset, _arrays_to_dataset

#: The forms accepted, for messages.
FORMS = ("a numpy array, a torch tensor, a pandas DataFrame, a map-style torch Dataset "
         "(items x or (x, y)), a torch DataLoader or a vaelab.data.Dataset")


def is_loader(data: object) -> TypeGuard[torch.utils.data.DataLoader]:
    """Whether ``data`` is a torch DataLoader (its batches are used as they come)."""
    return isinstance(data, torch.utils.data.DataLoader)


def is_dataframe(data: object) -> bool:
    """Whether ``data`` is a pandas DataFrame (without importing pandas when it is not)."""
    return type(data).__name__ == "DataFrame" and type(data).__module__.startswith("pandas")


def as_dataset(data: object, *, name: str = "data", where: str = "data",
               allow_missing: bool = False, seed: int = 0) -> Dataset:
    """Any accepted form (module docstring) → a :class:`vaelab.data.Dataset` of rows [N, D].

    Args:
        data: the user's data.
        name: the dataset's name in logs and the run.
        where: how messages name the data (an argument or a flag).
        allow_missing: keep NaN as marks of missing entries (float32 rows with NaN); otherwise
            NaN is an error that says how to opt in.
        seed: seeds torch's RNG while a DataLoader is read once (a shuffling loader then gives
            the same rows, in the same order, every time).

    Raises TypeError for a form not accepted, ValueError (one line naming ``where``) for data
    of the wrong shape, dtype or values.
    """
    if isinstance(data, Dataset):
        return data
    columns, labels = None, None
    if is_dataframe(data):
        x, columns = frame_values(data, where)
    elif isinstance(data, torch.Tensor):
        x = _tensor_array(data)
    elif isinstance(data, np.ndarray):
        x = data
    elif is_loader(data):
        x, labels = _loader_values(data, where, seed)
    elif isinstance(data, torch.utils.data.IterableDataset):
        raise TypeError(f"{where}: expected a map-style torch Dataset (with __len__ and "
                        f"__getitem__), got the iterable {type(data).__name__}; wrap it in a "
                        f"DataLoader")
    elif isinstance(data, torch.utils.data.Dataset):
        x, labels = _item_values(data, where)
    else:
        raise TypeError(f"{where}: expected {FORMS}, got {type(data).__name__}")
    # row-major, as an array of rows is: a DataFrame's column-major block would give matrix
    # products that round differently
    return _dataset(np.ascontiguousarray(x), labels, name, where, allow_missing, columns)


def as_rows(data: object, *, where: str = "x", allow_missing: bool = False) -> torch.Tensor:
    """Any accepted form → float rows [N, D] for the uses (a floating tensor passes as it is,
    keeping its dtype and device; its values are checked by the model)."""
    if isinstance(data, torch.Tensor) and data.is_floating_point():
        return data.reshape(data.shape[0], -1) if data.dim() > 2 else data
    return as_dataset(data, where=where, allow_missing=allow_missing).floats().x


def columns_of(data: object) -> tuple[str, ...] | None:
    """A DataFrame's (or Dataset's) column names, else None."""
    if is_dataframe(data):
        return tuple(str(c) for c in data.columns)  # type: ignore[attr-defined]
    return getattr(data, "columns", None) if isinstance(data, Dataset) else None


def _dataset(x: np.ndarray, labels: np.ndarray | None, name: str, where: str,
             allow_missing: bool, columns: tuple[str, ...] | None) -> Dataset:
    """The rule of :mod:`vaelab.data` on one array (NaN kept as missing when allowed)."""
    if not allow_missing or x.dtype.kind != "f" or not np.isnan(x).any():
        ds = _arrays_to_dataset(x, labels, name, where)
        return ds if columns is None else replace(ds, columns=columns)
    missing = np.isnan(x)          # the kind is that of the observed values, missing read as 0
    ds = _arrays_to_dataset(np.where(missing, 0, x), labels, name, where)
    values = ds.x.to(torch.float32)
    values[torch.from_numpy(missing.reshape(values.shape))] = math.nan
    return replace(ds, x=values, columns=columns)


def _tensor_array(x: torch.Tensor) -> np.ndarray:
    x = x.detach().cpu()
    if x.dtype in (torch.bfloat16, torch.float16):       # numpy has no bfloat16
        x = x.to(torch.float32)
    return x.numpy()


# --------------------------------------------------------------------------- pandas


def frame_values(frame: object, where: str) -> tuple[np.ndarray, tuple[str, ...]]:
    """A DataFrame's values [N, D] and column names; one line naming its non-numeric columns."""
    from pandas.api.types import is_bool_dtype, is_numeric_dtype

    df = frame  # a pandas DataFrame (checked by the caller)
    dtypes = df.dtypes  # type: ignore[attr-defined]
    bad = [f"{str(c)!r} ({dtypes.iloc[i]})" for i, c in enumerate(df.columns)  # type: ignore
           if not (is_numeric_dtype(dtypes.iloc[i]) or is_bool_dtype(dtypes.iloc[i]))]
    if bad:
        more = f" and {len(bad) - 5} more" if len(bad) > 5 else ""
        raise ValueError(f"{where}: expected numeric columns in the DataFrame, got "
                         f"{len(bad)} non-numeric column(s): {', '.join(bad[:5])}{more}; drop "
                         f"them or encode them as numbers first")
    values = df.to_numpy()  # type: ignore[attr-defined]
    if values.dtype.kind not in "biuf":   # mixed or nullable dtypes (pd.NA): floats with NaN
        values = df.to_numpy(dtype=np.float64, na_value=np.nan)  # type: ignore[attr-defined]
    return values, tuple(str(c) for c in df.columns)  # type: ignore[attr-defined]


# --------------------------------------------------------------------------- torch data


def _split_item(item: object, where: str, what: str) -> tuple[object, object]:
    """An item or batch x or (x, y) → (x, y or None)."""
    if isinstance(item, (tuple, list)):
        if len(item) == 1:
            return item[0], None
        if len(item) == 2:
            return item[0], item[1]
        raise ValueError(f"{where}: expected {what} to be x or (x, y), got a "
                         f"{type(item).__name__} of {len(item)} parts")
    return item, None


def _as_numbers(x: object, where: str, what: str) -> np.ndarray:
    """x (a tensor or array of numbers) → numpy; one line naming ``what`` otherwise."""
    if isinstance(x, torch.Tensor):
        x = _tensor_array(x)
    if not isinstance(x, np.ndarray):
        raise TypeError(f"{where}: expected {what}'s x to be a tensor or array of numbers, "
                        f"got {type(x).__name__}")
    if x.dtype.kind not in "biuf":
        raise ValueError(f"{where}: expected {what}'s x to hold numbers, got dtype {x.dtype}")
    return x


def _same_form(first: np.ndarray, x: np.ndarray, where: str, what: str, lead: int) -> None:
    if x.shape[lead:] != first.shape[lead:]:
        raise ValueError(f"{where}: expected every {what.split()[0]}'s x to have the shape "
                         f"{tuple(first.shape[lead:])} of the first, got "
                         f"{tuple(x.shape[lead:])} at {what}")
    if x.dtype != first.dtype:
        raise ValueError(f"{where}: expected every {what.split()[0]}'s x to have the dtype "
                         f"{first.dtype} of the first, got {x.dtype} at {what}")


def _labels(ys: list[object]) -> np.ndarray | None:
    """Integer class labels from the y parts, or None (absent, not scalars, not integers)."""
    if not ys or any(y is None for y in ys):
        return None
    try:
        values = np.asarray([y.item() if isinstance(y, (torch.Tensor, np.ndarray)) else y
                             for y in ys])
    except (ValueError, RuntimeError, TypeError):    # not one number per item: no labels
        return None
    if values.ndim != 1 or values.dtype.kind not in "biuf":
        return None
    if values.dtype.kind == "f" and not np.all(values == np.round(values)):
        return None
    return values


def _item_values(ds: object, where: str) -> tuple[np.ndarray, np.ndarray | None]:
    """A map-style Dataset's items x or (x, y), stacked in index order → (x [N, ...], labels)."""
    n = len(ds)  # type: ignore[arg-type]
    if n == 0:
        raise ValueError(f"{where}: expected at least one item, got an empty Dataset")
    xs: list[np.ndarray] = []
    ys: list[object] = []
    for i in range(n):
        x, y = _split_item(ds[i], where, f"item {i}")  # type: ignore[index]
        x = _as_numbers(x, where, f"item {i}")
        if x.ndim == 0:
            raise ValueError(f"{where}: expected item {i}'s x to be a vector or an image "
                             f"(shape (D,), (H, W) or (C, H, W)), got a single number")
        if xs:
            _same_form(xs[0], x, where, f"item {i}", 0)
        xs.append(x)
        ys.append(y)
    return np.stack(xs), _labels(ys)


def _loader_values(loader: torch.utils.data.DataLoader, where: str,
                   seed: int) -> tuple[np.ndarray, np.ndarray | None]:
    """One pass over a DataLoader's batches x [B, ...] or (x [B, ...], y [B]), concatenated."""
    xs: list[np.ndarray] = []
    ys: list[object] = []
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for i, batch in enumerate(loader):
            x, y = _split_item(batch, where, f"batch {i}")
            x = _as_numbers(x, where, f"batch {i}")
            if x.ndim < 2:
                raise ValueError(f"{where}: expected batch {i}'s x to have shape [B, D] or "
                                 f"[B, C, H, W], got shape {tuple(x.shape)}")
            if xs:
                _same_form(xs[0], x, where, f"batch {i}", 1)
            xs.append(x)
            ys.append(y)
    if not xs:
        raise ValueError(f"{where}: expected at least one batch, got an empty DataLoader")
    labels = None
    if all(isinstance(y, torch.Tensor) and y.dim() == 1 for y in ys):
        labels = _labels([v for y in ys if isinstance(y, torch.Tensor) for v in y.tolist()])
    return np.concatenate(xs), labels


class LoaderBatches:
    """A DataLoader's batches as training takes them: ``epoch(e)`` yields (x [B, D] float32 on
    ``device``, None) for each batch, in the loader's own order and sizes.

    Its integers are read as the whole data were (8-bit → k/255, else their values), so each
    row is the row :func:`as_dataset` gave; with ``binarize="dynamic"`` each batch gets
    1{u < x} from the stream :class:`vaelab.data.Batches` uses for (seed, epoch, rank). A
    loader that shuffles without its own generator draws its order from a stream seeded by
    (seed, epoch, rank) (:meth:`_batches`), so a resumed run sees the same batches.
    """

    def __init__(self, loader: torch.utils.data.DataLoader, reference: Dataset, *,
                 seed: int = 0, binarize: str = "none", rank: int = 0,
                 device: torch.device | str = "cpu", where: str = "data") -> None:
        self.loader, self.seed, self.rank, self.where = loader, seed, rank, where
        self.binarize, self.device = binarize, torch.device(device)
        self.eight_bit = reference.kind == "8-bit"
        self.data_dim = reference.x.shape[1]

    def __len__(self) -> int:
        return len(self.loader)

    def _rows(self, x: object, i: int) -> torch.Tensor:
        x = x if isinstance(x, torch.Tensor) else torch.from_numpy(
            _as_numbers(x, self.where, f"batch {i}"))
        rows = x.reshape(x.shape[0], -1)
        if rows.shape[1] != self.data_dim:
            raise ValueError(f"{self.where}: expected batch {i} to have {self.data_dim} values "
                             f"per row, got {rows.shape[1]}")
        if not rows.is_floating_point() and self.eight_bit:
            return rows.to(torch.float32).div_(255)
        return rows.to(torch.float32, copy=True)     # binarized in place below: not theirs

    def epoch(self, epoch: int) -> Iterator[tuple[torch.Tensor, None]]:
        """This epoch's batches, as the loader gives them."""
        uniform = None
        if self.binarize == "dynamic":
            uniform = _UniformStream(_derive_seed(self.seed, epoch, 1 + self.rank), self.device)
        for i, batch in enumerate(self._batches(epoch)):
            x = self._rows(_split_item(batch, self.where, f"batch {i}")[0], i).to(self.device)
            if uniform is not None:
                x = x.gt_(uniform.like(x)).to(torch.float32)
            yield x, None

    def _batches(self, epoch: int) -> Iterator[object]:
        """The loader's batches, every draw it makes from torch's global RNG (its iterator's
        base seed, a shuffle, a random transform) taken from a stream of its own seeded by
        (seed, epoch, rank): the training noise stays that of the same run on an array, and
        the batches of an epoch are the same after a resume."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(_derive_seed(self.seed, epoch, 1000 + self.rank))
            state = torch.get_rng_state()
        batches = None
        while True:
            with torch.random.fork_rng(devices=[]):
                torch.set_rng_state(state)
                batches = iter(self.loader) if batches is None else batches
                batch = next(batches, None)
                state = torch.get_rng_state()
            if batch is None:
                return
            yield batch
