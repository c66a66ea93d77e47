"""Training data of a conditional VAE: x and its condition c (Sohn et al. 2015).

The rows are read, checked, split and binarized as for any run (``vaelab.fit.train_data``)
with c taken out first: from the dataset's labels, from named columns of a table, or from
the c handed over beside x (``vaelab.fit.train.train(config, out, dataset=(x, c))``).
Where c is not the labels, each row's position rides in ``labels`` through the split, so
the c of every training and validation row is found again afterwards. The trainer then
feeds the step packed rows [x | c] (:class:`PackedBatches`, ``vaelab.data.condition``):
x alone is ever binarized.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import Any, cast

import numpy as np
import torch

from vaelab import data as data_
from vaelab import data_forms
from vaelab.config import RunConfig
from vaelab.data import condition as condition_


def is_pair(dataset: object) -> bool:
    """Whether ``dataset`` is (x, c) handed to ``train`` (a tuple or list of two)."""
    return isinstance(dataset, (tuple, list)) and len(dataset) == 2


def load(config: RunConfig, dataset: object, load_plain: Callable) -> tuple:
    """(data of ``load_plain`` for x alone, resolved spec, c_train [N, C], c_val or None).

    ``load_plain(config, Dataset)`` is the ordinary loader; ``dataset`` is None (read
    ``config.train.data``), (x, c), or any other form of ``vaelab.data_forms``.
    """
    tc, spec = config.train, config.model.condition
    assert spec is not None      # the caller only comes here for a conditional model
    if data_forms.is_loader(dataset):
        raise ValueError("condition (--condition): pass the data as (x, c) arrays, a "
                         "DataFrame or a file, not a DataLoader, with a condition")
    if is_pair(dataset):
        x, values = cast(tuple[Any, Any], dataset)
        ds = data_forms.as_dataset(x, where="dataset", seed=tc.seed)
        values = np.asarray(values)
        if len(values) != len(ds):
            raise ValueError(f"dataset: expected one condition per example of x ({len(ds)}), "
                             f"got {len(values)}")
        if spec["source"] == "columns":
            raise ValueError(f"condition: with dataset=(x, c), c is given; expected condition "
                             f"'given' (or 'labels'), got columns {spec['columns']}")
    else:
        ds = (data_.load_dataset(tc.data, "train", keep_uint8=True, mmap=True)
              if dataset is None else dataset if isinstance(dataset, data_.Dataset)
              else data_forms.as_dataset(dataset, where="dataset", seed=tc.seed))
        ds, values = condition_.take(spec, ds, tc.data)
    by_labels = spec["source"] == "labels" and not is_pair(dataset)
    if not by_labels:
        if tc.classes is not None:
            raise ValueError("classes (--classes): needs the dataset's labels, but the "
                             "condition is not them; expected no --classes with --condition "
                             "COLUMNS")
        ds = replace(ds, labels=torch.arange(len(ds), dtype=torch.int64))   # row ids
    plain = replace(config, model=replace(config.model, condition=None))
    data = load_plain(plain, ds)

    def raw(part: data_.Dataset) -> np.ndarray:
        rows = cast(torch.Tensor, part.labels).numpy()   # values or row ids, set above
        return rows if by_labels else values[rows]

    parts = [data.train] + ([] if data.val is None else [data.val])
    spec = condition_.resolve(spec, np.concatenate([raw(p) for p in parts]))
    coded = [condition_.encode(spec, raw(p)) for p in parts]
    if not by_labels:                    # the row ids were ours, not the data's labels
        data = replace(data, train=replace(data.train, labels=None),
                       val=None if data.val is None else replace(data.val, labels=None))
    return data, spec, coded[0], coded[1] if len(coded) > 1 else None


class PackedBatches:
    """The training batches as packed rows [x | c]: x from ``batches`` (binarized there),
    c [N, C] the training rows' conditions, picked by each batch's row index."""

    def __init__(self, batches, c: torch.Tensor) -> None:
        self.batches, self.c = batches, c

    def __len__(self) -> int:
        return len(self.batches)

    def __getattr__(self, name: str):
        if name == "batches":
            raise AttributeError(name)
        return getattr(self.batches, name)

    def epoch(self, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for x, index in self.batches.epoch(epoch):
            yield condition_.pack(x, self.c.index_select(0, index.to(self.c.device))), index
