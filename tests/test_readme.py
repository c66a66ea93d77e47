"""The README's Python example runs as printed (a new user's first copy-paste)."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_python_api_example_runs():
    text = README.read_text(encoding="utf-8")
    start = text.index("```python", text.index("## Python API")) + len("```python")
    code = text[start:text.index("```", start)]
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(code, "README.md", "exec"), {})
    lines = out.getvalue().splitlines()
    assert lines and lines[-1] == "torch.Size([16])"
