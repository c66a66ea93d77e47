"""The catalogue (vaelab.catalogue) is the one description of every component.

Guards: every entry resolves to the class at its home, and that class builds from exactly the
declared options (same names, same defaults); every class of a registry has its entry; the
facts torch-free code reads equal what the built objects say; the name lists other modules
keep are the catalogue's; importing the catalogue imports no torch. Then the behaviour that
the rest of vaelab derives from it: option checks (field, expected, got), command-line
parsing, the flag-belongs-to-component rule, and building by name.
"""

from __future__ import annotations

import inspect
import subprocess
import sys

import pytest

from vaelab import catalogue
from vaelab.catalogue import CATALOGUE, Option


def _keyword_options(function) -> dict[str, object]:
    """{name: default} of the keyword-only parameters of ``function``."""
    return {p.name: p.default for p in inspect.signature(function).parameters.values()
            if p.kind is inspect.Parameter.KEYWORD_ONLY}


@pytest.mark.parametrize("entry", catalogue.entries(), ids=lambda e: f"{e.kind}:{e.name}")
def test_every_entry_resolves_to_a_class_taking_exactly_its_options(entry):
    home = entry.resolve()
    declared = entry.defaults()
    if hasattr(home, "from_options"):
        assert _keyword_options(home.from_options) == declared
    else:
        # A function (scores) or torch's optimizer: every declared option is one of its
        # keyword arguments.
        params = inspect.signature(home).parameters
        assert set(declared) <= set(params), f"{entry.home} lacks {set(declared) - set(params)}"


def test_the_strict_kinds_all_build_from_their_options():
    """The kinds whose classes were written for the catalogue all have from_options."""
    for kind in ("likelihood", "network", "family", "prior", "objective", "kl-schedule",
                 "lr-schedule", "estimator"):
        for entry in catalogue.entries(kind):
            assert hasattr(entry.resolve(), "from_options"), entry.home


def test_every_class_of_a_registry_has_its_entry():
    from vaelab.model import families, likelihoods, priors

    for kind, registry in (("family", families.FAMILIES), ("prior", priors.PRIORS),
                           ("likelihood", likelihoods.LIKELIHOODS)):
        homes = {e.resolve() for e in catalogue.entries(kind)}
        assert set(registry.values()) == homes, kind
        for name, cls in registry.items():   # the registry's key is the class's saved name
            assert catalogue.get(kind, name).resolve() is cls


def test_name_lists_elsewhere_are_the_catalogues():
    from vaelab.fit import kl_schedule
    from vaelab.infer import objectives
    from vaelab.measure import estimators
    from vaelab.use import scores

    assert tuple(objectives.OBJECTIVES) == catalogue.names("objective")
    assert tuple(kl_schedule.KL_SCHEDULES) == catalogue.names("kl-schedule")
    assert tuple(estimators.ESTIMATORS) == catalogue.names("estimator")
    assert tuple(scores.SCORE_NAMES) == catalogue.names("score")


def test_facts_equal_what_the_objects_say():
    """The catalogue's torch-free ``mixture`` fact is the family class's ``is_mixture``."""
    for entry in catalogue.entries("family"):
        assert entry.facts["mixture"] is entry.resolve().is_mixture
    assert [e.name for e in catalogue.entries("family") if e.facts["mixture"]] == ["mixture"]
    for entry in catalogue.entries("objective"):   # DReG's stratified form is not derived
        dreg = getattr(entry.resolve(), "dreg", False)
        assert entry.facts.get("mixture_q", True) is not dreg


def test_importing_the_catalogue_imports_no_torch():
    code = ("import sys, vaelab.catalogue as c; c.entries(); c.flags('prior'); "
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "False"


def test_building_by_name_gives_the_configured_component():
    fam = catalogue.get("family", "mixture").build(3, components=2)
    assert type(fam).__name__ == "MixtureNormal" and fam.components == 2
    assert fam.param_size == 2 * (1 + 2 * 3)
    iaf = catalogue.get("family", "iaf").build(3, flow_steps=5)
    assert iaf.steps == 5 and len(iaf.mades) == 5
    flow = catalogue.get("prior", "flow").build(4)       # the default T = 2
    assert flow.steps == 2
    lik = catalogue.get("likelihood", "gaussian").build(6, "8-bit", scale="learned")
    assert lik.dequantize and lik.scale_mode == "learned" and lik.raw_scale.shape == (6,)
    lik = catalogue.get("likelihood", "discretized-logistic-mixture").build(6, None,
                                                                            components=3)
    assert lik.params_per_dim == 9
    est = catalogue.get("estimator", "bdmc").build(chains=3)
    assert (est.name, est.chains, est.steps, est.draws) == ("bdmc", 3, 100, 3)


def test_an_option_the_component_lacks_is_refused_naming_those_it_has():
    with pytest.raises(ValueError, match=r"family: family 'iaf' has no option 'components'; "
                                         r"expected one of \['flow_steps', 'flow_update'\]"):
        catalogue.get("family", "iaf").build(3, components=2)
    with pytest.raises(ValueError, match="prior 'standard-normal' has no option 'components'; "
                                         "expected none"):
        catalogue.get("prior", "standard_normal").build(3, components=2)
    with pytest.raises(ValueError, match="prior: expected one of 'standard-normal', "
                                         "'learned-normal', 'mog', 'vamp', 'flow', got 'gamma'"):
        catalogue.get("prior", "gamma")


@pytest.mark.parametrize("check, value, error, message", [
    ("int>=1", 0, ValueError, "k: expected an integer >= 1, got 0"),
    ("int>=1", 2.5, ValueError, "k: expected an integer >= 1, got 2.5"),
    ("int>=1", True, TypeError, "k: expected an integer >= 1, got True"),
    ("int>=0", -1, ValueError, "k: expected an integer >= 0, got -1"),
    ("float>0", 0.0, ValueError, "k: expected a finite number > 0, got 0.0"),
    ("float>0", float("inf"), ValueError, "k: expected a finite number > 0, got inf"),
    ("float>=0", "1", TypeError, "k: expected a finite number >= 0, got '1'"),
    ("unit", 1.5, ValueError, r"k: expected a number in \(0, 1\], got 1.5"),
    ("fraction", 1.0, ValueError, r"k: expected a number in \[0, 1\), got 1.0"),
    ("bool", 1, TypeError, "k: expected true or false, got 1"),
    ("ints>=1", (3, 0), ValueError, r"k: expected a non-empty list of integers >= 1, "
                                    r"got \(3, 0\)"),
    ("ints>=1", "32", TypeError, "k: expected a non-empty list of integers >= 1, got '32'"),
    ("betas", (0.9,), ValueError, r"k: expected two numbers in \[0, 1\)"),
])
def test_option_checks_name_the_field_the_expected_and_the_received(check, value, error,
                                                                    message):
    with pytest.raises(error, match=message):
        Option("k", check, 1, "help").validate(value)


def test_option_values_are_normalised():
    assert Option("k", "int>=1", 1, "").validate(3) == 3
    assert Option("k", "float>0", 1.0, "").validate(2) == 2.0
    assert isinstance(Option("k", "float>0", 1.0, "").validate(2), float)
    assert Option("k", "ints>=1", (1,), "").validate([32, 64]) == (32, 64)
    assert Option("k", "sizes", (1,), "").validate([]) == ()     # no hidden layer: linear
    with pytest.raises(ValueError, match="k: expected a non-empty list"):
        Option("k", "ints>=1", (1,), "").validate([])
    assert Option("k", "int>=1", None, "").validate(None) is None
    choice = Option("k", "choice", "a", "", choices=("a", "b"))
    with pytest.raises(ValueError, match="k: expected one of 'a', 'b', got 'c'"):
        choice.validate("c")


def test_command_line_parsing_speaks_the_cli_words():
    option = catalogue.get("family", "mixture").option("components")
    assert option.parse("7") == 7
    with pytest.raises(ValueError, match="expected an integer >= 1, got '0'"):
        option.parse("0")
    with pytest.raises(ValueError, match="expected an integer >= 1, got 'x'"):
        option.parse("x")
    channels = catalogue.get("network", "conv").option("channels")
    assert channels.parse("8,16") == (8, 16)
    with pytest.raises(ValueError, match="such as 512,256, got '8,,'"):
        channels.parse("8,,")


def test_today_s_flags_come_from_the_catalogue():
    assert catalogue.flags("family") == {
        "--q-components": (catalogue.get("family", "mixture").option("components"),
                           ("mixture",)),
        "--q-flow-steps": (catalogue.get("family", "iaf").option("flow_steps"), ("iaf",)),
        "--q-flow-update": (catalogue.get("family", "iaf").option("flow_update"), ("iaf",)),
        **{f"--q-{side}-logvar": (catalogue.get("family", "diagonal-normal").option(
            f"{side}_logvar"), ("diagonal-normal",)) for side in ("min", "max")}}
    prior = catalogue.flags("prior")
    assert prior["--prior-components"][1] == ("mog", "vamp")
    assert prior["--prior-flow-steps"][1] == ("flow",)
    assert catalogue.flags("likelihood")["--likelihood-components"][1] == (
        "discretized-logistic-mixture",)
    assert set(catalogue.flags("estimator")) == {"--proposal", "--k", "--refine-steps",
                                                 "--refine-draws", "--ais-steps", "--chains",
                                                 "--leapfrog"}
    keys = {o.key for e in catalogue.entries() for o in e.options if o.key}
    assert {"q_components", "q_flow_steps", "prior_components", "prior_flow_steps",
            "likelihood_components", "conv_channels"} <= keys


def test_a_flag_must_belong_to_the_chosen_component():
    catalogue.check_flag_owner("prior", "--prior-components", "vamp", "--prior")
    with pytest.raises(ValueError, match="--prior-components: needs --prior mog or --prior "
                                         "vamp, got --prior flow"):
        catalogue.check_flag_owner("prior", "--prior-components", "flow", "--prior")
    with pytest.raises(ValueError, match="--q-flow-steps: needs --family iaf, got --family "
                                         "diagonal-normal"):
        catalogue.check_flag_owner("family", "--q-flow-steps", "diagonal_normal", "--family")


def test_chosen_reads_nested_options_or_the_old_flat_keys():
    class Flat:
        prior, prior_components, prior_flow_steps = "vamp", 50, 3

    class Nested:
        prior, prior_options = "flow", {"flow_steps": 4}

    entry, options = catalogue.chosen(Flat(), "prior")
    assert (entry.name, options) == ("vamp", {"components": 50, "init": "uniform"})
    entry, options = catalogue.chosen(Nested(), "prior")
    assert (entry.name, options) == ("flow", {"flow_steps": 4})

    class Bad:
        prior, prior_options = "mog", {"components": 0}

    with pytest.raises(ValueError, match=r"prior_options.components: expected an integer >= 1, "
                                         r"got 0"):
        catalogue.chosen(Bad(), "prior")


def test_every_kind_has_entries_with_help_and_kebab_case_names():
    for kind in catalogue.KINDS:
        assert CATALOGUE[kind], kind
        for entry in CATALOGUE[kind].values():
            assert entry.help and "_" not in entry.name and entry.name == entry.name.lower()
            for option in entry.options:
                assert option.help and option.check in catalogue.CHECKS
                assert option.validate(option.default) == option.default


def test_the_command_line_choices_and_component_flags_are_the_catalogues():
    """`vaelab train` and `vaelab evaluate` take their component choices and every component
    option's flag from the catalogue (no name list typed twice)."""
    from vaelab import cli

    commands = next(a for a in cli.build_parser()._actions if a.dest == "command").choices
    for command, kinds in (("train", cli.components.MODEL_KINDS + cli.components.TRAIN_KINDS),
                           ("evaluate", ("estimator",))):
        actions = {s: a for a in commands[command]._actions for s in a.option_strings}
        for kind in kinds:
            assert tuple(actions[cli.components.CHOOSER[kind]].choices) == catalogue.names(kind)
            for flag in catalogue.flags(kind):
                assert flag in actions, (command, flag)
