"""Conditional VAEs (vaelab.model.conditional and the pipeline that feeds it packed [x | c])."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import run_cli
from safetensors.torch import load_file

from vaelab import condition_spec
from vaelab.config import ModelConfig
from vaelab.data import condition as condition_
from vaelab.fit.train import train
from vaelab.infer.objectives import elbo_terms
from vaelab.model.conditional import ConditionalVAE
from vaelab.model.masked import build_model
from vaelab.model.units import ChannelCondition
from vaelab.use.trained import load

LEVELS = {"source": "labels", "kind": "categorical", "levels": [0, 1, 2]}
TRAIN = {"binarize": "none", "device": "cpu", "compile": False, "batch_size": 64}


def _copy_with_zero_c(plain: torch.nn.Module, cond: ConditionalVAE, x_dim: int,
                      latent: int) -> None:
    """cond's weights := plain's, with every weight that reads c set to 0."""
    src = plain.state_dict()
    with torch.no_grad():
        for name, p in cond.state_dict().items():
            q = src[name.replace(".net.net.", ".net.")]   # ChannelCondition wraps the conv net
            if p.shape == q.shape:
                p.copy_(q)
                continue
            p.zero_()
            reads = x_dim if name.startswith("encoder") else latent
            if p.dim() == 2:                               # a dense layer reading [·, c]
                p[:, :reads] = q
            else:                                          # a conv reading extra c channels
                p[:, :q.shape[1]] = q


@pytest.mark.parametrize("model_options", [
    {"likelihood": "bernoulli", "net_options": {"hidden": [16, 8]}},
    {"likelihood": "gaussian", "net_options": {"hidden": [16], "gated": True}},
    {"likelihood": "bernoulli", "net": "conv", "net_options": {"channels": [4]},
     "image_shape": (1, 4, 4)},
])
def test_elbo_with_c_ignored_equals_the_plain_vae(model_options):
    torch.manual_seed(0)
    plain = build_model(ModelConfig(data_dim=16, latent_dim=3, **model_options))
    cond = build_model(ModelConfig(data_dim=16, latent_dim=3, condition=LEVELS,
                                   **model_options))
    _copy_with_zero_c(plain, cond, 16, 3)
    x = torch.rand(5, 16).round()
    c = torch.nn.functional.one_hot(torch.tensor([0, 1, 2, 2, 0]), 3).float()
    torch.manual_seed(1)
    expected = elbo_terms(plain, plain.encode(x), x, 4).elbo
    torch.manual_seed(1)
    got = elbo_terms(cond, cond.encode(x, c), torch.cat([x, c], 1), 4).elbo
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)
    assert not torch.allclose(got, torch.zeros_like(got))


def test_gradients_reach_the_weights_that_read_c():
    torch.manual_seed(0)
    model = build_model(ModelConfig(data_dim=6, latent_dim=2, condition=LEVELS,
                                    net_options={"hidden": [8]}))
    x = torch.rand(4, 6).round()
    xc = torch.cat([x, torch.eye(3)[[0, 1, 2, 1]]], 1)
    elbo_terms(model, model.encode(xc), xc, 2).elbo.sum().backward()
    enc_first, dec_first = model.encoder.net[0].weight, model.decoder.net[0].weight
    assert enc_first.grad[:, 6:].abs().sum() > 0        # q(z | x, c) reads c
    assert dec_first.grad[:, 2:].abs().sum() > 0        # p(x | z, c) reads c
    # oracle: a central finite difference of the ELBO (same draws) in one decoder weight on c
    w = model.decoder.net[0].weight
    i, j, h = 3, 2 + 1, 1e-3
    def elbo_at(value):
        with torch.no_grad():
            w[i, j] = value
            torch.manual_seed(5)
            return elbo_terms(model, model.encode(xc), xc, 2).elbo.sum().double()
    base = w.detach()[i, j].item()
    torch.manual_seed(5)
    model.zero_grad()
    elbo_terms(model, model.encode(xc), xc, 2).elbo.sum().backward()
    analytic = float(w.grad[i, j])
    numeric = float((elbo_at(base + h) - elbo_at(base - h)) / (2 * h))
    elbo_at(base)
    assert analytic == pytest.approx(numeric, rel=1e-2, abs=1e-3)


def test_channel_condition_stacks_c_as_constant_planes():
    seen = []
    net = torch.nn.Flatten()
    net.register_forward_hook(lambda _m, inputs, _out: seen.append(inputs[0]))
    wrapped = ChannelCondition(net, (1, 2, 3), 2)
    x, c = torch.arange(12.).reshape(2, 6), torch.tensor([[1., 0.], [0.5, -2.]])
    wrapped(torch.cat([x, c], 1))
    stacked = seen[0].reshape(2, 3, 2, 3)
    torch.testing.assert_close(stacked[:, 0].reshape(2, 6), x)
    torch.testing.assert_close(stacked[:, 1:], c[:, :, None, None].expand(2, 2, 2, 3))


def _three_class_data(n: int = 900, seed: int = 0):
    """x (8 binary values) depends only on c ∈ {0, 1, 2}: Bernoulli with a mean per class."""
    rng = np.random.default_rng(seed)
    c = rng.integers(0, 3, n)
    means = np.array([[0.9] * 4 + [0.1] * 4, [0.1] * 4 + [0.9] * 4, [0.5, 0.2] * 4])
    return (rng.random((n, 8)) < means[c]).astype(np.float32), c, means


def _config(epochs: int) -> dict:
    return {"model": {"latent_dim": 2, "net_options": {"hidden": [32]}, "condition": "labels"},
            "train": {**TRAIN, "epochs": epochs, "lr": 3e-3, "seed": 3}}


def test_samples_under_c_match_that_class(tmp_path):
    x, c, means = _three_class_data()
    train(_config(25), tmp_path / "run", dataset=(x, c), progress=False, log=None)
    trained = load(tmp_path / "run")
    for k in range(3):
        draws = trained.sample(4000, c=k, generator=torch.Generator().manual_seed(k))
        empirical = x[c == k].mean(0)
        # 4000 Bernoulli draws: SE <= 0.008; the class means themselves differ by >= 0.3
        np.testing.assert_allclose(draws.mean(0).numpy(), empirical, atol=0.06)
        assert np.abs(draws.mean(0).numpy() - means[(k + 1) % 3]).max() > 0.25


def test_save_load_and_resume_are_bit_exact(tmp_path):
    x, c, _ = _three_class_data(300)
    whole, part = tmp_path / "whole", tmp_path / "part"
    train(_config(4), whole, dataset=(x, c), progress=False, log=None)
    train(_config(2), part, dataset=(x, c), progress=False, log=None)
    train(_config(4), part, dataset=(x, c), resume=True, progress=False, log=None)
    a, b = load_file(whole / "model.safetensors"), load_file(part / "model.safetensors")
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    trained = load(whole)
    assert trained.config.model.condition == {**LEVELS}
    reloaded = load(whole)
    torch.manual_seed(0)
    first = trained.elbo(x[:10], c=c[:10])
    torch.manual_seed(0)
    again = reloaded.elbo(x[:10], c=c[:10])
    assert torch.equal(first, again)


def test_reconstruct_under_another_c_moves_x_to_that_class(tmp_path):
    x, c, means = _three_class_data()
    train(_config(25), tmp_path / "run", dataset=(x, c), progress=False, log=None)
    trained = load(tmp_path / "run")
    rows = x[c == 0][:200]
    moved = trained.reconstruct(rows, c=0, to=1).mean(0).numpy()
    np.testing.assert_allclose(moved, means[1], atol=0.1)


def test_one_line_errors_for_levels_and_a_missing_condition(tmp_path):
    x, c, _ = _three_class_data(200)
    train(_config(1), tmp_path / "run", dataset=(x, c), progress=False, log=None)
    trained = load(tmp_path / "run")
    with pytest.raises(ValueError, match=r"^c \(--condition\).*expected the condition"):
        trained.sample(3)
    with pytest.raises(ValueError, match=r"expected one of the run's condition levels "
                                         r"\[0, 1, 2\], got 7"):
        trained.sample(3, c=7)
    with pytest.raises(ValueError, match=r"levels never seen in training: \['5'\]"):
        trained.encode(x[:2], c=[0, 5])
    from vaelab.config import RunConfig
    from vaelab.use.trained import TrainedModel

    plain = TrainedModel(build_model(ModelConfig(data_dim=8, latent_dim=2)), RunConfig(),
                         tmp_path, [])
    with pytest.raises(ValueError, match="not conditional.*expected no condition, got int"):
        plain.sample(2, c=1)
    with pytest.raises(ValueError, match="not conditional"):
        plain.encode(x[:2], c=[0, 1])
    with pytest.raises(ValueError, match="at most 1000 levels, got 1001"):
        condition_.resolve({"source": "given", "kind": "categorical"}, np.arange(1001))


def test_condition_specs_parse_and_resolve():
    assert condition_spec.parse("labels") == {"source": "labels"}
    assert condition_spec.parse("batch, age") == {"source": "columns",
                                                  "columns": ["batch", "age"]}
    with pytest.raises(ValueError, match="condition.source"):
        condition_spec.parse({"source": "nowhere"})
    batch = condition_.resolve({"source": "columns", "columns": ["b"]}, np.array([[2.], [0.]]))
    assert batch["kind"] == "categorical" and batch["levels"] == [0, 2]
    real = condition_.resolve({"source": "columns", "columns": ["a"]},
                              np.array([[0.5], [1.5], [2.5]]))
    assert real["kind"] == "real" and real["loc"] == [1.5]
    assert real["scale"] == pytest.approx([np.std([0.5, 1.5, 2.5])])
    coded = condition_.encode(real, np.array([[1.5], [2.5]]))
    torch.testing.assert_close(coded, torch.tensor([[0.0], [1 / real["scale"][0]]]))
    assert condition_spec.encode_value(batch, "2") == [0.0, 1.0]


def test_cli_conditions_on_a_table_column(tmp_path, capsys):
    rng = np.random.default_rng(0)
    batch = rng.integers(0, 2, 400)
    x = rng.normal(size=(400, 3)) + 3.0 * batch[:, None]      # the batch shifts every column
    table = tmp_path / "cells.csv"
    rows = [",".join(["a", "b", "c", "batch"])] + [
        ",".join([*(f"{v:.5f}" for v in r), str(b)]) for r, b in zip(x, batch, strict=True)]
    table.write_text("\n".join(rows) + "\n")
    run = tmp_path / "run"
    code, out, err = run_cli(capsys, "train", "--data", table, "--out", run, "--condition",
                             "batch", "--likelihood", "gaussian", "--binarize", "none",
                             "--epochs", "2", "--latent-dim", "2", "--hidden", "16",
                             "--device", "cpu", "--compile", "off")
    assert code == 0, err
    trained = load(run)
    assert trained.config.model.condition["levels"] == [0, 1]
    assert trained.model.x_dim == 3 and trained.model.data_dim == 5
    code, out, err = run_cli(capsys, "evaluate", run, "--k", "10", "--limit", "20", "--quiet")
    assert code == 0, err
    assert "conditional run" in out and "batch: categorical, 2 levels" in out
    codes = tmp_path / "z.npy"
    code, _, err = run_cli(capsys, "encode", run, "--out", codes, "--condition", "1")
    assert code == 0, err
    assert np.load(codes).shape == (400, 2)
    code, _, err = run_cli(capsys, "sample", run, "-n", "8", "--out", tmp_path / "s.png")
    assert code != 0 and "--condition" in err and "\n" not in err.strip()
    code, _, err = run_cli(capsys, "sample", run, "-n", "8", "--out", tmp_path / "s.png",
                           "--condition", "7")
    assert code != 0 and "levels [0, 1], got '7'" in err
    code, _, err = run_cli(capsys, "sample", run, "-n", "8", "--out", tmp_path / "s.png",
                           "--condition", "1")
    assert code == 0, err
    code, _, err = run_cli(capsys, "reconstruct", run, "-n", "8", "--out", tmp_path / "r.png",
                           "--condition", "0")
    assert code == 0, err
    code, out, err = run_cli(capsys, "score", run, "--out", tmp_path / "s.csv", "--k", "5",
                             "--limit", "30", "--score", "elbo", "typicality", "latent-knn")
    assert code == 0, err
    assert "log p(x | c)" in out


def test_importance_sampled_log_p_x_given_c_is_exact_when_the_decoder_ignores_z():
    """Oracle: with the weights on z zeroed, p(x | z, c) = p(x | c) = Bernoulli(b + W_c c);
    with the prior as proposal every importance weight is that value, so the estimate is
    exact, and it must equal the Bernoulli log-probability computed in float64 by numpy."""
    from vaelab.measure.evaluate import evaluate_model, log_likelihood

    torch.manual_seed(0)
    model = build_model(ModelConfig(data_dim=5, latent_dim=2, condition=LEVELS,
                                    net_options={"hidden": []}))
    layer = model.decoder.net[0]
    with torch.no_grad():
        layer.weight[:, :2] = 0
        layer.weight[:, 2:] *= 8                          # extreme logits too
    x = torch.rand(6, 5).round()
    c = torch.eye(3)[[0, 1, 2, 0, 1, 2]]
    prior = torch.distributions.Independent(
        torch.distributions.Normal(torch.zeros(6, 2), torch.ones(6, 2)), 1)
    got = log_likelihood(model, prior, torch.cat([x, c], 1), 50).log_likelihood
    w, b = layer.weight.detach().double().numpy(), layer.bias.detach().double().numpy()
    logits = c.double().numpy() @ w[:, 2:].T + b
    xs = x.double().numpy()
    expected = (xs * logits - np.logaddexp(0, logits)).sum(1)
    np.testing.assert_allclose(got.double().numpy(), expected, rtol=1e-5)
    report = evaluate_model(model, torch.cat([x, c], 1), num_samples=10, data_kind="binary")
    assert report["data_dim"] == 5                        # bits per dimension of x, not [x | c]


def test_cli_batch_correction_of_a_table_writes_the_values(tmp_path, capsys):
    """reconstruct --condition 0 --out X.csv|X.npy writes every row's E[x | z, c = 0] under
    the table's column names (the batch column left out), the same numbers as the Python
    API; sample --out X.csv writes n draws; the picture's line names the condition used."""
    import pandas as pd

    rng = np.random.default_rng(1)
    batch = rng.integers(0, 2, 120)
    x = rng.normal(size=(120, 3)) + 3.0 * batch[:, None]
    pd.DataFrame({"g0": x[:, 0], "g1": x[:, 1], "batch": batch, "g2": x[:, 2]}).to_csv(
        tmp_path / "cells.csv", index=False)
    run = tmp_path / "run"
    code, _, err = run_cli(capsys, "train", "--data", tmp_path / "cells.csv", "--out", run,
                           "--condition", "batch", "--likelihood", "gaussian", "--binarize",
                           "none", "--epochs", "1", "--latent-dim", "2", "--hidden", "8",
                           "--compile", "off", "--quiet")
    assert code == 0, err
    code, out, err = run_cli(capsys, "reconstruct", run, "--condition", "0", "--out",
                             tmp_path / "corrected.csv")
    assert code == 0, err
    assert "120 rows" in out and "--condition 0" in out
    corrected = pd.read_csv(tmp_path / "corrected.csv")
    assert list(corrected.columns) == ["g0", "g1", "g2"] and len(corrected) == 120
    trained = load(run)
    expected = trained.reconstruct(torch.from_numpy(x).float(), c=batch.tolist(), to=0)
    np.testing.assert_allclose(corrected.to_numpy(), expected.numpy(), rtol=1e-6, atol=1e-6)
    code, _, err = run_cli(capsys, "reconstruct", run, "--condition", "0", "--out",
                           tmp_path / "corrected.npy")
    assert code == 0, err
    np.testing.assert_allclose(np.load(tmp_path / "corrected.npy"), expected.numpy(),
                               rtol=1e-6, atol=1e-6)
    code, out, err = run_cli(capsys, "sample", run, "--condition", "1", "-n", "5", "--out",
                             tmp_path / "s.csv")
    assert code == 0, err
    assert list(pd.read_csv(tmp_path / "s.csv").columns) == ["g0", "g1", "g2"]
    assert len(pd.read_csv(tmp_path / "s.csv")) == 5 and "p(x | c = 1)" in out
    code, out, err = run_cli(capsys, "reconstruct", run, "-n", "4", "--condition", "1",
                             "--out", tmp_path / "r.png")
    assert code == 0 and "decoded under --condition 1" in out, err


def test_a_level_of_class_labels_can_be_given_by_its_class_name():
    """A run conditioned on Fashion-MNIST's labels takes "Sneaker" (any case) for level 7;
    an unknown name lists the names."""
    spec = {"source": "labels", "kind": "categorical", "levels": list(range(10))}
    named = condition_spec.with_class_names(spec, "fashion-mnist")
    assert condition_spec.encode_value(named, "Sneaker") == [float(i == 7) for i in range(10)]
    assert condition_spec.encode_value(named, "ankle boot")[9] == 1.0
    assert condition_spec.encode_value(named, "3")[3] == 1.0            # levels still work
    with pytest.raises(ValueError, match="or their class names .*'Sneaker'"):
        condition_spec.encode_value(named, "Sandals")
    assert condition_spec.with_class_names(spec, "table.csv") is spec    # no names known
