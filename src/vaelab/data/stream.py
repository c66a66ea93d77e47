"""Training rows read from disk in shuffled blocks: data larger than memory.

Role in vaelab: ``vaelab train --stream-block ROWS`` (``TrainConfig.stream_block``) trains on a
.npy file without ever holding it. :class:`RowFile` reads rows with plain positioned reads
(no memory map, so the process's resident memory holds only the rows it reads now; the
kernel's page cache may keep the file, and gives it back under memory pressure).
:class:`BlockBatches` is :class:`vaelab.data.Batches` for such a file (the same interface:
``len``, ``epoch(e)`` yielding (x, index)), with the shuffle done in two levels:

* the file is cut into blocks of ``block_rows`` contiguous rows (the last may be shorter);
  :func:`split_blocks` holds a seeded choice of whole blocks out for validation;
* epoch e permutes the training blocks (a generator seeded by (seed, e), the same on every
  rank); rank r of W takes the r-th run of k = ⌊blocks / W⌋ consecutive blocks of that order
  (its shard: it reads those blocks and no others; the < W blocks left over sit this epoch
  out, a different few each epoch);
* a rank reads its blocks ``buffer_blocks`` at a time (one contiguous read each), shuffles the
  rows of that buffer (a stream seeded by (seed, e, rank)) and cuts it into batches; rows left
  over carry into the next buffer.

Every rank takes the same number of rows per epoch (k blocks' worth, counting a short last
block as short whoever gets it), so every rank runs the same steps; an epoch depends on
(seed, e, rank, world size) alone, so a resumed run sees the batches it would have seen.
Memory: about ``(buffer_blocks + 1) × block_rows`` rows, whatever the file's size. Two rows
are in one batch only if their blocks share a buffer: a smaller block mixes the data better,
a larger one reads in bigger pieces (a block of 1–4 MB reads at the disk's full speed).
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from vaelab import _checks
from vaelab.data.batches import _derive_seed, _UniformStream
from vaelab.data.kinds import to_unit
from vaelab.data.transforms import BINARIZE_MODES

#: What a streamed file may hold: bytes (8-bit data, k/255) or float32 values.
STREAM_DTYPES = (np.dtype(np.uint8), np.dtype(np.float32))
#: Blocks a rank holds at once (the buffer whose rows are shuffled together).
BUFFER_BLOCKS = 8


class RowFile:
    """The rows of a C-ordered .npy file (N×D, N×H×W or N×C×H×W; uint8 or float32), read by
    positioned reads into fresh arrays.

    It knows its ``path``, ``rows`` (N), ``width`` (D values per row), ``dtype``,
    ``image_shape`` ((C, H, W) or None) and ``offset`` (where the values start in the file).
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path).expanduser()
        where = f"data {str(self.path)!r}"
        if self.path.suffix.lower() != ".npy" or not self.path.is_file():
            raise ValueError(f"{where}: --stream-block reads a .npy file, got "
                             f"{'no such file' if not self.path.exists() else 'another kind'}")
        with open(self.path, "rb") as handle:
            version = np.lib.format.read_magic(handle)
            read = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                    else np.lib.format.read_array_header_2_0)
            shape, fortran, dtype = read(handle)
            self.offset = handle.tell()
        if fortran or dtype not in STREAM_DTYPES or len(shape) not in (2, 3, 4):
            raise ValueError(f"{where}: --stream-block expected a C-ordered uint8 or float32 "
                             f"array of shape N×D, N×H×W or N×C×H×W, got "
                             f"{'Fortran-ordered ' if fortran else ''}{dtype} {tuple(shape)}")
        if len(shape) == 4 and shape[1] not in (1, 3, 4):
            raise ValueError(f"{where}: --stream-block expected channels first (N×C×H×W, C = 1, "
                             f"3 or 4), got shape {tuple(shape)}; save it channels first")
        self.rows, self.width, self.dtype = int(shape[0]), int(np.prod(shape[1:])), dtype
        self.image_shape: tuple[int, int, int] | None = (
            None if len(shape) == 2 else (1, shape[1], shape[2]) if len(shape) == 3
            else (shape[1], shape[2], shape[3]))
        need = self.offset + self.rows * self.width * dtype.itemsize
        if self.rows == 0 or self.width == 0 or self.path.stat().st_size < need:
            raise ValueError(f"{where}: expected {self.rows} rows of {self.width} values "
                             f"({need} bytes with the header), got a file of "
                             f"{self.path.stat().st_size} bytes")

    def read(self, start: int, stop: int, out: np.ndarray | None = None) -> np.ndarray:
        """Rows start … stop − 1 → ``out`` (a C-contiguous [stop − start, D] array of the
        file's dtype) or a new writable array."""
        if out is None:
            out = np.empty((stop - start, self.width), self.dtype)
        with open(self.path, "rb", buffering=0) as handle:
            handle.seek(self.offset + start * self.width * self.dtype.itemsize)
            view = memoryview(out.reshape(-1).view(np.uint8))  # type: ignore[arg-type]
            done = 0
            while done < len(view):
                got = handle.readinto(view[done:])
                if not got:
                    raise ValueError(f"data {str(self.path)!r}: the file ended early (rows "
                                     f"{start}–{stop - 1} expected)")
                done += got
        return out

    def chunks(self, rows: int = 8192) -> Iterator[np.ndarray]:
        """Every row, in file order, ``rows`` at a time (for whole-file checks)."""
        for start in range(0, self.rows, rows):
            yield self.read(start, min(start + rows, self.rows))


def split_blocks(num_rows: int, block_rows: int, val_fraction: float, seed: int
                 ) -> tuple[list[int], list[int]]:
    """(training blocks, validation blocks) of a file cut into blocks of ``block_rows`` rows:
    round(val_fraction × blocks) whole blocks (at least one when val_fraction > 0), a seeded
    choice, are held out; both lists sorted."""
    blocks = math.ceil(num_rows / block_rows)
    n_val = 0 if val_fraction == 0 else max(1, round(val_fraction * blocks))
    if n_val > blocks - 1:
        raise ValueError(f"stream_block (--stream-block): with {blocks} blocks of {block_rows} "
                         f"rows, expected at least one training block beside the {n_val} "
                         f"validation block(s) of val_fraction {val_fraction:g}; pass a smaller "
                         f"--stream-block or --val-fraction")
    order = np.random.Generator(np.random.PCG64(_derive_seed(seed, 0, 2))).permutation(blocks)
    return sorted(int(b) for b in order[n_val:]), sorted(int(b) for b in order[:n_val])


class BlockBatches:
    """Mini-batches of a :class:`RowFile`'s training blocks, block-shuffled (module docstring).

    Yields (x [b, D] float32 on ``device``: uint8 k read as k/255, dynamically binarized when
    asked; index [b] int64: the rows' numbers in the file).
    """

    def __init__(self, rows: RowFile, blocks: list[int], block_rows: int, batch_size: int, *,
                 seed: int = 0, binarize: str = "none", rank: int = 0, world_size: int = 1,
                 device: torch.device | str = "cpu", buffer_blocks: int = BUFFER_BLOCKS) -> None:
        self.file, self.blocks = rows, list(blocks)
        self.block_rows = _checks.positive_int("block_rows", block_rows)
        self.batch_size = _checks.positive_int("batch_size", batch_size)
        self.world_size = _checks.positive_int("world_size", world_size)
        self.rank = _checks.non_negative_int("rank", rank)
        self.seed = _checks.non_negative_int("seed", seed)
        self.binarize = _checks.one_of("binarize", binarize, BINARIZE_MODES)
        if self.binarize == "static":
            raise ValueError("binarize: a streamed file is binarized per batch ('dynamic') or "
                             "not at all ('none'); expected one of them, got 'static'")
        self.buffer_blocks = _checks.positive_int("buffer_blocks", buffer_blocks)
        self.device = torch.device(device)
        self.per_rank = len(self.blocks) // self.world_size
        if self.per_rank == 0:
            raise ValueError(f"stream_block (--stream-block): expected at least one training "
                             f"block per process ({self.world_size}), got {len(self.blocks)} "
                             f"blocks of {block_rows} rows; pass a smaller --stream-block")
        shortest = min(self._size(b) for b in self.blocks)
        #: rows each rank takes per epoch: k blocks, one of them possibly the short last one
        self.rows_per_rank = self.per_rank * self.block_rows - (self.block_rows - shortest)
        self.num_examples = sum(self._size(b) for b in self.blocks)

    def _size(self, block: int) -> int:
        return min(self.block_rows, self.file.rows - block * self.block_rows)

    def __len__(self) -> int:
        """Batches per epoch on this rank (the same on every rank)."""
        return math.ceil(self.rows_per_rank / self.batch_size)

    def my_blocks(self, epoch: int) -> list[int]:
        """The blocks this rank reads in epoch ``epoch``, in the order it reads them."""
        order = np.random.Generator(np.random.PCG64(_derive_seed(self.seed, epoch, 0)))
        permuted = order.permutation(np.asarray(self.blocks, dtype=np.int64))
        k = self.per_rank
        return [int(b) for b in permuted[self.rank * k:(self.rank + 1) * k]]

    def epoch(self, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Yield this rank's batches of epoch ``epoch`` (>= 0)."""
        return self._iterate(_checks.non_negative_int("epoch", epoch))

    def _buffers(self, epoch: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """(rows, their numbers) of each buffer of blocks, its rows shuffled."""
        shuffle = np.random.Generator(np.random.PCG64(
            _derive_seed(self.seed, epoch, 1_000_000 + self.rank)))
        mine = self.my_blocks(epoch)
        for i in range(0, len(mine), self.buffer_blocks):
            group = mine[i:i + self.buffer_blocks]
            sizes = [self._size(b) for b in group]
            rows = np.empty((sum(sizes), self.file.width), self.file.dtype)
            numbers = np.empty(sum(sizes), np.int64)
            at = 0
            for b, size in zip(group, sizes, strict=True):   # one contiguous read per block
                first = b * self.block_rows
                self.file.read(first, first + size, rows[at:at + size])
                numbers[at:at + size] = np.arange(first, first + size)
                at += size
            perm = shuffle.permutation(len(numbers))
            yield rows[perm], numbers[perm]

    def _iterate(self, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        uniform = (None if self.binarize == "none" else
                   _UniformStream(_derive_seed(self.seed, epoch, 1 + self.rank), self.device))
        left = self.rows_per_rank
        carry: tuple[np.ndarray, np.ndarray] | None = None   # a batch's first rows
        for x, index in self._buffers(epoch):
            start = 0
            if carry is not None:      # complete the batch begun in the last buffer
                start = min(len(x), min(self.batch_size, left) - len(carry[0]))
                x0, i0 = np.concatenate([carry[0], x[:start]]), np.concatenate(
                    [carry[1], index[:start]])
                carry = None
                if len(x0) < min(self.batch_size, left):
                    carry = (x0, i0)
                    continue
                yield self._batch(x0, i0, uniform)
                left -= len(x0)
            while left > 0 and len(x) - start >= min(self.batch_size, left):
                b = min(self.batch_size, left)
                yield self._batch(x[start:start + b], index[start:start + b], uniform)
                start, left = start + b, left - b
            if left == 0:
                return
            if start < len(x):
                carry = (x[start:], index[start:])

    def _batch(self, x: np.ndarray, index: np.ndarray, uniform: _UniformStream | None
               ) -> tuple[torch.Tensor, torch.Tensor]:
        batch = to_unit(torch.from_numpy(np.ascontiguousarray(x)).to(self.device))
        if uniform is not None:          # Bernoulli(x): 1 where u < x, u ~ U[0, 1)
            batch = batch.gt_(uniform.like(batch))
        return batch, torch.from_numpy(index).to(self.device)
