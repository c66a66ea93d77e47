"""Training options that used to be silently ignored or mis-reported.

Flags the run would ignore are refused in one line naming the flag; divergence is reported in
the epoch lines and at the end, with huge numbers in scientific notation; resuming a finished
run does nothing; the CPU speed notes survive --quiet.
"""

from __future__ import annotations

import pytest

from vaelab import cli
from vaelab.fit.train import _describe, divergence_warning

TINY = ["--limit", "300", "--epochs", "1", "--hidden", "16", "--latent-dim", "2", "--quiet"]


def _without(argv: list, flags: list) -> list:
    """``argv`` without the flags (and their values) of ``flags``: each given once."""
    out, skip = [], False
    for i, token in enumerate(argv):
        if skip:
            skip = False
        elif token in flags:
            skip = i + 1 < len(argv) and not str(argv[i + 1]).startswith("--")
        else:
            out.append(token)
    return out


@pytest.mark.parametrize("flags, expected", [
    (["--kl-warmup", "3", "--kl-schedule", "constant"], "--kl-schedule constant"),
    (["--hierarchy", "ladder"], "--hierarchy ladder: needs several latent sizes"),
    (["--q-components", "3"], "--q-components: needs --family mixture"),
    (["--q-flow-steps", "3"], "--q-flow-steps: needs --family iaf"),
    (["--prior-components", "3"], "--prior-components: needs --prior mog or --prior vamp"),
    (["--prior", "mog", "--prior-flow-steps", "2"], "--prior-flow-steps: needs --prior flow"),
    (["--kl-cycles", "2"], "--kl-cycles: needs --kl-schedule cyclical"),
    (["--kl-ratio", "0.3"], "--kl-ratio: needs --kl-schedule cyclical"),
    (["--likelihood-components", "3"], "--likelihood-components: needs --likelihood "
                                       "discretized-logistic-mixture"),
    (["--conv-channels", "8"], "--conv-channels: needs --net conv"),
    (["--objective", "iwae"], "--objective iwae: needs --num-samples K >= 2"),
    (["--objective", "iwae-dreg", "--num-samples", "1"], "--objective iwae-dreg: needs"),
])
def test_ignored_flags_are_refused(tmp_path, capsys, flags, expected):
    code = cli.main(["train", *TINY, *flags, "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and expected in err, err
    assert not (tmp_path / "run").exists()


def test_schedule_alternating_help_names_phi_steps(capsys):
    assert cli.main(["train", "--help"]) == 0
    assert "needs --phi-steps K >= 1" in " ".join(capsys.readouterr().out.split())


def test_divergence_is_reported_in_scientific_notation():
    row = {"epoch": 2, "train_elbo": None, "val_elbo": -3.6e30, "train_rate": None,
           "train_distortion": None, "samples_per_s": 1.0, "skipped_steps": 3, "seconds": 0.1}
    line = _describe(row, 3, 3)
    assert "val ELBO -3.6e+30" in line and "WARNING: training diverged" in line
    assert divergence_warning({**row, "skipped_steps": 0}, 3) is not None   # the ELBO alone
    ok = {**row, "val_elbo": -250.0, "train_elbo": -251.0, "skipped_steps": 1}
    assert divergence_warning(ok, 3) is None and "-250.00" in _describe(ok, 3, 3)


def test_divergence_warns_at_the_end_even_quiet(tmp_path, capsys):
    argv = ["train", *_without(TINY, ["--epochs"]), "--epochs", "2", "--lr", "1e6", "--out",
            str(tmp_path / "r")]
    assert cli.main(argv) == 0
    err = capsys.readouterr().err
    assert "warning: training diverged in epoch(s)" in err and err.count("diverged") == 1


def test_resume_of_a_finished_run_writes_nothing(tmp_path, capsys):
    run = tmp_path / "run"
    assert cli.main(["train", *TINY, "--out", str(run)]) == 0
    before = {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in run.iterdir()
              if p.is_file()}
    capsys.readouterr()
    assert cli.main(["train", "--resume", str(run), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert out.strip() == (f"nothing to do: {run} already finished 1 epochs (pass --epochs "
                           f"M > 1 to extend it)")
    after = {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in run.iterdir()
             if p.is_file()}
    assert after == before


def test_cpu_speed_notes_survive_quiet(tmp_path, capsys, monkeypatch):
    from vaelab.fit import train as train_

    monkeypatch.setattr(train_, "speed_notes", lambda *_: ["note: slow on a CPU"])
    assert cli.main(["train", *TINY, "--device", "cpu", "--out", str(tmp_path / "r")]) == 0
    assert "note: slow on a CPU" in capsys.readouterr().err
