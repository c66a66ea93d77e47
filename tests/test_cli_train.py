"""Training options that used to be silently ignored or mis-reported.

Flags the run would ignore are refused in one line naming the flag; divergence is reported in
the epoch lines and at the end, with huge numbers in scientific notation; resuming a finished
run does nothing; the CPU speed notes survive --quiet.
"""

from __future__ import annotations

import json
import math

import pytest
import torch
from conftest import without_flags

import vaelab
from vaelab import cli, data
from vaelab.fit import runs
from vaelab.fit.progress import _describe, divergence_warning

TINY = ["--limit", "300", "--epochs", "1", "--hidden", "16", "--latent-dim", "2", "--quiet"]




@pytest.mark.parametrize("flags, expected", [
    (["--kl-warmup", "3", "--kl-schedule", "constant"], "--kl-schedule constant"),
    (["--hierarchy", "ladder"], "--hierarchy ladder: needs several latent sizes"),
    (["--hierarchy", "top-down"], "--hierarchy top-down: needs several latent sizes"),
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
    (["--prior-init", "data"], "--prior-init: needs --prior vamp"),
    (["--family", "iaf", "--q-min-logvar", "-6"], "--q-min-logvar: needs --family "
                                                 "diagonal-normal"),
    (["--optimizer", "sgd"], "--optimizer: invalid choice: 'sgd'"),
])
def test_ignored_flags_are_refused(tmp_path, capsys, flags, expected):
    code = cli.main(["train", *TINY, *flags, "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and expected in err, err
    assert not (tmp_path / "run").exists()


def test_the_training_craft_flags_reach_the_run(tmp_path, capsys):
    """--optimizer, --weight-norm, --prior-init and the log-variance bounds are recorded in
    config.json and used by the run."""
    import numpy as np

    path = tmp_path / "x.npy"
    np.save(path, np.random.default_rng(0).uniform(size=(60, 10)).astype(np.float32))
    run = tmp_path / "run"
    code = cli.main(["train", "--data", str(path), "--out", str(run), "--epochs", "1",
                     "--hidden", "6", "--latent-dim", "2", "--batch-size", "20", "--quiet",
                     "--optimizer", "adamax", "--weight-norm", "--gated", "--prior", "vamp",
                     "--prior-components", "3", "--prior-init", "data",
                     "--q-min-logvar", "-6", "--q-max-logvar", "2"])
    assert code == 0, capsys.readouterr().err
    saved = json.loads((run / "config.json").read_text())
    model, train = saved["model"], saved["train"]
    assert train["optimizer"] == "adamax"
    assert (model["net_options"]["weight_norm"], model["net_options"]["gated"]) == (True, True)
    assert model["prior_options"] == {"components": 3, "init": "data"}
    assert model["family_options"] == {"min_logvar": -6.0, "max_logvar": 2.0}
    trained = vaelab.load(run)
    assert trained.model.encoder.family.bounded
    assert any("parametrizations" in k for k in trained.model.state_dict())
    code = cli.main(["train", "--net", "conv", "--weight-norm", "--out", str(tmp_path / "c")])
    err = capsys.readouterr().err
    assert code == 2 and err.strip() == "vaelab: error: --weight-norm: needs --net mlp, got " \
        "--net conv"
    code = cli.main(["train", "--q-min-logvar", "2", "--q-max-logvar", "1", "--out",
                     str(tmp_path / "b")])
    err = capsys.readouterr().err
    assert code == 1 and err.strip() == (
        "vaelab: error: family_options.min_logvar (--q-min-logvar): expected a number below "
        "family_options.max_logvar = 1, got 2") and not (tmp_path / "b").exists()


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
    argv = ["train", *without_flags(TINY, ["--epochs"]), "--epochs", "2", "--lr", "1e6", "--out",
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


# ------------------------------------------- families, priors and objectives from the command line
# ``vaelab train --family … --prior …`` end to end on a small Fashion-MNIST subset.
#
# Every family (diagonal-normal, full-covariance-normal, mixture, iaf) and every prior
# (standard-normal, learned-normal, mog, vamp, flow) appears in at least one tiny run (300 images,
# a 16-unit hidden layer, 2 latent units), with the three inference schemes: each run trains,
# resumes bit-exactly (1 epoch + resume to 2 = 2 epochs straight, every saved tensor equal),
# reloads with ``vaelab.load``, samples, and (with an encoder) evaluates.


pytestmark = [
    pytest.mark.usefixtures("one_thread"),
    pytest.mark.skipif(
        not any((d / "train-images-idx3-ubyte.gz").is_file()
                or (d / "train-images-idx3-ubyte").is_file()
                for d in data.search_dirs("fashion-mnist")),
        reason="Fashion-MNIST is not installed (apt-get install dataset-fashion-mnist)"),
]

TINY_RICH = ["--limit", "300", "--hidden", "16", "--latent-dim", "2", "--batch-size", "50",
        "--quiet"]
CASES = {
    "mixture-mog": ["--family", "mixture", "--q-components", "3", "--prior", "mog",
                    "--prior-components", "4"],
    "iaf-vamp": ["--family", "iaf", "--q-flow-steps", "2", "--prior", "vamp",
                 "--prior-components", "5"],
    "full-covariance-flow": ["--family", "full-covariance-normal", "--prior", "flow",
                             "--prior-flow-steps", "2"],
    "diagonal-learned-semi-amortized": ["--family", "diagonal-normal", "--prior",
                                        "learned-normal", "--inference", "semi-amortized"],
    "iaf-standard-per-datapoint": ["--family", "iaf", "--prior", "standard-normal",
                                   "--inference", "per-datapoint"],
    "mixture-vamp-per-datapoint": ["--family", "mixture", "--prior", "vamp",
                                   "--inference", "per-datapoint"],
}


def _main(capsys, *argv) -> str:
    code = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    assert code == 0, err
    return out


def _tensors(run) -> dict[str, torch.Tensor]:
    return runs.read_safetensors(run / runs.MODEL_FILE, "model")


@pytest.mark.parametrize("case", sorted(CASES))
def test_train_resume_reload_sample_evaluate(case, tmp_path, capsys):
    flags = CASES[case]
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    _main(capsys, "train", "--out", straight, "--epochs", "2", *TINY_RICH, *flags)
    _main(capsys, "train", "--out", resumed, "--epochs", "1", *TINY_RICH, *flags)
    _main(capsys, "train", "--resume", resumed, "--epochs", "2", "--quiet")
    a, b = _tensors(straight), _tensors(resumed)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), case
    config = json.loads((resumed / "config.json").read_text())["model"]
    given = dict(zip(flags[::2], flags[1::2], strict=True))
    assert config["family"] == given["--family"].replace("-", "_")
    assert config["prior"] == given["--prior"].replace("-", "_")

    trained = vaelab.load(resumed)
    assert type(trained.model.prior_module).__name__ == type(
        vaelab.load(straight).model.prior_module).__name__
    assert trained.sample(3).shape == (3, 784)
    assert "wrote" in _main(capsys, "sample", resumed, "-n", "4")
    if "per-datapoint" in case:
        return
    x = data.load_dataset("fashion-mnist", "test", limit=8).x
    x = (x > 0.5).float()
    q = trained.encode(x)
    assert q.batch_shape == (8,) and q.event_shape == (2,)
    estimate = trained.log_likelihood(x, num_samples=64)
    elbo = trained.elbo(x, num_samples=64)
    assert bool(torch.isfinite(estimate.log_likelihood).all())
    assert float((estimate.log_likelihood - elbo).mean()) > -1.0      # log p̂ ≳ ELBO
    _main(capsys, "evaluate", resumed, "--k", "16", "--limit", "20", "--quiet")
    result = json.loads((resumed / "eval.json").read_text())
    assert math.isfinite(result["elbo"]["mean"])


def test_train_help_lists_every_family_and_prior(capsys):
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for flag in ("--family", "--q-components", "--q-flow-steps", "--prior",
                 "--prior-components", "--prior-flow-steps"):
        assert flag in text
    for name in ("diagonal-normal", "full-covariance-normal", "mixture", "iaf",
                 "standard-normal", "learned-normal", "mog", "vamp", "flow"):
        assert name in text


@pytest.mark.parametrize("argv, flag", [
    (["--family", "planar"], "--family"),
    (["--q-components", "0"], "--q-components"),
    (["--prior", "vampire"], "--prior"),
    (["--prior-flow-steps", "-1"], "--prior-flow-steps"),
])
def test_bad_family_and_prior_flags_are_one_line_errors(argv, flag, tmp_path, capsys):
    code = cli.main(["train", "--out", str(tmp_path / "r"), *argv])
    err = capsys.readouterr().err
    assert code == 2 and flag in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "r").exists()


RECIPE = __import__("pathlib").Path(__file__).parents[1] / "recipes/fashion-mnist/vae.toml"


@pytest.mark.parametrize("flags, expected", [
    (["--val-fraction", "0.1"], "val_fraction (--val-fraction): the data protocol"),
    (["--binarize", "static"], "binarize (--binarize): the data protocol"),
])
def test_a_recipes_protocol_refuses_a_conflicting_flag(tmp_path, capsys, flags, expected):
    """As with --data binarized-fashion-mnist on the command line: one line, nothing made."""
    for source in (["--config", str(RECIPE)], ["--data", "binarized-fashion-mnist"]):
        code = cli.main(["train", *source, *TINY, *flags, "--out", str(tmp_path / "run")])
        err = capsys.readouterr().err
        assert code == 1 and err.count("\n") == 1 and expected in err, err
        assert not (tmp_path / "run").exists()


def test_flags_switch_off_what_a_recipe_turns_on(tmp_path):
    """--kl-schedule constant, --ema 0/off and --early-stopping 0/off override the recipe's
    warm-up, average and patience, without blaming flags the user never typed."""
    from vaelab.cli.command import build_parser
    from vaelab.cli.train import _train_config

    def config(*flags):
        args = build_parser().parse_args(["train", "--config", str(RECIPE), *flags])
        return _train_config(args, tmp_path / "run").train

    recipe = config()
    assert (recipe.kl_schedule, recipe.ema_decay, recipe.early_stopping_patience) == (
        "linear", 0.999, 50)
    for off in ("0", "off"):
        plain = config("--kl-schedule", "constant", "--ema", off, "--early-stopping", off)
        assert (plain.kl_schedule, plain.kl_schedule_options) == ("constant", {})
        assert (plain.ema_decay, plain.early_stopping_patience) == (None, None)
    # linear keeps the file's warm-up length (what --help says); --kl-warmup replaces it
    assert config("--kl-schedule", "linear").kl_schedule_options == {"warmup_epochs": 100.0}
    assert config("--kl-schedule", "linear", "--kl-warmup", "3").kl_schedule_options == {
        "warmup_epochs": 3.0}


def test_a_warm_up_longer_than_the_run_is_one_warning_line(tmp_path, capsys):
    """--epochs 1 under a 100-epoch warm-up trains at KL weight 0.01 β: said, not rescaled."""
    import numpy as np

    path = tmp_path / "x.npy"
    np.save(path, np.random.default_rng(0).uniform(size=(40, 6)).astype(np.float32))
    code = cli.main(["train", "--data", str(path), "--kl-warmup", "4", "--epochs", "2",
                     "--hidden", "4", "--latent-dim", "2", "--batch-size", "20",
                     "--out", str(tmp_path / "run")])
    out, err = capsys.readouterr()
    lines = [line for line in (out + err).splitlines() if "longer than the run" in line]
    assert code == 0 and lines == [
        "warning: the KL warm-up (--kl-warmup 4 epochs) is longer than the run (--epochs 2): "
        "training ends at KL weight 0.5 × β, not β; pass a --kl-warmup of at most 2 epochs, "
        "or --kl-schedule constant for none"], out + err
    saved = json.loads((tmp_path / "run" / "config.json").read_text())["train"]
    assert saved["kl_schedule_options"] == {"warmup_epochs": 4.0}    # not rescaled


@pytest.mark.parametrize("section, line, expected", [
    ("model", "latent_dim = -3", "latent_dim: expected an integer >= 1, got -3"),
    ("train", 'lr = "fast"', "lr: expected a number > 0, got 'fast'"),
    ("train", 'kl_schedule = "linearr"', "kl_schedule: expected one of"),
    ("model", 'prior = "vamp"\nprior_options = {components = 0}',
     "prior_options.components: expected an integer >= 1, got 0"),
])
def test_a_bad_value_in_a_config_file_is_said_as_the_files(tmp_path, capsys, section, line,
                                                           expected):
    """Named by the file and its key, not by a flag the user never typed."""
    path = tmp_path / "bad.toml"
    path.write_text(f"[{section}]\n{line}\n")
    code = cli.main(["train", "--config", str(path), "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert code == 1 and err.count("\n") == 1, err
    assert err.startswith(f"vaelab: error: config file {str(path)!r}: {expected}"), err
    assert not (tmp_path / "run").exists()


def test_a_flag_that_clashes_with_a_good_config_file_is_not_blamed_on_the_file(tmp_path,
                                                                                capsys):
    path = tmp_path / "good.toml"
    path.write_text('[train]\nobjective = "iwae"\nnum_samples = 5\n')
    code = cli.main(["train", "--config", str(path), "--free-bits", "1",
                     "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert code == 1 and "free_bits" in err and "config file" not in err, err


@pytest.mark.parametrize("ema", [[], ["--ema", "0.5"]], ids=["live", "ema"])
def test_train_runs_and_report_show_the_saved_epochs_validation_elbo(ema, tmp_path, capsys,
                                                                     monkeypatch):
    """Early stopping saves the best epoch's weights (the moving average's with --ema): the
    last line of `vaelab train`, `vaelab runs` and `vaelab report` give that epoch's
    validation ELBO, labelled with it, not the last epoch's."""
    from html import unescape

    import numpy as np
    from safetensors.torch import load_file

    from vaelab.fit import train as train_

    real, validated = train_._Trainer.validate, {}

    def validate(self):          # epochs 1-3 validate at -10, -5, -7: the best is not the last
        _, rate, distortion = real(self)
        validated[self.state.epoch + 1] = {k: v.clone() for k, v in self._eval_weights().items()}
        return [-10.0, -5.0, -7.0][self.state.epoch], rate, distortion

    monkeypatch.setattr(train_._Trainer, "validate", validate)
    np.save(tmp_path / "d.npy", np.random.default_rng(0).random((80, 6)).astype(np.float32))
    run = tmp_path / "runs" / "r"
    out = _main(capsys, "train", "--data", tmp_path / "d.npy", "--out", run, "--epochs", "3",
                "--early-stopping", "5", "--hidden", "4", "--latent-dim", "2", "--batch-size",
                "20", "--val-fraction", "0.25", *ema)
    line = "best val ELBO -5.00 at epoch 2 (saved); last epoch 3: -7.00"
    assert f"training done after epoch 3: {line}\n" in out
    saved = {k: v for k, v in load_file(run / "model.safetensors").items()
             if not k.startswith("inference.")}
    for epoch, same in ((2, True), (3, False)):
        assert all(torch.equal(v, validated[epoch][f"model.{k}"])
                   for k, v in saved.items()) is same, epoch
    row = _main(capsys, "runs", tmp_path / "runs").splitlines()[2]
    assert "-5.00 (epoch 2, best)" in row and "-7.00" not in row
    _main(capsys, "report", run)
    assert line in unescape((run / "report.html").read_text())
