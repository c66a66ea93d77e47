"""The dataset names ``--data`` (a config's ``data``) accepts: named datasets and protocols.

Role in vaelab: one list, read by the configuration, the data loader and the command line's
help and errors. It imports nothing, so that ``vaelab --help`` lists the names without
importing torch.
"""

from __future__ import annotations

#: Named data protocols: a name that stands for a dataset with the split and binarization of a
#: published table, expanded into those settings (and so recorded in the run's config).
#: "binarized-fashion-mnist" is the protocol of the dynamically binarized Fashion-MNIST table
#: (Norouzi et al. 2020, Table 1; the VampPrior code's split): 50,000 training images redrawn
#: from Bernoulli(x) every epoch, 10,000 validation images (the seeded split, binarized once),
#: and the 10,000 test images, which ``vaelab evaluate`` binarizes once with its ``--seed``.
DATA_PROTOCOLS: dict[str, dict] = {
    "binarized-fashion-mnist": {"data": "fashion-mnist", "val_fraction": 1 / 6,
                                "binarize": "dynamic"},
}

#: The named datasets, whose files :mod:`vaelab.data.named` finds (its ``NAMED_SOURCES``; a
#: test pins the two equal).
NAMED_DATASETS = ("fashion-mnist", "mnist")


def data_names() -> tuple[str, ...]:
    """Every dataset name ``data`` (``--data``) accepts: the named datasets, then the
    protocols of :data:`DATA_PROTOCOLS` (what help texts and errors list)."""
    return (*NAMED_DATASETS, *DATA_PROTOCOLS)
