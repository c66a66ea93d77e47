"""Latent-variable models whose log p(x) and p(z | x) have closed forms.

They follow the same protocol as :class:`vaelab.model.vae.VAE`, so every objective and estimator
runs on them through the same code, and the tests compare estimates with exact answers.

* :class:`LinearGaussian` — probabilistic PCA / factor analysis (Tipping & Bishop 1999):
  p(z) = N(0, I), p(x | z) = N(W z + b, diag σ²); p(x) = N(b, W Wᵀ + diag σ²) and p(z | x) is
  Gaussian with covariance (I + Wᵀ D⁻¹ W)⁻¹.
* :class:`TwoLayerLinearGaussian` — z_2 ~ N(0, I), z_1 | z_2 ~ N(A z_2 + a, D_1),
  x | z_1 ~ N(B z_1 + b, D_0): a two-layer hierarchy (``vaelab.model.hierarchical``) whose
  log p(x) and joint posterior p(z_1, z_2 | x) are Gaussian in closed form.
* :class:`GaussianMixture` — p(z) = Categorical(π), p(x | z = k) = N(μ_k, diag σ_k²), with exact
  responsibilities p(z | x) and EM (Dempster, Laird & Rubin 1977): the E-step sets q to the
  posterior, which makes the ELBO equal log p(x) (the lecture's tight bound).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from torch.distributions import (
    Categorical,
    Distribution,
    Independent,
    MultivariateNormal,
    Normal,
)

from vaelab import _checks
from vaelab.model.hierarchical import LayeredDistribution
from vaelab.model.vae import LatentVariableModel


class LinearGaussian(LatentVariableModel):
    """p(z) = N(0, I_L), p(x | z) = N(W z + b, diag(noise_scale²)).

    Args:
        weight: W, [D, L].
        bias: b, [D].
        noise_scale: σ, a positive float or a tensor [D].
    """

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor,
                 noise_scale: float | torch.Tensor) -> None:
        super().__init__()
        weight = _checks.tensor("weight", weight)
        if weight.dim() != 2:
            raise ValueError(f"weight: expected shape [D, L], got {list(weight.shape)}")
        bias = _checks.tensor("bias", bias)
        if bias.shape != weight.shape[:1]:
            raise ValueError(f"bias: expected shape [{weight.shape[0]}], got {list(bias.shape)}")
        scale = _noise_scale(noise_scale, weight)
        self.weight = nn.Parameter(weight.detach().clone())
        self.bias = nn.Parameter(bias.detach().clone())
        self.log_noise_scale = nn.Parameter(scale.log())
        self.data_dim, self.latent_dim = weight.shape

    @property
    def noise_scale(self) -> torch.Tensor:
        """σ, [D]."""
        return self.log_noise_scale.exp()

    def prior(self) -> Distribution:
        zeros = self.weight.new_zeros(self.latent_dim)
        return Independent(Normal(zeros, torch.ones_like(zeros)), 1)

    def decode(self, z: torch.Tensor) -> Distribution:
        """p(x | z) = N(W z + b, diag σ²); z [..., L] → batch [...], event [D]."""
        loc = z @ self.weight.T + self.bias
        return Independent(Normal(loc, self.noise_scale.expand_as(loc)), 1)

    def marginal(self) -> MultivariateNormal:
        """p(x) = N(b, W Wᵀ + diag σ²), event [D]."""
        cov = self.weight @ self.weight.T + torch.diag(self.noise_scale**2)
        return MultivariateNormal(self.bias, covariance_matrix=cov)

    def log_marginal(self, x: torch.Tensor) -> torch.Tensor:
        """Exact log p(x) for x [B, D] → [B]."""
        return self.marginal().log_prob(self.check_data(x))

    def posterior(self, x: torch.Tensor) -> MultivariateNormal:
        """Exact p(z | x) = N(Σ Wᵀ D⁻¹ (x − b), Σ), Σ = (I + Wᵀ D⁻¹ W)⁻¹; batch [B], event [L]."""
        x = self.check_data(x)
        w_scaled = self.weight / self.noise_scale[:, None] ** 2          # D⁻¹ W, [D, L]
        precision = (torch.eye(self.latent_dim, dtype=self.weight.dtype, device=self.weight.device)
                     + self.weight.T @ w_scaled)
        cov = torch.cholesky_inverse(torch.linalg.cholesky(precision))
        loc = (x - self.bias) @ w_scaled @ cov                             # [B, L]
        # One Cholesky factor [L, L] shared by the batch: MultivariateNormal broadcasts it, and
        # log_prob stays one triangular solve instead of B batched ones (20× faster at B=1000).
        return MultivariateNormal(loc, scale_tril=torch.linalg.cholesky(cov))

    def elbo_closed_form(self, x: torch.Tensor, q: Distribution) -> torch.Tensor:
        """ELBO(x; q) in closed form for a Gaussian q (mean m, covariance S); → [B].

        E_q[log N(x; W z + b, D)] = log N(x; W m + b, D) − ½ tr(D⁻¹ W S Wᵀ), minus KL(q ‖ N(0, I)).
        Written independently of ``vaelab.infer.objectives`` so it can serve as their oracle.
        """
        x = self.check_data(x)
        m, cov = q.mean, _covariance(q)
        expected = self.decode(m).log_prob(x) - 0.5 * torch.einsum(
            "dl,...lk,dk,d->...", self.weight, cov, self.weight, self.noise_scale**-2)
        prior = MultivariateNormal(torch.zeros_like(m), covariance_matrix=torch.eye(
            self.latent_dim, dtype=m.dtype, device=m.device).expand_as(cov))
        kl = torch.distributions.kl_divergence(MultivariateNormal(m, covariance_matrix=cov), prior)
        return expected - kl


def _noise_scale(noise_scale: object, weight: torch.Tensor) -> torch.Tensor:
    """σ as a detached tensor [D]: a finite positive number or a tensor [] / [D]."""
    d = weight.shape[0]
    if isinstance(noise_scale, torch.Tensor):
        if noise_scale.shape not in ((), (d,)):
            raise ValueError(f"noise_scale: expected a number or shape [{d}], "
                             f"got shape {list(noise_scale.shape)}")
        scale = noise_scale.detach().to(weight.device, weight.dtype)
    else:
        scale = torch.tensor(_checks.positive_float("noise_scale", noise_scale),
                             dtype=weight.dtype, device=weight.device)
    scale = scale.expand(d).clone()
    if not bool((torch.isfinite(scale) & (scale > 0)).all()):
        raise ValueError(f"noise_scale: expected finite values > 0, got "
                         f"{scale[~(torch.isfinite(scale) & (scale > 0))][0].item():g}")
    return scale


def _covariance(q: Distribution) -> torch.Tensor:
    if isinstance(q, MultivariateNormal):
        return q.covariance_matrix
    if isinstance(q, Independent) and isinstance(q.base_dist, Normal):
        return torch.diag_embed(q.base_dist.scale**2)
    raise TypeError(f"q: expected a Gaussian distribution, got {type(q).__name__}")


class GaussianMixture(LatentVariableModel):
    """p(z) = Categorical(softmax(logits)), p(x | z = k) = N(loc_k, diag scale_k²).

    Args:
        logits: [K] mixing logits.
        loc: [K, D] component means.
        scale: [K, D] component standard deviations (> 0).
    """

    def __init__(self, logits: torch.Tensor, loc: torch.Tensor, scale: torch.Tensor) -> None:
        super().__init__()
        logits = _checks.tensor("logits", logits)
        loc = _checks.tensor("loc", loc)
        scale = _checks.tensor("scale", scale)
        if loc.dim() != 2:
            raise ValueError(f"loc: expected shape [K, D], got {list(loc.shape)}")
        if logits.shape != loc.shape[:1] or scale.shape != loc.shape:
            raise ValueError(f"logits, scale: expected shapes [{loc.shape[0]}] and "
                             f"{list(loc.shape)}, got {list(logits.shape)} and {list(scale.shape)}")
        if not bool((torch.isfinite(scale) & (scale > 0)).all()):
            raise ValueError(f"scale: expected finite values > 0, got min {scale.min().item():g}")
        self.logits = nn.Parameter(logits.detach().clone())
        self.loc = nn.Parameter(loc.detach().clone())
        self.log_scale = nn.Parameter(scale.detach().log())
        self.num_components, self.data_dim = loc.shape
        self.latent_dim = 1

    @classmethod
    def init_from_data(cls, x: torch.Tensor, num_components: int,
                       generator: torch.Generator | None = None) -> GaussianMixture:
        """Equal weights, means at K distinct random data points, scales = data std."""
        k = _checks.positive_int("num_components", num_components)
        # drawn where the generator lives (the CPU's global one without it), then moved to x
        idx = torch.randperm(x.shape[0], generator=generator,
                             device=generator.device if generator is not None else "cpu")[:k]
        idx = idx.to(x.device)
        scale = x.std(0, keepdim=True).clamp_min(1e-3).expand(k, -1)
        return cls(torch.zeros(k, dtype=x.dtype, device=x.device), x[idx], scale)

    def prior(self) -> Categorical:
        return Categorical(logits=self.logits)

    def decode(self, z: torch.Tensor) -> Distribution:
        """z: integer component labels [...] → N(loc_z, diag scale_z²), batch [...], event [D]."""
        return Independent(Normal(self.loc[z], self.log_scale.exp()[z]), 1)

    def _component_log_joint(self, x: torch.Tensor) -> torch.Tensor:
        """log π_k + log N(x_b; μ_k, σ_k²) → [B, K]."""
        comp = Independent(Normal(self.loc, self.log_scale.exp()), 1)
        return comp.log_prob(x[:, None, :]) + self.logits.log_softmax(-1)

    def log_marginal(self, x: torch.Tensor) -> torch.Tensor:
        """Exact log p(x) = logsumexp_k [log π_k + log N(x; μ_k, σ_k²)]; [B, D] → [B]."""
        return self._component_log_joint(self.check_data(x)).logsumexp(-1)

    def posterior(self, x: torch.Tensor) -> Categorical:
        """Exact responsibilities p(z = k | x): Categorical with batch [B]."""
        return Categorical(logits=self._component_log_joint(self.check_data(x)))

    @torch.no_grad()
    def m_step(self, x: torch.Tensor, q: Categorical, min_scale: float = 1e-3) -> None:
        """Maximize E_q[log p(x, z)] over (π, μ, σ) in closed form, given responsibilities q."""
        r = q.probs                                      # [B, K]
        nk = r.sum(0).clamp_min(1e-12)                   # [K]
        loc = (r.T @ x) / nk[:, None]
        var = (r.T @ x**2) / nk[:, None] - loc**2
        self.logits.copy_((nk / nk.sum()).log())
        self.loc.copy_(loc)
        self.log_scale.copy_(var.clamp_min(min_scale**2).sqrt().log())

    def fit_em(self, x: torch.Tensor, num_iters: int = 100, tol: float = 1e-6,
               on_e_step: Callable[[GaussianMixture, Categorical], None] | None = None,
               ) -> list[float]:
        """Run EM; returns mean log p(x) after each iteration (never decreases).

        ``on_e_step(model, q)`` is called right after each E-step, when q = p(z | x) and the
        ELBO equals log p(x): tests and figures use it to check that the bound is tight.
        """
        x = self.check_data(x)
        history: list[float] = []
        for _ in range(_checks.positive_int("num_iters", num_iters)):
            with torch.no_grad():
                q = self.posterior(x)                    # E-step
            if on_e_step is not None:
                on_e_step(self, q)
            self.m_step(x, q)                            # M-step
            with torch.no_grad():
                history.append(self.log_marginal(x).mean().item())
            if len(history) > 1 and abs(history[-1] - history[-2]) < tol:
                break
        return history



class TwoLayerLinearGaussian(LatentVariableModel):
    """z_2 ~ N(0, I), z_1 | z_2 ~ N(A z_2 + a, diag d_1²), x | z_1 ~ N(B z_1 + b, diag d_0²).

    The two-layer linear-Gaussian hierarchy, the exact reference for
    ``vaelab.model.hierarchical``: z = [z_1, z_2] (event [L_1 + L_2]) and the prior is the same
    layered distribution the neural hierarchy uses, so every objective and estimator runs on
    it unchanged. (x, z_1, z_2) is jointly Gaussian, so log p(x) and p(z_1, z_2 | x) are exact.

    Args:
        top_weight: A, [L_1, L_2]; top_bias: a, [L_1]; top_scale: d_1 (number or [L_1]).
        weight: B, [D, L_1]; bias: b, [D]; noise_scale: d_0 (number or [D]).
    """

    def __init__(self, top_weight: torch.Tensor, top_bias: torch.Tensor,
                 top_scale: float | torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
                 noise_scale: float | torch.Tensor) -> None:
        super().__init__()
        self.lower = LinearGaussian(weight, bias, noise_scale)          # p(x | z_1)
        self.upper = LinearGaussian(top_weight, top_bias, top_scale)    # p(z_1 | z_2)
        if self.upper.data_dim != self.lower.latent_dim:
            raise ValueError(f"top_weight: expected shape [{self.lower.latent_dim}, L_2] "
                             f"(rows = weight's columns), got {list(top_weight.shape)}")
        self.sizes = (self.lower.latent_dim, self.upper.latent_dim)
        self.data_dim, self.latent_dim = self.lower.data_dim, sum(self.sizes)

    def prior(self) -> Distribution:
        """p(z_1, z_2) = p(z_2) p(z_1 | z_2), a layered distribution (batch [], event [L])."""
        def step(i: int, layers: dict[int, torch.Tensor]) -> Distribution:
            return self.upper.prior() if i == 1 else self.upper.decode(layers[1])

        return LayeredDistribution(self.sizes, (1, 0), step)

    def decode(self, z: torch.Tensor) -> Distribution:
        """p(x | z_1) for z [..., L_1 + L_2] → batch [...], event [D]."""
        return self.lower.decode(z[..., :self.sizes[0]])

    def joint_prior(self) -> MultivariateNormal:
        """p(z_1, z_2) as one Gaussian: mean [a, 0], cov [[A Aᵀ + D_1, A], [Aᵀ, I]]."""
        A, L2 = self.upper.weight, self.sizes[1]
        cov_top = torch.eye(L2, dtype=A.dtype, device=A.device)
        cov = torch.cat([torch.cat([self.upper.marginal().covariance_matrix, A], 1),
                         torch.cat([A.T, cov_top], 1)], 0)
        return MultivariateNormal(torch.cat([self.upper.bias, A.new_zeros(L2)]),
                                  covariance_matrix=cov)

    def marginal(self) -> MultivariateNormal:
        """p(x) = N(B a + b, B (A Aᵀ + D_1) Bᵀ + D_0), event [D]."""
        B, z1 = self.lower.weight, self.upper.marginal()
        cov = B @ z1.covariance_matrix @ B.T + torch.diag(self.lower.noise_scale**2)
        return MultivariateNormal(B @ z1.mean + self.lower.bias, covariance_matrix=cov)

    def log_marginal(self, x: torch.Tensor) -> torch.Tensor:
        """Exact log p(x) for x [B, D] → [B]."""
        return self.marginal().log_prob(self.check_data(x))

    def posterior(self, x: torch.Tensor) -> MultivariateNormal:
        """Exact p(z_1, z_2 | x): batch [B], event [L_1 + L_2].

        Precision = the prior's joint precision + Bᵀ D_0⁻¹ B on the z_1 block; mean =
        covariance · (prior precision · prior mean + [Bᵀ D_0⁻¹ (x − b); 0]).
        """
        x = self.check_data(x)
        prior, L1 = self.joint_prior(), self.sizes[0]
        B_scaled = self.lower.weight / self.lower.noise_scale[:, None] ** 2   # D_0⁻¹ B
        precision = prior.precision_matrix.clone()
        precision[:L1, :L1] = precision[:L1, :L1] + self.lower.weight.T @ B_scaled
        cov = torch.cholesky_inverse(torch.linalg.cholesky(precision))
        evidence = torch.cat([(x - self.lower.bias) @ B_scaled,
                              x.new_zeros(x.shape[0], self.sizes[1])], -1)    # [B, L]
        loc = (evidence + prior.precision_matrix @ prior.mean) @ cov
        return MultivariateNormal(loc, scale_tril=torch.linalg.cholesky(cov))
