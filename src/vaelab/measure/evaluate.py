"""Measuring a trained model: log-likelihood by importance sampling, bits/dim, active units.

log p(x) is estimated by importance sampling with q as the proposal (Burda et al. 2016;
Rezende, Mohamed & Wierstra 2014):

    p̂(x) = (1/k) Σ_i w_i,  w_i = p(x, z_i) / q(z_i),  z_i ~ q(z | x),

processed in chunks of samples so memory stays bounded whatever k is, and vectorized over the
batch. With the running sums S₁ = Σ w_i and S₂ = Σ w_i² kept in log space, the effective sample
size is ESS = S₁² / S₂ (Kong 1992) and the delta-method standard error of log p̂ is
sqrt((k / ESS − 1) / (k − 1)): zero when every weight is equal (q = p(z | x)).

:func:`evaluate_model` runs the whole test protocol on a data set: ELBO with its rate and
distortion, the importance-sampled log-likelihood (k = 5000 in Burda et al. 2016) with its
standard error, NLL in bits per dimension and the number of active units.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

import torch
from torch.distributions import Distribution

from vaelab import _checks, data_forms
from vaelab._runtime import device_of
from vaelab.infer.objectives import GenerativeModel, check_inputs, elbo_terms, log_weights
from vaelab.measure import honest, shard
from vaelab.model import hierarchical

#: Elements of the largest per-chunk tensor ([chunk, B, D]) when chunk_size is automatic.
DEFAULT_CHUNK_ELEMENTS = 1 << 24


@dataclass(frozen=True)
class LogLikelihoodEstimate:
    """Importance-sampling estimate of log p(x), per data point.

    Attributes:
        log_likelihood: log p̂(x), [B].
        stderr: delta-method standard error of log p̂(x), [B] (NaN when num_samples = 1).
        ess: effective sample size of the importance weights, [B], in [1, num_samples].
        num_samples: k.
    """

    log_likelihood: torch.Tensor
    stderr: torch.Tensor
    ess: torch.Tensor
    num_samples: int


def auto_chunk_size(batch_size: int, data_dim: int, num_samples: int) -> int:
    """Samples per chunk so the [chunk, B, D] tensors stay near 2²⁴ elements."""
    return max(1, min(num_samples, DEFAULT_CHUNK_ELEMENTS // max(1, batch_size * data_dim)))


def log_likelihood(model: GenerativeModel, q: Distribution, x: torch.Tensor,
                   num_samples: int = 5000, chunk_size: int | None = None
                   ) -> LogLikelihoodEstimate:
    """Estimate log p(x) per data point by importance sampling with proposal q.

    Args:
        model: generative model (``prior()``, ``decode()``, ``log_joint()``, ``check_data()``).
        q: proposal, batch [B], event [L]; typically the encoder's q(z | x).
        x: data [B, D].
        num_samples: k ≥ 1 importance samples per data point (5000 is the usual protocol).
        chunk_size: samples drawn per step; None picks one that bounds memory.

    Returns:
        :class:`LogLikelihoodEstimate` with tensors [B]. Runs under ``torch.no_grad``.

    Each chunk's log-weights come from :func:`vaelab.infer.objectives.log_weights`, which for the
    standard VAE (N(0, I) prior, Bernoulli MLP decoder, diagonal-Normal q) computes the same
    numbers on plain tensors, its decoder in cache-sized row blocks
    (``vaelab.model._bernoulli_fast``).
    """
    x = check_inputs(model, q, x, num_samples)
    if chunk_size is None:
        chunk_size = auto_chunk_size(x.shape[0], x.shape[-1], num_samples)
    chunk_size = _checks.positive_int("chunk_size", chunk_size)
    with torch.no_grad():
        lse1 = lse2 = None
        for start in range(0, num_samples, chunk_size):
            lw = log_weights(model, q, x, min(chunk_size, num_samples - start))   # [c, B]
            c1, c2 = lw.logsumexp(0), (2 * lw).logsumexp(0)
            lse1 = c1 if lse1 is None else torch.logaddexp(lse1, c1)
            lse2 = c2 if lse2 is None else torch.logaddexp(lse2, c2)
        assert lse1 is not None and lse2 is not None      # num_samples >= 1: one chunk at least
        return LogLikelihoodEstimate(*from_log_sums(lse1, lse2, num_samples), num_samples)


def from_log_sums(lse1: torch.Tensor, lse2: torch.Tensor, k: int
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(log p̂ = log-mean-exp, delta-method SE, ESS), each [B], from lse1 = log Σ w and
    lse2 = log Σ w² over k weights (SE NaN when k = 1; module docstring)."""
    ess = (2 * lse1 - lse2).exp()
    if k > 1:
        stderr = ((k / ess - 1).clamp_min(0) / (k - 1)).sqrt()
    else:
        stderr = torch.full_like(ess, math.nan)
    return lse1 - math.log(k), stderr, ess


def bits_per_dim(nats_per_example: float | torch.Tensor, data_dim: int) -> float | torch.Tensor:
    """Convert a negative log-likelihood in nats per example to bits per dimension."""
    return nats_per_example / (data_dim * math.log(2))


def active_units(q_means: torch.Tensor, threshold: float = 1e-2) -> tuple[int, torch.Tensor]:
    """Active latent units (Burda et al. 2016): A_u = Var_x(E_q[z_u | x]) > threshold.

    Args:
        q_means: E_q[z | x] for many x, [N, L].
        threshold: activity cut-off (1e-2 in the paper).

    Returns:
        (number of active units, per-unit activity [L]).
    """
    if q_means.dim() != 2 or q_means.shape[0] < 2:
        raise ValueError(f"q_means: expected shape [N >= 2, L], got {list(q_means.shape)}")
    activity = q_means.var(0)
    return int((activity > threshold).sum()), activity


# --------------------------------------------------------------------------- the protocol


def _batch_measures(model: GenerativeModel, infer: Callable[[torch.Tensor], Distribution],
                    x: torch.Tensor, num_samples: int, chunk_size: int | None,
                    elbo_samples: int, estimator: Callable | None = None
                    ) -> dict[str, torch.Tensor]:
    """Per-example measures of one batch x [B, D]: each value a tensor [B] (q_mean [B, L]).

    q = infer(x) runs under ``no_grad`` only (a refining q, e.g. semi-amortized, needs
    autograd inside); everything after it under ``inference_mode``.
    """
    with torch.no_grad():
        q = infer(x)
    layered = isinstance(q, hierarchical.LayeredDistribution)     # then so is the prior
    cuda = [x.device] if layered and x.device.type == "cuda" else []
    with torch.inference_mode():
        states = (torch.get_rng_state(), *(torch.cuda.get_rng_state(d) for d in cuda)
                  ) if layered else ()
        terms = elbo_terms(model, q, x, elbo_samples, validate=False)
        layers = None
        if layered:
            # per-layer rates [B, n] from the very draws of the ELBO's Monte Carlo KL (the RNG
            # replayed), so they sum to the printed rate; the RNG then continues as before
            with torch.random.fork_rng(devices=cuda):
                torch.set_rng_state(states[0])
                for device, state in zip(cuda, states[1:], strict=True):
                    torch.cuda.set_rng_state(state, device)
                layers = hierarchical.layer_rates(
                    cast(hierarchical.LayeredDistribution, q),
                    cast(hierarchical.LayeredDistribution, model.prior()), elbo_samples)
        est = (log_likelihood(model, q, x, num_samples, chunk_size) if estimator is None
               else estimator(model, q, x))   # vaelab.measure.estimators (AIS, proposals)
    return {"rate": terms.kl, "distortion": terms.distortion,
            "elbo": -(terms.kl + terms.distortion), "log_likelihood": est.log_likelihood,
            "ll_stderr": est.stderr, "ess": est.ess, "q_mean": q.mean,
            **({} if layers is None else {"layer_rates": layers})}


def _summary(values: torch.Tensor) -> dict:
    """Mean, per-example standard deviation and standard error of the mean of values [n]
    (rule "across examples" of :data:`SE_RULES`); std and se are None with a reason when
    n = 1 (``vaelab.measure.honest``)."""
    return {**honest.mean_std_se(values), "se_rule": "across examples"}


#: How each ± of :func:`evaluate_model` is computed (``se_rule`` in each summary): one rule
#: for the per-example means (ELBO, rate, distortion, the gap), another for log p̂(x) (and
#: bits/dim), which is compared with published split means and carries a measured Monte
#: Carlo error; each is labelled wherever both are shown.
SE_RULES = {
    "across examples": "std/√n over the n examples (no finite-population correction): the "
                       "mean as an estimate for new data like these",
    "split mean": "√(se_mc² + (1 − n/N)·std²/n): the Monte Carlo error of the n estimates "
                  "plus the sampling of n of the split's N examples (finite-population "
                  "correction; 0 when the whole split is evaluated)",
}


def se_rule_note(report: dict) -> str:
    """One line naming the rule behind each ± of an :func:`evaluate_model` report."""
    n, population = report.get("num_examples"), report.get("population_size")
    whole = ("; all were evaluated, so Monte Carlo only" if n is not None and n == population
             and n > 1 else "")
    return ("± of ELBO, rate, distortion, gap: std/√n across examples; ± of log p(x), "
            f"bits/dim: Monte Carlo error ⊕ sampling n of N examples (finite-population "
            f"correction{whole})")


def _log_likelihood_summary(ll: torch.Tensor, stderr: torch.Tensor, population_size: int,
                            num_samples: int) -> dict:
    """Mean log p̂(x) over n examples with its standard error (see :func:`evaluate_model`).

    Undefined parts are None with a reason (``vaelab.measure.honest``): se_mc with k = 1 (no
    per-example Monte Carlo error), se_data with n = 1 unless every row is evaluated (then it
    is exactly 0), and se whenever one of them is. Non-finite values stay for ``json_safe``.
    """
    n = ll.shape[0]
    out = _summary(ll)
    reasons = out.pop(honest.UNDEFINED, {})
    reasons.pop("se", None)
    se_mc = None if num_samples == 1 else float(stderr.double().square().sum().sqrt()) / n
    if se_mc is None:
        reasons["se_mc"] = ("one importance sample per example (k = 1): no Monte Carlo "
                            "error can be computed")
    fpc = 1.0 - n / population_size
    se_data = 0.0 if fpc == 0 else None if out["std"] is None else out["std"] * math.sqrt(
        fpc / n)
    if se_data is None:
        reasons["se_data"] = reasons["std"]
    se = None if se_mc is None or se_data is None else math.hypot(se_mc, se_data)
    if se is None:
        reasons["se"] = reasons.get("se_mc") or reasons["se_data"]
        if se_mc is None and se_data is not None:       # k = 1: the data part is known
            reasons["se"] += (f"; its between-example part se_data = {se_data:.4g} is defined "
                              f"(a lower bound on se)")
    out.update(se=se, se_mc=se_mc, se_data=se_data, se_rule="split mean")
    if reasons:
        out[honest.UNDEFINED] = reasons
    return out


def _chunks(n: int, batch_size: int, progress: bool):
    """Batch start offsets 0, batch_size, … < n, wrapped in a tqdm bar when ``progress``."""
    starts = range(0, n, batch_size)
    if not progress:
        return starts
    from tqdm.auto import tqdm

    return tqdm(starts, desc="evaluate", unit="batch", leave=False, dynamic_ncols=True)


def _measure_all(model, infer, x, batch_size, progress, **options) -> dict[str, torch.Tensor]:
    """:func:`_batch_measures` over x [n, D] in batches, concatenated per key."""
    parts: dict[str, list[torch.Tensor]] = {}
    for start in _chunks(x.shape[0], batch_size, progress):
        batch = _batch_measures(model, infer, x[start:start + batch_size], **options)
        for key, value in batch.items():
            parts.setdefault(key, []).append(value.detach().cpu())
    return {key: torch.cat(values) for key, values in parts.items()}


PER_EXAMPLE_KEYS = ("elbo", "rate", "distortion", "log_likelihood", "ll_stderr", "ess")


def _report(m: dict[str, torch.Tensor], population_size: int, num_samples: int,
            elbo_samples: int, threshold: float, **wording) -> dict:
    """The JSON-ready result dict of :func:`evaluate_model` from per-example measures;
    ``wording`` (quantity, ais) goes to ``honest.reliability_warnings``, so warnings name a
    score a score and AIS's chains chains."""
    n, data_dim = m["elbo"].shape[0], None
    ll = _log_likelihood_summary(m["log_likelihood"], m["ll_stderr"], population_size,
                                 num_samples)
    count, activity = active_units(m["q_mean"], threshold) if n > 1 else (
        None, torch.full((m["q_mean"].shape[1],), math.nan))
    return {"num_examples": n, "population_size": population_size,
            "num_samples": num_samples, "elbo_samples": elbo_samples, "data_dim": data_dim,
            "latent_dim": int(m["q_mean"].shape[1]),
            "elbo": _summary(m["elbo"]), "rate": _summary(m["rate"]),
            "distortion": _summary(m["distortion"]), "log_likelihood": ll,
            "gap": _summary(m["log_likelihood"] - m["elbo"]),
            "ess": honest.ess_summary(m["ess"], num_samples), "se_rules": dict(SE_RULES),
            "active_units": count, "active_threshold": threshold,
            "unit_activity": activity.tolist(),
            **({} if count is not None else {honest.UNDEFINED: dict.fromkeys(
                ("active_units", "unit_activity"),
                "needs at least 2 examples to measure Var_x E[z|x], got 1")}),
            "warnings": _warnings(m, num_samples, **wording)}


def _warnings(m: dict[str, torch.Tensor], num_samples: int, **wording) -> list[str]:
    """Lines for a diverged model and for unreliable importance sampling (may be empty)."""
    diverged = honest.divergence_warning(
        {"ELBO": m["elbo"], "log p(x)": m["log_likelihood"], "ESS": m["ess"]})
    lines = [] if diverged is None else [diverged]
    return lines + honest.reliability_warnings(m["ess"], m["ll_stderr"], num_samples,
                                               **wording)   # chains / score wording


def _add_bits_per_dim(report: dict, data_dim: int) -> dict:
    """Fill in data_dim and the NLL / negative ELBO in bits per dimension."""
    ll = report["log_likelihood"]
    report["data_dim"] = data_dim
    nll: dict[str, Any] = {"mean": bits_per_dim(-ll["mean"], data_dim),
                           "se_rule": ll["se_rule"]}
    if ll["se"] is None:
        nll.update(se=None, undefined={"se": ll["undefined"]["se"]})
        if ll.get("se_data") is not None:       # k = 1: the between-example part
            nll["se_data"] = bits_per_dim(ll["se_data"], data_dim)
    else:
        nll["se"] = bits_per_dim(ll["se"], data_dim)
    report["nll_bits_per_dim"] = nll
    report["neg_elbo_bits_per_dim"] = bits_per_dim(-report["elbo"]["mean"], data_dim)
    return report


#: What log p̂ is, by the rule of ``vaelab.model.likelihoods``: what is reported for each.
MEANING_NOTES = {
    "probability": "log p(x) is a normalised log-probability of these {kind} data "
                   "({likelihood}): {reported}",
    "bound": "log p(x) is a lower bound on the log-probability of these {kind} data "
             "({likelihood} on uniformly dequantized values, change of scale included): "
             "{reported}",
    "density": "log p(x) is a log-density of these {kind} (real-valued) data ({likelihood}): "
               "nats of density are reported, not bits/dim (a density is not a probability)",
    "score": "the {likelihood} likelihood is not a normalised probability or density of "
             "{kind} data: the numbers are an unnormalised score, not log p(x), and no "
             "bits/dim are reported; {remedy}",
}

#: What a report with bits/dim says it reports, for "probability" and "bound" (``{reported}``).
REPORTED_BITS = {"probability": "nats and bits/dim are reported",
                 "bound": "nats and bits/dim (an upper bound) are reported"}


def likelihood_meaning(model: object, x: torch.Tensor, data_kind: str | None = None, *,
                       bits_per_dim: bool = True) -> dict:
    """What log p̂(x) of ``model`` on data x [N, D] of ``data_kind`` is, as a JSON-ready dict.

    ``data_kind`` (``vaelab.data.DATA_KINDS``; None: inferred from x by
    ``vaelab.data.infer_kind``) and the decoder's likelihood give the meaning
    (``Likelihood.meaning_on``): "probability", "bound", "density" or "score". Models without
    a ``decoder.likelihood`` (the closed-form Gaussian models of ``vaelab.model.exact``) are
    densities on real-valued data and scores on binary or 8-bit data.
    ``bits_per_dim``: whether the report the note goes into gives bits/dim (evaluate) or
    nats only (gaps); the note says which.
    → {"data_kind", "likelihood", "meaning", "note"}.
    """
    from vaelab.data import DATA_KINDS, infer_kind

    kind = infer_kind(x) if data_kind is None else _checks.one_of("data_kind", data_kind,
                                                                   DATA_KINDS)
    lik = getattr(getattr(model, "decoder", None), "likelihood", None)
    if lik is not None and hasattr(lik, "meaning_on"):
        name, meaning, remedy = lik.name, lik.meaning_on(kind), lik.remedy()
    else:
        name = type(model).__name__
        meaning = "density" if kind in ("continuous", "unit-interval") else "score"
        remedy = "fit a model of discrete data"
    reported = REPORTED_BITS.get(meaning, "") if bits_per_dim else "reported in nats"
    note = MEANING_NOTES[meaning].format(kind=kind, likelihood=name, remedy=remedy,
                                         reported=reported)
    return {"data_kind": kind, "likelihood": name, "meaning": meaning, "note": note}


def _apply_meaning(report: dict, meaning: dict) -> dict:
    """Record the meaning; bits/dim only for "probability" and "bound" (None otherwise)."""
    report["likelihood_meaning"] = meaning
    report["log_likelihood_normalised"] = meaning["meaning"] != "score"
    if meaning["meaning"] in ("density", "score"):
        why = dict.fromkeys(("mean", "se"), meaning["note"])
        report["nll_bits_per_dim"] = {"mean": None, "se": None, "undefined": why}
        report["neg_elbo_bits_per_dim"] = None
        report.setdefault("undefined", {})["neg_elbo_bits_per_dim"] = meaning["note"]
    return report


def evaluate_model(model: GenerativeModel, x: torch.Tensor, *, num_samples: int = 1000,
                   chunk_size: int | None = None, batch_size: int = 100,
                   limit: int | None = None, elbo_samples: int = 10,
                   infer: Callable[[torch.Tensor], Distribution] | None = None,
                   threshold: float = 1e-2, per_example: bool = False,
                   progress: bool = False, data_kind: str | None = None,
                   estimator: Callable | None = None, seed: int | None = None,
                   training: Any = None) -> dict:
    """The test protocol on data x [N, D]: ELBO, rate, distortion, log p(x), bits/dim, AU.

    Per example i (batched over data, chunked over samples, under ``torch.inference_mode``
    once q is built):
    rate_i = KL(q(z|x_i) ‖ p(z)) (analytic when registered), distortion_i = −E_q log p(x_i|z)
    (``elbo_samples`` Monte Carlo samples), ELBO_i = −(rate_i + distortion_i), and log p̂(x_i)
    by importance sampling with k = ``num_samples`` draws from q (:func:`log_likelihood`),
    with its delta-method Monte Carlo standard error s_i.

    Standard error of the mean log-likelihood over the n evaluated rows (the first ``limit``
    of the N rows of x): it estimates the mean over *all* N rows, so its variance has two
    independent parts, added: Monte Carlo, se_mc² = Σ s_i² / n², and subsampling,
    se_data² = (1 − n/N) · sd² / n with sd the across-example standard deviation of log p̂
    and (1 − n/N) the finite-population correction (zero when every row is evaluated, so a
    full test set carries only Monte Carlo error). ``se = sqrt(se_mc² + se_data²)``. The other
    measures report ``{"mean", "std" (across examples), "se" = std/√n}``; ``gap`` is the paired
    log p̂(x_i) − ELBO_i. Active units (Burda et al. 2016): latent dimensions u whose encoder
    mean E_q[z_u|x] varies across the n examples with variance > ``threshold``.

    Args:
        model: generative model; ``infer(x) → q(z|x)`` defaults to ``model.encode``.
        x: data [N, D] in the likelihood's support.
        num_samples: importance samples k per example (5000 is the published protocol).
        chunk_size: samples per step (None: bounded memory, see :func:`auto_chunk_size`).
        batch_size: examples per batch.
        limit: evaluate only the first ``limit`` rows (None: all).
        elbo_samples: Monte Carlo samples for the distortion term.
        threshold: active-unit threshold.
        per_example: also return ``"per_example"``: {elbo, rate, distortion, log_likelihood,
            ll_stderr, ess} as lists over the n rows (e.g. log p̂(x) as anomaly scores).
        progress: show a tqdm progress bar on stderr.
        estimator: ``estimator(model, q, x) → LogLikelihoodEstimate`` replacing encoder-q
            importance sampling per batch (``vaelab.measure.estimators.Estimator``: IS with a
            refined or mixture proposal, AIS); None: :func:`log_likelihood` with q.
        seed: seed every batch from (seed, its first row) and shard the batches over torchrun
            ranks, gathering the results (``vaelab.measure.shard``): the same numbers on any
            number of processes. None: one process, the global random state.
        data_kind: the kind of x (``vaelab.data.DATA_KINDS``), None: inferred from x. With the
            likelihood it decides what log p̂ means (:func:`likelihood_meaning`, recorded as
            ``likelihood_meaning``): bits/dim are reported only for a probability or a bound
            on one (binary or 8-bit data), not for a density and not for an unnormalised score
            (e.g. Bernoulli on grey levels), where ``nll_bits_per_dim`` holds None with why.
        training: how the model was trained (its ``TrainConfig``, or a dict with the same
            keys), so a posterior-collapse warning suggests the remedies the run lacks
            (``vaelab.model.hierarchical.collapse_remedy``); None: unknown, all of them.

    Returns:
        A JSON-serializable dict (nats per example unless said otherwise)::

            num_examples n, population_size N, num_samples k, elbo_samples, data_dim D,
            latent_dim L,
            elbo, rate, distortion, gap:  {"mean", "std", "se"}
            log_likelihood:               {"mean", "std", "se", "se_mc", "se_data"}
            nll_bits_per_dim:             {"mean", "se"}   (−log p̂ / (D ln 2))
            neg_elbo_bits_per_dim:        float
            ess:                          {"mean", "min", "median", "num_tiny", "tiny_below",
                                           "num_samples"}  (effective sample size, ≤ k)
            active_units: int (None if n = 1), active_threshold, unit_activity: [L]
            warnings:                     lines: a diverged model (non-finite values), tiny
                                          ESS, huge Monte Carlo error, k = 1
            per_example:                  only with ``per_example=True``

        Honest numbers (``vaelab.measure.honest``): a statistic that is undefined (std and se
        with n = 1, se_mc with k = 1) or not finite (a diverged model) is ``None``, and the
        dict holding it says why in its ``"undefined"`` mapping, ``{key: reason}``; the
        result always passes ``json.dumps(..., allow_nan=False)``.
    """
    x = model.check_data(data_forms.as_rows(x), "x")     # any form of vaelab.data_forms
    if x.shape[0] == 0:
        raise ValueError("x: expected at least one example, got an empty tensor")
    population = x.shape[0]
    if limit is not None:
        x = x[:_checks.positive_int("limit", limit)]
    x = x.to(device_of(model))          # the data a user holds (CPU) to a GPU model's device
    num_samples = _checks.positive_int("num_samples", num_samples)
    elbo_samples = _checks.positive_int("elbo_samples", elbo_samples)
    batch_size = _checks.positive_int("batch_size", batch_size)
    threshold = _checks.positive_float("threshold", threshold)
    if infer is None:
        infer = getattr(model, "encode", None)
        if infer is None:
            raise TypeError(f"infer: {type(model).__name__} has no encoder; pass infer "
                            f"(x → q(z | x))")
    options: dict[str, Any] = dict(num_samples=num_samples, chunk_size=chunk_size,
                                   elbo_samples=elbo_samples, estimator=estimator)
    if seed is None:
        measures = _measure_all(model, infer, x, batch_size, progress, **options)
    else:   # seeded per batch, sharded over torchrun ranks (vaelab.measure.shard)
        measures = shard.measure_batches(
            lambda a, b: _batch_measures(model, infer, x[a:b], **options), x.shape[0],
            batch_size, _checks.non_negative_int("seed", seed), progress)
    meaning = likelihood_meaning(model, x, data_kind)
    wording = {"quantity": honest.estimate_name(meaning["meaning"]),
               "ais": getattr(estimator, "unit", "sample") == "chain"}    # AIS counts chains
    report = _report(measures, population, num_samples, elbo_samples, threshold, **wording)
    if "layer_rates" in measures:    # a hierarchy: rate and active units per latent layer
        sizes = cast(hierarchical.HierarchicalVAE, model).sizes
        report.update(hierarchical.layer_diagnostics(
            sizes, measures["layer_rates"], measures["q_mean"], threshold))
        line = hierarchical.collapse_warning(
            report["collapsed_layers"], sizes,
            [layer["mean"] for layer in report["rate_per_layer"]], training=training)
    else:                            # one latent layer: the same rule, the same words
        rate = report["rate"]["mean"]
        line = hierarchical.collapse_warning(
            [1] if report["active_units"] == 0 else [], (report["latent_dim"],),
            [rate] if rate is not None and math.isfinite(rate) else None, training=training)
    if line is not None:
        report["warnings"] = [*report.get("warnings", []), line]
    if per_example:
        report["per_example"] = {k: measures[k].double().tolist() for k in PER_EXAMPLE_KEYS}
    dims = int(getattr(model, "x_dim", x.shape[1]))   # a conditional model's rows are [x | c]
    return honest.json_safe(_apply_meaning(_add_bits_per_dim(report, dims), meaning))

