"""TrainConfig / RunConfig validation, dict round trips, config files and merge()."""

from __future__ import annotations

import json

import pytest

from vaelab.config import (
    ModelConfig,
    RunConfig,
    TrainConfig,
    load_config_file,
    merge,
    normalize,
)


def test_defaults_round_trip_through_json():
    config = RunConfig(ModelConfig(latent_dim=8, hidden=(32, 16)),
                       TrainConfig(epochs=3, betas=(0.8, 0.99), grad_clip=5.0))
    text = json.dumps(config.to_dict(), allow_nan=False)
    assert RunConfig.from_dict(json.loads(text)) == config


def test_dotted_and_bare_keys_are_sorted_into_sections():
    config = RunConfig.from_dict({"latent_dim": 3, "train.epochs": 7, "model": {"hidden": [5]},
                                  "lr": 0.01})
    assert config.model.latent_dim == 3 and config.model.hidden == (5,)
    assert config.train.epochs == 7 and config.train.lr == 0.01


@pytest.mark.parametrize("data, name", [
    ({"epoch": 3}, "epoch"),
    ({"model": {"latent": 3}}, "latent"),
    ({"train": {"learning_rate": 0.1}}, "learning_rate"),
    ({"optim.lr": 0.1}, "optim"),
    ({"model.epochs": 3}, "epochs"),
])
def test_unknown_keys_are_errors_naming_them(data, name):
    with pytest.raises(ValueError, match=name):
        RunConfig.from_dict(data)


@pytest.mark.parametrize("field, value", [
    ("epochs", -1), ("epochs", 0), ("batch_size", 0), ("lr", 0.0), ("lr", float("nan")),
    ("val_fraction", 1.0), ("val_fraction", -0.1), ("limit", 0), ("seed", -1),
    ("kl_warmup_epochs", -1), ("grad_clip", 0), ("early_stopping_patience", -1),
    ("lr_schedule", "linear"), ("lr_decay", 1.5), ("binarize", "yes"), ("num_samples", 0),
    ("inference", "amortised"), ("schedule", "em"), ("phi_steps", -2), ("device", "tpu"),
    ("compile", "always"), ("max_nonfinite_steps", 0), ("betas", (0.9,)),
    ("betas", (0.9, 1.0)), ("refine_lr", -1.0), ("precision", "fp16"),
])
def test_out_of_range_values_name_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        TrainConfig(**{field: value})


@pytest.mark.parametrize("field, value", [("epochs", "3"), ("batch_size", 2.5),
                                          ("epochs", True), ("data", 3)])
def test_wrong_types_are_type_errors(field, value):
    with pytest.raises(TypeError, match=field):
        TrainConfig(**{field: value})


def test_early_stopping_needs_validation():
    with pytest.raises(ValueError, match="early_stopping_patience.*val_fraction"):
        TrainConfig(early_stopping_patience=2, val_fraction=0)
    with pytest.raises(ValueError, match="early_stopping_patience.*per-datapoint"):
        TrainConfig(early_stopping_patience=2, inference="per-datapoint")


def test_model_config_resolves_data_dim_from_the_data():
    config = ModelConfig()
    assert config.data_dim is None
    resolved = config.with_data(784, (1, 28, 28))
    assert resolved.data_dim == 784 and resolved.image_shape == (1, 28, 28)
    with pytest.raises(ValueError, match="data_dim.*784.*10"):
        ModelConfig(data_dim=784).with_data(10, None)


def test_merge_flags_override_file_and_none_means_not_given():
    base = {"model": {"latent_dim": 4}, "train": {"epochs": 3, "lr": 0.1}}
    merged = merge(base, {"epochs": 5, "train.lr": None, "model": {"hidden": [8]}})
    assert merged == {"model": {"latent_dim": 4, "hidden": [8]},
                      "train": {"epochs": 5, "lr": 0.1}}
    assert base["train"]["epochs"] == 3  # not modified in place
    with pytest.raises(ValueError, match="epochz"):
        merge(base, {"epochz": 5})


def test_load_toml_and_json_files(tmp_path):
    toml = tmp_path / "run.toml"
    toml.write_text('epochs = 2\n[model]\nlatent_dim = 5\nhidden = [16]\n'
                    '[train]\nlr = 0.002\nbetas = [0.5, 0.9]\n')
    config = RunConfig.from_dict(load_config_file(toml))
    assert (config.train.epochs, config.train.lr, config.train.betas) == (2, 0.002, (0.5, 0.9))
    assert config.model.hidden == (16,)
    path = tmp_path / "run.json"
    path.write_text(json.dumps({"format": "vaelab-run/1", **config.to_dict()}))
    assert RunConfig.from_dict(load_config_file(path)) == config


@pytest.mark.parametrize("name, text, match", [
    ("bad.toml", "epochs = [", "not valid TOML"),
    ("bad.json", "{", "not valid JSON"),
    ("bad.yaml", "epochs: 3", r"\.toml or \.json"),
    ("keys.toml", "[train]\nepoch = 3\n", "epoch"),
])
def test_bad_config_files_name_the_file(tmp_path, name, text, match):
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(ValueError, match=match) as info:
        load_config_file(path)
    if not name.endswith(".yaml"):
        assert name in str(info.value)


def test_missing_config_file(tmp_path):
    with pytest.raises(ValueError, match="cannot read"):
        load_config_file(tmp_path / "nope.toml")


def test_normalize_rejects_non_dicts():
    with pytest.raises(TypeError, match="config"):
        normalize(["epochs", 3])
    with pytest.raises(TypeError, match="train"):
        normalize({"train": 3})


def test_data_protocol_expands_into_the_published_split():
    from vaelab.config import RunConfig, TrainConfig, merge

    config = RunConfig.from_dict({"data": "binarized-fashion-mnist"})
    assert (config.train.data, config.train.binarize) == ("fashion-mnist", "dynamic")
    assert round(config.train.val_fraction * 60_000) == 10_000
    assert TrainConfig(data="binarized-fashion-mnist").val_fraction == 1 / 6
    with pytest.raises(ValueError, match="val_fraction"):
        RunConfig.from_dict(merge({}, {"train": {"data": "binarized-fashion-mnist",
                                                  "val_fraction": 0.1}}))
    with pytest.raises(ValueError, match="binarize"):
        RunConfig.from_dict({"data": "binarized-fashion-mnist", "binarize": "static"})
    with pytest.raises(ValueError, match=r"val_fraction \(--val-fraction\)"):
        TrainConfig(data="binarized-fashion-mnist", val_fraction=0.1)   # not silently 1/6


def test_data_protocol_of_a_config_file_refuses_a_conflicting_flag(tmp_path):
    """The protocol named in a file is checked against the flags merged over it, as when
    the flag names it: a file's protocol cannot be broken without a word."""
    path = tmp_path / "recipe.toml"
    path.write_text('[train]\ndata = "binarized-fashion-mnist"\n')
    recipe = load_config_file(path)
    for flags, key in (({"val_fraction": 0.1}, "val_fraction"), ({"binarize": "static"},
                                                                 "binarize")):
        with pytest.raises(ValueError, match=f"{key} .*'binarized-fashion-mnist'"):
            RunConfig.from_dict(merge(recipe, {"train": flags}))
    agreeing = RunConfig.from_dict(merge(recipe, {"train": {"binarize": "dynamic"}})).train
    assert (agreeing.data, agreeing.val_fraction) == ("fashion-mnist", 1 / 6)
    other = RunConfig.from_dict(merge(recipe, {"train": {"data": "mnist"}})).train
    assert (other.data, other.val_fraction) == ("mnist", 0.05)    # another data set: no protocol


def test_linear_kl_schedule_alone_ramps_over_its_documented_default():
    """--help gives --kl-warmup a default of 1 epoch, and the collapse warning advises
    --kl-schedule linear alone: that must train."""
    from vaelab.catalogue import get

    default = next(o.default for o in get("kl-schedule", "linear").options)
    config = RunConfig.from_dict({"kl_schedule": "linear"}).train
    assert config.kl_schedule_options == {"warmup_epochs": default} and default == 1.0
    with pytest.raises(ValueError, match="kl_warmup_epochs"):
        RunConfig.from_dict({"kl_schedule": "linear", "kl_warmup_epochs": 0})


def test_zero_turns_off_ema_and_early_stopping():
    """0 is the 'off' a flag or a TOML file can write (neither can write None)."""
    recipe = {"train": {"ema_decay": 0.999, "early_stopping_patience": 50}}
    config = RunConfig.from_dict(merge(recipe, {"train": {"ema_decay": 0,
                                                          "early_stopping_patience": 0}}))
    assert (config.train.ema_decay, config.train.early_stopping_patience) == (None, None)
    assert RunConfig.from_dict(config.to_dict()) == config


def test_a_chosen_kl_schedule_replaces_the_files_warm_up():
    """--kl-schedule constant over a file's kl_warmup_epochs is a constant weight (not the
    file's warm-up, nor a clash); --kl-schedule linear keeps the file's warm-up."""
    recipe = {"train": {"kl_warmup_epochs": 100, "free_bits": 0.5}}
    constant = RunConfig.from_dict(merge(recipe, {"train": {"kl_schedule": "constant"}}))
    assert (constant.train.kl_schedule, constant.train.kl_schedule_options) == ("constant", {})
    linear = RunConfig.from_dict(merge(recipe, {"train": {"kl_schedule": "linear"}}))
    assert linear.train.kl_schedule_options == {"warmup_epochs": 100.0}
    iwae = RunConfig.from_dict(merge(recipe, {"train": {"objective": "iwae",
                                                        "num_samples": 5}}))
    assert iwae.train.objective == "iwae"       # the file's elbo-only free bits dropped


def test_likelihood_options_are_checked_against_the_catalogue_and_round_trip():
    config = ModelConfig(likelihood="gaussian", likelihood_options={"scale": "learned"})
    assert config.likelihood_options == {"scale": "learned", "min_scale": 1e-3}   # filled in
    assert ModelConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    with pytest.raises(ValueError, match="likelihood_options: likelihood 'bernoulli' has no "
                                         "option 'scale'; expected none"):
        ModelConfig(likelihood="bernoulli", likelihood_options={"scale": "learned"})
    with pytest.raises(ValueError, match=r"likelihood_options.scale: expected one of 'network', "
                                         r"'learned', 'fixed', got 'free'"):
        ModelConfig(likelihood="gaussian", likelihood_options={"scale": "free"})
    old = ModelConfig(likelihood="gaussian").to_dict()
    del old["likelihood_options"]             # a run saved before options were nested
    assert ModelConfig.from_dict(old).likelihood_options == {"scale": "network",
                                                             "min_scale": 1e-3}


#: model section of a config.json written before components kept their own options
OLD_MODEL = {"data_dim": 784, "latent_dim": 20, "hidden": [512, 256], "activation": "relu",
             "likelihood": "bernoulli", "gaussian_scale": "network", "min_scale": 0.001,
             "prior": "vamp", "family": "iaf", "q_components": 4, "q_flow_steps": 3,
             "prior_components": 50, "prior_flow_steps": 2, "image_shape": [1, 28, 28],
             "net": "mlp", "conv_channels": [32, 64], "likelihood_components": 5,
             "data_kind": "binary", "hierarchy": "bottom-up", "missing": "none",
             "missing_model": "none"}


def test_an_old_flat_config_json_loads_into_each_components_options(tmp_path):
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"format": "vaelab-run/1", "model": OLD_MODEL,
                                "train": {"epochs": 2}}))
    model = RunConfig.from_dict(load_config_file(path)).model
    assert (model.family, model.family_options) == ("iaf", {"flow_steps": 3,
                                                           "flow_update": "affine"})
    assert (model.prior, model.prior_options) == ("vamp", {"components": 50,
                                                          "init": "uniform"})
    assert model.likelihood_options == {}
    assert model.net_options == {"hidden": (512, 256), "activation": "relu", "gated": False,
                                 "weight_norm": False}
    # the older names still read as the chosen component's option, or its default
    assert (model.prior_components, model.q_flow_steps, model.hidden) == (50, 3, (512, 256))
    assert model.q_components == 4 and model.conv_channels == (32, 64)
    saved = model.to_dict()
    assert "q_components" not in saved and saved["prior_options"] == {"components": 50,
                                                                      "init": "uniform"}
    assert saved["net_options"]["hidden"] == [512, 256]
    assert ModelConfig.from_dict(json.loads(json.dumps(saved))) == model


def test_component_options_are_checked_against_the_catalogue():
    with pytest.raises(ValueError, match=r"prior_options.components: expected an integer >= "
                                         r"1, got 0"):
        ModelConfig(prior="mog", prior_options={"components": 0})
    with pytest.raises(ValueError, match="family_options: family 'iaf' has no option "
                                         "'components'"):
        ModelConfig(family="iaf", family_options={"components": 3})
    with pytest.raises(ValueError, match="q_components: expected an integer >= 1, got 0"):
        ModelConfig(q_components=0)          # an older key is checked under its own name
    with pytest.raises(ValueError, match="likelihood: expected one of 'bernoulli'.*got 'gamma'"):
        ModelConfig(likelihood="gamma")
    config = ModelConfig(family="full-covariance-normal", prior="mog", q_components=9)
    assert config.family == "full_covariance_normal" and config.family_options == {}
    assert config.prior_options == {"components": 10}       # the default, filled in


def test_flags_that_pick_another_component_drop_the_files_options():
    base = {"model": {"prior": "vamp", "prior_options": {"components": 50}}}
    merged = merge(base, {"model": {"prior": "flow"}})
    assert RunConfig.from_dict(merged).model.prior_options == {"flow_steps": 2}
    kept = merge(base, {"model": {"prior": "vamp", "prior_components": 20}})
    assert RunConfig.from_dict(kept).model.prior_options == {"components": 20,
                                                              "init": "uniform"}


def test_an_old_flat_train_section_loads_into_each_components_options():
    old = {"epochs": 2, "kl_warmup_epochs": 0.0, "kl_schedule": "cyclical", "kl_cycles": 3,
           "kl_ratio": 0.25, "free_bits": 0.0, "objective": "iwae", "lr_schedule": "plateau",
           "lr_decay": 0.95, "lr_patience": 4}
    train = TrainConfig.from_dict(old)
    assert (train.kl_schedule, train.kl_schedule_options) == ("cyclical",
                                                              {"cycles": 3, "ratio": 0.25})
    assert (train.objective, train.objective_options) == ("iwae", {})
    assert (train.lr_schedule, train.lr_schedule_options) == ("plateau", {"patience": 4})
    # older names read as the chosen component's option; 0 for a warm-up or free bits it lacks
    assert (train.kl_cycles, train.kl_warmup_epochs, train.free_bits, train.lr_decay) == (
        3, 0.0, 0.0, 0.95)
    saved = train.to_dict()
    assert "kl_cycles" not in saved and saved["lr_schedule_options"] == {"patience": 4}
    assert TrainConfig.from_dict(json.loads(json.dumps(saved))) == train
    warm = TrainConfig(kl_warmup_epochs=2.5)
    assert warm.kl_schedule_options == {"warmup_epochs": 2.5} and warm.kl_warmup_epochs == 2.5
    with pytest.raises(ValueError, match="kl_schedule_options: kl-schedule 'constant' has no "
                                         "option 'cycles'"):
        TrainConfig(kl_schedule_options={"cycles": 2})
