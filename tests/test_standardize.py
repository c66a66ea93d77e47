"""Per-column standardization of real-valued tables (``vaelab.model.standardize``).

The model reads (x − mean)/sd per column and answers on the data's own scale: its density
keeps the Jacobian, its samples and reconstructions are mapped back. Expected values come
from numpy/scipy in float64 on the same numbers; the CLI tests check what a run records and
what a diverged run on unscaled columns is told.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from conftest import run_cli
from scipy import stats

from vaelab import data as data_
from vaelab.config import ModelConfig
from vaelab.model import standardize
from vaelab.model.masked import build_model, fit_standardization

D, L = 6, 2
SCALES = 10.0 ** np.linspace(-3, 3, 8)


def _table(n: int = 400) -> np.ndarray:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(n, 2)) @ rng.normal(size=(2, 8)) + 0.1 * rng.normal(size=(n, 8))
    return (x * SCALES + 3 * SCALES).astype(np.float32)


def _model(**options) -> torch.nn.Module:
    cfg = ModelConfig(**{"data_dim": D, "latent_dim": L, "hidden": (16,),
                         "likelihood": "gaussian", "standardize": "on", **options})
    return build_model(cfg).double()


def _fitted(**options):
    model = _model(**options)
    g = torch.Generator().manual_seed(1)
    x = (torch.randn(50, D, generator=g, dtype=torch.float64) * torch.logspace(-2, 2, D,
         dtype=torch.float64) + 7)
    standardize.fit_columns(model, x)
    return model, x


def test_fit_columns_are_the_training_rows_mean_and_sample_sd():
    model, x = _fitted()
    inputs = standardize.inputs_of(model)
    np.testing.assert_allclose(inputs.loc.numpy(), x.numpy().mean(0), rtol=1e-12)
    np.testing.assert_allclose(inputs.scale.numpy(), x.numpy().std(0, ddof=1), rtol=1e-12)


@pytest.mark.parametrize("options", [{}, {"latent_dim": (3, 2)},
                                     {"latent_dim": (3, 2), "hierarchy": "ladder"}])
def test_the_density_is_on_the_data_scale_with_its_jacobian(options):
    model, x = _fitted(**options)
    inputs = standardize.inputs_of(model)
    loc, scale = inputs.loc.numpy(), inputs.scale.numpy()
    z = torch.randn(4, model.latent_dim, dtype=torch.float64)
    inner = model.decoder.likelihood(model.decoder.net(_first(model, z)))   # standardized
    mu, sigma = inner.base_dist.loc.detach().numpy(), inner.base_dist.scale.detach().numpy()
    y = x[:4]
    expected = stats.norm.logpdf(y.numpy(), loc + scale * mu, scale * sigma).sum(1)
    np.testing.assert_allclose(model.decode(z).log_prob(y).detach().numpy(), expected,
                               rtol=1e-10)
    # the same number as the standardized density minus log|Jacobian| = Σ log sd
    ytil = (y.numpy() - loc) / scale
    np.testing.assert_allclose(expected, stats.norm.logpdf(ytil, mu, sigma).sum(1)
                               - np.log(scale).sum(), rtol=1e-10)
    # E[x | z] (what samples and reconstructions show) is back on the data's scale
    np.testing.assert_allclose(model.decode(z).mean.detach().numpy(), loc + scale * mu,
                               rtol=1e-10)


@pytest.mark.parametrize("missing", ["none", "mask"])
def test_a_student_t_is_mapped_to_the_data_scale_like_the_gaussian(missing):
    """A location-scale family: t_ν(loc + sd·μ, sd·σ), the same number as the standardized
    density minus Σ log sd; complete and incomplete-data models alike."""
    options = {"likelihood": "student-t", "likelihood_options": {"df": 3.0}}
    if missing == "mask":
        model, x = _model(missing="mask", **options), _fitted()[1]
        fit_standardization(model, x)
        loc, scale = model.data_loc.numpy(), model.data_scale.numpy()
        inner = model.decoder(torch.zeros(4, L, dtype=torch.float64))
    else:
        model, x = _fitted(**options)
        inputs = standardize.inputs_of(model)
        loc, scale = inputs.loc.numpy(), inputs.scale.numpy()
        inner = model.decoder.likelihood(model.decoder.net(torch.zeros(4, L,
                                                                       dtype=torch.float64)))
    mu, sigma = inner.base_dist.loc.detach().numpy(), inner.base_dist.scale.detach().numpy()
    px = model.decode(torch.zeros(4, L, dtype=torch.float64))
    y = x[:4].numpy()
    expected = stats.t.logpdf(y, 3.0, loc + scale * mu, scale * sigma).sum(1)
    np.testing.assert_allclose(px.log_prob(x[:4]).detach().numpy(), expected, rtol=1e-10)
    np.testing.assert_allclose(expected, stats.t.logpdf((y - loc) / scale, 3.0, mu, sigma).sum(1)
                               - np.log(scale).sum(), rtol=1e-10)
    np.testing.assert_allclose(px.mean.detach().numpy(), loc + scale * mu, rtol=1e-10)


def _first(model, z):
    """The decoder's input: z_1 for a hierarchy, z for one layer."""
    return z[..., :model.sizes[0]] if hasattr(model, "sizes") else z


def test_the_encoder_reads_standardized_columns():
    model, x = _fitted()
    net = model.encoder.net.net                       # the unwrapped network
    inputs = standardize.inputs_of(model)
    xtil = (x - inputs.loc) / inputs.scale
    np.testing.assert_allclose(xtil.numpy().mean(0), 0, atol=1e-12)
    np.testing.assert_allclose(xtil.numpy().std(0, ddof=1), 1, rtol=1e-12)
    expected = model.encoder.family(net(xtil))
    torch.testing.assert_close(model.encode(x).mean, expected.mean)


def test_auto_is_on_for_a_gaussian_on_a_real_table_only():
    def decided(**kw):
        base = {"data_dim": D, "likelihood": "gaussian", "data_kind": "continuous"}
        return standardize.resolve(ModelConfig(**{**base, **kw})).standardize

    assert decided() == "on"
    assert decided(data_kind="unit-interval") == "off"
    assert decided(image_shape=(1, 2, 3)) == "off"
    assert decided(likelihood="bernoulli", data_kind="binary") == "off"
    assert decided(latent_dim=(3, 2), hierarchy="top-down") == "off"
    assert decided(standardize="off") == "off"
    with pytest.raises(ValueError, match=r"'on' needs --likelihood gaussian on real-valued "
                                         r"data, got --likelihood bernoulli on binary data"):
        decided(standardize="on", likelihood="bernoulli", data_kind="binary")


def test_scale_problem_names_the_spread():
    x = torch.from_numpy(_table()).double()
    sd = x.numpy().std(0, ddof=1)
    line = standardize.scale_problem(x)
    assert line == (f"its columns have standard deviations from {sd.min():.3g} to "
                    f"{sd.max():.3g} and values up to {np.abs(x.numpy()).max():.3g} in size")
    assert standardize.scale_problem((x - x.mean(0)) / x.std(0)) is None


def test_a_gaussian_run_on_a_real_table_is_standardized_and_records_it(tmp_path, capsys):
    np.save(tmp_path / "t.npy", _table())
    code, _, err = run_cli(capsys, "train", "--data", tmp_path / "t.npy", "--out",
                           tmp_path / "run", "--likelihood", "gaussian", "--binarize", "none",
                           "--epochs", "2", "--hidden", "16", "--latent-dim", "2", "--quiet")
    assert code == 0, err
    assert "diverged" not in err
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["model"]["standardize"] == "on"
    from vaelab.use.trained import load

    trained = load(tmp_path / "run")
    ds = data_.load_dataset(tmp_path / "t.npy")
    train, _ = data_.train_val_split(ds, 0.05, 0)     # the run's seeded training rows
    inputs = standardize.inputs_of(trained.model)
    np.testing.assert_allclose(inputs.loc.numpy(), train.x.double().numpy().mean(0), rtol=1e-6)
    np.testing.assert_allclose(inputs.scale.numpy(), train.x.double().numpy().std(0, ddof=1),
                               rtol=1e-6)
    metrics = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").open()]
    assert all(math.isfinite(m["train_elbo"]) and m["train_elbo"] > -1e3 for m in metrics)


def test_a_diverged_run_on_unscaled_columns_is_told_to_standardize_first(tmp_path, capsys):
    x = _table()
    np.save(tmp_path / "t.npy", x)
    code, _, err = run_cli(capsys, "train", "--data", tmp_path / "t.npy", "--out",
                           tmp_path / "run", "--likelihood", "gaussian", "--binarize", "none",
                           "--epochs", "1", "--hidden", "16", "--latent-dim", "2", "--quiet",
                           "--standardize", "off")
    assert code == 0
    ds = data_.load_dataset(tmp_path / "t.npy")
    train, _ = data_.train_val_split(ds, 0.05, 0)
    sd = train.x.double().numpy().std(0, ddof=1)
    big = np.abs(train.x.double().numpy()).max()
    line = [ln for ln in err.splitlines() if "training diverged" in ln]
    assert len(line) == 1
    assert (f"check the data's scale first: its columns have standard deviations from "
            f"{sd.min():.3g} to {sd.max():.3g} and values up to {big:.3g} in size; pass "
            f"--standardize on") in line[0]
    assert line[0].index("--standardize on") < line[0].index("--lr")


def test_standardize_on_is_refused_for_binary_data(tmp_path, capsys):
    np.save(tmp_path / "b.npy", np.random.default_rng(0).random((30, 4)).astype(np.float32))
    code, _, err = run_cli(capsys, "train", "--data", tmp_path / "b.npy", "--out",
                           tmp_path / "run", "--standardize", "on", "--epochs", "1")
    assert code == 1 and err.count("\n") == 1
    assert "--standardize" in err and "needs --likelihood gaussian" in err
    assert not (tmp_path / "run").exists()
