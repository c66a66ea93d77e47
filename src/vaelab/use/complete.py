"""Missing pixels as latent variables: fill in the hidden top half of binary images.

The lecture's example (its "φᵢ, one variational parameter per missing pixel"): the visible
pixels x_v are observed, the hidden ones h are latent, and a mean-field Bernoulli
q(h) = ∏ᵢ Bernoulli(hᵢ; sigmoid(φᵢ)) is fitted per image by maximizing

    F(φ) = E_q[S(x_v, h)] + H(q) ≤ log p(x_v),

where the score S(x_v, h) = ELBO(x_v ∪ h) of the trained VAE, with its own encoder, on the
completed image. S is itself a lower bound on log p(x_v, h) (Kingma & Welling 2014), so F stays
a lower bound on log p(x_v) and is maximized by q(h) ≈ p(h | x_v): the pixels that make the
whole image likely, given what is seen. (The ELBO was chosen over an IWAE bound because it is
cheaper per sample and its noise is small next to the spread of S across samples of h.)

h is discrete, so ∇_φ E_q[S] uses the score-function (REINFORCE) estimator (Williams 1992)
with a leave-one-out control variate over S draws (Kool, van Hoof & Welling 2019; Mnih &
Rezende 2016): (1/S) Σ_s (S_s − b_s) ∇_φ log q(h_s), b_s = mean of the other S − 1 scores,
which is unbiased because b_s does not depend on h_s. The entropy term is differentiated
exactly. All images are fitted at once (one batch), with Adam. q starts either at the model's
marginal pixel means (blind to the visible half, so whatever dependence the completions show
was learned by the fit) or, by default, at the model's own reconstruction of the image with
the hidden half at those means (an amortized first guess that the fit refines, as
semi-amortized inference refines an encoder's q).
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import torch
from matplotlib.figure import Figure
from torch.distributions import Bernoulli, Distribution, Independent

from vaelab import _checks
from vaelab._files import save_figure
from vaelab._runtime import device_of, isolated_rng
from vaelab.infer.objectives import elbo
from vaelab.model.vae import VAE, Encoder


def top_half_mask(image_shape: tuple[int, int, int]) -> torch.Tensor:
    """Bool [C·H·W]: True for the pixels in the top H // 2 rows (the hidden ones)."""
    c, h, w = image_shape
    mask = torch.zeros(c, h, w, dtype=torch.bool)
    mask[:, : h // 2, :] = True
    return mask.flatten()


def fill(x: torch.Tensor, hidden: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """x [B, D] with its ``hidden`` pixels (mask [D]) replaced by values [..., B, H]."""
    out = x.expand(*values.shape[:-1], x.shape[-1]).clone()
    out[..., hidden] = values.to(out.dtype)
    return out


def completion_score(model: VAE, images: torch.Tensor, num_samples: int = 1) -> torch.Tensor:
    """S = ELBO(image) with the model's encoder, for images [..., B, D] → [..., B]; no grad."""
    flat = images.reshape(-1, images.shape[-1])
    with torch.no_grad():
        score = elbo(model, _encoder(model)(flat), flat, num_samples, validate=False)
    return score.reshape(images.shape[:-1])


def loo_surrogate(q: Distribution, h: torch.Tensor, score: torch.Tensor) -> torch.Tensor:
    """Surrogate whose gradient is the leave-one-out REINFORCE estimate of ∇ E_q[score].

    h [S, B, ...] are S ≥ 2 draws from q (batch [B]), score [S, B] their scores (no grad).
    Returns [B]: (1/S) Σ_s (score_s − b_s) log q(h_s), b_s = mean of the other scores.
    """
    samples = score.shape[0]
    baseline = (score.sum(0, keepdim=True) - score) / (samples - 1)
    return ((score - baseline).detach() * q.log_prob(h)).mean(0)


def fit_hidden(model: VAE, x: torch.Tensor, hidden: torch.Tensor, init_logits: torch.Tensor,
               *, steps: int, samples: int, lr: float = 0.1) -> tuple[torch.Tensor, list[float]]:
    """Fit φ [B, H] of q(h) = Bernoulli(sigmoid(φ)) to maximize F(φ) for every image at once.

    Args:
        model: trained VAE with a Bernoulli likelihood and an encoder.
        x: binary images [B, D] (their hidden pixels are ignored).
        hidden: bool mask [D] of the hidden pixels (H of them).
        init_logits: starting φ [B, H].
        steps: Adam steps; samples: S ≥ 2 draws of h per image and step.

    Returns:
        (φ [B, H] detached, history of the batch-mean estimate of F at every step).
    """
    samples = _checks.positive_int("samples", samples)
    if samples < 2:
        raise ValueError(f"samples: expected at least 2 (for the leave-one-out baseline), "
                         f"got {samples}")
    logits = init_logits.detach().clone().requires_grad_(True)
    opt = torch.optim.Adam([logits], lr=_checks.positive_float("lr", lr))
    history: list[torch.Tensor] = []     # kept on the device: one host sync at the end
    for _ in range(_checks.positive_int("steps", steps)):
        q = Independent(Bernoulli(logits=logits, validate_args=False), 1)
        h = q.sample((samples,))                                         # [S, B, H]
        score = completion_score(model, fill(x, hidden, h))              # [S, B]
        surrogate = loo_surrogate(q, h, score) + q.entropy()
        opt.zero_grad(set_to_none=True)
        (-surrogate.sum()).backward(inputs=[logits])
        opt.step()
        history.append((score.mean(0) + q.entropy()).mean().detach())
    return logits.detach(), torch.stack(history).tolist()


@torch.no_grad()
def marginal_pixel_mean(model: VAE, num_samples: int = 2000,
                        generator: torch.Generator | None = None) -> torch.Tensor:
    """E_p(x)[x] under the model, by ancestral sampling (E[x | z] averaged over z ~ p); → [D]."""
    return model.sample(num_samples, mean=True, generator=generator).mean(0)


def _accuracy(prob: torch.Tensor, truth: torch.Tensor) -> float:
    return ((prob > 0.5).to(truth.dtype) == truth).float().mean().item()


def _image_side(data_dim: int) -> tuple[int, int, int]:
    side = math.isqrt(data_dim)
    if side * side != data_dim:
        raise ValueError(f"image_shape: expected it for non-square data, got None with "
                         f"data_dim {data_dim}")
    return (1, side, side)


def _encoder(model: VAE) -> Encoder:
    """The model's encoder (completion needs one; :func:`_check_inputs` says so to users)."""
    if model.encoder is None:
        raise TypeError("model: expected a vaelab VAE with an encoder, got one without")
    return model.encoder


def _check_inputs(model: VAE, x: object) -> torch.Tensor:
    if not isinstance(model, VAE) or model.encoder is None:
        raise TypeError(f"model: expected a vaelab VAE with an encoder, got "
                        f"{type(model).__name__}")
    x = model.check_data(x)
    if not bool(((x == 0) | (x == 1)).all()):
        raise ValueError("x: expected binary images (values 0 or 1); binarize them first "
                         "(vaelab.data.binarize)")
    return x.to(device_of(model))           # the CPU images a user holds to a GPU model


INITS = ("reconstruction", "marginal")


@torch.no_grad()
def initial_logits(model: VAE, x: torch.Tensor, hidden: torch.Tensor, marginal: torch.Tensor,
                   init: str) -> torch.Tensor:
    """Starting φ [B, H]: the marginal pixel means, or the model's reconstruction of x with
    its hidden pixels set to those means (E[x | z = mean of q(z | x)], an amortized guess)."""
    start = marginal.expand(x.shape[0], -1)
    if _checks.one_of("init", init, INITS) == "reconstruction":
        filled = fill(x, hidden, start)
        start = model.decode(_encoder(model)(filled).mean).mean[:, hidden]
    return start.clamp(1e-3, 1 - 1e-3).logit()


def complete_top_half(model: VAE, x: torch.Tensor, out_path: str | os.PathLike, *,
                      steps: int = 300, samples: int = 16, seed: int = 0, lr: float = 0.1,
                      init: str = "reconstruction",
                      image_shape: tuple[int, int, int] | None = None,
                      num_show: int = 8) -> dict:
    """Hide the top half of binary images x [B, D], fill it in with q(h), draw and score it.

    q starts from ``init`` (:func:`initial_logits`: ``"reconstruction"``, the model's own
    amortized guess, or ``"marginal"``, what one would guess without looking at the visible
    half) and is fitted by :func:`fit_hidden`. The PNG at ``out_path`` has rows: visible half
    (hidden part grey), q's means, two samples of q, truth.

    Returns metrics on the hidden half: ``accuracy`` (q's means thresholded at ½ vs the truth),
    ``initial_accuracy`` (the same for the starting q), ``baseline_accuracy`` (the marginal
    pixel means thresholded, ignoring the visible half), ``mismatched_accuracy`` (each image's
    completion against another image's truth: it falls below ``accuracy`` when completions
    depend on the visible half), ``objective`` (final estimate of F, nats per image), plus
    ``num_images``, ``steps``, ``samples``.
    """
    x = _check_inputs(model, x)
    image_shape = image_shape or _image_side(x.shape[-1])
    hidden = top_half_mask(image_shape).to(x.device)
    with isolated_rng(_checks.non_negative_int("seed", seed)):
        marginal = marginal_pixel_mean(model)[hidden]
        start = initial_logits(model, x, hidden, marginal, init)
        logits, history = fit_hidden(model, x, hidden, start, steps=steps, samples=samples,
                                     lr=lr)
        draws = torch.bernoulli(torch.sigmoid(logits).expand(2, -1, -1))
    prob, truth = torch.sigmoid(logits), x[:, hidden]
    rows = {"visible half": fill(x, hidden, torch.full_like(truth, 0.5)),
            "q's means": fill(x, hidden, prob), "sample of q": fill(x, hidden, draws[0]),
            "another sample": fill(x, hidden, draws[1]), "truth": x}
    plot_completions(rows, image_shape, out_path, num_show)
    return {"accuracy": _accuracy(prob, truth),
            "initial_accuracy": _accuracy(torch.sigmoid(start), truth),
            "baseline_accuracy": _accuracy(marginal.expand_as(truth), truth),
            "mismatched_accuracy": _accuracy(prob, truth.roll(1, dims=0)),
            "objective": history[-1], "num_images": int(x.shape[0]), "steps": len(history),
            "samples": samples}


def plot_completions(rows: dict[str, torch.Tensor], image_shape: tuple[int, int, int],
                     path: str | os.PathLike, num_show: int = 8) -> Path:
    """Grid PNG: one labelled row per entry of ``rows`` (images [B, D]), first num_show columns."""
    c, h, w = image_shape
    n = min(_checks.positive_int("num_show", num_show), next(iter(rows.values())).shape[0])
    fig = Figure(figsize=(1.1 * n + 1.4, 1.15 * len(rows)), layout="constrained")
    axes = fig.subplots(len(rows), n, squeeze=False)
    for r, (label, images) in enumerate(rows.items()):
        for i in range(n):
            ax = axes[r][i]
            ax.imshow(images[i].reshape(c, h, w)[0].detach().cpu().numpy(), cmap="gray", vmin=0,
                      vmax=1)
            ax.set_xticks([])
            ax.set_yticks([])
        axes[r][0].set_ylabel(label, fontsize=8)
    fig.suptitle("Filling in the hidden top half with a mean-field Bernoulli q", fontsize=10)
    return save_figure(fig, path, dpi=100)
