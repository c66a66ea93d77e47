"""The baselines written by hand in plain PyTorch: the VAE a user would write, its
importance-sampling log-likelihood loop, and the matrix-product floor of one training step.

The hand-written VAE is the PyTorch-example shape with the scale parameterized like vaelab's
DiagonalNormal (softplus + 1e-5), so both start from the same weights and compute the same
ELBO: Linear 784→400, ReLU, Linear 400→40 (loc, raw scale); decoder Linear 20→400, ReLU,
Linear 400→784 logits; Bernoulli log-likelihood by BCE-with-logits; analytic KL to N(0, I);
``torch.optim.Adam(lr=1e-3)`` with its defaults; dynamic binarization by ``torch.bernoulli``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.distributions import Normal

from common import EpochOrder, Shapes


class HandVAE(nn.Module):
    def __init__(self, s: Shapes) -> None:
        super().__init__()
        self.s = s
        self.enc1 = nn.Linear(s.data_dim, s.hidden)
        self.enc2 = nn.Linear(s.hidden, 2 * s.latent)
        self.dec1 = nn.Linear(s.latent, s.hidden)
        self.dec2 = nn.Linear(s.hidden, s.data_dim)

    def encode(self, x):
        loc, raw = self.enc2(F.relu(self.enc1(x))).chunk(2, dim=-1)
        return loc, F.softplus(raw) + self.s.min_scale

    def decode(self, z):
        return self.dec2(F.relu(self.dec1(z)))

    def forward(self, x):
        """Negative ELBO, batch mean."""
        loc, scale = self.encode(x)
        z = loc + scale * torch.randn_like(loc)
        logits = self.decode(z)
        rec = F.binary_cross_entropy_with_logits(logits, x, reduction="none").sum(-1)
        kl = 0.5 * (loc.pow(2) + scale.pow(2) - 1).sum(-1) - scale.log().sum(-1)
        return (rec + kl).mean()


class ReferenceTrainer:
    """The loop a user writes: index a batch, binarize it, forward, backward, Adam."""

    name = "reference"

    def __init__(self, s: Shapes, data: torch.Tensor, weights: dict, seed: int) -> None:
        self.model = HandVAE(s)
        self.model.load_state_dict(weights)
        self.opt = torch.optim.Adam(self.model.parameters(), lr=s.lr)
        self.data, self.order = data, EpochOrder(data.shape[0], s.batch, seed)
        self.losses: list[float] = []

    def run(self, steps: int) -> None:
        model, opt = self.model, self.opt
        for _ in range(steps):
            x = torch.bernoulli(self.data[self.order.next()])
            loss = model(x)
            opt.zero_grad()
            loss.backward()
            opt.step()
            self.losses.append(loss.item())


class GemmFloor:
    """Only the matrix products of one training step, with nn.Linear's shapes and transposes.

    Forward: addmm(b, input, W.t()) for the four layers. Backward: grad_input = grad @ W for
    every layer but the first (x needs no gradient), grad_W = grad.t() @ input for all four.
    Everything else (activations, loss, noise, optimizer, data) is left out, so the
    samples/s it reaches is a cap on any implementation that uses these products.
    """

    name = "gemm_floor"

    def __init__(self, s: Shapes, data: torch.Tensor, weights: dict, seed: int) -> None:
        g = torch.Generator().manual_seed(seed)
        B = s.batch
        self.w = {k: v.clone() for k, v in weights.items()}
        self.x = torch.bernoulli(data[:B], generator=g)
        r = lambda *shape: torch.randn(*shape, generator=g)  # noqa: E731
        self.h1, self.z, self.h2 = r(B, s.hidden), r(B, s.latent), r(B, s.hidden)
        self.g_out, self.g_h2, self.g_head, self.g_h1 = (r(B, s.data_dim), r(B, s.hidden),
                                                         r(B, 2 * s.latent), r(B, s.hidden))
        self.losses: list[float] = []

    def run(self, steps: int) -> None:
        w, x, h1, z, h2 = self.w, self.x, self.h1, self.z, self.h2
        g4, g3, g2, g1 = self.g_out, self.g_h2, self.g_head, self.g_h1
        for _ in range(steps):
            torch.addmm(w["enc1.bias"], x, w["enc1.weight"].t())
            torch.addmm(w["enc2.bias"], h1, w["enc2.weight"].t())
            torch.addmm(w["dec1.bias"], z, w["dec1.weight"].t())
            torch.addmm(w["dec2.bias"], h2, w["dec2.weight"].t())
            g4.mm(w["dec2.weight"])
            g4.t().mm(h2)
            g3.mm(w["dec1.weight"])
            g3.t().mm(z)
            g2.mm(w["enc2.weight"])
            g2.t().mm(h1)
            g1.t().mm(x)

    @staticmethod
    def flops(s: Shapes) -> int:
        B, D, H, L = s.batch, s.data_dim, s.hidden, s.latent
        fwd = B * (D * H + H * 2 * L + L * H + H * D)
        bwd = B * (H * D * 2 + L * H * 2 + 2 * L * H * 2 + H * D)
        return 2 * (fwd + bwd)


@torch.no_grad()
def reference_log_likelihood(model: HandVAE, x: torch.Tensor, k: int) -> torch.Tensor:
    """The importance-sampling loop written by hand: per data point, k draws from q at once.

    log p̂(x) = logsumexp_i [log p(x|z_i) + log p(z_i) − log q(z_i|x)] − log k; → [P].
    """
    out = []
    prior = Normal(0.0, 1.0)
    for xi in x:
        loc, scale = model.encode(xi)
        z = loc + scale * torch.randn(k, loc.shape[-1])
        logits = model.decode(z)
        log_px = -F.binary_cross_entropy_with_logits(
            logits, xi.expand_as(logits), reduction="none").sum(-1)
        log_w = log_px + prior.log_prob(z).sum(-1) - Normal(loc, scale).log_prob(z).sum(-1)
        out.append(torch.logsumexp(log_w, 0) - math.log(k))
    return torch.stack(out)


@torch.no_grad()
def decoder_gemm_floor(model: HandVAE, x: torch.Tensor, k: int, rows: int = 4096) -> torch.Tensor:
    """Only the decoder's two matrix products for k samples of each point of x, in blocks.

    Every importance-sampling estimator of log p(x) decodes k·P latent samples, so the time of
    these products alone, addmm(b1, z, W1ᵀ) then addmm(b2, h, W2ᵀ) on [rows, L] and [rows, H]
    blocks (random inputs, preallocated), caps the points/s any implementation can reach at
    this k on this machine. Returns NaN per point (there is no estimate).
    """
    total = k * x.shape[0]
    s = model.s
    g = torch.Generator().manual_seed(0)
    z = torch.randn(min(rows, total), s.latent, generator=g)
    h = torch.randn(min(rows, total), s.hidden, generator=g).relu_()
    out1 = torch.empty(z.shape[0], s.hidden)
    out2 = torch.empty(z.shape[0], s.data_dim)
    w1, b1 = model.dec1.weight, model.dec1.bias
    w2, b2 = model.dec2.weight, model.dec2.bias
    for start in range(0, total, rows):
        n = min(rows, total - start)
        torch.addmm(b1, z[:n], w1.t(), out=out1[:n])
        torch.addmm(b2, h[:n], w2.t(), out=out2[:n])
    return torch.full((x.shape[0],), math.nan)
