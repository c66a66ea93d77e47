"""``vaelab train`` reads its data file whole before training (``vaelab.fit.train``): what
would stop ``vaelab evaluate`` later (the test split, or rows beyond --limit that evaluate
reads) stops training now, in one line, with nothing written."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import run_cli
from PIL import Image

TRAIN = ["--epochs", "1", "--hidden", "8", "--latent-dim", "2", "--batch-size", "32",
         "--quiet"]


def _refused(capsys, tmp_path, data, *extra) -> str:
    code, out, err = run_cli(capsys, "train", "--data", data, "--out", tmp_path / "run",
                             *TRAIN, *extra)
    assert code == 1 and out == "" and err.count("\n") == 1, (code, out, err)
    assert not (tmp_path / "run").exists()
    return err


def _grey(n: int, d: int = 6, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((n, d)).astype(np.float32)


def test_a_test_split_with_non_finite_values_stops_training(capsys, tmp_path):
    x_test = _grey(20)
    x_test[7, 2] = np.inf
    np.savez(tmp_path / "d.npz", x_train=_grey(60), x_test=x_test)
    err = _refused(capsys, tmp_path, tmp_path / "d.npz")
    assert "data: its test split of" in err and "read later by vaelab evaluate" in err
    assert "1 non-finite (NaN or inf) values, the first at index (7, 2)" in err


def test_a_test_split_of_another_width_stops_training(capsys, tmp_path):
    np.savez(tmp_path / "d.npz", x_train=_grey(60), x_test=_grey(20, d=5))
    err = _refused(capsys, tmp_path, tmp_path / "d.npz")
    assert "expected 6 values per example (as in the training rows), got 5" in err


def test_rows_beyond_the_limit_are_checked_too(capsys, tmp_path):
    x = _grey(90)
    x[80, 0] = 2.0                                   # outside [0, 1]: binarize cannot take it
    np.save(tmp_path / "d.npy", x)
    err = _refused(capsys, tmp_path, tmp_path / "d.npy", "--limit", "50")
    assert "rows beyond --limit / --classes" in err and "--binarize" in err
    code, _, err = run_cli(capsys, "train", "--data", tmp_path / "d.npy", "--out",
                           tmp_path / "ok", *TRAIN, "--limit", "50", "--binarize", "none",
                           "--likelihood", "gaussian")
    assert code == 0, err                            # real values: every row is usable


def test_an_unreadable_test_image_stops_training(capsys, tmp_path):
    rng = np.random.default_rng(0)
    for split, n in (("train", 40), ("test", 5)):
        (tmp_path / "img" / split).mkdir(parents=True)
        for i in range(n):
            Image.fromarray(rng.integers(0, 256, (4, 4), dtype=np.uint8)).save(
                tmp_path / "img" / split / f"{i}.png")
    (tmp_path / "img" / "test" / "3.png").write_bytes(b"not a png")
    err = _refused(capsys, tmp_path, tmp_path / "img")
    assert "its test split of" in err and "3.png" in err


@pytest.mark.parametrize("split_file", [False, True])
def test_good_data_trains(capsys, tmp_path, split_file):
    if split_file:
        np.savez(tmp_path / "d.npz", x_train=_grey(60), x_test=_grey(20))
    else:
        np.save(tmp_path / "d.npz", _grey(60))
    data = tmp_path / ("d.npz" if split_file else "d.npz.npy")
    code, _, err = run_cli(capsys, "train", "--data", data, "--out", tmp_path / "run", *TRAIN)
    assert code == 0, err
