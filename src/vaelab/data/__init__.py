"""Datasets → tensors: named IDX datasets, user arrays, binarization and batching.

Role in vaelab: the leaf package that turns data on disk (or in memory) into a
:class:`Dataset` of flattened float32 rows ``x`` of shape [N, D] (images scaled to [0, 1]) and
feeds them to training in seeded, resumable, shardable batches. It knows nothing of models.
One concern per module:

* :mod:`vaelab.data.kinds` — what a dataset is, and the one rule that gives its values a kind
  (binary, 8-bit, unit-interval, continuous);
* :mod:`vaelab.data.readers` — the file formats (IDX, .npy, .npz, CSV, folders of images);
* :mod:`vaelab.data.named` — the named datasets (Fashion-MNIST, MNIST): where they are found,
  how they are downloaded;
* :mod:`vaelab.data.load` — :func:`load_dataset`, the one entry point by source;
* :mod:`vaelab.data.transforms` — binarization, the train/validation split, classes, noise;
* :mod:`vaelab.data.batches` — seeded mini-batches for training;
* :mod:`vaelab.data.forms` — data as users hold it (arrays, tensors, DataFrames, torch
  Datasets and DataLoaders) → a :class:`Dataset`.

The names below are re-exported so ``from vaelab import data; data.load_dataset(...)`` reads
as it always did. Settings a test or a user changes (such as the system's dataset folder) are
changed where they are read: ``vaelab.data.named.SYSTEM_DATA_DIR``.
"""

from vaelab.data.batches import Batches
from vaelab.data.kinds import (
    DATA_KINDS,
    EIGHT_BIT_NOTE,
    MISSING_HINT,
    SPLITS,
    Dataset,
    infer_kind,
    kind_of,
    to_unit,
)
from vaelab.data.load import has_split, is_named, load_dataset, location
from vaelab.data.named import (
    DEFAULT_DATASET,
    IDX_FILES,
    NAMED_SOURCES,
    NamedSource,
    cache_dir,
    download_file,
    first_missing,
    remove_empty_dirs,
    search_dirs,
)
from vaelab.data.readers import (
    IMAGE_SUFFIXES,
    csv_header,
    read_csv_numbers,
    read_idx,
    read_npy,
    write_idx,
)
from vaelab.data.transforms import (
    BINARIZE_MODES,
    binarize,
    binarize_rows,
    perturb,
    select_classes,
    static_binarize,
    train_val_split,
)

__all__ = [
    "BINARIZE_MODES", "DATA_KINDS", "DEFAULT_DATASET", "EIGHT_BIT_NOTE", "IDX_FILES",
    "IMAGE_SUFFIXES", "MISSING_HINT", "NAMED_SOURCES", "SPLITS", "Batches", "Dataset",
    "NamedSource", "binarize", "binarize_rows", "cache_dir", "csv_header", "download_file",
    "first_missing", "has_split", "infer_kind", "is_named", "kind_of", "load_dataset",
    "location", "perturb", "read_csv_numbers", "read_idx", "read_npy", "remove_empty_dirs",
    "search_dirs", "select_classes", "static_binarize", "to_unit", "train_val_split",
    "write_idx",
]
