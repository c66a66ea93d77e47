"""Your own networks through vaelab's trainer: ``vaelab.fit(make_nets, data, out=...)``.

The parts a user supplies are the two networks of the lecture's model: an encoder net, x →
q's raw parameters, and a decoder net, z → the likelihood's raw parameters, made by a factory
function (protocol: :class:`vaelab.model.nets.FactoryNets`). Everything else is vaelab's and
chosen as for any run — the family of q, the prior, the likelihood, the objective, the step,
checkpoints and bit-exact resume, torchrun, early stopping, the metrics — because the run is an
ordinary run whose config says ``net = "factory"`` with the factory's import path and JSON
arguments. The run directory holds JSON and safetensors only; ``vaelab.load(run,
trust=["mypkg"])`` imports the factory again, and only with that consent (``vaelab._trust``).

With ``net="model"`` the factory returns the whole model and q instead — your p(z), p(x | z)
and q(z | x) as torch distributions (protocol: :mod:`vaelab.model.user`) — and only the
trainer, the measures and the uses are vaelab's.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from vaelab import _trust
from vaelab.data import first_missing
from vaelab.fit import runs
from vaelab.fit.train import FigureWriter, TrainResult, train


def factory_reference(factory: str | Callable) -> str:
    """``"module:function"`` of a factory given as a path or as the function itself (which
    must be importable by that path: defined at the top level of a module)."""
    if isinstance(factory, str):
        return _trust.check_reference(factory, "model")
    module, name = getattr(factory, "__module__", None), getattr(factory, "__qualname__", "")
    if not callable(factory) or not module or "<" in name:
        raise TypeError(f"model: expected a network factory importable by path (a function "
                        f"defined at the top level of a module, or 'pkg.module:function'), "
                        f"got {factory!r}")
    return _trust.check_reference(f"{module}:{name}", "model")


def fit(model: str | Callable, data: object, out: str | os.PathLike, *,
        args: dict | None = None, net: str = "factory", epochs: int = 10,
        objective: str = "elbo",
        likelihood: str = "bernoulli", latent_dim: int = 20, resume: bool = False,
        overwrite: bool = False, progress: bool = True,
        log: Callable[[str], object] | None = print, figures: FigureWriter | None = None,
        **options: Any) -> TrainResult:
    """Train a VAE whose networks (or whole model and q) come from your factory; write a run
    directory.

    Args:
        model: your factory, ``"pkg.module:function"`` or the function itself. With
            ``net="factory"`` it is called as ``factory(data_dim=, latent_dim=, image_shape=,
            encoder_out=, decoder_out=, **args)`` → (encoder net, decoder net)
            (:class:`vaelab.model.nets.FactoryNets`); with ``net="model"`` as
            ``factory(data_dim=, latent_dim=, image_shape=, **args)`` → (model, q), your whole
            p(z) p(x | z) and q(z | x) (:mod:`vaelab.model.user`). Naming it here is consent
            to import it, now and on resume.
        data: the training data in any form of ``vaelab.data_forms`` (array, tensor,
            DataFrame, torch Dataset or DataLoader).
        out: the run directory.
        args: the factory's keyword arguments, JSON values (stored in the run).
        net: ``"factory"`` (your two nets in vaelab's family, prior and likelihood) or
            ``"model"`` (your whole model and q; ``likelihood`` then only names the values
            vaelab's data checks accept, and columns are not standardized unless asked).
        epochs, objective, likelihood, latent_dim: as ``vaelab train``.
        resume, overwrite, progress, log, figures: as :func:`vaelab.fit.train.train`.
        **options: any other config key (``family="iaf"``, ``prior="vamp"``,
            ``batch_size=64``, ``binarize="none"``, ``early_stopping_patience=5``, ...).

    Returns the :class:`~vaelab.fit.train.TrainResult`. Errors are one line, as for
    ``train``: a factory that cannot be imported, returns something other than two modules,
    nets whose output sizes are not ``encoder_out`` and ``decoder_out`` (checked on one
    input before training), or arguments that are not JSON. A failed first fit leaves no
    run folder behind (only the folders this call created, never a pre-existing one).
    """
    reference = factory_reference(model)
    try:
        args = json.loads(json.dumps(args or {}, allow_nan=False))
    except (TypeError, ValueError) as err:
        raise TypeError(f"args: expected JSON values (they are stored in the run's "
                        f"config.json), got {err}") from None
    if net not in ("factory", "model"):
        raise ValueError(f"net: expected 'factory' (your encoder and decoder nets) or 'model' "
                         f"(your whole model and q), got {net!r}")
    if isinstance(latent_dim, (tuple, list)):     # vaelab's hierarchies are its own nets
        raise ValueError(f"latent_dim: net {net!r} is one latent layer (your factory builds "
                         f"no hierarchy); expected an integer, got {list(latent_dim)}")
    if net == "model":    # a whole model reads the data as given unless asked otherwise
        options.setdefault("standardize", "off")
    config = {"net": net, "net_options": {"factory": reference, "args": args},
              "epochs": epochs, "objective": objective, "likelihood": likelihood,
              "latent_dim": latent_dim, **options}
    run_dir = Path(out).expanduser()
    created, before = first_missing(run_dir), runs.run_files(run_dir)
    try:
        with _trust.trusting(reference.partition(":")[0]):
            return train(config, out, dataset=data, resume=resume, overwrite=overwrite,
                         progress=progress, log=log, figures=figures)
    except BaseException:
        runs.remove_unfinished(run_dir, created, before)
        raise

