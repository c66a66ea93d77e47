"""Datasets → tensors: named IDX datasets, user arrays, binarization and batching.

Role in vaelab: the leaf module that turns data on disk into a :class:`Dataset` of flattened
float32 rows ``x`` of shape [N, D] (images scaled to [0, 1]) and feeds them to training in
seeded, resumable, shardable batches. It knows nothing of models.

Named datasets are Fashion-MNIST (Xiao, Rasul & Vollgraf 2017, arXiv:1708.07747) and MNIST
(LeCun et al. 1998), both stored as IDX files. Binary-data models (a Bernoulli decoder p(x|z))
are trained on grey levels turned into {0, 1} by a Bernoulli draw, either once ("static"
binarization, :func:`static_binarize`) or afresh every time an example is seen ("dynamic"
binarization, :class:`Batches`).

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

import gzip
import hashlib
import math
import os
import re
import struct
import tempfile
import urllib.request
import warnings
import zipfile
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from numbers import Real
from pathlib import Path

import numpy as np
import torch

from vaelab import _checks

DEFAULT_DATASET = "fashion-mnist"
SPLITS = ("train", "test")
BINARIZE_MODES = ("dynamic", "static", "none")
SYSTEM_DATA_DIR = Path("/usr/share/datasets")  # Debian's dataset-fashion-mnist installs here
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")
DATA_KINDS = ("binary", "8-bit", "unit-interval", "continuous")
EIGHT_BIT_NOTE = "values 0–255 read as 8-bit data and scaled to [0, 1] as k/255"


@dataclass(frozen=True)
class NamedSource:
    """Where a named IDX dataset is downloaded from.

    ``md5`` maps each ``.gz`` file name to the MD5 digest published by the dataset's authors.
    """

    base_url: str
    md5: dict[str, str]
    install_hint: str


IDX_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}

NAMED_SOURCES: dict[str, NamedSource] = {
    "fashion-mnist": NamedSource(
        base_url="http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
        md5={
            "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
            "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
            "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
            "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
        },
        install_hint="`apt-get install dataset-fashion-mnist`, or set VAELAB_DATA to a folder "
        "holding the IDX files",
    ),
    "mnist": NamedSource(
        base_url="https://ossci-datasets.s3.amazonaws.com/mnist/",
        md5={
            "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
            "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
            "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
            "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
        },
        install_hint="put the four IDX files (train-images-idx3-ubyte.gz, ...) in a folder and "
        "set VAELAB_DATA to it (e.g. `VAELAB_DATA=~/mnist vaelab train --data mnist`), or go "
        "online for the checked download",
    ),
}


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


# --------------------------------------------------------------------------- IDX files

_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
_IDX_CODES = {np.dtype(v).str[1:]: k for k, v in _IDX_DTYPES.items()}


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an IDX file (gzipped or not, detected from its first bytes) into a read-only array.

    Raises ValueError naming the file when it is corrupt, truncated or not IDX.
    """
    path = Path(path)
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as err:
            raise ValueError(f"IDX file {path}: expected valid gzip data, got a corrupt or "
                             f"truncated stream ({err})") from err
    return _parse_idx(raw, path)


def _parse_idx(raw: bytes, path: Path) -> np.ndarray:
    """Validate the IDX header (magic, dims) and sizes of ``raw``; one ``np.frombuffer``."""
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES or raw[3] == 0:
        raise ValueError(f"IDX file {path}: expected magic bytes 00 00 <type> <ndim>, "
                         f"got {raw[:4].hex(' ') or 'an empty file'}")
    ndim = raw[3]
    offset = 4 + 4 * ndim
    if len(raw) < offset:
        raise ValueError(f"IDX file {path}: expected a {offset}-byte header for {ndim} dims, "
                         f"got {len(raw)} bytes (truncated)")
    dims = struct.unpack(f">{ndim}I", raw[4:offset])
    dtype = np.dtype(_IDX_DTYPES[raw[2]])
    expected = math.prod(dims) * dtype.itemsize
    if len(raw) - offset != expected:
        raise ValueError(f"IDX file {path}: expected {expected} data bytes for shape {dims} of "
                         f"{dtype.name}, got {len(raw) - offset} (truncated or corrupt)")
    return np.frombuffer(raw, dtype=dtype, offset=offset).reshape(dims)


def write_idx(path: str | os.PathLike, array: np.ndarray) -> Path:
    """Write ``array`` (uint8, int8, int16, int32, float32 or float64) as IDX; gzip if *.gz."""
    path = Path(path)
    array = np.asarray(array)
    code = _IDX_CODES.get(array.dtype.str[1:])
    if code is None or not 1 <= array.ndim <= 255:
        raise ValueError(f"array: expected 1 to 255 dims of dtype uint8, int8, int16, int32, "
                         f"float32 or float64, got {_describe(array)}")
    header = bytes([0, 0, code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    blob = header + array.astype(np.dtype(_IDX_DTYPES[code]), copy=False).tobytes()
    path.write_bytes(gzip.compress(blob, mtime=0) if path.suffix == ".gz" else blob)
    return path


# --------------------------------------------------------------------------- named datasets


def cache_dir(name: str) -> Path:
    """Download cache of dataset ``name``: ``$XDG_CACHE_HOME/vaelab/<name>`` (~/.cache default)."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "vaelab" / name


def search_dirs(name: str, root: str | os.PathLike | None = None) -> list[Path]:
    """Folders searched for the IDX files of ``name``, in order.

    ``root`` and ``root/<name>``, ``$VAELAB_DATA`` and ``$VAELAB_DATA/<name>``,
    ``/usr/share/datasets/<name>``, then the download cache.
    """
    dirs = []
    if root is not None:
        dirs += [Path(root), Path(root) / name]
    env = os.environ.get("VAELAB_DATA")
    if env:
        dirs += [Path(env), Path(env) / name]
    return dirs + [SYSTEM_DATA_DIR / name, cache_dir(name)]


def _locate(name: str, split: str, root: str | os.PathLike | None) -> list[Path] | None:
    """First folder holding both IDX files of ``split`` (``.gz`` preferred) → their paths."""
    for folder in search_dirs(name, root):
        found = []
        for stem in IDX_FILES[split]:
            found += [p for p in (folder / f"{stem}.gz", folder / stem) if p.is_file()][:1]
        if len(found) == len(IDX_FILES[split]):
            return found
    return None


def download_file(url: str, dest: str | os.PathLike, md5: str, *, timeout: float = 60.0) -> Path:
    """Fetch ``url`` into ``dest`` atomically (temp file + rename) after checking its MD5.

    On any failure nothing is left at ``dest`` or beside it; a checksum mismatch raises
    ValueError, a network failure the ``OSError`` of urllib.
    """
    dest = Path(dest)
    created = first_missing(dest.parent)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
    try:
        digest = hashlib.md5(usedforsecurity=False)
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as resp:
            for chunk in iter(lambda: resp.read(1 << 20), b""):
                digest.update(chunk)
                out.write(chunk)
        if digest.hexdigest() != md5.lower():
            raise ValueError(f"download {url}: expected MD5 {md5.lower()}, got "
                             f"{digest.hexdigest()}; the file was discarded")
        os.replace(tmp, dest)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        remove_empty_dirs(dest.parent, created)
        raise
    return dest


def first_missing(folder: Path) -> Path | None:
    """The outermost not-yet-existing folder on the way to ``folder`` (None: it exists)."""
    missing = None
    for parent in (folder, *folder.parents):
        if parent.exists():
            break
        missing = parent
    return missing


def remove_empty_dirs(folder: Path, created: Path | None) -> None:
    """Remove ``folder`` and its parents up to ``created`` (a failed download or run made them)
    while they are empty, so a failed attempt leaves no empty folders behind."""
    if created is None:
        return
    for parent in (folder, *folder.parents):
        try:
            parent.rmdir()             # only ever removes an empty folder
        except OSError:
            return
        if parent == created:
            return


def _download_or_explain(name: str, split: str, root: str | os.PathLike | None,
                         download: bool) -> list[Path]:
    """Download the IDX files of ``split`` into the cache, or raise one explanatory line."""
    source = NAMED_SOURCES[name]
    problem = "download=False"
    if download:
        try:
            paths = []
            for stem in IDX_FILES[split]:
                dest = cache_dir(name) / f"{stem}.gz"
                if not dest.is_file():
                    download_file(source.base_url + dest.name, dest, source.md5[dest.name])
                paths.append(dest)
            return paths
        except OSError as err:
            problem = f"download from {source.base_url} failed ({' '.join(str(err).split())})"
    where = ", ".join(str(d) for d in search_dirs(name, root))
    env_note = "" if os.environ.get("VAELAB_DATA") else " ($VAELAB_DATA not set)"
    raise FileNotFoundError(
        f"source: dataset {name!r} ({split} split) not found: looked for "
        f"{' and '.join(f'{s}[.gz]' for s in IDX_FILES[split])} in {where}{env_note}; "
        f"{problem}; to install: {source.install_hint}")


def _load_named(name: str, split: str, root: str | os.PathLike | None,
                download: bool, keep_uint8: bool = False) -> Dataset:
    """Load split ``split`` of the named IDX dataset ``name``: [N, H*W] in [0, 1], labels [N]."""
    paths = _locate(name, split, root) or _download_or_explain(name, split, root, download)
    images, labels = read_idx(paths[0]), read_idx(paths[1])
    if images.ndim != 3 or images.dtype != np.uint8:
        raise ValueError(f"IDX file {paths[0]}: expected uint8 images of shape N×H×W, "
                         f"got {_describe(images)}")
    if labels.shape != images.shape[:1] or labels.dtype != np.uint8:
        raise ValueError(f"IDX file {paths[1]}: expected {images.shape[0]} uint8 labels "
                         f"(one per image in {paths[0]}), got {_describe(labels)}")
    n, h, w = images.shape
    x = images.reshape(n, h * w)
    x = x.copy() if keep_uint8 else np.divide(x, np.float32(255), dtype=np.float32)
    y = torch.from_numpy(labels.astype(np.int64))
    return Dataset(torch.from_numpy(x), y, (1, h, w), name, "8-bit")


# --------------------------------------------------------------------------- user data


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


def _whole_file_only(split: str, path: Path) -> None:
    """User data without its own splits is the train split; anything else is an error."""
    if split != "train":
        raise ValueError(f"split: {path} holds no {split!r} split (one dataset, no "
                         f"x_{split}/{split}/ part), so expected split 'train' (--split train), "
                         f"got {split!r}")


def read_npy(path: Path) -> np.ndarray:
    """A .npy file's array, its declared size checked first; never unpickles.

    Raises ValueError (one line) for an unreadable, truncated or pickled file.
    """
    return _read_npy(path, "train")[0]


def _read_npy(path: Path, split: str, mmap: bool = False) -> tuple[np.ndarray, None]:
    """A .npy file → (data, no labels), memory-mapped read-only with ``mmap``; never unpickles."""
    _whole_file_only(split, path)
    try:
        _check_npy_size(path)
        return np.load(path, allow_pickle=False, mmap_mode="r" if mmap else None), None
    except (ValueError, OSError, EOFError, MemoryError) as err:
        raise ValueError(f"{path}: expected a readable .npy array, got an error: "
                         f"{' '.join(str(err).split()) or type(err).__name__}") from err


def _check_npy_size(path: Path) -> None:
    """ValueError when a .npy header declares more data than the file holds (a truncated or
    forged header would otherwise make numpy allocate it all before failing)."""
    with open(path, "rb") as handle:
        version = np.lib.format.read_magic(handle)
        # 3.0 is 2.0's layout (a 4-byte header length) with a UTF-8 header; numpy has no
        # public reader for it, and 2.0's reads the same shape and dtype from any ASCII header
        read_header = {(1, 0): np.lib.format.read_array_header_1_0,
                       (2, 0): np.lib.format.read_array_header_2_0,
                       (3, 0): np.lib.format.read_array_header_2_0}.get(version)
        if read_header is None:
            return                                   # numpy's own error follows
        try:
            shape, _, dtype = read_header(handle)
        except ValueError:
            if version != (3, 0):
                raise
            return                                   # a non-ASCII 3.0 header: numpy decides
        available = path.stat().st_size - handle.tell()
    needed = math.prod(shape) * dtype.itemsize
    if not dtype.hasobject and needed > available:
        raise ValueError(f"the header declares shape {shape} of {dtype} ({needed} bytes) but "
                         f"the file holds {available} bytes after it (truncated or corrupt)")


def _npz_keys(keys: list[str], split: str, path: Path) -> tuple[str, str | None]:
    """Pick the data key and labels key of an npz archive for ``split``."""
    x_key: str | None
    if "x_train" in keys or f"x_{split}" in keys:
        if f"x_{split}" not in keys:
            raise ValueError(f"split: {path} has keys {keys} but no x_{split}; "
                             f"expected one of {SPLITS} with an x_<split> key, got {split!r}")
        x_key, y_keys = f"x_{split}", (f"y_{split}", f"labels_{split}")
    else:
        _whole_file_only(split, path)
        x_key = next((k for k in ("x", "data") if k in keys), keys[0] if len(keys) == 1 else None)
        if x_key is None:
            raise ValueError(f"{path}: expected an array named 'x', 'data', 'x_train' or a "
                             f"single array, got keys {keys}")
        y_keys = ("y", "labels")
    return x_key, next((k for k in y_keys if k in keys), None)


def _read_npz(path: Path, split: str) -> tuple[np.ndarray, np.ndarray | None]:
    """A .npz archive → (data, labels or None); keys x/data/single array, y/labels, x_<split>."""
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {key: archive[key] for key in archive.files}
    except (ValueError, OSError, EOFError, zipfile.BadZipFile, MemoryError) as err:
        raise ValueError(f"{path}: expected a readable .npz archive, got an error: "
                         f"{' '.join(str(err).split()) or type(err).__name__}") from err
    if not arrays:
        raise ValueError(f"{path}: expected at least one array, got an empty .npz archive")
    foreign = sorted(k for k, v in arrays.items() if not isinstance(v, np.ndarray))
    if foreign:                          # np.load returns members that are not .npy as bytes
        raise ValueError(f"{path}: expected .npy arrays in the archive, got other files "
                         f"{foreign}")
    x_key, y_key = _npz_keys(sorted(arrays), split, path)
    return arrays[x_key], None if y_key is None else arrays[y_key]


def csv_header(path: Path) -> list[str] | None:
    """Column names if the first row of a CSV has a non-number, else None."""
    with open(path, newline="", encoding="utf-8", errors="replace") as handle:
        cells = [c.strip().strip('"').strip() for c in handle.readline().split(",")]
    try:
        [float(c) for c in cells if c]      # an empty cell is data (missing), not a name
    except ValueError:
        return cells
    return None


def _label_index(label_column: str | int, header: list[str] | None, ncols: int,
                 path: Path) -> int:
    """Column index of ``label_column`` (a header name or an int, negatives from the end)."""
    if isinstance(label_column, str):
        if header is None or label_column not in header:
            found = f"columns {header}" if header else "no header row"
            raise ValueError(f"label_column: expected a column name of {path}, got "
                             f"{label_column!r} ({found})")
        return header.index(label_column)
    if isinstance(label_column, bool) or not isinstance(label_column, int):
        raise TypeError(f"label_column: expected a column name, an int or None, got "
                        f"{_describe(label_column)}")
    if not -ncols <= label_column < ncols:
        raise ValueError(f"label_column: expected an index in [{-ncols}, {ncols}) for the "
                         f"{ncols} columns of {path}, got {label_column}")
    return label_column % ncols


def _missing_cell(text: str) -> float:
    """One CSV cell under allow_missing: empty or nan → NaN; any other text must be a number."""
    text = text.strip()
    if text == "" or text.lower() == "nan":
        return math.nan
    return float(text)      # "foo" raises, and loadtxt names its row and column


def _csv_position(err: ValueError) -> str:
    """numpy's "... to float64 at row R, column C." (R 0-based, C 1-based) → both 1-based."""
    def one_based(m: re.Match) -> str:
        return f"at data row {int(m.group(1)) + 1}, column {m.group(2)} (1-based, header excluded)"
    text = str(err).rstrip(".").replace(" to float64", "")
    return re.sub(r"at row (\d+), column (\d+)", one_based, text)


def read_csv_numbers(path: Path, skip_header: bool, allow_missing: bool = False) -> np.ndarray:
    """The numbers of a CSV as a float64 table [rows, columns].

    With ``allow_missing`` only an empty cell or ``nan`` reads as NaN; any other text is an
    error naming it with its 1-based data row and column, as without it.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # "input contained no data"
            return np.loadtxt(path, delimiter=",", skiprows=int(skip_header), ndmin=2,
                              converters=_missing_cell if allow_missing else None)
    except ValueError as err:
        hint = MISSING_HINT if "''" in str(err) and not allow_missing else ""
        raise ValueError(f"{path}: expected a CSV of numbers, got: {_csv_position(err)}"
                         f"{hint}") from err


def _read_csv(path: Path, split: str, label_column: str | int | None,
              allow_missing: bool = False) -> tuple[np.ndarray, np.ndarray | None]:
    """A CSV of numbers (optional header row) → (float64 table, labels column or None);
    ``allow_missing``: empty cells and ``nan`` read as NaN (:func:`read_csv_numbers`)."""
    _whole_file_only(split, path)
    header = csv_header(path)
    table = read_csv_numbers(path, header is not None, allow_missing)
    if header is not None and table.size and len(header) != table.shape[1]:
        raise ValueError(f"{path}: expected every row to have the header's {len(header)} "
                         f"columns, got rows of {table.shape[1]}")
    if label_column is None or table.size == 0:
        return table, None
    col = _label_index(label_column, header, table.shape[1], path)
    return np.delete(table, col, axis=1), table[:, col]


def _image_files(folder: Path) -> list[Path]:
    """Image files directly inside ``folder``, sorted by name."""
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def _read_image(path: Path) -> np.ndarray:
    """One image → uint8 [H, W] (grayscale) or [H, W, 3] (colour)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            grey = image.mode in ("1", "L", "LA", "I", "I;16", "F")
            return np.asarray(image.convert("L" if grey else "RGB"))
    except (OSError, UnidentifiedImageError) as err:
        raise ValueError(f"{path}: expected a readable image, got an error: {err}") from err


def _stack_images(files: list[Path]) -> np.ndarray:
    """Images of one size → uint8 [N, H, W] if all grayscale, else [N, 3, H, W]."""
    images = [_read_image(f) for f in files]
    size = images[0].shape[:2]
    for path, image in zip(files, images, strict=True):
        if image.shape[:2] != size:
            raise ValueError(f"{path}: expected every image to be {size[1]}x{size[0]} "
                             f"(W x H) like {files[0].name}, got {image.shape[1]}x{image.shape[0]}")
    if all(image.ndim == 2 for image in images):
        return np.stack(images)
    images = [np.repeat(im[..., None], 3, axis=2) if im.ndim == 2 else im for im in images]
    return np.stack(images).transpose(0, 3, 1, 2)


def _read_image_folder(path: Path, split: str) -> tuple[np.ndarray, np.ndarray | None]:
    """A folder of images → (uint8 images, labels from class sub-folders or None)."""
    if (path / "train").is_dir() and (path / "test").is_dir():
        path = path / split
    else:
        _whole_file_only(split, path)
    classes = sorted(d.name for d in path.iterdir() if d.is_dir() and not d.name.startswith("."))
    loose = _image_files(path)
    if classes and loose:
        raise ValueError(f"{path}: expected either class sub-folders or images, got both "
                         f"(sub-folders {classes[:5]} and images like {loose[0].name})")
    per_class = [_image_files(path / c) for c in classes] if classes else [loose]
    files = [f for group in per_class for f in group]
    if not files:
        raise ValueError(f"{path}: expected {'/'.join(IMAGE_SUFFIXES)} images, got none")
    labels = np.repeat(np.arange(len(per_class)), [len(g) for g in per_class]) if classes else None
    return _stack_images(files), labels


def _load_path(path: Path, split: str, label_column: str | int | None,
               keep_uint8: bool = False, mmap: bool = False) -> Dataset:
    """User data at ``path`` (.npy, .npz, .csv or a folder of images) → Dataset."""
    if not path.exists():
        raise FileNotFoundError(f"source: expected a dataset name ({', '.join(NAMED_SOURCES)}) "
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
    return _arrays_to_dataset(x, labels, path.stem if path.is_file() else path.name, str(path),
                              keep_uint8)


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
    key = {"fashionmnist": "fashion-mnist",
           "binarized-fashion-mnist": "fashion-mnist"}.get(key, key)
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
            Kinds and scaling follow the module's rule: 8-bit data (uint8, integers 0–255)
            become k/255 in [0, 1] and ``notes`` says so; floats are kept as they are.
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

    The observed values follow the module's rule (the kind is that of the observed values:
    missing entries are read as 0 for it, a value every kind contains). ±inf stays an error.
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
    return replace(ds, x=values)


# --------------------------------------------------------------------------- binarization


def _check_probabilities(name: str, x: torch.Tensor) -> None:
    """Raise ValueError unless every value of ``x`` lies in [0, 1]."""
    if x.numel() == 0:
        return
    lo, hi = torch.aminmax(x.detach())
    if not (bool(lo >= 0) and bool(hi <= 1)):
        raise ValueError(f"{name}: expected Bernoulli probabilities in [0, 1] to binarize, got "
                         f"values in [{lo.item():g}, {hi.item():g}]")


def binarize(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """One Bernoulli(x) draw per entry: x [...] in [0, 1] → float32 {0, 1} tensor [...]."""
    x = _checks.tensor("x", x)
    _check_probabilities("x", x)
    return torch.bernoulli(x.to(torch.float32), generator=generator)


def static_binarize(ds: Dataset, seed: int) -> Dataset:
    """``ds`` with x replaced by one Bernoulli draw seeded by ``seed`` (same seed, same draw)."""
    seed = _checks.non_negative_int("seed", seed)
    return replace(ds, x=binarize(to_unit(ds.x), torch.Generator().manual_seed(seed)),
                   kind="binary")


def train_val_split(ds: Dataset, val_fraction: float, seed: int) -> tuple[Dataset, Dataset]:
    """Split ``ds`` by a permutation seeded by ``seed`` into (train, validation).

    The validation part has round(val_fraction * N) examples; each part keeps the original
    order of its rows.
    """
    if isinstance(val_fraction, bool) or not isinstance(val_fraction, Real):
        raise TypeError(f"val_fraction: expected a number in (0, 1), got "
                        f"{_describe(val_fraction)}")
    if not 0 < val_fraction < 1:
        raise ValueError(f"val_fraction: expected a number in (0, 1), got {val_fraction}")
    seed = _checks.non_negative_int("seed", seed)
    n = len(ds)
    n_val = round(val_fraction * n)
    if not 1 <= n_val <= n - 1:
        raise ValueError(f"val_fraction: expected at least one of the {n} examples in each "
                         f"part, got {val_fraction}, which puts {n_val} in validation (set "
                         f"--val-fraction; 0 turns validation off)")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return ds.subset(perm[n_val:].sort().values), ds.subset(perm[:n_val].sort().values)


def select_classes(ds: Dataset, classes: Sequence[int] | None) -> Dataset:
    """The rows of ``ds`` whose label is in ``classes`` (None: ``ds`` itself), order kept.

    The one-class protocol of anomaly detection trains on the "normal" classes only. Raises
    ValueError naming ``classes`` when ``ds`` has no labels or a class has no example.
    """
    if classes is None:
        return ds
    if ds.labels is None:
        raise ValueError(f"classes: expected a dataset with class labels, got {ds.name!r}, "
                         f"which has none")
    wanted = torch.tensor(sorted(set(classes)), dtype=torch.int64)
    missing = [int(c) for c in wanted if not bool((ds.labels == c).any())]
    if missing:
        present = sorted(int(c) for c in ds.labels.unique())
        raise ValueError(f"classes: expected labels present in {ds.name!r} ({present}), got "
                         f"{missing} with no example")
    return ds.subset(torch.isin(ds.labels, wanted))


def perturb(ds: Dataset, fraction: float, seed: int) -> Dataset:
    """Replace a random ``fraction`` μ of the entries of x by uniform noise (one seeded draw).

    The background model of Ren et al. (2019, "Likelihood Ratios for Out-of-Distribution
    Detection") is trained on inputs where each value is, with probability μ, replaced by a
    draw from U[lo, hi], the range of x ([0, 1] for images). μ = 0 returns ``ds`` itself.
    """
    if isinstance(fraction, bool) or not isinstance(fraction, Real) or not 0 <= fraction < 1:
        raise ValueError(f"perturb_fraction: expected a number in [0, 1), got {fraction!r}")
    if fraction == 0:
        return ds
    generator = torch.Generator().manual_seed(_checks.non_negative_int("seed", seed))
    x = ds.x
    lo, hi = float(x.min()), float(x.max())
    hit = torch.rand(x.shape, generator=generator) < fraction
    noise = lo + (hi - lo) * torch.rand(x.shape, generator=generator)
    return replace(ds, x=torch.where(hit.to(x.device), noise.to(x), x))


# --------------------------------------------------------------------------- batching


def _derive_seed(seed: int, epoch: int, stream: int) -> int:
    """A 63-bit seed that depends only on (seed, epoch, stream), via numpy's SeedSequence."""
    state = np.random.SeedSequence([seed, epoch, stream]).generate_state(1, np.uint64)[0]
    return int(state) & ((1 << 63) - 1)


class _UniformStream:
    """U[0, 1) tensors from one seeded stream: numpy's PCG64 on CPU, torch's generator else.

    On CPU ``torch.bernoulli`` of a 128 × 784 batch cost 1.6–2.3 ms (about a tenth of a
    training step) and ``torch.rand`` 0.6 ms; PCG64 fills the same floats in 0.4 ms, and the
    comparison 1{u < x} is one in-place pass. Floats of the batch's precision (float32 for
    half types), so P(u < x) = x up to that resolution, as for ``torch.bernoulli``.
    """

    def __init__(self, seed: int, device: torch.device) -> None:
        self.device = device
        if device.type == "cpu":
            self.rng = np.random.Generator(np.random.PCG64(seed))
        else:
            self.generator = torch.Generator(device=device)
            self.generator.manual_seed(seed)

    def like(self, x: torch.Tensor) -> torch.Tensor:
        """u ~ U[0, 1) of x's shape, on x's device."""
        if self.device.type != "cpu":
            return torch.rand(x.shape, generator=self.generator, dtype=x.dtype, device=x.device)
        dtype = np.float64 if x.dtype == torch.float64 else np.float32
        return torch.from_numpy(self.rng.random(tuple(x.shape), dtype=dtype))


class Batches:
    """In-memory mini-batches of the rows of x [N, D], deterministic per (seed, epoch).

    x may be uint8 (8-bit data k kept as bytes, possibly memory-mapped): each batch is then
    converted to float32 k/255 as it is drawn (:func:`to_unit`).

    Epoch e uses the permutation ``randperm(N)`` drawn from a generator seeded by (seed, e)
    alone, the same on every rank, so a run resumed at an epoch boundary sees exactly the same
    batches. Dynamic binarization draws Bernoulli(x_batch) as 1{u < x} with u ~ U[0, 1) from a
    second stream seeded by (seed, e, rank) (see :class:`_UniformStream`).
    ``binarize="static"`` means x is already binarized (no-op).

    Distributed (world_size > 1): the epoch order is cut into global batches of
    ``batch_size * world_size`` rows and rank r gets the r-th contiguous slice of each. With
    ``drop_last`` the incomplete tail is dropped; without it the order is padded by repeating
    its first (-N mod world_size) entries, so every rank gets the same number of batches of
    the same sizes (the last one smaller than batch_size when N is not a multiple of the
    global batch). With world_size == 1 nothing is ever padded.
    """

    def __init__(self, x: torch.Tensor, batch_size: int, *, shuffle: bool = True, seed: int = 0,
                 binarize: str = "none", drop_last: bool = False, rank: int = 0,
                 world_size: int = 1, device: torch.device | str = "cpu") -> None:
        if not (isinstance(x, torch.Tensor) and x.dtype == torch.uint8):
            x = _checks.tensor("x", x)
        if x.dim() != 2 or x.shape[0] == 0:
            raise ValueError(f"x: expected a tensor of shape [N, D] with N >= 1, got shape "
                             f"{list(x.shape)}")
        self.batch_size = _checks.positive_int("batch_size", batch_size)
        self.world_size = _checks.positive_int("world_size", world_size)
        self.rank = _checks.non_negative_int("rank", rank)
        if self.rank >= self.world_size:
            raise ValueError(f"rank: expected 0 <= rank < world_size = {self.world_size}, "
                             f"got {self.rank}")
        self.binarize = _checks.one_of("binarize", binarize, BINARIZE_MODES)
        if self.binarize == "dynamic" and x.is_floating_point():
            _check_probabilities("x", x)
        self.seed = _checks.non_negative_int("seed", seed)
        self.shuffle, self.drop_last = bool(shuffle), bool(drop_last)
        self.num_examples = x.shape[0]
        global_batch = self.batch_size * self.world_size
        if self.drop_last and self.num_examples < global_batch:
            raise ValueError(f"batch_size: with drop_last=True expected batch_size * world_size "
                             f"<= N = {self.num_examples}, got {global_batch}: no batch is left")
        self.device = torch.device(device)
        self.x = x.to(self.device)

    def _order_length(self) -> int:
        """Length of the (dropped or padded) per-epoch global order."""
        n, global_batch = self.num_examples, self.batch_size * self.world_size
        return (n // global_batch) * global_batch if self.drop_last else n + (-n) % self.world_size

    def __len__(self) -> int:
        """Batches per epoch on this rank (the same on every rank)."""
        return math.ceil(self._order_length() / (self.batch_size * self.world_size))

    def _epoch_order(self, epoch: int) -> torch.Tensor:
        """Global order of epoch ``epoch``: int64 [order_length] on CPU, identical on all ranks."""
        n = self.num_examples
        if self.shuffle:
            generator = torch.Generator().manual_seed(_derive_seed(self.seed, epoch, 0))
            order = torch.randperm(n, generator=generator)
        else:
            order = torch.arange(n)
        length = self._order_length()
        if length > n:
            order = torch.cat([order, order.repeat(math.ceil((length - n) / n))[: length - n]])
        return order[:length]

    def epoch(self, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Yield this rank's batches of epoch ``epoch`` (>= 0).

        Yields (x_batch [b, D] on ``device``, index [b] int64 rows of x on ``device``).
        """
        epoch = _checks.non_negative_int("epoch", epoch)
        return self._iterate(epoch)

    def _iterate(self, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        order = self._epoch_order(epoch).to(self.device)
        uniform = None
        if self.binarize == "dynamic":
            uniform = _UniformStream(_derive_seed(self.seed, epoch, 1 + self.rank), self.device)
        global_batch = self.batch_size * self.world_size
        for start in range(0, order.shape[0], global_batch):
            chunk = order[start : start + global_batch]
            share = chunk.shape[0] // self.world_size
            index = chunk[self.rank * share : (self.rank + 1) * share]
            x_batch = to_unit(self.x.index_select(0, index))
            if uniform is not None:          # Bernoulli(x): 1 where u < x, u ~ U[0, 1)
                x_batch = x_batch.gt_(uniform.like(x_batch))
            yield x_batch, index
