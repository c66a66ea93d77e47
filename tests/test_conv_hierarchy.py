"""vaelab.model.conv_hierarchy: the convolutional two-layer HVAE (``--net conv --hierarchy
top-down``) — its shapes, that the decoder reads z1 and z2 and q(z1 | x, z2) reads z2, its ELBO
against an independent float64 recomputation from its parts (standard-normal and VampPrior
top), bit-exact resume and a short training on real images."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.special import log_expit, logsumexp

import vaelab
from vaelab import data
from vaelab.config import ModelConfig
from vaelab.fit import runs
from vaelab.fit.train import train
from vaelab.infer.objectives import elbo
from vaelab.model import conv_hierarchy
from vaelab.model.top_down import SkipDecoder, TopDownEncoder
from vaelab.model.vae import build_vae

pytestmark = pytest.mark.usefixtures("one_thread")

SHAPE = (1, 9, 7)             # odd sizes: the stride-2 stages round up (9 → 5 → 3, 7 → 4 → 2)
D = 9 * 7


def tiny(prior: str = "standard_normal", gated: bool = True, seed: int = 0):
    torch.manual_seed(seed)
    config = ModelConfig(data_dim=D, image_shape=SHAPE, latent_dim=(3, 2), net="conv",
                         hierarchy="top-down", data_kind="binary", prior=prior,
                         net_options={"channels": (4, 5), "width": 6, "gated": gated},
                         prior_options={"components": 3} if prior == "vamp" else {})
    return build_vae(config)


def images(n: int = 4, seed: int = 1) -> torch.Tensor:
    return torch.bernoulli(torch.full((n, D), 0.4), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("gated", [True, False])
def test_shapes_of_every_part(gated):
    model, x = tiny(gated=gated), images()
    assert isinstance(model.encoder, TopDownEncoder) and isinstance(model.decoder, SkipDecoder)
    assert isinstance(model.encoder.lower[0], conv_hierarchy.ConvLowerNet)
    features = model.encoder.top.features
    assert features.out_features == conv_hierarchy.FEATURE_CHANNELS * 3 * 2
    assert features(x).shape == (4, features.out_features)
    q = model.encode(x)
    assert q.batch_shape == (4,) and q.event_shape == (5,)
    z = q.rsample((7,))
    assert z.shape == (7, 4, 5)
    assert model.decoder.net(z).shape == (7, 4, D)
    assert model.decode(z).log_prob(x).shape == (7, 4)
    assert model.log_joint(x, z).shape == (7, 4)
    assert model.sample(3).shape == (3, D)


def test_the_reference_sizes_give_294_features_for_28_by_28_images():
    net = conv_hierarchy.ConvFeatures((1, 28, 28), (32, 64), (7, 5), True, "relu")
    assert net.out_features == 294                   # 6 maps of 7 × 7, as the reference's h_size
    assert net(torch.zeros(2, 784)).shape == (2, 294)


def test_gated_conv_is_the_formula():
    unit = conv_hierarchy.GatedConv2d(2, 3, 3)
    x = torch.randn(2, 2, 5, 4)
    w, b = unit.conv.weight, unit.conv.bias
    h = torch.nn.functional.conv2d(x, w[:3], b[:3], padding=1)
    g = torch.nn.functional.conv2d(x, w[3:], b[3:], padding=1)
    torch.testing.assert_close(unit(x), h * torch.sigmoid(g))


def test_the_decoder_reads_both_layers():
    model, x = tiny(), images()
    z = model.encode(x).rsample((2,)).detach().requires_grad_(True)
    model.decode(z).log_prob(x).sum().backward()
    grad = z.grad.abs().sum(dim=(0, 1))              # per latent unit: z1 = [:3], z2 = [3:]
    assert (grad > 1e-6).all(), grad


def test_the_decoder_in_pieces_equals_it_whole(monkeypatch):
    model = tiny()
    z = torch.randn(3, 5, 5)                           # 15 images
    with torch.no_grad():
        whole = model.decoder.net(z)
        monkeypatch.setattr(conv_hierarchy, "DECODER_PIECE", 4)
        torch.testing.assert_close(model.decoder.net(z), whole)


def test_q_of_z1_reads_z2_and_computes_x_once_per_image():
    model, x = tiny(), images()
    lower = model.encoder.lower[0]
    above = torch.randn(6, 4, 2, requires_grad=True)  # six draws of z2 per image
    raw = lower(x, above)
    raw.sum().backward()
    assert raw.shape == (6, 4, 6) and (above.grad.abs().sum(dim=(0, 1)) > 1e-6).all()
    # x's features broadcast over the draws equal the net run on each draw by itself
    with torch.no_grad():
        each = torch.stack([lower(x, above[j]) for j in range(6)])
    torch.testing.assert_close(raw.detach(), each)
    # and through the encoder: q(z1 | x, z2) moves when z2 does
    q = model.encode(x)
    z = q.rsample().detach()
    moved = z.clone()
    moved[:, 3:] += 1.0
    assert not torch.allclose(q.layer_log_probs(z)[0], q.layer_log_probs(moved)[0])


def _normal_log_pdf(z: np.ndarray, raw: np.ndarray, min_scale: float) -> np.ndarray:
    """Σ log N(z; loc, (softplus(raw σ) + min_scale)²) over the last axis, numpy float64."""
    loc, raw_scale = np.split(raw, 2, axis=-1)
    scale = np.logaddexp(0.0, raw_scale) + min_scale
    return (-0.5 * ((z - loc) / scale) ** 2 - np.log(scale) - 0.5 * math.log(2 * math.pi)).sum(-1)


@pytest.mark.parametrize("prior", ["standard_normal", "vamp"])
def test_elbo_equals_its_parts_recomputed_in_float64(prior):
    model, x = tiny(prior), images()
    model = model.double()
    x = x.double()
    torch.manual_seed(5)
    q = model.encode(x)
    got = elbo(model, q, x, num_samples=1)                     # [B], one draw
    torch.manual_seed(5)
    z = q.rsample((1,))[0].detach()                            # the same draw
    n = lambda t: t.detach().numpy()                           # noqa: E731
    z1, z2 = n(z[:, :3]), n(z[:, 3:])
    enc, min_q = model.encoder, model.encoder.min_scale
    log_q2 = _normal_log_pdf(z2, n(enc.top(x)), min_q)
    log_q1 = _normal_log_pdf(z1, n(enc.lower[0](x, z[:, 3:])), min_q)
    cond = model.conditionals[0]
    log_p1 = _normal_log_pdf(z1, n(cond.net(z[:, 3:])), cond.min_scale)
    if prior == "vamp":                                        # (1/K) Σ_k q(z2 | u_k)
        u = model.top_prior.pseudo_inputs
        raws = n(enc.top(u))                                   # [K, 4]
        per_k = np.stack([_normal_log_pdf(z2, r[None], min_q) for r in raws])
        log_p2 = logsumexp(per_k, axis=0) - math.log(len(raws))
    else:
        log_p2 = (-0.5 * z2**2 - 0.5 * math.log(2 * math.pi)).sum(-1)
    logits, xs = n(model.decoder.net(z)), n(x)
    log_px = (xs * log_expit(logits) + (1 - xs) * log_expit(-logits)).sum(-1)
    expected = log_px + log_p1 + log_p2 - log_q1 - log_q2
    np.testing.assert_allclose(n(got), expected, rtol=1e-10, atol=1e-9)


def test_a_hierarchy_the_conv_nets_do_not_build_is_one_line():
    config = ModelConfig(data_dim=D, image_shape=SHAPE, latent_dim=(3, 2), net="conv",
                         hierarchy="ladder")
    with pytest.raises(ValueError, match=r"--hierarchy.*--net conv.*'top-down'.*'ladder'"):
        build_vae(config)
    with pytest.raises(ValueError, match="--gated"):             # one layer: residual nets
        build_vae(ModelConfig(data_dim=D, image_shape=SHAPE, latent_dim=2, net="conv",
                              net_options={"gated": True}))
    with pytest.raises(ValueError, match="--net conv"):          # no image shape
        build_vae(ModelConfig(data_dim=D, latent_dim=(3, 2), net="conv", hierarchy="top-down"))


# --------------------------------------------------------------------------- training


@pytest.fixture(scope="module")
def small_images() -> data.Dataset:
    """240 Fashion-MNIST images pooled to 14 × 14 (grey levels in [0, 1]: binarized per epoch)."""
    full = data.load_dataset("fashion-mnist", "train", limit=240)
    x = torch.nn.functional.avg_pool2d(full.x.reshape(-1, 1, 28, 28), 2).reshape(-1, 196)
    return data.Dataset(x, None, (1, 14, 14), "small-fashion", "unit-interval")


CONFIG = {"model": {"latent_dim": [4, 3], "hierarchy": "top-down", "net": "conv",
                    "conv_channels": [4, 6], "conv_width": 16, "gated": True},
          "train": {"epochs": 3, "batch_size": 40, "val_fraction": 0.25, "lr": 3e-3,
                    "binarize": "dynamic", "ema_decay": 0.9, "kl_warmup_epochs": 1.0}}


def test_a_short_training_raises_the_validation_bound(small_images, tmp_path):
    config = {"model": CONFIG["model"], "train": {**CONFIG["train"], "epochs": 6}}
    result = train(config, tmp_path / "run", dataset=small_images, log=None)
    bounds = [row["val_elbo"] for row in result.metrics]
    assert all(math.isfinite(b) for b in bounds)
    assert bounds[-1] > bounds[0] + 5.0, bounds                 # nats per 196-pixel image


class _Stop(Exception):
    pass


def test_save_load_and_resume_are_bit_exact(small_images, tmp_path):
    straight = train(CONFIG, tmp_path / "straight", dataset=small_images, log=None)

    def stop_after_two(line: str) -> None:
        if line.startswith("epoch 2/"):
            raise _Stop

    with pytest.raises(_Stop):
        train(CONFIG, tmp_path / "resumed", dataset=small_images, log=stop_after_two)
    assert len(runs.read_metrics(tmp_path / "resumed")) == 2
    resumed = train(CONFIG, tmp_path / "resumed", dataset=small_images, resume=True, log=None)
    a, b = straight.model.state_dict(), resumed.model.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    untimed = [{k: v for k, v in row.items() if k not in ("seconds", "samples_per_s")}
               for row in (*straight.metrics, *resumed.metrics)]
    assert untimed[:3] == untimed[3:]
    loaded = vaelab.load(tmp_path / "straight").model          # from the run directory
    c = loaded.state_dict()
    assert c.keys() == a.keys() and all(torch.equal(c[k], a[k]) for k in a)
    x = small_images.x[:5].round()
    torch.manual_seed(0)
    want = elbo(straight.model.eval(), straight.model.encode(x), x)
    torch.manual_seed(0)
    torch.testing.assert_close(elbo(loaded, loaded.encode(x), x), want, rtol=0, atol=0)


def test_the_command_line_builds_it_from_the_catalogue_flags(tmp_path, capsys):
    from conftest import run_cli

    flags = ["--net", "conv", "--hierarchy", "top-down", "--latent-dim", "3,2", "--gated",
             "--conv-channels", "2,3", "--conv-width", "8", "--limit", "60", "--epochs", "1",
             "--quiet"]
    code, _, err = run_cli(capsys, "train", *flags, "--out", tmp_path / "run")
    assert code == 0, err
    config = runs.read_config(tmp_path / "run").model
    assert config.net_options == {"channels": (2, 3), "activation": "relu", "gated": True,
                                  "width": 8}
    model = vaelab.load(tmp_path / "run").model
    assert isinstance(model.encoder.lower[0], conv_hierarchy.ConvLowerNet)
    assert model.decoder.net.paths[0].out_features == 8
    code, _, err = run_cli(capsys, "train", *flags[:2], "--latent-dim", "3", "--gated",
                           "--limit", "60", "--epochs", "1", "--out", tmp_path / "one")
    assert code != 0 and "--gated" in err and len(err.strip().splitlines()) == 1
