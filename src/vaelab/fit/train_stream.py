"""The data of a run that streams its training rows from disk (``--stream-block ROWS``).

Role in vaelab: what ``vaelab.fit.train_data`` gives the loop for data held in memory, this
module gives for a .npy file read in blocks (``vaelab.data.stream``), so that training needs
memory for a few blocks rather than for the file. One pass over the file at the start checks
every value (finite, in the likelihood's range) and fingerprints it (SHA-256 of its bytes,
checked on resume); the validation rows (whole blocks, a seeded choice) are read into memory
as float32, so keep ``--val-fraction`` small for a large file (0.01 of 10 GB of bytes is
400 MB of floats). ``train`` holds the file's first rows only, for what is read of the data's
form (width, image shape, kind, pictures); ``num_train`` counts every training row.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np
import torch

from vaelab import data as data_
from vaelab.config import RunConfig, TrainConfig
from vaelab.data.stream import BlockBatches, RowFile, split_blocks
from vaelab.fit.train_data import _Data

#: Rows of the file kept in memory for the data's form and the end-of-run pictures.
SAMPLE_ROWS = 1024


@dataclass(frozen=True)
class StreamedData(_Data):
    """A streamed file's training blocks (:class:`BlockBatches` reads them) and its
    validation rows in memory."""

    rows: RowFile | None = None
    blocks: list[int] = field(default_factory=list)
    block_rows: int = 1
    file_sha256: str = ""

    @cached_property
    def sha256(self) -> str:
        return self.file_sha256

    @property
    def num_train(self) -> int:
        assert self.rows is not None
        return sum(min(self.block_rows, self.rows.rows - b * self.block_rows)
                   for b in self.blocks)

    def batches(self, tc: TrainConfig, device: torch.device, rank: int, world_size: int,
                binarize: str) -> BlockBatches:
        assert self.rows is not None
        return BlockBatches(self.rows, self.blocks, self.block_rows, tc.batch_size,
                            seed=tc.seed, binarize=binarize, rank=rank,
                            world_size=world_size, device=device)


#: Options that need every row in memory, and what each would need instead.
_REFUSED = {"classes": "labels", "perturb_fraction": "one perturbed copy of the rows",
            "limit": "a copy of the first rows", "inference": "a table of q per row"}


def _check_streamable(config: RunConfig, dataset: object) -> None:
    tc = config.train
    if dataset is not None:
        raise ValueError("stream_block (--stream-block): streams a .npy file named by "
                         "data (--data); data handed over in memory cannot be streamed")
    given = {"classes": tc.classes is not None, "perturb_fraction": bool(tc.perturb_fraction),
             "limit": tc.limit is not None, "inference": tc.inference == "per-datapoint"}
    for name, bad in given.items():
        if bad:
            raise ValueError(f"{name} (--{name.replace('_', '-')}): needs {_REFUSED[name]} in "
                             f"memory, so expected its default with --stream-block, got "
                             f"{getattr(tc, name)!r}")
    if tc.binarize == "static" or config.model.missing != "none" \
            or config.model.standardize == "on":
        raise ValueError("--stream-block: expected --binarize dynamic or none, --missing none "
                         "and --standardize off or auto (each of the others needs the rows in "
                         "memory)")


def load_streamed(config: RunConfig, dataset: object = None) -> StreamedData:
    """Check the file in one pass, split its blocks, read its validation rows."""
    _check_streamable(config, dataset)
    tc = config.train
    rows = RowFile(tc.data)
    digest, lo, hi = hashlib.sha256(), np.inf, -np.inf
    with open(rows.path, "rb") as handle:     # the header too: the shape is part of the data
        digest.update(handle.read(rows.offset))
    for chunk in rows.chunks():
        digest.update(chunk.data)
        if chunk.dtype != np.uint8 and not np.isfinite(chunk).all():
            raise ValueError(f"data: expected finite values, got non-finite ones in "
                             f"{str(rows.path)!r}")
        lo, hi = min(lo, float(chunk.min())), max(hi, float(chunk.max()))
    notes: tuple[str, ...] = ()
    if rows.dtype == np.uint8:
        kind, notes, lo, hi = "8-bit", (data_.EIGHT_BIT_NOTE,), lo / 255, hi / 255
    else:
        kind = "unit-interval" if 0 <= lo and hi <= 1 else "continuous"
    train_blocks, val_blocks = split_blocks(rows.rows, tc.stream_block or 1, tc.val_fraction,
                                            tc.seed)
    sample = _dataset(rows, rows.read(0, min(rows.rows, SAMPLE_ROWS)), kind, notes)
    _check_values(config, sample, lo, hi)
    val = None
    if val_blocks:
        size = tc.stream_block or 1
        val = _dataset(rows, np.concatenate([rows.read(b * size, min((b + 1) * size, rows.rows))
                                             for b in val_blocks]), kind, notes)
        if tc.binarize != "none":       # one fixed draw, as for data held in memory
            val = data_.static_binarize(val, tc.seed + 1)
        val = val.floats()
    return StreamedData(sample, val, rows=rows, blocks=train_blocks,
                        block_rows=tc.stream_block or 1, file_sha256=digest.hexdigest())


def _dataset(rows: RowFile, x: np.ndarray, kind: str, notes: tuple[str, ...]) -> data_.Dataset:
    tensor = torch.from_numpy(x)
    if kind != "8-bit":
        tensor = tensor.to(torch.float32)
    return data_.Dataset(tensor, None, rows.image_shape, rows.path.stem, kind, notes)


def _check_values(config: RunConfig, sample: data_.Dataset, lo: float, hi: float) -> None:
    """The rule of ``train_data._check_range`` on the whole file's range."""
    from vaelab.fit.train_data import _model_kind
    from vaelab.model import likelihoods

    binarize = config.train.binarize
    if (lo < 0 or hi > 1) and binarize != "none":
        raise ValueError(f"data: --binarize {binarize} needs values in [0, 1], got "
                         f"{sample.kind} data with values in [{lo:g}, {hi:g}]; pass "
                         f"--binarize none (and --likelihood gaussian for real-valued data)")
    values = sample.floats().x if binarize == "none" else None
    likelihoods.check_data_kind(config.model, _model_kind(sample, config.train), lo, hi,
                                values, sample.x.shape[1])
