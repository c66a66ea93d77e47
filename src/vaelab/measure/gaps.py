"""Inference suboptimality: split the ELBO's gap into approximation and amortization parts.

Cremer, Li & Duvenaud (2018), "Inference Suboptimality in Variational Autoencoders". For an
example x, an encoder's q_φ(z | x) and q*, the best member of the *same* family for this x
(found by optimizing q's parameters for x alone, starting from the encoder's output):

    log p(x) − L[q_φ] = (log p(x) − L[q*])  +  (L[q*] − L[q_φ])
        inference gap  =  approximation gap  +  amortization gap

The approximation gap KL(q* ‖ p(z | x)) is what the family cannot express; the amortization gap
is what the encoder loses by predicting φ from x instead of fitting it per example (the
lecture's "different φ for different data points" vs one shared encoder).

Estimates, per example: L[q_φ] and L[q*] are ELBOs averaged over ``num_samples`` samples of z;
q* comes from :func:`vaelab.infer.schemes.optimize_q` (Adam until the running ELBO stops
improving); log p̂(x) is the importance-sampling estimate of
``vaelab.measure.evaluate.log_likelihood``
with the equal mixture ½ q_φ + ½ q* as proposal, half the draws from each
(:class:`DeterministicMixture`; defensive importance sampling, Hesterberg 1995): its weights
are at most twice those of either component alone, so it is never much worse than the better
of the two, whichever that is for a given x.

How to read them. E[log p̂(x)] ≤ log p(x) (Jensen), so the reported approximation gap
log p̂ − L[q*] is, in expectation, a *lower* bound on log p(x) − L[q*], and so is the reported
inference gap on log p(x) − L[q_φ] = KL(q_φ ‖ p(z | x)). Conversely q* is only as good as the
optimizer: L[q*] ≤ max_q L[q], so the reported amortization gap is a lower bound on the true
one, and log p(x) − L[q*] over-states the family's own limit by the same shortfall. And
log p̂ is only as good as its proposal: where both q* and q_φ are narrower than the posterior
in some direction (e.g. a diagonal q on a strongly correlated Gaussian posterior: with
precision Λ the weights of q* have finite variance only if 2Λ − diag(Λ) is positive definite,
in 2-D only for correlations below ½), log p̂ converges slowly, from below.
Means are over examples, with standard errors std / √B.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Protocol, cast

import torch
from torch.distributions import Distribution

from vaelab import _checks
from vaelab._files import atomic_write_json
from vaelab._runtime import device_of, isolated_rng
from vaelab.infer.objectives import GenerativeModel, elbo
from vaelab.infer.schemes import optimize_q
from vaelab.measure import honest
from vaelab.measure.evaluate import auto_chunk_size, likelihood_meaning, log_likelihood


class PerExampleEncoder(Protocol):
    """What the gaps and the refined proposals need of an encoder: its family with the
    x-dependent parameters freed per example, and the encoder's values to start from
    (``vaelab.model.vae.Encoder`` and the hierarchical encoders have it)."""

    def per_example(self, x: torch.Tensor) -> tuple[Any, torch.Tensor]: ...

QUANTITIES = ("log_likelihood", "elbo_optimized", "elbo_amortized",
              "approximation_gap", "amortization_gap", "inference_gap")


def _mean_stderr(values: torch.Tensor) -> tuple[float, float]:
    """(mean, std/√n) of values [n] in float64; the standard error is NaN when n = 1."""
    stats = honest.mean_std_se(values)
    return stats["mean"], math.nan if stats["se"] is None else stats["se"]


@dataclass(frozen=True)
class GapReport:
    """Per-example bounds, each a tensor [B], and the gaps derived from them.

    Attributes:
        log_likelihood: log p̂(x) (importance sampling, ``num_samples`` samples).
        elbo_optimized: L[q*], the per-example optimized q of the encoder's family.
        elbo_amortized: L[q_φ], the encoder's q.
        num_samples: samples behind every estimate.
        optimizer_steps: Adam steps taken to find q*.
        ess, stderr: effective sample size and delta-method SE of log p̂(x), [B] (None: not
            known); they drive the k = 1 / tiny-ESS warnings of ``vaelab.measure.honest``.
        likelihood_meaning: what log p̂ is on these data
            (:func:`vaelab.measure.evaluate.likelihood_meaning`; None: not said).
    """

    log_likelihood: torch.Tensor
    elbo_optimized: torch.Tensor
    elbo_amortized: torch.Tensor
    num_samples: int
    optimizer_steps: int
    ess: torch.Tensor | None = None
    stderr: torch.Tensor | None = None
    likelihood_meaning: dict | None = None

    @property
    def approximation_gap(self) -> torch.Tensor:
        """log p̂(x) − L[q*], [B]."""
        return self.log_likelihood - self.elbo_optimized

    @property
    def amortization_gap(self) -> torch.Tensor:
        """L[q*] − L[q_φ], [B]."""
        return self.elbo_optimized - self.elbo_amortized

    @property
    def inference_gap(self) -> torch.Tensor:
        """log p̂(x) − L[q_φ] = approximation + amortization gap, [B]."""
        return self.log_likelihood - self.elbo_amortized

    def summary(self) -> dict[str, tuple[float, float]]:
        """{quantity: (mean over examples, standard error)} for every quantity."""
        return {name: _mean_stderr(getattr(self, name)) for name in QUANTITIES}

    def _stats(self) -> dict[str, dict]:
        """{quantity: {"mean", "stderr"}} with None + reason where undefined or non-finite."""
        out = {}
        for name in QUANTITIES:
            stats = honest.mean_std_se(getattr(self, name))
            reasons = stats.get(honest.UNDEFINED, {})
            entry = {"mean": stats["mean"], "stderr": stats["se"]}
            if "se" in reasons:
                entry[honest.UNDEFINED] = {"stderr": reasons["se"]}
            out[name] = entry
        return honest.json_safe(out)

    @property
    def quantity(self) -> str:
        """What log p̂ is called: "log p(x)", "log density" or "unnormalised score"."""
        return honest.estimate_name((self.likelihood_meaning or {}).get("meaning"))

    def warnings(self) -> list[str]:
        """Lines for a diverged model (non-finite bounds), k = 1 or tiny ESS (as ``evaluate``),
        one example (no standard errors) and negative mean gaps (Monte Carlo noise)."""
        line = honest.divergence_warning({name: getattr(self, name) for name in QUANTITIES[:3]})
        lines = [] if line is None else [line]
        if self.ess is not None and self.stderr is not None:
            lines += honest.reliability_warnings(self.ess, self.stderr, self.num_samples,
                                                 quantity=self.quantity)
        n = self.log_likelihood.numel()
        if n == 1:
            lines.append("warning: 1 example: the standard errors across examples are "
                         "undefined and one example says little about the gaps; raise --limit")
        negative = [name for name in QUANTITIES[3:]
                    if float(getattr(self, name).double().mean()) < 0]
        if negative:
            lines.append(f"warning: negative mean {', '.join(negative)}: the true gaps are "
                         f">= 0, so this is estimation error (k = {self.num_samples}, n = {n}, "
                         f"{self.optimizer_steps} optimizer steps); raise --k, --limit or "
                         f"--steps")
        return lines

    def to_dict(self) -> dict:
        """JSON-serializable (strict: no NaN): summary (mean, stderr), per-example values,
        warnings; undefined or non-finite numbers are null with their reason beside them in
        an ``"undefined"`` mapping (``vaelab.measure.honest``)."""
        return honest.json_safe({
            "num_examples": int(self.log_likelihood.numel()),
            "num_samples": self.num_samples,
            "optimizer_steps": self.optimizer_steps,
            **({} if self.likelihood_meaning is None
               else {"likelihood_meaning": self.likelihood_meaning}),
            "summary": self._stats(),
            "per_example": {k: getattr(self, k).double().tolist() for k in QUANTITIES},
            "warnings": self.warnings(),
        })

    def table(self) -> str:
        """Plain-text table of means ± standard errors, in nats ("undefined" where none)."""
        rows = [f"{'quantity':<20} {'mean (nats)':>12} {'± stderr':>10}"]
        labels = {"log_likelihood": self.quantity, "elbo_optimized": "L[q*]",
                  "elbo_amortized": "L[q_phi]"}
        for name, stats in self._stats().items():
            rows.append(f"{labels.get(name, name):<20} {honest.cell(stats, 'mean', '.3f'):>12} "
                        f"{honest.cell(stats, 'stderr', '.3f'):>10}")
        rows.append(f"({int(self.log_likelihood.numel())} examples, {self.num_samples} samples, "
                    f"{self.optimizer_steps} optimizer steps)")
        note = (self.likelihood_meaning or {}).get("note")
        return "\n".join(rows + self.warnings() + ([f"note: {note}"] if note else []))


def mean_elbo(model: GenerativeModel, q: Distribution, x: torch.Tensor, num_samples: int,
              chunk_size: int | None = None) -> torch.Tensor:
    """ELBO(x; q) averaged over ``num_samples`` samples drawn in chunks; → [B], no grad."""
    num_samples = _checks.positive_int("num_samples", num_samples)
    if chunk_size is None:
        chunk_size = auto_chunk_size(x.shape[0], x.shape[-1], num_samples)
    chunk_size = _checks.positive_int("chunk_size", chunk_size)
    total = x.new_zeros(x.shape[0])
    with torch.no_grad():
        for start in range(0, num_samples, chunk_size):
            k = min(chunk_size, num_samples - start)
            total += k * elbo(model, q, x, k, validate=False)
    return total / num_samples


class DeterministicMixture(Distribution):
    """Proposal ½ q_a + ½ q_b whose draws are split evenly between the two components.

    ``log_prob`` is the mixture density; ``sample((k,))`` returns ⌊k/2⌋ or ⌈k/2⌉ draws from
    each component (alternating the odd one), not a random split. Importance weights
    p(x, z) / (½ q_a(z) + ½ q_b(z)) over such draws give an unbiased estimate of p(x) (the
    balance heuristic of multiple importance sampling, Veach & Guibas 1995; "deterministic
    mixture" sampling, Owen & Zhou 2000) without the binomial noise of a random split; each
    weight is at most twice that of either component alone. batch [B], event [L].
    """

    arg_constraints: dict = {}

    def __init__(self, q_a: Distribution, q_b: Distribution) -> None:
        self.q_a, self.q_b = q_a, q_b
        self._odd_to_a = True
        super().__init__(q_a.batch_shape, q_a.event_shape, validate_args=False)

    def sample(self, sample_shape: torch.Size | list[int] | tuple[int, ...] = ()
               ) -> torch.Tensor:
        (k,) = tuple(sample_shape) or (1,)
        k_a = k // 2 + (k % 2 if self._odd_to_a else 0)
        self._odd_to_a ^= bool(k % 2)
        with torch.no_grad():
            z = torch.cat([self.q_a.sample((k_a,)), self.q_b.sample((k - k_a,))])
        return z if sample_shape else z[0]

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        return torch.logaddexp(self.q_a.log_prob(value), self.q_b.log_prob(value)) - math.log(2)


def gaps(model: GenerativeModel, x: torch.Tensor, *, encoder: torch.nn.Module | None = None,
         num_samples: int = 5000, steps: int = 2000, lr: float = 1e-2,
         optimizer_samples: int = 8, patience: int = 100, chunk_size: int | None = None,
         seed: int | None = None) -> GapReport:
    """Per-example approximation and amortization gaps of ``encoder`` on x [B, D].

    q* is the best q of the encoder's own structure for each example: ``encoder.per_example``
    gives the family with its x-dependent parameters free per example and the encoder's
    values as the start (``vaelab.model.vae.Encoder``: the family's raw parameters; a
    hierarchical encoder, ``vaelab.model.hierarchical``: the bottom-up first layer's
    parameters plus offsets of the upper conditionals, or the ladder's per-layer evidence).

    Args:
        model: generative model; ``encoder`` defaults to ``model.encoder``.
        x: data [B, D].
        num_samples: samples of z behind L[q_φ], L[q*] and log p̂(x) (5000 as in the paper).
        steps, lr, optimizer_samples, patience: :func:`~vaelab.infer.schemes.optimize_q`'s budget
            (at most ``steps`` Adam steps, each with ``optimizer_samples`` samples).
        chunk_size: samples per chunk (memory bound); None picks one.
        seed: seeds the sampling (reproducible report) without touching the global RNG.
    """
    encoder = getattr(model, "encoder", None) if encoder is None else encoder
    if not callable(getattr(encoder, "per_example", None)):
        raise TypeError(f"encoder: expected a vaelab.model.vae.Encoder or a hierarchical "
                        f"encoder (anything with per_example(x)), or a model with one, "
                        f"got {type(encoder).__name__}")
    x = model.check_data(x).to(device_of(model))     # CPU data to a GPU model's device
    num_samples = _checks.positive_int("num_samples", num_samples)
    seed = None if seed is None else _checks.non_negative_int("seed", seed)
    with isolated_rng(seed, enabled=seed is not None):
        family, raw_phi = cast(PerExampleEncoder, encoder).per_example(x)
        raw_star, history = optimize_q(model, x, raw_phi, family, steps=steps, lr=lr,
                                       num_samples=optimizer_samples, patience=patience)
        amortized = mean_elbo(model, family(raw_phi), x, num_samples, chunk_size)
        optimized = mean_elbo(model, family(raw_star), x, num_samples, chunk_size)
        proposal = DeterministicMixture(family(raw_phi), family(raw_star))
        estimate = log_likelihood(model, proposal, x, num_samples, chunk_size)
    return GapReport(estimate.log_likelihood, optimized, amortized, num_samples, len(history),
                     ess=estimate.ess, stderr=estimate.stderr)


def gap_panels(report: GapReport) -> dict[str, tuple[list[str], list[float], list[float]]]:
    """What :func:`plot_gaps` draws: {panel: (labels, means, paired standard errors)}.

    Every bar is a *paired* difference on the same examples, with the standard error of that
    difference (std of the per-example differences / √n), not the spread of the bounds across
    examples, which is much larger and would hide the gaps: "ladder" is each
    bound minus L[q_φ] (0, the amortization gap, the inference gap), "gaps" the two parts.
    """
    s = report.summary()
    ladder = [("L[q_φ]\n(encoder)", 0.0, 0.0),
              ("L[q*]\n(optimized)", *s["amortization_gap"]),
              ("log p̂(x)", *s["inference_gap"])]
    parts = [("approximation\nlog p̂ − L[q*]", *s["approximation_gap"]),
             ("amortization\nL[q*] − L[q_φ]", *s["amortization_gap"])]
    def columns(rows: list) -> tuple[list[str], list[float], list[float]]:
        labels, means, ses = zip(*rows, strict=True)
        return list(labels), list(means), list(ses)

    return {"ladder": columns(ladder), "gaps": columns(parts)}


def plot_gaps(report: GapReport, path: str | os.PathLike) -> Path:
    """The bounds above L[q_φ] and the two gaps, as paired means ± s.e. → PNG at ``path``."""
    from matplotlib.figure import Figure

    from vaelab._files import save_figure

    panels, n = gap_panels(report), int(report.log_likelihood.numel())
    base, _ = report.summary()["elbo_amortized"]
    fig = Figure(figsize=(9, 3.6), layout="constrained")
    left, right = fig.subplots(1, 2)
    labels, means, errs = panels["ladder"]
    for i, (mean, err, color) in enumerate(zip(means, errs, ["tab:orange", "tab:green",
                                                             "tab:blue"], strict=True)):
        left.errorbar([i], [mean], yerr=[0 if math.isnan(err) else err], fmt="o",
                      color=color, ms=9, capsize=5, lw=2)
        left.annotate(f"{mean:+.2f}", (i, mean), xytext=(12, -4), textcoords="offset points")
    left.set_xticks(range(3), labels)
    left.set_xlim(-0.5, 2.9)
    left.set_ylabel("nats above L[q_φ] (paired mean ± s.e.)")
    left.set_title(f"bounds on log p(x), relative to L[q_φ] = {base:.2f}", fontsize=10)
    labels, means, errs = panels["gaps"]
    right.bar(labels, means, yerr=[0 if math.isnan(e) else e for e in errs],
              color=["tab:purple", "tab:red"], capsize=4)
    right.axhline(0, color="black", lw=0.8)
    right.set_ylabel("nats per example (paired mean ± s.e.)")
    right.set_title(f"gaps ({n} examples" + (", s.e. undefined)" if n < 2 else ")"),
                    fontsize=10)
    return save_figure(fig, path, dpi=120)


def report_gaps(model: GenerativeModel, x: torch.Tensor, *, num_samples: int = 5000,
                steps: int = 2000, out_dir: str | os.PathLike, data_kind: str | None = None,
                **options) -> GapReport:
    """:func:`gaps`, then write ``out_dir/gaps.json`` and ``out_dir/gaps.png`` atomically.

    ``options`` go to :func:`gaps` (encoder, lr, optimizer_samples, patience, chunk_size, seed).
    The report records what log p̂ means on x of ``data_kind`` (None: inferred from x),
    :func:`vaelab.measure.evaluate.likelihood_meaning`.
    """
    report = gaps(model, x, num_samples=num_samples, steps=steps, **options)
    report = replace(report, likelihood_meaning=likelihood_meaning(
        model, x, data_kind, bits_per_dim=False))       # gaps reports nats only
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out_dir / "gaps.json", report.to_dict())
    plot_gaps(report, out_dir / "gaps.png")
    return report
