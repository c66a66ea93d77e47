"""The validation half of the training loop: the validation ELBO, rate and distortion after
every epoch, and what tells posterior collapse (active units; per layer for a hierarchy).

A mixin of ``vaelab.fit.train``'s loop (like ``vaelab.fit.resume.Checkpointed``): validation
rows are split over the ranks of a distributed run and the sums all-reduced; the q noise comes
from a fixed seed (the same draws every epoch) inside an isolated RNG, so validating never
touches the training RNG stream.
"""

from __future__ import annotations

from typing import Any

import torch

from vaelab._runtime import isolated_rng
from vaelab.model.hierarchical import HierarchicalVAE, collapse_warning, layer_metrics

#: Validation rows per forward pass.
VAL_BATCH_SIZE = 4096
#: Validation rows read by the active units when q's mean is itself a Monte Carlo estimate (an
#: IAF posterior: 256 flow passes per row). Over all 10,000 validation rows of the published
#: protocol that cost four times the training epoch itself; the variance of the means over
#: 1,000 rows is within about 5 % of the full set's, ample for a 0.01 threshold.
ESTIMATED_MEAN_ROWS = 1000


class Validated:
    """Mixin of the training loop: validation metrics on ``val_x``.

    Expects the loop to set ``tc`` (the TrainConfig), ``val_x`` (this process's validation
    rows on the device, or None), ``dist``, ``device``, ``model``, ``inference``, ``state``
    and ``log``, and to provide ``_terms(x, index)`` (the bound's terms on x).
    """

    # Declared for the type checker; the loop's __init__ assigns them.
    tc: Any
    val_x: torch.Tensor | None
    dist: Any
    device: torch.device
    model: Any
    inference: Any
    state: Any
    log: Any

    def _terms(self, x: torch.Tensor, index: torch.Tensor | None) -> Any:
        raise NotImplementedError   # pragma: no cover - the loop defines it

    @torch.no_grad()
    def validate(self) -> tuple[float, float, float] | None:
        """Mean validation (ELBO, rate, distortion); None without validation data."""
        if self.val_x is None or self.tc.inference == "per-datapoint":
            return None
        self.model.eval()
        self.inference.eval()
        sums = torch.zeros(4, dtype=torch.float64, device=self.device)
        with isolated_rng(self.tc.seed + 7919):
            for x in self._val_batches():
                terms = self._terms(x, None)
                sums += torch.stack([terms.elbo.sum(), terms.kl.sum(),
                                     -terms.expected_log_likelihood.sum(),
                                     torch.tensor(x.shape[0], device=self.device)]).double()
        sums = self.dist.all_reduce_sum(sums).cpu()
        return tuple((sums[:3] / sums[3]).tolist())

    def _val_batches(self) -> list[torch.Tensor]:
        """This process's validation rows in batches; none (not one empty batch) when a
        rank's share is empty, so it only joins the metrics' all-reduce."""
        return [] if self.val_x is None or not len(self.val_x) else list(
            self.val_x.split(VAL_BATCH_SIZE))

    @torch.no_grad()
    def _layer_metrics(self) -> dict:
        """val_rate_per_layer / val_active_units_per_layer of a hierarchical model, else
        :meth:`_active_units`."""
        if not isinstance(self.model, HierarchicalVAE):
            return self._active_units()
        if self.val_x is None:
            return {}
        self.model.eval()
        self.inference.eval()
        with isolated_rng(self.tc.seed + 7919):
            qs = (self.inference(x, None) for x in self._val_batches())
            out = layer_metrics(self.model, qs, self.tc.num_samples, self.dist.all_reduce_sum)
        warning = collapse_warning(
            [i + 1 for i, a in enumerate(out.get("val_active_units_per_layer") or []) if a == 0],
            self.model.sizes, out.get("val_rate_per_layer"), training=self.tc)
        if warning is not None and self.dist.main and self.state.epoch == self.tc.epochs:
            self.log(warning + " (validation set)")
        return out

    @torch.no_grad()
    def _active_units(self) -> dict:
        """{"val_active_units": the units whose q mean varies over this process's validation
        rows, Var_x E_q[z_u|x] > 0.01} of a one-layer model with an encoder, else {}: with the
        rate it tells posterior collapse (``hierarchical.collapse_from_metrics``). Where q's
        mean is itself an estimate (an IAF), over the first ESTIMATED_MEAN_ROWS rows only."""
        if self.val_x is None or self.tc.inference != "amortized" or len(self.val_x) < 2:
            return {}
        self.model.eval()
        self.inference.eval()
        devices = [self.device] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):   # a flow's mean may draw: keep the stream
            torch.manual_seed(self.tc.seed + 7919)
            rows = self.val_x
            if getattr(self.inference(rows[:1], None), "mean_is_estimate", False):
                rows = rows[:ESTIMATED_MEAN_ROWS]
            means = torch.cat([self.inference(x, None).mean.reshape(len(x), -1)
                               for x in rows.split(VAL_BATCH_SIZE)])
        return {"val_active_units": int((means.double().var(0) > 1e-2).sum())}
