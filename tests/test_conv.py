"""Convolutional encoder/decoder: shapes for any (C, H, W), odd sizes
included; the decoder's parameter-major output layout; residual blocks; --net conv wiring."""

from __future__ import annotations

import math

import pytest
import torch

from vaelab.config import ModelConfig
from vaelab.infer.objectives import elbo
from vaelab.model import nets
from vaelab.model.vae import build_vae

pytestmark = pytest.mark.usefixtures("one_thread")   # small tensors, shared cores

SHAPES = [(1, 28, 28), (3, 32, 32), (3, 17, 13), (1, 5, 9), (3, 1, 1), (1, 2, 3)]


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("channels", [(4,), (4, 8), (3, 5, 6)])
def test_encoder_and_decoder_shapes_for_any_size(shape, channels):
    c, h, w = shape
    enc = nets.ConvEncoder(shape, channels, 10)
    dec = nets.ConvDecoder(6, shape, channels, params_per_dim=3)
    x = torch.rand(2, 5, c * h * w)
    assert enc(x).shape == (2, 5, 10)
    z = torch.randn(4, 2, 5, 6)
    assert dec(z).shape == (4, 2, 5, 3 * c * h * w)
    assert (dec.in_features, dec.out_features) == (6, 3 * c * h * w)


def test_halvings_round_up_for_odd_sizes():
    assert nets._halvings((17, 13), 3) == [(17, 13), (9, 7), (5, 4), (3, 2)]
    assert nets._halvings((1, 1), 2) == [(1, 1), (1, 1), (1, 1)]


def test_decoder_output_is_parameter_major():
    """Output [..., P·C·H·W] reads as [P, C, H, W]: channel p·C + c of the last conv."""
    c, p = 3, 2
    dec = nets.ConvDecoder(4, (c, 5, 7), (4,), params_per_dim=p)
    with torch.no_grad():
        dec.out.weight.zero_()
        dec.out.bias.copy_(torch.arange(p * c, dtype=torch.float32))
    out = dec(torch.randn(2, 4)).view(2, p, c, 5, 7)
    for i in range(p):
        for j in range(c):
            assert torch.all(out[:, i, j] == i * c + j)


def test_encoder_reads_rows_in_chw_order():
    """A single pixel (c, y, x) set in the flat row reaches the stem at that position."""
    enc = nets.ConvEncoder((3, 4, 5), (2,), 1)
    stem = enc.body[0]
    seen = {}
    stem.register_forward_hook(lambda m, i, o: seen.update(input=i[0]) or None)
    x = torch.zeros(1, 60)
    x[0, 2 * 20 + 3 * 5 + 1] = 1.0                    # channel 2, row 3, column 1
    enc(x)
    assert seen["input"].shape == (1, 3, 4, 5) and seen["input"][0, 2, 3, 1] == 1.0
    assert seen["input"].sum() == 1.0


def test_residual_block_is_the_identity_when_its_body_is_zero():
    block = nets.ResidualBlock(3)
    with torch.no_grad():
        for p in block.parameters():
            p.zero_()
    x = torch.randn(2, 3, 5, 5)
    assert torch.equal(block(x), x)


@pytest.mark.parametrize("likelihood", ["bernoulli", "discretized-logistic-mixture",
                                        "gaussian", "continuous-bernoulli"])
def test_conv_vae_computes_a_finite_elbo_and_learns(likelihood):
    torch.manual_seed(0)
    config = ModelConfig(data_dim=3 * 5 * 3, image_shape=(3, 5, 3), latent_dim=2,
                         net="conv", conv_channels=(3, 4), likelihood=likelihood,
                         likelihood_components=2,
                         data_kind="binary" if likelihood == "bernoulli" else "8-bit")
    model = build_vae(config)
    x = torch.randint(0, 256, (4, 45)).float() / 255
    x = x.round() if likelihood == "bernoulli" else x
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    values = []
    for _ in range(12):
        value = elbo(model, model.encode(x), x, num_samples=4).mean()
        values.append(value.item())
        opt.zero_grad()
        (-value).backward()
        opt.step()
    assert all(math.isfinite(v) for v in values)
    assert sum(values[-3:]) / 3 > values[0] + 0.5          # the ELBO (nats per image) rises


def test_conv_needs_an_image_shape_and_says_which_flag():
    with pytest.raises(ValueError, match="--net conv"):
        build_vae(ModelConfig(data_dim=12, net="conv"))


def test_config_validates_the_new_fields():
    with pytest.raises(ValueError, match="net"):
        ModelConfig(net="resnet")
    with pytest.raises(ValueError, match="conv_channels"):
        ModelConfig(conv_channels=())
    with pytest.raises(ValueError, match="likelihood_components"):
        ModelConfig(likelihood_components=0)
    with pytest.raises(ValueError, match="data_kind"):
        ModelConfig(data_kind="grey")
    config = ModelConfig(net="conv", conv_channels=[8, 16], data_kind="8-bit")
    assert config.conv_channels == (8, 16)
    assert ModelConfig.from_dict(config.to_dict()) == config
