"""Importance log-weights of the standard VAE on plain tensors: the hot path of evaluation.

For the VAE of Kingma & Welling (2014) with prior p(z) = N(0, I), a Bernoulli decoder whose
net is a ``vaelab.model.nets.MLP`` with logits l = W h + b (h the last hidden activation), and
q(z | x) = N(loc, diag scale²) (``vaelab.model.families.DiagonalNormal``), the importance
log-weights of Burda, Grosse & Salakhutdinov (2016)

    log w_i = log p(x | z_i) + log p(z_i) − log q(z_i | x),   z_i = loc + scale ⊙ ε_i,

are the numbers ``objectives.log_weights`` computes through torch.distributions, computed here
on plain tensors:

* ε [k, B, L] ~ N(0, I) is drawn exactly as ``Normal.rsample`` draws it
  (``torch.empty(shape).normal_()``), so with the same seed z is the same tensor;
* log p(z) − log q(z | x) = Σ_l (ε_l² − z_l²)/2 + Σ_l log scale_l (the 2π terms cancel);
* log p(x | z) = Σ_d x_d l_d − softplus(l_d) = Σ_d (x_d − ½) l_d − (softplus(l_d) − l_d/2),
  where Σ_d (x_d − ½) l_d = h·(Wᵀ(x − ½)) + b·(x − ½) uses Wᵀ(x − ½) [B, H] and b·(x − ½) [B]
  formed once per data point, and softplus(l) − l/2 = |l|/2 + log(1 + e^{−|l|}) is even in
  l, so the [rows, D] logits are only read by :func:`half_centred_softplus_sum` (in place:
  |l|, its sum, σ(|l|) and group products, four passes);
* the k·B rows go through the decoder in blocks of about :data:`ROW_BLOCK` rows, so the
  [rows, H] and [rows, D] temporaries stay in cache; without autograd, memory is z and ε
  [k, B, L] plus one block, never [k, B, D]; on a GPU the blocks are
  :data:`ACCELERATOR_ROW_BLOCK` rows, few enough launches to keep it busy.

Only the hidden layers run as modules (any depth, width and activation); the last Linear is
applied by hand. Everything is differentiable, so ``iwae_bound`` takes this path too. These are
log-densities written by hand, the one exception to "torch.distributions is the currency":
tests/test_fast_log_weights.py holds them to the generic path (same seed, same numbers and
gradients) and to exact log p(x) by quadrature.
"""

from __future__ import annotations

import math
from typing import cast

import torch
import torch.nn.functional as F
from torch import nn
from torch.distributions import Distribution, Independent, Normal

from vaelab.model import likelihoods, nets, priors
from vaelab.model import vae as models

#: Decoder rows (samples × data points) per block. For the 784-400-20 model in float32 on a
#: 2-core CPU, 512, 1024 and 2048 rows ran alike (the [1024, 784] logits are 3.2 MB, inside the
#: 8 MB L3), 256 rows 5% slower, one block for a whole 21k-row chunk 15% slower.
ROW_BLOCK = 1024

#: On a GPU the blocks are about kernel launches, not cache: 1024-row blocks cost some 6,000
#: launches for 6 ms of GPU work per 100 points at k = 5000, so there one block holds a whole
#: evaluation chunk (65,536 rows: [65536, 784] float32 logits are 205 MB).
ACCELERATOR_ROW_BLOCK = 1 << 16


def row_block(device: torch.device) -> int:
    """Decoder rows per block on ``device``: cache-sized on the CPU, launch-sized elsewhere."""
    return ROW_BLOCK if device.type == "cpu" else ACCELERATOR_ROW_BLOCK

#: Methods a model may override per instance (as tests do); then the generic path must run.
_PROTOCOL = ("prior", "decode", "log_joint")


def applies(model: object, q: Distribution, x: torch.Tensor) -> bool:
    """True when (model, q, x) is the standard VAE case this module computes exactly.

    Model: exactly ``models.VAE`` with a ``priors.StandardNormal`` prior, a ``models.Decoder``
    with a ``likelihoods.Bernoulli`` likelihood and a ``nets.MLP`` net ending in ``nn.Linear``;
    q: exactly ``Independent(Normal, 1)``; x [B, D] of q's dtype and device.
    """
    if type(model) is not models.VAE or any(name in vars(model) for name in _PROTOCOL):
        return False
    if nets.has_hooks(model.decoder):       # the last Linear runs by hand: hooks would be missed
        return False
    decoder = model.decoder
    if (type(model.prior_module) is not priors.StandardNormal
            or type(decoder) is not models.Decoder
            or type(decoder.likelihood) is not likelihoods.Bernoulli
            or type(decoder.net) is not nets.MLP or type(decoder.net[-1]) is not nn.Linear):
        return False
    if (type(q) is not Independent or type(q.base_dist) is not Normal
            or q.reinterpreted_batch_ndims != 1):
        return False
    loc, out = q.base_dist.loc, decoder.net[-1]
    return (isinstance(x, torch.Tensor) and x.dim() == 2 and loc.dim() == 2
            and loc.shape[0] == x.shape[0] and x.shape[1] == out.out_features
            and loc.dtype == x.dtype == out.weight.dtype
            and loc.device == x.device == out.weight.device)


def log_weights(model: models.VAE, q: Independent, x: torch.Tensor,
                num_samples: int) -> torch.Tensor:
    """log p(x, z_i) − log q(z_i | x) for z_i ~ q, i < k; x [B, D] → [k, B].

    Call only when :func:`applies` holds; the maths is in the module docstring.
    """
    loc, scale = q.base_dist.loc, q.base_dist.scale                      # [B, L]
    eps = torch.empty((num_samples, *loc.shape), dtype=loc.dtype, device=loc.device).normal_()
    z = loc + eps * scale                                                # [k, B, L]
    log_prior_ratio = 0.5 * (eps.square() - z.square()).sum(-1) + scale.log().sum(-1)
    return log_prior_ratio + _log_likelihood(cast(nets.MLP, model.decoder.net), x, z)


def _log_likelihood(net: nets.MLP, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """log p(x | z) = Σ_d x_d l_d − softplus(l_d) for the Bernoulli MLP decoder; → [k, B].

    x [B, D], z [k, B, L]; blocks of c samples × b points (c·b ≈ :func:`row_block` rows).
    """
    *hidden, last = net
    out = cast(nn.Linear, last)              # an MLP ends in a linear layer
    centred = x - 0.5
    x_weight, x_bias = centred @ out.weight, centred @ out.bias         # [B, H], [B]
    k, batch = z.shape[:2]
    block = row_block(z.device)
    b = min(batch, block)
    c = max(1, block // b)
    rows = []
    for i in range(0, k, c):
        cols = []
        for j in range(0, batch, b):
            z_block = z[i:i + c, j:j + b]                                # [c, b, L]
            h = z_block.reshape(-1, z.shape[-1])
            for layer in hidden:
                h = layer(h)                                             # [c·b, H]
            logits = torch.addmm(out.bias, h, out.weight.t())           # [c·b, D]
            h = h.view(*z_block.shape[:2], -1)
            x_dot_logits = (h * x_weight[j:j + b]).sum(-1) + x_bias[j:j + b]
            cols.append(x_dot_logits - half_centred_softplus_sum(logits).view(h.shape[:2]))
        rows.append(cols[0] if len(cols) == 1 else torch.cat(cols, 1))
    return rows[0] if len(rows) == 1 else torch.cat(rows, 0)


def half_centred_softplus_sum(logits: torch.Tensor) -> torch.Tensor:
    """Σ_d softplus(l_d) − l_d/2 over the last dimension, exactly; logits [..., D] → [...].
    Overwrites ``logits`` (a temporary of the caller) unless autograd records.

    softplus(l) − l/2 = log(2 cosh(l/2)) = |l|/2 − log σ(|l|), and Σ_d log σ(|l_d|) is the log
    of products of factors in [½, 1): |l| in place, its sum, σ in place, the products (by
    halving the columns in place), one log per product — about four passes over the logits
    where a sum of softplus values by groups of factors makes seven (and two allocations),
    which on the evaluation's [1024, 784] blocks was most of the time beyond the matrix
    product. A product of G ≤ log2(finfo.max)/2 factors is at least 2^−G, far from
    underflow. Rounding: each factor σ(|l|) = 1/(1 + e^{−|l|}) carries relative error ≲ 2u,
    the G − 1 products add ≲ (G − 1)u and the log ≲ u·G·ln 2, so the absolute error stays
    ≈ 3.7·D·u beyond the rounding of the final sums (1.7e-4 for D = 784 in float32). When
    autograd records, returns Σ −logsigmoid(−l) − l/2 instead.
    """
    if logits.requires_grad and torch.is_grad_enabled():
        return (-F.logsigmoid(-logits) - 0.5 * logits).sum(-1)
    magnitude = logits.abs_()
    half_sum = magnitude.sum(-1).mul_(0.5)
    factors = magnitude.sigmoid_()                                      # σ(|l|) in [½, 1)
    # Multiply the columns' second half into their first, in place, while every column
    # holds at most `limit` factors (an odd last column goes into column 0 first): half a
    # pass each, about one pass in all, where a product over groups was a slow reduction.
    limit = int(math.log2(torch.finfo(logits.dtype).max)) // 2          # 64 in float32
    width, count = logits.shape[-1], 1
    while width > 1:
        odd = width % 2
        grown = (3 if odd else 2) * count
        if grown > limit:
            break
        if odd:
            factors[..., 0].mul_(factors[..., width - 1])
        half = width // 2
        factors[..., :half].mul_(factors[..., half:2 * half])
        width, count = half, grown
    return half_sum - factors[..., :width].log().sum(-1)


def _group_size(size: int, dtype: torch.dtype) -> int:
    """Factors per product: ≤ log2(max)/2 (64 in float32), balanced over ⌈size / that⌉ groups."""
    limit = int(math.log2(torch.finfo(dtype).max)) // 2                # 2^limit ≪ max
    groups = -(-size // limit)
    return -(-size // groups)
