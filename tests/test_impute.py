"""``vaelab train --missing mask`` and ``vaelab impute`` end to end on a small CSV with holes:
the run trains on the observed entries, reloads as a masked model, the CLI and the Python call
give the same imputations, observed cells come back exactly, and bad input is one line."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from conftest import run_cli

from vaelab import cli
from vaelab.use.impute import impute
from vaelab.use.trained import load

N, D = 160, 5


@pytest.fixture(scope="module")
def table(tmp_path_factory):
    """A low-rank real table (values far from [0, 1]) with 25% empty cells, as CSV and .npy."""
    folder = tmp_path_factory.mktemp("table")
    rng = np.random.default_rng(0)
    x = rng.normal(size=(N, 2)) @ rng.normal(size=(2, D)) * 4 + 20 + 0.1 * rng.normal(size=(N, D))
    x = np.round(x, 3)
    holes = np.where(rng.random(x.shape) < 0.25, np.nan, x)
    lines = ["a,b,c,d,e"] + [",".join("" if math.isnan(v) else repr(v) for v in row.tolist())
                             for row in holes]
    (folder / "t.csv").write_text("\n".join(lines) + "\n")
    np.save(folder / "t.npy", holes)
    return folder, x, holes


@pytest.fixture(scope="module")
def run(table, tmp_path_factory):
    folder = table[0]
    out = tmp_path_factory.mktemp("runs") / "miwae"
    code = cli.main(["train", "--data", str(folder / "t.csv"), "--out", str(out),
                     "--missing", "mask", "--missing-model", "self-masking",
                     "--objective", "iwae", "--num-samples", "4", "--epochs", "3",
                     "--batch-size", "32", "--likelihood", "gaussian", "--binarize", "none",
                     "--latent-dim", "2", "--hidden", "16", "--device", "cpu", "--quiet",
                     "--val-fraction", "0", "--drop-empty-rows"])
    assert code == 0
    return out


def test_a_masked_run_trains_and_reloads_with_its_standardization(run, table):
    _, _, holes = table
    trained = load(run)
    assert trained.config.model.missing == "mask"
    assert trained.config.model.missing_model == "self-masking"
    np.testing.assert_allclose(trained.model.data_loc.numpy(), np.nanmean(holes, 0), rtol=1e-5)
    np.testing.assert_allclose(trained.model.data_scale.numpy(), np.nanstd(holes, 0, ddof=1),
                               rtol=1e-4)
    metrics = (run / "metrics.jsonl").read_text().splitlines()
    assert len(metrics) == 3 and "NaN" not in metrics[-1]


def test_cli_and_python_impute_the_same_and_keep_observed_cells(run, table, capsys, tmp_path):
    folder, _, holes = table
    code, out, err = run_cli(capsys, "impute", run, "--data", folder / "t.csv", "--out",
                             tmp_path / "f.csv", "--k", "64", "--seed", "3")
    assert code == 0, err
    assert f"imputed {int(np.isnan(holes).sum())} missing entries in {N} rows" in out
    lines = (tmp_path / "f.csv").read_text().splitlines()
    source = (folder / "t.csv").read_text().splitlines()
    assert lines[0] == "a,b,c,d,e"
    for got, given in zip(lines[1:], source[1:], strict=True):  # observed cells, as written
        for g, s in zip(got.split(","), given.split(","), strict=True):
            if s:
                assert float(g) == float(s)
            else:
                assert math.isfinite(float(g))
    python = impute(load(run), holes, num_samples=64, seed=3)
    filled = np.loadtxt(tmp_path / "f.csv", delimiter=",", skiprows=1)
    assert np.array_equal(filled, python)


def test_multiple_imputations_by_cli_are_m_by_n_by_d(run, table, capsys, tmp_path):
    folder, _, holes = table
    code, _, err = run_cli(capsys, "impute", run, "--data", folder / "t.npy", "--out",
                           tmp_path / "m.npy", "--draws", "3", "--k", "32")
    assert code == 0, err
    draws = np.load(tmp_path / "m.npy")
    assert draws.shape == (3, N, D)
    observed = ~np.isnan(holes)
    for m in draws:
        assert np.array_equal(m[observed], holes[observed])
    assert not np.array_equal(draws[0][~observed], draws[1][~observed])


def test_nan_without_the_flag_is_one_line_saying_how_to_opt_in(table, capsys, tmp_path):
    folder = table[0]
    code, _, err = run_cli(capsys, "train", "--data", folder / "t.npy", "--out", tmp_path / "r",
                           "--epochs", "1", "--likelihood", "gaussian", "--binarize", "none")
    assert code == 1 and err.count("\n") == 1 and "--missing mask" in err
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("argv, message", [
    (["--missing-model", "self-masking"], "--missing-model self-masking: needs --missing mask"),
    (["--missing", "mask", "--drop-empty-rows", "--inference", "per-datapoint"],
     "--inference: --missing mask needs"),
    (["--missing", "mask", "--drop-empty-rows", "--schedule", "alternating", "--phi-steps", "1"],
     "--schedule: --missing mask trains"),
])
def test_train_refuses_bad_missing_options(table, capsys, tmp_path, argv, message):
    folder = table[0]
    code, _, err = run_cli(capsys, "train", "--data", folder / "t.csv", "--out", tmp_path / "r",
                           "--epochs", "1", "--likelihood", "gaussian", "--binarize", "none",
                           *argv)
    assert code == 1 and message in err and err.count("\n") == 1


def test_impute_refuses_bad_input_before_writing(run, table, capsys, tmp_path):
    folder = table[0]
    cases = [
        (["--data", folder / "t.csv", "--out", tmp_path / "x.csv", "--draws", "2"],
         "--out: a .csv holds one table"),
        (["--data", folder / "t.csv", "--out", tmp_path / "x.txt"], "--out: expected a .npy"),
        (["--data", folder / "t.csv", "--out", tmp_path / "no" / "x.npy"], "writable folder"),
        (["--data", folder / "missing.csv", "--out", tmp_path / "x.npy"], "--data"),
    ]
    np.save(tmp_path / "wide.npy", np.zeros((2, D + 1)))
    cases.append((["--data", tmp_path / "wide.npy", "--out", tmp_path / "x.npy"],
                  f"--data: expected {D} values per row"))
    raw = (tmp_path / "wide.npy").read_bytes()
    (tmp_path / "cut.npy").write_bytes(raw[:-8])          # the header promises 8 more bytes
    cases.append((["--data", tmp_path / "cut.npy", "--out", tmp_path / "x.npy"],
                  "truncated or corrupt"))
    for argv, message in cases:
        code, _, err = run_cli(capsys, "impute", run, *argv)
        assert code == 1 and message in err and err.count("\n") == 1, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cut.npy", "wide.npy"]


def test_impute_refuses_a_run_trained_on_complete_data(table, capsys, tmp_path):
    folder, x, _ = table
    np.save(tmp_path / "full.npy", x)
    assert cli.main(["train", "--data", str(tmp_path / "full.npy"), "--out",
                     str(tmp_path / "plain"), "--epochs", "1", "--likelihood", "gaussian",
                     "--binarize", "none", "--latent-dim", "2", "--hidden", "8",
                     "--quiet"]) == 0
    capsys.readouterr()
    code, _, err = run_cli(capsys, "impute", tmp_path / "plain", "--data", folder / "t.npy",
                           "--out", tmp_path / "x.npy")
    assert code == 1 and "needs a run trained with --missing mask" in err


def test_a_dataset_with_no_missing_values_trains_like_any_other(tmp_path):
    """--missing mask on complete data: every entry observed, a finite bound, same rows."""
    from vaelab.fit.train import train

    torch.manual_seed(0)
    x = torch.rand(64, 4)
    from vaelab import data as data_

    ds = data_.Dataset(x, None, None, "full", "unit-interval")
    res = train({"model": {"latent_dim": 2, "hidden": [8], "likelihood": "gaussian",
                           "missing": "mask"},
                 "train": {"epochs": 2, "batch_size": 16, "binarize": "none",
                           "device": "cpu"}}, tmp_path / "r", dataset=ds, log=None,
                progress=False)
    assert all(math.isfinite(m["train_elbo"]) for m in res.metrics)
    assert torch.equal(res.model.data_scale, torch.ones(4))   # data in [0, 1]: no rescaling


def test_a_masked_run_resumes_bit_for_bit(tmp_path):
    """Interrupted after epoch 1 and resumed = uninterrupted (dynamic binarization keeps NaN and
    draws from the per-epoch reseeded RNG; the missingness model's Adam moments are saved)."""
    from vaelab import data as data_
    from vaelab.fit.train import train

    torch.manual_seed(0)
    x = torch.rand(120, 10)
    x[torch.rand(120, 10) < 0.3] = math.nan
    ds = data_.Dataset(x, None, None, "grey", "unit-interval")
    cfg = {"model": {"latent_dim": 2, "hidden": [8], "missing": "mask",
                     "missing_model": "self-masking"},
           "train": {"epochs": 2, "batch_size": 32, "binarize": "dynamic", "device": "cpu",
                     "objective": "iwae", "num_samples": 3}}
    whole = train(cfg, tmp_path / "a", dataset=ds, log=None, progress=False)
    first = {"model": cfg["model"], "train": dict(cfg["train"], epochs=1)}
    train(first, tmp_path / "b", dataset=ds, log=None, progress=False)
    resumed = train(cfg, tmp_path / "b", resume=True, dataset=ds, log=None, progress=False)
    a, b = whole.model.state_dict(), resumed.model.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert whole.metrics == [{**m, "seconds": whole.metrics[i]["seconds"],
                              "samples_per_s": whole.metrics[i]["samples_per_s"]}
                             for i, m in enumerate(resumed.metrics)]


def _csv(path, names, rows) -> None:
    lines = [",".join(names)] + [",".join("" if math.isnan(v) else repr(v) for v in row)
                                 for row in rows.tolist()]
    path.write_text("\n".join(lines) + "\n")


def test_a_csv_run_records_its_column_names(run):
    """The header of the training CSV is recorded where a DataFrame's names are."""
    assert load(run).columns == ("a", "b", "c", "d", "e")


def test_reversed_columns_are_read_by_name(run, table, capsys, tmp_path):
    """The same file with its columns reversed gives the very same imputations (written in
    the file's own order) and codes; a .npy has no names and is read by position."""
    folder, _, holes = table
    _csv(tmp_path / "rev.csv", "edcba", holes[:, ::-1])
    outs = {}
    for name, source in (("same", folder / "t.csv"), ("rev", tmp_path / "rev.csv")):
        code, _, err = run_cli(capsys, "impute", run, "--data", source, "--out",
                               tmp_path / f"filled_{name}.csv", "--k", "16", "--seed", "3")
        assert code == 0, err
        outs[name] = np.loadtxt(tmp_path / f"filled_{name}.csv", delimiter=",", skiprows=1)
    assert (tmp_path / "filled_rev.csv").read_text().splitlines()[0] == "e,d,c,b,a"
    assert np.array_equal(outs["rev"], outs["same"][:, ::-1])
    codes = {}
    for name, source in (("same", folder / "t.csv"), ("rev", tmp_path / "rev.csv"),
                         ("npy", folder / "t.npy")):
        code, _, err = run_cli(capsys, "encode", run, "--data", source, "--out",
                               tmp_path / f"{name}.npy")
        assert code == 0, err
        codes[name] = np.load(tmp_path / f"{name}.npy")
    assert np.array_equal(codes["rev"], codes["same"])
    assert np.array_equal(codes["npy"], codes["same"])


@pytest.mark.parametrize("names, wanted", [
    ("abcd", "missing 'e'; unexpected none"),
    ("abcdef", "missing none; unexpected 'f'"),
])
def test_a_missing_or_extra_column_is_one_line(run, table, capsys, tmp_path, names, wanted):
    folder, _, holes = table
    rows = np.concatenate([holes, holes[:, :1]], axis=1)[:, :len(names)]
    _csv(tmp_path / "bad.csv", names, rows)
    for command, out in (("impute", "f.csv"), ("encode", "z.npy")):
        code, _, err = run_cli(capsys, command, run, "--data", tmp_path / "bad.csv", "--out",
                               tmp_path / out)
        assert code != 0 and len(err.strip().splitlines()) == 1, err
        assert err.startswith("vaelab: error: --data: expected the 5 columns the run was "
                              "trained on") and "bad.csv" in err and wanted in err, err


@pytest.fixture(scope="module")
def fitted_run(table, tmp_path_factory):
    """A masked model trained long enough (80 epochs at lr 0.01) to have learned the table's
    two-dimensional structure."""
    folder = table[0]
    out = tmp_path_factory.mktemp("runs") / "fitted"
    code = cli.main(["train", "--data", str(folder / "t.csv"), "--out", str(out),
                     "--missing", "mask", "--epochs", "80", "--lr", "0.01", "--batch-size", "32",
                     "--likelihood", "gaussian", "--binarize", "none", "--latent-dim", "2",
                     "--hidden", "16", "--device", "cpu", "--quiet", "--val-fraction", "0",
                     "--drop-empty-rows", "--seed", "1"])
    assert code == 0
    return out


def test_cli_imputation_beats_the_column_mean(fitted_run, table, capsys, tmp_path):
    """On the hidden cells of a rank-2 table the CLI's imputations (equal to the library's
    call) are closer to the true values than the observed column means, by RMSE."""
    folder, x, holes = table
    code, _, err = run_cli(capsys, "impute", fitted_run, "--data", folder / "t.csv", "--out",
                           tmp_path / "f.csv", "--k", "200", "--seed", "2")
    assert code == 0, err
    filled = np.loadtxt(tmp_path / "f.csv", delimiter=",", skiprows=1)
    assert np.array_equal(filled, impute(load(fitted_run), holes, num_samples=200, seed=2))
    hidden = np.isnan(holes)
    column_mean = np.broadcast_to(np.nanmean(holes, 0), x.shape)
    rmse = math.sqrt(((filled - x)[hidden] ** 2).mean())
    baseline = math.sqrt(((column_mean - x)[hidden] ** 2).mean())
    assert rmse < 0.75 * baseline, (rmse, baseline)


def test_impute_answers_on_the_models_device(monkeypatch):
    """x arrives on the CPU while the model may be on a GPU: the rows reach the model on its
    device ('meta' stands for cuda here)."""
    from vaelab.config import ModelConfig
    from vaelab.model.masked import build_model
    from vaelab.use import impute as impute_

    model = build_model(ModelConfig(data_dim=3, latent_dim=2, hidden=(4,), missing="mask",
                                    likelihood="gaussian"))
    seen = []

    def rows_seen(_model, rows, *_args):
        seen.append(rows.device)
        raise RuntimeError("stop")

    monkeypatch.setattr(impute_, "device_of", lambda _m: torch.device("meta"))
    monkeypatch.setattr(impute_, "_impute_rows", rows_seen)
    x = torch.tensor([[0.5, float("nan"), 1.0]])
    with pytest.raises(RuntimeError, match="stop"):
        impute(model, x, binary=False)
    assert seen == [torch.device("meta")]


def test_impute_reports_the_weights_effective_sample_size():
    """The ESS impute_with gives is 1 / Σ_k w̃_k² of the very weights it averages with (the
    same draws replayed), in [1, K] per row."""
    from vaelab.config import ModelConfig
    from vaelab.infer.masked import masked_draws
    from vaelab.model.masked import build_model
    from vaelab.use.impute import impute_with

    model = build_model(ModelConfig(data_dim=4, latent_dim=2, hidden=(8,), missing="mask",
                                    likelihood="gaussian"))
    x = torch.randn(6, 4, generator=torch.Generator().manual_seed(1))
    mask = torch.rand(6, 4, generator=torch.Generator().manual_seed(2)) > 0.3
    with torch.no_grad():
        q = model.encoder(torch.where(mask, x, torch.full_like(x, math.nan)))
        ess: list[torch.Tensor] = []
        torch.manual_seed(5)
        impute_with(model, q, x, mask, 20, ess_out=ess)
        torch.manual_seed(5)
        d = masked_draws(model, q, x, mask, 20, want_imputations=True)
    weights = d.log_weights.softmax(0)
    torch.testing.assert_close(ess[0], 1 / weights.square().sum(0))
    assert bool(((ess[0] >= 1 - 1e-6) & (ess[0] <= 20 + 1e-6)).all())


@pytest.mark.parametrize("k", ["1", "40"])
def test_cli_impute_warns_about_its_importance_sampling_as_evaluate_does(run, table, capsys,
                                                                          tmp_path, k):
    """`impute` prints honest.reliability_warnings of the rows it imputed (the rule evaluate
    and score use): the single-draw line at k = 1, a tiny-ESS line where the weights say so."""
    from vaelab.measure import honest

    folder, _, holes = table
    code, out, err = run_cli(capsys, "impute", run, "--data", folder / "t.csv", "--out",
                             tmp_path / "f.csv", "--k", k, "--seed", "3")
    assert code == 0, err
    diagnostics: dict = {}
    impute(load(run), holes, num_samples=int(k), seed=3, diagnostics=diagnostics)
    rows = torch.from_numpy(np.isnan(holes).any(1))
    want = honest.reliability_warnings(diagnostics["ess"][rows], None, int(k),
                                       quantity="imputed values", bound=False)
    assert want                        # k = 1, or tiny ESS on some rows of this short run
    assert [line for line in out.splitlines() if line.startswith("warning")] == want
    if k == "1":
        assert want == ["warning: k = 1 importance sample: imputed values rest on one "
                        "unweighted draw; use --k 1000 or more"]
