"""pythae's VAMP, VAE_IAF and IWAE (and its plain VAE) at richer.py's architecture.

Each peer is pythae's own model class with pythae-wrapped MLPs of the vaelab rows' sizes
(encoder D → hidden → 2L, its log-variance parametrisation; decoder L → reversed hidden → D
Bernoulli logits, sigmoid for pythae's BCE loss; ReLU, as vaelab's default), trained by
pythae's own ``BaseTrainer.train_step`` epoch loop (Adam, the same lr, batch, epochs and
training images). pythae has no dynamic binarization, so each epoch's images are binarized
afresh (a new Bernoulli draw per epoch, as vaelab's "dynamic") before the timed epoch and handed
to the trainer as its ``train_loader``; that draw is not charged to pythae.

Evaluation goes through :class:`PythaeAsVaelab`, which gives a trained pythae model vaelab's
model protocol (encode, prior, decode, log_joint, check_data), so ``vaelab.measure.evaluate``
evaluates it with the same code, images, k and seed as the vaelab rows. The densities are the
pythae model's own:

* q: N(μ, diag exp(log σ²)) from its encoder; for VAE_IAF z = IAF(z₀) (pythae's
  ``iaf_flow.inverse``, no encoder context) and log q(z) = log N(z₀) − log|det ∂z/∂z₀| (the
  flow's log-det, as pythae's ``get_nll`` has it); only q's own draws have a density here.
* prior: N(0, I), or for VAMP the mixture (1/K) Σ_k q(z | u_k) at its K pseudo-inputs
  u = hardtanh(W I + b) (pythae's ``_log_p_z``, here with its normalising constant, which
  pythae leaves out of both p and q).
* p(x | z): Bernoulli with the decoder's logits (exact; pythae's own ``get_nll`` reads the
  sigmoid through ``F.binary_cross_entropy``, whose log is clamped at −100).

:func:`get_nll_check` runs pythae's own ``get_nll`` on a few images, seeded like the adapter so
both weigh the same draws, as a cross-check of the adapter (equal to float rounding unless the
clamp bites).
"""

from __future__ import annotations

import statistics
import tempfile
import time
from types import SimpleNamespace

import torch
from torch import nn
from torch.distributions import (
    Bernoulli,
    Categorical,
    Distribution,
    Independent,
    MixtureSameFamily,
    Normal,
)

from peers import _quiet, _silence_pythae, pythae_log_likelihood, pythae_nets

#: peer row → (pythae model class, its config options). Sizes are set by :func:`build_peer`
#: from richer.py's --hidden / --latent; VAE_IAF's MADEs get vaelab's IAF defaults (two hidden
#: layers of max(4L, 32)), T = 2 blocks like the vaelab row.
PEERS: dict[str, tuple[str, dict]] = {
    "pythae VAE": ("VAE", {}),
    "pythae IWAE K=5": ("IWAE", {"number_samples": 5}),
    "pythae IWAE K=50": ("IWAE", {"number_samples": 50}),
    "pythae VAE_IAF (T=2)": ("VAE_IAF", {"n_made_blocks": 2}),
    "pythae VAMP (K=50)": ("VAMP", {"number_components": 50}),
}

#: peer row → the vaelab row of the same model (richer.ROWS).
SAME_MODEL = {"pythae VAE": "VAE", "pythae IWAE K=5": "IWAE K=5",
              "pythae IWAE K=50": "IWAE K=50", "pythae VAE_IAF (T=2)": "IAF q (T=2)",
              "pythae VAMP (K=50)": "VampPrior (K=50)"}


def _mlp(sizes: list[int]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for a, b in zip(sizes[:-1], sizes[1:], strict=True):
        layers += [nn.Linear(a, b), nn.ReLU()]
    return nn.Sequential(*layers[:-1])     # no activation after the last layer


def build_peer(name: str, data_dim: int, hidden: list[int], latent: int, seed: int):
    """pythae's model for the peer row, networks initialised from ``seed`` (torch defaults)."""
    import pythae.models as pm

    cls_name, options = PEERS[name]
    torch.manual_seed(seed)
    encoder, decoder = pythae_nets(_mlp([data_dim, *hidden, 2 * latent]),
                                   _mlp([latent, *reversed(hidden), data_dim]))
    common = dict(input_dim=(data_dim,), latent_dim=latent, reconstruction_loss="bce")
    if cls_name == "VAE_IAF":
        options = {**options, "n_hidden_in_made": 2, "hidden_size": max(4 * latent, 32)}
    config_cls = {"VAE": pm.VAEConfig, "IWAE": pm.IWAEConfig, "VAE_IAF": pm.VAE_IAF_Config,
                  "VAMP": pm.VAMPConfig}[cls_name]
    config = config_cls(**common, **options)
    return getattr(pm, cls_name)(config, encoder=encoder, decoder=decoder), config


def train_peer(model, train_x: torch.Tensor, *, epochs: int, batch_size: int, lr: float,
               seed: int) -> dict:
    """Train with pythae's BaseTrainer epoch loop (``train_step``), one fresh binarization of
    ``train_x`` (grey levels [N, D]) per epoch; → samples/s per epoch and the epoch losses."""
    from pythae.data.datasets import BaseDataset
    from pythae.trainers import BaseTrainer, BaseTrainerConfig

    _silence_pythae()
    gen = torch.Generator().manual_seed(seed + 1)
    n = train_x.shape[0]

    def binarized():
        return BaseDataset(torch.bernoulli(train_x, generator=gen), torch.zeros(n))

    speeds, losses = [], []
    with tempfile.TemporaryDirectory(prefix="richer-pythae-") as tmp:
        config = BaseTrainerConfig(output_dir=tmp, learning_rate=lr,
                                   per_device_train_batch_size=batch_size, num_epochs=epochs,
                                   optimizer_cls="Adam", no_cuda=True, seed=seed)
        with _quiet():
            trainer = BaseTrainer(model, binarized(), training_config=config)
            trainer.prepare_training()
        start = time.perf_counter()
        for epoch in range(1, epochs + 1):
            trainer.train_loader = trainer.get_train_dataloader(binarized())
            t = time.perf_counter()
            with _quiet():
                loss = trainer.train_step(epoch)
            speeds.append(n / (time.perf_counter() - t))
            losses.append(float(loss))
        seconds = time.perf_counter() - start
    model.eval()
    return {"samples_per_s": statistics.median(speeds), "samples_per_s_epochs": speeds,
            "train_seconds": round(seconds, 1), "train_loss_epochs": losses,
            "trainer": "pythae BaseTrainer.train_step (Adam), fresh binarization per epoch"}


# --------------------------------------------------------------------------- evaluation


class _IAFPosterior(Distribution):
    """pythae's VAE_IAF q: z₀ ~ N(μ, σ²), z = iaf_flow.inverse(z₀) (its sampling direction);
    log q(z) = log N(z₀) − log|det|. Densities only at q's own last draw (cached), which is all
    vaelab's evaluator asks for; ``mean`` is a seeded 256-draw Monte Carlo estimate."""

    arg_constraints: dict = {}
    has_rsample = True

    def __init__(self, base: Distribution, flow: nn.Module) -> None:
        self.base, self.flow, self._cache = base, flow, None
        super().__init__(base.batch_shape, base.event_shape, validate_args=False)

    def _push(self, z0: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.flow.inverse(z0.reshape(-1, z0.shape[-1]))
        return out.out.reshape(z0.shape), out.log_abs_det_jac.reshape(z0.shape[:-1])

    def rsample(self, sample_shape=()) -> torch.Tensor:
        z0 = self.base.rsample(sample_shape)
        z, log_det = self._push(z0)
        self._cache = (z, self.base.log_prob(z0) - log_det)
        return z

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        if self._cache is not None and value is self._cache[0]:
            return self._cache[1]
        raise NotImplementedError("pythae's IAF q has a density here only at its own draws")

    @property
    def mean(self) -> torch.Tensor:
        loc, scale = self.base.base_dist.loc, self.base.base_dist.scale
        g = torch.Generator().manual_seed(0)
        eps = torch.randn((256, *loc.shape), generator=g, dtype=loc.dtype)
        return self._push(loc + scale * eps)[0].mean(0)


class PythaeAsVaelab:
    """A trained pythae VAE / IWAE / VAE_IAF / VAMP behind vaelab's model protocol (module
    docstring), for ``vaelab.measure.evaluate.evaluate_model``. Evaluation only (no grads)."""

    def __init__(self, model) -> None:
        from vaelab.model import likelihoods

        self.model = model.eval()
        self.kind = model.model_name
        self.latent_dim = model.latent_dim
        self.data_dim = int(torch.tensor(model.model_config.input_dim).prod())
        self.decoder = SimpleNamespace(likelihood=likelihoods.Bernoulli())  # what log p̂ means
        with torch.no_grad():
            self._prior = self._build_prior()

    def _build_prior(self) -> Distribution:
        L = self.latent_dim
        if self.kind != "VAMP":
            return Independent(Normal(torch.zeros(L), torch.ones(L)), 1)
        m = self.model
        u = m.pseudo_inputs(m.idle_input).reshape(m.number_components, -1)
        out = m.encoder(u)
        comps = Independent(Normal(out.embedding, (0.5 * out.log_covariance).exp()), 1)
        return MixtureSameFamily(Categorical(logits=torch.zeros(m.number_components)), comps)

    def check_data(self, x: object, name: str = "x") -> torch.Tensor:
        x = torch.as_tensor(x, dtype=torch.float32)
        if x.dim() != 2 or x.shape[1] != self.data_dim:
            raise ValueError(f"{name}: expected [B, {self.data_dim}], got {list(x.shape)}")
        return self.decoder.likelihood.check_support(x, name)

    def encode(self, x: torch.Tensor) -> Distribution:
        out = self.model.encoder(x)
        q = Independent(Normal(out.embedding, (0.5 * out.log_covariance).exp()), 1)
        return _IAFPosterior(q, self.model.iaf_flow) if self.kind == "VAE_IAF" else q

    def prior(self) -> Distribution:
        return self._prior

    def decode(self, z: torch.Tensor) -> Distribution:
        logits = self.model.decoder.logits(z.reshape(-1, z.shape[-1]))
        return Independent(Bernoulli(logits=logits.reshape(*z.shape[:-1], self.data_dim)), 1)

    def log_joint(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        return self.decode(z).log_prob(x) + self.prior().log_prob(z)


def get_nll_check(model, x: torch.Tensor, k: int, seed: int = 7) -> dict:
    """pythae's own ``get_nll`` against the adapter on the same draws, image by image.

    For each image, torch is seeded alike before pythae's ``get_nll`` (k samples in one batch)
    and before ``vaelab.measure.evaluate.log_likelihood`` on :class:`PythaeAsVaelab` (one chunk
    of k): both draw ε ~ N(0, I) [k, L] first, so they weigh the same z and should agree to
    float rounding (unless pythae's BCE clamp bites); a difference would be an adapter error.
    """
    from vaelab.measure.evaluate import log_likelihood

    adapter = PythaeAsVaelab(model)
    ours, theirs, seconds = [], [], 0.0
    for i in range(x.shape[0]):
        xi = x[i:i + 1]
        torch.manual_seed(seed + i)
        t = time.perf_counter()
        with _quiet():
            theirs.append(pythae_log_likelihood(model, xi, k, batch_size=k))
        seconds += time.perf_counter() - t
        torch.manual_seed(seed + i)
        with torch.no_grad():
            ours.append(float(log_likelihood(adapter, adapter.encode(xi), xi, k,
                                             chunk_size=k).log_likelihood))
    diffs = [a - b for a, b in zip(ours, theirs, strict=True)]
    n = len(ours)
    return {"images": n, "k": k, "adapter": sum(ours) / n, "pythae_get_nll": sum(theirs) / n,
            "max_abs_difference": max(abs(d) for d in diffs),
            "get_nll_seconds_per_image": seconds / n}
