"""vaelab.use.streamed: per-row outputs of a file written in input order, continued after a
kill; the oracle is the same function applied to the whole file read by numpy."""

from __future__ import annotations

import numpy as np
import pytest

from vaelab.data.stream import RowFile
from vaelab.use.streamed import map_rows_to_file


def _rows(tmp_path, n=1000, d=12):
    path = tmp_path / "x.npy"
    np.save(path, np.random.default_rng(0).integers(0, 256, (n, d), dtype=np.uint8))
    return path


def _compute(x, first):
    """Row sums and a draw seeded by the block's first row (as --sample seeds it)."""
    noise = np.random.default_rng(first).random(len(x))
    return np.stack([x.sum(1), noise + first], axis=1)


def _expected(path, block):
    x = np.load(path)
    return np.concatenate([_compute(x[s:s + block], s) for s in range(0, len(x), block)]
                          ).astype(np.float32)


def test_outputs_are_written_in_input_order(tmp_path):
    path, out = _rows(tmp_path), tmp_path / "y.npy"
    assert map_rows_to_file(RowFile(path), out, 2, _compute, block_rows=96) == 1000
    np.testing.assert_array_equal(np.load(out), _expected(path, 96))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.npy", "y.npy"]


def test_a_killed_run_continues_where_it_stopped(tmp_path):
    """Stopped after 3 blocks (the exception stands in for a kill: the files are left as a
    kill leaves them), the second start computes the other blocks only and writes what an
    uninterrupted run writes."""
    path, out = _rows(tmp_path), tmp_path / "y.npy"
    seen = []

    def dies_after_three(x, first):
        if len(seen) == 3:
            raise KeyboardInterrupt
        seen.append(first)
        return _compute(x, first)

    with pytest.raises(KeyboardInterrupt):
        map_rows_to_file(RowFile(path), out, 2, dies_after_three, block_rows=100)
    assert not out.exists() and (tmp_path / "y.npy.progress").read_text() == "300"
    again = []
    done = map_rows_to_file(RowFile(path), out, 2,
                            lambda x, first: (again.append(first), _compute(x, first))[1],
                            block_rows=100)
    assert done == 700 and again == list(range(300, 1000, 100))
    np.testing.assert_array_equal(np.load(out), _expected(path, 100))


def test_a_partial_output_of_another_shape_is_started_over(tmp_path):
    path, out = _rows(tmp_path), tmp_path / "y.npy"
    (tmp_path / "y.npy.partial").write_bytes(b"not this run")
    (tmp_path / "y.npy.progress").write_text("500")
    assert map_rows_to_file(RowFile(path), out, 2, _compute, block_rows=100) == 1000
    np.testing.assert_array_equal(np.load(out), _expected(path, 100))


def test_a_wrong_output_shape_is_refused(tmp_path):
    with pytest.raises(ValueError, match="expected an array of shape"):
        map_rows_to_file(RowFile(_rows(tmp_path)), tmp_path / "y.npy", 3, _compute)


def _trained_run(tmp_path, capsys, *flags):
    """A tiny run on 8-bit rows (binarized in training) and the .npy file to encode."""
    from conftest import run_cli

    rng = np.random.default_rng(1)
    labels = rng.integers(0, 3, 90)
    x = np.clip(rng.normal(60 + 60 * labels[:, None], 40, (90, 16)), 0, 255).astype(np.uint8)
    np.savez(tmp_path / "train.npz", x=x, y=labels)
    np.save(tmp_path / "x.npy", x)
    run = tmp_path / "run"
    code, _, err = run_cli(capsys, "train", "--data", tmp_path / "train.npz", "--out", run,
                           "--epochs", "1", "--hidden", "8", "--latent-dim", "3",
                           "--batch-size", "30", "--quiet", "--device", "cpu", *flags)
    assert code == 0, err
    return run, tmp_path / "x.npy"


def _codes(capsys, run, data, out, *flags):
    from conftest import run_cli

    code, _, err = run_cli(capsys, "encode", run, "--data", data, "--out", out, *flags)
    assert code == 0, err
    return np.load(out)


def test_streamed_codes_equal_the_in_memory_codes_for_any_block_size(tmp_path, capsys):
    """The images are binarized before encoding: by a draw of each row's own, so neither the
    block size nor reading the file whole changes a code (up to float rounding of the
    encoder's batches; a different binarization moves codes by ~1)."""
    run, data = _trained_run(tmp_path, capsys)
    whole = _codes(capsys, run, data, tmp_path / "z.npy")
    for block in (1, 7):
        streamed = _codes(capsys, run, data, tmp_path / f"z{block}.npy", "--stream-block",
                          str(block))
        np.testing.assert_allclose(streamed, whole, rtol=0, atol=1e-5)
    other_seed = _codes(capsys, run, data, tmp_path / "s.npy", "--seed", "3")
    assert np.abs(other_seed - whole).max() > 1e-3        # the draw does matter


def test_a_conditional_run_is_streamed_under_the_given_condition(tmp_path, capsys):
    from conftest import run_cli

    run, data = _trained_run(tmp_path, capsys, "--condition", "labels")
    code, _, err = run_cli(capsys, "encode", run, "--data", data, "--out", tmp_path / "n.npy",
                           "--stream-block", "7")
    assert code != 0 and err.count("\n") == 1 and "expected --condition VALUE" in err, err
    whole = _codes(capsys, run, data, tmp_path / "z.npy", "--condition", "2")
    streamed = _codes(capsys, run, data, tmp_path / "z7.npy", "--condition", "2",
                      "--stream-block", "7")
    np.testing.assert_allclose(streamed, whole, rtol=0, atol=1e-5)
    other = _codes(capsys, run, data, tmp_path / "z0.npy", "--condition", "0",
                   "--stream-block", "7")
    assert np.abs(other - streamed).max() > 1e-3        # c reaches q(z | x, c)
