"""The components of vaelab, described once: name, home, options, help, facts.

Role in vaelab: a leaf (no torch, no other vaelab module), so ``vaelab --help`` stays fast.
Every component a user chooses by name — a likelihood, a network, a variational family, a
prior, a training objective, a KL or learning-rate schedule, an optimizer, a log-likelihood
estimator, an anomaly score — is one :class:`Entry` here:

* ``name`` — kebab-case, as the command line shows it (``--prior vamp``);
* ``home`` — where its class lives, ``"module:Class"``, imported only by :meth:`Entry.resolve`;
* ``options`` — its own settings (:class:`Option`: name, type, default, help, check, the CLI
  flag, the flat config key older run directories used);
* ``help`` — one line for ``--help`` and the report;
* ``facts`` — what torch-free code must know without building the component (e.g. that a
  family is a mixture; ``ordered``: pairs of options that must satisfy low < high when both
  are set). Torch code asks the built object instead; a test pins the two equal.

The command line's choices and per-component flags, the config's validation, the report's
settings table and the model builders are derived from :data:`CATALOGUE`: a new component is
its class (with a ``from_options`` classmethod taking exactly its options as keywords) plus one
entry here. The idea follows ``torch.distributions`` (a distribution declares its contract as
data) and diffusers (a component's constructor arguments are its saved config).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

# Option, Entry and CHECKS live in vaelab.component_spec (the machinery; this module is the
# list of entries): re-exported because the CLI, tune and tests read them as catalogue.Option,
# catalogue.Entry and catalogue.CHECKS.
from vaelab.component_spec import CHECKS as CHECKS
from vaelab.component_spec import Entry as Entry
from vaelab.component_spec import Option as Option

KINDS = ("likelihood", "network", "family", "prior", "objective", "kl-schedule",
         "lr-schedule", "optimizer", "estimator", "score")


def _opt(prefix: str, name: str, check: str, default: object, help: str, *,
         metavar: str | None = None, flag: bool = True, **extra: Any) -> Option:
    """An option whose flag is ``--<prefix>-<name>`` and old flat key ``<prefix>_<name>``."""
    stem = f"{prefix}_{name}" if prefix else name
    return Option(name, check, default, help, metavar=metavar, key=stem,
                  flag="--" + stem.replace("_", "-") if flag else None, **extra)


_Q_COMPONENTS = _opt("q", "components", "int>=1", 4, "components of --family mixture",
                     metavar="K")
_PRIOR_COMPONENTS = _opt("prior", "components", "int>=1", 10, "Gaussians of --prior mog, "
                         "pseudo-inputs of --prior vamp", metavar="K")
_DISPERSION = _opt("likelihood", "dispersion", "choice", "column", "inverse dispersion θ of "
                   "the negative binomials: one learned per column, or from the decoder per "
                   "example", metavar="WHERE", choices=("column", "example"))
_MIN_SCALE = Option("min_scale", "float>0", 1e-3, "floor added to σ", key="min_scale")
_ACTIVATION = Option("activation", "choice", "relu", "hidden-unit nonlinearity",
                     key="activation", choices=("relu", "tanh", "gelu", "silu", "elu",
                                                "softplus", "leaky_relu"))
_AIS = (
    Option("steps", "int>=1", 100, "AIS intermediate distributions", flag="--ais-steps",
           metavar="T"),
    Option("chains", "int>=1", 8, "AIS chains per example", flag="--chains", metavar="C"),
    Option("leapfrog", "int>=1", 3, "leapfrog steps per HMC transition", flag="--leapfrog",
           metavar="L"),
    Option("init", "choice", "encoder", "where AIS starts: the encoder's q(z|x) or the prior",
           choices=("encoder", "prior")),
)

_ENTRIES = (
    # ---- p(x | z)
    Entry("likelihood", "bernoulli", "vaelab.model.likelihoods:Bernoulli",
          "binary data (a normalised probability there, a score on grey levels)"),
    Entry("likelihood", "gaussian", "vaelab.model.likelihoods:Gaussian",
          "real data (a density), dequantized on 8-bit data (a bound)",
          (Option("scale", "choice", "network", "where σ comes from: the decoder (network), "
                  "one learned σ per dimension (learned) or fixed σ = 1 (fixed)",
                  key="gaussian_scale", choices=("network", "learned", "fixed")),
           Option("min_scale", "float>0", 1e-3, "floor added to σ", key="min_scale"))),
    Entry("likelihood", "continuous-bernoulli", "vaelab.model.likelihoods:ContinuousBernoulli",
          "data in [0, 1] (a density)"),
    Entry("likelihood", "discretized-logistic",
          "vaelab.model.discretized_logistic:DiscretizedLogistic",
          "8-bit data (a normalised probability)"),
    Entry("likelihood", "discretized-logistic-mixture",
          "vaelab.model.discretized_logistic:DiscretizedLogisticMixture",
          "8-bit data, a mixture of logistics per value (a normalised probability)",
          (_opt("likelihood", "components", "int>=1", 5,
                "mixture components of discretized-logistic-mixture", metavar="K"),)),
    Entry("likelihood", "poisson", "vaelab.model.column_likelihoods:Poisson",
          "counts 0, 1, 2, … (a normalised probability)"),
    Entry("likelihood", "negative-binomial", "vaelab.model.column_likelihoods:NegativeBinomial",
          "over-dispersed counts: mean and inverse dispersion (a normalised probability)",
          (_DISPERSION,)),
    Entry("likelihood", "zero-inflated-negative-binomial",
          "vaelab.model.column_likelihoods:ZeroInflatedNegativeBinomial",
          "counts with extra zeros: a negative binomial or a zero (a normalised probability)",
          (_DISPERSION,)),
    Entry("likelihood", "binomial", "vaelab.model.column_likelihoods:Binomial",
          "successes out of a known number of trials (a normalised probability)",
          (_opt("likelihood", "trials", "int>=1", None, "trials n of --likelihood binomial "
                "(values 0..n; required)", metavar="N"),)),
    Entry("likelihood", "categorical", "vaelab.model.column_likelihoods:Categorical",
          "categories coded 0..K-1, a softmax per column (a normalised probability)",
          (_opt("likelihood", "categories", "int>=1", None, "categories K of --likelihood "
                "categorical (codes 0..K-1; required)", metavar="K"),)),
    Entry("likelihood", "student-t", "vaelab.model.column_likelihoods:StudentT",
          "real data with heavy tails (a density)",
          (_opt("likelihood", "df", "float>0", None, "degrees of freedom ν of --likelihood "
                "student-t (default: learned per column)", metavar="NU"), _MIN_SCALE)),
    Entry("likelihood", "log-normal", "vaelab.model.column_likelihoods:LogNormal",
          "positive real data, log x Gaussian (a density)", (_MIN_SCALE,)),
    Entry("likelihood", "mixed", "vaelab.model.mixed_likelihood:MixedLikelihood",
          "a table of mixed columns, one likelihood each from its inferred schema",
          (Option("column_types", "any", None, "JSON/TOML file: column → likelihood (others "
                  "inferred)", flag="--column-types", key="column_types", metavar="FILE"),
           Option("columns", "any", None, "the schema (inferred by vaelab train)"))),
    # ---- encoder and decoder networks
    Entry("network", "mlp", "vaelab.model.nets:MLPNets",
          "dense layers, x → hidden → q's parameters and back reversed",
          (Option("hidden", "sizes", (512, 256), "hidden layer sizes", flag="--hidden",
                  key="hidden", metavar="N,N,..."), _ACTIVATION,
           Option("gated", "bool", False, "gated dense units h = (W₁x + b₁) ⊙ σ(W₂x + b₂) "
                  "instead of the activation", flag="--gated", key="gated"),
           Option("weight_norm", "bool", False, "weight normalisation w = g·v/‖v‖ of every "
                  "dense layer, g and b set from the first training batch (Salimans & Kingma "
                  "2016)", flag="--weight-norm", key="weight_norm"))),
    Entry("network", "conv", "vaelab.model.nets:ConvNets",
          "convolutional nets (image data only): residual nets for one latent layer, the "
          "VampPrior paper's convolutional HVAE for --hierarchy top-down",
          (Option("channels", "ints>=1", (32, 64), "channels per stage",
                  flag="--conv-channels", key="conv_channels", metavar="N,N,..."),
           _ACTIVATION,
           Option("gated", "bool", False, "gated units h = (W₁∗x + b₁) ⊙ σ(W₂∗x + b₂) in "
                  "every convolution and dense layer instead of the activation (--hierarchy "
                  "top-down only)", flag="--gated", key="gated"),
           Option("width", "int>=1", 300, "width of the dense units of a convolutional "
                  "hierarchy: q(z_i | x, z_(i+1))'s joint layer, p(z_i | z_(i+1)), the "
                  "decoder's path from each layer", flag="--conv-width", key="conv_width",
                  metavar="N"))),
    Entry("network", "factory", "vaelab.model.nets:FactoryNets",
          "your own encoder and decoder nets, from a factory function you name (config files "
          "and vaelab.fit only; loading such a run needs trust)",
          (Option("factory", "any", None, "import path of the factory, 'package.module:function'"),
           Option("args", "any", None, "the factory's keyword arguments (JSON values)"))),
    Entry("network", "model", "vaelab.model.user:UserModel",
          "your own whole model p(z) p(x|z) and q(z|x), from a factory function you name "
          "(config files and vaelab.fit only; loading such a run needs trust)",
          (Option("factory", "any", None, "import path of the factory, 'package.module:function'"),
           Option("args", "any", None, "the factory's keyword arguments (JSON values)"))),
    # ---- q(z | x)
    Entry("family", "diagonal-normal", "vaelab.model.families:DiagonalNormal",
          "N(μ, diag σ²), the standard VAE posterior",
          (_opt("q", "min_logvar", "float", None, "lower bound on log σ² of q (a clamp; "
                "default: none)", metavar="LO"),
           _opt("q", "max_logvar", "float", None, "upper bound on log σ² of q (a clamp; "
                "default: none)", metavar="HI")),
          facts={"mixture": False, "ordered": (("min_logvar", "max_logvar"),)}),
    Entry("family", "full-covariance-normal", "vaelab.model.families:FullCovarianceNormal",
          "N(μ, L Lᵀ), correlated posteriors", facts={"mixture": False}),
    Entry("family", "mixture", "vaelab.model.families:MixtureNormal",
          "K diagonal Gaussians, trained with the stratified estimator", (_Q_COMPONENTS,),
          facts={"mixture": True}),
    Entry("family", "iaf", "vaelab.model.families:IAFNormal",
          "inverse autoregressive flow with encoder context",
          (_opt("q", "flow_steps", "int>=1", 2, "IAF steps of --family iaf", metavar="T"),
           _opt("q", "flow_update", "choice", "affine", "each IAF step: affine, z' = μ + "
                "exp(s) z with s soft-clamped to ±5, or gated, z' = σ z + (1 − σ) m (Kingma "
                "et al.'s stable form: a step only contracts)", choices=("affine", "gated"))),
          facts={"mixture": False}),
    # ---- p(z)
    Entry("prior", "standard-normal", "vaelab.model.priors:StandardNormal", "N(0, I)"),
    Entry("prior", "learned-normal", "vaelab.model.priors:LearnedNormal",
          "N(μ, diag σ²) with μ, σ learned"),
    Entry("prior", "mog", "vaelab.model.priors:MixtureOfGaussians",
          "learned mixture of Gaussians", (_PRIOR_COMPONENTS,)),
    Entry("prior", "vamp", "vaelab.model.priors:VampPrior",
          "VampPrior: q at learned pseudo-inputs",
          (_PRIOR_COMPONENTS,
           _opt("prior", "init", "choice", "uniform", "where --prior vamp's pseudo-inputs "
                "start: uniform on [0, 1), or K training rows drawn with the seed (data)",
                metavar="FROM", choices=("uniform", "data")))),
    Entry("prior", "flow", "vaelab.model.priors:FlowPrior", "MAF from N(0, I)",
          (_opt("prior", "flow_steps", "int>=1", 2, "MAF steps of --prior flow",
                metavar="T"),)),
    # ---- training objectives (vaelab.infer.objectives)
    Entry("objective", "elbo", "vaelab.infer.objectives:ELBOObjective",
          "the ELBO, Monte Carlo over --num-samples draws",
          (Option("free_bits", "float>=0", 0.0, "free bits λ (Kingma et al. 2016): the KL of "
                  "each latent dimension, averaged over the batch, counts as at least λ nats",
                  flag="--free-bits", key="free_bits", metavar="NATS"),)),
    Entry("objective", "iwae", "vaelab.infer.objectives:IWAEObjective",
          "the importance-weighted bound with K = --num-samples >= 2 (Burda et al. 2016)"),
    Entry("objective", "iwae-dreg", "vaelab.infer.objectives:DReGObjective",
          "the IWAE bound with the doubly-reparameterized encoder gradient (Tucker et al. "
          "2019)", facts={"mixture_q": False}),
    # ---- the KL weight over training (vaelab.fit.kl_schedule)
    Entry("kl-schedule", "constant", "vaelab.fit.kl_schedule:ConstantKL", "β throughout"),
    Entry("kl-schedule", "linear", "vaelab.fit.kl_schedule:LinearKL",
          "0 → β over --kl-warmup epochs",
          (Option("warmup_epochs", "float>0", 1.0, "length of the linear ramp in epochs; "
                  "given alone it means --kl-schedule linear",
                  flag="--kl-warmup", key="kl_warmup_epochs", metavar="EPOCHS"),)),
    Entry("kl-schedule", "cyclical", "vaelab.fit.kl_schedule:CyclicalKL",
          "cycles over the run, each rising 0 → β then flat (Fu et al. 2019)",
          (Option("cycles", "int>=1", 4, "cycles over the whole run", flag="--kl-cycles",
                  key="kl_cycles", metavar="M"),
           Option("ratio", "unit", 0.5, "fraction of each cycle spent rising",
                  flag="--kl-ratio", key="kl_ratio", metavar="R"))),
    # ---- the learning rate over training (vaelab.fit.lr_schedule)
    Entry("lr-schedule", "constant", "vaelab.fit.lr_schedule:ConstantLR", "lr throughout"),
    Entry("lr-schedule", "cosine", "vaelab.fit.lr_schedule:CosineLR",
          "lr → 0 on a half cosine over all steps"),
    Entry("lr-schedule", "exponential", "vaelab.fit.lr_schedule:ExponentialLR",
          "lr · decay^epoch",
          (Option("decay", "unit", 0.95, "factor per epoch", key="lr_decay"),)),
    Entry("lr-schedule", "plateau", "vaelab.fit.lr_schedule:PlateauLR",
          "halve lr after --lr-patience epochs without a better validation ELBO",
          (Option("patience", "int>=1", 10, "epochs without a better validation ELBO before "
                  "the learning rate is halved", flag="--lr-patience", key="lr_patience",
                  metavar="EPOCHS"),)),
    # ---- optimizers
    Entry("optimizer", "adam", "torch.optim:Adam", "Adam (Kingma & Ba 2015)",
          (Option("betas", "betas", (0.9, 0.999), "Adam's moment decay rates",
                  key="betas"),)),
    Entry("optimizer", "adamax", "torch.optim:Adamax",
          "Adamax, Adam with an infinity-norm second moment (Kingma & Ba 2015, section 7)",
          (Option("betas", "betas", (0.9, 0.999), "Adamax's decay rates (mean, max-norm)",
                  key="betas"),)),
    # ---- log p(x) estimators (vaelab.measure.estimators)
    Entry("estimator", "is", "vaelab.measure.estimators:ImportanceSampling",
          "importance sampling with k draws from a proposal",
          (Option("proposal", "choice", "encoder", "the encoder's q, q refined per example, "
                  "or the mixture 1/2 refined + 1/2 encoder", flag="--proposal",
                  choices=("encoder", "refined", "mixture")),
           Option("num_samples", "int>=1", 1000, "importance samples per example", flag="--k",
                  metavar="K"),
           Option("refine_steps", "int>=1", 100, "most Adam steps refining the refined/"
                  "mixture proposal per example", flag="--refine-steps", metavar="N"),
           Option("refine_draws", "int>=1", 8, "draws of z per refinement step",
                  flag="--refine-draws", metavar="M"),
           Option("refine_lr", "float>0", 5e-2, "the refinement's Adam step size"))),
    Entry("estimator", "ais", "vaelab.measure.estimators:AnnealedImportanceSampling",
          "annealed importance sampling with HMC", _AIS),
    Entry("estimator", "bdmc", "vaelab.measure.estimators:BDMC",
          "AIS plus a BDMC sandwich on data simulated from the model", _AIS),
    # ---- anomaly scores (vaelab.use.scores; higher = more anomalous)
    Entry("score", "elbo", "vaelab.use.scores:anomaly_scores", "−ELBO(x)",
          facts={"column": "neg_elbo"}),
    Entry("score", "log-likelihood", "vaelab.use.scores:anomaly_scores",
          "−log p̂(x), importance sampled", facts={"column": "nll"}),
    Entry("score", "input-complexity", "vaelab.use.scores:anomaly_scores",
          "−log₂ p̂(x) − compressed length in bits (Serrà et al. 2020)",
          facts={"column": "input_complexity"}),
    Entry("score", "likelihood-ratio", "vaelab.use.scores:anomaly_scores",
          "log p̂_background(x) − log p̂(x) (Ren et al. 2019)", facts={"column": "neg_llr"}),
    Entry("score", "regret", "vaelab.use.scores:anomaly_scores",
          "ELBO with q fitted to x − ELBO with the encoder's q (Xiao et al. 2020)",
          facts={"column": "regret"}),
    Entry("score", "typicality", "vaelab.use.typicality:typicality",
          "|mean −log p̂ of a batch of M − the training set's| (Nalisnick et al. 2019)",
          (Option("batch", "int>=1", 1, "examples M tested together by typicality",
                  flag="--typicality-batch", metavar="M"),), {"column": "typicality"}),
    Entry("score", "hierarchical-llr", "vaelab.use.hierarchical_llr:hierarchical_llr",
          "ELBO − the bound with layers 1..k from the conditional prior (Havtorn et al. 2021)",
          (Option("k", "int>=0", 1, "layers 1..k drawn from p(z_{≤k} | z_{>k}) in "
                  "hierarchical-llr's L^{>k}",
                  flag="--llr-k", metavar="K"),), {"column": "hierarchical_llr"}),
    Entry("score", "latent-density", "vaelab.use.latent_scores:aggregate_posterior_nll",
          "−log q̄(code), q̄ the training q's mixture", (), {"column": "latent_nll"}),
    Entry("score", "latent-knn", "vaelab.use.latent_scores:knn_distance",
          "mean distance of the code to its k nearest training codes",
          (Option("neighbours", "int>=1", 5, "nearest training codes of latent-knn",
                  flag="--neighbours", metavar="K"),), {"column": "latent_knn"}),
)

#: kind → {name → Entry}, in the order above (the first entry of a kind is its default).
CATALOGUE: dict[str, dict[str, Entry]] = {kind: {} for kind in KINDS}
for _entry in _ENTRIES:
    CATALOGUE[_entry.kind][_entry.name] = _entry


def canonical(name: object) -> object:
    """A component name in catalogue spelling: kebab-case (``diagonal_normal`` →
    ``diagonal-normal``); anything but a string is returned as it is."""
    return name.replace("_", "-") if isinstance(name, str) else name


def names(kind: str) -> tuple[str, ...]:
    """The names of ``kind``'s components, in catalogue order."""
    return tuple(CATALOGUE[kind])


def get(kind: str, name: object, where: str | None = None) -> Entry:
    """The entry of component ``name`` (either spelling) of ``kind``, or a one-line error
    naming ``where`` (default: the kind), the choices and what was received."""
    key = canonical(name)
    entry = CATALOGUE[kind].get(key) if isinstance(key, str) else None
    if entry is None:
        raise ValueError(f"{where or kind}: expected one of "
                         f"{', '.join(map(repr, names(kind)))}, got {name!r}")
    return entry


def entries(kind: str | None = None) -> tuple[Entry, ...]:
    """Every entry (of ``kind``), in catalogue order."""
    kinds = KINDS if kind is None else (kind,)
    return tuple(e for k in kinds for e in CATALOGUE[k].values())


def flags(kind: str) -> dict[str, tuple[Option, tuple[str, ...]]]:
    """flag → (its option, the names of ``kind``'s components that have it): a flag shared by
    several components (``--prior-components``) is declared once per component, equally."""
    out: dict[str, tuple[Option, tuple[str, ...]]] = {}
    for entry in CATALOGUE[kind].values():
        for option in entry.options:
            if option.flag is not None:
                first, owners = out.get(option.flag, (option, ()))
                out[option.flag] = (first, (*owners, entry.name))
    return out


def check_flag_owner(kind: str, flag: str, chosen: str, choose_flag: str) -> None:
    """Raise ValueError unless component ``chosen`` of ``kind`` has the option behind
    ``flag``: ``--q-components: needs --family mixture, got --family iaf``."""
    owners = flags(kind)[flag][1]
    if canonical(chosen) not in owners:
        needs = " or ".join(f"{choose_flag} {o}" for o in owners)
        raise ValueError(f"{flag}: needs {needs}, got {choose_flag} {canonical(chosen)}")


def fact(kind: str, name: object, key: str, default: object = None) -> Any:
    """A fact of a component (``fact("family", "mixture", "mixture")`` → True)."""
    return get(kind, name).facts.get(key, default)


#: kind → the config field that names the chosen component (``vaelab.config``).
FIELDS = {"likelihood": "likelihood", "network": "net", "family": "family", "prior": "prior",
          "objective": "objective", "kl-schedule": "kl_schedule",
          "lr-schedule": "lr_schedule", "optimizer": "optimizer"}


def chosen(config: object, kind: str) -> tuple[Entry, dict]:
    """(entry, options) of the ``kind`` component a model or train config chose.

    The options are the config's ``<field>_options`` when it has them; otherwise (a config
    with flat keys) each option's old flat key. Validated, defaults filled in.
    """
    where = FIELDS[kind]
    entry = get(kind, getattr(config, where), where)
    options = getattr(config, f"{where}_options", None)
    if options is None:
        options = {o.name: getattr(config, o.key) for o in entry.options
                   if o.key is not None and hasattr(config, o.key)}
    return entry, entry.validate(options, f"{where}_options")


def older_keys(kind: str) -> dict[str, Option]:
    """The older flat config keys of ``kind``'s options (``prior_components``, …) → option."""
    return {o.key: o for e in CATALOGUE[kind].values() for o in e.options if o.key}


def nest_older_keys(kinds: tuple[str, ...], values: dict, names: dict[str, Any]) -> dict:
    """``values`` (config keywords) with the older flat keys of ``kinds`` moved into the
    ``<field>_options`` of the chosen components, each checked under its flat name first.

    ``names`` gives each field's default component. A flat key overrides the same option in
    ``<field>_options``; a flat key the chosen component lacks is dropped (it never applied:
    a flat config carried every component's settings).
    """
    values = dict(values)
    for kind in kinds:
        field = FIELDS[kind]
        flat = {key: values.pop(key) for key in older_keys(kind) if key in values}
        if not flat:
            continue
        entry = get(kind, values.get(field, names[field]), field)
        nested = dict(values.get(f"{field}_options") or {})
        for key, value in flat.items():
            older_keys(kind)[key].validate(value, key)
            mine = [o for o in entry.options if o.key == key]
            if mine:
                nested[mine[0].name] = value
        values[f"{field}_options"] = nested
    return values


def older_value(config: object, kinds: tuple[str, ...], key: str,
                off: dict | None = None) -> Any:
    """The value an older flat key reads as: the chosen component's option, else ``off[key]``
    or the option's default (the setting does nothing then). Raises AttributeError for any
    other ``key`` (a config's ``__getattr__`` calls this for names it does not have)."""
    if key.startswith("__"):
        raise AttributeError(key)
    for kind in kinds:
        option = older_keys(kind).get(key)
        if option is None:
            continue
        field = FIELDS[kind]
        entry = get(kind, object.__getattribute__(config, field))
        options = object.__getattribute__(config, f"{field}_options")
        for mine in entry.options:
            if mine.key == key:
                return options.get(mine.name, mine.default)
        return (off or {}).get(key, option.default)
    raise AttributeError(key)


def components(kinds: tuple[str, ...],
               before: Callable[[dict], dict] | None = None) -> Callable[[type], type]:
    """Class decorator of a config dataclass: its constructor also takes the older flat keys
    of ``kinds``' options (``q_components=4``, as earlier config.json files and callers have
    them) and nests them, after ``before`` (the class's own rules about older keys) has seen
    them. The class reads such keys back with :func:`older_value` in its ``__getattr__``."""
    def decorate(cls: type) -> type:
        generated = vars(cls)["__init__"]      # the dataclass's own
        names: dict[str, Any] = {f.name: f.default for f in dataclasses.fields(cls)}

        def __init__(self: object, **values: object) -> None:
            values = before(dict(values)) if before is not None else values
            generated(self, **nest_older_keys(kinds, values, names))

        __init__.__doc__ = generated.__doc__
        type.__setattr__(cls, "__init__", __init__)
        return cls
    return decorate


def check_components(config: object, kinds: tuple[str, ...],
                     snake_case: tuple[str, ...] = ()) -> None:
    """Each component's name (checked, spelling normalised) and its options (checked, the
    defaults filled in): ``prior_options.components: expected an integer >= 1, got 0``."""
    for kind in kinds:
        field = FIELDS[kind]
        entry = get(kind, getattr(config, field), field)
        name = entry.name.replace("-", "_") if field in snake_case else entry.name
        options = entry.validate(getattr(config, f"{field}_options"), f"{field}_options")
        object.__setattr__(config, field, name)
        object.__setattr__(config, f"{field}_options", options)
