"""vaelab as a user runs it: ``build_vae`` + ``Amortized`` + ``TrainStep`` fed by
``vaelab.data.Batches`` (dynamic binarization), and ``vaelab.log_likelihood`` for evaluation.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from common import Shapes


def version() -> str:
    import vaelab

    return vaelab.__version__


def build_model(s: Shapes, weights: dict):
    """The vaelab 784-400-20 Bernoulli VAE, loaded with the shared initial weights."""
    from vaelab.config import ModelConfig
    from vaelab.model.vae import build_vae

    config = ModelConfig(data_dim=s.data_dim, latent_dim=s.latent, hidden=(s.hidden,),
                         likelihood="bernoulli", family="diagonal_normal",
                         prior="standard_normal", activation="relu")
    model = build_vae(config)
    names = {"enc1": "encoder.net.0", "enc2": "encoder.net.2",
             "dec1": "decoder.net.0", "dec2": "decoder.net.2"}
    state = model.state_dict()
    for key, value in weights.items():
        layer, kind = key.split(".")
        target = f"{names[layer]}.{kind}"
        if target not in state or state[target].shape != value.shape:
            raise RuntimeError(f"vaelab model layout changed: no {target} of shape "
                               f"{tuple(value.shape)}")
        state[target] = value
    model.load_state_dict(state)
    return model


def cycle_batches(batches) -> Iterator:
    """The batches of a ``vaelab.data.Batches``, epoch after epoch without end (each epoch its
    own shuffle and binarization), as a training loop draws them."""
    epoch = 0
    while True:
        yield from batches.epoch(epoch)
        epoch += 1


class VaelabTrainer:
    """``TrainStep`` over ``Batches(binarize="dynamic")``, as vaelab's training loop runs it."""

    name = "vaelab"

    def __init__(self, s: Shapes, data: torch.Tensor, weights: dict, seed: int,
                 compile: str | bool = "auto") -> None:
        from vaelab.data import Batches
        from vaelab.fit.step import TrainStep
        from vaelab.infer.schemes import Amortized

        torch.manual_seed(seed)
        self.model = build_model(s, weights)
        self.inference = Amortized(self.model.encoder)
        self.step = TrainStep(self.model, self.inference, lr=s.lr, compile=compile)
        self.batches = Batches(data, s.batch, seed=seed, binarize="dynamic", drop_last=True)
        self._batches = cycle_batches(self.batches)
        self.losses: list[float] = []
        self.skipped = 0

    def run(self, steps: int) -> None:
        step = self.step
        for _ in range(steps):
            x, index = next(self._batches)
            result = step(x, index)
            self.losses.append(-result.elbo)
            self.skipped += result.skipped


def log_likelihood(model, x: torch.Tensor, k: int, chunk_size: int | None = None):
    """``vaelab.log_likelihood`` with q = the model's encoder, as ``evaluate_model`` calls it."""
    from vaelab import log_likelihood as ll

    with torch.inference_mode():
        q = model.encode(x)
        return ll(model, q, x, num_samples=k, chunk_size=chunk_size).log_likelihood
