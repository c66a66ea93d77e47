"""Honest numbers in reports: undefined statistics say so, non-finite values are reported.

Role in vaelab: every summary that ``evaluate`` and ``gaps`` print or save goes through here
(and a reader should never mistake an undefined or diverged number for a measured one), so that

* a standard error that cannot be computed (one example; one importance sample) is ``None``
  with a reason, never 0 — the rule of DESIGN.md "an undefined one is shown as undefined";
* a non-finite value (a diverged model: −inf ELBO, NaN ESS) becomes JSON ``null`` with the
  reason ``"non-finite: -inf"`` beside it, so the file is valid JSON and nothing crashes;
* the effective sample size of importance sampling (Kong 1992; ESS = (Σw)²/Σw²) warns when it
  is tiny, since then log p̂(x) and its delta-method standard error rest on a few weights
  (Owen 2013, "Monte Carlo theory, methods and examples", ch. 9).

Convention: in any dict of a report, a key whose value is ``None`` has its reason in the same
dict's ``"undefined"`` mapping, ``{key: reason}``. :func:`json_safe` enforces it for whatever
non-finite float is left anywhere in a report.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from vaelab.infer.objectives import DIVERGED_ELBO

#: ESS below this many samples is called tiny (log p̂ then rests on a handful of weights).
MIN_RELIABLE_ESS = 10.0
#: A per-example Monte Carlo standard error of log p̂ above this (nats) is called huge.
MAX_RELIABLE_MC_SE = 1.0
UNDEFINED = "undefined"


def _undefined(out: dict, key: str, reason: str) -> None:
    out[key] = None
    out.setdefault(UNDEFINED, {})[key] = reason


def mean_std_se(values: torch.Tensor) -> dict:
    """{"mean", "std" (across examples), "se" = std/√n} of values [n], in float64.

    With n = 1 the spread, hence the standard error, is undefined (None with a reason), not 0.
    Non-finite entries make the mean non-finite; :func:`json_safe` then reports them.
    """
    values = values.detach().double().flatten()
    n = values.numel()
    out: dict[str, Any] = {"mean": float(values.mean()) if n else math.nan}
    if n < 2:
        reason = f"needs at least 2 examples, got {n}"
        _undefined(out, "std", reason)
        _undefined(out, "se", reason)
        return out
    std = float(values.std())
    out.update(std=std, se=std / math.sqrt(n))
    return out


def json_safe(value: Any, *, _parent: dict | None = None, _key: str | None = None) -> Any:
    """A copy of a report (dicts, lists, floats) with every non-finite float made ``None``.

    Each replaced value gets its reason in the enclosing dict's ``"undefined"`` mapping:
    ``"non-finite: -inf"`` for a number, ``"3 of 100 entries non-finite (null)"`` for a list.
    Existing reasons are kept. The result passes ``json.dumps(..., allow_nan=False)``.
    """
    if isinstance(value, dict):
        out = {k: v for k, v in value.items()}
        notes = dict(out.get(UNDEFINED) or {})
        for key, item in value.items():
            if key == UNDEFINED:
                continue
            if isinstance(item, float) and not math.isfinite(item):
                out[key] = None
                notes.setdefault(key, f"non-finite: {item}")
            elif isinstance(item, (list, tuple)):
                out[key] = [json_safe(v) for v in item]
                bad = sum(isinstance(v, float) and not math.isfinite(v) for v in item)
                if bad:
                    notes.setdefault(key, f"{bad} of {len(item)} entries non-finite (null)")
            else:
                out[key] = json_safe(item)
        if notes:
            out[UNDEFINED] = notes
        return out
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def cell(stats: dict, key: str, fmt: str) -> str:
    """Format stats[key] for a table: the number, or the non-finite value, or "undefined"."""
    value = stats.get(key)
    if isinstance(value, (int, float)) and math.isfinite(value):
        return format(value, fmt if abs(value) < 1e7 else ".4g")   # keeps the column width
    if isinstance(value, float):
        return str(value)
    reason = str((stats.get(UNDEFINED) or {}).get(key, ""))
    if reason.startswith("non-finite: "):
        return reason.removeprefix("non-finite: ")
    return UNDEFINED


def divergence_warning(named: dict[str, torch.Tensor]) -> str | None:
    """One line when any per-example value is non-finite, or an ELBO is below
    ``DIVERGED_ELBO`` nats (the model appears to have diverged); else None.

    ``named`` maps a label (e.g. "ELBO", "elbo_amortized") to per-example values [n]; labels
    containing "elbo" are the ELBOs.
    """
    parts = []
    for label, values in named.items():
        bad = int((~torch.isfinite(values.detach())).sum())
        if bad:
            parts.append(f"{label} for {bad} of {values.numel()} examples")
    if parts:
        return ("warning: the model appears to have diverged: non-finite " + ", ".join(parts)
                + " (reported as null in the JSON)")
    lows = [float(v.min()) for label, v in named.items() if "elbo" in label.lower() and v.numel()]
    if lows and min(lows) < DIVERGED_ELBO:
        return (f"warning: the model appears to have diverged: ELBO down to {min(lows):.3g} "
                f"nats (below {DIVERGED_ELBO:.0e}); its numbers are not trustworthy")
    return None


def tiny_ess_below(num_samples: int) -> float:
    """The ESS called tiny out of ``num_samples`` draws (importance samples or AIS chains):
    :data:`MIN_RELIABLE_ESS`, or half the draws when there are fewer than 20 of them (an ESS
    can never exceed the number of draws, so a fixed 10 would flag every run of 8 chains)."""
    return min(MIN_RELIABLE_ESS, num_samples / 2)


def ess_summary(ess: torch.Tensor, num_samples: int) -> dict:
    """{"mean", "min", "median", "num_tiny" (ESS < tiny_below), "tiny_below", "num_samples"}
    of per-example effective sample sizes ess [n ≥ 1] out of k = num_samples."""
    ess = ess.detach().double()
    below = tiny_ess_below(num_samples)
    return {"mean": float(ess.mean()), "min": float(ess.min()), "median": float(ess.median()),
            "num_tiny": int((ess < below).sum()), "tiny_below": below,
            "num_samples": num_samples}


def estimate_name(meaning: str | None) -> str:
    """What log p̂ is called in warnings, by the likelihood's meaning on the data
    (``vaelab.model.likelihoods.MEANINGS``): "unnormalised score", "log density" or
    "log p(x)" (probability, bound, or not known)."""
    return {"score": "unnormalised score", "density": "log density"}.get(str(meaning),
                                                                           "log p(x)")


def reliability_warnings(ess: torch.Tensor, stderr: torch.Tensor | None, num_samples: int, *,
                         quantity: str = "log p(x)", ais: bool = False,
                         bound: bool = True) -> list[str]:
    """Warning lines about the importance-sampling estimates behind log p̂(x): the one place
    that decides them, for every command that prints or writes such an estimate (evaluate,
    gaps, score).

    Args:
        ess: per-example effective sample sizes [n].
        stderr: per-example delta-method standard errors of log p̂ [n] (NaN when k = 1).
        num_samples: k importance samples, or the number of AIS chains with ``ais``.
        quantity: what the estimate is called ("log p(x)", or "unnormalised score" where the
            likelihood is not normalised on the data).
        ais: the draws are AIS chains (raised by --chains), not importance samples (--k).
        bound: the estimate is log p̂ (a stochastic lower bound); False for other
            self-normalised estimates (e.g. "imputed values", with ``stderr`` None).
    """
    n, lines = ess.numel(), []
    count, unit, flag, enough = (("C", "AIS chain", "--chains", 16) if ais
                                 else ("k", "importance sample", "--k", 1000))
    if num_samples == 1:
        lines.append(f"warning: {count} = 1 {unit}: {quantity} is a single-sample bound and "
                     f"its Monte Carlo standard error is undefined; use {flag} {enough} or more"
                     if bound else f"warning: {count} = 1 {unit}: {quantity} rest on one "
                     f"unweighted draw; use {flag} {enough} or more")
        return lines
    below = tiny_ess_below(num_samples)
    tiny = int((ess < below).sum())
    if tiny:
        effect = "rests on a few weights and may be far too low" if bound else (
            "rest on a few weights")
        lines.append(f"warning: tiny effective sample size (ESS < {below:g} of "
                     f"{count} = {num_samples} {unit}s) for {tiny} of {n} examples (min ESS "
                     f"{float(ess.min()):.3g}): their {quantity} {effect}; raise {flag}")
    if stderr is None:
        return lines
    huge = int((stderr > MAX_RELIABLE_MC_SE).sum())
    if huge:
        lines.append(f"warning: Monte Carlo standard error of {quantity} above "
                     f"{MAX_RELIABLE_MC_SE:g} nat for {huge} of {n} examples; raise {flag}")
    return lines
