"""Frozen configuration dataclasses, validated on construction, and config files.

* :class:`ModelConfig` — the architecture of an MLP VAE;
* :class:`TrainConfig` — data, optimization and run-time options of ``vaelab.fit.train``;
* :class:`RunConfig` — both, as stored in a run directory's ``config.json``;
* :func:`load_config_file` (TOML or JSON) and :func:`merge` (command-line flags over a file).

Every check names the field, what was expected and what was received. Config dicts are plain
JSON-compatible data: ``{"model": {...}, "train": {...}}``.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from numbers import Real
from pathlib import Path
from typing import Any

from vaelab import _checks, _trust, catalogue, condition_spec, config_checks
from vaelab.dataset_names import DATA_PROTOCOLS

DATA_KINDS = ("binary", "8-bit", "unit-interval", "continuous")   # = vaelab.data.DATA_KINDS
#: The components of a model, each stored as its name and its options (``vaelab.catalogue``).
MODEL_KINDS = ("likelihood", "network", "family", "prior")
#: Component names kept in snake_case, the spelling of every run directory so far.
SNAKE_CASE = ("family", "prior")
LIKELIHOOD_NAMES = catalogue.names("likelihood")
NET_NAMES = catalogue.names("network")
PRIOR_NAMES = tuple(name.replace("-", "_") for name in catalogue.names("prior"))
FAMILY_NAMES = tuple(name.replace("-", "_") for name in catalogue.names("family"))


@catalogue.components(MODEL_KINDS)
@dataclass(frozen=True)
class ModelConfig:
    """Architecture of a VAE: x [D] → encoder net → q(z|x); z [L] → decoder net → p(x|z).

    Each component is its name and its options (``vaelab.catalogue``): ``likelihood`` +
    ``likelihood_options`` (e.g. ``{"trials": 16}`` for binomial), ``net`` + ``net_options``
    (mlp: hidden, activation, gated; conv: channels, activation, gated, width; factory: the
    user's own, ``{"factory": "pkg.mod:fn", "args": {...}}``), ``family`` + ``family_options``
    (mixture: components; iaf: flow_steps), ``prior`` + ``prior_options`` (mog, vamp:
    components; flow: flow_steps).
    Names may be kebab-case. The older flat keys (``hidden``, ``q_components``,
    ``prior_components``, …) are accepted and read as the chosen component's option.
    """

    data_dim: int | None = None
    latent_dim: int | tuple[int, ...] = 20
    likelihood: str = "bernoulli"
    likelihood_options: dict = field(default_factory=dict)
    net: str = "mlp"
    net_options: dict = field(default_factory=dict)
    family: str = "diagonal_normal"
    family_options: dict = field(default_factory=dict)
    prior: str = "standard_normal"
    prior_options: dict = field(default_factory=dict)
    image_shape: tuple[int, ...] | None = field(default=None)
    #: The kind of data the model was trained on (recorded from the data: binary, 8-bit,
    #: unit-interval, continuous); decides what its log-likelihood means.
    data_kind: str | None = None
    hierarchy: str = "bottom-up"
    #: Incomplete data: "mask" — NaN marks missing entries (MIWAE, Mattei & Frellsen
    #: 2019); ``missing_model`` "self-masking" adds p(missing | x) (not-MIWAE, Ipsen et al. 2021).
    missing: str = "none"
    missing_model: str = "none"
    #: Per-column standardization of real-valued tables (``--standardize``): "auto" is on for a
    #: Gaussian likelihood on real-valued data; a new run records what was decided ("on" or
    #: "off"); the columns' means and scales are saved with its weights.
    standardize: str = "auto"
    #: Conditional VAE (Sohn et al. 2015): what c is (``vaelab.condition_spec``); None: none.
    condition: dict | None = None

    def __post_init__(self) -> None:
        if self.data_dim is not None:  # None: resolved from the data at train time
            _checks.positive_int("data_dim", self.data_dim)
        object.__setattr__(self, "latent_dim", config_checks.latent_sizes(self.latent_dim))
        object.__setattr__(self, "condition", condition_spec.parse(self.condition))
        _checks.one_of("hierarchy", self.hierarchy, HIERARCHIES)
        catalogue.check_components(self, MODEL_KINDS, SNAKE_CASE)
        if self.net == "factory":      # checked without importing anything (vaelab._trust)
            _trust.check_reference(self.net_options.get("factory"), "net_options.factory")
            if not isinstance(self.net_options.get("args") or {}, dict):
                raise TypeError(f"net_options.args: expected a dict of JSON values, got "
                                f"{type(self.net_options['args']).__name__}")
        if self.image_shape is not None:
            object.__setattr__(self, "image_shape", config_checks.image_shape(self.image_shape))
        if self.data_kind is not None:
            _checks.one_of("data_kind", self.data_kind, DATA_KINDS)
        _checks.one_of("missing", self.missing, ("none", "mask"))
        _checks.one_of("standardize", self.standardize, ("auto", "on", "off"))
        _checks.one_of("missing_model", self.missing_model, ("none", "self-masking"))
        if self.missing_model != "none" and self.missing != "mask":
            raise ValueError(f"missing_model: {self.missing_model!r} needs missing='mask', "
                             f"got missing={self.missing!r}")

    def __getattr__(self, key: str) -> Any:
        """The older flat keys (``hidden``, ``q_components``, …) read as the chosen
        component's option, or its default when the component has none."""
        return catalogue.older_value(self, MODEL_KINDS, key)

    def with_data(self, data_dim: int, image_shape: tuple[int, ...] | None,
                  data_kind: str | None = None) -> ModelConfig:
        """This config with ``data_dim``/``image_shape`` taken from the data.

        Raises ValueError if the config already fixes a different ``data_dim``.
        """
        if self.data_dim is not None and self.data_dim != data_dim:
            raise ValueError(f"data_dim: the model config says {self.data_dim}, but the data "
                             f"have {data_dim} values per example")
        kind = self.data_kind if data_kind is None else data_kind
        return dataclasses.replace(self, data_dim=data_dim, image_shape=image_shape,
                                   data_kind=kind)

    def to_dict(self) -> dict:
        """JSON-serializable dict (tuples become lists, in the options too)."""
        return _lists(dataclasses.asdict(self))

    @classmethod
    def from_dict(cls, data: dict) -> ModelConfig:
        """Inverse of :meth:`to_dict`, which also reads the older flat keys of earlier
        config.json files; unknown keys are an error naming them."""
        data = _known_keys("model", data, cls)
        if isinstance(data.get("latent_dim"), list):
            data["latent_dim"] = tuple(data["latent_dim"])
        return cls(**data)


HIERARCHIES = ("bottom-up", "ladder", "top-down")


def _lists(data: dict) -> dict:
    return {k: list(v) if isinstance(v, tuple) else _lists(v) if isinstance(v, dict) else v
            for k, v in data.items()}


def _older_keys(cls: type) -> set[str]:
    """The older flat keys ``cls`` still accepts (those of its components' options)."""
    kinds = MODEL_KINDS if cls is ModelConfig else TRAIN_KINDS if cls is TrainConfig else ()
    return {key for kind in kinds for key in catalogue.older_keys(kind)}


def _known_keys(section: str, data: object, cls: type) -> dict:
    """A copy of ``data`` after checking it is a dict whose keys are fields of ``cls``."""
    if not isinstance(data, dict):
        raise TypeError(f"{section}: expected a table/dict of settings, got {type(data).__name__}")
    known = {f.name for f in dataclasses.fields(cls)} | _older_keys(cls)
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"{section} config: unknown keys {unknown}; expected a subset of "
                         f"{sorted(known)}")
    return dict(data)


LR_SCHEDULES = catalogue.names("lr-schedule")
#: schedule='alternating' trains q only in its phi_steps; with 0 the encoder never learns.
ALTERNATING_NEEDS_PHI_STEPS = (   # the message says what to pass, not only what is wrong
    "phi_steps (--phi-steps): --schedule alternating needs --phi-steps K >= 1 (K steps on q, "
    "the encoder or the per-datapoint rows, before each step on the decoder; with 0 q is "
    "never trained), got --phi-steps 0")
BINARIZE_MODES = ("dynamic", "static", "none")
INFERENCE_NAMES = ("amortized", "per-datapoint", "semi-amortized")
TRAIN_SCHEDULES = ("joint", "alternating")
DEVICES = ("auto", "cpu", "cuda")
PRECISIONS = ("fp32", "bf16")
#: The same names as ``vaelab.infer.objectives.OBJECTIVES`` and
#: ``vaelab.fit.kl_schedule.KL_SCHEDULES`` (config is a leaf and imports neither).
OBJECTIVES = catalogue.names("objective")
KL_SCHEDULES = catalogue.names("kl-schedule")


#: The components of training, each stored as its name and its options.
TRAIN_KINDS = ("objective", "kl-schedule", "lr-schedule")


def _older_train_keys(values: dict) -> dict:
    """The rules of the older flat keys of training: ``kl_warmup_epochs`` > 0 alone means the
    "linear" schedule (0 means none); a warm-up is refused with "cyclical"; "linear" without
    one ramps over its catalogue default (1 epoch, what ``--help`` says), an explicit 0 is
    refused; ``free_bits`` belongs to objective "elbo" only."""
    warm = values.pop("kl_warmup_epochs", None)
    if warm is not None:
        warm = config_checks.non_negative_float("kl_warmup_epochs", warm)
    schedule = values.get("kl_schedule", "constant")
    nested = values.get("kl_schedule_options") or {}
    if warm and schedule == "constant":
        values["kl_schedule"] = schedule = "linear"      # the older spelling of linear
    if schedule == "linear" and warm == 0 and "warmup_epochs" not in nested:
        raise ValueError("kl_warmup_epochs (--kl-warmup): kl_schedule 'linear' ramps the KL "
                         "weight over that many epochs; expected a number > 0, got 0")
    if schedule == "cyclical" and warm:
        raise ValueError(f"kl_warmup_epochs (--kl-warmup): kl_schedule 'cyclical' sets its "
                         f"own ramps (--kl-cycles, --kl-ratio); expected 0, got {warm}")
    if warm:
        values["kl_warmup_epochs"] = warm
    bits = values.get("free_bits")
    objective = values.get("objective", "elbo")
    if isinstance(bits, Real) and float(bits) > 0 and catalogue.canonical(objective) != "elbo":
        raise ValueError(f"free_bits (--free-bits): applies to objective 'elbo' only; "
                         f"expected 0 with objective {objective!r}, got {bits}")
    return values


@catalogue.components(TRAIN_KINDS, before=_older_train_keys)
@dataclass(frozen=True)
class TrainConfig:
    """Everything about a training run except the architecture.

    Data: ``data`` (a dataset name or a path, see ``vaelab.data.load_dataset``), ``classes``
    (train only on examples with these labels: the one-class protocol), ``limit`` (first N
    training examples, after ``classes``), ``perturb_fraction`` (μ: replace that fraction of
    the values by uniform noise, one seeded draw; the background model of Ren et al. 2019),
    ``val_fraction`` (held out by a seeded split; 0 disables
    validation), ``binarize`` ("dynamic": a fresh Bernoulli draw per visit, "static": one
    seeded draw, "none": the grey levels themselves).

    Components (``vaelab.catalogue``) are each a name and its options: ``objective`` +
    ``objective_options``, ``kl_schedule`` + ``kl_schedule_options``, ``lr_schedule`` +
    ``lr_schedule_options``. The older flat keys (``free_bits``, ``kl_warmup_epochs``,
    ``kl_cycles``, ``kl_ratio``, ``lr_decay``, ``lr_patience``) are accepted and read as the
    chosen component's option (0 for a warm-up or free bits the component does not have).

    Optimization: ``epochs``, ``batch_size``, ``optimizer`` ("adam", "adamax") with
    ``lr``/``betas``, ``grad_clip`` (global norm), ``lr_schedule`` ("constant"; "cosine"
    from lr to 0 over all steps; "exponential": lr × decay^epoch; "plateau": lr × 0.5 after
    every ``patience`` epochs without a better validation ELBO), ``lr_warmup_epochs`` (the
    rate ramps linearly from 0 over that many epochs, on top of any schedule), ``ema_decay``
    (keep an exponential moving average of the weights, ``vaelab.fit.ema``, and validate,
    early-stop, sample and save with it; None or 0: off),
    ``num_samples`` (z samples per example; K for the IWAE objectives),
    ``early_stopping_patience`` (stop after that many epochs without a better validation ELBO;
    keeps the best weights; None or 0: off).

    Objective (``vaelab.infer.objectives.training_terms``, ``vaelab.fit.kl_schedule``):
    ``objective`` ("elbo"; "iwae", Burda et al. 2016; "iwae-dreg", Tucker et al. 2019), the KL
    weight ``beta`` with ``kl_schedule`` ("constant"; "linear": 0 → beta over
    ``kl_warmup_epochs`` epochs, step by step; "cyclical": ``kl_cycles`` cycles over the run,
    each rising 0 → beta over its first ``kl_ratio`` and then flat, Fu et al. 2019), and
    ``free_bits`` (λ nats per latent dimension, objective "elbo" only, Kingma et al. 2016).
    ``kl_warmup_epochs`` > 0 alone means the "linear" schedule (the older spelling). Metrics
    always report the true ELBO (β = 1, no free bits).

    Inference: ``inference`` ("amortized", "per-datapoint", "semi-amortized"), ``schedule``
    ("joint" or "alternating" with ``phi_steps`` φ-steps per θ-step), ``phi_lr`` (φ's own
    learning rate for per-datapoint rows and the alternating schedule; None: ``lr``; per-datapoint
    rows see one update per epoch, so ~5e-2 suits them), ``refine_steps`` /
    ``refine_lr``, ``refine_backprop`` (semi-amortized refinement: K SGD steps on each
    example's ELBO; backprop=True trains the encoder through them, Kim et al. 2018).

    The defaults train the default 784-512-256-20 model on 57,000 Fashion-MNIST images for 15
    epochs of 446 steps: about 2.5 minutes on two otherwise idle CPU cores (9-10 s an epoch,
    validation and checkpoint included).

    Run time: ``seed``, ``device`` ("auto": CUDA when available), ``compile`` ("auto", true,
    false), ``precision`` ("fp32", or "bf16": the training step's forward pass under
    ``torch.autocast`` in bfloat16, weights, Adam and evaluation staying float32),
    ``max_nonfinite_steps`` (consecutive non-finite steps before training stops).
    """

    data: str = "fashion-mnist"
    limit: int | None = None
    classes: tuple[int, ...] | None = None
    perturb_fraction: float = 0.0
    val_fraction: float = 0.05
    epochs: int = 15
    batch_size: int = 128
    lr: float = 1e-3
    betas: tuple[float, float] = (0.9, 0.999)
    #: "adam" or "adamax" (``vaelab.fit.optimizers``); both read ``lr`` and ``betas``.
    optimizer: str = "adam"
    seed: int = 0
    beta: float = 1.0
    objective: str = "elbo"
    objective_options: dict = field(default_factory=dict)
    kl_schedule: str = "constant"
    kl_schedule_options: dict = field(default_factory=dict)
    grad_clip: float | None = None
    early_stopping_patience: int | None = None
    lr_schedule: str = "constant"
    lr_schedule_options: dict = field(default_factory=dict)
    lr_warmup_epochs: float = 0.0
    ema_decay: float | None = None
    binarize: str = "dynamic"
    num_samples: int = 1
    inference: str = "amortized"
    schedule: str = "joint"
    phi_steps: int = 0
    phi_lr: float | None = None
    refine_steps: int = 10
    refine_lr: float = 1e-3
    refine_backprop: bool = False
    device: str = "auto"
    compile: str | bool = "auto"
    precision: str = "fp32"
    max_nonfinite_steps: int = 20
    #: With missing="mask": train without the rows whose every entry is missing (they are
    #: refused otherwise, ``--drop-empty-rows``).
    drop_empty_rows: bool = False
    #: Stream the training rows of a .npy file from disk in shuffled blocks of this many
    #: contiguous rows instead of loading them (``vaelab.data.stream``); None: in memory.
    stream_block: int | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.data, str) or not self.data:
            raise TypeError(f"data: expected a dataset name or a path (a non-empty string), "
                            f"got {self.data!r}")
        if self.data.strip().lower() in DATA_PROTOCOLS:   # fixes its split (see above)
            defaults = {f.name: f.default for f in dataclasses.fields(self)}
            given = {key: getattr(self, key) for key in DATA_PROTOCOLS[self.data.strip().lower()]
                     if key != "data" and getattr(self, key) != defaults[key]}
            for key, value in expand_protocol({"data": self.data, **given}).items():
                object.__setattr__(self, key, value)
        if self.limit is not None:
            _checks.positive_int("limit", self.limit)
        if self.classes is not None:
            object.__setattr__(self, "classes", config_checks.classes(self.classes))
        config_checks.fraction("val_fraction", self.val_fraction)
        config_checks.fraction("perturb_fraction", self.perturb_fraction)
        for name in ("epochs", "batch_size", "num_samples", "max_nonfinite_steps"):
            _checks.positive_int(name, getattr(self, name))
        for name in ("seed", "phi_steps", "refine_steps"):
            _checks.non_negative_int(name, getattr(self, name))
        for name in ("lr", "refine_lr"):
            _checks.positive_float(name, getattr(self, name))
        object.__setattr__(self, "betas", config_checks.betas(self.betas))
        object.__setattr__(self, "optimizer", catalogue.get(
            "optimizer", self.optimizer, "optimizer (--optimizer)").name)
        catalogue.check_components(self, TRAIN_KINDS)
        if self.grad_clip is not None:
            _checks.positive_float("grad_clip", self.grad_clip)
        if self.phi_lr is not None:
            _checks.positive_float("phi_lr", self.phi_lr)
        for name in ("early_stopping_patience", "ema_decay"):
            value = getattr(self, name)
            if isinstance(value, Real) and not isinstance(value, bool) and value == 0:
                object.__setattr__(self, name, None)   # 0 = off: what a file or flag can say
        if self.early_stopping_patience is not None:
            _checks.positive_int("early_stopping_patience", self.early_stopping_patience)
        self._check_choices()
        self._check_objective()

    def _check_objective(self) -> None:
        object.__setattr__(self, "beta", config_checks.non_negative_float("beta", self.beta))

    def _check_choices(self) -> None:
        object.__setattr__(self, "lr_warmup_epochs", config_checks.non_negative_float(
            "lr_warmup_epochs", self.lr_warmup_epochs))
        if self.ema_decay is not None:
            decay = _checks.positive_float("ema_decay", self.ema_decay)
            if decay >= 1:
                raise ValueError(f"ema_decay (--ema): expected a number in (0, 1) such as "
                                 f"0.999, got {decay}")
        if self.lr_schedule == "plateau" and self.val_fraction == 0:
            raise ValueError("lr_schedule (--lr-schedule): 'plateau' watches the validation "
                             "ELBO, but val_fraction (--val-fraction) is 0")
        _checks.one_of("binarize", self.binarize, BINARIZE_MODES)
        _checks.one_of("inference", self.inference, INFERENCE_NAMES)
        _checks.one_of("schedule", self.schedule, TRAIN_SCHEDULES)
        if self.schedule == "alternating" and self.phi_steps == 0:
            raise ValueError(ALTERNATING_NEEDS_PHI_STEPS)
        _checks.one_of("device", self.device, DEVICES)
        _checks.one_of("precision", self.precision, PRECISIONS)
        if self.stream_block is not None:
            _checks.positive_int("stream_block", self.stream_block)
        if not isinstance(self.drop_empty_rows, bool):
            raise TypeError(f"drop_empty_rows: expected true or false, "
                            f"got {self.drop_empty_rows!r}")
        if not isinstance(self.refine_backprop, bool):
            raise TypeError(f"refine_backprop: expected true or false, "
                            f"got {self.refine_backprop!r}")
        if not (self.compile == "auto" or isinstance(self.compile, bool)):
            raise ValueError(f"compile: expected 'auto', true or false, got {self.compile!r}")
        if self.early_stopping_patience is not None and self.val_fraction == 0:
            raise ValueError("early_stopping_patience (--early-stopping): needs a validation "
                             "set, but val_fraction (--val-fraction) is 0")
        if self.early_stopping_patience is not None and self.inference == "per-datapoint":
            raise ValueError("early_stopping_patience: needs a validation ELBO, which "
                             "inference='per-datapoint' does not provide (it trains no "
                             "encoder); expected None")

    def __getattr__(self, key: str) -> Any:
        """The older flat keys (``free_bits``, ``kl_cycles``, …) read as the chosen
        component's option; a warm-up or free bits the component does not have read as 0."""
        return catalogue.older_value(self, TRAIN_KINDS, key,
                                     {"kl_warmup_epochs": 0.0, "free_bits": 0.0})

    def to_dict(self) -> dict:
        """JSON-serializable dict (tuples become lists)."""
        return _lists(dataclasses.asdict(self))

    @classmethod
    def from_dict(cls, data: dict) -> TrainConfig:
        """Inverse of :meth:`to_dict`; unknown keys are an error naming them. A data protocol
        (``DATA_PROTOCOLS``) is expanded here, after every source of settings was merged, so
        a conflicting value is refused whether it came from a file or a flag."""
        data = expand_protocol(_known_keys("train", data, cls))
        if isinstance(data.get("betas"), list):
            data["betas"] = tuple(data["betas"])
        if isinstance(data.get("classes"), list):
            data["classes"] = tuple(data["classes"])
        return cls(**data)




def expand_protocol(train: dict) -> dict:
    """``train`` with a protocol name in ``data`` replaced by the protocol's settings.

    Raises ValueError naming the key when ``train`` also sets one of them differently. The one
    check of a protocol: :meth:`TrainConfig.from_dict` applies it to the merged settings (a
    config file's and the flags'), the constructor to the values it was given.
    """
    preset = DATA_PROTOCOLS.get(str(train.get("data", "")).strip().lower())
    if preset is None:
        return train
    for key, value in preset.items():
        if key != "data" and key in train and train[key] != value:
            flag = "--" + key.replace("_", "-")
            raise ValueError(f"{key} ({flag}): the data protocol {train['data']!r} fixes "
                             f"{key} = {value!r}; expected that value or no {flag}, got "
                             f"{train[key]!r}")
    return {**train, **preset}


#: Keys of a run's ``config.json`` that describe the run, not the configuration.
METADATA_KEYS = ("format", "vaelab_version", "torch_version", "dataset")
SECTIONS = {"model": ModelConfig, "train": TrainConfig}


@dataclass(frozen=True)
class RunConfig:
    """A whole run: the architecture (``model``) and the training options (``train``)."""

    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def __post_init__(self) -> None:
        if not isinstance(self.model, ModelConfig):
            raise TypeError(f"model: expected a ModelConfig, got {type(self.model).__name__}")
        if not isinstance(self.train, TrainConfig):
            raise TypeError(f"train: expected a TrainConfig, got {type(self.train).__name__}")
        if (not catalogue.fact("objective", self.train.objective, "mixture_q", True)
                and catalogue.fact("family", self.model.family, "mixture")):
            raise ValueError(f"objective (--objective): {self.train.objective!r} is not "
                             f"available with family {self.model.family!r} (the stratified "
                             f"bound's DReG form is not derived); expected 'iwae' "
                             f"(stratified IWAE) or 'elbo'")
        if isinstance(self.model.latent_dim, tuple) and self.train.inference != "amortized":
            raise ValueError(f"inference (--inference): a hierarchical model (latent_dim "
                             f"{list(self.model.latent_dim)}) is trained with its bottom-up or "
                             f"ladder encoder; expected 'amortized', got "
                             f"{self.train.inference!r}")

    def to_dict(self) -> dict:
        """``{"model": {...}, "train": {...}}``, JSON-serializable."""
        return {"model": self.model.to_dict(), "train": self.train.to_dict()}

    @classmethod
    def from_dict(cls, data: dict) -> RunConfig:
        """Build from a config dict (nested, dotted or bare keys, see :func:`normalize`).

        The metadata keys of a run's config.json (``METADATA_KEYS``) are ignored, so a run's
        config.json is itself a valid config file. Unknown keys raise ValueError naming them.
        """
        data = normalize(data)
        return cls(ModelConfig.from_dict(data["model"]), TrainConfig.from_dict(data["train"]))


def _section_of(key: str) -> str:
    for section, cls in SECTIONS.items():
        if key in {f.name for f in dataclasses.fields(cls)} | _older_keys(cls):
            return section
    model_keys = sorted(f.name for f in dataclasses.fields(ModelConfig))
    train_keys = sorted(f.name for f in dataclasses.fields(TrainConfig))
    raise ValueError(f"config: unknown key {key!r}; expected 'model', 'train', a model key "
                     f"{model_keys} or a train key {train_keys}")


def normalize(data: object) -> dict:
    """Any accepted config dict → ``{"model": {...}, "train": {...}}`` (a new dict).

    Accepted keys: the sections ``model`` and ``train`` (dicts), dotted keys such as
    ``"train.epochs"``, and bare field names (``"epochs"``, ``"latent_dim"``: every field name
    belongs to exactly one section). Unknown keys raise ValueError naming them.
    """
    if not isinstance(data, dict):
        raise TypeError(f"config: expected a dict, got {type(data).__name__}")
    out: dict[str, dict] = {"model": {}, "train": {}}
    for key, value in data.items():
        if key in METADATA_KEYS:
            continue
        if key in SECTIONS:
            out[key].update(_known_keys(key, value, SECTIONS[key]))
            continue
        section, _, name = str(key).rpartition(".")
        if section and section not in SECTIONS:
            raise ValueError(f"config: unknown section {section!r} in key {key!r}; expected "
                             f"'model' or 'train'")
        section = section or _section_of(name)
        out[section].update(_known_keys(section, {name: value}, SECTIONS[section]))
    return out


def merge(config: dict, overrides: dict) -> dict:
    """Return ``config`` with ``overrides`` applied on top, both in any :func:`normalize` form.

    Meant for command-line flags over a file: an override whose value is None counts as "not
    given" and is skipped. An override that picks another component (``--prior flow`` over a
    file's VampPrior) drops the file's options of the old one; for training's components
    also the file's flat keys the new one lacks (``--kl-schedule constant`` over a file's
    ``kl_warmup_epochs = 100``: a constant weight, not a clash with the file's warm-up).
    Unknown keys in either dict raise ValueError naming them. Returns the nested form
    ``{"model": {...}, "train": {...}}``.
    """
    base = normalize(config)
    given = {k: v for k, v in _flatten(overrides).items() if v is not None}
    for section, values in normalize(given).items():
        for kind in MODEL_KINDS if section == "model" else ():
            name = catalogue.FIELDS[kind]
            if name in values and values[name] != base[section].get(name):
                base[section].pop(f"{name}_options", None)
        for kind in TRAIN_KINDS if section == "train" else ():
            name = catalogue.FIELDS[kind]
            if name not in values:
                continue
            if values[name] != base[section].get(name):
                base[section].pop(f"{name}_options", None)
            kept = {o.key for o in catalogue.get(kind, values[name], name).options}
            for key in catalogue.older_keys(kind):
                if key not in kept:
                    base[section].pop(key, None)
        base[section].update(values)
    return base


def _flatten(data: object) -> dict:
    if not isinstance(data, dict):
        raise TypeError(f"overrides: expected a dict, got {type(data).__name__}")
    flat = {}
    for key, value in data.items():
        if key in SECTIONS and isinstance(value, dict):
            flat.update({f"{key}.{k}": v for k, v in value.items()})
        else:
            flat[key] = value
    return flat


def load_config_file(path: str | Path) -> dict:
    """Read a ``.toml`` or ``.json`` config file → ``{"model": {...}, "train": {...}}``.

    TOML files use ``[model]`` and ``[train]`` tables (or bare keys); a run's config.json is
    accepted as it is. Raises ValueError naming the file for a missing file, a parse error, an
    unknown suffix or unknown keys. The values are validated by :meth:`RunConfig.from_dict`.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".toml", ".json"):
        raise ValueError(f"config file: expected a .toml or .json file, got {str(path)!r}")
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ValueError(f"config file: cannot read {str(path)!r}: {exc.strerror}") from None
    try:
        data = _parse_toml(text) if suffix == ".toml" else json.loads(text)
    except ValueError as exc:  # tomllib.TOMLDecodeError and JSONDecodeError are ValueErrors
        raise ValueError(f"config file: {str(path)!r} is not valid {suffix[1:].upper()}: "
                         f"{exc}") from None
    try:
        return normalize(data)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"config file {str(path)!r}: {exc}") from None


def _parse_toml(text: str) -> dict:
    try:
        import tomllib
    except ModuleNotFoundError:  # Python < 3.11
        import tomli as tomllib
    return tomllib.loads(text)
