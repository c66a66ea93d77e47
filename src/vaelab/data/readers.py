"""Readers of the file formats vaelab accepts: IDX, .npy, .npz, CSV and folders of images.

Role in vaelab: each reader turns one file (or folder) into numpy arrays (data and labels or
None) and says in one line what is wrong with a file it cannot read; it never unpickles. The
arrays become a :class:`vaelab.data.Dataset` in :mod:`vaelab.data.kinds`. IDX is the format of
MNIST (LeCun et al. 1998) and Fashion-MNIST (Xiao, Rasul & Vollgraf 2017).
"""

from __future__ import annotations

import gzip
import math
import os
import re
import struct
import warnings
import zipfile
import zlib
from pathlib import Path

import numpy as np

from vaelab.data.kinds import MISSING_HINT, SPLITS, _describe

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")


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
        if "could not convert string" in str(err) and not hint:     # a column of text
            hint = ("; for a table with text (category) columns pass --likelihood mixed to "
                    "vaelab train (one likelihood per column)")
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
