"""VAE, Encoder, Decoder, build_vae and the MLP block: shapes, wiring and errors.

The probabilistic pieces are tested in test_contracts; here the model is checked to compose
them as p(x, z) = p(z) p(x | z) for every configuration choice.
"""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from torch import nn

import vaelab
from vaelab.config import ModelConfig
from vaelab.model import families, likelihoods, nets, priors
from vaelab.model.vae import Decoder, Encoder

DATA, LATENT, BATCH = 6, 3, 4

CONFIGS = [
    dict(likelihood=lik, gaussian_scale=scale, prior=prior, family=family)
    for lik, scale, prior, family in itertools.product(
        ("bernoulli", "gaussian"), ("network", "learned", "fixed"),
        ("standard_normal", "learned_normal"), ("diagonal_normal", "full_covariance_normal"))
    if lik == "gaussian" or scale == "network"
]


def _id(choice: dict) -> str:
    return "-".join(str(v) for v in choice.values())


def _data(config: ModelConfig, n: int = BATCH) -> torch.Tensor:
    return torch.rand(n, DATA) if config.likelihood == "bernoulli" else torch.randn(n, DATA)


@pytest.fixture(params=CONFIGS, ids=[_id(c) for c in CONFIGS])
def config(request) -> ModelConfig:
    return ModelConfig(data_dim=DATA, latent_dim=LATENT, hidden=(8, 5), **request.param)


def test_build_vae_wires_every_config_choice(config):
    model = vaelab.build_vae(config)
    assert model.config == config
    assert model.data_dim == DATA and model.latent_dim == LATENT
    assert isinstance(model.prior_module, priors.PRIORS[config.prior])
    assert isinstance(model.encoder.family, families.FAMILIES[config.family])
    lik = model.decoder.likelihood
    assert isinstance(lik, likelihoods.LIKELIHOODS[config.likelihood])
    if config.likelihood == "gaussian":
        assert lik.scale_mode == config.gaussian_scale and lik.min_scale == config.min_scale
    enc_sizes = [m.out_features for m in model.encoder.net if isinstance(m, nn.Linear)]
    dec_sizes = [m.out_features for m in model.decoder.net if isinstance(m, nn.Linear)]
    assert enc_sizes == [8, 5, model.encoder.family.param_size]
    assert dec_sizes == [5, 8, DATA * lik.params_per_dim]


def test_vae_encode_sample_reconstruct_shapes(config):
    model = vaelab.build_vae(config)
    x = _data(config)
    q = model.encode(x)
    assert q.batch_shape == (BATCH,) and q.event_shape == (LATENT,)
    assert model.sample(7).shape == (7, DATA)
    assert model.sample(7, mean=True).shape == (7, DATA)
    assert model.reconstruct(x).shape == (BATCH, DATA)
    for bound in (vaelab.elbo(model, q, x, 3), vaelab.iwae_bound(model, q, x, 3),
                  vaelab.log_likelihood(model, q, x, 3).log_likelihood):
        assert bound.shape == (BATCH,) and bool(torch.isfinite(bound).all())


def test_vae_log_joint_is_prior_plus_likelihood(config):
    model = vaelab.build_vae(config)
    x = _data(config)
    z = torch.randn(2, BATCH, LATENT)
    want = model.prior_module().log_prob(z) + model.decoder.likelihood(
        model.decoder.net(z)).log_prob(x)
    torch.testing.assert_close(model.log_joint(x, z), want)
    assert model.log_joint(x, z).shape == (2, BATCH)


def test_vae_elbo_gradients_reach_all_parameters(config):
    model = vaelab.build_vae(config)
    x = _data(config)
    loss = -vaelab.elbo(model, model.encode(x), x, 2).sum()
    params = [p for p in model.parameters() if p.requires_grad]
    grads = torch.autograd.grad(loss, params)
    assert all(bool(torch.isfinite(g).all()) and g.abs().sum() > 0 for g in grads)


def test_generative_parameters_are_prior_and_decoder_only():
    model = vaelab.build_vae(ModelConfig(data_dim=DATA, latent_dim=LATENT, hidden=(8,),
                                         likelihood="gaussian", gaussian_scale="learned",
                                         prior="learned_normal"))
    theta = {id(p) for p in model.generative_parameters()}
    assert theta == {id(p) for p in [*model.prior_module.parameters(),
                                     *model.decoder.parameters()]}
    assert not theta & {id(p) for p in model.encoder.parameters()}
    assert len(theta) == len(model.generative_parameters())


def test_sample_with_generator_is_reproducible_and_leaves_global_rng_alone():
    model = vaelab.build_vae(ModelConfig(data_dim=DATA, latent_dim=LATENT, hidden=(8,)))
    state = torch.get_rng_state()
    a = model.sample(5, generator=torch.Generator().manual_seed(1))
    b = model.sample(5, generator=torch.Generator().manual_seed(1))
    c = model.sample(5, generator=torch.Generator().manual_seed(2))
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert set(a.unique().tolist()) <= {0.0, 1.0}                 # Bernoulli draws


def test_sample_mean_is_the_decoder_mean_at_prior_draws():
    model = vaelab.build_vae(ModelConfig(data_dim=DATA, latent_dim=LATENT, hidden=(8,)))
    means = model.sample(5, mean=True, generator=torch.Generator().manual_seed(3))
    assert bool(((means > 0) & (means < 1)).all())                # probabilities, not draws


def test_reconstruct_decodes_the_encoder_mean():
    model = vaelab.build_vae(ModelConfig(data_dim=DATA, latent_dim=LATENT, hidden=(8,)))
    x = torch.rand(BATCH, DATA)
    want = torch.sigmoid(model.decoder.net(model.encoder(x).mean))
    torch.testing.assert_close(model.reconstruct(x), want)


def test_from_config_equals_build_vae():
    config = ModelConfig(data_dim=DATA, latent_dim=LATENT, hidden=(8,))
    model = vaelab.VAE.from_config(config)
    assert isinstance(model, vaelab.VAE) and model.config == config


def test_encode_validates_its_input_and_needs_an_encoder():
    model = vaelab.build_vae(ModelConfig(data_dim=DATA, latent_dim=LATENT, hidden=(8,)))
    with pytest.raises(ValueError, match=r"x: expected shape \[batch, 6\]"):
        model.encode(torch.rand(BATCH, DATA + 1))
    with pytest.raises(ValueError, match=r"x: the Bernoulli likelihood expects values in \[0, 1\]"):
        model.encode(torch.full((BATCH, DATA), -1.0))
    no_encoder = vaelab.VAE(model.prior_module, model.decoder)
    with pytest.raises(ValueError, match="encoder: this model has no encoder"):
        no_encoder.encode(torch.rand(BATCH, DATA))


def test_vae_rejects_an_encoder_with_another_latent_size():
    prior = priors.StandardNormal(LATENT)
    decoder = Decoder(nets.MLP(LATENT, (8,), DATA), likelihoods.Bernoulli())
    encoder = Encoder(nets.MLP(DATA, (8,), 2 * (LATENT + 1)), families.DiagonalNormal(LATENT + 1))
    with pytest.raises(ValueError, match=r"encoder: expected latent_dim 3 \(the prior's\), got 4"):
        vaelab.VAE(prior, decoder, encoder)


def test_decoder_infers_data_dim_and_rejects_an_indivisible_net():
    gaussian = likelihoods.Gaussian(scale="network")
    assert Decoder(nets.MLP(LATENT, (8,), 2 * DATA), gaussian).data_dim == DATA
    assert Decoder(nets.MLP(LATENT, (8,), DATA), likelihoods.Bernoulli()).data_dim == DATA
    with pytest.raises(ValueError, match="net: expected out_features divisible by 2"):
        Decoder(nets.MLP(LATENT, (8,), 2 * DATA + 1), gaussian)
    opaque = nn.Sequential(nn.Linear(LATENT, DATA))                 # no out_features
    with pytest.raises(ValueError, match="data_dim: expected an integer"):
        Decoder(opaque, likelihoods.Bernoulli())
    assert Decoder(opaque, likelihoods.Bernoulli(), data_dim=DATA).data_dim == DATA


def test_build_vae_needs_a_resolved_data_dim():
    with pytest.raises(ValueError, match="config.data_dim: .*with_data"):
        vaelab.build_vae(ModelConfig(latent_dim=LATENT, hidden=(8,)))
    with pytest.raises(TypeError, match="config: expected a ModelConfig"):
        vaelab.build_vae({"data_dim": DATA})


def test_mlp_shapes_and_errors():
    mlp = nets.MLP(DATA, (8, 5), 3, activation="tanh")
    assert mlp(torch.randn(2, BATCH, DATA)).shape == (2, BATCH, 3)
    assert isinstance(mlp[-1], nn.Linear)                          # last layer linear
    assert sum(isinstance(m, nn.Tanh) for m in mlp) == 2
    assert nets.MLP(DATA, (), 3)(torch.randn(BATCH, DATA)).shape == (BATCH, 3)
    with pytest.raises(ValueError, match="activation: expected one of"):
        nets.MLP(DATA, (8,), 3, activation="swishy")
    with pytest.raises(ValueError, match="hidden: expected an integer >= 1"):
        nets.MLP(DATA, (8, 0), 3)
    with pytest.raises(TypeError, match="in_features"):
        nets.MLP(None, (8,), 3)


def test_model_follows_dtype_for_float64_work():
    model = vaelab.build_vae(ModelConfig(data_dim=DATA, latent_dim=LATENT, hidden=(8,),
                                         likelihood="gaussian", prior="learned_normal",
                                         family="full_covariance_normal")).double()
    x = torch.randn(BATCH, DATA, dtype=torch.float64)
    value = vaelab.elbo(model, model.encode(x), x, 2)
    assert value.dtype == torch.float64
    assert model.sample(3).dtype == torch.float64
    assert math.isfinite(value.sum().item())
