"""KL-weight schedules at hand-computed steps, and the objective options of the config and CLI."""

from __future__ import annotations

import pytest

from vaelab import cli
from vaelab import config as config_
from vaelab.config import RunConfig, TrainConfig
from vaelab.fit import kl_schedule
from vaelab.fit.kl_schedule import kl_weight, kl_weight_for
from vaelab.infer import objectives


def test_names_agree_between_the_config_leaf_and_the_modules():
    assert config_.OBJECTIVES == objectives.OBJECTIVES == cli.train.OBJECTIVE_CHOICES
    assert config_.KL_SCHEDULES == kl_schedule.KL_SCHEDULES == cli.train.KL_SCHEDULE_CHOICES


def test_constant_is_beta_at_every_step():
    assert [kl_weight(t, 10, beta=0.25) for t in (0, 7, 1000)] == [0.25, 0.25, 0.25]


def test_linear_ramps_to_beta_over_the_warmup_epochs():
    # 10 steps an epoch, 2.5 epochs of warm-up = 25 steps, β = 0.5
    got = [kl_weight(t, 10, beta=0.5, schedule="linear", warmup_epochs=2.5)
           for t in (0, 5, 10, 24, 25, 26, 400)]
    assert got == [0.0, 0.1, 0.2, 0.48, 0.5, 0.5, 0.5]


def test_cyclical_matches_fu_et_al_at_hand_computed_steps():
    # 4 epochs × 10 steps = 40 steps, 4 cycles of 10 steps, ratio 0.5: ramps over 5 steps
    def w(t):
        return kl_weight(t, 10, beta=2.0, schedule="cyclical", epochs=4, cycles=4, ratio=0.5)

    assert [w(t) for t in range(11)] == [0.0, 0.4, 0.8, 1.2, 1.6, 2.0, 2.0, 2.0, 2.0, 2.0, 0.0]
    assert [w(t) for t in (30, 32, 35, 39, 40)] == [0.0, 0.8, 2.0, 2.0, 0.0]
    # cycles that do not divide the steps: 3 cycles of 40/3 steps, ratio 1 (never flat)
    got = [kl_weight(t, 10, schedule="cyclical", epochs=4, cycles=3, ratio=1.0)
           for t in (0, 10, 13, 14, 27)]
    assert got == pytest.approx([0.0, 0.75, 0.975, 0.05, 0.025], abs=1e-12)


def test_schedule_errors_name_the_argument():
    with pytest.raises(ValueError, match="kl_warmup_epochs"):
        kl_weight(3, 10, schedule="linear")
    with pytest.raises(ValueError, match="kl_ratio"):
        kl_weight(3, 10, schedule="cyclical", ratio=0.0)
    with pytest.raises(ValueError, match="kl_schedule"):
        kl_weight(3, 10, schedule="sigmoid")


def test_config_kl_warmup_alone_is_the_linear_schedule_with_the_old_values():
    config = TrainConfig(kl_warmup_epochs=2)
    assert config.kl_schedule == "linear"
    assert [kl_weight_for(config, t, 5) for t in (0, 5, 9, 10, 50)] == [0.0, 0.5, 0.9, 1.0, 1.0]
    assert TrainConfig.from_dict(config.to_dict()) == config
    assert kl_weight_for(TrainConfig(), 123, 5) == 1.0


@pytest.mark.parametrize(("options", "field"), [
    ({"kl_schedule": "linear", "kl_warmup_epochs": 0}, "kl_warmup_epochs"),   # 0, typed
    ({"kl_schedule": "cyclical", "kl_warmup_epochs": 1}, "kl_warmup_epochs"),
    ({"free_bits": 0.5, "objective": "iwae"}, "free_bits"),
    ({"kl_ratio": 1.5}, "kl_ratio"), ({"kl_cycles": 0}, "kl_cycles"),
    ({"beta": -1.0}, "beta"), ({"objective": "vimco"}, "objective"),
    ({"free_bits": float("nan")}, "free_bits")])
def test_config_rejects_bad_objective_options_naming_the_field(options, field):
    with pytest.raises((ValueError, TypeError), match=field):
        TrainConfig(**options)


def test_dreg_with_a_mixture_family_is_refused_by_the_run_config():
    model = config_.ModelConfig()
    object.__setattr__(model, "family", "mixture")   # whatever family names exist today
    with pytest.raises(ValueError, match="iwae-dreg"):
        RunConfig(model, TrainConfig(objective="iwae-dreg", num_samples=5))


def test_cli_flags_reach_the_train_config(tmp_path):
    args = cli.build_parser().parse_args(
        ["train", "--objective", "iwae-dreg", "--num-samples", "5", "--beta", "0.5",
         "--kl-schedule", "cyclical", "--kl-cycles", "3", "--kl-ratio", "0.25",
         "--out", str(tmp_path / "run")])
    tc = cli.train._train_config(args, tmp_path / "run").train
    assert (tc.objective, tc.num_samples, tc.beta, tc.kl_schedule, tc.kl_cycles,
            tc.kl_ratio, tc.free_bits) == ("iwae-dreg", 5, 0.5, "cyclical", 3, 0.25, 0.0)
    args = cli.build_parser().parse_args(["train", "--kl-warmup", "3", "--free-bits", "0.1"])
    tc = cli.train._train_config(args, tmp_path / "run").train
    assert (tc.kl_schedule, tc.kl_warmup_epochs, tc.free_bits) == ("linear", 3.0, 0.1)


@pytest.mark.parametrize("argv", [["--kl-ratio", "0"], ["--objective", "dreg"],
                                  ["--free-bits", "-1"], ["--objective", "iwae",
                                                          "--free-bits", "1"]])
def test_cli_rejects_bad_objective_flags_in_one_line(argv, tmp_path, capsys):
    code = cli.main(["train", *argv, "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert code != 0 and err.startswith("vaelab: error:") and err.count("\n") == 1
    assert "Traceback" not in err
    assert not (tmp_path / "run").exists()


def test_warmup_warning_only_when_the_warm_up_outlasts_the_run():
    warmup_warning = kl_schedule.warmup_warning
    assert warmup_warning(TrainConfig(kl_warmup_epochs=100, epochs=400)) is None
    assert warmup_warning(TrainConfig(epochs=1)) is None                       # constant
    line = warmup_warning(TrainConfig(kl_warmup_epochs=100, epochs=1))
    assert line is not None and line.startswith("warning: ") and "\n" not in line
    assert "KL weight 0.01 × β" in line      # 1 / 100 of the way up the ramp
