"""Your own whole model and q through vaelab (``vaelab.model.user``, ``vaelab.fit(net="model")``).

Oracles: a user's linear-Gaussian model with its exact posterior as q has ELBO = log p(x) for
every draw, which scipy computes in float64 from the marginal N(b, W Wᵀ + σ² I), through the
wrapper, the objectives and evaluate's importance sampling; bits/dim are −log p(x) / (D ln 2)
and appear only when the model declares its log-probability normalised; a run killed after
epoch 2 and resumed reaches the uninterrupted weights bit for bit; a fresh process with every
unpickling entry point disabled reloads the run with the same ELBO; a hostile run naming a
model factory that would create a file creates nothing without consent.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import stats
from torch import nn
from torch.distributions import Bernoulli, Independent, MultivariateNormal, Normal
from torch.nn.functional import softplus

import vaelab
from vaelab import _trust
from vaelab.config import ModelConfig
from vaelab.model.vae import build_vae

HERE = Path(__file__).resolve().parent
MODULE = Path(__file__).stem          # this file is the user's module of models


# --------------------------------------------------------------------------- the user's code

class DiagonalFamily:
    """raw [..., 2L] → N(loc, diag(softplus(s) + 1e-3)²)."""

    def __init__(self, latent_dim: int) -> None:
        self.latent_dim, self.param_size = latent_dim, 2 * latent_dim

    def __call__(self, raw: torch.Tensor) -> Independent:
        loc, s = raw.split(self.latent_dim, -1)
        return Independent(Normal(loc, softplus(s) + 1e-3), 1)


class BernoulliModel(nn.Module):
    """A learned Gaussian prior and a tanh-MLP Bernoulli decoder."""

    def __init__(self, data_dim: int, latent_dim: int, width: int, declare: bool) -> None:
        super().__init__()
        self.loc = nn.Parameter(torch.zeros(latent_dim))
        self.log_scale = nn.Parameter(torch.zeros(latent_dim))
        self.net = nn.Sequential(nn.Linear(latent_dim, width), nn.Tanh(),
                                 nn.Linear(width, data_dim))
        self.declare = declare

    def prior(self) -> Independent:
        return Independent(Normal(self.loc, self.log_scale.exp()), 1)

    def decode(self, z: torch.Tensor) -> Independent:
        return Independent(Bernoulli(logits=self.net(z)), 1)

    def meaning_on(self, kind: str) -> str:
        return "probability" if self.declare and kind == "binary" else "score"


class MLPPosterior(nn.Module):
    def __init__(self, data_dim: int, latent_dim: int, width: int) -> None:
        super().__init__()
        self.family = DiagonalFamily(latent_dim)
        self.net = nn.Sequential(nn.Linear(data_dim, width), nn.Tanh(),
                                 nn.Linear(width, 2 * latent_dim))

    def forward(self, x: torch.Tensor) -> Independent:
        return self.family(self.net(x))

    def per_example(self, x: torch.Tensor) -> tuple[DiagonalFamily, torch.Tensor]:
        return self.family, self.net(x)


def make_model(*, data_dim, latent_dim, image_shape, width=8, declare=True):
    """The user's factory: (model, q)."""
    return (BernoulliModel(data_dim, latent_dim, width, declare),
            MLPPosterior(data_dim, latent_dim, width))


class LinearGaussian(nn.Module):
    """p(z) = N(0, I), p(x | z) = N(W z + b, σ² I): log p(x) = log N(x; b, W Wᵀ + σ² I)."""

    def __init__(self, data_dim: int, latent_dim: int) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(3)
        self.W = nn.Parameter(torch.randn(data_dim, latent_dim, generator=g))
        self.b = nn.Parameter(torch.randn(data_dim, generator=g))
        self.log_sigma = nn.Parameter(torch.tensor(-0.5))

    def prior(self) -> Independent:
        return Independent(Normal(torch.zeros(self.W.shape[1]), torch.ones(self.W.shape[1])), 1)

    def decode(self, z: torch.Tensor) -> Independent:
        loc = z @ self.W.T + self.b
        return Independent(Normal(loc, self.log_sigma.exp().expand_as(loc)), 1)


class ExactPosterior(nn.Module):
    """p(z | x) of a :class:`LinearGaussian`: N(Σ Wᵀ(x − b)/σ², Σ), Σ = (I + WᵀW/σ²)⁻¹."""

    def __init__(self, model: LinearGaussian) -> None:
        super().__init__()
        self._model = [model]              # not a submodule: its weights are the model's

    def forward(self, x: torch.Tensor) -> MultivariateNormal:
        m = self._model[0]
        s2 = m.log_sigma.exp() ** 2
        cov = torch.linalg.inv(torch.eye(m.W.shape[1]) + m.W.T @ m.W / s2)
        return MultivariateNormal((x - m.b) @ m.W @ cov / s2, covariance_matrix=cov)


def make_linear(*, data_dim, latent_dim, image_shape):
    model = LinearGaussian(data_dim, latent_dim)
    return model, ExactPosterior(model)


def not_a_pair(**_):
    return "a model"


class TensorModel(BernoulliModel):
    def decode(self, z):
        return self.net(z)                 # logits, not a Distribution


def make_tensor_model(*, data_dim, latent_dim, image_shape):
    return TensorModel(data_dim, latent_dim, 4, True), MLPPosterior(data_dim, latent_dim, 4)


def make_three(*, data_dim, latent_dim, image_shape):
    """A factory that ignores the run's latent_dim."""
    return BernoulliModel(data_dim, 3, 4, True), MLPPosterior(data_dim, 3, 4)


# --------------------------------------------------------------------------- helpers

@pytest.fixture(scope="module")
def x() -> np.ndarray:
    return (np.random.default_rng(0).random((48, 6)) > 0.5).astype(np.float32)


def _fit(x, out, **kwargs):
    options = dict(net="model", args={"width": 8}, epochs=4, latent_dim=2, batch_size=16,
                   log=None, progress=False, val_fraction=0.25, seed=1, compile=False,
                   binarize="none")
    return vaelab.fit(make_model, x, out, **{**options, **kwargs})


def _built(factory: str, data_dim: int, latent_dim: int, **config):
    with _trust.trusting(MODULE):
        return build_vae(ModelConfig(data_dim=data_dim, latent_dim=latent_dim, net="model",
                                     net_options={"factory": f"{MODULE}:{factory}", "args": {}},
                                     standardize="off", **config))


# --------------------------------------------------------------------------- oracles

def test_the_exact_posterior_gives_log_p_x_for_every_draw():
    model = _built("make_linear", 3, 2)
    x = model.sample(5).detach()
    with torch.no_grad():
        elbo = vaelab.elbo(model, model.encode(x), x, num_samples=7, kl="mc")  # per draw
        m = model.decoder.model
        cov = (m.W @ m.W.T + m.log_sigma.exp() ** 2 * torch.eye(3)).double().numpy()
    truth = stats.multivariate_normal(m.b.double().detach().numpy(), cov).logpdf(x.double())
    np.testing.assert_allclose(elbo.double().numpy(), truth, rtol=0, atol=2e-4)
    report = vaelab.evaluate_model(model, x, num_samples=50, seed=0, per_example=True)
    assert report["log_likelihood"]["mean"] == pytest.approx(truth.mean(), abs=2e-4)
    assert report["log_likelihood"]["se_mc"] < 1e-4       # zero-variance importance weights


def test_bits_per_dim_only_when_the_model_declares_a_probability(x):
    with _trust.trusting(MODULE):
        config = ModelConfig(data_dim=6, latent_dim=2, net="model", standardize="off",
                             net_options={"factory": f"{MODULE}:make_model", "args": {}})
        declared = build_vae(config)
        silent = build_vae(ModelConfig(**{**config.__dict__, "net_options": {
            "factory": f"{MODULE}:make_model", "args": {"declare": False}}}))
    silent.load_state_dict(declared.state_dict())
    reports = [vaelab.evaluate_model(m, x, num_samples=20, seed=0) for m in (declared, silent)]
    nll = -reports[0]["log_likelihood"]["mean"]
    assert reports[0]["nll_bits_per_dim"]["mean"] == pytest.approx(nll / (6 * math.log(2)))
    assert reports[1]["log_likelihood"]["mean"] == reports[0]["log_likelihood"]["mean"]
    assert reports[1]["nll_bits_per_dim"]["mean"] is None
    assert "meaning_on" in reports[1]["nll_bits_per_dim"]["undefined"]["mean"]


# --------------------------------------------------------------------------- the trainer

def _weights(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_a_killed_run_resumes_bit_exactly(tmp_path, x):
    whole = _weights(_fit(x, tmp_path / "whole").model)

    def kill(line: str) -> None:
        if line.startswith("epoch 2/"):
            raise KeyboardInterrupt   # after epoch 2's checkpoint, as a Ctrl-C would

    with pytest.raises(KeyboardInterrupt):
        _fit(x, tmp_path / "cut", log=kill)
    resumed = _weights(_fit(x, tmp_path / "cut", resume=True).model)
    assert set(whole) == {"decoder.model.loc", "decoder.model.log_scale",
                          "decoder.model.net.0.weight", "decoder.model.net.0.bias",
                          "decoder.model.net.2.weight", "decoder.model.net.2.bias",
                          "encoder.q.net.0.weight", "encoder.q.net.0.bias",
                          "encoder.q.net.2.weight", "encoder.q.net.2.bias"}
    assert set(whole) == set(resumed)
    assert all(torch.equal(whole[k], resumed[k]) for k in whole)
    stored = json.loads((tmp_path / "cut" / "config.json").read_text())["model"]
    assert (stored["net"], stored["net_options"]) == ("model", {"factory": f"{MODULE}:make_model",
                                                                "args": {"width": 8}})
    assert not torch.equal(whole["decoder.model.loc"], torch.zeros(2))   # the prior learned


def test_a_fresh_process_reloads_without_pickle(tmp_path, x):
    _fit(x, tmp_path / "run", epochs=1)
    torch.manual_seed(0)
    here = vaelab.load(tmp_path / "run", trust=[MODULE]).elbo(torch.from_numpy(x), 4)
    blobs = [p.read_bytes() for p in (tmp_path / "run").rglob("*") if p.is_file()]
    assert not [b for b in blobs if b[:1] == b"\x80" or b[:2] == b"PK"]   # no pickle, no zip
    script = f"""
import pickle
import numpy as np, torch
def refuse(*args, **kwargs):
    raise AssertionError("something was unpickled")
pickle.load = pickle.loads = pickle.Unpickler = torch.load = refuse
import vaelab
x = torch.from_numpy(np.asarray({x.tolist()!r}, dtype=np.float32))
torch.manual_seed(0)
print(vaelab.load({str(tmp_path / "run")!r}, trust=[{MODULE!r}]).elbo(x, 4).tolist())
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         env={"PYTHONPATH": str(HERE), "OMP_NUM_THREADS": "1",
                              "PATH": "/usr/bin:/bin"}, timeout=300)
    assert out.returncode == 0, out.stderr
    np.testing.assert_array_equal(np.array(json.loads(out.stdout)), here.numpy())


def test_the_commands_take_the_run(tmp_path, x):
    from vaelab import cli

    _fit(x, tmp_path / "run", epochs=1)
    np.save(tmp_path / "x.npy", x)
    run, data = str(tmp_path / "run"), ["--data", str(tmp_path / "x.npy")]
    trust = ["--trust", MODULE]
    assert cli.main([*trust, "evaluate", run, *data, "--k", "20", "--quiet"]) == 0
    evaluation = json.loads((tmp_path / "run" / "eval.json").read_text())
    assert evaluation["log_likelihood"]["mean"] >= evaluation["elbo"]["mean"] - 0.3
    assert evaluation["nll_bits_per_dim"]["mean"] > 0            # declared a probability
    assert cli.main([*trust, "gaps", run, *data, "--k", "20", "--steps", "100"]) == 0
    gaps = json.loads((tmp_path / "run" / "gaps.json").read_text())["summary"]
    assert gaps["amortization_gap"]["mean"] > 0      # q* fitted per example beats q_phi
    out = tmp_path / "scores.csv"
    assert cli.main([*trust, "score", run, *data, "--out", str(out), "--score", "elbo",
                     "regret", "--regret-steps", "20"]) == 0
    header, *rows = out.read_text().splitlines()
    assert header == "index,neg_elbo,regret" and len(rows) == 48
    assert cli.main([*trust, "encode", run, *data, "--out", str(tmp_path / "z.npy")]) == 0
    assert np.load(tmp_path / "z.npy").shape == (48, 2)
    assert cli.main([*trust, "report", run]) == 0
    assert (tmp_path / "run" / "report.html").is_file()


# --------------------------------------------------------------------------- consent, refusals

def test_a_hostile_model_factory_is_not_imported_without_consent(tmp_path, x, capsys):
    from vaelab import cli

    _fit(x, tmp_path / "run", epochs=1)
    marker = tmp_path / "pwned"
    (tmp_path / "evil_models.py").write_text(
        f"def make(**kwargs):\n    open({str(marker)!r}, 'w').close()\n    raise SystemExit\n")
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    config["model"]["net_options"] = {"factory": "evil_models:make", "args": {}}
    (tmp_path / "run" / "config.json").write_text(json.dumps(config))
    sys.path.insert(0, str(tmp_path))
    try:
        for trust in (None, [MODULE], "evil"):
            with pytest.raises(ValueError, match=r"^net_options.factory: the run names the "
                                                 r"network factory 'evil_models:make'; "):
                vaelab.load(tmp_path / "run", trust=trust)
        assert cli.main(["--trust", MODULE, "evaluate", str(tmp_path / "run")]) != 0
        err = capsys.readouterr().err.strip()
        assert "\n" not in err and "--trust evil_models" in err
        assert not marker.exists()
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("evil_models", None)


@pytest.mark.parametrize(("options", "message"), [
    ({"family": "iaf"}, r"^family: net 'model' brings its own p\(z\) and q\(z \| x\); "
                        r"expected the default 'diagonal_normal', got 'iaf'$"),
    ({"prior": "vamp"}, r"^prior: net 'model' brings its own"),
    ({"latent_dim": (2, 2)}, r"^latent_dim: net 'model' is one latent layer"),
    ({"missing": "mask"}, r"^missing: net 'model' is trained on complete data"),
    ({"standardize": "on", "likelihood": "gaussian"}, r"^standardize: net 'model' reads the "
                                                      r"data as given"),
    ({"inference": "per-datapoint"}, r"^inference \(--inference\): your own q\(z \| x\)"),
])
def test_what_a_user_model_cannot_be_asked_for_is_one_line(tmp_path, x, options, message):
    with pytest.raises((ValueError, TypeError), match=message) as caught:
        _fit(x * 0.5 + 0.1 if "standardize" in options else x,   # real values where asked
             tmp_path / "run", epochs=1, **options)
    assert "\n" not in str(caught.value)


def test_bad_factories_are_one_line(tmp_path, x):
    with pytest.raises(ValueError, match=r"^net_options.factory: expected an importable "
                                         r"factory, could not import 'no_such_pkg.m:make'"):
        vaelab.fit("no_such_pkg.m:make", x, tmp_path / "a", net="model", log=None,
                   progress=False)
    with pytest.raises(TypeError, match=r"^net_options.factory: expected '.*:not_a_pair' to "
                                        r"return \(model, q\), two torch modules, got str$"):
        vaelab.fit(not_a_pair, x, tmp_path / "b", net="model", log=None, progress=False)
    with pytest.raises(TypeError, match=r"^net_options.factory: expected model.decode\(z\) of "
                                        r"'.*:make_tensor_model' to return a torch.distributions"
                                        r".Distribution, got Tensor$"):
        vaelab.fit(make_tensor_model, x, tmp_path / "c", net="model", log=None, progress=False,
                   binarize="none", latent_dim=2)
    with pytest.raises(ValueError, match=r"^net: expected 'factory' \(your encoder and decoder "
                                         r"nets\) or 'model'"):
        vaelab.fit(make_model, x, tmp_path / "d", net="mlp")
    with pytest.raises(ValueError, match=r"^latent_dim: expected the prior of '.*:make_three' "
                                         r"over 2 latent values \(the run's latent_dim\), "
                                         r"got 3$"):
        vaelab.fit(make_three, x, tmp_path / "e", net="model", log=None, progress=False,
                   binarize="none", latent_dim=2)
