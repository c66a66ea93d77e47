"""Mixed tables end to end (vaelab.use.tables, with training, impute and the CLI): categories
keep their labels through impute, sample and reconstruct, missing cells of every kind are
imputed, and bad input gets one line.

Oracles: the label sets of the training table (every output category is one of them, never a
weighted mean of codes); the observed cells of an imputed table equal the input's, cell for
cell; the schema and normalisation in config.json equal those inferred from the same table.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import run_cli

import vaelab
from vaelab.data.schema import Schema
from vaelab.fit.train import train
from vaelab.use.tables import reconstruct_table, sample_table

pd = pytest.importorskip("pandas")
pytestmark = pytest.mark.usefixtures("one_thread")

TINY = {"latent_dim": 2, "hidden": [16], "likelihood": "mixed"}
LABELS = {"red", "green", "blue"}


def _table(n: int = 200, holes: bool = False):
    rng = np.random.default_rng(0)
    colour = rng.choice(["red", "green", "blue"], n)
    frame = pd.DataFrame({"colour": colour, "visits": rng.poisson(2 + 6 * (colour == "red")),
                          "smoker": (rng.random(n) < 0.3).astype(int),
                          "income": 900 + 300 * rng.standard_normal(n) + 600 * (colour == "blue"),
                          "price": np.exp(rng.standard_normal(n))})
    if holes:
        frame = frame.astype(object)
        for column, start in (("colour", 0), ("visits", 2), ("smoker", 4), ("income", 1),
                              ("price", 3)):
            frame.loc[start::9, column] = None
    return frame


@pytest.fixture(scope="module")
def masked_run(tmp_path_factory):
    path = tmp_path_factory.mktemp("mixed") / "run"
    train({"model": {**TINY, "missing": "mask", "likelihood_options": {
        "column_types": {"price": "log-normal"}}},
        "train": {"epochs": 3, "batch_size": 50, "binarize": "none"}},
        path, progress=False, log=None, dataset=_table(holes=True))
    return vaelab.load(path)


def test_the_run_records_the_schema_it_inferred(masked_run):
    options = masked_run.config.model.likelihood_options
    want = Schema.infer(_table(holes=True), {"price": "log-normal"})
    assert Schema.from_list(options["columns"]) == want
    assert options["column_types"] == {"price": "log-normal"}
    saved = json.loads((masked_run.run_dir / "config.json").read_text())
    assert saved["model"]["likelihood_options"]["columns"] == want.to_list()


def test_impute_fills_every_kind_with_categories_as_labels(masked_run):
    frame = _table(holes=True)
    filled = vaelab.impute(masked_run, frame, num_samples=20, seed=0)
    assert list(filled.columns) == list(frame.columns) and not filled.isna().any().any()
    assert set(filled["colour"]) <= LABELS
    assert set(filled["smoker"]) <= {0.0, 1.0}
    assert (filled["price"] > 0).all() and (filled["visits"] >= 0).all()
    seen = frame.notna()
    for column in frame.columns:       # observed cells come back as they were
        assert filled.loc[seen[column], column].tolist() == [
            float(v) if column != "colour" else v for v in frame.loc[seen[column], column]]
    draws = vaelab.impute(masked_run, frame.head(10), num_samples=20, draws=3, seed=0)
    assert len(draws) == 3 and all(set(d["colour"]) <= LABELS for d in draws)


def test_sample_and_reconstruct_keep_the_labels(masked_run):
    samples = sample_table(masked_run, 50, seed=0)
    assert list(samples.columns) == ["colour", "visits", "smoker", "income", "price"]
    assert set(samples["colour"]) <= LABELS
    assert (samples["visits"] == samples["visits"].round()).all()
    again = reconstruct_table(masked_run, _table(20))
    assert len(again) == 20 and set(again["colour"]) <= LABELS
    assert set(again["smoker"]) <= {0.0, 1.0}


def test_an_unseen_category_is_one_line(masked_run):
    frame = _table(10)
    frame.loc[4, "colour"] = "purple"
    with pytest.raises(ValueError, match=r"^x: column 'colour' has the category 'purple', "
                                         r"never seen in training"):
        vaelab.impute(masked_run, frame)


def test_the_cli_trains_imputes_samples_and_reconstructs_a_csv(tmp_path, capsys):
    _table(holes=True).to_csv(tmp_path / "holes.csv", index=False)
    _table(60).to_csv(tmp_path / "full.csv", index=False)
    run = tmp_path / "run"
    common = ["--likelihood", "mixed", "--binarize", "none", "--epochs", "1", "--latent-dim",
              "2", "--hidden", "8", "--out", run]
    code, out, err = run_cli(capsys, "train", "--data", tmp_path / "holes.csv", "--missing",
                             "mask", *common)
    assert code == 0, err
    assert "colour: categorical (3 categories: blue, green, red)" in out
    code, out, err = run_cli(capsys, "impute", run, "--data", tmp_path / "holes.csv", "--out",
                             tmp_path / "filled.csv", "--k", "10")
    assert code == 0, err
    filled = pd.read_csv(tmp_path / "filled.csv")
    assert set(filled["colour"]) <= LABELS and not filled.isna().any().any()
    assert run_cli(capsys, "sample", run, "-n", "7", "--out", tmp_path / "s.csv")[0] == 0
    assert set(pd.read_csv(tmp_path / "s.csv")["colour"]) <= LABELS
    code, out, err = run_cli(capsys, "reconstruct", run, "--data", tmp_path / "full.csv", "-n",
                             "5", "--out", tmp_path / "r.csv")
    assert code == 0, err
    assert len(pd.read_csv(tmp_path / "r.csv")) == 5


@pytest.mark.parametrize("extra, message", [
    (["--column-types", "TYPES"], "--column-types: names the column 'weight', which the data "
                                  "do not have"),
    ([], "--binarize: --likelihood mixed keeps every column's values"),
    (["--condition", "smoker"], "--condition: --likelihood mixed does not take a condition"),
])
def test_cli_errors_are_one_line(tmp_path, capsys, extra, message):
    _table(30).to_csv(tmp_path / "t.csv", index=False)
    (tmp_path / "types.json").write_text('{"weight": "gaussian"}')
    extra = [str(tmp_path / "types.json") if e == "TYPES" else e for e in extra]
    binarize = ["--binarize", "none"] if extra else []
    code, _, err = run_cli(capsys, "train", "--data", tmp_path / "t.csv", "--likelihood",
                           "mixed", *binarize, *extra, "--epochs", "1", "--out", tmp_path / "r")
    assert code != 0 and message in err and len(err.strip().splitlines()) == 1


def test_a_csv_with_text_without_a_schema_says_what_to_pass(tmp_path, capsys):
    _table(30).to_csv(tmp_path / "t.csv", index=False)
    code, _, err = run_cli(capsys, "train", "--data", tmp_path / "t.csv", "--binarize", "none",
                           "--likelihood", "gaussian", "--epochs", "1", "--out", tmp_path / "r")
    assert code != 0 and "pass --likelihood mixed" in err


@pytest.mark.parametrize("case, message", [
    ("ids", "column 'user' has 10,000 categories, more than 1,000: a categorical likelihood "
            "learns a softmax over every one of them"),
    ("negative", "column 'visits' is a count column (poisson) but has negative values (the "
                 "smallest -3)"),
])
def test_cli_refuses_bad_columns_in_one_line(tmp_path, capsys, case, message):
    """An identifier column of 10,000 labels, and a count column (by --column-types) with a
    negative value: non-zero exit, one line naming the column, saying what to do."""
    frame = _table(10_000 if case == "ids" else 30)
    if case == "ids":
        frame["user"] = [f"u{i}" for i in range(len(frame))]
    else:
        frame.loc[4, "visits"] = -3
    frame.to_csv(tmp_path / "t.csv", index=False)
    (tmp_path / "types.json").write_text('{"visits": "poisson"}')
    code, out, err = run_cli(capsys, "train", "--data", tmp_path / "t.csv", "--likelihood",
                             "mixed", "--binarize", "none", "--column-types",
                             tmp_path / "types.json", "--epochs", "1", "--out", tmp_path / "r")
    assert code != 0 and len(err.strip().splitlines()) == 1, err
    assert message in err
    assert ("group rare categories" if case == "ids" else
            'give the column the type gaussian in a --column-types file (JSON or TOML, '
            'column → type: {"visits": "gaussian"})') in err
    assert not (tmp_path / "r" / "model.safetensors").exists()


def test_an_imputed_csv_keeps_observed_cells_as_read_and_writes_no_float32_noise(masked_run,
                                                                                 tmp_path):
    """impute's CSV: every observed cell is the very text of the input file (integers stay
    integers: 3, not 3.0), whole numbers are written without a decimal point, and the model's
    values carry no digits beyond float32's (at most 9 significant digits)."""
    import csv

    from vaelab.use.impute import impute_file

    holes = _table(holes=True)
    holes.to_csv(tmp_path / "holes.csv", index=False)
    impute_file(masked_run, tmp_path / "holes.csv", tmp_path / "filled.csv", num_samples=8)
    read = list(csv.reader((tmp_path / "holes.csv").open()))
    wrote = list(csv.reader((tmp_path / "filled.csv").open()))
    assert wrote[0] == read[0] and len(wrote) == len(read)
    for before, after in zip(read[1:], wrote[1:], strict=True):
        for name, given, cell in zip(read[0], before, after, strict=True):
            if given:
                assert cell == given, (name, given, cell)
            elif name == "smoker":
                assert cell in ("0", "1")
            elif name != "colour":
                digits = cell.lstrip("-").replace(".", "").lstrip("0")
                assert len(digits) <= 9, cell           # float32's shortest decimals
    assert "3.0" not in {row[1] for row in wrote[1:]}


def test_table_csv_writes_whole_numbers_as_integers_and_model_values_at_float32():
    from vaelab.use.tables import table_csv

    frame = pd.DataFrame({"n": [1.0, 2.0, float("nan")], "x": [0.1, 42253.26171875, 2.5],
                          "c": ["a", None, "b"]})
    observed = np.array([[True, True, True], [True, False, False], [False, True, True]])
    assert table_csv(frame, observed).splitlines() == ["n,x,c", "1,0.1,a", "2,42253.26,",
                                                       ",2.5,b"]
    assert table_csv(frame.assign(x=[0.1, 1 / 3, 7.0])).splitlines()[1:] == [
        "1,0.1,a", "2,0.33333334,", ",7,b"]


def test_python_impute_gives_whole_number_columns_back_as_integers(masked_run):
    """A yes/no column read as floats (it has missing cells) comes back as integers 0/1,
    observed values unchanged; a real column stays float."""
    frame = _table(holes=True)
    filled = vaelab.impute(masked_run, frame, num_samples=20, seed=0)
    assert str(filled["smoker"].dtype) == "Int64" and set(filled["smoker"]) <= {0, 1}
    assert filled["income"].dtype == np.float64
    seen = frame["smoker"].notna()
    assert filled.loc[seen, "smoker"].tolist() == [int(v) for v in frame.loc[seen, "smoker"]]


def test_the_retype_advice_is_a_column_types_file_that_works(tmp_path, capsys):
    """The advice of a refused column, followed to the letter (its file, as it says), trains:
    a log-normal column with a value <= 0, retyped gaussian."""
    import json
    import re

    frame = _table(30)
    frame.loc[2, "visits"] = 0
    frame.to_csv(tmp_path / "t.csv", index=False)
    (tmp_path / "types.json").write_text('{"visits": "log-normal"}')
    flags = ["--likelihood", "mixed", "--binarize", "none", "--epochs", "1"]
    code, _, err = run_cli(capsys, "train", "--data", tmp_path / "t.csv", *flags,
                           "--column-types", tmp_path / "types.json", "--out", tmp_path / "r")
    assert code != 0, err
    advice = re.search(r"column → type: (\{.*\})\)", err).group(1)
    (tmp_path / "fixed.json").write_text(advice)
    assert json.loads(advice) == {"visits": "gaussian"}
    code, _, err = run_cli(capsys, "train", "--data", tmp_path / "t.csv", *flags,
                           "--column-types", tmp_path / "fixed.json", "--out", tmp_path / "r2")
    assert code == 0, err
