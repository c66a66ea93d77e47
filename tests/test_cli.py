"""The ``vaelab`` command end to end on real Fashion-MNIST subsets.

One small run (512 training images, one epoch, a 32-unit hidden layer) is trained once per
module through ``cli.main`` in-process and then reloaded, sampled, reconstructed, evaluated
and analysed; ``python -m vaelab`` is exercised once as a real subprocess.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import needs_fashion_mnist, run_cli
from PIL import Image

import vaelab
from vaelab import cli, data

pytestmark = needs_fashion_mnist

TRAIN = ["--limit", "512", "--epochs", "1", "--batch-size", "64", "--latent-dim", "2",
         "--quiet"]
FIGURES = ("samples.png", "reconstructions.png", "curves.png", "latent.png")


def image_size(path: Path) -> tuple[int, int]:
    with Image.open(path) as image:
        assert image.format == "PNG"
        return image.size


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory) -> tuple[Path, str]:
    """A run trained by ``vaelab train`` with a config file that the flags partly override."""
    folder = tmp_path_factory.mktemp("cli")
    config = folder / "small.toml"
    config.write_text('[model]\nlatent_dim = 7\nhidden = [32]\n\n[train]\nlr = 2e-3\n'
                      'val_fraction = 0.25\n')
    run = folder / "run"
    code = cli.main(["train", "--config", str(config), "--out", str(run), *TRAIN])
    assert code == 0
    return run, str(config)


def test_train_writes_a_complete_run(trained_run, capsys):
    run, _ = trained_run
    for name in ("config.json", "model.safetensors", "metrics.jsonl", *FIGURES):
        assert (run / name).is_file(), name
    assert (run / "checkpoint").is_dir()
    assert not [p.name for p in run.iterdir() if p.name.startswith(".")]   # no temp files
    config = json.loads((run / "config.json").read_text())
    assert config["model"]["latent_dim"] == 2          # the flag beats the config file
    assert config["model"]["net_options"]["hidden"] == [32]   # the file beats the default
    assert config["train"]["lr"] == 2e-3 and config["train"]["limit"] == 512
    assert config["model"]["data_dim"] == 784 and config["model"]["image_shape"] == [1, 28, 28]
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1]
    assert math.isfinite(rows[0]["train_elbo"]) and math.isfinite(rows[0]["val_elbo"])
    for name in FIGURES:
        width, height = image_size(run / name)
        assert width > 200 and height > 200


def test_train_reports_where_the_results_are(tmp_path, capsys, monkeypatch):
    """The final lines name the run directory and the pictures (checked on a stub train)."""
    import importlib

    train_ = importlib.import_module("vaelab.fit.train")

    def fake_train(config, out_dir, **kwargs):
        out_dir.mkdir(exist_ok=True)   # the CLI made it to lock it
        for name in FIGURES[:3]:
            (out_dir / name).write_bytes(b"png")
        return train_.TrainResult(out_dir, config, None, None, [], False, None)

    monkeypatch.setattr(train_, "train", fake_train)
    code, out, err = run_cli(capsys, "train", "--out", tmp_path / "r", "--epochs", "1")
    assert code == 0 and err == ""
    assert f"run directory: {tmp_path / 'r'}" in out
    assert str(tmp_path / "r" / "samples.png") in out and "latent.png" not in out
    assert f"vaelab evaluate {tmp_path / 'r'}" in out


def test_reload_sample_and_reconstruct_through_the_library(trained_run):
    trained = vaelab.load(trained_run[0])
    assert trained.config.model.latent_dim == 2
    x = data.load_dataset("fashion-mnist", "test", limit=8).x
    assert trained.sample(5).shape == (5, 784)
    recon = trained.reconstruct(x)
    assert recon.shape == (8, 784) and 0 <= recon.min() and recon.max() <= 1
    # the reconstruction must be closer to its own image than to the others (on average)
    dist = torch.cdist(recon, x)
    assert dist.diagonal().mean() < dist.mean()


def test_sample_and_reconstruct_write_grids(trained_run, tmp_path, capsys):
    run, _ = trained_run
    code, out, _ = run_cli(capsys, "sample", run, "-n", "16", "--out", tmp_path / "s.png",
                           "--seed", "1")
    assert code == 0 and f"wrote {tmp_path / 's.png'}" in out
    again = tmp_path / "again.png"
    assert run_cli(capsys, "sample", run, "-n", "16", "--out", again, "--seed", "1")[0] == 0
    assert again.read_bytes() == (tmp_path / "s.png").read_bytes()     # seeded
    code, out, _ = run_cli(capsys, "reconstruct", run, "-n", "6", "--out", tmp_path / "r.png")
    assert code == 0 and (tmp_path / "r.png").is_file()
    width, height = image_size(tmp_path / "r.png")
    assert width > height                     # one row of originals above one row of recons
    code, _, _ = run_cli(capsys, "sample", run, "-n", "4")
    assert code == 0 and (run / "samples-4.png").is_file()


def test_evaluate_writes_a_sane_eval_json(trained_run, tmp_path, capsys):
    run, _ = trained_run
    out_file = tmp_path / "results" / "eval.json"
    code, out, err = run_cli(capsys, "evaluate", run, "--k", "100", "--limit", "150",
                             "--out", out_file)
    assert code == 0, err
    r = json.loads((run / "eval.json").read_text())
    assert json.loads(out_file.read_text()) == r
    assert (r["split"], r["data"], r["binarized"]) == ("test", "fashion-mnist", True)
    assert (r["num_examples"], r["population_size"], r["num_samples"]) == (150, 10000, 100)
    ll, elbo = r["log_likelihood"], r["elbo"]
    for value in (ll["mean"], ll["se"], elbo["mean"], r["rate"]["mean"],
                  r["distortion"]["mean"], r["nll_bits_per_dim"]["mean"]):
        assert math.isfinite(value)
    assert -784 * math.log(2) < elbo["mean"] < 0 and r["rate"]["mean"] >= 0
    assert elbo["mean"] == pytest.approx(-(r["rate"]["mean"] + r["distortion"]["mean"]))
    assert elbo["mean"] <= ll["mean"] + 3 * r["gap"]["se"]
    assert ll["mean"] - elbo["mean"] < 50                          # a gap, not a blow-up
    assert 0 < ll["se_mc"] <= ll["se"] and ll["se_data"] > 0
    bpd = r["nll_bits_per_dim"]
    assert bpd["mean"] == pytest.approx(-ll["mean"] / (784 * math.log(2)))
    assert 0 < bpd["mean"] < 1                                        # binary pixels
    assert r["active_units"] in (0, 1, 2) and len(r["unit_activity"]) == 2
    assert "log p(x) (nats)" in out and "bits/dim" in out and "active units" in out


def test_evaluate_is_reproducible_and_limit_zero_means_all(trained_run, tmp_path, capsys):
    run, _ = trained_run
    small = tmp_path / "ten.npy"
    np.save(small, data.load_dataset("fashion-mnist", "test", limit=10).x.numpy())
    args = ["evaluate", run, "--data", small, "--k", "10", "--limit", "0", "--out"]
    assert run_cli(capsys, *args, tmp_path / "a.json")[0] == 0
    assert run_cli(capsys, *args, tmp_path / "b.json")[0] == 0
    a, b = (json.loads((tmp_path / n).read_text()) for n in ("a.json", "b.json"))
    assert a["split"] == "train"                  # a bare .npy has no test split
    assert a["num_examples"] == a["population_size"] == 10
    a.pop("seconds"), b.pop("seconds")
    assert a == b


def test_gaps_complete_and_figures_are_wired(trained_run, tmp_path, capsys, monkeypatch):
    run, _ = trained_run
    code, out, err = run_cli(capsys, "gaps", run, "--limit", "6", "--k", "20", "--steps", "5",
                             "--out", tmp_path / "gaps")
    assert code == 0, err
    summary = json.loads((tmp_path / "gaps" / "gaps.json").read_text())
    assert summary["num_examples"] == 6 and summary["num_samples"] == 20
    assert image_size(tmp_path / "gaps" / "gaps.png")[0] > 100
    assert "amortization_gap" in out

    code, out, err = run_cli(capsys, "complete", run, "-n", "4", "--steps", "3", "--samples",
                             "2", "--out", tmp_path / "c.png")
    assert code == 0, err
    assert "accuracy on the hidden half" in out and image_size(tmp_path / "c.png")[0] > 100

    from vaelab.show import figures

    calls = []

    def fake_make_all(out_dir, *, small=False):
        calls.append((Path(out_dir), small))
        return [Path(out_dir) / "one.png"]

    monkeypatch.setattr(figures, "make_all", fake_make_all)
    code, out, _ = run_cli(capsys, "figures", "--out", tmp_path / "figs", "--small")
    assert code == 0 and calls == [(tmp_path / "figs", True)]
    assert f"wrote {tmp_path / 'figs' / 'one.png'}" in out


def test_resume_extends_a_run_and_overwrite_replaces_it(trained_run, tmp_path, capsys):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(trained_run[0], run)
    code, _, err = run_cli(capsys, "train", "--resume", run, "--epochs", "2", "--quiet")
    assert code == 0, err
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2]
    code, _, err = run_cli(capsys, "train", "--out", run, "--overwrite", "--limit", "256",
                           "--epochs", "1", "--hidden", "16", "--latent-dim", "3", "--quiet",
                           "--seed", "5")
    assert code == 0, err
    config = json.loads((run / "config.json").read_text())
    assert config["model"]["latent_dim"] == 3 and config["train"]["seed"] == 5
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 1


def test_python_dash_m_entry_point(trained_run, tmp_path):
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    out = tmp_path / "grid.png"
    proc = subprocess.run([sys.executable, "-m", "vaelab", "sample", str(trained_run[0]), "-n",
                           "9", "--out", str(out)], capture_output=True, text=True, env=env,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"wrote {out}" and image_size(out)[0] > 100


def _grid_spy(monkeypatch) -> list[torch.Tensor]:
    """Record the images every grid the CLI draws is made of."""
    from vaelab.show import plots

    grids: list[torch.Tensor] = []
    original = plots.image_grid

    def spy(images, *args, **kwargs):
        grids.append(images.detach().clone())
        return original(images, *args, **kwargs)

    monkeypatch.setattr(plots, "image_grid", spy)
    return grids


def test_sample_draws_the_library_samples(trained_run, tmp_path, capsys, monkeypatch):
    """`vaelab sample -n 16 --seed 1` shows E[x | z] for the z the library's own seeded call
    draws: the grid's images equal ``model.sample(16, mean=True, generator=seed 1)``."""
    run, _ = trained_run
    grids = _grid_spy(monkeypatch)
    code, _, err = run_cli(capsys, "sample", run, "-n", "16", "--out", tmp_path / "s.png",
                           "--seed", "1")
    assert code == 0, err
    with torch.no_grad():
        want = vaelab.load(run).model.sample(16, mean=True,
                                             generator=torch.Generator().manual_seed(1))
    assert len(grids) == 1
    torch.testing.assert_close(grids[0], want, rtol=0, atol=1e-6)
    assert float(want.std(0).mean()) > 1e-3            # different z, different images


def test_reconstruct_shows_the_library_reconstructions(trained_run, tmp_path, capsys,
                                                      monkeypatch):
    """`vaelab reconstruct -n 6 --seed 2`: the originals are 6 test images (binarized once
    with seed 2, chosen by a seeded permutation) and the row below them is
    ``trained.reconstruct`` of those very images."""
    run, _ = trained_run
    grids = _grid_spy(monkeypatch)
    code, _, err = run_cli(capsys, "reconstruct", run, "-n", "6", "--seed", "2", "--out",
                           tmp_path / "r.png")
    assert code == 0, err
    test = data.static_binarize(data.load_dataset("fashion-mnist", "test"), 2).x
    index = torch.randperm(len(test), generator=torch.Generator().manual_seed(2))[:6]
    originals = test[index.sort().values]
    trained = vaelab.load(run)
    with torch.no_grad():
        want = trained.reconstruct(originals)
    assert len(grids) == 1 and grids[0].shape == (12, 784)
    torch.testing.assert_close(grids[0][:6], originals, rtol=0, atol=0)
    torch.testing.assert_close(grids[0][6:], want, rtol=0, atol=1e-6)
    dist = torch.cdist(want, originals)                  # each is nearest its own image
    assert dist.diagonal().mean() < dist.mean()


def test_evaluating_the_training_file_says_the_figure_is_in_sample(tmp_path, capsys):
    """A file has no test split: evaluating the run on its own training file measures the rows
    it was fitted to, and the note says so; another file gets the plain note."""
    rng = np.random.default_rng(0)
    for name in ("train.npy", "other.npy"):
        np.save(tmp_path / name, (rng.random((80, 28, 28)) < 0.3).astype(np.uint8) * 255)
    run = tmp_path / "run"
    code, _, _ = run_cli(capsys, "train", "--data", tmp_path / "train.npy", "--out", run,
                         "--epochs", "1", "--hidden", "8", "--latent-dim", "2", "--quiet")
    assert code == 0
    code, out, _ = run_cli(capsys, "evaluate", run, "--k", "5")
    assert code == 0 and "is the run's training data" in out and "in-sample" in out
    code, out, _ = run_cli(capsys, "evaluate", run, "--k", "5", "--data",
                           tmp_path / "other.npy")
    assert code == 0 and "has no test split; using all of its examples" in out
    assert "in-sample" not in out
