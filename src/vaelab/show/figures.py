"""The lecture's pictures, computed on models where every quantity is exact.

* :func:`bimodal_posterior_figure` — a bimodal "posterior" p(z | x) (a mixture of two
  Gaussians) with Gaussian candidates q, each labelled with KL(q ‖ p), and the best Gaussian
  under the reverse KL, which locks onto one mode (Bishop 2006, §10.1.2; the lecture's orange
  and green curves). KL(q ‖ p) has no closed form for a mixture p, so it is integrated
  numerically: the trapezoid rule on a uniform grid of ``GRID_POINTS`` = 5001 points over
  [−25, 25] (step 0.01). For smooth integrands that vanish at both ends the trapezoid rule
  converges exponentially fast, and for the Gaussians drawn here (scales in [0.3, 3], means
  within ±6, so ≥ 6 standard deviations inside the grid) the truncation and discretization
  errors are at rounding level, ~1e-13 nats (the tests check the rule against the closed-form
  Gaussian KL and against Gauss–Hermite quadrature).
* :func:`bound_family_figure` — log p_θ(x) against θ with ELBO(θ; φ) curves for several fixed
  φ beneath it, on a one-dimensional linear-Gaussian model (p(z) = N(0, 1),
  p(x | z) = N(θ z, σ²)); φ_j is the exact posterior at θ_j, so curve j touches log p_θ(x) at
  θ = θ_j (the lecture's "family of lower bounds").
* :func:`joint_vs_alternating_figure` — the ELBO(θ, φ) surface of the same model with a
  one-parameter encoder q_φ(z | x) = N(φ x, τ²), and two climbs: joint gradient ascent on
  (θ, φ) and the alternating, EM-like schedule (φ to convergence, then one θ step).
* :func:`em_vs_vi_figure` — a Gaussian mixture fitted by EM (Dempster, Laird & Rubin 1977) and
  by gradient-based VI with free per-datapoint categorical q (joint gradient ascent on θ and
  the q logits), log-likelihood curves of both.

Every figure function writes a PNG atomically (temporary file + rename) and returns its path;
the numbers behind each figure come from separate functions that the tests check against
closed forms. :func:`make_all` draws them all.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import torch
from matplotlib.figure import Figure
from matplotlib.patches import Ellipse
from torch.distributions import Categorical, Distribution, MixtureSameFamily, Normal

from vaelab import _checks
from vaelab._files import save_figure
from vaelab.infer.objectives import elbo
from vaelab.model.exact import GaussianMixture, LinearGaussian

GRID_LIMIT = 25.0
GRID_POINTS = 5001


# ----------------------------------------------------------------- bimodal posterior, reverse KL


def bimodal_posterior(weights: tuple[float, float] = (0.3, 0.7),
                      locs: tuple[float, float] = (-4.0, 2.0),
                      scales: tuple[float, float] = (0.8, 1.2)) -> MixtureSameFamily:
    """The figure's p(z | x): Σ_k w_k N(loc_k, scale_k²), a distribution over scalar z."""
    w = torch.tensor(weights, dtype=torch.float64)
    return MixtureSameFamily(Categorical(probs=w / w.sum()),
                             Normal(torch.tensor(locs, dtype=torch.float64),
                                    torch.tensor(scales, dtype=torch.float64)))


def _grid(points: int, limit: float) -> torch.Tensor:
    return torch.linspace(-limit, limit, _checks.positive_int("points", points),
                          dtype=torch.float64)


def _trapezoid_kl(q: Normal, z: torch.Tensor, log_p: torch.Tensor) -> torch.Tensor:
    """∫ q (log q − log p) dz on the grid z [G] with log p(z) given, for q batch [...]."""
    shape = (z.shape[0],) + (1,) * len(q.batch_shape)
    log_q = q.log_prob(z.view(shape))
    return torch.trapezoid(log_q.exp() * (log_q - log_p.view(shape)), z, dim=0)


def kl_grid(q: Normal, p: Distribution, points: int = GRID_POINTS,
            limit: float = GRID_LIMIT) -> torch.Tensor:
    """KL(q ‖ p) = ∫ q (log q − log p) dz by the trapezoid rule on [−limit, limit].

    q: Normal with batch [...] (scalar z); p: any distribution over scalar z. → [...].
    Differentiable in q's parameters.
    """
    z = _grid(points, limit)
    return _trapezoid_kl(q, z, p.log_prob(z))


def moment_matched_gaussian(p: MixtureSameFamily) -> Normal:
    """argmin_q KL(p ‖ q) over Gaussians: q has p's mean and variance (forward KL)."""
    return Normal(p.mean, p.variance.sqrt())


def best_reverse_kl_gaussian(p: Distribution, inits: list[tuple[float, float]] | None = None,
                             steps: int = 600, lr: float = 0.05,
                             points: int = GRID_POINTS) -> tuple[Normal, list[Normal]]:
    """argmin_q KL(q ‖ p) over Gaussians q = N(m, s²), by Adam from several starts.

    Returns (the best q, the local optimum reached from each start). Each start descends to
    a mode-seeking optimum; the best is the one with the smallest KL.
    """
    inits = inits or [(-6.0, 1.0), (0.0, 3.0), (5.0, 1.0)]
    loc = torch.tensor([m for m, _ in inits], dtype=torch.float64, requires_grad=True)
    log_scale = torch.tensor([math.log(s) for _, s in inits], dtype=torch.float64,
                             requires_grad=True)
    opt = torch.optim.Adam([loc, log_scale], lr=lr)
    z = _grid(points, GRID_LIMIT)
    log_p = p.log_prob(z)
    for _ in range(_checks.positive_int("steps", steps)):
        opt.zero_grad()
        _trapezoid_kl(Normal(loc, log_scale.exp()), z, log_p).sum().backward()
        opt.step()
    found = [Normal(m.detach(), s.detach()) for m, s in zip(loc, log_scale.exp(), strict=True)]
    kls = torch.stack([kl_grid(q, p, points) for q in found])
    return found[int(kls.argmin())], found


def bimodal_posterior_summary(*, steps: int = 600, points: int = GRID_POINTS) -> dict:
    """The numbers behind :func:`bimodal_posterior_figure`.

    Returns {"posterior": p, "candidates": [(label, q, KL(q‖p))...] — the lecture's
    N(2, variance 2) and N(−4, 0.75²), the moment-matched Gaussian and the reverse-KL best}.
    """
    p = bimodal_posterior()
    best, _ = best_reverse_kl_gaussian(p, steps=steps, points=points)
    candidates = [
        ("mean 2, variance 2", Normal(torch.tensor(2.0, dtype=torch.float64),
                                      torch.tensor(2.0, dtype=torch.float64).sqrt())),
        ("mean −4, std 0.75", Normal(torch.tensor(-4.0, dtype=torch.float64),
                                     torch.tensor(0.75, dtype=torch.float64))),
        ("moment-matched (min KL(p‖q))", moment_matched_gaussian(p)),
        ("best under reverse KL", best),
    ]
    return {"posterior": p,
            "candidates": [(name, q, kl_grid(q, p, points).item()) for name, q in candidates]}


def bimodal_posterior_figure(path: str | os.PathLike, *, small: bool = False) -> Path:
    """p(z | x) bimodal with Gaussian candidates labelled by KL(q ‖ p); → path."""
    summary = bimodal_posterior_summary(steps=150 if small else 600)
    z = torch.linspace(-9, 9, 1201, dtype=torch.float64)
    fig = Figure(figsize=(8, 4.2), layout="constrained")
    ax = fig.subplots()
    ax.fill_between(z, summary["posterior"].log_prob(z).exp(), color="tab:blue", alpha=0.25)
    ax.plot(z, summary["posterior"].log_prob(z).exp(), color="tab:blue", lw=2.5,
            label="p(z | x): mixture of two Gaussians")
    styles = [("tab:orange", "-"), ("tab:green", "-"), ("grey", ":"), ("tab:red", "--")]
    for (name, q, kl), (color, ls) in zip(summary["candidates"], styles, strict=True):
        ax.plot(z, q.log_prob(z).exp(), color=color, ls=ls, lw=2,
                label=f"q = N({q.loc.item():.2f}, {q.scale.item():.2f}²)  {name}:  "
                      f"KL(q‖p) = {kl:.3f}")
    ax.set_xlabel("z")
    ax.set_ylabel("density")
    ax.set_title("Gaussian approximations of a bimodal posterior (reverse KL locks onto a mode)")
    ax.set_ylim(0, 1.7 * ax.get_ylim()[1])
    ax.legend(loc="upper left", fontsize=8, frameon=False)
    return save_figure(fig, path, dpi=90 if small else 120)


# ------------------------------------------------------------------- the family of lower bounds


def linear_gaussian_1d(theta: float, noise_scale: float) -> LinearGaussian:
    """p(z) = N(0, 1), p(x | z) = N(θ z, σ²): scalar W = θ, no bias."""
    return LinearGaussian(torch.tensor([[float(theta)]], dtype=torch.float64),
                          torch.zeros(1, dtype=torch.float64), float(noise_scale))


def one_d_data(n: int = 100, theta: float = 1.5, noise_scale: float = 0.5,
               seed: int = 0) -> torch.Tensor:
    """n draws x ~ p_θ(x) = N(0, θ² + σ²) from the 1-D linear-Gaussian model; → [n, 1]."""
    g = torch.Generator().manual_seed(seed)
    sd = math.sqrt(theta**2 + noise_scale**2)
    return sd * torch.randn(n, 1, generator=g, dtype=torch.float64)


def bound_family(x: torch.Tensor, thetas: torch.Tensor, anchors: list[float],
                 noise_scale: float = 0.5) -> dict[str, torch.Tensor]:
    """Mean log p_θ(x) and ELBO(θ; φ_j) over x [N, 1], for θ in ``thetas`` [T].

    φ_j = {q_n = p_{θ_j}(z | x_n)}: per-datapoint exact posteriors at anchor θ_j, held fixed
    while θ varies. Returns {"theta" [T], "log_likelihood" [T], "elbo" [J, T], "anchors" [J]}.
    """
    posteriors = [linear_gaussian_1d(a, noise_scale).posterior(x) for a in anchors]
    log_p, bounds = [], []
    for theta in thetas.tolist():
        model = linear_gaussian_1d(theta, noise_scale)
        with torch.no_grad():
            log_p.append(model.log_marginal(x).mean())
            bounds.append(torch.stack([model.elbo_closed_form(x, q).mean() for q in posteriors]))
    return {"theta": thetas, "log_likelihood": torch.stack(log_p),
            "elbo": torch.stack(bounds, dim=1), "anchors": torch.tensor(anchors)}


def bound_family_figure(path: str | os.PathLike, *, small: bool = False) -> Path:
    """log p_θ(x) vs θ with ELBO(θ; φ) curves for fixed φ beneath it; → path."""
    x = one_d_data()
    thetas = torch.linspace(0.05, 3.0, 40 if small else 300, dtype=torch.float64)
    anchors = [0.5, 1.0, 2.2]
    data = bound_family(x, thetas, anchors)
    fig = Figure(figsize=(7.5, 4.5), layout="constrained")
    ax = fig.subplots()
    ax.plot(thetas, data["log_likelihood"], color="black", lw=2.5, label="log p_θ(x)  (exact)")
    colors = ["tab:red", "tab:orange", "tab:green"]
    for j, (anchor, color) in enumerate(zip(anchors, colors, strict=True)):
        ax.plot(thetas, data["elbo"][j], color=color, lw=1.8,
                label=f"ELBO(θ; φ) with q = p_θ'(z | x) at θ' = {anchor}")
        touch = linear_gaussian_1d(anchor, 0.5).log_marginal(x).mean().item()
        ax.plot([anchor], [touch], "o", color=color, ms=7)
        ax.axvline(anchor, color=color, ls=":", lw=1)
    low = data["log_likelihood"].min().item()
    ax.set_ylim(low - 1.5, data["log_likelihood"].max().item() + 0.3)
    ax.set_xlabel("θ (decoder weight)")
    ax.set_ylabel("nats per data point")
    ax.set_title("A family of lower bounds: each fixed φ gives ELBO(θ; φ) ≤ log p_θ(x)")
    ax.legend(loc="lower right", fontsize=8, framealpha=0.95)
    return save_figure(fig, path, dpi=90 if small else 120)


# -------------------------------------------------------------- joint vs alternating ascent


def encoder_elbo(theta: torch.Tensor, phi: torch.Tensor, x: torch.Tensor,
                 noise_scale: float = 0.5, q_scale: float = 0.3) -> torch.Tensor:
    """Mean over x [N, 1] of ELBO(θ, φ) with q_φ(z | x) = N(φ x, τ²), closed form.

    ELBO = log N(x; θ φ x, σ²) − θ² τ² / (2σ²) − KL(N(φ x, τ²) ‖ N(0, 1)); θ and φ broadcast
    (e.g. grids [T, P] → [T, P]). Equal to ``LinearGaussian.elbo_closed_form`` (tested).
    """
    x = x.reshape(-1)
    th, ph = theta[..., None], phi[..., None]
    s2, t2 = noise_scale**2, q_scale**2
    expected = (-0.5 * math.log(2 * math.pi * s2) - (x - th * ph * x) ** 2 / (2 * s2)
                - th**2 * t2 / (2 * s2))
    kl = 0.5 * (ph**2 * x**2 + t2 - 1 - math.log(t2))
    return (expected - kl).mean(-1)


def optimal_phi(theta: float | torch.Tensor, noise_scale: float = 0.5):
    """argmax_φ of :func:`encoder_elbo` for fixed θ: φ*(θ) = θ / (θ² + σ²) (any τ)."""
    return theta / (theta**2 + noise_scale**2)


def _ascend(theta, phi, x, lr, wrt, **kw) -> tuple[torch.Tensor, torch.Tensor]:
    """One gradient-ascent step on :func:`encoder_elbo` in the coordinates named by ``wrt``."""
    th, ph = theta.clone().requires_grad_(True), phi.clone().requires_grad_(True)
    g_th, g_ph = torch.autograd.grad(encoder_elbo(th, ph, x, **kw), (th, ph))
    return (theta + lr * g_th if "theta" in wrt else theta,
            phi + lr * g_ph if "phi" in wrt else phi)


def _newton_phi(theta, phi, x, **kw) -> torch.Tensor:
    """One Newton step on φ alone: φ − (∂ELBO/∂φ) / (∂²ELBO/∂φ²)."""
    ph = phi.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(encoder_elbo(theta, ph, x, **kw), ph, create_graph=True)
    (curvature,) = torch.autograd.grad(grad, ph)
    return (phi - grad / curvature).detach()


def climb(x: torch.Tensor, start: tuple[float, float], schedule: str, *, steps: int = 60,
          lr: float = 0.05, inner_tol: float = 1e-10, max_inner: int = 100,
          **kw) -> torch.Tensor:
    """Path of (θ, φ) climbing :func:`encoder_elbo`; → [M, 2].

    ``"joint"``: ``steps`` simultaneous gradient steps on (θ, φ), step size ``lr``.
    ``"alternating"``: ``steps`` rounds of: φ to convergence with θ fixed (the E-step-like
    tightening; Newton's method on φ until a step moves it less than ``inner_tol`` — one step
    suffices here, the ELBO being quadratic in φ; the path records the converged point), then
    one gradient step of size ``lr`` on θ with φ fixed (the M-step-like move).
    """
    schedule = _checks.one_of("schedule", schedule, ("joint", "alternating"))
    theta = torch.tensor(start[0], dtype=torch.float64)
    phi = torch.tensor(start[1], dtype=torch.float64)
    path = [(theta.item(), phi.item())]
    for _ in range(_checks.positive_int("steps", steps)):
        if schedule == "joint":
            theta, phi = _ascend(theta, phi, x, lr, ("theta", "phi"), **kw)
        else:
            for _ in range(max_inner):
                new_phi = _newton_phi(theta, phi, x, **kw)
                moved, phi = abs((new_phi - phi).item()), new_phi
                if moved < inner_tol:
                    break
            path.append((theta.item(), phi.item()))
            theta, phi = _ascend(theta, phi, x, lr, ("theta",), **kw)
        path.append((theta.item(), phi.item()))
    return torch.tensor(path, dtype=torch.float64)


def joint_vs_alternating_figure(path: str | os.PathLike, *, small: bool = False) -> Path:
    """Contours of ELBO(θ, φ) with the joint and the alternating climbs; → path."""
    x = one_d_data()
    thetas = torch.linspace(-0.2, 2.6, 80 if small else 240, dtype=torch.float64)
    phis = torch.linspace(-0.3, 1.7, 80 if small else 240, dtype=torch.float64)
    surface = encoder_elbo(thetas[:, None], phis[None, :], x)
    start = (0.15, 1.5)
    joint = climb(x, start, "joint", steps=150 if small else 400, lr=0.02)
    alternating = climb(x, start, "alternating", steps=150 if small else 400, lr=0.02)
    optimal = optimal_phi(thetas).numpy()
    theta_grid, phi_grid, heights = thetas.numpy(), phis.numpy(), surface.numpy()
    joint_path, alternating_path = joint.numpy(), alternating.numpy()
    fig = Figure(figsize=(7, 5.5), layout="constrained")
    ax = fig.subplots()
    top = float(heights.max())
    levels = [top - 10 + 0.5 * i for i in range(21)]
    contour = ax.contourf(theta_grid, phi_grid, heights.T, levels=levels, cmap="viridis",
                          extend="min")
    ax.contour(theta_grid, phi_grid, heights.T, levels=levels[::2], colors="k", linewidths=0.3)
    fig.colorbar(contour, ax=ax, label="ELBO(θ, φ), nats per data point")
    ax.plot(theta_grid, optimal, "w:", lw=1.8, label="φ*(θ): tightest bound for θ")
    ax.plot(joint_path[:, 0], joint_path[:, 1], "-", color="tab:red", lw=2,
            label="joint gradient ascent on (θ, φ)")
    ax.plot(alternating_path[:, 0], alternating_path[:, 1], "-", color="tab:orange", lw=1.8,
            label="alternating: φ to convergence, then a θ step")
    ax.plot(*start, "k*", ms=12, label="start")
    ax.plot(*joint_path[-1], "kX", ms=9, label="where both climbs end (the maximum)")
    ax.set_xlim(float(theta_grid[0]), float(theta_grid[-1]))
    ax.set_ylim(float(phi_grid[0]), float(phi_grid[-1]))
    ax.set_xlabel("θ (decoder weight)")
    ax.set_ylabel("φ (encoder weight: q(z | x) = N(φx, 0.3²))")
    ax.set_title("Climbing the ELBO: joint vs alternating (EM-like)")
    ax.legend(loc="lower right", fontsize=8, framealpha=0.85)
    return save_figure(fig, path, dpi=90 if small else 120)


# ---------------------------------------------------------------------------- EM vs VI


def mixture_data(n: int = 600, seed: int = 0) -> torch.Tensor:
    """n 2-D points from three well-separated Gaussian clusters; → [n, 2] float64."""
    g = torch.Generator().manual_seed(seed)
    centers = torch.tensor([[-3.0, 0.0], [2.0, 2.5], [2.5, -2.0]], dtype=torch.float64)
    scales = torch.tensor([[1.0, 0.6], [0.5, 1.0], [0.8, 0.8]], dtype=torch.float64)
    k = torch.randint(0, 3, (n,), generator=g)
    return centers[k] + scales[k] * torch.randn(n, 2, generator=g, dtype=torch.float64)


def em_vs_vi(x: torch.Tensor, num_components: int = 3, *, em_iters: int = 60,
             vi_steps: int = 600, lr: float = 0.1, seed: int = 0) -> dict:
    """Fit the same Gaussian mixture by EM and by gradient-based VI, from the same start.

    VI: joint Adam ascent on θ = (mixing logits, means, log scales) and free per-datapoint
    categorical q logits [N, K] of the mean ``vaelab.elbo`` (which enumerates the Categorical
    q exactly); q starts at the exact posterior under the starting θ, as EM's first E-step.
    Returns {"em": mean log p(x) at the start and after each EM iteration, "vi": mean log p(x)
    at the start and after each VI step, "vi_elbo": mean ELBO at the parameters of vi[i]
    (so vi_elbo[i] ≤ vi[i]), "em_model", "vi_model"}.
    """
    start = GaussianMixture.init_from_data(x, num_components,
                                           torch.Generator().manual_seed(seed))
    em_model = GaussianMixture(start.logits.detach(), start.loc.detach(),
                               start.log_scale.exp().detach())
    vi_model = GaussianMixture(start.logits.detach(), start.loc.detach(),
                               start.log_scale.exp().detach())
    with torch.no_grad():
        initial = em_model.log_marginal(x).mean().item()
    em = [initial, *em_model.fit_em(x, em_iters, tol=0.0)]
    q_logits = vi_model.posterior(x).logits.detach().clone().requires_grad_(True)
    opt = torch.optim.Adam([*vi_model.parameters(), q_logits], lr=lr)
    vi, vi_elbo = [initial], []
    for _ in range(_checks.positive_int("vi_steps", vi_steps)):
        opt.zero_grad()
        value = elbo(vi_model, Categorical(logits=q_logits), x).mean()
        (-value).backward()
        opt.step()
        vi_elbo.append(value.item())
        with torch.no_grad():
            vi.append(vi_model.log_marginal(x).mean().item())
    return {"em": em, "vi": vi, "vi_elbo": vi_elbo, "em_model": em_model, "vi_model": vi_model}


def _ellipses(ax, model: GaussianMixture, color: str, ls: str, label: str) -> None:
    for k in range(model.num_components):
        loc, scale = model.loc[k].detach(), model.log_scale[k].detach().exp()
        ax.add_patch(Ellipse(tuple(loc.tolist()), 4 * scale[0].item(), 4 * scale[1].item(),
                             fill=False, color=color, ls=ls, lw=2,
                             label=label if k == 0 else None))


def em_vs_vi_figure(path: str | os.PathLike, *, small: bool = False) -> Path:
    """Log-likelihood curves of EM and gradient VI on a Gaussian mixture, and the fits."""
    x = mixture_data(300 if small else 600)
    result = em_vs_vi(x, em_iters=30 if small else 60, vi_steps=200 if small else 600)
    fig = Figure(figsize=(11, 4.3), layout="constrained")
    left, right = fig.subplots(1, 2, width_ratios=[1.3, 1])
    em_x = torch.arange(len(result["em"]))
    vi_x = torch.arange(len(result["vi"]))
    left.plot(em_x, result["em"], "o-", color="tab:blue", ms=3,
              label="EM: log p(x) (= ELBO right after each E-step)")
    left.plot(vi_x, result["vi"], color="tab:red", label="gradient VI: log p(x)")
    left.plot(vi_x[1:], result["vi_elbo"], color="tab:red", ls="--", lw=1,
              label="gradient VI: ELBO (its q is free per data point)")
    left.set_xscale("symlog", linthresh=1)
    left.set_xlabel("EM iteration / VI gradient step")
    left.set_ylabel("mean log-likelihood (nats per point)")
    left.set_title("Gaussian mixture: EM vs gradient-based VI")
    lo = min(result["em"][0], min(result["vi_elbo"]))
    left.set_ylim(lo - 0.1, max(result["em"]) + 0.15)
    left.legend(loc="lower right", fontsize=8, frameon=False)
    right.scatter(x[:, 0], x[:, 1], s=4, color="grey", alpha=0.5)
    _ellipses(right, result["em_model"], "tab:blue", "-", "EM fit (2σ)")
    _ellipses(right, result["vi_model"], "tab:red", "--", "VI fit (2σ)")
    right.set_aspect("equal")
    right.set_title("fitted components")
    right.legend(loc="upper left", fontsize=8)
    return save_figure(fig, path, dpi=90 if small else 120)


# ------------------------------------------------------------------------------- all


FIGURES = {
    "bimodal_posterior": bimodal_posterior_figure,
    "bound_family": bound_family_figure,
    "joint_vs_alternating": joint_vs_alternating_figure,
    "em_vs_vi": em_vs_vi_figure,
}


def make_all(out_dir: str | os.PathLike, *, small: bool = False) -> list[Path]:
    """Draw every figure of :data:`FIGURES` into ``out_dir/<name>.png``; → the paths."""
    out_dir = Path(out_dir)
    return [draw(out_dir / f"{name}.png", small=small) for name, draw in FIGURES.items()]
