"""Per-example outputs over a file too large for memory: written as they come, resumable.

Role in vaelab: ``vaelab encode --stream-block ROWS`` (and any per-row computation) reads a
.npy file block by block (``vaelab.data.stream.RowFile``), computes each block's rows, and
writes them at their place in the output .npy, so memory holds one block and its results
whatever the file's size, and the output's rows are in the input's order. The output is built
as ``OUT.partial`` (a complete .npy header, then the rows) beside ``OUT.progress`` (the rows
done so far, replaced atomically after each block's rows are written); a run killed at any
moment and started again with the same arguments skips the blocks done and continues. The
partial file becomes ``OUT`` (an atomic rename) once every row is written. A computation that
draws (e.g. ``--sample``) seeds each block from (seed, its first row), so a continued run
writes what an uninterrupted one would.

:func:`encode_file` is ``vaelab encode --stream-block``: the codes of a .npy file, equal for
every block size to those of the file encoded whole (each row binarized by its own seeded
draw, ``vaelab.data.binarize_rows``), a conditional run's rows under one given condition.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from vaelab import condition_spec
from vaelab.data import binarize_rows, to_unit
from vaelab.data.condition import pack
from vaelab.data.stream import RowFile
from vaelab.measure.shard import batch_seed
from vaelab.use import encode as encode_  # read at call time (a test stands in for it)


def _header(shape: tuple[int, int]) -> bytes:
    import io

    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        buffer, {"descr": np.lib.format.dtype_to_descr(np.dtype(np.float32)),
                 "fortran_order": False, "shape": shape})
    return buffer.getvalue()


def _rows_done(partial: Path, progress: Path, header: bytes) -> int:
    """Rows a previous start finished (0 when there is none, or it wrote another shape)."""
    try:
        done = int(progress.read_text().strip())
        with open(partial, "rb") as handle:
            same = handle.read(len(header)) == header
    except (OSError, ValueError):
        return 0
    return done if same else 0


def map_rows_to_file(rows: RowFile, out: str | os.PathLike, width: int,
                     compute: Callable[[np.ndarray, int], np.ndarray],
                     block_rows: int = 4096,
                     progress: Callable[[int, int], object] | None = None) -> int:
    """Write ``compute(x, first_row)`` for every block of ``rows`` to the .npy ``out``.

    Args:
        rows: the input file; compute receives x [b, D] (the file's dtype) and the block's first
            row number, and returns float32-convertible [b, width].
        out: the output .npy ([N, width] float32), written through ``out.partial`` and
            ``out.progress`` (continued when they are there, see the module docstring).
        block_rows: rows per block (memory: one block and its outputs).
        progress: called with (rows done, N) after each block.

    Returns:
        the rows computed by this call (N minus those a previous start had done).
    """
    out = Path(out)
    partial, marker = out.with_name(out.name + ".partial"), out.with_name(out.name + ".progress")
    header = _header((rows.rows, width))
    start = _rows_done(partial, marker, header)
    if start == 0:
        with open(partial, "wb") as handle:
            handle.write(header)
            handle.truncate(len(header) + rows.rows * width * 4)
    computed = 0
    with open(partial, "r+b", buffering=0) as handle:
        for first in range(start, rows.rows, block_rows):
            last = min(first + block_rows, rows.rows)
            y = np.ascontiguousarray(compute(rows.read(first, last), first), dtype=np.float32)
            if y.shape != (last - first, width):
                raise ValueError(f"compute: expected an array of shape {(last - first, width)}, "
                                 f"got {y.shape}")
            os.pwrite(handle.fileno(), y.tobytes(), len(header) + first * width * 4)
            temporary = marker.with_name(marker.name + ".new")
            temporary.write_text(str(last))
            os.replace(temporary, marker)
            computed += last - first
            if progress is not None:
                progress(last, rows.rows)
    os.replace(partial, out)
    marker.unlink(missing_ok=True)
    return computed


def encode_file(trained, source: str | os.PathLike, out: str | os.PathLike, *,
                block_rows: int = 4096, seed: int = 0, sample: bool = False,
                condition: object = None) -> tuple[int, int]:
    """Codes of every row of the .npy ``source`` → the .npy ``out`` [N, L] float32, read and
    written ``block_rows`` rows at a time (``map_rows_to_file``: resumable).

    The posterior means E_q[z | x] (``sample=False``) are the same for every ``block_rows``
    and equal those of the rows encoded at once: a binarized run's rows are binarized by
    ``binarize_rows(x, seed, row)``, a draw that belongs to each row, as ``vaelab encode``
    does in memory. Draws (``sample=True``) are seeded per block (reproducible and resumable
    for one ``block_rows``).

    Args:
        trained: a loaded run (``vaelab.load``).
        condition: a conditional run's c for every row (a class level, or numbers for real
            columns, as ``--condition`` takes them): a .npy file carries neither labels nor
            named columns. Refused for a run that is not conditional.

    Returns:
        (rows, L). Raises ValueError in one line naming the flag for a run trained with
        missing='mask', a missing or needless condition, or rows of the wrong width.
    """
    if trained.config.model.missing == "mask":
        raise ValueError("--stream-block: a run trained with --missing mask is encoded in "
                         "memory only; expected a run without --missing mask, or no "
                         "--stream-block")
    spec = trained.config.model.condition
    if spec is None and condition is not None:
        raise ValueError(f"--condition: the run is not conditional (trained without "
                         f"--condition); expected no --condition, got {condition!r}")
    if spec is not None and condition is None:
        raise ValueError(f"--condition: the run is conditional on "
                         f"{condition_spec.describe(spec)}, which a .npy file read with "
                         f"--stream-block does not carry; expected --condition VALUE (every "
                         f"row encoded under it), got none")
    c = (None if spec is None else
         torch.tensor(condition_spec.encode_value(spec, condition), dtype=torch.float32))
    rows = RowFile(source)
    width = getattr(trained.model, "x_dim", trained.model.data_dim)
    if rows.width != width:
        raise ValueError(f"--data: the run's model expects {width} values per example, got "
                         f"{rows.width} from {str(source)!r}")
    binarize = trained.config.train.binarize != "none"

    def codes(x: np.ndarray, first: int) -> np.ndarray:
        flat = x.reshape(len(x), -1)
        if np.issubdtype(flat.dtype, np.floating) and not np.isfinite(flat).all():
            row, column = (int(i) for i in np.argwhere(~np.isfinite(flat))[0])
            raise ValueError(f"--data: {str(source)!r}: expected finite values, got "
                             f"{flat[row, column]} at index ({first + row}, {column}) (row, "
                             f"value; counted from the file's first row)")
        x_ = to_unit(torch.from_numpy(flat))
        if binarize:
            x_ = binarize_rows(x_, seed, first)
        if c is not None:
            x_ = pack(x_, c)
        generator = torch.Generator().manual_seed(batch_seed(seed, first))
        return encode_.encode(trained.encode, x_, sample=sample,
                              generator=generator).cpu().numpy()

    latent = codes(rows.read(0, 1), 0).shape[1]
    map_rows_to_file(rows, out, latent, codes, block_rows)
    return rows.rows, latent
