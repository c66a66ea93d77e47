"""The ``vaelab`` command starts without importing torch.

``vaelab --help`` took 2-3.5 s because ``vaelab/__init__`` imported every wing (and so torch,
numpy, matplotlib) eagerly. The parser and the help texts need none of them: each check runs a
fresh interpreter and looks at ``sys.modules`` after building the parser or printing help.
Times are measured in ``benchmarks/startup.py``, never here.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

HEAVY = ("torch", "numpy", "matplotlib", "safetensors", "tqdm")


def _heavy_after(code: str) -> list[str]:
    probe = (f"import sys\n{code}\n"
             f"print(' '.join(m for m in {HEAVY!r} if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                         check=True)
    return out.stdout.split()


def test_import_cli_and_build_parser_import_no_heavy_module():
    assert _heavy_after("import vaelab.cli as c\nc.build_parser()") == []


@pytest.mark.parametrize("argv", [["--help"], ["train", "--help"], ["evaluate", "--help"],
                                  ["gaps", "--help"], ["--version"]])
def test_help_imports_no_heavy_module(argv):
    code = ("import contextlib, io, vaelab.cli as c\n"
            "with contextlib.redirect_stdout(io.StringIO()):\n"
            f"    assert c.main({argv!r}) == 0")
    assert _heavy_after(code) == []


def test_lazy_reexports_still_resolve():
    import vaelab
    from vaelab.infer.objectives import elbo
    from vaelab.use.trained import load
    assert vaelab.elbo is elbo and vaelab.load is load
    assert sorted(vaelab.__all__) == sorted(vaelab._HOME)
    for name in vaelab.__all__:
        assert getattr(vaelab, name) is not None
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        vaelab.nope  # noqa: B018


def test_slow_options_are_announced_once_on_cpu():
    import torch

    from vaelab.config import TrainConfig
    from vaelab.fit.train import speed_notes

    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert speed_notes(TrainConfig(), cpu) == []
    assert speed_notes(TrainConfig(compile="auto"), cpu) == []
    bf16 = speed_notes(TrainConfig(precision="bf16"), cpu)
    assert len(bf16) == 1 and "--precision bf16" in bf16[0] and "slower" in bf16[0]
    compiled = speed_notes(TrainConfig(compile=True), cpu)
    assert len(compiled) == 1 and "--compile" in compiled[0]
    assert len(speed_notes(TrainConfig(compile=True, precision="bf16"), cpu)) == 2
    assert speed_notes(TrainConfig(compile=True, precision="bf16"), cuda) == []


def test_evaluate_help_time_matches_the_docs(capsys):
    import re
    from pathlib import Path

    from vaelab import cli

    page = Path(__file__).resolve().parents[1] / "docs" / "getting-started.md"
    text = " ".join(page.read_text(encoding="utf-8").split())
    claim = re.search(r"The defaults take (about \d+ s)", text)
    assert claim is not None
    assert cli.main(["evaluate", "--help"]) == 0
    assert claim.group(1) in " ".join(capsys.readouterr().out.split())
