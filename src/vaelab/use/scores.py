"""Anomaly and out-of-distribution scores of a trained latent-variable model, one per example.

Every score here is oriented the same way: **higher = more anomalous**. In nats unless said.

* ``elbo`` → ``neg_elbo`` = −ELBO(x) (Kingma & Welling 2014), ``elbo_samples`` draws of z.
* ``log-likelihood`` → ``nll`` = −log p̂(x), importance sampled with k draws from q
  (:func:`vaelab.measure.evaluate.log_likelihood`), its delta-method standard error
  ``nll_se`` and the effective sample size ``nll_ess`` of its weights (tiny ones are warned
  about by :func:`sampling_warnings`, as ``evaluate`` does). A model trained on
  Fashion-MNIST gives *higher* likelihood to MNIST digits (Nalisnick et al. 2019, "Do deep
  generative models know what they don't know?"), hence:
* ``input-complexity`` → ``input_complexity`` = −log₂ p̂(x) − L(x) in **bits**, with L(x) the
  length in bits of x's lossless compression (PNG through Pillow for images, zlib otherwise)
  (Serrà et al. 2020, "Input complexity and out-of-distribution detection with likelihood-based
  generative models", their S(x) = −ℓ_M(x) − L(x)). Simple inputs have high likelihood *and*
  short codes, so the difference removes the complexity bias.
* ``likelihood-ratio`` → ``neg_llr`` = log p̂_bg(x) − log p̂(x), with a background model trained
  on inputs where a fraction μ of the values is replaced by noise (Ren et al. 2019, "Likelihood
  ratios for out-of-distribution detection"; their LLR is −``neg_llr``).
* ``regret`` → ``regret`` = ELBO(x; q*) − ELBO(x; q_φ(x)), the gain from fitting q's
  parameters to x alone by :func:`vaelab.infer.schemes.optimize_q` (Xiao, Yan & Amit 2020,
  "Likelihood regret"; they re-fit the encoder's weights per example, here q's own parameters:
  the same optimum for an encoder that can output any q of its family). Both ELBOs use the
  same noise draws (common random numbers), so the difference carries little Monte Carlo
  noise; it is ≥ 0 up to that noise.
* ``typicality`` → ``typicality`` = |mean −log p̂ of a batch of M examples − Ĥ|, Ĥ the mean
  −log p̂ of the reference (training) examples (Nalisnick et al. 2019,
  :mod:`vaelab.use.typicality`).
* ``hierarchical-llr`` → ``hierarchical_llr`` = L(x) − L^{>k}(x) and ``neg_elbo_above_k`` =
  −L^{>k}(x), for hierarchical models (Havtorn et al. 2021, :mod:`vaelab.use.hierarchical_llr`).
* ``latent-density`` → ``latent_nll`` = −log q̄(E_q[z | x]), q̄ the mixture of the reference
  examples' q(z | x_n); ``latent-knn`` → ``latent_knn``, the mean distance of the code to its
  k nearest reference codes (:mod:`vaelab.use.latent_scores`).

The reference examples (``reference=``: the training data, or a sample of them) are what
``typicality`` and the latent scores compare with.

A model trained with ``missing="mask"`` (``vaelab.model.masked``) defines the likelihood of
the observed cells, so its rows may hold NaN (missing) and every row, complete or not, is
scored by that model's own quantity: ``neg_elbo`` is −(masked ELBO) and ``nll`` = −log p̂(x_obs)
(−log p̂(x_obs, m) with a missingness model), the MIWAE importance weights
(``vaelab.infer.masked``); the reference rows may be incomplete too. ``regret``,
``hierarchical-llr`` and ``input-complexity`` are defined on complete rows only (they re-fit
q to, bound layer by layer, or compress the full x), so on incomplete rows they are refused
in one line.
"""

from __future__ import annotations

import io
import math
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.distributions import Distribution

from vaelab import _checks, catalogue, data_forms
from vaelab._runtime import device_of, isolated_rng
from vaelab.infer.masked import masked_draws, masked_elbo_terms
from vaelab.infer.objectives import elbo_terms
from vaelab.infer.schemes import optimize_q
from vaelab.measure.evaluate import LogLikelihoodEstimate, from_log_sums, log_likelihood
from vaelab.use import latent_scores
from vaelab.use.hierarchical_llr import check_hierarchical, hierarchical_llr
from vaelab.use.typicality import typicality

#: Score names (CLI values) → the CSV column holding that anomaly score.
SCORE_COLUMNS = {e.name: e.facts["column"] for e in catalogue.entries("score")}
SCORE_NAMES = tuple(SCORE_COLUMNS)
_NEEDS_LL = ("log-likelihood", "input-complexity", "likelihood-ratio", "typicality")
#: The scores that compare with reference (training) examples.
REFERENCE_SCORES = ("typicality", "latent-density", "latent-knn")
#: The scores of the full x: not defined on a row with missing cells.
COMPLETE_ONLY = ("regret", "hierarchical-llr", "input-complexity")


def _default(score: str, option: str) -> Any:
    return catalogue.get("score", score).option(option).default


@dataclass(frozen=True)
class ScoreOptions:
    """Sample sizes and optimizer settings of :func:`anomaly_scores`.

    num_samples: importance samples k for log p̂(x); elbo_samples: z draws for the ELBO;
    regret_steps / regret_lr / regret_samples: :func:`optimize_q`'s caps, Adam step and
    per-step draws; batch_size: examples scored at once; typicality_batch: M examples tested
    together by ``typicality``; llr_k: the k of ``hierarchical-llr``'s L^{>k} (its bounds
    use ``elbo_samples`` draws); neighbours: the k of ``latent-knn``.
    """

    num_samples: int = 100
    elbo_samples: int = 16
    regret_steps: int = 100
    regret_lr: float = 1e-2
    regret_samples: int = 4
    batch_size: int = 100
    typicality_batch: int = _default("typicality", "batch")
    llr_k: int = _default("hierarchical-llr", "k")
    neighbours: int = _default("latent-knn", "neighbours")

    def __post_init__(self) -> None:
        for name in ("num_samples", "elbo_samples", "regret_steps", "regret_samples",
                     "batch_size", "typicality_batch", "neighbours"):
            _checks.positive_int(name, getattr(self, name))
        _checks.non_negative_int("llr_k", self.llr_k)
        _checks.positive_float("regret_lr", self.regret_lr)


def check_names(names: Sequence[str]) -> tuple[str, ...]:
    """Validate score names (kebab-case, see :data:`SCORE_NAMES`); duplicates dropped."""
    if isinstance(names, str) or not names:
        raise ValueError(f"scores: expected a non-empty list of names from {list(SCORE_NAMES)}, "
                         f"got {names!r}")
    for name in names:
        _checks.one_of("score", name, SCORE_NAMES)
    return tuple(dict.fromkeys(names))


def compressed_bits(x: torch.Tensor, image_shape: Sequence[int] | None = None) -> torch.Tensor:
    """L(x): bits of each row's lossless compression, [B] float64 (Serrà et al. 2020).

    x [B, D] in [0, 1] is quantized to 8 bits (round(255 x)); with ``image_shape`` (C, H, W),
    C ∈ {1, 3}, each row is a PNG written by Pillow at its strongest compression, else a zlib
    stream (level 9) of the D bytes. Raises ValueError for values outside [0, 1].
    """
    from PIL import Image

    x = _checks.tensor("x", x).detach().cpu()
    if x.dim() != 2 or (x.numel() and (float(x.min()) < 0 or float(x.max()) > 1)):
        raise ValueError("x: input-complexity compresses 8-bit images: expected [B, D] values "
                         "in [0, 1], got " + (f"shape {list(x.shape)}" if x.dim() != 2 else
                                              f"values in [{float(x.min()):g}, "
                                              f"{float(x.max()):g}]"))
    pixels = (x.double() * 255).round().to(torch.uint8).numpy()
    out = np.empty(len(pixels))
    for i, row in enumerate(pixels):
        if image_shape is not None and image_shape[0] in (1, 3):
            c, h, w = image_shape
            image = Image.fromarray(row.reshape(c, h, w).transpose(1, 2, 0).squeeze(-1)
                                    if c == 1 else row.reshape(c, h, w).transpose(1, 2, 0))
            buffer = io.BytesIO()
            image.save(buffer, format="PNG", optimize=True, compress_level=9)
            out[i] = 8 * len(buffer.getvalue())
        else:
            out[i] = 8 * len(zlib.compress(row.tobytes(), 9))
    return torch.from_numpy(out)


def likelihood_regret(model, x: torch.Tensor, init_raw: torch.Tensor, family, *,
                      steps: int = 100, lr: float = 1e-2, num_samples: int = 4,
                      eval_samples: int = 16, seed: int = 0) -> torch.Tensor:
    """ELBO(x; q*) − ELBO(x; family(init_raw)) per example, [B] nats (Xiao et al. 2020).

    q* = family(raw*) with raw* from :func:`optimize_q` started at ``init_raw`` [B, P]. Both
    ELBOs are estimated with ``eval_samples`` draws from the same seeded noise.
    """
    raw_star, _ = optimize_q(model, x, init_raw, family, steps=steps, lr=lr,
                             num_samples=num_samples)
    values = []
    for raw in (init_raw.detach(), raw_star):
        with isolated_rng(seed), torch.no_grad():
            values.append(elbo_terms(model, family(raw), x, eval_samples, validate=False).elbo)
    return values[1] - values[0]


def _batch_scores(names, model, encoder, x, background, image_shape,
                  options: ScoreOptions) -> dict[str, torch.Tensor]:
    """The score columns of one batch x [B, D]: each a float64 tensor [B]."""
    out: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        q: Distribution = encoder(x)
    if "elbo" in names:
        with torch.no_grad():
            out["neg_elbo"] = (-_masked_estimate(model, q, x, options.elbo_samples, elbo=True)
                               if _is_masked(model) else
                               -elbo_terms(model, q, x, options.elbo_samples,
                                           validate=False).elbo)
    if any(n in names for n in _NEEDS_LL):
        est = _log_likelihood(model, q, x, options.num_samples)
        out["nll"], out["nll_se"], out["nll_ess"] = -est.log_likelihood, est.stderr, est.ess
    if "input-complexity" in names:
        out["compressed_bits"] = compressed_bits(x, image_shape)
        out["input_complexity"] = out["nll"].double().cpu() / math.log(2) - out["compressed_bits"]
    if "likelihood-ratio" in names:
        bg_model, bg_encoder = background
        with torch.no_grad():
            q_bg = bg_encoder(x)
        est = _log_likelihood(bg_model, q_bg, x, options.num_samples)
        out["nll_background"], out["nll_background_se"] = -est.log_likelihood, est.stderr
        out["nll_background_ess"] = est.ess
        out["neg_llr"] = out["nll"] - out["nll_background"]
    if "hierarchical-llr" in names:
        llr, above = hierarchical_llr(model, q, x, k=options.llr_k,
                                      num_samples=options.elbo_samples,
                                      seed=int(torch.randint(2**62, ())))
        out["hierarchical_llr"], out["neg_elbo_above_k"] = llr, -above
    if "regret" in names:
        family, raw = encoder.per_example(x)      # q's parameters, free per example
        out["regret"] = likelihood_regret(
            model, x, raw, family, steps=options.regret_steps, lr=options.regret_lr,
            num_samples=options.regret_samples, eval_samples=options.elbo_samples)
    return {k: v.detach().double().cpu() for k, v in out.items()}


def _is_masked(model) -> bool:
    """Whether the model reads NaN as missing (trained with ``missing="mask"``)."""
    return callable(getattr(model, "check_masked", None))


def _masked_estimate(model, q: Distribution, x: torch.Tensor, k: int, *,
                     elbo: bool = False) -> Any:
    """A masked model's estimate of x [B, D] (NaN = missing) with k draws from q: the masked
    ELBO [B] (``elbo``), else a :class:`LogLikelihoodEstimate` of log p(x_obs) (with m)."""
    observed = ~torch.isnan(x)
    values = torch.where(observed, x, torch.zeros_like(x))
    logits = model.missing_logits if getattr(model, "missingness", None) is not None else None
    with torch.no_grad():
        if elbo:
            return masked_elbo_terms(model, q, values, observed, k, missing_logits=logits).elbo
        lw = masked_draws(model, q, values, observed, k, missing_logits=logits).log_weights
    return LogLikelihoodEstimate(*from_log_sums(lw.logsumexp(0), (2 * lw).logsumexp(0), k), k)


def _log_likelihood(model, q: Distribution, x: torch.Tensor, k: int) -> Any:
    """log p̂(x) of the model as it defines it: of the observed cells for a masked model."""
    if _is_masked(model):
        return _masked_estimate(model, q, x, k)
    return log_likelihood(model, q, x, k)


def anomaly_scores(model, x: torch.Tensor, names: Sequence[str], *, encoder=None,
                   background: tuple | None = None,
                   image_shape: Sequence[int] | None = None,
                   options: ScoreOptions | None = None,
                   progress: Callable | None = None,
                   reference: object | None = None) -> dict[str, np.ndarray]:
    """Anomaly scores of every row of x [N, D] (higher = more anomalous; module docstring).

    Args:
        model: generative model (``prior``, ``decode``, ``log_joint``, ``check_data``).
        x: data [N, D] in the likelihood's support (a tensor, or any form of
            ``vaelab.data_forms``: numpy, a DataFrame, a torch Dataset or DataLoader).
        names: score names from :data:`SCORE_NAMES`.
        encoder: x → q(z | x), with ``.net`` (x → raw [B, P]) and ``.family`` (raw → q) for
            ``regret``; default ``model.encoder``.
        background: (model, encoder) of the background model, needed by ``likelihood-ratio``.
        image_shape: (C, H, W) of the rows, for PNG compression in ``input-complexity``.
        options: :class:`ScoreOptions`.
        progress: optional wrapper of the batch iterator (e.g. tqdm).
        reference: rows [N_ref, D] the model was trained on (or a sample of them), in any
            form ``x`` takes; needed by the :data:`REFERENCE_SCORES`.

    Returns:
        column name → float64 array [N]: the score columns of :data:`SCORE_COLUMNS` and their
        companions (``nll_se``, ``nll_ess``, ``compressed_bits``, ``nll_background`` with its
        ``_se`` and ``_ess``, ``neg_elbo_above_k``). Noise comes from
        torch's global RNG (seed it for reproducible scores).
    """
    names = check_names(names)
    options = options or ScoreOptions()
    encoder = encoder if encoder is not None else getattr(model, "encoder", None)
    x, reference = _check_needs(model, x, names, encoder, background, reference)
    starts = range(0, x.shape[0], options.batch_size)
    parts: dict[str, list[torch.Tensor]] = {}
    for start in (progress(starts) if progress else starts):
        batch = _batch_scores(names, model, encoder, x[start:start + options.batch_size],
                              background, image_shape, options)
        for key, value in batch.items():
            parts.setdefault(key, []).append(value)
    out = {key: torch.cat(values).numpy() for key, values in parts.items()}
    if reference is not None:
        out.update(_reference_scores(names, model, encoder, x, reference, out, options))
    return out


def _check_needs(model, x: object, names: tuple[str, ...], encoder, background,
                 reference: object | None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(x, reference) checked and on the model's device; one line for what a score lacks."""
    if encoder is None:
        raise ValueError("encoder: scoring new data needs q(z | x); the model has no encoder")
    if "likelihood-ratio" in names and background is None:
        raise ValueError("background: the likelihood-ratio score needs a background model "
                         "(train one with `vaelab train --background-of RUN`), got None")
    if "regret" in names and not callable(getattr(encoder, "per_example", None)):
        raise ValueError(f"score: regret re-fits q's parameters, so it needs an encoder with "
                         f"per_example(x) -> (family, raw), got {type(encoder).__name__}")
    needs = [n for n in names if n in REFERENCE_SCORES]
    if needs and reference is None:
        raise ValueError(f"reference: the {', '.join(needs)} score compares with the training "
                         f"examples; pass reference= (rows of the training data), got None")
    device = device_of(model)
    rows: torch.Tensor = _checked_rows(model, data_forms.as_rows(x), "x")   # any form
    refused = [n for n in names if n in COMPLETE_ONLY]
    if refused and bool(torch.isnan(rows).any()):      # checked where x is, before the move
        raise ValueError(f"x: {', '.join(refused)} is defined on complete rows only (it "
                         f"re-fits q to, bounds layer by layer, or compresses the whole "
                         f"x), got {int(torch.isnan(rows).any(1).sum())} rows with missing "
                         f"cells; drop it, or score complete rows")
    rows = rows.to(device)
    if "hierarchical-llr" in names:
        with torch.no_grad():
            check_hierarchical(model, encoder(rows[:1]))
    if not needs:
        return rows, None
    ref: torch.Tensor = _checked_rows(
        model, data_forms.as_rows(reference, where="reference"), "reference")
    return rows, ref.to(device)


def _checked_rows(model, rows: torch.Tensor, name: str) -> torch.Tensor:
    """``rows`` checked by the model: NaN (missing) allowed where the model reads it."""
    if _is_masked(model):
        model.check_masked(rows.to(torch.float32) if not rows.is_floating_point() else rows,
                           name)
        return rows
    checked: torch.Tensor = model.check_data(rows, name)
    return checked


def _reference_scores(names, model, encoder, x: torch.Tensor, reference: torch.Tensor,
                      columns: dict[str, np.ndarray], options: ScoreOptions
                      ) -> dict[str, np.ndarray]:
    """The columns of the :data:`REFERENCE_SCORES` in ``names`` (x [N, D], reference
    [N_ref, D]; ``columns``: what the batches gave, ``nll`` among them for typicality)."""
    out: dict[str, np.ndarray] = {}
    size = options.batch_size
    if "typicality" in names:
        ref_nll = []
        for start in range(0, reference.shape[0], size):
            part = reference[start:start + size]
            with torch.no_grad():
                q = encoder(part)
            ref_nll.append(-_log_likelihood(model, q, part, options.num_samples).log_likelihood)
        out["typicality"] = typicality(columns["nll"], torch.cat(ref_nll).double().cpu(),
                                       batch=options.typicality_batch)
    if "latent-density" in names or "latent-knn" in names:
        z = latent_scores.codes(encoder, x, size)
    if "latent-density" in names:
        out["latent_nll"] = torch.cat([
            latent_scores.aggregate_posterior_nll(encoder, z[i:i + size], reference,
                                                  chunk_size=size)
            for i in range(0, z.shape[0], size)]).double().cpu().numpy()
    if "latent-knn" in names:
        out["latent_knn"] = latent_scores.knn_distance(
            z.cpu(), latent_scores.codes(encoder, reference, size).cpu(),
            neighbours=options.neighbours)
    return out


def sampling_warnings(columns: dict[str, np.ndarray], num_samples: int,
                      meaning: str | None = None) -> list[str]:
    """The importance-sampling warnings of :func:`anomaly_scores`' columns: tiny ESS, huge
    Monte Carlo error, k = 1 — decided by ``vaelab.measure.honest.reliability_warnings``, the
    rule ``evaluate`` and ``gaps`` use, for ``nll`` and for the background model's
    ``nll_background``. ``meaning``: the likelihood's meaning on the data ("score" words the
    estimate an unnormalised score)."""
    from vaelab.measure import honest

    name = honest.estimate_name(meaning)
    lines = []
    for prefix, quantity in (("nll", name), ("nll_background", f"the background model's {name}")):
        if f"{prefix}_ess" in columns:
            lines += honest.reliability_warnings(
                torch.as_tensor(columns[f"{prefix}_ess"]),
                torch.as_tensor(columns[f"{prefix}_se"]), num_samples, quantity=quantity)
    return lines


def background_model(background: Any, trained: Any, *, source: str = "--background",
                     note: Callable[[str], object] = print) -> tuple[Any, Any]:
    """(model, encoder) of the loaded run ``background`` as the background of
    ``likelihood-ratio`` for the loaded run ``trained``: the same data size, else ValueError;
    a note (through ``note``) when it was not trained on perturbed inputs, as Ren et al.'s
    background model is. ``source`` names the background run in the note."""
    model, reference = background.model, trained.model
    if model.data_dim != reference.data_dim:
        raise ValueError(f"--background: expected a model of {reference.data_dim} values "
                         f"per example (RUN's), got {model.data_dim}")
    if background.config.train.perturb_fraction == 0:
        note(f"note: {source} was not trained on perturbed inputs "
             f"(perturb_fraction 0); Ren et al.'s background model is")
    return model, model.encoder
