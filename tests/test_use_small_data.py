"""The use-commands on small or non-image data: cluster with tiny classes, score
on real-valued CSV data, undefined standard errors as empty cells, the --score help mapping.

Tiny runs through ``cli.main`` in-process, on a seeded real-valued CSV and on Fashion-MNIST.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import run_cli

from vaelab import cli, data
from vaelab.use.cluster import probe_folds

TINY = ["--epochs", "1", "--hidden", "16", "--latent-dim", "2", "--quiet", "--compile", "off",
        "--device", "cpu"]
HAS_FASHION = any((d / "t10k-images-idx3-ubyte.gz").is_file()
                  or (d / "t10k-images-idx3-ubyte").is_file()
                  for d in data.search_dirs("fashion-mnist"))


@pytest.fixture(scope="module")
def real_run(tmp_path_factory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("real")
    rng = np.random.default_rng(0)
    csv = folder / "real.csv"
    np.savetxt(csv, rng.normal(5.0, 3.0, size=(60, 4)), delimiter=",",
               header="a,b,c,d", comments="")
    assert cli.main(["train", "--data", str(csv), "--binarize", "none", "--likelihood",
                     "gaussian", "--out", str(folder / "run"), *TINY]) == 0
    return folder / "run", csv


def test_probe_folds_shrink_to_the_smallest_class_and_zero_without_two_folds():
    assert probe_folds(np.r_[np.zeros(10), np.ones(10)]) == 5
    assert probe_folds(np.r_[np.zeros(10), np.ones(4)]) == 4
    assert probe_folds(np.r_[np.zeros(10), np.ones(1)]) == 0
    assert probe_folds(np.zeros(10)) == 0


def test_default_scores_skip_input_complexity_on_real_valued_data(real_run, tmp_path, capsys):
    run, csv = real_run
    out = tmp_path / "s.csv"
    code, stdout, err = run_cli(capsys, "score", run, "--data", csv, "--k", "2",
                                "--regret-steps", "2", "--quiet", "--out", out)
    assert code == 0, err
    assert "input-complexity skipped: it needs 8-bit or binary data" in err + stdout
    header = out.read_text().splitlines()[0].split(",")
    assert "input_complexity" not in header and {"neg_elbo", "nll", "regret"} <= set(header)
    code, _, err = run_cli(capsys, "score", run, "--data", csv, "--score", "input-complexity",
                           "--quiet", "--out", tmp_path / "never.csv")
    assert code == 1 and err.count("\n") == 1
    assert "--score input-complexity: expected 8-bit or binary data" in err
    assert not (tmp_path / "never.csv").exists()


def test_undefined_nll_se_is_an_empty_cell(real_run, tmp_path, capsys):
    run, csv = real_run
    out = tmp_path / "s.csv"
    code, _, err = run_cli(capsys, "score", run, "--data", csv, "--limit", "1", "--k", "1",
                           "--score", "log-likelihood", "--quiet", "--out", out)
    assert code == 0, err
    header, row = out.read_text().splitlines()
    cells = dict(zip(header.split(","), row.split(","), strict=True))
    assert cells["nll_se"] == "" and np.isfinite(float(cells["nll"]))
    assert "nan" not in out.read_text()


def test_score_help_maps_each_choice_to_its_column(capsys):
    assert cli.main(["score", "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    for choice, column in (("elbo", "neg_elbo"), ("log-likelihood", "nll"),
                           ("input-complexity", "input_complexity"),
                           ("likelihood-ratio", "neg_llr"), ("regret", "regret")):
        assert f"{choice} → {column}" in text.replace("- ", "-")


@pytest.mark.skipif(not HAS_FASHION, reason="Fashion-MNIST is not installed")
def test_cluster_on_few_examples_reduces_or_skips_the_probe(tmp_path, capsys):
    run = tmp_path / "run"
    assert cli.main(["train", "--limit", "300", "--out", str(run), *TINY]) == 0
    labels = data.load_dataset("fashion-mnist", "test").labels.numpy()
    for limit in (60, 20):
        code, stdout, err = run_cli(capsys, "cluster", run, "--limit", limit)
        assert code == 0, err
        assert "NMI" in stdout
        folds = probe_folds(labels[:limit])
        if folds:
            assert f"linear-probe accuracy ({folds}-fold)" in stdout
        else:
            assert "linear probe skipped" in stdout
    assert probe_folds(labels[:60]) == 4
