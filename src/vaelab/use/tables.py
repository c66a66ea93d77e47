"""Samples and reconstructions of a mixed-type table, with its labels.

Role in vaelab: what ``vaelab sample`` and ``vaelab reconstruct`` write for a run trained with
``--likelihood mixed`` (``vaelab.model.mixed_likelihood``): the model's outputs decoded by the
run's schema (``vaelab.data.schema``) into the table's own columns, categories as their labels.
A sample is a draw x ~ p(x) = ∫ p(z) p(x | z) dz (a category drawn from its softmax, a count an
integer); a reconstruction is E[x | z] at z = E_q[z | x] with each categorical column's most
probable label and each yes/no column's more probable value.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from vaelab import _checks
from vaelab._files import atomic_write_bytes
from vaelab.data.schema import Schema, read_table
from vaelab.model.mixed_likelihood import schema_of


def table_schema(trained: object, what: str = "RUN") -> Schema:
    """The run's schema, or one line saying the run is not of a mixed table."""
    schema = schema_of(trained)
    if schema is None:
        raise ValueError(f"{what}: expected a run trained with --likelihood mixed (a table with "
                         f"a schema) for a .csv output, got another likelihood; write a .png")
    return schema


def sample_table(trained: Any, n: int, *, seed: int | None = None) -> Any:
    """n draws x ~ p(x) from a mixed-table run → a DataFrame of its columns (labels kept)."""
    schema = table_schema(trained)
    n = _checks.positive_int("n", n)
    generator = None if seed is None else torch.Generator().manual_seed(seed)
    with torch.no_grad():
        x = trained.sample(n, generator=generator)
    return schema.decode(x.detach().cpu().double().numpy())


def reconstruct_table(trained: Any, table: Any) -> Any:
    """E[x | z = E_q z] of each row of ``table`` (a DataFrame, or a CSV path) → a DataFrame:
    each category its most probable label, each yes/no column its more probable value."""
    schema = table_schema(trained)
    frame = read_table(table) if isinstance(table, (str, Path)) else table
    with torch.no_grad():
        x = trained.reconstruct(frame)
    return schema.decode(x.detach().cpu().double().numpy()).set_axis(frame.index)


def write_table(frame: Any, out: str | Path, observed: Any = None) -> Path:
    """``frame`` as a CSV at ``out``, written atomically (empty cells for missing values), its
    numbers as :func:`table_csv` writes them."""
    out = Path(out)
    atomic_write_bytes(out, table_csv(frame, observed).encode("utf-8"))
    return out


def table_csv(frame: Any, observed: Any = None) -> str:
    """``frame`` as CSV text: whole numbers without a decimal point (counts, 0/1, labels that
    are numbers), cells of ``observed`` (a bool DataFrame or array of frame's shape: the cells
    read from the user's file) as the shortest decimal that gives back the value read, and
    the model's values (float32 arithmetic) as the shortest decimal of their float32, so
    42253.26171875 is written 42253.26: digits beyond float32's precision are noise."""
    import numpy as np
    from pandas.api.types import is_bool_dtype, is_numeric_dtype

    mask = (np.zeros(frame.shape, dtype=bool) if observed is None
            else np.asarray(observed, dtype=bool))
    text = frame.copy()
    for j, name in enumerate(frame.columns):
        column = frame[name]
        if not is_numeric_dtype(column.dtype) or is_bool_dtype(column.dtype):   # labels
            continue
        text[name] = [_number(v, bool(mask[i, j])) for i, v in enumerate(column.tolist())]
    csv: str = text.to_csv(index=False)
    return csv


def _number(value: Any, exact: bool) -> str:
    import numpy as np

    if value is None or value != value:               # NaN / NA: an empty cell
        return ""
    value = float(value)
    if value.is_integer() and abs(value) < 2**53:
        return str(int(value))
    return repr(value) if exact else np.format_float_positional(np.float32(value), unique=True,
                                                               trim="-")


def value_columns(trained: Any, source: str | Path | None = None) -> list[str]:
    """The names of a run's x columns, for a table of its values: the DataFrame columns the
    run recorded, else the header row of the CSV ``source`` (default: the run's training
    file) without a conditional run's condition columns, else x0, x1, ...; one name per
    value of x."""
    from vaelab.data.readers import csv_header

    width = int(getattr(trained.model, "x_dim", trained.model.data_dim))
    names = list(trained.columns or ())
    path = Path(source if source is not None else trained.config.train.data).expanduser()
    if not names and path.suffix.lower() == ".csv" and path.is_file():
        names = list(csv_header(path) or ())
        spec = trained.config.model.condition
        if spec is not None and spec.get("source") == "columns":
            names = [name for name in names if name not in spec["columns"]]
    return names if len(names) == width else [f"x{i}" for i in range(width)]


def write_values(values: Any, out: str | Path, columns: list[str]) -> Path:
    """Rows of values [N, D] at ``out``: a .csv with the ``columns`` header (float32's
    shortest decimals, :func:`table_csv`) or a float32 .npy array (no pickle)."""
    import numpy as np
    import pandas as pd

    from vaelab.use.outputs import write_codes

    values = torch.as_tensor(values)
    out = Path(out)
    if out.suffix.lower() == ".npy":
        return write_codes(out, values)
    array = values.detach().cpu().numpy().astype(np.float32)
    return write_table(pd.DataFrame(array.astype(np.float64), columns=columns), out)
