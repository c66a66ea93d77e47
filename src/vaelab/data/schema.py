"""The schema of a mixed-type table: one likelihood per column, and how each column is encoded.

Role in vaelab: part of :mod:`vaelab.data` (no torch). A table whose columns are of different
kinds — real values, counts, yes/no, categories given as text — is modelled as in HI-VAE
(Nazabal, Olmos, Ghahramani & Valera 2020, "Handling incomplete heterogeneous data using
VAEs") with one likelihood per column (``vaelab.model.mixed_likelihood``). This module decides
the likelihood of each column (:meth:`Schema.infer`, overridable per column), records each
column's normalisation and labels, and converts between the user's table and the numbers the
model reads:

* a categorical column of K labels becomes K one-hot columns ``name=label`` (the encoder reads
  the one-hot code, as in HI-VAE); a missing cell makes all K of them NaN;
* every other column is one model column with its values as given (real columns are
  normalised inside the model with the ``loc``/``scale`` recorded here, so every output is in
  the data's own units).

:meth:`Schema.decode` turns model outputs back into a table with the labels: a categorical
block (one-hot draws, or probabilities from reconstructions and imputations) becomes the
label of its largest entry, a yes/no column its most probable value.

Inference rules (missing cells ignored): text, category or object columns → categorical;
bool, or numbers all 0/1 → bernoulli; non-negative integers whose smallest value is at most
:data:`COUNT_FLOOR` → poisson, or negative-binomial when the variance exceeds
:data:`OVERDISPERSED` × the mean; anything else → gaussian (positive reals stay gaussian
unless told: log-normal is a choice about the data's nature). Integers that never come near
zero (ages 19–79, a cholesterol of 97–301 mg/dl) are measurements on an integer scale rather
than counts of events: a Poisson or negative binomial ties their spread to their mean, which
such columns do not follow (on scikit-learn's diabetes table, modelling them as counts made
imputation worse than Gaussian columns: normalised RMSE 0.775 against 0.704).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from vaelab.data.columns import column_order

#: The column likelihoods a schema may name, and the options each accepts.
COLUMN_LIKELIHOODS: dict[str, tuple[str, ...]] = {
    "gaussian": ("min_scale",), "student-t": ("df", "min_scale"), "log-normal": ("min_scale",),
    "bernoulli": (), "categorical": ("labels",), "binomial": ("trials",), "poisson": (),
    "negative-binomial": (), "zero-inflated-negative-binomial": (),
}
COUNTS = ("poisson", "negative-binomial", "zero-inflated-negative-binomial")
#: Likelihoods whose log_prob is a probability (the others are densities).
DISCRETE = ("bernoulli", "categorical", "binomial", *COUNTS)
#: Likelihoods normalised by loc/scale: of x, or of log x for the log-normal.
LOCATION_SCALE = ("gaussian", "student-t", "log-normal")
#: A categorical column with more labels than this is refused (see :func:`_check_labels`).
MAX_CATEGORIES = 1000
#: Non-negative integer columns are inferred as counts only when their smallest value is at
#: most this (a count can be zero or one; integer measurements far from zero are not counts).
COUNT_FLOOR = 1
#: Counts whose variance exceeds this multiple of their mean are given a negative binomial.
OVERDISPERSED = 1.5


@dataclass(frozen=True)
class Column:
    """One column of a mixed table: its name, likelihood, options and encoding.

    Attributes:
        name: the column's name in the table.
        likelihood: a key of :data:`COLUMN_LIKELIHOODS`.
        options: the likelihood's options (``trials``, ``df``, ``min_scale``).
        labels: the categories of a categorical column, in code order (JSON values).
        loc, scale: the normalisation: mean and standard deviation of x (of log x for the
            log-normal) for location-scale columns; for counts ``scale`` is the mean count
            (the unit of the decoder's rate); 0 and 1 elsewhere.
    """

    name: str
    likelihood: str
    options: dict = field(default_factory=dict)
    labels: tuple | None = None
    loc: float = 0.0
    scale: float = 1.0

    @property
    def width(self) -> int:
        """Model columns it takes: K for a categorical column, else 1."""
        return len(self.labels) if self.labels is not None else 1

    def to_dict(self) -> dict:
        out: dict[str, Any] = {"name": self.name, "likelihood": self.likelihood}
        if self.options:
            out["options"] = dict(self.options)
        if self.labels is not None:
            out["labels"] = list(self.labels)
        if self.likelihood in LOCATION_SCALE or self.likelihood in COUNTS:
            out.update(loc=self.loc, scale=self.scale)
        return out

    @classmethod
    def from_dict(cls, data: object, where: str = "columns") -> Column:
        if not isinstance(data, Mapping) or not isinstance(data.get("name"), str):
            raise ValueError(f"{where}: expected a table with a 'name' and a 'likelihood', "
                             f"got {data!r}")
        name = data["name"]
        unknown = sorted(set(data) - {"name", "likelihood", "options", "labels", "loc",
                                      "scale"})
        if unknown:
            raise ValueError(f"{where}: column {name!r} has no setting {unknown[0]!r}")
        likelihood = _likelihood_name(data.get("likelihood"), f"{where} (column {name!r})")
        labels = data.get("labels")
        if (likelihood == "categorical") != (labels is not None):
            raise ValueError(f"{where}: column {name!r}: expected labels exactly for a "
                             f"categorical column, got {likelihood} with labels {labels!r}")
        return cls(name, likelihood, dict(data.get("options") or {}),
                   None if labels is None else tuple(labels), float(data.get("loc", 0.0)),
                   float(data.get("scale", 1.0)))


def _likelihood_name(value: object, where: str) -> str:
    name = value.replace("_", "-") if isinstance(value, str) else value
    if name not in COLUMN_LIKELIHOODS:
        raise ValueError(f"{where}: expected a column likelihood, one of "
                         f"{', '.join(COLUMN_LIKELIHOODS)}, got {value!r}")
    return str(name)


class Schema:
    """The columns of a mixed table (:class:`Column`), in table order."""

    def __init__(self, columns: tuple[Column, ...]) -> None:
        if not columns:
            raise ValueError("columns: expected at least one column, got none")
        names = [c.name for c in columns]
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:
            raise ValueError(f"columns: expected distinct column names, got {repeated[0]!r} "
                             f"more than once")
        self.columns = tuple(columns)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Schema) and self.to_list() == other.to_list()

    def __repr__(self) -> str:
        return f"Schema({', '.join(f'{c.name}: {c.likelihood}' for c in self.columns)})"

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.columns)

    @property
    def width(self) -> int:
        """D: the number of model columns (one-hot blocks counted in full)."""
        return sum(c.width for c in self.columns)

    def blocks(self) -> list[tuple[Column, int, int]]:
        """(column, start, stop) of each column's model columns."""
        out, start = [], 0
        for column in self.columns:
            out.append((column, start, start + column.width))
            start += column.width
        return out

    def model_columns(self) -> tuple[str, ...]:
        """The names of the D model columns: ``name`` or ``name=label`` for one-hot blocks."""
        return tuple(f"{c.name}={label}" if c.labels is not None else c.name
                     for c in self.columns for label in (c.labels or (None,)))

    def to_list(self) -> list[dict]:
        """JSON-serializable (what a run's config.json records)."""
        return [c.to_dict() for c in self.columns]

    @classmethod
    def from_list(cls, data: object, where: str = "columns") -> Schema:
        if isinstance(data, Schema):
            return data
        if not isinstance(data, (list, tuple)):
            raise ValueError(f"{where}: expected a list of columns, got {type(data).__name__}")
        return cls(tuple(Column.from_dict(item, where) for item in data))

    # ------------------------------------------------------------------ inference

    @classmethod
    def infer(cls, frame: Any, column_types: object = None,
              where: str = "--column-types") -> Schema:
        """The schema of a DataFrame: each column's likelihood by the module's rules, or as
        ``column_types`` says (a mapping column → likelihood name or {likelihood, options},
        or a path to a JSON/TOML file of one); normalisation fitted on the observed cells."""
        overrides = read_column_types(column_types, where)
        names = [str(c) for c in frame.columns]
        absent = [name for name in overrides if name not in names]
        if absent:
            raise ValueError(f"{where}: names the column {absent[0]!r}, which the data do not "
                             f"have (their columns: {_listed(names)})")
        columns = []
        for name, series in zip(names, (frame[c] for c in frame.columns), strict=True):
            likelihood, options = overrides.get(name) or (_guess(series), {})
            columns.append(_fit_column(name, series, likelihood, dict(options)))
        return cls(tuple(columns))

    def describe(self) -> str:
        """The schema as the user sees it: one line per column."""
        lines = [f"schema ({len(self.columns)} columns; override with --column-types FILE):"]
        for c in self.columns:
            if c.labels is not None:
                what = f"{len(c.labels)} categories: {_listed([str(v) for v in c.labels], 6)}"
            elif c.likelihood in LOCATION_SCALE:
                of = "log x" if c.likelihood == "log-normal" else "x"
                what = f"normalised: {of} − {c.loc:.4g}, / {c.scale:.4g}"
            elif c.likelihood in COUNTS:
                what = f"mean count {c.scale:.4g}"
            else:
                what = ", ".join(f"{k} {v}" for k, v in c.options.items())
            lines.append(f"  {c.name}: {c.likelihood}" + (f" ({what})" if what else ""))
        return "\n".join(lines)

    # ------------------------------------------------------------------ encoding

    def encode(self, data: Any, where: str = "data") -> np.ndarray:
        """A table (DataFrame, or an array of the schema's columns in order) → float64
        [N, D] model columns, NaN for missing cells (a missing category: its whole block).

        Raises ValueError (one line naming the column) for a missing or extra column, a
        category never seen in training, or values outside a column's likelihood."""
        frame = _as_frame(data, self.names, where)
        column_order(list(frame.columns), self.names, where)   # by name, one rule
        series = {str(c): frame[c] for c in frame.columns}
        parts = [_encode_column(c, series[c.name], where) for c in self.columns]
        return np.concatenate(parts, axis=1) if parts else np.zeros((len(frame), 0))

    def decode(self, values: Any) -> Any:
        """Model columns [N, D] (draws, means or probabilities; NaN allowed) → a DataFrame of
        the table's columns: labels for categorical columns (the largest entry of the block),
        0/1 for yes/no columns (the more probable), the values for the others."""
        import pandas as pd

        array = np.asarray(values, dtype=np.float64)
        if array.ndim != 2 or array.shape[1] != self.width:
            raise ValueError(f"values: expected shape [N, {self.width}], got {array.shape}")
        out = {}
        for column, start, stop in self.blocks():
            block = array[:, start:stop]
            if column.labels is not None:
                pick = np.nan_to_num(block, nan=-np.inf).argmax(1)
                known = ~np.isnan(block).all(1)
                labels = np.array(column.labels, dtype=object)
                out[column.name] = pd.Series(np.where(known, labels[pick], np.nan), dtype=object)
            elif column.likelihood == "bernoulli":
                out[column.name] = pd.Series(np.where(np.isnan(block[:, 0]), np.nan,
                                                      (block[:, 0] >= 0.5).astype(float)))
            else:
                out[column.name] = pd.Series(block[:, 0])
        return pd.DataFrame(out)


def _listed(items: list[str], limit: int = 8) -> str:
    more = f", … ({len(items) - limit} more)" if len(items) > limit else ""
    return ", ".join(items[:limit]) + more


def _as_frame(data: Any, names: tuple[str, ...], where: str) -> Any:
    import pandas as pd

    if type(data).__name__ == "DataFrame":
        return data
    array = np.asarray(data)
    if array.ndim != 2 or array.shape[1] != len(names):
        raise ValueError(f"{where}: expected a DataFrame or a table of {len(names)} columns "
                         f"({_listed(list(names))}), got shape {array.shape}")
    return pd.DataFrame(array, columns=list(names))


def _is_text(series: Any) -> bool:
    from pandas.api.types import is_bool_dtype, is_numeric_dtype

    return not (is_numeric_dtype(series.dtype) or is_bool_dtype(series.dtype))


def _numbers(series: Any, name: str, likelihood: str, where: str) -> np.ndarray:
    """The column as float64 with NaN for missing cells; one line for text in it."""
    import pandas as pd

    values = pd.to_numeric(series, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
    bad = np.isnan(values) & series.notna().to_numpy()
    if bad.any():
        raise ValueError(f"{where}: column {name!r} is {likelihood} (numbers), got the text "
                         f"{series[bad].iloc[0]!r}; fix the cell or "
                         f"{_retype(name, 'categorical')}")
    return values


def _guess(series: Any) -> str:
    """The likelihood the rules of the module docstring give a column."""
    import pandas as pd
    from pandas.api.types import is_bool_dtype

    if is_bool_dtype(series.dtype):
        return "bernoulli"
    numbers = pd.to_numeric(series, errors="coerce")    # numbers held as objects count too
    if _is_text(series) and (numbers.isna() & series.notna()).any():
        return "categorical"
    values = numbers.to_numpy(dtype=np.float64, na_value=np.nan)
    seen = values[~np.isnan(values)]
    if seen.size and np.isin(seen, (0.0, 1.0)).all():
        return "bernoulli"
    if (seen.size and (seen >= 0).all() and (seen == np.round(seen)).all()
            and seen.min() <= COUNT_FLOOR):
        mean = seen.mean()
        overdispersed = seen.size > 1 and seen.var(ddof=1) > OVERDISPERSED * max(mean, 1e-12)
        return "negative-binomial" if overdispersed else "poisson"
    return "gaussian"


def _fit_column(name: str, series: Any, likelihood: str, options: dict) -> Column:
    """The column's likelihood with its options checked, labels and normalisation fitted."""
    where = f"--column-types (column {name!r})"
    labels = options.pop("labels", None)
    allowed = COLUMN_LIKELIHOODS[likelihood]
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise ValueError(f"{where}: {likelihood} has no option {unknown[0]!r}; expected "
                         f"{' or '.join(allowed) or 'none'}")
    if likelihood == "binomial" and "trials" not in options:
        raise ValueError(f"{where}: binomial needs its number of trials, e.g. "
                         f'{{"likelihood": "binomial", "trials": 16}}')
    for key, value in options.items():
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        if not (number and math.isfinite(value) and value > 0) or (
                key == "trials" and not float(value).is_integer()):
            kind = "an integer >= 1" if key == "trials" else "a finite number > 0"
            raise ValueError(f"{where}: {key}: expected {kind}, got {value!r}")
        options[key] = int(value) if key == "trials" else float(value)
    if likelihood == "categorical":
        seen = [v for v in series.dropna().unique().tolist()]
        labels = tuple(labels) if labels is not None else tuple(sorted(seen, key=_order))
        _check_labels(name, labels, seen)
        return Column(name, likelihood, options, labels)
    values = _numbers(series, name, likelihood, where)
    _check_values(name, likelihood, options, values, where)
    seen = values[~np.isnan(values)]
    loc, scale = 0.0, 1.0
    if likelihood in LOCATION_SCALE and seen.size:
        seen = np.log(seen) if likelihood == "log-normal" else seen
        loc, spread = float(seen.mean()), float(seen.std(ddof=1)) if seen.size > 1 else 0.0
        scale = spread if spread > 0 and math.isfinite(spread) else 1.0
    elif likelihood in COUNTS and seen.size:
        scale = max(float(seen.mean()), 1e-3)
    return Column(name, likelihood, options, None, loc, scale)


def _order(value: object) -> tuple:
    """Sort key: numbers before text, each in its natural order."""
    return (0, value, "") if isinstance(value, (int, float)) else (1, 0, str(value))


def _check_labels(name: str, labels: tuple, seen: list) -> None:
    if len(labels) > MAX_CATEGORIES:
        raise ValueError(
            f"data: column {name!r} has {len(labels):,} categories, more than "
            f"{MAX_CATEGORIES:,}: a categorical likelihood learns a softmax over every one of "
            f"them (as many decoder outputs per row) and sees most of them too rarely to "
            f"learn them; drop the column if it is an identifier, group rare categories into "
            f"one ('other'), or model it as numbers with --column-types")
    unknown = [v for v in seen if v not in labels]
    if unknown:
        raise ValueError(f"--column-types: column {name!r} has the category {unknown[0]!r}, "
                         f"which its labels ({_listed([str(v) for v in labels])}) do not list")


def _check_values(name: str, likelihood: str, options: dict, values: np.ndarray,
                  where: str) -> None:
    """One line naming the column when its values lie outside its likelihood's support."""
    seen = values[~np.isnan(values)]
    if not seen.size:
        return
    if not np.isfinite(seen).all():
        raise ValueError(f"{where}: column {name!r} has infinite values")
    integers = (seen == np.round(seen)).all()
    lowest = float(seen.min())
    if likelihood in COUNTS or likelihood == "binomial":
        if lowest < 0:
            raise ValueError(f"data: column {name!r} is a count column ({likelihood}) but has "
                             f"negative values (the smallest {lowest:g}); counts are integers "
                             f">= 0: fix the data or {_retype(name, 'gaussian')}")
        if not integers:
            raise ValueError(f"data: column {name!r} is a count column ({likelihood}) but has "
                             f"non-integer values; fix the data or {_retype(name, 'gaussian')}")
    if likelihood == "binomial" and seen.max() > options["trials"]:
        raise ValueError(f"data: column {name!r} has values up to {seen.max():g}, above its "
                         f"{options['trials']} binomial trials")
    if likelihood == "bernoulli" and not np.isin(seen, (0.0, 1.0)).all():
        raise ValueError(f"data: column {name!r} is bernoulli (yes/no) but has values other "
                         f"than 0 and 1; {_retype(name, 'categorical', 'gaussian')}")
    if likelihood == "log-normal" and lowest <= 0:
        raise ValueError(f"data: column {name!r} is log-normal but has values <= 0 (the "
                         f"smallest {lowest:g}); {_retype(name, 'gaussian')}")


def _retype(name: str, *types: str) -> str:
    """The advice that gives column ``name`` another type: ``--column-types`` takes a JSON or
    TOML file (in Python, a mapping) of column → type, not a type."""
    return (f"give the column the type {' or '.join(types)} in a --column-types file "
            f"(JSON or TOML, column → type: {{{json.dumps(name)}: {json.dumps(types[0])}}})")


def _encode_column(column: Column, series: Any, where: str) -> np.ndarray:
    """One column → its model columns [N, width], NaN for missing cells."""
    if column.labels is None:
        values = _numbers(series, column.name, column.likelihood, where)
        _check_values(column.name, column.likelihood, column.options, values, where)
        return values[:, None]
    present = series.notna().to_numpy()
    codes = {label: i for i, label in enumerate(column.labels)}
    lookup = {str(label): i for i, label in enumerate(column.labels)}
    out = np.full((len(series), column.width), np.nan)
    for row, value in enumerate(series.tolist()):
        if not present[row]:
            continue
        code = codes.get(value, lookup.get(str(value)))
        if code is None:
            raise ValueError(f"{where}: column {column.name!r} has the category {value!r}, "
                             f"never seen in training (known: "
                             f"{_listed([str(v) for v in column.labels])}); map it to one of "
                             f"these or leave the cell empty to have it imputed")
        out[row] = 0.0
        out[row, code] = 1.0
    return out


def read_column_types(spec: object, where: str = "--column-types") -> dict[str, tuple]:
    """column → (likelihood, options) from a mapping or a JSON/TOML file of one.

    A value is a likelihood name (``"poisson"``) or a table ``{"likelihood": "binomial",
    "trials": 16}`` (for categorical columns optionally ``"labels": [...]``, fixing the
    categories and their order)."""
    if spec is None:
        return {}
    if isinstance(spec, (str, Path)):
        spec = _read_file(Path(spec).expanduser(), where)
    if not isinstance(spec, Mapping):
        raise ValueError(f"{where}: expected a mapping of column names to likelihoods, got "
                         f"{type(spec).__name__}")
    out: dict[str, tuple] = {}
    for name, value in spec.items():
        if isinstance(value, str):
            out[str(name)] = (_likelihood_name(value, f"{where} (column {name!r})"), {})
        elif isinstance(value, Mapping) and "likelihood" in value:
            options = {k: v for k, v in value.items() if k != "likelihood"}
            out[str(name)] = (_likelihood_name(value["likelihood"],
                                               f"{where} (column {name!r})"), options)
        else:
            raise ValueError(f"{where}: column {name!r}: expected a likelihood name or a table "
                             f"with 'likelihood', got {value!r}")
    return out


def _read_file(path: Path, where: str) -> object:
    if not path.is_file():
        raise FileNotFoundError(f"{where}: expected a JSON or TOML file, got {str(path)!r}, "
                                f"which does not exist")
    text = path.read_text("utf-8")
    try:
        if path.suffix.lower() == ".toml":
            try:
                import tomllib
            except ModuleNotFoundError:  # Python < 3.11
                import tomli as tomllib
            return tomllib.loads(text)
        return json.loads(text)
    except ValueError as err:
        raise ValueError(f"{where}: {path} is not valid "
                         f"{'TOML' if path.suffix.lower() == '.toml' else 'JSON'}: {err}"
                         ) from None


def read_table(path: str | Path, where: str = "--data") -> Any:
    """A CSV of mixed columns → a pandas DataFrame (empty cells and NA are missing)."""
    try:
        import pandas as pd
    except ModuleNotFoundError:
        raise ValueError(f"{where}: reading a table with text columns needs pandas "
                         f"(pip install pandas)") from None
    path = Path(path).expanduser()
    if path.suffix.lower() != ".csv" or not path.is_file():
        raise ValueError(f"{where}: expected an existing .csv file for --likelihood mixed, "
                         f"got {str(path)!r}")
    try:
        return pd.read_csv(path, skipinitialspace=True)
    except (ValueError, OSError) as err:
        raise ValueError(f"{where}: cannot read {path} as a CSV table: "
                         f"{' '.join(str(err).split())}") from None


def table_dataset(schema: Schema, data: Any, *, name: str = "data", where: str = "--data",
                  allow_missing: bool = False) -> Any:
    """A table (a CSV path or a DataFrame) encoded by ``schema`` → a
    :class:`vaelab.data.Dataset` of its model columns (named ``name=label`` in one-hot blocks);
    NaN marks missing cells when ``allow_missing``, else it is refused in one line."""
    from dataclasses import replace

    from vaelab.data.forms import as_dataset

    frame = read_table(data, where) if isinstance(data, (str, Path)) else data
    dataset = as_dataset(schema.encode(frame, where), name=name, where=where,
                         allow_missing=allow_missing)
    return replace(dataset, columns=schema.model_columns())
