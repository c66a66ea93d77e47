"""The search space of ``vaelab tune``: what is searched, over which values, derived from the
catalogue.

Role in vaelab: a space is a dict of :class:`Param` (a float or integer range, a list of
choices, or a fixed value) keyed by where the value goes in a run's config:

* a config field (``latent_dim``, ``lr``, ``num_samples``, ``ema_decay``, ``batch_size``…);
* a component choice, by its config field (``family``, ``prior``, ``objective``,
  ``kl_schedule``, ``lr_schedule``; ``vaelab.catalogue.FIELDS``);
* a component's option, ``<field>.<component>.<option>`` (``prior.vamp.components``), sampled
  only in trials that chose that component (a conditional parameter of TPE); a list option
  (an MLP's ``hidden`` sizes) is two parameters, ``….layers`` and ``….units``.

:func:`default_space` derives the components, their options and each option's range from
``vaelab.catalogue`` (the option's check and default; :data:`RANGES` narrows the few where
that rule gives a poor range), so a component added to the catalogue is searched without
editing this module, and no second list of option names exists. A space file
(:func:`load_space`, TOML or JSON) overrides or fixes entries by the same names; an unknown
name is one line suggesting the nearest known one.

What is never searched: the data, their split (``seed``, ``val_fraction``) and the test set —
the trials are compared on the same validation rows — and a likelihood whose log p(x) means
something else than the others' (:func:`check_likelihoods`).
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from vaelab import catalogue
from vaelab.config import ModelConfig, TrainConfig

#: The component kinds a tune searches (the likelihood is fixed by the data's kind, the
#: optimizer has one choice, estimators and scores measure rather than train).
SEARCHED_KINDS = ("network", "family", "prior", "objective", "kl-schedule", "lr-schedule")
#: Components left out of the default choices: ``conv`` needs images and many CPU hours; a
#: space file may still choose it. (Components that need the user's own values, such as a
#: factory of their networks, are left out by :func:`needs_user_values`.)
NOT_BY_DEFAULT = {"network": ("conv",)}
#: Ranges where the catalogue's generic rule (see :func:`option_params`) is a poor choice.
#: A test pins each key to an option of the catalogue.
RANGES: dict[str, tuple[float, float]] = {
    "lr_schedule.exponential.decay": (0.8, 1.0),    # 0.5 per epoch stops learning in 10
    "objective.elbo.free_bits": (0.0, 0.5),          # more leaves most units unused
    "kl_schedule.linear.warmup_epochs": (0.5, 20.0),
}
#: Config fields that fix what the trials are compared on: never searched nor overridden.
#: (The likelihood is a component: see :data:`TABLE_LIKELIHOODS` and :func:`check_likelihoods`.)
FIXED_FIELDS = ("data", "seed", "val_fraction", "limit", "classes", "perturb_fraction",
                "binarize", "data_dim", "image_shape", "data_kind", "missing",
                "missing_model", "device", "epochs")
#: The likelihoods searched for real-valued tables. Each is a density of the same
#: standardized values (the same Jacobian back to the raw ones), so their log p(x) and ELBOs
#: rank on one scale; a heavy-tailed Student-t (its degrees of freedom learned per column)
#: often fits skewed columns with outliers, and the Gaussian's scale per example (from the
#: network) or per column (learned) is a capacity choice that matters on a few hundred rows.
#: Likelihoods of other meanings (a probability of binarized values, a score) are never mixed.
TABLE_LIKELIHOODS = ("gaussian", "student-t")


@dataclass(frozen=True)
class Param:
    """One searched value.

    Attributes:
        name: where it goes (see the module doc).
        kind: "float", "int", "choice" or "fixed".
        low, high: the range of a float or int (inclusive).
        log: sample the range on a log scale.
        choices: the values of a "choice"; the value of a "fixed" is ``choices[0]``.
    """

    name: str
    kind: str
    low: float | None = None
    high: float | None = None
    log: bool = False
    choices: tuple = ()

    def suggest(self, trial: Any) -> Any:
        """This parameter's value in an Optuna ``trial`` (fixed: the value, not recorded)."""
        if self.kind == "fixed":
            return self.choices[0]
        if self.kind == "choice":
            return trial.suggest_categorical(self.name, list(self.choices))
        if self.kind == "int":
            return trial.suggest_int(self.name, int(self.low or 0), int(self.high or 0),
                                     log=self.log)
        return trial.suggest_float(self.name, float(self.low or 0), float(self.high or 0),
                                   log=self.log)

    def describe(self) -> str:
        """'[1e-4, 3e-3] log', "one of 'elbo', 'iwae'", '= 128'."""
        if self.kind == "fixed":
            return f"= {self.choices[0]!r}"
        if self.kind == "choice":
            return "one of " + ", ".join(map(repr, self.choices))
        return f"[{self.low:g}, {self.high:g}]" + (" log" if self.log else "")


def _range(name: str, low: float, high: float, integer: bool) -> Param:
    log = low > 0 and high / low >= 8
    return Param(name, "int" if integer else "float", low, high, log)


def option_params(field: str, component: str, option: catalogue.Option) -> list[Param]:
    """The parameters of one component option, by its check and default (the generic rule):

    * a choice or a bool → all its values;
    * an integer with default d → [lower bound, 4d];
    * a number > 0 with default d → [d/10, 10d], log scale;
    * a number in [0, 1) or (0, 1] with default d → [d/2, 1);
    * a list of sizes with default s → ``.layers`` in [1, len(s) + 1] and ``.units`` (every
      layer the same) in [min(s)/16, max(s)], log scale;
    * anything else (no default, free values, Adam's betas) → not searched.

    :data:`RANGES` overrides the range of a number.
    """
    name, d = f"{field}.{component}.{option.name}", option.default
    if option.check == "choice":
        return [Param(name, "choice", choices=option.choices)]
    if option.check == "bool":
        return [Param(name, "choice", choices=(False, True))]
    if d is None or option.check in ("any", "betas"):
        return []
    if option.check in ("sizes", "ints>=1"):
        sizes: tuple[int, ...] = tuple(cast(Iterable[int], d)) or (64,)
        return [Param(name + ".layers", "int", 1, len(sizes) + 1),
                _range(name + ".units", max(1, min(sizes) // 16), max(sizes), True)]
    value = float(cast(float, d))
    if name in RANGES:
        low, high = RANGES[name]
    elif option.check in ("int>=1", "int>=0"):
        low, high = (1 if option.check == "int>=1" else 0), max(2, 4 * int(value))
    elif option.check == "float>0":
        low, high = value / 10, value * 10
    elif option.check in ("fraction", "unit"):
        low, high = value / 2, 1.0 if option.check == "unit" else 0.99
    else:                                 # float>=0 with default 0: a small range above it
        low, high = value, max(1.0, 10 * value)
    return [_range(name, low, high, option.check.startswith("int"))]


def needs_user_values(entry: catalogue.Entry) -> bool:
    """Whether a component has an option only its user can fill in (free values with no
    default, e.g. the import path of their own networks): no search can choose it."""
    return any(o.check == "any" and o.default is None for o in entry.options)


def component_params(kind: str, choices: tuple[str, ...] | None = None) -> list[Param]:
    """The choice of a ``kind`` component (default: every catalogue entry but those in
    :data:`NOT_BY_DEFAULT` or that :func:`needs_user_values`) and the parameters of each
    chosen one's options."""
    field = catalogue.FIELDS[kind]
    if choices is None:
        choices = tuple(e.name for e in catalogue.entries(kind)
                        if e.name not in NOT_BY_DEFAULT.get(kind, ())
                        and not needs_user_values(e))
    params = [Param(field, "choice", choices=choices) if len(choices) > 1
              else Param(field, "fixed", choices=choices)]
    for name in choices:
        for option in catalogue.get(kind, name).options:
            params += option_params(field, name, option)
    return params


def default_space(data_kind: str, data_dim: int, rows: int | None = None) -> dict[str, Param]:
    """The space searched when no space file says otherwise, for data of ``data_kind``
    (``vaelab.data.DATA_KINDS``) with ``data_dim`` values per example and ``rows`` training
    rows (None: not known).

    The latent size is searched up to the data's dimension (a larger one only adds
    unused units). The likelihood follows the data's kind (:func:`likelihood_for`); only for
    real-valued tables is it searched, among :data:`TABLE_LIKELIHOODS` (densities of the same
    values, so comparable). Tables also search:

    * the batch size, from 8 to 256 (at most the rows): a table of a few hundred rows is one
      or a few steps of the default batch of 128 per epoch, so at a fixed number of epochs the
      batch size decides how many steps a trial takes (images, tens of thousands of rows,
      take hundreds of steps per epoch at any batch size: there it is a speed choice);
    * Adam's learning rate up to 10⁻² (images: 3·10⁻³): small networks on few rows take, and
      with few steps need, larger steps.
    """
    top = min(64, max(2, data_dim))
    table = data_kind == "continuous"
    params = [Param("latent_dim", "int", 2, top, log=top >= 16),
              Param("lr", "float", 1e-4, 1e-2 if table else 3e-3, log=True),
              Param("num_samples", "int", 1, 8, log=True),
              Param("ema_decay", "choice", choices=(None, 0.99, 0.999))]
    if table:
        high = 256 if rows is None else max(8, min(256, rows))
        params.append(Param("batch_size", "int", 8, high, log=True))
        params += component_params("likelihood", TABLE_LIKELIHOODS)
    for kind in SEARCHED_KINDS:
        params += component_params(kind)
    return {p.name: p for p in params}


def check_likelihoods(space: dict[str, Param], data_kind: str) -> None:
    """Refuse a space whose trials would use likelihoods of different meanings: a searched
    likelihood (more than one choice) must be real-valued data's and among
    :data:`TABLE_LIKELIHOODS`. ValueError in one line."""
    param = space.get("likelihood")
    if param is None or param.kind != "choice" or len(param.choices) < 2:
        return
    if data_kind != "continuous" or not set(param.choices) <= set(TABLE_LIKELIHOODS):
        raise ValueError(
            f"--space: likelihood: trials are ranked by log p(x), which must mean the same in "
            f"each; expected choices among {', '.join(map(repr, TABLE_LIKELIHOODS))} for a "
            f"real-valued table, got {list(param.choices)!r} for {data_kind} data")


def likelihood_for(data_kind: str) -> dict:
    """The likelihood and binarization each trial uses for data of ``data_kind``: binary and
    [0, 1] data (images) the Bernoulli with dynamic binarization, as ``vaelab train`` by
    default; real-valued tables a Gaussian on the values as they are (standardized)."""
    if data_kind == "continuous":
        return {"likelihood": "gaussian", "binarize": "none"}
    return {"likelihood": "bernoulli", "binarize": "dynamic"}


# --------------------------------------------------------------------------- a config


def sample(trial: Any, space: dict[str, Param]) -> dict:
    """The config settings of one trial: bare config keys (``vaelab.config.normalize``),
    each component with its ``<field>_options``; only the chosen components' options are
    sampled (conditional parameters)."""
    settings: dict[str, Any] = {}
    fields = {catalogue.FIELDS[k]: k for k in (*SEARCHED_KINDS, "likelihood")}
    for name, param in space.items():
        if "." in name:
            continue
        value = param.suggest(trial)
        settings[name] = value
        if name in fields:
            settings[f"{name}_options"] = _options(trial, space, name, value)
    return settings


def _options(trial: Any, space: dict[str, Param], field: str, component: str) -> dict:
    options: dict[str, Any] = {}
    sizes: dict[str, dict[str, int]] = {}
    prefix = f"{field}.{component}."
    for name, param in space.items():
        if name.startswith(prefix):
            option, _, part = name[len(prefix):].partition(".")
            value = param.suggest(trial)
            if part:                    # a list of sizes: n layers of the same width
                sizes.setdefault(option, {})[part] = value
            else:
                options[option] = value
    for option, parts in sizes.items():
        options[option] = [parts.get("units", 64)] * parts.get("layers", 1)
    return options


# --------------------------------------------------------------------------- feasibility

#: Combinations :func:`check_combinations` builds at most (a config each, ~4 ms: ~2 s).
PROBES = 500


def probe_values(param: Param) -> list:
    """The values of ``param`` that :func:`check_combinations` tries: every choice; a range's
    ends and middle (geometric on a log scale), every integer of a short range."""
    if param.kind in ("choice", "fixed"):
        return list(param.choices)
    low, high = param.low or 0, param.high or 0
    if param.kind == "int" and high - low <= 4:
        return list(range(int(low), int(high) + 1))
    middle = math.sqrt(low * high) if param.log else (low + high) / 2
    middle = round(middle) if param.kind == "int" else middle
    return list(dict.fromkeys((low, middle, high)))


class _Probe:
    """A trial that answers every ``suggest_*`` from a given assignment of values."""

    def __init__(self, values: dict[str, Any]) -> None:
        self.values = values

    def suggest_categorical(self, name: str, _choices: list) -> Any:
        return self.values[name]

    def suggest_int(self, name: str, *_args: Any, **_kwargs: Any) -> Any:
        return self.values[name]

    suggest_float = suggest_int


def check_combinations(space: dict[str, Param], base: dict, epochs: int, where: str) -> None:
    """Refuse, before any trial runs, a space none of whose combinations is a valid config
    over ``base``: ValueError in one line naming ``where`` (the space file) and the commonest
    reason. Tried: every combination of :func:`probe_values` when there are at most
    :data:`PROBES`, else that many drawn from them (seeded); one valid is enough to pass."""
    import itertools
    import random

    from vaelab.config import RunConfig, merge

    names = list(space)
    grids = [probe_values(space[n]) for n in names]
    total = math.prod(len(g) for g in grids)
    if total <= PROBES:
        picks: Iterable[tuple] = itertools.product(*grids)
    else:
        rng = random.Random(0)
        picks = (tuple(rng.choice(g) for g in grids) for _ in range(PROBES))
    reasons: dict[str, int] = {}
    for values in picks:
        try:
            settings = sample(_Probe(dict(zip(names, values, strict=True))), space)
            RunConfig.from_dict(merge(base, {**settings, "epochs": epochs}))
            return
        except (TypeError, ValueError) as exc:
            reason = " ".join(str(exc).split())
            reasons[reason] = reasons.get(reason, 0) + 1
    tried = (f"all {total} combinations of its values" if total <= PROBES else
             f"{PROBES} combinations drawn from its values")
    commonest = max(reasons, key=lambda r: reasons[r])
    raise ValueError(f"{where}: every combination it allows is refused as a config ({tried}, "
                     f"ranges at their ends and middle), so every trial would fail: "
                     f"{commonest}")


# --------------------------------------------------------------------------- space files


def known_names() -> list[str]:
    """Every name a space file may use: the searched components' parameters (all components
    of each kind, also those left out by default) and the config fields not in
    :data:`FIXED_FIELDS`."""
    names = {p.name for kind in (*SEARCHED_KINDS, "likelihood")
             for p in component_params(kind, catalogue.names(kind))}
    for cls in (ModelConfig, TrainConfig):
        names |= {f.name for f in dataclasses.fields(cls)
                  if f.name not in FIXED_FIELDS and not f.name.endswith("_options")}
    return sorted(names)


def load_space(path: str | Path, base: dict[str, Param]) -> dict[str, Param]:
    """``base`` with the entries of a space file (TOML or JSON) replacing or adding to it.

    Each entry is ``name = {low = …, high = …, log = true}`` (a float range, or an integer
    range when both ends are integers), ``name = {choices = […]}``, or a plain value (fixed).
    Raises ValueError naming the file and the entry: an unknown name (with the nearest known
    one), an empty range, a component or option value the catalogue refuses.
    """
    path = Path(path)
    where = f"--space {str(path)!r}"
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ValueError(f"{where}: cannot read it: {exc.strerror or exc}") from None
    try:
        if path.suffix.lower() == ".json":
            entries = json.loads(text)
        elif path.suffix.lower() == ".toml":
            entries = _toml(text)
        else:
            raise ValueError(f"expected a .toml or .json file, got {path.suffix or 'no suffix'}")
    except ValueError as exc:
        raise ValueError(f"{where}: {exc}") from None
    if not isinstance(entries, dict):
        raise ValueError(f"{where}: expected a table of search entries, got "
                         f"{type(entries).__name__}")
    space = dict(base)
    for name, spec in entries.items():
        space[name] = parse_entry(name, spec, where)
    return space


def parse_entry(name: str, spec: object, where: str = "space") -> Param:
    """One space-file entry → a :class:`Param`, checked against the catalogue."""
    known = known_names()
    if name not in known:
        near = difflib.get_close_matches(name, known, n=1)
        hint = f"; did you mean {near[0]!r}?" if near else (
            "; expected a config field such as 'lr' or '<field>.<component>.<option>' such as "
            "'prior.vamp.components'")
        raise ValueError(f"{where}: unknown option {name!r}{hint}")
    if not isinstance(spec, dict):
        param = Param(name, "fixed", choices=(spec,))
    elif set(spec) == {"choices"} and isinstance(spec["choices"], list) and spec["choices"]:
        param = Param(name, "choice", choices=tuple(spec["choices"]))
    elif {"low", "high"} <= set(spec) <= {"low", "high", "log"}:
        param = _range_entry(name, spec, where)
    else:
        raise ValueError(f"{where}: {name}: expected {{low = …, high = …[, log = true]}}, "
                         f"{{choices = […]}} or a value, got {spec!r}")
    for value in _values(param):
        _check_value(name, value, where)
    return param


def _range_entry(name: str, spec: dict, where: str) -> Param:
    low, high, log = spec["low"], spec["high"], spec.get("log", False)
    numbers = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in (low, high))
    if not numbers or not math.isfinite(low) or not math.isfinite(high) or low > high:
        raise ValueError(f"{where}: {name}: expected numbers low <= high, got {low!r}, {high!r}")
    if not isinstance(log, bool) or (log and low <= 0):
        raise ValueError(f"{where}: {name}: log = true needs low > 0 (and log true or false), "
                         f"got low = {low!r}, log = {log!r}")
    integer = isinstance(low, int) and isinstance(high, int)
    return Param(name, "int" if integer else "float", low, high, log)


def _values(param: Param) -> list:
    if param.kind in ("choice", "fixed"):
        return list(param.choices)
    return [param.low, param.high]


def _check_value(name: str, value: object, where: str) -> None:
    """A component name, or a component option's value, as the catalogue accepts it."""
    field, _, rest = name.partition(".")
    kinds = {v: k for k, v in catalogue.FIELDS.items()}
    if field not in kinds or name.endswith((".layers", ".units")):
        return
    try:
        if not rest:
            catalogue.get(kinds[field], value, name)
            return
        component, _, option = rest.partition(".")
        catalogue.get(kinds[field], component).option(option).validate(value, name)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{where}: {exc}") from None


def _toml(text: str) -> dict:
    try:
        import tomllib
    except ModuleNotFoundError:  # Python < 3.11
        import tomli as tomllib
    return tomllib.loads(text)
