"""Data as users hold it → a :class:`vaelab.data.Dataset` (kept for old imports).

The conversion lives in :mod:`vaelab.data.forms`; this module re-exports its public names.
"""

from vaelab.data.forms import (
    FORMS,
    LoaderBatches,
    as_dataset,
    as_rows,
    columns_of,
    frame_values,
    is_dataframe,
    is_loader,
)

__all__ = ["FORMS", "LoaderBatches", "as_dataset", "as_rows", "columns_of", "frame_values",
           "is_dataframe", "is_loader"]
