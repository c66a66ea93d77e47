"""vaelab evaluate's estimator flags: wrong combinations are one-line errors naming the flag,
before anything is loaded or written."""

from __future__ import annotations

import pytest

from vaelab import cli


@pytest.mark.parametrize("argv, flag", [
    (["--estimator", "ais", "--proposal", "refined"], "--proposal"),
    (["--chains", "4"], "--chains"),
    (["--estimator", "is", "--ais-steps", "5"], "--ais-steps"),
])
def test_bad_estimator_flags_name_the_flag(tmp_path, capsys, argv, flag):
    run = tmp_path / "no-run"
    code = cli.main(["evaluate", str(run), *argv])
    out, err = capsys.readouterr()
    assert code != 0
    lines = [line for line in err.splitlines() if line]
    assert len(lines) == 1 and lines[0].startswith("vaelab: error: " + flag), err
    assert "Traceback" not in err and not run.exists()


def test_estimator_flags_are_in_the_help(capsys):
    assert cli.main(["evaluate", "--help"]) == 0
    out = capsys.readouterr().out
    for flag in ("--estimator", "--proposal", "--ais-steps", "--chains", "--leapfrog"):
        assert flag in out
