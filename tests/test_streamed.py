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
