"""Peer libraries on the same model, batch and data: pythae's BaseTrainer and get_nll, Pyro SVI.

Each peer is imported lazily; :func:`availability` says which are installed (and why not), so
the benchmark reports a missing peer instead of failing. Peers get their fastest documented
settings (Pyro's validation off, pythae's get_nll under ``torch.no_grad``), so the ratios are
conservative.
"""

from __future__ import annotations

import contextlib
import io
import logging
import tempfile

import torch
import torch.nn.functional as F
from torch import nn

from common import EpochOrder, Shapes


def availability() -> dict[str, str]:
    """{'pythae': version or 'missing: …', 'pyro': …}."""
    out = {}
    for name, module in (("pythae", "pythae"), ("pyro", "pyro")):
        try:
            mod = __import__(module)
            from importlib.metadata import version

            dist = "pyro-ppl" if name == "pyro" else name
            out[name] = getattr(mod, "__version__", None) or version(dist)
        except Exception as exc:  # any import failure means "missing", never a crash
            out[name] = f"missing: {type(exc).__name__}: {exc}"
    return out


def _mlp_parts(s: Shapes, weights: dict) -> tuple[nn.Module, nn.Module]:
    enc = nn.ModuleDict({"enc1": nn.Linear(s.data_dim, s.hidden),
                         "enc2": nn.Linear(s.hidden, 2 * s.latent)})
    dec = nn.ModuleDict({"dec1": nn.Linear(s.latent, s.hidden),
                         "dec2": nn.Linear(s.hidden, s.data_dim)})
    enc.load_state_dict({k: v for k, v in weights.items() if k.startswith("enc")})
    dec.load_state_dict({k: v for k, v in weights.items() if k.startswith("dec")})
    return enc, dec


# --------------------------------------------------------------------------- pythae


def pythae_nets(encoder_net: nn.Module, decoder_net: nn.Module, *, scale: str = "log_var",
                min_scale: float = 0.0):
    """pythae's ``BaseEncoder`` and ``BaseDecoder`` around plain torch networks → (enc, dec).

    encoder_net: x [B, D] → [B, 2L] = [loc, s]. With ``scale="log_var"`` s is pythae's own
    log-variance; with ``scale="softplus"`` s is vaelab's raw scale (σ = softplus(s) +
    min_scale, handed to pythae as log σ²), so the pythae model's q is vaelab's, number for
    number. decoder_net: z [B, L] → Bernoulli logits [B, D]; ``forward`` returns
    sigmoid(logits) as ``reconstruction`` (what pythae's BCE loss and ``get_nll`` read, clamped
    at log 0 = −100 by ``F.binary_cross_entropy``) and ``logits(z)`` gives the logits for an
    exact log p(x | z).
    """
    from pythae.models.base.base_utils import ModelOutput
    from pythae.models.nn import BaseDecoder, BaseEncoder

    if scale not in ("log_var", "softplus"):
        raise ValueError(f"scale: expected 'log_var' or 'softplus', got {scale!r}")

    class Encoder(BaseEncoder):
        def __init__(self):
            BaseEncoder.__init__(self)
            self.net = encoder_net

        def forward(self, x):
            loc, s = self.net(x.reshape(x.shape[0], -1)).chunk(2, dim=-1)
            if scale == "softplus":
                s = 2 * torch.log(F.softplus(s) + min_scale)
            return ModelOutput(embedding=loc, log_covariance=s)

    class Decoder(BaseDecoder):
        def __init__(self):
            BaseDecoder.__init__(self)
            self.net = decoder_net

        def logits(self, z):
            return self.net(z)

        def forward(self, z):
            return ModelOutput(reconstruction=torch.sigmoid(self.net(z)))

    return Encoder(), Decoder()


def build_pythae(s: Shapes, weights: dict):
    """pythae's VAE (its BCE loss, log-variance encoder) with our 784-400-20 MLPs."""
    from pythae.models import VAE, VAEConfig

    enc, dec = _mlp_parts(s, weights)
    encoder, decoder = pythae_nets(nn.Sequential(enc["enc1"], nn.ReLU(), enc["enc2"]),
                                   nn.Sequential(dec["dec1"], nn.ReLU(), dec["dec2"]))
    config = VAEConfig(input_dim=(s.data_dim,), latent_dim=s.latent, reconstruction_loss="bce")
    return VAE(config, encoder=encoder, decoder=decoder)


def pythae_vae_from_vaelab(model):
    """pythae's VAE holding copies of a vaelab VAE's networks: the same q (diagonal Normal,
    vaelab's softplus scale), the same N(0, I) prior and Bernoulli decoder, so its ``get_nll``
    and vaelab's evaluation estimate the same log p(x) with the same proposal."""
    import copy

    from pythae.models import VAE, VAEConfig

    family, lik = model.encoder.family, model.decoder.likelihood
    if (type(family).__name__ != "DiagonalNormal" or lik.name != "bernoulli"
            or type(model.prior_module).__name__ != "StandardNormal"):
        raise ValueError("pythae_vae_from_vaelab: needs a diagonal-Normal q, N(0, I) prior and "
                         f"Bernoulli decoder, got {type(family).__name__}, "
                         f"{type(model.prior_module).__name__}, {lik.name}")
    encoder, decoder = pythae_nets(copy.deepcopy(model.encoder.net),
                                   copy.deepcopy(model.decoder.net), scale="softplus",
                                   min_scale=family.min_scale)
    config = VAEConfig(input_dim=(model.data_dim,), latent_dim=family.latent_dim,
                       reconstruction_loss="bce")
    return VAE(config, encoder=encoder, decoder=decoder).eval()


class PythaeTrainer:
    """pythae's BaseTrainer running its own epoch loop (``train_step``) over N·B examples.

    pythae has no dynamic binarization, so each round's examples are binarized once before
    the timed epoch (a fresh draw per round); that work is not charged to pythae.
    """

    name = "pythae"

    def __init__(self, s: Shapes, data: torch.Tensor, weights: dict, seed: int,
                 device: str = "cpu") -> None:
        from pythae.data.datasets import BaseDataset
        from pythae.trainers import BaseTrainer, BaseTrainerConfig

        _silence_pythae()
        self._dataset = BaseDataset
        self.s, self.data, self.seed = s, data, seed
        self.gen = torch.Generator().manual_seed(seed)
        self.tmp = tempfile.TemporaryDirectory(prefix="bench-pythae-")
        config = BaseTrainerConfig(output_dir=self.tmp.name, learning_rate=s.lr,
                                   per_device_train_batch_size=s.batch, num_epochs=1,
                                   optimizer_cls="Adam", no_cuda=device == "cpu",
                                   seed=seed)
        self.model = build_pythae(s, weights)
        with _quiet():
            self.trainer = BaseTrainer(self.model, self._round_dataset(2),
                                       training_config=config)
            self.trainer.prepare_training()
        self.epoch, self.losses = 0, []

    def _round_dataset(self, steps: int):
        rows = torch.randperm(self.data.shape[0], generator=self.gen)[: steps * self.s.batch]
        x = torch.bernoulli(self.data[rows].cpu(), generator=self.gen)
        return self._dataset(x, torch.zeros(x.shape[0]))

    def prepare(self, steps: int) -> None:
        self.trainer.train_loader = self.trainer.get_train_dataloader(
            self._round_dataset(steps))

    def run(self, steps: int) -> None:
        self.epoch += 1
        with _quiet():
            loss = self.trainer.train_step(self.epoch)
        self.losses.append(float(loss))


# --------------------------------------------------------------------------- Pyro


class PyroTrainer:
    """Pyro SVI with the same model and guide, an ELBO (Trace_ELBO or TraceMeanField_ELBO),
    ``pyro.optim.Adam(lr=1e-3)``; the loss is scaled by 1/B so it is the batch-mean −ELBO."""

    def __init__(self, s: Shapes, data: torch.Tensor, weights: dict, seed: int,
                 elbo: str = "Trace_ELBO", device: str = "cpu") -> None:
        import pyro
        import pyro.distributions as dist
        from pyro import poutine
        from pyro.infer import SVI, Trace_ELBO, TraceMeanField_ELBO

        pyro.enable_validation(False)
        pyro.set_rng_seed(seed)
        self.name = "pyro_" + ("tmf" if elbo == "TraceMeanField_ELBO" else "trace")
        enc, dec = _mlp_parts(s, weights)
        enc, dec = enc.to(device), dec.to(device)
        tag, B, L = self.name, s.batch, s.latent
        zeros, ones = torch.zeros(L, device=device), torch.ones(L, device=device)

        def model(x):
            pyro.module(f"{tag}_decoder", dec)
            with pyro.plate("data", x.shape[0]), poutine.scale(scale=1.0 / B):
                z = pyro.sample("z", dist.Normal(zeros, ones).to_event(1))
                logits = dec["dec2"](F.relu(dec["dec1"](z)))
                pyro.sample("x", dist.Bernoulli(logits=logits).to_event(1), obs=x)

        def guide(x):
            pyro.module(f"{tag}_encoder", enc)
            with pyro.plate("data", x.shape[0]), poutine.scale(scale=1.0 / B):
                loc, raw = enc["enc2"](F.relu(enc["enc1"](x))).chunk(2, dim=-1)
                pyro.sample("z", dist.Normal(loc, F.softplus(raw) + s.min_scale).to_event(1))

        loss = TraceMeanField_ELBO() if elbo == "TraceMeanField_ELBO" else Trace_ELBO()
        self.svi = SVI(model, guide, pyro.optim.Adam({"lr": s.lr}), loss=loss)
        self.data, self.order, self.losses = data, EpochOrder(data.shape[0], B, seed), []

    def run(self, steps: int) -> None:
        for _ in range(steps):
            x = torch.bernoulli(self.data[self.order.next()])
            self.losses.append(self.svi.step(x))


# --------------------------------------------------------------------------- evaluation


def pythae_log_likelihood(model, x: torch.Tensor, k: int, batch_size: int) -> float:
    """pythae's ``VAE.get_nll`` (it returns the mean log p̂(x) over the rows of x)."""
    with torch.no_grad():
        return float(model.get_nll(x, n_samples=k, batch_size=batch_size))


def _silence_pythae() -> None:
    """pythae logs its set-up at INFO on the console; keep the benchmark's output readable."""
    for name in list(logging.root.manager.loggerDict):
        if name.startswith("pythae"):
            logging.getLogger(name).setLevel(logging.WARNING)


@contextlib.contextmanager
def _quiet():
    sink = io.StringIO()
    with contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
        yield
