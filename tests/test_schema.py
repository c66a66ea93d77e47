"""The schema of mixed tables (vaelab.data.schema): inference, overrides, encoding, errors.

Oracles: a hand-made DataFrame whose every column's kind is known by construction; the
normalisation against numpy's mean and standard deviation; the labels back, cell for cell,
after encoding and decoding; each refusal is one line naming the column or the flag.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from vaelab.data.schema import MAX_CATEGORIES, Schema, read_column_types

pd = pytest.importorskip("pandas")


def _frame():
    rng = np.random.default_rng(0)
    n = 40
    return pd.DataFrame({
        "colour": rng.choice(["red", "green", "blue"], n),
        "size": pd.Categorical(rng.choice(["S", "M", "L"], n)),
        "flag": rng.random(n) < 0.5,
        "smoker": rng.integers(0, 2, n),
        "visits": rng.poisson(3.0, n),
        "reads": np.r_[np.zeros(n - 5), [200, 400, 800, 1000, 3000]].astype(int),
        "income": 1000 + 300 * rng.standard_normal(n),
        "price": np.exp(rng.standard_normal(n)),
        "delta": rng.integers(-3, 4, n),
    })


def test_inference_gives_each_column_its_kind():
    schema = Schema.infer(_frame())
    kinds = {c.name: c.likelihood for c in schema.columns}
    assert kinds == {"colour": "categorical", "size": "categorical", "flag": "bernoulli",
                     "smoker": "bernoulli", "visits": "poisson", "reads": "negative-binomial",
                     "income": "gaussian", "price": "gaussian", "delta": "gaussian"}
    colour = schema.columns[0]
    assert colour.labels == ("blue", "green", "red") and colour.width == 3
    assert schema.width == 3 + 3 + 7


def test_integers_far_from_zero_are_measurements_not_counts():
    rng = np.random.default_rng(1)
    frame = pd.DataFrame({"age": rng.integers(19, 80, 60),          # never near zero
                          "rooms": np.r_[1, rng.integers(2, 9, 59)],   # a count from 1
                          "children": np.r_[0, rng.poisson(2.0, 59)]})
    kinds = {c.name: c.likelihood for c in Schema.infer(frame).columns}
    assert kinds["age"] == "gaussian"
    assert kinds["rooms"] in ("poisson", "negative-binomial")
    assert kinds["children"] in ("poisson", "negative-binomial")


def test_normalisation_is_recorded_from_the_observed_cells():
    frame = _frame()
    frame.loc[::4, "income"] = np.nan
    schema = Schema.infer(frame, {"price": "log-normal"})
    by = {c.name: c for c in schema.columns}
    seen = frame["income"].dropna().to_numpy()
    assert by["income"].loc == pytest.approx(seen.mean())
    assert by["income"].scale == pytest.approx(seen.std(ddof=1))
    logs = np.log(frame["price"].to_numpy())
    assert (by["price"].loc, by["price"].scale) == pytest.approx((logs.mean(), logs.std(ddof=1)))
    assert by["visits"].scale == pytest.approx(frame["visits"].mean())
    assert "income: gaussian (normalised: x − " in schema.describe()


def test_overrides_from_a_dict_json_and_toml(tmp_path):
    frame = _frame()
    wanted = {"visits": {"likelihood": "binomial", "trials": 20}, "delta": "student-t",
              "smoker": "categorical"}
    schema = Schema.infer(frame, wanted)
    by = {c.name: c for c in schema.columns}
    assert by["visits"].likelihood == "binomial" and by["visits"].options == {"trials": 20}
    assert by["delta"].likelihood == "student-t" and by["smoker"].labels == (0, 1)
    (tmp_path / "t.json").write_text(json.dumps(wanted))
    (tmp_path / "t.toml").write_text('delta = "student-t"\nsmoker = "categorical"\n'
                                     '[visits]\nlikelihood = "binomial"\ntrials = 20\n')
    assert Schema.infer(frame, str(tmp_path / "t.json")) == schema
    assert Schema.infer(frame, tmp_path / "t.toml") == schema
    assert read_column_types({"a": "zero_inflated_negative_binomial"}) == {
        "a": ("zero-inflated-negative-binomial", {})}


def test_labels_round_trip_through_encode_and_decode():
    frame = _frame()
    frame.loc[[2, 5], "colour"] = None
    schema = Schema.infer(frame)
    x = schema.encode(frame)
    assert x.shape == (len(frame), schema.width)
    assert np.isnan(x[2, :3]).all() and np.nansum(x[:, :3], 1).tolist().count(0.0) == 2
    back = schema.decode(x)
    assert back["colour"].fillna("-").tolist() == frame["colour"].fillna("-").tolist()
    assert back["colour"].isna().tolist() == frame["colour"].isna().tolist()
    assert back["size"].tolist() == frame["size"].tolist()
    assert back["smoker"].tolist() == frame["smoker"].astype(float).tolist()
    np.testing.assert_array_equal(back["income"], frame["income"])
    probabilities = np.zeros((1, schema.width))
    probabilities[0, :3] = [0.2, 0.5, 0.3]           # most probable: green
    probabilities[0, 6:8] = 0.0
    probabilities[0, 7] = 0.7                        # smoker's probability of 1
    decoded = schema.decode(probabilities)
    assert decoded.loc[0, "colour"] == "green" and decoded.loc[0, "smoker"] == 1.0
    assert Schema.from_list(json.loads(json.dumps(schema.to_list()))) == schema


def test_a_schema_naming_a_missing_column_is_one_line():
    with pytest.raises(ValueError, match=r"^--column-types: names the column 'weight', which "
                                         r"the data do not have \(their columns: colour, "):
        Schema.infer(_frame(), {"weight": "gaussian"})


def test_ten_thousand_categories_are_refused_with_why_and_what_to_do():
    frame = pd.DataFrame({"user": [f"u{i}" for i in range(10_000)], "x": np.arange(10_000.0)})
    with pytest.raises(ValueError) as err:
        Schema.infer(frame)
    message = str(err.value)
    assert "\n" not in message and "'user' has 10,000 categories" in message
    assert f"more than {MAX_CATEGORIES:,}" in message and "softmax" in message
    assert "drop the column" in message and "group rare categories" in message


def test_negative_values_in_a_count_column_are_one_line():
    frame = _frame()
    with pytest.raises(ValueError, match=r"column 'delta' is a count column \(poisson\) but has "
                                         r"negative values \(the smallest -3\)"):
        Schema.infer(frame, {"delta": "poisson"})
    schema = Schema.infer(frame)
    frame.loc[0, "visits"] = -2
    with pytest.raises(ValueError, match=r"column 'visits' is a count column .* -2"):
        schema.encode(frame)


def test_a_category_never_seen_in_training_is_one_line():
    frame = _frame()
    schema = Schema.infer(frame)
    frame.loc[3, "colour"] = "purple"
    with pytest.raises(ValueError, match=r"^x: column 'colour' has the category 'purple', never "
                                         r"seen in training \(known: blue, green, red\)"):
        schema.encode(frame, "x")


@pytest.mark.parametrize("types, message", [
    ({"colour": "gamma"}, "expected a column likelihood, one of gaussian"),
    ({"visits": "binomial"}, "binomial needs its number of trials"),
    ({"visits": {"likelihood": "poisson", "trials": 3}}, "poisson has no option 'trials'"),
    ({"visits": {"likelihood": "binomial", "trials": 2}}, "values up to .* above its 2"),
    ({"income": "bernoulli"}, "values other than 0 and 1"),
    ({"delta": "log-normal"}, "values <= 0"),
    ({"colour": "gaussian"}, "is gaussian \\(numbers\\), got the text"),
])
def test_bad_overrides_are_one_line_each(types, message):
    with pytest.raises(ValueError, match=message) as err:
        Schema.infer(_frame(), types)
    assert "\n" not in str(err.value)
