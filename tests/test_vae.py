"""VAE.sample draws z from the prior itself: what reaches the decoder has the prior's moments."""

from __future__ import annotations

import math

import pytest
import torch

from vaelab.config import ModelConfig
from vaelab.model.vae import build_vae


@pytest.mark.parametrize("seeded", [False, True])
def test_sample_feeds_the_decoder_standard_normal_draws(seeded):
    """Over 20,000 draws the decoder's input z has mean 0 and variance 1 in every coordinate
    (within 4 standard errors: √(1/n) and √(2/n)), and its coordinates are uncorrelated."""
    model = build_vae(ModelConfig(data_dim=6, latent_dim=4, hidden=(8,)))
    seen = []
    model.decoder.register_forward_pre_hook(lambda module, args: seen.append(args[0].detach()))
    n = 20000
    generator = torch.Generator().manual_seed(3) if seeded else None
    with torch.no_grad():
        x = model.sample(n, generator=generator)
        means = model.sample(n, mean=True, generator=generator)
    assert x.shape == means.shape == (n, 6) and len(seen) == 2
    for z in seen:
        z = z.double()
        assert z.shape == (n, 4)
        assert bool((z.mean(0).abs() < 4 * math.sqrt(1 / n)).all()), z.mean(0)
        assert bool(((z.var(0) - 1).abs() < 4 * math.sqrt(2 / n)).all()), z.var(0)
        corr = torch.corrcoef(z.T) - torch.eye(4, dtype=z.dtype)
        assert float(corr.abs().max()) < 4 / math.sqrt(n)


def test_a_hierarchy_refuses_log_variance_bounds_it_would_ignore():
    config = ModelConfig(data_dim=6, latent_dim=(3, 2), hidden=(5,),
                         family_options={"max_logvar": 2.0})
    with pytest.raises(ValueError, match=r"family_options.max_logvar \(--q-max-logvar\): "
                                         r"bounds the log-variance of a one-layer"):
        build_vae(config)
    assert build_vae(ModelConfig(data_dim=6, latent_dim=(3, 2), hidden=(5,))) is not None
