"""vaelab.tune.space: the default space is the catalogue's, space files are checked.

The oracle for "derived, not a second list" is the catalogue itself: every component of each
searched kind is a choice unless it needs the user's own values or is named in
NOT_BY_DEFAULT, and every option with a checkable value has its parameter.
"""

from __future__ import annotations

import json

import pytest

from vaelab import catalogue
from vaelab.config import RunConfig, merge
from vaelab.tune import space as space_

optuna = pytest.importorskip("optuna")


def test_every_searched_component_and_option_comes_from_the_catalogue():
    space = space_.default_space("binary", 784)
    for kind in space_.SEARCHED_KINDS:
        field = catalogue.FIELDS[kind]
        expected = [e.name for e in catalogue.entries(kind)
                    if e.name not in space_.NOT_BY_DEFAULT.get(kind, ())
                    and not space_.needs_user_values(e)]
        param = space[field]
        assert list(param.choices) == expected
        for name in expected:
            for option in catalogue.get(kind, name).options:
                stem = f"{field}.{name}.{option.name}"
                has = {n for n in space if n == stem or n.startswith(stem + ".")}
                searchable = option.check in ("choice", "bool") or (
                    option.default is not None and option.check not in ("any", "betas"))
                assert bool(has) == searchable, (stem, has)
    for name in space:                     # and nothing else but the config fields it names
        assert name in space_.known_names()


def test_narrowed_ranges_name_options_of_the_catalogue():
    for name, (low, high) in space_.RANGES.items():
        field, component, option = name.split(".")
        kind = {v: k for k, v in catalogue.FIELDS.items()}[field]
        checked = catalogue.get(kind, component).option(option)
        assert checked.validate(high) == high and low < high
        if low > 0 or checked.check != "float>0":
            assert checked.validate(low) == low


def test_the_generic_rule_on_each_check():
    opt = catalogue.Option
    assert space_.option_params("prior", "mog", opt("components", "int>=1", 10, ""))[0] == \
        space_.Param("prior.mog.components", "int", 1, 40, log=True)
    lr = space_.option_params("x", "y", opt("rate", "float>0", 0.5, ""))[0]
    assert (lr.low, lr.high, lr.log) == (0.05, 5.0, True)
    unit = space_.option_params("x", "y", opt("ratio", "unit", 0.5, ""))[0]
    assert (unit.low, unit.high) == (0.25, 1.0)
    layers, units = space_.option_params("net", "mlp", opt("hidden", "sizes", (512, 256), ""))
    assert (layers.low, layers.high, units.low, units.high) == (1, 3, 16, 512)
    assert space_.option_params("x", "y", opt("factory", "any", None, "")) == []
    assert space_.option_params("x", "y", opt("df", "float>0", None, "")) == []


def test_a_trial_samples_only_the_chosen_components_options():
    space = space_.default_space("binary", 784)
    params = {"latent_dim": 8, "lr": 1e-3, "num_samples": 2, "ema_decay": None,
              "net.mlp.hidden.layers": 2, "net.mlp.hidden.units": 64,
              "net.mlp.activation": "tanh", "net.mlp.gated": True,
              "family": "mixture", "family.mixture.components": 3,
              "prior": "vamp", "prior.vamp.components": 7, "objective": "iwae",
              "kl_schedule": "linear", "kl_schedule.linear.warmup_epochs": 2.0,
              "lr_schedule": "constant"}
    for name, param in space.items():      # options the catalogue may add, at their first value
        if name not in params and "." in name and param.kind != "fixed":
            params[name] = param.choices[0] if param.choices else param.low
    settings = space_.sample(optuna.trial.FixedTrial(params), space)
    assert settings["family_options"] == {"components": 3}
    assert settings["prior_options"]["components"] == 7
    assert settings["net_options"]["hidden"] == [64, 64]
    assert settings["objective_options"] == {}          # iwae has no options: free bits unused
    assert settings["kl_schedule_options"] == {"warmup_epochs": 2.0}
    config = RunConfig.from_dict(merge({}, settings))
    assert config.model.family == "mixture" and config.model.prior == "vamp"
    assert config.model.net_options["hidden"] == (64, 64) and config.train.num_samples == 2


def test_random_points_of_the_space_are_configs_or_one_line_refusals():
    space = space_.default_space("continuous", 10)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    valid = 0
    for _ in range(40):
        trial = study.ask()
        settings = space_.sample(trial, space)
        try:
            RunConfig.from_dict(merge({"likelihood": "gaussian", "binarize": "none"}, settings))
            valid += 1
        except ValueError as exc:     # e.g. iwae-dreg with a mixture q: said in one line
            assert "\n" not in str(exc)
        study.tell(trial, 0.0)
    assert valid >= 30


def test_a_space_file_overrides_fixes_and_checks(tmp_path):
    base = space_.default_space("binary", 784)
    path = tmp_path / "space.toml"
    path.write_text('latent_dim = {low = 4, high = 32, log = true}\nbatch_size = 64\n'
                    'prior = {choices = ["vamp", "mog"]}\n'
                    '"prior.vamp.components" = {low = 10, high = 100}\n'
                    'lr = {low = 1e-4, high = 1e-2, log = true}\n')
    space = space_.load_space(path, base)
    assert space["latent_dim"] == space_.Param("latent_dim", "int", 4, 32, log=True)
    assert space["batch_size"] == space_.Param("batch_size", "fixed", choices=(64,))
    assert space["prior"].choices == ("vamp", "mog")
    assert space["lr"].kind == "float" and space["family"] == base["family"]


@pytest.mark.parametrize("text, message", [
    ('famly = {choices = ["iaf"]}', "unknown option 'famly'; did you mean 'family'?"),
    ('zzz = 3', "unknown option 'zzz'; expected a config field"),
    ('prior = {choices = ["vamp", "gauss"]}', "prior: expected one of"),
    ('"prior.vamp.components" = {low = 0, high = 5}', "prior.vamp.components: expected an "
                                                       "integer >= 1, got 0"),
    ('lr = {low = 1e-2, high = 1e-4}', "lr: expected numbers low <= high"),
    ('lr = {low = 0, high = 1, log = true}', "lr: log = true needs low > 0"),
    ('lr = {lo = 1, hi = 2}', "lr: expected {low = …, high = …"),
    ('seed = 3', "unknown option 'seed'"),          # the split is never searched
])
def test_a_bad_space_file_is_one_line_naming_it(tmp_path, text, message):
    path = tmp_path / "space.toml"
    path.write_text(text + "\n")
    with pytest.raises(ValueError) as info:
        space_.load_space(path, space_.default_space("binary", 784))
    assert message in str(info.value) and str(path) in str(info.value)
    assert "\n" not in str(info.value)


def test_json_space_files_and_unreadable_ones(tmp_path):
    path = tmp_path / "space.json"
    path.write_text(json.dumps({"ema_decay": None, "objective": {"choices": ["elbo"]}}))
    space = space_.load_space(path, {})
    assert space["ema_decay"].choices == (None,) and space["objective"].choices == ("elbo",)
    with pytest.raises(ValueError, match="cannot read it"):
        space_.load_space(tmp_path / "missing.toml", {})
    (tmp_path / "bad.toml").write_text("lr = [")
    with pytest.raises(ValueError, match="bad.toml"):
        space_.load_space(tmp_path / "bad.toml", {})
    (tmp_path / "space.yaml").write_text("lr: 1")
    with pytest.raises(ValueError, match="expected a .toml or .json file"):
        space_.load_space(tmp_path / "space.yaml", {})


def test_tables_search_the_batch_size_and_comparable_likelihoods():
    table = space_.default_space("continuous", 13, rows=142)
    assert table["batch_size"] == space_.Param("batch_size", "int", 8, 142, log=True)
    assert table["lr"].high == 1e-2
    assert table["likelihood"].choices == space_.TABLE_LIKELIHOODS
    gaussian = catalogue.get("likelihood", "gaussian").option("scale")
    assert table["likelihood.gaussian.scale"].choices == gaussian.choices
    assert "likelihood.student-t.df" not in table        # no default: learned per column
    images = space_.default_space("binary", 784)
    assert "likelihood" not in images and "batch_size" not in images
    assert images["lr"].high == 3e-3
    params = {}
    for name, param in table.items():
        if param.kind != "fixed":
            params[name] = param.choices[0] if param.choices else param.low
    params.update({"likelihood": "student-t", "likelihood.student-t.min_scale": 0.01,
                   "batch_size": 16})
    settings = space_.sample(optuna.trial.FixedTrial(params), table)
    assert settings["likelihood_options"] == {"min_scale": 0.01}
    config = RunConfig.from_dict(merge({"binarize": "none"}, settings))
    assert catalogue.get("likelihood", config.model.likelihood).name == "student-t"
    assert config.model.likelihood_options["min_scale"] == 0.01
    assert config.train.batch_size == 16


@pytest.mark.parametrize("kind, choices, refused", [
    ("continuous", ["gaussian", "student-t"], False),
    ("continuous", ["gaussian"], False),                 # one likelihood: all trials share it
    ("continuous", ["gaussian", "bernoulli"], True),     # a density and a probability
    ("binary", ["bernoulli", "continuous-bernoulli"], True),
    ("binary", ["gaussian", "student-t"], True),
])
def test_a_space_mixing_likelihoods_of_different_meanings_is_refused(kind, choices, refused):
    space = {"likelihood": space_.Param("likelihood", "choice", choices=tuple(choices))}
    if not refused:
        space_.check_likelihoods(space, kind)
        return
    with pytest.raises(ValueError) as info:
        space_.check_likelihoods(space, kind)
    assert "likelihood" in str(info.value) and "\n" not in str(info.value)


def _base() -> dict:
    return merge({"model": {}, "train": {}}, {"likelihood": "bernoulli", "binarize": "dynamic"})


def test_a_space_with_no_valid_combination_is_refused_in_one_line():
    space = space_.default_space("binary", 784)
    space["family"] = space_.Param("family", "fixed", choices=("mixture",))
    space["objective"] = space_.Param("objective", "choice", choices=("iwae-dreg",))
    with pytest.raises(ValueError) as info:
        space_.check_combinations(space, _base(), 2, "--space 's.toml'")
    line = str(info.value)
    assert line.startswith("--space 's.toml': every combination it allows is refused as a "
                           "config (500 combinations drawn") and "\n" not in line
    assert "'iwae-dreg' is not available with family 'mixture'" in line
    # the oracle: the config itself refuses that pair, whatever else a trial samples
    with pytest.raises(ValueError, match="iwae-dreg"):
        RunConfig.from_dict(merge(_base(), {"family": "mixture", "objective": "iwae-dreg"}))


def test_one_valid_combination_is_enough_and_small_spaces_are_tried_whole():
    space = space_.default_space("binary", 784)
    space["family"] = space_.Param("family", "choice", choices=("mixture", "diagonal-normal"))
    space["objective"] = space_.Param("objective", "fixed", choices=("iwae-dreg",))
    space_.check_combinations(space, _base(), 2, "s")      # diagonal-normal + DReG is valid
    small = {"family": space_.Param("family", "fixed", choices=("mixture",)),
             "objective": space_.Param("objective", "choice", choices=("iwae-dreg",)),
             "lr": space_.Param("lr", "float", 1e-4, 1e-2, log=True),
             "latent_dim": space_.Param("latent_dim", "int", 2, 4)}
    with pytest.raises(ValueError, match=r"all 9 combinations of its values"):
        space_.check_combinations(small, _base(), 2, "s")
    assert space_.probe_values(small["lr"]) == pytest.approx([1e-4, 1e-3, 1e-2])
    assert space_.probe_values(small["latent_dim"]) == [2, 3, 4]
    assert space_.probe_values(space_.Param("n", "int", 1, 64)) == [1, 32, 64]
