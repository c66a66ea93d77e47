"""What a dataset is: :class:`Dataset` (flattened rows) and the kinds of its values.

Role in vaelab: the base of :mod:`vaelab.data`; every reader and form ends in
:func:`_arrays_to_dataset`, which applies the one rule below.

**Data kinds and ranges (one rule).** Every dataset has a kind (:data:`DATA_KINDS`):

* ``"8-bit"`` — uint8 arrays and images, and integer arrays whose values all lie in 0–255
  (other than 0/1 only): read as k/255 ∈ [0, 1], and vaelab says so (:attr:`Dataset.notes`);
  float arrays in [0, 1] whose values are all multiples of 1/255 are 8-bit data too (that is
  how vaelab's own loaders hand them over);
* ``"binary"`` — bool arrays and any values all in {0, 1};
* ``"unit-interval"`` — other floats in [0, 1];
* ``"continuous"`` — any other finite real values (floats are never rescaled; integers
  outside 0–255 are taken as the numbers they are).

A likelihood then accepts or refuses the data by its support (``vaelab.model.likelihoods``),
and reports log p(x) and bits/dim only where its log_prob is normalised on that kind.
8-bit data may stay uint8 in memory (``load_dataset(..., keep_uint8=True)``, 4× less memory),
converted to float per batch by :class:`Batches`; ``.npy`` files may be memory-mapped
(``mmap=True``).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, replace

import numpy as np
import torch

from vaelab import _checks

SPLITS = ("train", "test")
DATA_KINDS = ("binary", "8-bit", "unit-interval", "continuous")
EIGHT_BIT_NOTE = "values 0–255 read as 8-bit data and scaled to [0, 1] as k/255"


@dataclass(frozen=True)
class Dataset:
    """A dataset held in memory as flattened rows.

    Attributes:
        x: [N, D] floating tensor (float32 from the loaders); images are scaled to [0, 1].
            With kind "8-bit" it may instead be uint8 holding k (``keep_uint8``); use
            :func:`to_unit` or :meth:`floats` for the float values k/255.
        labels: [N] int64 class labels, or None.
        image_shape: (C, H, W) with C*H*W == D when the rows are images (for plotting), else None.
        name: a short name for logs and figures.
        kind: one of :data:`DATA_KINDS` (None: not known; :func:`kind_of` infers it).
        notes: what the loader did to the values (e.g. scaled 0–255 to [0, 1]), for the user.
        columns: the D column names of a table (a pandas DataFrame's), kept in the run and in
            outputs; None when the columns have no names.
    """

    x: torch.Tensor
    labels: torch.Tensor | None
    image_shape: tuple[int, int, int] | None
    name: str
    kind: str | None = None
    notes: tuple[str, ...] = ()
    columns: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        x = self.x
        uint8 = isinstance(x, torch.Tensor) and x.dtype == torch.uint8 and self.kind == "8-bit"
        if not isinstance(x, torch.Tensor) or x.dim() != 2 or not (x.is_floating_point()
                                                                   or uint8):
            raise ValueError(f"x: expected a floating tensor of shape [N, D] (or uint8 with "
                             f"kind '8-bit'), got {_describe(x)}")
        if self.kind is not None:
            _checks.one_of("kind", self.kind, DATA_KINDS)
        n, d = x.shape
        labels = self.labels
        if labels is not None and (
            not isinstance(labels, torch.Tensor) or labels.shape != (n,)
            or labels.dtype != torch.int64
        ):
            raise ValueError(f"labels: expected None or an int64 tensor of shape [{n}], "
                             f"got {_describe(labels)}")
        shape = self.image_shape
        if shape is not None and (len(shape) != 3 or math.prod(shape) != d):
            raise ValueError(f"image_shape: expected None or (C, H, W) with C*H*W == D == {d}, "
                             f"got {shape!r}")
        if self.columns is not None and len(self.columns) != d:
            raise ValueError(f"columns: expected None or {d} column names (one per column of "
                             f"x), got {len(self.columns)}")

    def __len__(self) -> int:
        """Number of examples N."""
        return self.x.shape[0]

    def subset(self, index: torch.Tensor | slice) -> Dataset:
        """Rows chosen by ``index``: a slice, int64 indices [M] or a bool mask [N] → M rows."""
        labels = None if self.labels is None else self.labels[index]
        return replace(self, x=self.x[index], labels=labels)

    def floats(self) -> Dataset:
        """This dataset with x as float32 values (uint8 k → k/255); itself if already float."""
        return self if self.x.is_floating_point() else replace(self, x=to_unit(self.x))


def to_unit(x: torch.Tensor) -> torch.Tensor:
    """uint8 k [...] → float32 k/255 [...]; a floating tensor is returned unchanged."""
    return x if x.is_floating_point() else x.to(torch.float32).div_(255)


def infer_kind(x: torch.Tensor | np.ndarray) -> str:
    """The kind (:data:`DATA_KINDS`) of finite values x, by the rule of this module.

    uint8 → "8-bit"; bool or values all in {0, 1} → "binary"; other integers in 0–255 →
    "8-bit"; floats in [0, 1] all multiples of 1/255 (to 1e-4 of a level) → "8-bit", other
    floats in [0, 1] → "unit-interval"; anything else → "continuous".
    """
    array = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
    if array.dtype == np.uint8:
        return "8-bit"
    if array.size == 0 or array.dtype == np.bool_:
        return "binary"
    lo, hi, binary, lattice = _scan(array.reshape(array.shape[0] if array.ndim else 1, -1))
    if binary:
        return "binary"
    if array.dtype.kind in "iu":
        return "8-bit" if lo >= 0 and hi <= 255 else "continuous"
    if lo >= 0 and hi <= 1:
        return "8-bit" if lattice else "unit-interval"
    return "continuous"


def _scan(flat: np.ndarray, rows: int = 4096) -> tuple[float, float, bool, bool]:
    """(min, max, all in {0, 1}, all floats on the k/255 lattice) of flat [N, D], in row chunks
    (so a memory-mapped array is read a piece at a time)."""
    lo, hi, binary, lattice = math.inf, -math.inf, True, True
    for start in range(0, flat.shape[0], rows):
        part = np.asarray(flat[start:start + rows])
        if part.size == 0:
            continue
        lo, hi = min(lo, float(part.min())), max(hi, float(part.max()))
        binary = binary and bool(np.all((part == 0) | (part == 1)))
        if lattice and part.dtype.kind == "f":
            k = part.astype(np.float64) * 255
            lattice = bool(np.all(np.abs(k - np.round(k)) < 1e-4))
    return lo, hi, binary, lattice


def kind_of(ds: Dataset) -> str:
    """``ds.kind``, or the kind inferred from its values when the dataset does not say."""
    return ds.kind if ds.kind is not None else infer_kind(ds.x)


def _describe(value: object) -> str:
    """Short description of a value for error messages: type, dtype and shape of tensors."""
    if isinstance(value, (torch.Tensor, np.ndarray)):
        return f"{type(value).__name__} of dtype {value.dtype} and shape {tuple(value.shape)}"
    return f"{type(value).__name__} {value!r}"


def _convert(x: np.ndarray, where: str,
             keep_uint8: bool) -> tuple[np.ndarray, str, tuple[str, ...]]:
    """[N, D] array → (values, kind, notes) by the rule in the module docstring.

    8-bit data become float32 k/255 (or stay uint8 k with ``keep_uint8``); everything else
    becomes float32 with its values unchanged. Raises ValueError for non-numeric dtypes.
    """
    if x.dtype.kind not in "biuf":
        raise ValueError(f"{where}: expected numeric data, got dtype {x.dtype}")
    if x.dtype.kind == "f":
        if isinstance(x, np.memmap):
            _check_finite_chunked(x, where)
        else:
            _check_finite(x.astype(np.float32), x.shape, where)
    kind = infer_kind(x)
    if kind != "8-bit" or x.dtype.kind == "f":
        return _as_float32(x), kind, ()
    note = f"{where}: {x.dtype} {EIGHT_BIT_NOTE}"
    if x.dtype != np.uint8:
        x = x.astype(np.uint8)
    if keep_uint8:
        return x, kind, (note,)
    return np.divide(x, np.float32(255), dtype=np.float32), kind, (note,)


def _as_float32(x: np.ndarray) -> np.ndarray:
    """float32 view of x (no copy when it already is float32, e.g. a memory-mapped file)."""
    return x if x.dtype == np.float32 else x.astype(np.float32)


def _check_finite_chunked(flat: np.ndarray, where: str, rows: int = 4096) -> None:
    """:func:`_check_finite` a block of rows at a time (memory-mapped arrays stay on disk)."""
    for start in range(0, flat.shape[0], rows):
        part = np.asarray(flat[start:start + rows])
        if not np.all(np.isfinite(part)):
            bad = np.flatnonzero(~np.isfinite(part.reshape(-1)))
            first = np.unravel_index(int(bad[0]), part.shape)
            raise ValueError(f"{where}: expected finite values, got "
                             f"{int((~np.isfinite(flat)).sum())} non-finite (NaN or inf) values, "
                             f"the first at index {(start + int(first[0]), int(first[1]))}"
                             f"{MISSING_HINT}")


#: How to opt in to missing values, appended to the errors about NaN / empty cells.
MISSING_HINT = ("; to train on incomplete data (NaN or empty CSV cells marking missing entries) "
                "pass --missing mask to vaelab train (Python: load_dataset(..., "
                "allow_missing=True))")


def _check_finite(flat: np.ndarray, shape: tuple[int, ...], where: str) -> None:
    """Raise ValueError with the count and first index (in ``shape``) of non-finite values."""
    bad = ~np.isfinite(flat)
    count = int(bad.sum())
    if count:
        first = tuple(int(i) for i in np.unravel_index(int(np.flatnonzero(bad)[0]), shape))
        raise ValueError(f"{where}: expected finite values, got {count} non-finite "
                         f"(NaN or inf) values, the first at index {first}{MISSING_HINT}")


def _to_labels(labels: np.ndarray, n: int, where: str) -> torch.Tensor:
    """Labels array → int64 tensor [n]; integer-valued floats are accepted."""
    labels = np.asarray(labels)
    if labels.shape != (n,):
        raise ValueError(f"labels in {where}: expected shape ({n},), one per example, "
                         f"got shape {labels.shape}")
    kind = labels.dtype.kind
    integral = kind in "biu" or (
        kind == "f" and bool(np.all(np.isfinite(labels)) and np.all(labels == np.round(labels))))
    if not integral:
        raise ValueError(f"labels in {where}: expected integer class labels, got dtype "
                         f"{labels.dtype} with non-integer values")
    return torch.from_numpy(labels.astype(np.int64))


def _channels_first(x: np.ndarray, where: str) -> tuple[np.ndarray, tuple[str, ...]]:
    """N×C×H×W stays; N×H×W×C (C = 1, 3 or 4 last, not second) is transposed (a copy)."""
    if x.ndim != 4 or x.shape[1] in (1, 3, 4) or x.shape[3] not in (1, 3, 4):
        return x, ()
    note = f"{where}: read shape {x.shape} as N×H×W×C (channels last)"
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2)), (note,)


def _arrays_to_dataset(x: np.ndarray, labels: np.ndarray | None, name: str,
                       where: str, keep_uint8: bool = False) -> Dataset:
    """N×D, N×H×W, N×C×H×W or N×H×W×C array (+ labels [N]) → Dataset with rows [N, D].

    The kind and scaling follow the module's rule (:func:`_convert`); a C-contiguous
    memory-mapped array stays memory-mapped when no conversion is needed (uint8 with
    ``keep_uint8``, or float32).
    """
    if x.ndim not in (2, 3, 4):
        raise ValueError(f"{where}: expected data of shape N×D, N×H×W, N×C×H×W or N×H×W×C, "
                         f"got {x.ndim} dims (shape {x.shape})")
    if x.size == 0:
        raise ValueError(f"{where}: expected at least one example with at least one value, "
                         f"got an empty dataset (shape {x.shape})")
    x, notes = _channels_first(x, where)
    image_shape = None if x.ndim == 2 else ((1, *x.shape[1:]) if x.ndim == 3 else x.shape[1:])
    flat, kind, more = _convert(x.reshape(x.shape[0], -1), where, keep_uint8)
    y = None if labels is None else _to_labels(labels, x.shape[0], where)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)    # read-only memory map: never written
        tensor = torch.from_numpy(flat)
    return Dataset(tensor, y, image_shape, name, kind, notes + more)
