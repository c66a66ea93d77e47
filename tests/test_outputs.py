"""The files a use of a model writes (vaelab.use.outputs): their exact bytes and round trips."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from vaelab.use import outputs


def test_scores_csv_has_one_row_per_example_and_an_empty_cell_for_an_undefined_score(tmp_path):
    columns = {"nll": np.array([1.5, math.nan]), "neg_elbo": np.array([2.0, 3.25])}
    path = outputs.write_scores_csv(tmp_path / "s.csv", columns, np.array([0, 1]))
    assert path.read_text() == "index,label,nll,neg_elbo\n0,0,1.5,2.0\n1,1,,3.25\n"
    outputs.write_scores_csv(tmp_path / "n.csv", {"nll": np.array([0.1])}, None)
    assert (tmp_path / "n.csv").read_text() == "index,nll\n0,0.1\n"


def test_assignments_csv_lists_each_example_its_cluster_and_label(tmp_path):
    path = outputs.write_assignments_csv(tmp_path / "c.csv", np.array([2, 0, 2]),
                                         np.array([1, 0, 1]))
    assert path.read_text() == "index,cluster,label\n0,2,1\n1,0,0\n2,2,1\n"
    outputs.write_assignments_csv(tmp_path / "u.csv", np.array([1]), None)
    assert (tmp_path / "u.csv").read_text() == "index,cluster\n0,1\n"


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_codes_round_trip_as_float32_without_pickle(tmp_path, dtype):
    z = torch.tensor([[0.1, -2.0], [3.5, 1e-3]], dtype=dtype)
    path = outputs.write_codes(tmp_path / "z.npy", z)
    back = np.load(path, allow_pickle=False)
    assert back.dtype == np.float32 and back.shape == (2, 2)
    np.testing.assert_array_equal(back, z.numpy().astype(np.float32))
