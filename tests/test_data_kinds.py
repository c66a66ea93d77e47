"""One rule for data kinds and ranges (integers 0–255 are
8-bit data, said when scaled; floats are kept and refused outside the likelihood's support),
CLI messages that name CLI flags, colour arrays N×H×W×C, uint8 in memory, memory-mapped .npy,
and the kind recorded in the run."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from vaelab import cli, data
from vaelab.model import likelihoods


@pytest.mark.parametrize("values, kind", [
    (np.array([[0, 7, 255]], np.uint8), "8-bit"),
    (np.array([[0, 1, 1]], np.uint8), "8-bit"),          # uint8 declares 8-bit data
    (np.array([[True, False]]), "binary"),
    (np.array([[0, 1, 1]], np.int64), "binary"),
    (np.array([[0, 128, 255]], np.int16), "8-bit"),
    (np.array([[0, 300]], np.int32), "continuous"),
    (np.array([[-1, 3]], np.int64), "continuous"),
    (np.array([[0.0, 1.0]], np.float32), "binary"),
    (np.array([[0.0, 3 / 255, 1.0]], np.float32), "8-bit"),
    (np.array([[0.0, 0.5, 1.0]], np.float32), "unit-interval"),
    (np.array([[0.0, 128.0, 255.0]], np.float32), "continuous"),   # floats are not rescaled
    (np.array([[-0.5, 0.2]], np.float64), "continuous"),
])
def test_infer_kind_follows_the_rule(values, kind):
    assert data.infer_kind(values) == kind
    assert data.infer_kind(torch.from_numpy(values)) == kind


def test_integers_0_255_are_scaled_and_the_loader_says_so(tmp_path):
    for dtype in (np.uint8, np.int16, np.int64):
        path = tmp_path / f"d_{np.dtype(dtype).name}.npy"
        np.save(path, np.array([[0, 51, 255], [255, 0, 102]], dtype))
        ds = data.load_dataset(path)
        assert ds.kind == "8-bit"
        assert torch.equal(ds.x, torch.tensor([[0, 51, 255], [255, 0, 102]]) / 255.0)
        assert len(ds.notes) == 1 and "8-bit" in ds.notes[0] and "k/255" in ds.notes[0]


def test_floats_are_kept_as_they_are(tmp_path):
    np.save(tmp_path / "f.npy", np.array([[0.0, 51.0, 255.0]], np.float32))
    ds = data.load_dataset(tmp_path / "f.npy")
    assert ds.kind == "continuous" and ds.notes == ()
    assert torch.equal(ds.x, torch.tensor([[0.0, 51.0, 255.0]]))


def test_keep_uint8_keeps_bytes_and_batches_convert_per_batch(tmp_path):
    x = np.random.default_rng(0).integers(0, 256, (10, 6), dtype=np.uint8)
    np.save(tmp_path / "u.npy", x)
    ds = data.load_dataset(tmp_path / "u.npy", keep_uint8=True)
    assert ds.x.dtype == torch.uint8 and ds.kind == "8-bit"
    assert torch.equal(ds.floats().x, torch.from_numpy(x).float() / 255)
    batches = data.Batches(ds.x, 4, seed=3)
    reference = data.Batches(ds.floats().x, 4, seed=3)
    for (a, i), (b, j) in zip(batches.epoch(1), reference.epoch(1), strict=True):
        assert a.dtype == torch.float32 and torch.equal(a, b) and torch.equal(i, j)


def test_memory_mapped_npy_stays_on_disk(tmp_path):
    x = np.random.default_rng(1).integers(0, 256, (50, 3, 5, 7), dtype=np.uint8)
    np.save(tmp_path / "m.npy", x)
    ds = data.load_dataset(tmp_path / "m.npy", mmap=True, keep_uint8=True)
    assert ds.image_shape == (3, 5, 7) and ds.x.dtype == torch.uint8
    assert torch.equal(ds.x, torch.from_numpy(x.reshape(50, -1)))
    # the tensor reads the file's pages, not a private copy: a byte written to the file
    # afterwards shows through
    size = (tmp_path / "m.npy").stat().st_size
    with open(tmp_path / "m.npy", "r+b") as handle:
        handle.seek(size - 1)
        handle.write(bytes([(int(x[-1, -1, -1, -1]) + 1) % 256]))
    assert int(ds.x[-1, -1]) == (int(x[-1, -1, -1, -1]) + 1) % 256
    assert int(data.load_dataset(tmp_path / "m.npy").x[-1, -1] * 255) == int(ds.x[-1, -1])
    f32 = tmp_path / "f.npy"
    np.save(f32, np.random.default_rng(2).random((20, 4), dtype=np.float32))
    assert data.load_dataset(f32, mmap=True).kind == "unit-interval"


def test_channels_last_colour_arrays_are_transposed(tmp_path):
    nhwc = np.random.default_rng(3).integers(0, 256, (4, 5, 6, 3), dtype=np.uint8)
    np.save(tmp_path / "c.npy", nhwc)
    ds = data.load_dataset(tmp_path / "c.npy")
    assert ds.image_shape == (3, 5, 6)
    expected = torch.from_numpy(nhwc.transpose(0, 3, 1, 2).reshape(4, -1)) / 255.0
    assert torch.equal(ds.x, expected)
    assert any("N×H×W×C" in note for note in ds.notes)
    np.save(tmp_path / "n.npy", nhwc.transpose(0, 3, 1, 2))
    assert torch.equal(data.load_dataset(tmp_path / "n.npy").x, expected)


def test_sklearn_colour_patches_load_as_8_bit_images(tmp_path):
    from sklearn.datasets import load_sample_images  # a dependency (pyproject.toml)

    images = np.stack(load_sample_images().images)      # 2 × 427 × 640 × 3 uint8
    patches = images[:, :64, :96].reshape(2, 2, 32, 3, 32, 3).transpose(0, 1, 3, 2, 4, 5)
    patches = patches.reshape(-1, 32, 32, 3)                      # 12 patches N×H×W×C
    np.save(tmp_path / "patches.npy", patches)
    ds = data.load_dataset(tmp_path / "patches.npy")
    assert (len(ds), ds.image_shape, ds.kind) == (12, (3, 32, 32), "8-bit")
    assert torch.equal(ds.x[0].view(3, 32, 32)[:, 0, 0],
                       torch.from_numpy(images[0, 0, 0].astype(np.float32)) / 255)


# --------------------------------------------------------------------------- refusals


@pytest.mark.parametrize("name, kind, low, high, flag", [
    ("bernoulli", "continuous", 0.0, 255.0, "--likelihood gaussian"),
    ("continuous-bernoulli", "continuous", -1.0, 1.0, "--likelihood gaussian"),
    ("discretized-logistic", "unit-interval", 0.0, 0.5, "--likelihood gaussian"),
    ("discretized-logistic-mixture", "continuous", 0.0, 255.0, "uint8"),
])
def test_likelihoods_refuse_data_outside_their_support(name, kind, low, high, flag):
    with pytest.raises(ValueError, match=f"--likelihood {name}") as err:
        likelihoods.check_data_kind(name, kind, low, high)
    assert flag in str(err.value)


def test_accepted_but_unnormalised_data_get_a_note():
    note = likelihoods.check_data_kind("bernoulli", "8-bit", 0.0, 1.0)
    assert note is not None and "unnormalised score" in note and "--binarize dynamic" in note
    assert likelihoods.check_data_kind("bernoulli", "binary", 0.0, 1.0) is None
    assert likelihoods.check_data_kind("gaussian", "8-bit", 0.0, 1.0) is None   # dequantized
    assert likelihoods.check_data_kind("gaussian", "continuous", -3.0, 9.0) is None


def _cli(capsys, *argv):
    code = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


PYTHON_ARGUMENT = re.compile(r"\b(binarize|likelihood|net|split)\s*=\s*'")


@pytest.mark.parametrize("extra, flags", [
    ((), ("--binarize none",)),                                      # default dynamic
    (("--binarize", "none"), ("--likelihood bernoulli", "--likelihood gaussian")),
    (("--binarize", "none", "--likelihood", "discretized-logistic"), ("--likelihood",)),
])
def test_cli_refusals_name_cli_flags(tmp_path, capsys, extra, flags):
    np.save(tmp_path / "grey.npy", np.full((8, 4), 200.0, np.float32))   # floats 0–255
    code, out, err = _cli(capsys, "train", "--data", tmp_path / "grey.npy", "--epochs", "1",
                          "--out", tmp_path / "run", "--quiet", *extra)
    assert code == 1 and err.startswith("vaelab: error: ") and err.count("\n") == 1
    for flag in flags:
        assert flag in err
    assert not PYTHON_ARGUMENT.search(err), err
    assert not (tmp_path / "run").exists()


def test_library_messages_name_cli_flags_not_python_arguments():
    root = Path(data.__file__).parents[1]          # src/vaelab
    files = [*sorted((root / "data").glob("*.py")), root / "model" / "likelihoods.py"]
    assert len(files) > 2
    for path in files:
        text = path.read_text(encoding="utf-8")
        assert not PYTHON_ARGUMENT.search(text), path.name


def test_train_records_the_kind_and_says_when_it_scales(tmp_path, capsys):
    x = np.random.default_rng(4).integers(0, 256, (40, 2, 3, 3), dtype=np.uint8)
    np.save(tmp_path / "u8.npy", x)
    code, out, err = _cli(capsys, "train", "--data", tmp_path / "u8.npy", "--epochs", "1",
                          "--binarize", "none", "--likelihood", "discretized-logistic",
                          "--hidden", "8", "--latent-dim", "2", "--out", tmp_path / "run",
                          "--compile", "off")
    assert code == 0, err
    assert "8-bit data and scaled to [0, 1]" in out
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["model"]["data_kind"] == "8-bit"
    code, out, err = _cli(capsys, "train", "--data", tmp_path / "u8.npy", "--epochs", "1",
                          "--binarize", "none", "--hidden", "8", "--latent-dim", "2",
                          "--out", tmp_path / "run2", "--compile", "off")
    assert code == 0, err
    assert "unnormalised score" in out                 # Bernoulli on grey levels: told once
    config = json.loads((tmp_path / "run2" / "config.json").read_text())
    assert config["model"]["data_kind"] == "8-bit"
    code, out, err = _cli(capsys, "evaluate", tmp_path / "run2", "--k", "4", "--limit", "5")
    assert code == 0, err
    result = json.loads((tmp_path / "run2" / "eval.json").read_text())
    assert result["likelihood_meaning"]["meaning"] == "score"
    assert result["nll_bits_per_dim"]["mean"] is None
    assert "log p(x) (nats)" not in out and "unnormalised score" in out


def test_training_reads_a_uint8_npy_through_a_memory_map(tmp_path):
    """train() keeps 8-bit .npy data memory-mapped (no validation split, no limit): the rows
    it trains on are the file's pages, and its batches are their k/255 values."""
    from vaelab.config import RunConfig
    from vaelab.fit import train as train_

    x = np.random.default_rng(5).integers(0, 256, (30, 8), dtype=np.uint8)
    np.save(tmp_path / "big.npy", x)
    config = RunConfig.from_dict({"train": {"data": str(tmp_path / "big.npy"),
                                            "val_fraction": 0, "binarize": "none"},
                                  "model": {"likelihood": "discretized-logistic"}})
    loaded = train_._load_data(config, None)
    assert loaded.train.x.dtype == torch.uint8 and loaded.train.kind == "8-bit"
    size = (tmp_path / "big.npy").stat().st_size
    with open(tmp_path / "big.npy", "r+b") as handle:
        handle.seek(size - 1)
        handle.write(bytes([(int(x[-1, -1]) + 7) % 256]))
    assert int(loaded.train.x[-1, -1]) == (int(x[-1, -1]) + 7) % 256
    batch, index = next(iter(data.Batches(loaded.train.x, 30, shuffle=False).epoch(0)))
    assert torch.equal(batch, loaded.train.x.float() / 255)


def test_evaluate_refuses_data_outside_the_runs_support_naming_the_flag(tmp_path, capsys):
    x = np.random.default_rng(6).integers(0, 256, (40, 6), dtype=np.uint8)
    np.save(tmp_path / "u8.npy", x)
    code, out, err = _cli(capsys, "train", "--data", tmp_path / "u8.npy", "--epochs", "1",
                          "--binarize", "none", "--likelihood", "discretized-logistic",
                          "--hidden", "8", "--latent-dim", "2", "--out", tmp_path / "run",
                          "--compile", "off", "--quiet")
    assert code == 0, err
    np.save(tmp_path / "grey.npy", np.full((5, 6), 0.5, np.float32))      # not 8-bit values
    code, out, err = _cli(capsys, "evaluate", tmp_path / "run", "--data", tmp_path / "grey.npy",
                          "--k", "2")
    assert code == 1 and err.count("\n") == 1
    assert err.startswith("vaelab: error: --data: the discretized-logistic likelihood expects "
                          "8-bit data")
    assert not (tmp_path / "run" / "eval.json").exists()
