"""Training on incomplete data refuses what was never observed (``vaelab.fit.masked``).

A column missing in every row (or a row missing every entry) carries nothing to learn, and
whatever the model "imputed" there would be invented: ``vaelab train --missing mask`` stops
with one line naming them, 1-based like every other position in a CSV message.
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import run_cli


def _csv(path, cells) -> None:
    path.write_text("a,b,c,d,e\n" + "\n".join(",".join(row) for row in cells) + "\n")


@pytest.fixture()
def cells():
    rng = np.random.default_rng(0)
    x = np.round(rng.random((40, 5)) * 10 - 5, 3)
    return [["" if rng.random() < 0.2 else repr(v) for v in row] for row in x.tolist()]


TRAIN = ["--missing", "mask", "--likelihood", "gaussian", "--binarize", "none", "--epochs", "1",
         "--hidden", "8", "--latent-dim", "2", "--quiet"]


def _one_error(code: int, out: str, err: str) -> str:
    assert code == 1 and out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("vaelab: error: "), err
    return lines[0]


def test_columns_never_observed_are_refused_by_name(cells, tmp_path, capsys):
    for row in cells:
        row[1], row[4] = "", "nan"           # the 2nd and 5th columns: never observed
    _csv(tmp_path / "t.csv", cells)
    line = _one_error(*run_cli(capsys, "train", "--data", tmp_path / "t.csv", "--out",
                               tmp_path / "run", *TRAIN))
    assert "2 column(s) missing in every row" in line and ": 2, 5 (1-based)" in line
    assert not (tmp_path / "run").exists()


def test_rows_never_observed_are_refused_by_name(cells, tmp_path, capsys):
    cells[6] = [""] * 5                      # data rows 7 and 30: every entry missing
    cells[29] = ["nan"] * 5
    _csv(tmp_path / "t.csv", cells)
    line = _one_error(*run_cli(capsys, "train", "--data", tmp_path / "t.csv", "--out",
                               tmp_path / "run", *TRAIN))
    assert "2 row(s) with every entry missing" in line and ": 7, 30 (1-based" in line


def test_a_column_seen_only_in_held_out_rows_is_refused(cells, tmp_path, capsys):
    for row in cells:
        row[2] = ""
    cells[0][2] = "1.5"                      # one value, in data row 1
    _csv(tmp_path / "t.csv", cells)
    from vaelab import data

    ds = data.load_dataset(tmp_path / "t.csv", allow_missing=True)
    train, _ = data.train_val_split(ds, 0.5, 1)
    assert np.isnan(train.x[:, 2].numpy()).all()   # seed 1 holds data row 1 out
    line = _one_error(*run_cli(capsys, "train", "--data", tmp_path / "t.csv", "--out",
                               tmp_path / "run", *TRAIN, "--val-fraction", "0.5", "--seed", "1"))
    assert "among the training rows" in line and ": 3 (1-based)" in line
    code, _, err = run_cli(capsys, "train", "--data", tmp_path / "t.csv", "--out",
                           tmp_path / "run0", *TRAIN, "--val-fraction", "0.5", "--seed", "0")
    assert code == 0, err                          # seed 0 keeps it for training


def test_drop_empty_rows_trains_without_them_and_says_which(cells, tmp_path, capsys):
    import json

    cells[6] = [""] * 5
    cells[29] = ["nan"] * 5
    _csv(tmp_path / "t.csv", cells)
    argv = [a for a in TRAIN if a != "--quiet"]
    code, out, err = run_cli(capsys, "train", "--data", tmp_path / "t.csv", "--out",
                             tmp_path / "run", *argv, "--val-fraction", "0", "--drop-empty-rows")
    assert code == 0, err
    assert "trained without 2 row(s)" in out and ": 7, 30 (1-based)" in out
    meta = json.loads((tmp_path / "run" / "config.json").read_text())
    assert meta["dataset"]["num_train"] == 38
    assert meta["train"]["drop_empty_rows"] is True


def test_drop_empty_rows_needs_missing_mask(tmp_path, capsys):
    np.save(tmp_path / "d.npy", np.random.default_rng(0).random((20, 3)).astype(np.float32))
    code, _, err = run_cli(capsys, "train", "--data", tmp_path / "d.npy", "--out",
                           tmp_path / "run", "--drop-empty-rows", "--epochs", "1")
    assert code == 2 and "--drop-empty-rows: needs --missing mask" in err


@pytest.mark.device
def test_masked_training_and_imputation_on_the_device(tmp_path, device):
    """Masked training runs on the device under test, and imputing CPU rows with the
    device model gives the CPU copy's imputations (to Monte Carlo error, K = 4000), with the
    observed entries returned bit for bit."""
    import copy

    import torch

    from vaelab.fit.train import train
    from vaelab.use.impute import impute

    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 2)) @ rng.normal(size=(2, 5)) + 0.1 * rng.normal(size=(200, 5))
    holes = np.where(rng.random(x.shape) < 0.2, np.nan, x)
    config = {"model": {"hidden": [16], "latent_dim": 2, "missing": "mask",
                        "likelihood": "gaussian"},
              "train": {"epochs": 2, "batch_size": 50, "binarize": "none",
                        "device": device.type}}
    run = train(config, tmp_path / "run", dataset=holes, log=None)
    model = run.model
    assert next(model.parameters()).device.type == device.type
    rows = holes[:20]
    torch.manual_seed(0)
    on_device = impute(model, rows, num_samples=4000)
    on_cpu = impute(copy.deepcopy(model).cpu(), rows, num_samples=4000)
    seen = ~np.isnan(rows)
    assert isinstance(on_device, np.ndarray) and np.array_equal(on_device[seen], rows[seen])
    np.testing.assert_allclose(on_device, on_cpu, atol=0.05 * np.nanstd(x))
