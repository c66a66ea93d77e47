"""What a new run takes from its training data before the first step.

* :func:`start_from_rows` — every module that starts from training rows
  (``initialise_from_data``: the VampPrior's pseudo-inputs with ``--prior-init data``) gets
  the training rows, as values in [0, 1] for 8-bit data;
* :func:`weight_norm_from_batch` — the data-dependent initialisation of weight-normalised
  layers (Salimans & Kingma 2016; ``vaelab.model.weight_norm``) by one forward pass of the
  bound on the run's first training batch.

Both run when the trainer is built, before the moving average copies the weights. A resumed
run then loads its checkpoint over them; neither advances the training RNG streams (the
row draw happens while the model is built, the forward pass inside an isolated RNG), so
resumed and uninterrupted runs stay bit-identical.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from vaelab._collectives import broadcast
from vaelab._runtime import isolated_rng
from vaelab.data.kinds import to_unit
from vaelab.model import weight_norm


def start_from_rows(model: nn.Module, x_train: torch.Tensor) -> None:
    """Hand ``x_train`` [N, D] to each submodule of ``model`` with ``initialise_from_data``."""
    rows = None
    for module in model.modules():
        start = getattr(module, "initialise_from_data", None)
        if callable(start):
            rows = to_unit(x_train) if rows is None else rows
            start(rows)


def weight_norm_from_batch(modules: tuple[nn.Module, ...], forward: Callable[[], object],
                           seed: int, world_size: int = 1) -> int:
    """Set g and b of every weight-normalised layer of ``modules`` from one call of
    ``forward`` (the bound on the first training batch), drawing its noise from ``seed``
    alone → the number of layers it initialised. With several processes rank 0's values are
    broadcast, so every rank starts from the same weights."""
    if not weight_norm.layers(*modules):
        return 0
    with torch.no_grad(), isolated_rng(seed), weight_norm.initialising(*modules) as found:
        forward()
    if world_size > 1:
        for layer in found:
            for tensor in (weight_norm.direction_and_length(layer)[1], layer.bias):
                data = tensor.data
                broadcast(data, 0)
    return len(found)
