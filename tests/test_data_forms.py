"""Data as users hold it: arrays, tensors, DataFrames, torch Datasets and DataLoaders.

Oracles: each form gives the very rows the equivalent numpy array gives (bit for bit) and, under
the same seed, the very trained weights; a DataLoader's batches are used as they come (a loader
yielding vaelab's own batch order reproduces the array run exactly); the messages about bad
data are those of the array (the same rule), and each bad form gets one line naming the
problem.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset, Sampler, TensorDataset

import vaelab
from vaelab import data as data_
from vaelab import data_forms
from vaelab.fit.train import train

pd = pytest.importorskip("pandas")

SEED = 3
ROWS, COLS, BATCH = 48, 4, 16
CONFIG = {"model": {"likelihood": "gaussian", "latent_dim": 2, "hidden": [8]},
          "train": {"epochs": 2, "batch_size": BATCH, "binarize": "none", "val_fraction": 0.0,
                    "seed": SEED, "device": "cpu", "compile": False}}


@pytest.fixture(scope="module")
def x() -> np.ndarray:
    return np.random.default_rng(0).normal(size=(ROWS, COLS)).astype(np.float32)


def _weights(tmp_path, data, config=CONFIG, name="run", **kwargs) -> dict[str, torch.Tensor]:
    result = train(config, tmp_path / name, dataset=data, log=None, progress=False, **kwargs)
    return {k: v.detach().clone() for k, v in result.model.state_dict().items()}


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


class _VaelabOrder(Sampler):
    """Batches in the order vaelab's own batching draws for each epoch (the first pass over
    the loader is vaelab reading the data once, in index order)."""

    def __init__(self, n: int) -> None:
        self.n, self.calls = n, 0

    def __len__(self) -> int:
        return -(-self.n // BATCH)

    def __iter__(self):
        epoch, self.calls = self.calls - 1, self.calls + 1
        if epoch < 0:
            return iter(torch.arange(self.n).split(BATCH))
        batches = data_.Batches(torch.zeros(self.n, 1), BATCH, seed=SEED)
        return iter(batches._epoch_order(epoch).split(BATCH))


def test_every_form_gives_the_weights_of_the_array(tmp_path, x):
    reference = _weights(tmp_path, x, name="array")
    tensors = TensorDataset(torch.from_numpy(x), torch.zeros(ROWS, dtype=torch.long))
    forms = {
        "tensor": torch.from_numpy(x),
        "dataframe": pd.DataFrame(x, columns=["a", "b", "c", "d"]),
        "dataset": tensors,
        "loader": DataLoader(tensors, batch_sampler=_VaelabOrder(ROWS)),
    }
    for name, form in forms.items():
        assert _same(_weights(tmp_path, form, name=name), reference), name


def test_a_loader_is_not_rebatched(tmp_path, x):
    """One loader batch of all rows per epoch: 1 step per epoch, where the array's batch size
    gives 3; and the weights differ from the array run's."""
    loader = DataLoader(TensorDataset(torch.from_numpy(x)), batch_size=ROWS)
    result = train(CONFIG, tmp_path / "one", dataset=loader, log=None, progress=False)
    assert [row["step"] for row in result.metrics] == [1, 2]
    assert not _same({k: v for k, v in result.model.state_dict().items()},
                     _weights(tmp_path, x, name="array"))


def test_a_shuffling_loader_resumes_bit_exactly(tmp_path, x):
    def loader():
        return DataLoader(TensorDataset(torch.from_numpy(x)), batch_size=BATCH, shuffle=True)

    whole = _weights(tmp_path, loader(), name="whole")
    one = {**CONFIG, "train": {**CONFIG["train"], "epochs": 1}}
    train(one, tmp_path / "cut", dataset=loader(), log=None, progress=False)
    resumed = train(CONFIG, tmp_path / "cut", dataset=loader(), resume=True, log=None,
                    progress=False)
    assert _same(whole, {k: v for k, v in resumed.model.state_dict().items()})


def test_a_loader_holds_out_nothing_and_says_so(tmp_path, x):
    lines: list[str] = []
    config = {**CONFIG, "train": {**CONFIG["train"], "val_fraction": 0.25, "epochs": 1}}
    loader = DataLoader(TensorDataset(torch.from_numpy(x)), batch_size=BATCH)
    result = train(config, tmp_path / "r", dataset=loader, log=lines.append, progress=False)
    assert result.config.train.val_fraction == 0.0
    assert result.metrics[0]["val_elbo"] is None
    assert any("no validation rows are held out" in line for line in lines)
    limited = {**CONFIG, "train": {**CONFIG["train"], "limit": 10}}
    with pytest.raises(ValueError, match=r"^limit: a DataLoader's batches are used as they "):
        train(limited, tmp_path / "s", dataset=loader, log=None, progress=False)


def test_rows_are_the_arrays_bit_for_bit():
    """8-bit integers read as k/255, floats as they are, whatever form carries them."""
    ints = np.random.default_rng(1).integers(0, 256, size=(10, 6)).astype(np.int64)
    expected = data_forms.as_dataset(ints)
    assert expected.kind == "8-bit"
    np.testing.assert_array_equal(expected.x.numpy(), (ints / 255).astype(np.float32))
    forms = [torch.from_numpy(ints), pd.DataFrame(ints),
             TensorDataset(torch.from_numpy(ints)),
             DataLoader(TensorDataset(torch.from_numpy(ints)), batch_size=4)]
    for form in forms:
        got = data_forms.as_dataset(form)
        assert got.kind == expected.kind
        assert torch.equal(got.x, expected.x), type(form).__name__


def test_images_from_a_dataset_keep_their_shape_and_labels():
    images = torch.rand(5, 1, 3, 2)
    labels = torch.tensor([0, 1, 2, 1, 0])
    ds = data_forms.as_dataset(TensorDataset(images, labels))
    assert ds.image_shape == (1, 3, 2)
    assert torch.equal(ds.x, images.reshape(5, -1))
    assert torch.equal(ds.labels, labels)


def test_dataframe_columns_are_kept_in_the_run_and_outputs(tmp_path):
    rng = np.random.default_rng(2)
    values = rng.normal(size=(40, 3))
    values[:, 1:][rng.random((40, 2)) < 0.2] = np.nan      # every row keeps a value
    frame = pd.DataFrame(values, columns=["height", "weight", "age"],
                         index=[f"r{i}" for i in range(40)])
    config = {"model": {**CONFIG["model"], "missing": "mask"},
              "train": {**CONFIG["train"], "epochs": 1, "val_fraction": 0.0}}
    train(config, tmp_path / "run", dataset=frame, log=None, progress=False)
    stored = json.loads((tmp_path / "run" / "config.json").read_text())
    assert stored["dataset"]["columns"] == ["height", "weight", "age"]
    trained = vaelab.load(tmp_path / "run")
    assert trained.columns == ("height", "weight", "age")
    filled = vaelab.impute(trained, frame, num_samples=5, seed=0)
    assert list(filled.columns) == list(frame.columns) and list(filled.index) == list(frame.index)
    observed = ~np.isnan(values)
    np.testing.assert_array_equal(filled.to_numpy()[observed], values[observed])
    assert not filled.isna().to_numpy().any()
    draws = vaelab.impute(trained, frame, num_samples=5, draws=2, seed=0)
    assert len(draws) == 2 and list(draws[1].columns) == list(frame.columns)


def test_a_run_reads_a_dataframe_by_its_column_names(tmp_path):
    """A run trained on a DataFrame meets reordered columns by name (the same numbers, bit
    for bit; imputations come back in the frame's own order); a missing or an unknown
    column is one line naming both; an array is read by position."""
    rng = np.random.default_rng(4)
    values = rng.normal(size=(30, 3)) * [1.0, 10.0, 100.0]
    complete = pd.DataFrame(values, columns=["height", "weight", "age"])
    values[:, 1:][rng.random((30, 2)) < 0.2] = np.nan
    frame = pd.DataFrame(values, columns=["height", "weight", "age"])
    config = {"model": {**CONFIG["model"], "missing": "mask"},
              "train": {**CONFIG["train"], "epochs": 1}}
    train(config, tmp_path / "run", dataset=frame, log=None, progress=False)
    trained = vaelab.load(tmp_path / "run")
    order = ["age", "height", "weight"]
    torch.manual_seed(0)
    elbo = trained.elbo(complete)
    torch.manual_seed(0)
    assert torch.equal(trained.elbo(complete[order]), elbo)
    assert torch.equal(trained.reconstruct(complete[order]), trained.reconstruct(complete))
    by_position = trained.encode(complete.to_numpy()).mean
    assert torch.equal(trained.encode(complete[order]).mean, by_position)
    filled = vaelab.impute(trained, frame, num_samples=5, seed=0)
    again = vaelab.impute(trained, frame[order], num_samples=5, seed=0)
    assert list(again.columns) == order and again.equals(filled[order])
    for bad, wanted in ((complete[["height", "weight"]], "missing 'age'; unexpected none"),
                        (complete.assign(shoe=1.0), "missing none; unexpected 'shoe'")):
        for call in (trained.elbo, lambda f: vaelab.impute(trained, f, num_samples=2)):
            with pytest.raises(ValueError) as excinfo:
                call(bad)
            message = _message(excinfo)
            assert message.startswith("x: expected the 3 columns the run was trained on")
            assert message.endswith(wanted)


def test_evaluate_takes_a_dataframe_as_its_array(tmp_path, x):
    trained = train({**CONFIG, "train": {**CONFIG["train"], "epochs": 1}}, tmp_path / "r",
                    dataset=x, log=None, progress=False)
    model = trained.model.eval()
    a = vaelab.evaluate_model(model, torch.from_numpy(x), num_samples=4, seed=0)
    b = vaelab.evaluate_model(model, pd.DataFrame(x), num_samples=4, seed=0)
    assert a["log_likelihood"] == b["log_likelihood"] and a["elbo"] == b["elbo"]


# --------------------------------------------------------------------------- one clear line


def _message(excinfo) -> str:
    message = str(excinfo.value)
    assert "\n" not in message
    return message


def test_a_dataframe_with_text_columns_is_one_line():
    frame = pd.DataFrame({"age": [31, 45], "city": ["Oslo", "Lyon"], "when": pd.to_datetime(
        ["2020-01-01", "2021-01-01"]), "size": [1.5, 2.0]})
    with pytest.raises(ValueError) as excinfo:
        data_forms.as_dataset(frame)
    message = _message(excinfo)
    assert message.startswith("data: expected numeric columns in the DataFrame, got 2 ")
    assert "'city' (" in message and "'when' (datetime64" in message and "'age'" not in message


def test_nan_in_a_dataframe_gets_the_arrays_message():
    values = np.array([[0.5, np.nan], [1.5, 2.0]])
    with pytest.raises(ValueError) as from_array:
        data_forms.as_dataset(values)
    with pytest.raises(ValueError) as from_frame:
        data_forms.as_dataset(pd.DataFrame(values, columns=["a", "b"]))
    assert _message(from_frame) == _message(from_array)
    assert "--missing mask" in _message(from_frame)


class _Items(Dataset):
    def __init__(self, items) -> None:
        self.items = items

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i):
        return self.items[i]


@pytest.mark.parametrize("items, pattern", [
    ([torch.zeros(4), torch.zeros(5)],
     r"^data: expected every item's x to have the shape \(4,\) of the first, got \(5,\) at "
     r"item 1$"),
    ([torch.zeros(4), torch.zeros(4, dtype=torch.float64)],
     r"^data: expected every item's x to have the dtype float32 of the first, got float64 at "
     r"item 1$"),
    ([np.array(["a", "b"])], r"^data: expected item 0's x to hold numbers, got dtype <U1$"),
    ([torch.tensor(1.0)], r"^data: expected item 0's x to be a vector or an image"),
    ([(torch.zeros(2), 0, "extra")],
     r"^data: expected item 0 to be x or \(x, y\), got a tuple of 3 parts$"),
])
def test_a_dataset_of_the_wrong_shape_or_dtype_is_one_line(items, pattern):
    with pytest.raises(ValueError, match=pattern) as excinfo:
        data_forms.as_dataset(_Items(items))
    _message(excinfo)


def test_forms_not_accepted_are_one_line():
    class Stream(IterableDataset):
        def __iter__(self):
            yield torch.zeros(3)

    with pytest.raises(TypeError, match=r"^data: expected a map-style torch Dataset") as e1:
        data_forms.as_dataset(Stream())
    with pytest.raises(TypeError, match=r"^data: expected a numpy array, .* got list$") as e2:
        data_forms.as_dataset([[1.0, 2.0]])
    with pytest.raises(TypeError, match=r"^data: expected item 0's x to be a tensor or array "
                                        r"of numbers, got str$") as e3:
        data_forms.as_dataset(_Items(["text"]))
    for excinfo in (e1, e2, e3):
        _message(excinfo)


def test_a_loader_of_the_wrong_shape_is_one_line():
    loader = DataLoader(_Items([torch.zeros(3)] * 4 + [torch.zeros(3)] * 0), batch_size=2)
    assert data_forms.as_dataset(loader).x.shape == (4, 3)
    ragged = [[torch.zeros(2, 3)], [torch.zeros(2, 4)]]
    with pytest.raises(ValueError, match=r"^data: expected every batch's x to have the shape "
                                         r"\(3,\) of the first, got \(4,\) at batch 1$"):
        data_forms.as_dataset(DataLoader(_Items(ragged), batch_size=None))


def test_scores_and_codes_take_a_dataframe_as_its_array(tmp_path, x):
    from vaelab.use.encode import encode
    from vaelab.use.scores import anomaly_scores

    model = train({**CONFIG, "train": {**CONFIG["train"], "epochs": 1}}, tmp_path / "r",
                  dataset=x, log=None, progress=False).model.eval()
    scores = []
    for form in (torch.from_numpy(x), pd.DataFrame(x), TensorDataset(torch.from_numpy(x))):
        torch.manual_seed(0)
        scores.append(anomaly_scores(model, form, ["elbo"])["neg_elbo"])
    np.testing.assert_array_equal(scores[0], scores[1])
    np.testing.assert_array_equal(scores[0], scores[2])
    assert torch.equal(encode(model.encoder, pd.DataFrame(x)),
                       encode(model.encoder, torch.from_numpy(x)))
