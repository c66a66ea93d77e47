"""Missing values in tables and masked runs: only empty cells and nan are missing (other text
is a one-line error with 1-based data row and column), runs trained with --missing mask get a
right `next:` hint and messages, and CLI errors name flags, not config fields."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import run_cli

from vaelab import data

TINY = ["--limit", "300", "--epochs", "1", "--hidden", "16", "--latent-dim", "2", "--quiet"]


def _without(argv: list, flags: list) -> list:
    """``argv`` without the flags (and their values) of ``flags``: each given once."""
    out, skip = [], False
    for i, token in enumerate(argv):
        if skip:
            skip = False
        elif token in flags:
            skip = i + 1 < len(argv) and not str(argv[i + 1]).startswith("--")
        else:
            out.append(token)
    return out


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tables")
    (folder / "text.csv").write_text("a,b\n1,2\nfoo,3\n,4\n")
    (folder / "np.csv").write_text("0.1,0.2\nnp.float64(14.23),0.3\n")
    rng = np.random.default_rng(0)
    x = np.round(rng.random((40, 4)), 3)
    full = "\n".join(",".join(repr(v) for v in row) for row in x.tolist()) + "\n"
    (folder / "full.csv").write_text(full)
    cells = [["" if rng.random() < 0.2 else repr(v) for v in row] for row in x.tolist()]
    cells[0][0], cells[1][1] = "nan", "NaN"
    (folder / "inc.csv").write_text("\n".join(",".join(r) for r in cells) + "\n")
    return folder


@pytest.mark.parametrize("allow_missing", [False, True])
def test_text_cells_are_an_error_with_1_based_positions(files, allow_missing):
    with pytest.raises(ValueError, match=r"could not convert string 'foo' at data row 2, "
                                         r"column 1 \(1-based, header excluded\)"):
        data.load_dataset(files / "text.csv", allow_missing=allow_missing)


def test_empty_and_nan_cells_are_missing(files):
    x = data.load_dataset(files / "inc.csv", allow_missing=True).x
    assert x.shape == (40, 4) and bool(x[0, 0].isnan()) and bool(x[1, 1].isnan())


def test_train_missing_mask_refuses_text(files, capsys, tmp_path):
    code, _, err = run_cli(capsys, "train", "--data", files / "text.csv", "--missing", "mask",
                           "--out", tmp_path / "r", *TINY)
    assert code == 1 and err.count("\n") == 1 and "'foo' at data row 2, column 1" in err


def test_masked_run_next_evaluate_encode_impute(files, capsys, tmp_path):
    run = tmp_path / "run"
    code, out, _ = run_cli(capsys, "train", "--data", files / "inc.csv", "--missing", "mask",
                           "--out", run, *TINY)
    assert code == 0 and f"next: vaelab impute {run}" in out and "--data" in out
    code, _, err = run_cli(capsys, "evaluate", run)
    assert code == 1 and err.count("\n") == 1 and "expected complete held-out data" in err
    assert "pass --missing mask" not in err and "--data" in err
    code, _, err = run_cli(capsys, "encode", run, "--data", files / "inc.csv",
                           "--out", tmp_path / "z.npy")
    z = np.load(tmp_path / "z.npy")
    assert code == 0 and z.shape == (40, 2) and np.isfinite(z).all()
    code, _, err = run_cli(capsys, "impute", run, "--data", files / "np.csv",
                           "--out", tmp_path / "o.csv")
    assert code == 1 and "'np.float64(14.23)' at data row 2, column 1" in err
    assert not (tmp_path / "o.csv").exists()


@pytest.mark.parametrize("argv, message", [
    (["--data", "nofile.npy"], "--data: expected a dataset name"),
    (["--net", "conv"], "--net conv: expected image data"),
    (["--missing", "mask", "--latent-dim", "4,2"], "--missing mask: is implemented for one "
                                                   "latent layer, got --latent-dim 4,2"),
    (["--classes", "11"], "--classes: expected"),
    (["--perturb-fraction", "1.5"], "--perturb-fraction: expected a number"),
])
def test_messages_name_flags(files, capsys, tmp_path, argv, message):
    flags = [a for a in argv if str(a).startswith("--")]   # the case's value, given once
    args = [*_without(["--data", files / "full.csv", *TINY], flags), "--out", tmp_path / "r",
            *argv]
    code, _, err = run_cli(capsys, "train", *args)
    assert code != 0 and message in err and err.count("\n") == 1
    assert "_" not in err.split("error:")[1].split("got")[0]
