"""Tests for vaelab.data: loaders against raw bytes, IDX round trips, errors, batching."""

from __future__ import annotations

import gzip
import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import run_cli, without_flags

from vaelab import data
from vaelab.data import Batches, Dataset, load_dataset

FMNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
HAVE_FMNIST = (FMNIST_DIR / "train-images-idx3-ubyte.gz").is_file()


@pytest.fixture(autouse=True)
def isolated(monkeypatch, tmp_path):
    """No test reads $VAELAB_DATA, the real cache or (unless it asks) /usr/share/datasets."""
    monkeypatch.delenv("VAELAB_DATA", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg-cache"))
    monkeypatch.setattr(data.named, "SYSTEM_DATA_DIR", tmp_path / "system-datasets")


def write_tiny_idx(folder: Path, n_train: int = 12, n_test: int = 5, seed: int = 0,
                   gz: bool = True) -> dict[str, np.ndarray]:
    """Write the four IDX files of a fake 4x3 dataset; returns the arrays written."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 4, 3), dtype=np.uint8),
        "train-labels-idx1-ubyte": rng.integers(0, 10, n_train, dtype=np.uint8),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 4, 3), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": rng.integers(0, 10, n_test, dtype=np.uint8),
    }
    for stem, array in arrays.items():
        data.write_idx(folder / (f"{stem}.gz" if gz else stem), array)
    return arrays


# --------------------------------------------------------------------------- real Fashion-MNIST


@pytest.fixture(scope="module")
def fmnist():
    if not HAVE_FMNIST:
        pytest.skip("Fashion-MNIST not installed in /usr/share/datasets (dataset-fashion-mnist)")
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("VAELAB_DATA", raising=False)
        mp.setattr(data.named, "SYSTEM_DATA_DIR", FMNIST_DIR.parent)
        return load_dataset("fashion-mnist", "train"), load_dataset("fashion-mnist", "test")


def test_fashion_mnist_shapes_labels_and_range(fmnist):
    train, test = fmnist
    assert train.x.shape == (60000, 784) and test.x.shape == (10000, 784)
    assert train.x.dtype == torch.float32 and train.labels.dtype == torch.int64
    assert train.image_shape == (1, 28, 28) and train.name == "fashion-mnist"
    assert torch.equal(torch.bincount(train.labels), torch.full((10,), 6000))
    assert torch.equal(torch.bincount(test.labels), torch.full((10,), 1000))
    assert train.x.min() == 0 and train.x.max() == 1


def test_fashion_mnist_matches_raw_bytes(fmnist):
    train, _ = fmnist
    raw = np.frombuffer(gzip.open(FMNIST_DIR / "train-images-idx3-ubyte.gz").read(), np.uint8)
    pixels = raw[16:]  # 16-byte IDX header for 3 dims
    assert pixels.size == 60000 * 784
    assert abs(pixels.mean() / 255 - 0.2860) < 5e-5  # the published Fashion-MNIST mean
    assert abs(train.x.double().mean().item() - pixels.mean() / 255) < 1e-7  # float32 k/255
    np.testing.assert_array_equal(train.x[0].numpy(), pixels[:784].astype(np.float32) / 255)
    raw_labels = np.frombuffer(gzip.open(FMNIST_DIR / "train-labels-idx1-ubyte.gz").read(),
                               np.uint8)[8:]
    np.testing.assert_array_equal(train.labels.numpy(), raw_labels)


# --------------------------------------------------------------------------- IDX files


@pytest.mark.parametrize("dtype", [np.uint8, np.int8, np.int16, np.int32, np.float32, np.float64])
@pytest.mark.parametrize("name", ["a.idx", "a.idx.gz"])
def test_idx_round_trip(tmp_path, dtype, name):
    array = (np.arange(2 * 3 * 5) * 7 % 120 - 3).reshape(2, 3, 5).astype(dtype)
    path = data.write_idx(tmp_path / name, array)
    back = data.read_idx(path)
    assert back.shape == (2, 3, 5) and back.dtype == np.dtype(dtype).newbyteorder(">")
    np.testing.assert_array_equal(back, array)
    assert path.read_bytes()[:2] == (b"\x1f\x8b" if name.endswith(".gz") else b"\x00\x00")


def test_idx_header_is_the_published_format(tmp_path):
    path = data.write_idx(tmp_path / "x.idx", np.zeros((3, 2), np.uint8))
    assert path.read_bytes() == bytes([0, 0, 8, 2, 0, 0, 0, 3, 0, 0, 0, 2]) + bytes(6)


@pytest.mark.parametrize("corrupt", ["truncated-data", "extra-data", "bad-magic", "bad-type",
                                     "short-header", "empty", "truncated-gzip", "bad-gzip"])
def test_corrupt_idx_raises_naming_the_file(tmp_path, corrupt):
    good = data.write_idx(tmp_path / "good.idx", np.ones((4, 3, 3), np.uint8)).read_bytes()
    blobs = {
        "truncated-data": good[:-1], "extra-data": good + b"\x00", "bad-magic": b"\x01" + good[1:],
        "bad-type": good[:2] + b"\x07" + good[3:], "short-header": good[:9], "empty": b"",
        "truncated-gzip": gzip.compress(good)[:-10],
        "bad-gzip": gzip.compress(good)[:20] + b"\xff" * 30,
    }
    path = tmp_path / f"broken-{corrupt}.idx"
    path.write_bytes(blobs[corrupt])
    with pytest.raises(ValueError, match=f"broken-{corrupt}"):
        data.read_idx(path)


# --------------------------------------------------------------------------- named datasets


def test_named_dataset_from_root_matches_written_arrays(tmp_path):
    arrays = write_tiny_idx(tmp_path / "fm", gz=False)
    train = load_dataset("fashion-mnist", root=tmp_path / "fm")
    test = load_dataset("Fashion_MNIST", "test", root=tmp_path / "fm")
    assert train.x.shape == (12, 12) and test.x.shape == (5, 12) and train.image_shape == (1, 4, 3)
    expected = arrays["train-images-idx3-ubyte"].reshape(12, 12).astype(np.float32) / 255
    np.testing.assert_array_equal(train.x.numpy(), expected)
    np.testing.assert_array_equal(test.labels.numpy(), arrays["t10k-labels-idx1-ubyte"])


def test_search_order_root_env_system_cache(tmp_path, monkeypatch):
    for folder, n in [("root", 2), ("env/fashion-mnist", 3), ("system-datasets/fashion-mnist", 4),
                      ("xdg-cache/vaelab/fashion-mnist", 6)]:
        write_tiny_idx(tmp_path / folder, n_train=n)
    assert len(load_dataset("fashion-mnist")) == 4  # no root, no VAELAB_DATA: system dir
    monkeypatch.setenv("VAELAB_DATA", str(tmp_path / "env"))
    assert len(load_dataset("fashion-mnist")) == 3  # $VAELAB_DATA/<name>
    assert len(load_dataset("fashion-mnist", root=tmp_path / "root")) == 2
    monkeypatch.setenv("VAELAB_DATA", str(tmp_path / "env" / "fashion-mnist"))
    assert len(load_dataset("fashion-mnist")) == 3  # $VAELAB_DATA itself
    monkeypatch.delenv("VAELAB_DATA")
    monkeypatch.setattr(data.named, "SYSTEM_DATA_DIR", tmp_path / "nowhere")
    assert len(load_dataset("fashion-mnist", download=False)) == 6  # the cache


def test_named_dataset_label_count_mismatch(tmp_path):
    arrays = write_tiny_idx(tmp_path)
    data.write_idx(tmp_path / "train-labels-idx1-ubyte.gz", arrays["train-labels-idx1-ubyte"][:-1])
    with pytest.raises(ValueError, match="train-labels-idx1-ubyte.gz.*12"):
        load_dataset("mnist", root=tmp_path)


def test_limit_keeps_the_first_examples(tmp_path):
    write_tiny_idx(tmp_path)
    full = load_dataset("mnist", root=tmp_path)
    few = load_dataset("mnist", root=tmp_path, limit=5)
    assert torch.equal(few.x, full.x[:5]) and torch.equal(few.labels, full.labels[:5])
    assert len(load_dataset("mnist", root=tmp_path, limit=100)) == 12


def fake_source(arrays_dir: Path, wrong: str | None = None) -> data.NamedSource:
    """A NamedSource serving the .gz files of ``arrays_dir`` by file:// URL with their MD5s."""
    md5 = {p.name: hashlib.md5(p.read_bytes()).hexdigest() for p in arrays_dir.glob("*.gz")}
    if wrong is not None:
        md5[wrong] = "0" * 32
    return data.NamedSource(arrays_dir.as_uri() + "/", md5, "apt-get install dataset-fashion-mnist")


def test_download_verifies_and_caches(tmp_path, monkeypatch):
    arrays = write_tiny_idx(tmp_path / "server")
    monkeypatch.setitem(data.NAMED_SOURCES, "fashion-mnist", fake_source(tmp_path / "server"))
    ds = load_dataset("fashion-mnist", "test")
    np.testing.assert_array_equal(ds.labels.numpy(), arrays["t10k-labels-idx1-ubyte"])
    cache = tmp_path / "xdg-cache" / "vaelab" / "fashion-mnist"
    assert sorted(p.name for p in cache.iterdir()) == ["t10k-images-idx3-ubyte.gz",
                                                       "t10k-labels-idx1-ubyte.gz"]
    (tmp_path / "server" / "t10k-images-idx3-ubyte.gz").unlink()  # the cache now suffices
    assert torch.equal(load_dataset("fashion-mnist", "test", download=False).x, ds.x)


def test_download_checksum_mismatch_leaves_nothing(tmp_path, monkeypatch):
    write_tiny_idx(tmp_path / "server")
    source = fake_source(tmp_path / "server", wrong="train-images-idx3-ubyte.gz")
    monkeypatch.setitem(data.NAMED_SOURCES, "fashion-mnist", source)
    with pytest.raises(ValueError, match="train-images-idx3-ubyte.gz: expected MD5 0{32}"):
        load_dataset("fashion-mnist")
    cache = tmp_path / "xdg-cache" / "vaelab" / "fashion-mnist"
    assert not cache.exists()  # neither the file, its temporary part nor an empty folder is left


def test_download_failure_is_one_line_with_where_and_how(tmp_path, monkeypatch):
    source = data.NamedSource((tmp_path / "offline").as_uri() + "/", {
        f"{s}.gz": "0" * 32 for split in data.IDX_FILES.values() for s in split},
        data.NAMED_SOURCES["fashion-mnist"].install_hint)
    monkeypatch.setitem(data.NAMED_SOURCES, "fashion-mnist", source)
    for download in (True, False):
        with pytest.raises(FileNotFoundError) as info:
            load_dataset("fashion-mnist", root=tmp_path / "mine", download=download)
        message = str(info.value)
        assert "\n" not in message and "apt-get install dataset-fashion-mnist" in message
        assert "VAELAB_DATA" in message and str(tmp_path / "mine") in message
        assert str(tmp_path / "system-datasets" / "fashion-mnist") in message
        assert ("failed" in message) == download
    cache = tmp_path / "xdg-cache" / "vaelab" / "fashion-mnist"
    assert not cache.exists() or not any(cache.iterdir())


# --------------------------------------------------------------------------- user data


def test_npy_shapes_and_scaling(tmp_path):
    rng = np.random.default_rng(1)
    floats = rng.normal(size=(7, 5)) * 10
    np.save(tmp_path / "tab.npy", floats)
    tab = load_dataset(tmp_path / "tab.npy")
    assert tab.image_shape is None and tab.labels is None and tab.name == "tab"
    np.testing.assert_allclose(tab.x.numpy(), floats.astype(np.float32))  # floats kept as is
    grey = rng.integers(0, 256, (6, 4, 5), dtype=np.uint8)
    np.save(tmp_path / "grey.npy", grey)
    ds = load_dataset(str(tmp_path / "grey.npy"))
    assert ds.image_shape == (1, 4, 5) and ds.x.shape == (6, 20)
    np.testing.assert_array_equal(ds.x.numpy(), grey.reshape(6, 20) / np.float32(255))
    np.save(tmp_path / "rgb.npy", rng.integers(0, 256, (3, 3, 2, 2), dtype=np.uint8))
    assert load_dataset(tmp_path / "rgb.npy").image_shape == (3, 2, 2)


def test_npz_keys_labels_and_splits(tmp_path):
    x = np.random.default_rng(2).random((8, 3))
    y = np.arange(8) % 3
    np.savez(tmp_path / "a.npz", x=x, y=y)
    np.savez(tmp_path / "b.npz", data=x, labels=y.astype(np.float64))
    np.savez(tmp_path / "c.npz", whatever=x)
    np.savez(tmp_path / "d.npz", x_train=x[:5], y_train=y[:5], x_test=x[5:], y_test=y[5:])
    for name in "ab":
        ds = load_dataset(tmp_path / f"{name}.npz")
        assert torch.equal(ds.labels, torch.from_numpy(y)) and ds.labels.dtype == torch.int64
    assert load_dataset(tmp_path / "c.npz").labels is None
    test = load_dataset(tmp_path / "d.npz", "test")
    assert len(load_dataset(tmp_path / "d.npz")) == 5 and len(test) == 3
    np.testing.assert_allclose(test.x.numpy(), x[5:].astype(np.float32))
    assert torch.equal(test.labels, torch.from_numpy(y[5:]))
    with pytest.raises(ValueError, match="split"):
        load_dataset(tmp_path / "a.npz", "test")


def test_csv_header_and_label_column(tmp_path):
    (tmp_path / "h.csv").write_text("a,label,b\n0.5,1,2\n1.5,0,3\n2.5,2,4\n")
    ds = load_dataset(tmp_path / "h.csv", label_column="label")
    assert torch.equal(ds.x, torch.tensor([[0.5, 2], [1.5, 3], [2.5, 4]]))
    assert torch.equal(ds.labels, torch.tensor([1, 0, 2]))
    (tmp_path / "n.csv").write_text("0.5,1,2\n1.5,0,3\n")
    no_header = load_dataset(tmp_path / "n.csv", label_column=-2)
    assert torch.equal(no_header.labels, torch.tensor([1, 0])) and no_header.x.shape == (2, 2)
    assert load_dataset(tmp_path / "n.csv").x.shape == (2, 3)
    assert load_dataset(tmp_path / "h.csv").x.shape == (3, 3)


def test_a_csv_header_names_the_columns_and_a_headerless_csv_names_none(tmp_path):
    """The header row's names are the Dataset's columns (without a label column), as a
    DataFrame's are, so a run trained on the file records them; no header: no names."""
    (tmp_path / "h.csv").write_text("a,label,b\n0.5,1,2\n1.5,0,3\n")
    assert load_dataset(tmp_path / "h.csv").columns == ("a", "label", "b")
    assert load_dataset(tmp_path / "h.csv", label_column="label").columns == ("a", "b")
    (tmp_path / "m.csv").write_text("a,b\n0.5,\n,3\n")
    assert load_dataset(tmp_path / "m.csv", allow_missing=True).columns == ("a", "b")
    (tmp_path / "n.csv").write_text("0.5,1,2\n1.5,0,3\n")
    assert load_dataset(tmp_path / "n.csv").columns is None


def test_columns_are_matched_by_name_in_any_order():
    """The one rule (vaelab.data.columns): the same names in another order give the positions
    that put the data in the run's order; no names on either side, or the same order: None."""
    from vaelab.data.columns import column_order, in_run_order

    assert column_order(["c", "a", "b"], ("a", "b", "c"), "x") == [1, 2, 0]
    assert column_order(["a", "b"], ("a", "b"), "x") is None
    assert column_order(None, ("a", "b"), "x") is None            # .npy, arrays: by position
    assert column_order(["a", "b"], None, "x") is None            # an old run: by position
    ds = Dataset(x=torch.tensor([[3.0, 1.0, 2.0]]), labels=None, image_shape=None, name="t",
                 columns=("c", "a", "b"))
    moved = in_run_order(ds, ("a", "b", "c"), "x")
    assert moved.columns == ("a", "b", "c") and torch.equal(moved.x, torch.tensor([[1., 2, 3]]))


@pytest.mark.parametrize("given, wanted", [
    (["a", "c"], "missing 'b'; unexpected none"),
    (["a", "b", "c", "d"], "missing none; unexpected 'd'"),
    (["a", "x", "c"], "missing 'b'; unexpected 'x'"),
])
def test_a_missing_or_unknown_column_is_one_line_naming_both(given, wanted):
    from vaelab.data.columns import column_order

    with pytest.raises(ValueError) as excinfo:
        column_order(given, ("a", "b", "c"), "--data", "'t.csv'")
    message = str(excinfo.value)
    assert "\n" not in message and message.startswith("--data: expected the 3 columns the run")
    assert "'t.csv'" in message and message.endswith(wanted)


def save_image(path: Path, array: np.ndarray) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def test_image_folder_with_class_subfolders(tmp_path):
    rng = np.random.default_rng(3)
    images = rng.integers(0, 256, (5, 4, 6, 3), dtype=np.uint8)
    for i, cls in enumerate(["cat", "cat", "dog", "emu", "emu"]):
        save_image(tmp_path / "pics" / cls / f"{i}.png", images[i])
    ds = load_dataset(tmp_path / "pics")
    assert ds.image_shape == (3, 4, 6) and ds.x.shape == (5, 72) and ds.name == "pics"
    assert torch.equal(ds.labels, torch.tensor([0, 0, 1, 2, 2]))
    expected = images.transpose(0, 3, 1, 2).reshape(5, -1) / np.float32(255)
    np.testing.assert_array_equal(ds.x.numpy(), expected)


def test_flat_grayscale_image_folder(tmp_path):
    grey = np.random.default_rng(4).integers(0, 256, (3, 5, 4), dtype=np.uint8)
    for i in range(3):
        save_image(tmp_path / "g" / f"{i}.png", grey[i])
    ds = load_dataset(tmp_path / "g")
    assert ds.labels is None and ds.image_shape == (1, 5, 4)
    np.testing.assert_array_equal(ds.x.numpy(), grey.reshape(3, -1) / np.float32(255))


# --------------------------------------------------------------------------- bad inputs


def bad_files(tmp_path: Path) -> dict[str, Path]:
    nan = np.ones((4, 3))
    nan[2, 1] = np.nan
    nan[3, 0] = np.inf
    files = {"nan.npy": nan, "empty.npy": np.zeros((0, 3)), "vector.npy": np.ones(4),
             "five.npy": np.ones((1, 1, 1, 1, 1)), "text.npy": np.array([["a", "b"]])}
    for name, array in files.items():
        np.save(tmp_path / name, array)
    np.savez(tmp_path / "short.npz", x=np.ones((4, 3)), y=np.arange(3))
    np.savez(tmp_path / "fraction.npz", x=np.ones((2, 3)), y=np.array([0.5, 1.0]))
    np.savez(tmp_path / "many.npz", a=np.ones(2), b=np.ones(2))
    (tmp_path / "garbage.npy").write_bytes(b"not numpy at all")
    (tmp_path / "garbage.npz").write_bytes(b"not a zip")
    (tmp_path / "words.csv").write_text("1,2\n3,x\n")
    (tmp_path / "numbers.csv").write_text("1,2\n3,4\n")
    (tmp_path / "empty.csv").write_text("")
    (tmp_path / "data.txt").write_text("1 2 3")
    save_image(tmp_path / "sizes" / "a.png", np.zeros((4, 4), np.uint8))
    save_image(tmp_path / "sizes" / "b.png", np.zeros((4, 5), np.uint8))
    (tmp_path / "nothing").mkdir()
    return {p.name: p for p in tmp_path.iterdir()}


@pytest.mark.parametrize(("name", "kwargs", "error", "pattern"), [
    ("nan.npy", {}, ValueError, r"nan\.npy: expected finite values, got 2 non-finite .* \(2, 1\)"),
    ("empty.npy", {}, ValueError, r"empty\.npy: .*empty"),
    ("vector.npy", {}, ValueError, r"vector\.npy: expected .*N×D.*got 1 dims"),
    ("five.npy", {}, ValueError, r"five\.npy: .*got 5 dims"),
    ("text.npy", {}, ValueError, r"text\.npy: expected numeric"),
    ("short.npz", {}, ValueError, r"labels in .*short\.npz: expected shape \(4,\).*\(3,\)"),
    ("fraction.npz", {}, ValueError, r"labels .*integer"),
    ("many.npz", {}, ValueError, r"many\.npz: expected an array named 'x'"),
    ("garbage.npy", {}, ValueError, r"garbage\.npy: expected a readable \.npy"),
    ("garbage.npz", {}, ValueError, r"garbage\.npz: expected a readable \.npz"),
    ("words.csv", {}, ValueError, r"words\.csv: expected a CSV of numbers"),
    ("empty.csv", {}, ValueError, r"empty\.csv: .*empty"),
    ("data.txt", {}, ValueError, r"source: .*data\.txt.*unknown format '\.txt'"),
    ("sizes", {}, ValueError, r"b\.png: expected every image to be 4x4"),
    ("nothing", {}, ValueError, r"nothing: expected .*images, got none"),
    ("missing.npy", {}, FileNotFoundError, r"source: .*missing\.npy.*does not exist"),
    ("cifar-11", {}, FileNotFoundError, r"source: expected a dataset name \(fashion-mnist"),
    ("nan.npy", {"split": "valid"}, ValueError, r"split: expected one of 'train', 'test'"),
    ("nan.npy", {"split": "test"}, ValueError, r"split: .*nan\.npy holds no 'test' split"),
    ("nan.npy", {"limit": 0}, ValueError, r"limit: expected an integer >= 1, got 0"),
    ("nan.npy", {"limit": 2.5}, TypeError, r"limit: expected an integer"),
    ("nan.npy", {"limit": True}, TypeError, r"limit: expected an integer"),
    ("nan.npy", {"label_column": 0}, ValueError, r"label_column: only applies to \.csv"),
    ("numbers.csv", {"label_column": "y"}, ValueError, r"label_column: .*'y' \(no header row\)"),
    ("numbers.csv", {"label_column": 2}, ValueError, r"label_column: .*\[-2, 2\).*got 2"),
    ("mnist", {"label_column": 0}, ValueError, r"label_column: .*named dataset 'mnist'"),
])
def test_bad_inputs_raise_clear_errors(tmp_path, monkeypatch, name, kwargs, error, pattern):
    paths = bad_files(tmp_path)
    monkeypatch.chdir(tmp_path)
    source = str(paths.get(name, name))
    with pytest.raises(error, match=pattern) as info:
        load_dataset(source, **kwargs)
    assert "\n" not in str(info.value)


def test_source_of_wrong_type():
    with pytest.raises(TypeError, match="source: expected a dataset name or a path"):
        load_dataset(3)


def test_dataset_validates_its_fields():
    x = torch.zeros(4, 6)
    with pytest.raises(ValueError, match="x: expected a floating tensor"):
        Dataset(torch.zeros(4, 6, dtype=torch.int64), None, None, "d")
    with pytest.raises(ValueError, match=r"labels: expected None or an int64 tensor .*\[4\]"):
        Dataset(x, torch.zeros(3, dtype=torch.int64), None, "d")
    with pytest.raises(ValueError, match="image_shape: .*D == 6"):
        Dataset(x, None, (1, 2, 2), "d")
    ds = Dataset(x, torch.arange(4), (1, 2, 3), "d")
    assert len(ds) == 4 and len(ds.subset(slice(1, 3))) == 2
    assert torch.equal(ds.subset(torch.tensor([3, 0])).labels, torch.tensor([3, 0]))


# --------------------------------------------------------------------------- binarization


def grey_levels(n: int = 20000) -> torch.Tensor:
    return torch.linspace(0, 1, 11).repeat(n, 1)  # [n, 11], column j has grey level j/10


def test_binarize_is_bernoulli_with_the_grey_levels():
    x = grey_levels()
    draw = data.binarize(x, torch.Generator().manual_seed(0))
    assert draw.dtype == torch.float32 and set(draw.unique().tolist()) <= {0.0, 1.0}
    p = x[0].double()
    tolerance = 5 * torch.sqrt(p * (1 - p) / x.shape[0]) + 1e-12  # 5 standard errors
    assert torch.all((draw.double().mean(0) - p).abs() <= tolerance)
    with pytest.raises(ValueError, match=r"x: expected Bernoulli probabilities in \[0, 1\]"):
        data.binarize(torch.tensor([[0.5, 1.5]]))
    with pytest.raises(ValueError, match="x: expected Bernoulli probabilities"):
        data.binarize(torch.tensor([[0.5, float("nan")]]))


def test_static_binarize_is_fixed_by_the_seed():
    ds = Dataset(grey_levels(50), torch.arange(50), None, "g")
    a, b, c = (data.static_binarize(ds, seed) for seed in (7, 7, 8))
    assert torch.equal(a.x, b.x) and not torch.equal(a.x, c.x)
    assert set(a.x.unique().tolist()) == {0.0, 1.0} and torch.equal(a.labels, ds.labels)
    batches = Batches(a.x, 16, binarize="static", seed=1)
    for xb, index in batches.epoch(0):
        assert torch.equal(xb, a.x[index])  # static: Batches does not redraw


def test_dynamic_binarization_resumable_and_fresh_each_epoch():
    x = grey_levels(3000)
    first = Batches(x, 500, binarize="dynamic", seed=3)
    resumed = Batches(x, 500, binarize="dynamic", seed=3)  # a new process, same (seed, epoch)
    e2 = [b for b, _ in first.epoch(2)]
    assert all(torch.equal(a, b) for a, (b, _) in zip(e2, resumed.epoch(2), strict=True))
    e3 = [b for b, _ in first.epoch(3)]
    assert not torch.equal(torch.cat(e2), torch.cat(e3))
    other = torch.cat([b for b, _ in Batches(x, 500, binarize="dynamic", seed=4).epoch(2)])
    assert not torch.equal(torch.cat(e2), other)
    p = x[0].double()
    mean = torch.cat(e2).double().mean(0)
    assert torch.all((mean - p).abs() <= 5 * torch.sqrt(p * (1 - p) / x.shape[0]) + 1e-12)


def test_dynamic_binarization_keeps_the_source_and_its_dtype():
    for dtype in (torch.float32, torch.float64):
        x = grey_levels(256).to(dtype)
        x[:, 0], x[:, 1] = 0.0, 1.0                     # P(u < 0) = 0, P(u < 1) = 1
        kept = x.clone()
        out = torch.cat([b for b, _ in Batches(x, 64, binarize="dynamic", seed=5).epoch(0)])
        assert torch.equal(x, kept)                    # the in-memory data is not overwritten
        assert out.dtype == dtype and set(out.unique().tolist()) <= {0.0, 1.0}
        assert torch.all(out[:, 0] == 0) and torch.all(out[:, 1] == 1)


# --------------------------------------------------------------------------- batching


def test_batches_cover_each_index_once_in_a_seeded_order():
    x = torch.arange(103 * 2, dtype=torch.float32).reshape(103, 2)
    batches = Batches(x, 10, seed=5)
    epoch = list(batches.epoch(1))
    assert len(batches) == len(epoch) == 11 and [len(i) for _, i in epoch][-1] == 3
    order = torch.cat([i for _, i in epoch])
    assert torch.equal(order.sort().values, torch.arange(103)) and order.dtype == torch.int64
    assert all(torch.equal(xb, x[i]) for xb, i in epoch)
    assert torch.equal(order, torch.cat([i for _, i in Batches(x, 10, seed=5).epoch(1)]))
    assert not torch.equal(order, torch.cat([i for _, i in batches.epoch(2)]))
    assert not torch.equal(order, torch.arange(103))
    in_order = torch.cat([i for _, i in Batches(x, 10, shuffle=False).epoch(1)])
    assert torch.equal(in_order, torch.arange(103))


def test_drop_last():
    batches = Batches(torch.zeros(103, 2), 10, drop_last=True)
    sizes = [len(i) for _, i in batches.epoch(0)]
    assert len(batches) == 10 and sizes == [10] * 10


def test_distributed_shards_are_disjoint_and_match_the_global_batches():
    x = torch.randn(96, 3)
    single = [i for _, i in Batches(x, 12, seed=9).epoch(4)]  # global batch 12
    ranks = [[i for _, i in Batches(x, 4, seed=9, rank=r, world_size=3).epoch(4)]
             for r in range(3)]
    assert all(len(r) == len(single) == 8 for r in ranks)
    flat = torch.cat([torch.cat(r) for r in ranks])
    assert torch.equal(flat.sort().values, torch.arange(96))  # disjoint, and the union is all
    for step, global_index in enumerate(single):
        assert torch.equal(torch.cat([r[step] for r in ranks]), global_index)


def test_distributed_padding_gives_equal_batches_on_every_rank():
    n, world_size = 50, 4  # 50 = 4 * 12 + 2: pad by 2 repeated examples
    ranks = [list(Batches(torch.randn(n, 2), 5, seed=1, rank=r, world_size=world_size).epoch(0))
             for r in range(world_size)]
    sizes = [[len(i) for _, i in r] for r in ranks]
    assert all(s == sizes[0] for s in sizes) and sizes[0] == [5, 5, 3]
    everything = torch.cat([i for r in ranks for _, i in r])
    assert len(everything) == n + 2 and set(everything.tolist()) == set(range(n))
    dropped = [list(Batches(torch.randn(n, 2), 5, rank=r, world_size=4, drop_last=True).epoch(0))
               for r in range(4)]
    kept = torch.cat([i for r in dropped for _, i in r])
    assert all(len(r) == 2 for r in dropped) and len(set(kept.tolist())) == len(kept) == 40


@pytest.mark.parametrize(("kwargs", "error", "pattern"), [
    ({"batch_size": 0}, ValueError, "batch_size: expected an integer >= 1, got 0"),
    ({"batch_size": 2.0}, TypeError, "batch_size: expected an integer"),
    ({"binarize": "always"}, ValueError, "binarize: expected one of 'dynamic', 'static', 'none'"),
    ({"rank": 2, "world_size": 2}, ValueError, "rank: expected 0 <= rank < world_size = 2"),
    ({"world_size": 0}, ValueError, "world_size: expected an integer >= 1"),
    ({"seed": -1}, ValueError, "seed: expected an integer >= 0"),
    ({"drop_last": True, "batch_size": 11}, ValueError, r"batch_size: .*drop_last.*got 11"),
    ({"x": torch.full((4, 2), 2.0), "binarize": "dynamic"}, ValueError, r"x: .*\[0, 1\]"),
    ({"x": torch.zeros(4)}, ValueError, r"x: expected a tensor of shape \[N, D\]"),
    ({"x": torch.zeros(4, 2, dtype=torch.int64)}, TypeError, "x: expected a floating"),
])
def test_batches_argument_errors(kwargs, error, pattern):
    arguments = {"x": torch.rand(10, 2), "batch_size": 3, **kwargs}
    with pytest.raises(error, match=pattern):
        Batches(arguments.pop("x"), arguments.pop("batch_size"), **arguments)


def test_epoch_must_be_a_non_negative_int():
    with pytest.raises(ValueError, match="epoch: expected an integer >= 0, got -1"):
        Batches(torch.rand(4, 2), 2).epoch(-1)


# --------------------------------------------------------------------------- splitting


def test_train_val_split_disjoint_reproducible():
    ds = Dataset(torch.randn(40, 3), torch.arange(40), None, "d")
    train, val = data.train_val_split(ds, 0.25, seed=2)
    assert len(train) == 30 and len(val) == 10
    both = torch.cat([train.labels, val.labels])
    assert torch.equal(both.sort().values, torch.arange(40))  # labels are the row indices
    assert torch.equal(train.x, ds.x[train.labels]) and torch.equal(val.x, ds.x[val.labels])
    again, _ = data.train_val_split(ds, 0.25, seed=2)
    other, _ = data.train_val_split(ds, 0.25, seed=3)
    assert torch.equal(again.labels, train.labels) and not torch.equal(other.labels, train.labels)
    assert len(data.train_val_split(ds, 0.1, seed=0)[1]) == 4


@pytest.mark.parametrize("fraction", [0, 1, 1.5, -0.1, float("nan"), 0.001, 0.999])
def test_train_val_split_bad_fraction(fraction):
    ds = Dataset(torch.randn(40, 3), None, None, "d")
    with pytest.raises(ValueError, match="val_fraction: expected"):
        data.train_val_split(ds, fraction, seed=0)


def test_data_protocol_name_reads_its_dataset(tmp_path):
    x = np.arange(2 * 4 * 4, dtype=np.uint8).reshape(2, 4, 4)
    data.write_idx(tmp_path / "t10k-images-idx3-ubyte", x)
    data.write_idx(tmp_path / "t10k-labels-idx1-ubyte", np.array([3, 1], dtype=np.uint8))
    a = data.load_dataset("binarized-fashion-mnist", "test", root=tmp_path, download=False)
    b = data.load_dataset("fashion-mnist", "test", root=tmp_path, download=False)
    assert torch.equal(a.x, b.x) and torch.equal(a.labels, b.labels)


# ------------------------------------------------------------------------ missing values in tables
# Missing values in tables and masked runs: only empty cells and nan are missing (other text
# is a one-line error with 1-based data row and column), runs trained with --missing mask get a
# right `next:` hint and messages, and CLI errors name flags, not config fields.


TINY = ["--limit", "300", "--epochs", "1", "--hidden", "16", "--latent-dim", "2", "--quiet"]




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
    assert code == 1 and err.count("\n") == 1 and "vaelab score" in err
    assert "expected complete rows (no NaN or empty cells)" in err
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
    if "--net" in flags:     # --hidden is an option of --net mlp: refused beside --net conv
        flags.append("--hidden")
    args = [*without_flags(["--data", files / "full.csv", *TINY], flags), "--out", tmp_path / "r",
            *argv]
    code, _, err = run_cli(capsys, "train", *args)
    assert code != 0 and message in err and err.count("\n") == 1
    assert "_" not in err.split("error:")[1].split("got")[0]


def test_binarize_rows_gives_each_row_its_own_draw():
    """A row's draw does not depend on the rows read with it (blocks of a file, or all of
    it), the draw follows Bernoulli(x), and NaN (a missing entry) is kept."""
    x = torch.rand(50, 13, generator=torch.Generator().manual_seed(0))
    whole = data.binarize_rows(x, seed=4)
    for block in (1, 7):
        parts = [data.binarize_rows(x[s:s + block], 4, first_row=s) for s in range(0, 50, block)]
        assert torch.equal(torch.cat(parts), whole)
    assert not torch.equal(data.binarize_rows(x, seed=5), whole)
    p = torch.full((400, 250), 0.3)
    assert abs(data.binarize_rows(p, 0).mean().item() - 0.3) < 0.005   # 3.4 standard errors
    assert set(data.binarize_rows(p, 0).unique().tolist()) == {0.0, 1.0}
    x[0, 0] = float("nan")
    assert data.binarize_rows(x, 4)[0, 0].isnan() and torch.equal(
        data.binarize_rows(x, 4)[1:], whole[1:])
