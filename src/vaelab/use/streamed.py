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
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np

from vaelab.data.stream import RowFile


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
