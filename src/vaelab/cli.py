"""The ``vaelab`` command: train, evaluate, sample, reconstruct, gaps, complete, figures.

Role in vaelab: the user's entry point, and nothing else imports it. Each sub-command is a
thin layer over the library (``train.train``, ``trained.load``, ``evaluate.evaluate_model``,
``plots``, ``gaps.report_gaps``, ``missing.complete_top_half``, ``figures.make_all``). Bad
input never shows a traceback: :func:`main` turns every error into one line
``vaelab: error: <message>`` on stderr and a non-zero exit code (2 for command-line usage
errors, 1 for everything else, 130 when interrupted); ``VAELAB_DEBUG=1`` re-raises instead,
for developers. Files are written atomically (temporary file + rename), and nothing is
computed before the destinations are known to be writable, so a failure loses no work and
leaves nothing half-written.
"""

from __future__ import annotations

import argparse
import importlib
import math
import os
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from vaelab import catalogue

DEBUG_ENV = "VAELAB_DEBUG"
EXIT_ERROR, EXIT_USAGE, EXIT_INTERRUPTED = 1, 2, 130
DEFAULT_EVAL_K, DEFAULT_EVAL_LIMIT = 1000, 1000
EVAL_FILE = "eval.json"


class UsageError(Exception):
    """A command-line usage error (exit code 2)."""


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser that raises :class:`UsageError` instead of printing and exiting.

    Abbreviated flags are refused (``--epoch`` is not ``--epochs``): a typo is an error.
    """

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message: str):  # noqa: D102 - argparse's hook
        raise UsageError(f"{message} (see `{self.prog} --help`)")

    def parse_known_args(self, args=None, namespace=None):  # noqa: D102 - argparse's hook
        if args is not None:
            self._refuse_repeats(list(args))
        return super().parse_known_args(args, namespace)

    def _refuse_repeats(self, args: list[str]) -> None:
        """A flag that takes one value given twice would silently keep the last: refused.

        Only this parser's own flags are counted, up to its sub-command (whose parser counts
        its own) or ``--``.
        """
        single = {option: action for action in self._actions if action.nargs != 0
                  and not isinstance(action, (argparse._AppendAction, argparse._CountAction))
                  for option in action.option_strings}
        commands = {name for action in self._actions
                    if isinstance(action, argparse._SubParsersAction) for name in action.choices}
        seen: dict[object, str] = {}
        for token in args:
            if token == "--" or token in commands:
                return
            action = single.get(token.split("=", 1)[0]) if token.startswith("-") else None
            if action is None:
                continue
            if action in seen:
                raise UsageError(f"{token.split('=', 1)[0]}: given more than once; expected it "
                                 f"once (see `{self.prog} --help`)")
            seen[action] = token


# --------------------------------------------------------------------------- argument types


def _number(kind: Callable, check: Callable[[float], bool], expected: str) -> Callable:
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None
        if not check(value):
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")
        return value
    parse.__name__ = expected
    return parse


positive_int = _number(int, lambda v: v >= 1, "an integer >= 1")
non_negative_int = _number(int, lambda v: v >= 0, "an integer >= 0")
positive_float = _number(float, lambda v: math.isfinite(v) and v > 0, "a finite number > 0")
non_negative_float = _number(float, lambda v: math.isfinite(v) and v >= 0,
                             "a finite number >= 0")
fraction = _number(float, lambda v: 0 <= v < 1, "a number in [0, 1)")


def hidden_sizes(text: str) -> tuple[int, ...]:
    """``"512,256"`` → (512, 256); every size an integer >= 1."""
    try:
        sizes = tuple(int(part) for part in text.split(","))
    except ValueError:
        sizes = ()
    if not sizes or min(sizes) < 1:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers >= 1 such as 512,256, got {text!r}")
    return sizes


def latent_sizes(text: str) -> int | tuple[int, ...]:
    """``"20"`` → 20; ``"64,32"`` → (64, 32) (latent layers bottom to top); integers >= 1."""
    try:
        sizes = hidden_sizes(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(
            f"expected an integer >= 1 or comma-separated integers >= 1 such as 64,32 "
            f"(latent sizes, bottom to top), got {text!r}") from None
    return sizes[0] if len(sizes) == 1 else sizes


# --------------------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    """The ``vaelab`` argument parser with its sub-commands."""
    parser = _Parser(prog="vaelab", description="Variational autoencoders on PyTorch: train, "
                     "evaluate and use a VAE. Run `vaelab COMMAND --help` for a command's flags.")
    from vaelab import __version__

    parser.add_argument("--version", action="version", version=f"vaelab {__version__}")
    parser.add_argument("--trust", action="append", metavar="MODULE", default=[],
                        help="import the network factory a run names (a run trained on your "
                        "own networks with vaelab.fit) when it lies in MODULE or below; "
                        "importing runs its code, so only for runs you trust (repeatable; "
                        "before the command: vaelab --trust mypkg evaluate RUN)")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    _add_train(commands)
    _add_evaluate(commands)
    _add_sample(commands)
    _add_reconstruct(commands)
    _add_gaps(commands)
    _add_complete(commands)
    _add_impute(commands)
    _add_figures(commands)
    _add_score(commands)
    _add_encode(commands)
    _add_cluster(commands)
    _add_report(commands)
    _add_runs(commands)
    return parser


def _add_train(commands) -> None:
    p = commands.add_parser("train", help="train a VAE into a run directory",
                            description="Train a VAE. Flags override --config; the run "
                            "directory gets config.json, model.safetensors, metrics.jsonl, "
                            "checkpoint/ and pictures (samples, reconstructions, curves, "
                            "latent space).")
    p.add_argument("--data", metavar="NAME|PATH", help="dataset name (fashion-mnist, mnist) "
                   "or a .npy/.npz/.csv file or image folder (default: fashion-mnist)")
    p.add_argument("--out", type=Path, metavar="DIR",
                   help="run directory (default: runs/<timestamp>)")
    p.add_argument("--config", type=Path, metavar="FILE", help="a .toml or .json config file "
                   "([model] and [train] tables); flags override it; unknown keys are errors")
    p.add_argument("--resume", type=Path, metavar="DIR", help="continue the run in DIR from "
                   "its last checkpoint (--epochs may extend it)")
    p.add_argument("--overwrite", action="store_true", help="replace a run already in --out")
    p.add_argument("--epochs", type=positive_int, metavar="N")
    p.add_argument("--batch-size", type=positive_int, metavar="N")
    p.add_argument("--lr", type=positive_float, metavar="X", help="Adam learning rate")
    p.add_argument("--latent-dim", type=latent_sizes, metavar="N[,N,...]",
                   help="latent size; several sizes (bottom to top, e.g. 64,32) stack latent "
                        "layers into a hierarchical VAE")
    p.add_argument("--hierarchy", choices=("bottom-up", "ladder", "top-down"),
                   help="inference for several latent layers: bottom-up q(z1|x) q(z2|z1)... "
                        "(Burda et al. 2016), ladder, top-down with bottom-up evidence "
                        "(Sønderby et al. 2016), or top-down q(z2|x) q(z1|x,z2) with a decoder "
                        "reading every layer (Tomczak & Welling 2018); default bottom-up")
    _add_component(p, "likelihood", "p(x|z)")
    _add_component(p, "network", "the encoder and decoder networks")
    _add_component(p, "family", "q(z|x)")
    _add_component(p, "prior", "p(z)")
    p.add_argument("--missing", choices=("none", "mask"),
                   help="mask: NaN (and empty CSV cells) mark missing entries; train on the "
                        "observed ones only (MIWAE; use --objective iwae --num-samples 20)")
    p.add_argument("--missing-model", choices=("none", "self-masking"),
                   help="self-masking: also learn p(missing | x) per feature, for data "
                        "missing not at random (not-MIWAE); needs --missing mask")
    p.add_argument("--drop-empty-rows", action="store_true", default=None,
                   help="with --missing mask: train without the rows whose every entry is "
                        "missing (refused otherwise); columns never observed are always refused")
    p.add_argument("--standardize", choices=("auto", "on", "off"),
                   help="per-column standardization of a real-valued table, recorded in the "
                        "run and undone on every output (samples, reconstructions, "
                        "imputations; densities keep their Jacobian): auto (default) is on "
                        "for --likelihood gaussian on real-valued data")
    p.add_argument("--binarize", choices=("dynamic", "static", "none"),
                   help="binarize [0, 1] data: a fresh Bernoulli draw per visit (dynamic, the "
                   "default), one draw (static), or keep the values (none: for real-valued "
                   "or 8-bit data)")
    p.add_argument("--seed", type=non_negative_int, metavar="N")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"))
    p.add_argument("--limit", type=positive_int, metavar="N",
                   help="use only the first N training examples")
    p.add_argument("--classes", type=class_list, metavar="C,C,...",
                   help="train only on examples of these classes (one-class anomaly detection)")
    p.add_argument("--background-of", type=Path, metavar="RUN", help="train RUN's config on "
                   "inputs with a fraction --perturb-fraction of pixels replaced by noise: the "
                   "background model of `vaelab score --background` (Ren et al. 2019)")
    p.add_argument("--perturb-fraction", type=non_negative_float, metavar="MU",
                   help="fraction of input values replaced by uniform noise (default 0; 0.2 "
                        "with --background-of)")
    p.add_argument("--val-fraction", type=fraction, metavar="F",
                   help="fraction of the training examples held out (seeded) for the "
                        "validation ELBO and early stopping (default 0.05; 0: none)")
    p.add_argument("--inference", choices=("amortized", "per-datapoint", "semi-amortized"))
    p.add_argument("--schedule", choices=("joint", "alternating"),
                   help="joint (default): θ and φ step together; alternating: --phi-steps K "
                        "steps on q before each step on the decoder (needs --phi-steps K >= 1)")
    p.add_argument("--phi-steps", type=non_negative_int, metavar="N",
                   help="φ steps per θ step with --schedule alternating (required there, "
                        "--phi-steps K >= 1)")
    p.add_argument("--phi-lr", type=positive_float, metavar="X",
                   help="φ's own learning rate (per-datapoint rows, alternating schedule); "
                        "default: --lr; ~0.05 suits per-datapoint rows")
    _add_objective(p)
    p.add_argument("--grad-clip", type=positive_float, metavar="X", help="clip the gradient norm")
    p.add_argument("--early-stopping", type=positive_int, metavar="PATIENCE",
                   help="stop after PATIENCE epochs without a better validation ELBO")
    p.add_argument("--ema", type=ratio_in_0_1, metavar="DECAY",
                   help="keep an exponential moving average (Polyak) of the weights with this "
                        "decay (e.g. 0.999) and validate, sample and save with it")
    _add_component(p, "lr-schedule", "the learning rate over training")
    p.add_argument("--lr-warmup", type=non_negative_float, metavar="EPOCHS",
                   help="ramp the learning rate linearly from 0 over this many epochs")
    p.add_argument("--compile", choices=("auto", "on", "off"))
    p.add_argument("--precision", choices=("fp32", "bf16"),
                   help="bf16: the step's forward pass under bfloat16 autocast (fast on GPUs "
                        "with bf16 units; weights and Adam stay float32)")
    p.add_argument("--quiet", action="store_true", help="no progress bar or per-epoch lines")
    p.add_argument("--tensorboard", action="store_true", help="also log the per-epoch metrics "
                   "to RUN/tensorboard (needs the tensorboard package)")
    p.set_defaults(func=cmd_train)


#: The flag that picks each kind of component (``vaelab.catalogue``).
CHOOSER = {"likelihood": "--likelihood", "network": "--net", "family": "--family",
           "prior": "--prior", "objective": "--objective", "kl-schedule": "--kl-schedule",
           "lr-schedule": "--lr-schedule", "estimator": "--estimator"}
MODEL_KINDS = ("likelihood", "network", "family", "prior")
TRAIN_KINDS = ("objective", "kl-schedule", "lr-schedule")
FAMILY_CHOICES = catalogue.names("family")
PRIOR_CHOICES = catalogue.names("prior")
OBJECTIVE_CHOICES = catalogue.names("objective")
KL_SCHEDULE_CHOICES = catalogue.names("kl-schedule")


def _kebab(value: object) -> str:
    return str(value).replace("_", "-")


def _dest(flag: str) -> str:
    return flag.lstrip("-").replace("-", "_")


def _option_type(option: catalogue.Option) -> Callable[[str], object]:
    """argparse type of a component option: its catalogue check, in the CLI's words."""
    def parse(text: str) -> object:
        try:
            return option.parse(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
    parse.__name__ = option.expected
    return parse


def _add_component(p: argparse.ArgumentParser, kind: str, what: str,
                   skip: tuple[str, ...] = (), **choose: Any) -> None:
    """The flag picking a ``kind`` of component, with the catalogue's names and help lines,
    then each component option's flag (its help says which components have it)."""
    names = catalogue.names(kind)
    lines = "; ".join(f"{e.name}: {e.help}" for e in catalogue.entries(kind))
    p.add_argument(CHOOSER[kind], choices=names, help=f"{what}. {lines} (default {names[0]})",
                   **choose)
    for flag, (option, owners) in catalogue.flags(kind).items():
        if flag in skip:
            continue
        whose = " or ".join(f"{CHOOSER[kind]} {owner}" for owner in owners)
        default = option.default
        default = (",".join(map(str, default)) if isinstance(default, tuple) else
                   {True: "on", False: "off"}.get(default, default)
                   if isinstance(default, bool) else default)
        text = f"{option.help} ({whose}" + ("" if default is None else f"; default {default}")
        text += ")"
        if option.check == "bool":
            p.add_argument(flag, action="store_true", default=None, help=text)
        else:
            p.add_argument(flag, type=_option_type(option), metavar=option.metavar or "X",
                           help=text)


def _component_values(args: argparse.Namespace, kinds: tuple[str, ...]) -> dict:
    """The component flags as config keys (the chosen names and each option's flat key;
    None = not given)."""
    out = {}
    for kind in kinds:
        out[catalogue.FIELDS[kind]] = getattr(args, _dest(CHOOSER[kind]))
        for flag, (option, _) in catalogue.flags(kind).items():
            out[option.key or option.name] = getattr(args, _dest(flag))
    return out


def _check_component_flags(args: argparse.Namespace, chosen: dict[str, str]) -> None:
    """A component option's flag given on the command line must belong to the chosen
    component (``chosen``: kind → name): ``--q-components: needs --family mixture, got
    --family iaf``."""
    for kind, name in chosen.items():
        for flag in catalogue.flags(kind):
            if getattr(args, _dest(flag)) is not None:
                try:
                    catalogue.check_flag_owner(kind, flag, name, CHOOSER[kind])
                except ValueError as exc:
                    raise UsageError(str(exc)) from None


ratio_in_0_1 = _number(float, lambda v: 0 < v <= 1, "a number in (0, 1]")


def _add_objective(p: argparse.ArgumentParser) -> None:
    """--objective, --num-samples, --beta, --kl-schedule and their options."""
    _add_component(p, "objective", "what training maximizes; metrics and evaluate always "
                   "report the true ELBO and log p(x)")
    p.add_argument("--num-samples", type=positive_int, metavar="K",
                   help="z samples per example: Monte Carlo samples of the ELBO, K of the "
                        "IWAE bound (per component for --family mixture); default 1")
    p.add_argument("--beta", type=non_negative_float, metavar="X",
                   help="KL weight β (default 1): maximize E log p(x|z) − β KL; for the IWAE "
                        "objectives it tempers the log-weights")
    _add_component(p, "kl-schedule", "the KL weight over training")


def _add_run_data(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", metavar="NAME|PATH",
                   help="dataset name or path (default: the run's training data)")
    p.add_argument("--split", choices=("train", "test"),
                   help="default: test (user data without a test split: train)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="cpu")


def _add_evaluate(commands) -> None:
    p = commands.add_parser(
        "evaluate", help="test ELBO, log-likelihood, bits/dim, active units",
        description="Evaluate a run on held-out data: ELBO, rate, distortion, importance-"
        "sampled log-likelihood ± standard error (nats per example and bits/dim) and active "
        "units. Writes RUN/eval.json (and --out) and prints a table. The defaults (--k "
        f"{DEFAULT_EVAL_K} --limit {DEFAULT_EVAL_LIMIT}) take about 30 s on 2 idle CPU cores; "
        "the full published protocol is `--k 5000 --limit 0` (all 10,000 test images, "
        "about an hour on 2 CPU cores).")
    p.add_argument("run", type=Path, metavar="RUN", help="a run directory")
    _add_run_data(p)
    p.add_argument("--k", type=positive_int, metavar="K", default=DEFAULT_EVAL_K,
                   help=f"importance samples per example (default {DEFAULT_EVAL_K})")
    p.add_argument("--limit", type=non_negative_int, metavar="N", default=DEFAULT_EVAL_LIMIT,
                   help=f"evaluate the first N examples, 0 = all (default {DEFAULT_EVAL_LIMIT})")
    p.add_argument("--batch-size", type=positive_int, metavar="N", default=100)
    p.add_argument("--seed", type=non_negative_int, metavar="N", default=0,
                   help="seeds the binarization of the test data and the sampling")
    p.add_argument("--out", type=Path, metavar="FILE.json", help="also write the results here")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    _add_estimator(p)
    p.set_defaults(func=cmd_evaluate)


def _add_estimator(p: argparse.ArgumentParser) -> None:
    """--estimator and its options (``vaelab.measure.estimators``); --k is evaluate's own."""
    _add_component(p, "estimator", "how log p(x) is estimated", skip=("--k",), default="is")


def _add_sample(commands) -> None:
    p = commands.add_parser("sample", help="draw samples x ~ p(x) as an image grid",
                            description="Draw z ~ p(z) and write the grid of E[x|z].")
    p.add_argument("run", type=Path, metavar="RUN")
    p.add_argument("-n", type=positive_int, metavar="N", default=64,
                   help="number of samples (default 64)")
    p.add_argument("--out", type=Path, metavar="FILE.png", help="default: RUN/samples-N.png")
    p.add_argument("--seed", type=non_negative_int, metavar="N", default=0)
    p.add_argument("--nrow", type=positive_int, metavar="N",
                   help="images per row (default: about √n)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="cpu")
    p.set_defaults(func=cmd_sample)


def _add_reconstruct(commands) -> None:
    p = commands.add_parser("reconstruct", help="originals above their reconstructions",
                            description="Encode n held-out examples and write the originals "
                            "above their reconstructions E[x | z = E_q z].")
    p.add_argument("run", type=Path, metavar="RUN")
    _add_run_data(p)
    p.add_argument("-n", type=positive_int, metavar="N", default=16,
                   help="number of examples (default 16)")
    p.add_argument("--out", type=Path, metavar="FILE.png",
                   help="default: RUN/reconstructions-N.png")
    p.add_argument("--seed", type=non_negative_int, metavar="N", default=0,
                   help="picks the examples and their binarization")
    p.set_defaults(func=cmd_reconstruct)


def _add_gaps(commands) -> None:
    p = commands.add_parser("gaps", help="approximation and amortization gaps",
                            description="Split the inference gap log p(x) − ELBO into the "
                            "approximation and amortization gaps (Cremer et al. 2018): q* is "
                            "the encoder's own family (for a hierarchy, its bottom-up or ladder "
                            "structure) fitted to each example; writes gaps.json and gaps.png.")
    p.add_argument("run", type=Path, metavar="RUN")
    _add_run_data(p)
    p.add_argument("--limit", type=positive_int, metavar="N", default=100,
                   help="number of examples (default 100)")
    p.add_argument("--k", type=positive_int, metavar="K", default=1000,
                   help="samples behind each bound (default 1000; the paper uses 5000)")
    p.add_argument("--steps", type=positive_int, metavar="N", default=500,
                   help="most optimizer steps for the per-example q* (default 500)")
    p.add_argument("--seed", type=non_negative_int, metavar="N", default=0)
    p.add_argument("--out", type=Path, metavar="DIR", help="default: RUN")
    p.set_defaults(func=cmd_gaps)


def _add_complete(commands) -> None:
    p = commands.add_parser("complete", help="fill in the hidden top half of images",
                            description="Hide the top half of n binary held-out images and "
                            "fill it in with a per-image q(h) fitted to the run's ELBO; writes "
                            "a PNG (visible half, q's means, samples, truth) and prints the "
                            "accuracy on the hidden pixels.")
    p.add_argument("run", type=Path, metavar="RUN")
    _add_run_data(p)
    p.add_argument("-n", type=positive_int, metavar="N", default=8,
                   help="number of images (default 8)")
    p.add_argument("--steps", type=positive_int, metavar="N", default=300,
                   help="Adam steps fitting q(h) (default 300)")
    p.add_argument("--samples", type=positive_int, metavar="S", default=16,
                   help="samples of h per gradient (default 16)")
    p.add_argument("--seed", type=non_negative_int, metavar="N", default=0)
    p.add_argument("--out", type=Path, metavar="FILE.png", help="default: RUN/completions.png")
    p.set_defaults(func=cmd_complete)


def _add_impute(commands) -> None:
    p = commands.add_parser("impute", help="fill in missing entries (a run trained with "
                            "--missing mask)", description="Fill in the NaN / empty entries "
                            "of a .npy or .csv file: the importance-weighted conditional mean "
                            "(the mode for binary data), or with --draws M, M imputations by "
                            "sampling importance resampling ([M, N, D], .npy only). Observed "
                            "entries are copied unchanged.")
    p.add_argument("run", type=Path, metavar="RUN")
    p.add_argument("--data", type=Path, required=True, metavar="FILE",
                   help=".npy or .csv with NaN (or empty cells) marking missing entries")
    p.add_argument("--out", type=Path, required=True, metavar="FILE.npy|FILE.csv")
    p.add_argument("--draws", type=positive_int, metavar="M",
                   help="M multiple imputations instead of one")
    p.add_argument("--k", type=positive_int, metavar="K", default=1000,
                   help="importance samples per row (default 1000)")
    p.add_argument("--seed", type=non_negative_int, metavar="N", default=0)
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="cpu")
    p.set_defaults(func=cmd_impute)


def _add_figures(commands) -> None:
    p = commands.add_parser("figures", help="the lecture's figures (no run needed)",
                            description="Draw the figures that illustrate the lecture: "
                            "bimodal posterior, family of bounds, joint vs alternating, EM vs VI.")
    p.add_argument("--out", type=Path, required=True, metavar="DIR")
    p.add_argument("--small", action="store_true", help="quick, low-resolution versions")
    p.set_defaults(func=cmd_figures)


def _add_report(commands) -> None:
    p = commands.add_parser("report", help="one HTML page for one run, or comparing several",
                            description="Write a self-contained HTML report (images embedded, "
                            "opens from disk): what each run is, its test metrics with standard "
                            "errors, gaps, other results and pictures; with several runs, a "
                            "comparison table with paired differences against the first run.")
    p.add_argument("runs", type=Path, nargs="+", metavar="RUN", help="run directories (the "
                   "first is the reference of the comparison)")
    p.add_argument("--out", type=Path, metavar="FILE.html", help="where to write the page "
                   "(default: RUN/report.html for one run, ./vaelab-report.html for several)")
    p.add_argument("--title", metavar="TEXT", help="the page's title")
    p.set_defaults(func=cmd_report)


def _add_runs(commands) -> None:
    p = commands.add_parser("runs", help="a table of the runs under a folder, newest first",
                            description="List the run directories at or below DIR (3 levels) "
                            "with their key numbers, newest first.")
    p.add_argument("dir", type=Path, nargs="?", default=Path("runs"), metavar="DIR",
                   help="folder to search (default: runs)")
    p.set_defaults(func=cmd_runs)


# --------------------------------------------------------------------------- helpers


def _writable_dir(path: Path, what: str) -> Path:
    """Create ``path`` if needed and check a file can be written in it (else OSError→ValueError)."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as exc:
        raise ValueError(f"{what}: cannot write to {str(path)!r}: {exc.strerror or exc}") from None
    return path


def _png_path(path: Path, what: str) -> Path:
    """:func:`_out_path` for a .png, naming a folder called *.png as a folder."""
    if path.suffix.lower() == ".png" and path.is_dir():
        raise ValueError(f"{what}: expected a file name, got the folder {str(path)!r}")
    return _out_path(path, ".png", what)


def _load_run(run_dir: Path, device: str = "cpu"):
    """``vaelab.use.trained.load`` with a clear message for a folder that is not a run."""
    from vaelab.fit import runs
    from vaelab.use.trained import load

    if not run_dir.is_dir():
        state = "is a file" if run_dir.exists() else "does not exist"
        raise ValueError(f"RUN: expected a run directory written by `vaelab train`, got "
                         f"{str(run_dir)!r}, which {state}")
    if not (run_dir / runs.CONFIG_FILE).is_file():
        raise ValueError(f"RUN: {str(run_dir)!r} is not a vaelab run directory (no "
                         f"{runs.CONFIG_FILE}); expected a folder written by `vaelab train`")
    from vaelab._runtime import resolve_device

    return load(run_dir, device=resolve_device(device, "--device"))


def _claim(*paths: Path) -> None:
    """Lock every run directory that one of ``paths`` (files about to be written) lies in:
    one writer per run (``vaelab.fit.lock``); other folders need no lock."""
    from vaelab.fit import lock, runs

    for path in paths:
        folder = path.parent
        if (folder / runs.CONFIG_FILE).is_file():
            lock.lock_run(folder)


def _masked_run(trained) -> bool:
    """Whether the run was trained with --missing mask (its encoder reads NaN)."""
    return trained.config.model.missing == "mask"


def _load_held_out(trained, source: str, split: str, allow_missing: bool):
    """load_dataset, with one line for a --missing mask run given incomplete data."""
    from vaelab import data

    try:
        return data.load_dataset(source, split, allow_missing=allow_missing)
    except ValueError as err:
        if not _masked_run(trained) or data.MISSING_HINT not in str(err):
            raise
        raise ValueError(f"--data: expected complete held-out data (no NaN or empty cells) for "
                         f"this command, got missing entries in {source!r} (this run was "
                         f"trained on it with --missing mask); pass --data FILE with complete "
                         f"examples (`vaelab impute RUN --data {source} --out FILE` fills in "
                         f"the missing ones; `vaelab encode` reads incomplete data)") from None


def _run_data(trained) -> str:
    """The data a run was trained on, as it recorded them; one line naming the stored path
    and --data when that path is gone (the data moved, or an older run stored it relative to
    the folder it was trained in)."""
    from vaelab import data

    source = trained.config.train.data
    if data.is_named(source) or Path(source).expanduser().exists():
        return source
    relative = "" if Path(source).is_absolute() else (
        ", a path relative to the folder the run was trained in")
    raise ValueError(f"RUN: its training data {source!r}{relative} no longer exist (moved or "
                     f"deleted?); pass --data PATH to where they are now")


def _held_out(trained, source: str | None, split: str | None, seed: int, note: Callable,
              allow_missing: bool = False):
    """The run's evaluation data: (Dataset, split), binarized once (seeded) like training.

    ``allow_missing``: NaN / empty cells stay as missing entries (e.g. encode of a masked run).
    """
    from vaelab import data

    tc = trained.config.train
    source = source or _run_data(trained)
    try:
        dataset = _load_held_out(trained, source, split or "test", allow_missing)
        split = split or "test"
    except ValueError:
        if split is not None or not Path(source).exists():   # only user files lack splits
            raise
        dataset, split = _load_held_out(trained, source, "train", allow_missing), "train"
        note(f"note: {source} has no test split; using all of its examples")
    if dataset.x.shape[1] != trained.model.data_dim:
        raise ValueError(f"data: the run's model expects {trained.model.data_dim} values per "
                         f"example, got {dataset.x.shape[1]} from {source!r}")
    if tc.binarize != "none" and allow_missing:       # one seeded draw, NaN kept
        from dataclasses import replace

        import torch

        from vaelab.fit.masked import _binarize_keep_nan

        x = _binarize_keep_nan(dataset.x.float(), torch.Generator().manual_seed(seed))
        dataset = replace(dataset, x=x, kind="binary")
    elif tc.binarize != "none":
        dataset = data.static_binarize(dataset, seed)
    likelihood = getattr(getattr(trained.model, "decoder", None), "likelihood", None)
    if likelihood is not None and hasattr(likelihood, "check_support"):   # outside: one line
        likelihood.check_support(dataset.x.nan_to_num(0.0) if allow_missing else dataset.x,
                                 "--data")
    return dataset, split


def _infer(trained) -> Callable | None:
    """q(z|x) for held-out x as the run was trained: the encoder, refined if semi-amortized."""
    tc = trained.config.train
    if tc.inference == "per-datapoint":
        raise ValueError("RUN: this run used --inference per-datapoint, which trains no "
                         "encoder, so q(z|x) for new data is not available")
    from vaelab.infer.schemes import Amortized, scheme_for

    scheme = scheme_for(tc, trained.model)     # refined as in training (same draws and steps)
    return None if isinstance(scheme, Amortized) else (lambda x: scheme(x))


def _printer(quiet: bool) -> Callable[[str], None]:
    return (lambda _line: None) if quiet else (lambda line: print(line, flush=True))


# --------------------------------------------------------------------------- train


def _train_overrides(args: argparse.Namespace) -> dict:
    """The flags given on the command line as a config dict (None = not given)."""
    compile_ = {"auto": "auto", "on": True, "off": False, None: None}[args.compile]
    return {"model": {"latent_dim": args.latent_dim, "hierarchy": args.hierarchy,
                      **_component_values(args, MODEL_KINDS),
                      "missing": args.missing, "missing_model": args.missing_model,
                      "standardize": args.standardize},
            "train": {"data": args.data, "epochs": args.epochs, "batch_size": args.batch_size,
                      "lr": args.lr, "binarize": args.binarize, "seed": args.seed,
                      "device": args.device, "limit": args.limit, "classes": args.classes,
                      "perturb_fraction": args.perturb_fraction, "inference": args.inference,
                      "val_fraction": args.val_fraction,
                      "schedule": args.schedule, "phi_steps": args.phi_steps,
                      "phi_lr": args.phi_lr, "drop_empty_rows": args.drop_empty_rows,
                      **_component_values(args, TRAIN_KINDS), "num_samples": args.num_samples,
                      "beta": args.beta, "grad_clip": args.grad_clip,
                      "early_stopping_patience": args.early_stopping, "compile": compile_,
                      "ema_decay": args.ema, "lr_warmup_epochs": args.lr_warmup,
                      "precision": args.precision}}


def _train_config(args: argparse.Namespace, run_dir: Path):
    """RunConfig from (the resumed run's config.json,) --config and the flags, in that order."""
    from vaelab import config as config_

    base: dict = {}
    if args.resume is not None:
        base = config_.load_config_file(run_dir / "config.json")
    if args.background_of is not None:
        base = _background_base(args, config_)
    if args.config is not None:
        base = config_.merge(base, config_.load_config_file(args.config))
    merged = config_.merge(base, _train_overrides(args))
    model = merged.get("model", {})        # the model's flags first: before its options' checks
    _check_component_flags(args, {kind: model.get(catalogue.FIELDS[kind]) or
                                  catalogue.names(kind)[0] for kind in MODEL_KINDS})
    config = config_.RunConfig.from_dict(merged)
    _check_given_flags(args, config)    # flags the run would silently ignore
    return config


def _check_given_flags(args: argparse.Namespace, config) -> None:
    """Refuse a flag given on the command line that this run would ignore.

    Only flags the user gave are checked (a config file's values are left alone): one line
    naming the flag, what it needs, and what the run has instead.
    """
    m, t = config.model, config.train
    if args.kl_schedule == "constant" and t.kl_warmup_epochs > 0:
        raise UsageError(f"--kl-warmup {t.kl_warmup_epochs:g} and --kl-schedule constant: a "
                         f"warm-up ramps the KL weight, a constant schedule has none; expected "
                         f"--kl-schedule linear (or no --kl-schedule), got --kl-schedule constant")
    _check_component_flags(args, {kind: getattr(t, catalogue.FIELDS[kind])
                                  for kind in TRAIN_KINDS})   # after the config's own rules
    layers = isinstance(m.latent_dim, tuple)
    checks = (
        ("--hierarchy ladder", args.hierarchy == "ladder", layers,
         "several latent sizes (--latent-dim N,N,...)", f"--latent-dim {m.latent_dim}"),
        ("--drop-empty-rows", args.drop_empty_rows, m.missing == "mask", "--missing mask",
         f"--missing {m.missing}"),
        (f"--objective {t.objective}", args.objective is not None or args.num_samples is not None,
         t.objective == "elbo" or t.num_samples > 1,
         "--num-samples K >= 2 (with K = 1 it is the plain ELBO: use --objective elbo)",
         f"--num-samples {t.num_samples}"),
    )
    for flag, given, applies, needs, got in checks:
        if given not in (None, False) and not applies:
            raise UsageError(f"{flag}: needs {needs}, got {got}")


def _background_base(args: argparse.Namespace, config_) -> dict:
    """--background-of RUN: RUN's config, perturbed inputs (μ = --perturb-fraction or 0.2)."""
    if args.resume is not None:
        raise UsageError("--background-of and --resume: expected at most one of them, got both")
    if not (args.background_of / "config.json").is_file():
        raise ValueError(f"--background-of: expected a run directory written by `vaelab "
                         f"train`, got {str(args.background_of)!r} (no config.json)")
    base = config_.load_config_file(args.background_of / "config.json")
    if args.perturb_fraction is None:
        args.perturb_fraction = 0.2
    if args.perturb_fraction == 0:
        raise ValueError("--perturb-fraction: a background model needs perturbed inputs, "
                         "expected a number in (0, 1), got 0")
    return base


def _default_out() -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    out, i = Path("runs") / stamp, 1
    while out.exists():
        i += 1
        out = Path("runs") / f"{stamp}-{i}"
    return out


def _run_dir(args: argparse.Namespace) -> Path:
    if args.resume is not None and args.overwrite:
        raise UsageError("--resume and --overwrite: expected at most one of them, got both")
    if args.resume is not None:
        if args.out is not None and args.out.resolve() != args.resume.resolve():
            raise UsageError(f"--out {args.out} and --resume {args.resume}: a resumed run "
                             f"stays in its own folder; drop --out")
        if not (args.resume / "config.json").is_file():
            raise ValueError(f"--resume: expected a run directory written by `vaelab train`, "
                             f"got {str(args.resume)!r} (no config.json)")
        return args.resume
    return args.out if args.out is not None else _default_out()


def cmd_train(args: argparse.Namespace) -> int:
    """``vaelab train``: validate everything, train, then say where the results are."""
    from vaelab.data import first_missing, remove_empty_dirs
    from vaelab.fit import runs

    train_ = importlib.import_module("vaelab.fit.train")   # the module, whatever vaelab re-exports
    run_dir = _run_dir(args)
    config = _train_config(args, run_dir)
    created = first_missing(run_dir)
    from vaelab.fit import lock

    log = _printer(args.quiet)
    from vaelab.show.plots import write_run_figures

    logger = None
    lock.lock_run(run_dir, "--resume" if args.resume is not None else "--out")
    try:       # checked again under the lock: another writer may have just finished a run
        if args.resume is None and not args.overwrite and runs.run_exists(run_dir):
            raise ValueError(f"--out: {str(run_dir)!r} already holds a run; pass --resume "
                             f"{run_dir} to continue it or --overwrite to replace it")
        if args.tensorboard:
            from vaelab.show import tensorboard

            logger = tensorboard.open_logger(run_dir)  # one line if tensorboard is missing
        result = train_.train(config, run_dir, resume=args.resume is not None,
                              overwrite=args.overwrite, progress=not args.quiet, log=log,
                              figures=write_run_figures, on_epoch=logger)
    except BaseException as exc:
        lock.unlock_run(run_dir)      # its file would keep a created folder from being removed
        remove_empty_dirs(run_dir, created)
        if isinstance(exc, KeyboardInterrupt) and (run_dir / runs.CONFIG_FILE).is_file():
            print(f"vaelab: interrupted; every finished epoch is saved: continue with "
                  f"`vaelab train --resume {run_dir}`", file=sys.stderr)
            raise SystemExit(EXIT_INTERRUPTED) from None
        raise
    finally:
        if logger is not None:
            logger.close()
    if getattr(result, "nothing_to_do", None):   # a finished run, untouched
        if args.quiet:
            print(result.nothing_to_do)
        return 0
    _report_run(result.run_dir, config.train.inference, config.model.missing == "mask")
    return 0


def _report_run(run_dir: Path, inference: str = "amortized", masked: bool = False) -> None:
    if int(os.environ.get("RANK", "0") or 0) != 0:   # torchrun: the summary once, on rank 0
        return
    names = ("samples.png", "reconstructions.png", "curves.png", "latent.png")
    pictures = [str(run_dir / n) for n in names if (run_dir / n).is_file()]
    print(f"run directory: {run_dir}")
    print(f"model: {run_dir / 'model.safetensors'}  metrics: {run_dir / 'metrics.jsonl'}")
    if pictures:
        print("pictures: " + "  ".join(pictures))
    if inference == "per-datapoint":   # no encoder: q(z|x) exists for the training rows only
        print(f"next: vaelab sample {run_dir}  (a per-datapoint run has no encoder for new "
              "data, so evaluate, reconstruct and gaps do not apply)")
    elif masked:        # evaluate needs complete held-out data
        print(f"next: vaelab impute {run_dir} --data FILE --out FILE  (fill in missing "
              f"entries), or vaelab evaluate {run_dir} --data COMPLETE_FILE")
    else:
        print(f"next: vaelab evaluate {run_dir}")


# --------------------------------------------------------------------------- evaluate


def _eval_targets(args: argparse.Namespace, note: Callable) -> list[Path]:
    """Where eval.json goes: RUN/eval.json when writable, and --out; checked before computing."""
    targets = []
    if args.out is not None:
        if args.out.suffix.lower() != ".json" or args.out.is_dir():
            raise ValueError(f"--out: expected a .json file name, got {str(args.out)!r}")
        targets.append(_writable_dir(args.out.parent, "--out") / args.out.name)
    try:
        targets.insert(0, _writable_dir(args.run, "RUN") / EVAL_FILE)
    except ValueError:
        if not targets:
            raise ValueError(f"RUN: cannot write {str(args.run / EVAL_FILE)!r}; pass "
                             f"--out FILE.json to write the results elsewhere") from None
        note(f"note: {args.run} is not writable; writing only {args.out}")
    return targets


def cmd_evaluate(args: argparse.Namespace) -> int:
    """``vaelab evaluate``: the test protocol, written to RUN/eval.json (and --out)."""
    from vaelab.fit import runs
    from vaelab.measure.evaluate import evaluate_model

    note = _printer(False)
    estimator = _estimator(args)
    trained = _load_run(args.run, args.device)
    infer = _infer(trained)
    targets = _eval_targets(args, note)
    _claim(*targets)
    dataset, split = _held_out(trained, args.data, args.split, args.seed, note)
    from vaelab._runtime import isolated_rng

    start = time.perf_counter()
    with isolated_rng(args.seed):
        result = evaluate_model(trained.model, dataset.x.to(trained.device),
                                num_samples=estimator.draws, seed=args.seed,
                                estimator=None if estimator.is_plain else estimator,
                                batch_size=args.batch_size, limit=args.limit or None,
                                data_kind=dataset.kind,
                                infer=infer, per_example=True,
                                progress=not args.quiet and sys.stderr.isatty())
    result = {"run": str(args.run), "data": dataset.name, "split": split,
              "binarized": trained.config.train.binarize != "none", "seed": args.seed,
              "seconds": round(time.perf_counter() - start, 2),
              "trained_with": trained_with(trained.config.train),
              "estimator": estimator.describe(), **result, **_sandwich(trained, estimator, args)}
    if "bdmc" in result:
        line = _sandwich_warning(result["bdmc"], estimator)
        if line is not None:
            result["warnings"] = [*result.get("warnings", []), line]
    from vaelab.measure import shard

    if not shard.is_main_process():   # torchrun: every rank computed; rank 0 reports
        return 0
    for path in targets:
        runs.atomic_write_json(path, result)
    print(_with_meaning(format_evaluation(result), result))
    print(_estimator_lines(result))
    tw = result["trained_with"]
    print(f"trained with: objective {tw['objective']} (K = {tw['num_samples']}), β {tw['beta']:g} "
          f"({tw['kl_schedule']}), free bits {tw['free_bits']:g}; the ELBO above is the true "
          f"one (β = 1, no free bits)")
    print("written: " + "  ".join(str(p) for p in targets))
    return 0


def trained_with(tc) -> dict:
    """What objective trained a run (eval.json's ``trained_with``); the ELBO and log p̂(x)
    reported beside it are always the true ones (β = 1, no free bits)."""
    return {"objective": tc.objective, "num_samples": tc.num_samples, "beta": tc.beta,
            "kl_schedule": tc.kl_schedule, "kl_warmup_epochs": tc.kl_warmup_epochs,
            "kl_cycles": tc.kl_cycles, "kl_ratio": tc.kl_ratio, "free_bits": tc.free_bits}


def _meaning_labels(r: dict) -> tuple[str, str, str]:
    """The (log p̂, ELBO, gap) row labels of the evaluate table by what log p̂ means."""
    meaning = (r.get("likelihood_meaning") or {}).get("meaning")
    if meaning == "score":
        return "unnormalised score", "ELBO-score (nats)", "score − ELBO-score"
    if meaning == "density":
        return "log density (nats)", "ELBO (nats)", "log p(x) − ELBO (nats)"
    return "log p(x) (nats)", "ELBO (nats)", "log p(x) − ELBO (nats)"


def _with_meaning(table: str, r: dict) -> str:
    """The table (already labelled by what log p̂ means), then that meaning in a line."""
    meaning = r.get("likelihood_meaning") or {}
    return table + (f"\nnote: {meaning['note']}" if meaning else "")


def _estimator(args: argparse.Namespace):
    """The log p(x) estimator of ``vaelab evaluate`` from its flags (``vaelab.catalogue``):
    a flag given on the command line must belong to the chosen --estimator."""
    from vaelab import catalogue
    from vaelab.measure.estimators import build_estimator

    entry = catalogue.get("estimator", args.estimator, "--estimator")
    options = {}
    for flag, (option, _) in catalogue.flags("estimator").items():
        value = getattr(args, flag.lstrip("-").replace("-", "_"))
        if flag == "--k":              # a default of every evaluation: used where it applies
            if any(o.name == option.name for o in entry.options):
                options[option.name] = value
            continue
        if value is not None:
            catalogue.check_flag_owner("estimator", flag, entry.name, "--estimator")
            options[option.name] = value
    refine = [flag for flag in ("--refine-steps", "--refine-draws")
              if getattr(args, flag[2:].replace("-", "_")) is not None]
    if refine and args.proposal not in ("refined", "mixture"):
        raise ValueError(f"{refine[0]}: applies to --proposal refined or mixture, got "
                         f"--proposal {args.proposal or 'encoder'}")
    return build_estimator(entry.name, **options)


def _estimator_lines(r: dict) -> str:
    """What estimated log p(x) (and, for bdmc, the sandwich), in one or two lines."""
    e = r["estimator"]
    cost = e["cost_per_example"]
    what, bound = e["summary"], e["gradient_bound"]
    quantity = {"score": "unnormalised score", "density": "log density"}.get(
        str((r.get("likelihood_meaning") or {}).get("meaning")), "log p(x)")   # a score or p
    lines = [f"{quantity} estimator: {what}; a stochastic lower bound on it; per example "
             f"{cost['forward']} log p(x,z) evaluations + {bound}{cost['gradient']} with "
             f"gradient"]
    if "bdmc" in r:
        b = r["bdmc"]
        lines.append(f"BDMC on {b['num_examples']} simulated examples: lower "
                     f"{b['lower']['mean']:.3f}, upper {b['upper']['mean']:.3f}, gap "
                     f"{b['gap']['mean']:.3f} nats (max {b['gap']['max']:.3f})")
    return "\n".join(lines)


#: A BDMC gap above this many nats (mean over the simulated examples) is warned about.
SANDWICH_WARN = 0.5


def _sandwich_warning(b: dict, estimator) -> str | None:
    """One line when the BDMC sandwich is wide: the AIS schedule is far from exact."""
    gap = b.get("gap", {}).get("mean")
    if gap is None or gap <= SANDWICH_WARN:
        return None
    return (f"warning: the BDMC gap is {gap:.2f} nats (max {b['gap']['max']:.2f}): with "
            f"--ais-steps {estimator.steps} AIS is that far from exact on data of this model, "
            f"so its log p(x) may be as loose; raise --ais-steps until the gap is small "
            f"(< 0.1 nat)")


def _sandwich(trained, estimator, args: argparse.Namespace) -> dict:
    """What the estimator adds beyond log p̂ (bdmc: the sandwich on as many simulated
    examples as were evaluated, at most 100)."""
    n = min(args.limit or 100, 100)
    return estimator.extra(trained.model, n, seed=args.seed, batch_size=args.batch_size)


def format_evaluation(r: dict) -> str:
    """A short plain-text table of an :func:`evaluate_model` result.

    An undefined statistic prints as "undefined" and a non-finite one as what it is (-inf,
    nan), never as a number it is not; the result's warnings follow the table.
    """
    from vaelab.measure.evaluate import se_rule_note
    from vaelab.measure.honest import cell

    ll, bpd, ess = r["log_likelihood"], r["nll_bits_per_dim"], r["ess"]
    ais = (r.get("estimator") or {}).get("unit") == "chain"   # AIS counts chains, not samples
    draws = f"C = {r['num_samples']} AIS chains" if ais else (
        f"k = {r['num_samples']} importance samples")
    lines = [f"{r.get('data', 'data')} {r.get('split', '')}: {r['num_examples']} of "
             f"{r['population_size']} examples, {draws}",
             f"{'quantity':<26}{'mean':>12}{'± SE':>10}"]
    ll_label, elbo_label, gap_label = _meaning_labels(r)   # relabelled before padding
    for stats, label, fmt in ((r["elbo"], elbo_label, ".3f"),
                              (r["rate"], "rate KL(q‖p) (nats)", ".3f"),
                              (r["distortion"], "distortion (nats)", ".3f"),
                              (ll, ll_label, ".3f"), (bpd, "NLL (bits/dim)", ".4f"),
                              (r["gap"], gap_label, ".3f")):
        lines.append(f"{label:<26}{cell(stats, 'mean', fmt):>12}{_se_cell(stats, fmt):>10}")
    ess_label = "ESS (of C)" if ais else "ESS (of k)"
    lines.append(f"{ess_label:<26}{cell(ess, 'mean', '.1f'):>12}  min "
                 f"{cell(ess, 'min', '.3g')}, median {cell(ess, 'median', '.3g')}")
    units = "n/a" if r["active_units"] is None else str(r["active_units"])
    lines.append(f"{'active units':<26}{units:>12}  of {r['latent_dim']} "
                 f"(Var_x E[z_u|x] > {r['active_threshold']})")
    lines.append("note: " + se_rule_note(r))
    if ll.get("se") is None and (ll.get("se_data") or 0) > 0:
        lines.append(f"note: ≥: with one draw per example the Monte Carlo part of the ± of "
                     f"{ll_label.split(' (')[0]} (and bits/dim) is undefined; shown is its "
                     f"between-example part, a lower bound on the whole ±")
    return "\n".join(lines + _layer_lines(r) + list(r.get("warnings", ())))


def _se_cell(stats: dict, fmt: str) -> str:
    """The ± cell: the standard error, or "≥" its between-example part when only that is
    defined (k = 1), else what :func:`honest.cell` says (undefined, non-finite)."""
    from vaelab.measure.honest import cell

    part = stats.get("se_data")
    if stats.get("se") is None and isinstance(part, (int, float)) and part > 0:
        return "≥" + format(part, fmt)
    return cell(stats, "se", fmt)


def _layer_lines(r: dict) -> list[str]:
    """A hierarchical model's rate and active units per latent layer."""
    if "rate_per_layer" not in r:
        return []
    lines = []
    for i, (rate, au, size) in enumerate(zip(r["rate_per_layer"], r["active_units_per_layer"],
                                             r["units_per_layer"], strict=True)):
        se = "undefined" if rate["se"] is None else f"{rate['se']:.3f}"
        lines.append(f"{f'  layer {i + 1} rate (nats)':<26}{rate['mean']:>12.3f}{se:>10}  "
                     f"active units {'n/a' if au is None else au} of {size}")
    return lines        # the collapse / zero-rate warning is in r["warnings"] (eval.json)


# --------------------------------------------------------------------------- pictures


def cmd_sample(args: argparse.Namespace) -> int:
    """``vaelab sample``: a grid of n samples."""
    from vaelab.show import plots

    trained = _load_run(args.run, args.device)
    _check_memory("-n", args.n, _bytes_per_sample(trained.config.model))
    out = _png_path(args.out or args.run / f"samples-{args.n}.png", "--out")
    _claim(out)
    path = plots.write_samples(trained.model, out, args.n, trained.config.model.image_shape,
                               seed=args.seed, nrow=args.nrow,
                               value_range=(0.0, 1.0) if trained.config.train.data in (
                                   "fashion-mnist", "mnist") else None)
    print(f"wrote {path}")
    return 0


def _available_memory() -> int | None:
    """Bytes of memory available now (Linux: MemAvailable), None where it cannot be read."""
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def _bytes_per_sample(model_config) -> int:
    """About how many bytes one sample costs at its peak: z, every hidden layer, the
    likelihood's parameters, E[x|z] and its copies for the picture (float32, twice over)."""
    latent = model_config.latent_dim
    latent = sum(latent) if isinstance(latent, tuple) else latent
    d = model_config.data_dim or 1
    return 2 * 4 * (latent + 2 * sum(model_config.hidden) + 8 * d)


def _check_memory(flag: str, count: int, each: int) -> None:
    """One line, before anything is allocated, when ``count`` items of ``each`` bytes would
    not fit in the memory available now."""
    available = _available_memory()
    if available is None or count * each <= available:
        return
    raise ValueError(f"{flag}: {count} needs about {count * each / 2**30:.3g} GiB of memory, "
                     f"{available / 2**30:.3g} GiB are available; expected {flag} <= "
                     f"{max(1, available // each)}, got {count}")


def cmd_reconstruct(args: argparse.Namespace) -> int:
    """``vaelab reconstruct``: n held-out examples above their reconstructions."""
    import torch

    from vaelab.show import plots

    trained = _load_run(args.run, args.device)
    _infer(trained)
    out = _png_path(args.out or args.run / f"reconstructions-{args.n}.png", "--out")
    _claim(out)
    dataset, _ = _held_out(trained, args.data, args.split, args.seed, _printer(False))
    generator = torch.Generator().manual_seed(args.seed)
    index = torch.randperm(len(dataset), generator=generator)[:args.n]
    x = dataset.x[index.sort().values].to(trained.device)
    path = plots.write_reconstructions(trained.model, x, out, trained.config.model.image_shape,
                                       binarized=trained.config.train.binarize != "none",
                                       value_range=plots.data_range(dataset))
    print(f"wrote {path}")
    return 0


def cmd_gaps(args: argparse.Namespace) -> int:
    """``vaelab gaps``: approximation and amortization gaps on held-out data."""
    from vaelab.measure import gaps

    trained = _load_run(args.run, args.device)
    _infer(trained)
    out = _writable_dir(args.out or args.run, "--out")
    _claim(out / "gaps.json")
    dataset, _ = _held_out(trained, args.data, args.split, args.seed, _printer(False))
    x = dataset.x[:args.limit].to(trained.device)
    report = gaps.report_gaps(trained.model, x, num_samples=args.k, steps=args.steps,
                              out_dir=out, seed=args.seed,
                              data_kind=dataset.kind)    # log p(x) or a score
    print(report.table())
    print(f"wrote {out / 'gaps.json'}  {out / 'gaps.png'}")
    return 0


def cmd_complete(args: argparse.Namespace) -> int:
    """``vaelab complete``: fill in the hidden top half of n held-out images."""
    from vaelab.use import complete as missing

    trained = _load_run(args.run, args.device)
    _infer(trained)
    if trained.config.model.image_shape is None:
        raise ValueError("RUN: `complete` needs a run trained on images (image_shape is None)")
    out = _png_path(args.out or args.run / "completions.png", "--out")
    _claim(out)
    dataset, _ = _held_out(trained, args.data, args.split, args.seed, _printer(False))
    x = dataset.x[:args.n].to(trained.device)
    result = missing.complete_top_half(trained.model, x, out, steps=args.steps,
                                       samples=args.samples, seed=args.seed,
                                       image_shape=trained.config.model.image_shape)
    print(f"accuracy on the hidden half: {result['accuracy']:.3f} (marginal guess "
          f"{result['baseline_accuracy']:.3f}, another image's completion "
          f"{result['mismatched_accuracy']:.3f}; {result['num_images']} images)")
    print(f"wrote {out}")
    return 0


def cmd_impute(args: argparse.Namespace) -> int:
    """``vaelab impute``: fill in the missing entries of a table."""
    from vaelab.use import impute

    trained = _load_run(args.run, args.device)
    if not _masked_run(trained):
        raise ValueError(f"RUN: `impute` needs a run trained with --missing mask, got "
                         f"{str(args.run)!r} (trained on complete data; for images see "
                         f"`vaelab complete`)")
    _claim(args.out)
    result = impute.impute_file(trained, args.data, args.out, draws=args.draws,
                                num_samples=args.k, seed=args.seed)
    print(f"imputed {result['missing']} missing entries in {result['rows']} rows; wrote "
          f"{result['out']} (shape {result['shape']})")
    for line in result["warnings"]:          # importance sampling, as evaluate warns
        print(line)
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    """``vaelab report``: the HTML page."""
    from vaelab.show import report

    for run in args.runs:
        if not run.is_dir():
            state = "is a file" if run.exists() else "does not exist"
            raise ValueError(f"RUN: expected a run directory, got {str(run)!r}, which {state}")
    out = args.out or (args.runs[0] / "report.html" if len(args.runs) == 1
                       else Path("vaelab-report.html"))
    _claim(out)
    path = report.write_report(args.runs, out, title=args.title)
    print(f"report: {path}")
    return 0


def cmd_runs(args: argparse.Namespace) -> int:
    """``vaelab runs``: the table of runs."""
    from vaelab.show import runs_table

    print(runs_table.format_runs(args.dir))
    return 0


def cmd_figures(args: argparse.Namespace) -> int:
    """``vaelab figures``: the lecture's illustrations."""
    from vaelab.show import figures

    out = _writable_dir(args.out, "--out")
    for path in figures.make_all(out, small=args.small):
        print(f"wrote {path}")
    return 0


# --------------------------------------------------------------------------- score, encode, cluster

SCORE_CHOICES = ("elbo", "log-likelihood", "input-complexity", "likelihood-ratio", "regret")


def class_list(text: str) -> tuple[int, ...]:
    """``"0,1"`` → (0, 1); every label an integer >= 0."""
    try:
        labels = tuple(int(part) for part in text.split(","))
    except ValueError:
        labels = ()
    if not labels or min(labels) < 0:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated class labels >= 0 such as 0,1, got {text!r}")
    return labels


def _add_score(commands) -> None:
    p = commands.add_parser(
        "score", help="anomaly / out-of-distribution scores, one row per example",
        description="Score every example for anomaly (higher = more anomalous); --score NAME "
        "→ CSV column: elbo → neg_elbo; log-likelihood → nll (−log p̂(x), importance sampled) "
        "and nll_se (its SE, an empty cell where undefined, e.g. --k 1); input-complexity → "
        "input_complexity (−log₂ p̂(x) minus the PNG/zlib length in bits, Serrà et al. 2020; "
        "8-bit or binary data only); likelihood-ratio → neg_llr (log p̂_background − log p̂, "
        "Ren et al. 2019; needs --background); regret → regret (ELBO gain of re-fitting q to "
        "the example, Xiao et al. 2020). Writes a CSV; with labels (1 = anomalous) also AUROC, "
        "AUPRC, FPR at 95% TPR (a JSON beside the CSV) and an ROC figure.")
    p.add_argument("run", type=Path, metavar="RUN")
    _add_run_data(p)
    p.add_argument("--score", nargs="+", choices=SCORE_CHOICES, metavar="NAME",
                   help="scores to compute (NAME → CSV column): elbo → neg_elbo, "
                        "log-likelihood → nll and nll_se, input-complexity → "
                        "input_complexity, likelihood-ratio → neg_llr, regret → regret "
                        "(default: all; likelihood-ratio only with --background, "
                        "input-complexity only on 8-bit or binary data)")
    p.add_argument("--labels", type=Path, metavar="FILE", help="0 (normal) or 1 (anomalous) "
                   "per example, in a .npy, .txt or .csv file")
    p.add_argument("--normal-classes", type=class_list, metavar="C,C,...", help="labels from "
                   "the data's own classes: 0 for these classes, 1 for every other")
    p.add_argument("--background", type=Path, metavar="RUN", help="the background model of "
                   "likelihood-ratio (trained by `vaelab train --background-of RUN`)")
    p.add_argument("--out", type=Path, metavar="FILE.csv", help="default: RUN/scores.csv")
    p.add_argument("--roc", type=Path, metavar="FILE.png",
                   help="ROC figure with labels (default: <out>-roc.png)")
    p.add_argument("--k", type=positive_int, metavar="K", default=100,
                   help="importance samples per example (default 100)")
    p.add_argument("--regret-steps", type=positive_int, metavar="N", default=100,
                   help="most Adam steps re-fitting q for regret (default 100)")
    p.add_argument("--limit", type=non_negative_int, metavar="N", default=0,
                   help="score the first N examples, 0 = all (default 0)")
    p.add_argument("--seed", type=non_negative_int, metavar="N", default=0,
                   help="seeds the binarization of the data and the sampling")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_score)


def _add_encode(commands) -> None:
    p = commands.add_parser("encode", help="latent codes of data as a .npy array",
                            description="Encode data with the run's q(z | x) and write an N × L "
                            "float32 array: posterior means E_q[z | x], or one draw each with "
                            "--sample (a hierarchical run: every layer, concatenated bottom "
                            "to top).")
    p.add_argument("run", type=Path, metavar="RUN")
    _add_run_data(p)
    p.add_argument("--out", type=Path, required=True, metavar="FILE.npy")
    p.add_argument("--sample", action="store_true", help="draw z ~ q(z | x) instead of its mean")
    p.add_argument("--limit", type=non_negative_int, metavar="N", default=0,
                   help="encode the first N examples, 0 = all (default 0)")
    p.add_argument("--seed", type=non_negative_int, metavar="N", default=0)
    p.set_defaults(func=cmd_encode)


def _add_cluster(commands) -> None:
    p = commands.add_parser(
        "cluster", help="clusters in latent space, scored against class labels",
        description="Cluster the codes E_q[z | x]: k-means (scikit-learn), or the mixture "
        "prior's responsibilities p(c | z) for a run trained with --prior mog (as VaDE). With "
        "labels (--labels, else the data's own) prints accuracy under the best one-to-one "
        "cluster → class map, NMI, ARI and the linear-probe accuracy of the codes.")
    p.add_argument("run", type=Path, metavar="RUN")
    _add_run_data(p)
    p.add_argument("--labels", type=Path, metavar="FILE",
                   help="integer class per example (.npy, .txt, .csv); default: the data's own")
    p.add_argument("--clusters", type=positive_int, metavar="K",
                   help="k-means clusters (default: the number of classes, else 10)")
    p.add_argument("--method", choices=("auto", "kmeans", "prior"), default="auto",
                   help="auto: prior for a --prior mog run, else kmeans")
    p.add_argument("--limit", type=non_negative_int, metavar="N", default=0,
                   help="the first N examples, 0 = all (default 0)")
    p.add_argument("--seed", type=non_negative_int, metavar="N", default=0)
    p.add_argument("--out", type=Path, metavar="FILE.csv",
                   help="also write each example's cluster (and label)")
    p.set_defaults(func=cmd_cluster)


def _out_path(path: Path, suffix: str, flag: str) -> Path:
    """``path`` checked to end in ``suffix``, not a folder, in a writable folder."""
    if path.suffix.lower() != suffix or path.is_dir():
        raise ValueError(f"{flag}: expected a {suffix} file name, got {str(path)!r}")
    _writable_dir(path.parent, flag)
    return path


def _read_labels(path: Path, flag: str):
    """One number per example from a .npy (never unpickled), .txt or .csv file → array [N]."""
    import warnings

    import numpy as np

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")          # an empty file: reported by the caller
            if path.suffix.lower() == ".npy":
                values = np.load(path, allow_pickle=False)
            else:
                values = np.loadtxt(path, ndmin=1,
                                    delimiter="," if path.suffix.lower() == ".csv" else None)
    except (OSError, ValueError) as exc:
        raise ValueError(f"{flag}: cannot read one number per example from {str(path)!r}: "
                         f"{_one_line(exc)}") from None
    values = values.reshape(-1) if values.ndim == 2 and 1 in values.shape else values
    if values.ndim != 1:
        raise ValueError(f"{flag}: expected one value per example, got shape "
                         f"{list(values.shape)} from {str(path)!r}")
    return values


def _examples(args: argparse.Namespace, trained, allow_missing: bool = False):
    """The data a use-command works on: (Dataset, split), the first --limit rows."""
    dataset, split = _held_out(trained, args.data, args.split, args.seed, _printer(False),
                               allow_missing)
    if args.limit:
        dataset = dataset.subset(slice(0, args.limit))
    return dataset, split


def _anomaly_labels(args: argparse.Namespace, dataset):
    """0/1 labels from --labels or --normal-classes (None without either), checked."""
    from vaelab.use.detect import check_labels

    if args.labels is not None and args.normal_classes is not None:
        raise UsageError("--labels and --normal-classes: expected at most one, got both")
    if args.labels is not None:
        values = _read_labels(args.labels, "--labels")
        return check_labels(values, len(dataset), "--labels")
    if args.normal_classes is None:
        return None
    if dataset.labels is None:
        raise ValueError(f"--normal-classes: expected data with class labels, got "
                         f"{dataset.name!r}, which has none; pass --labels FILE")
    import torch

    normal = torch.isin(dataset.labels, torch.tensor(args.normal_classes))
    return check_labels((~normal).long().numpy(), len(dataset), "--normal-classes")


def _score_names(args: argparse.Namespace) -> tuple[str, ...]:
    if args.score is None:
        names = [n for n in SCORE_CHOICES if n != "likelihood-ratio" or args.background]
        return tuple(names)
    if "likelihood-ratio" in args.score and args.background is None:
        raise ValueError("--score likelihood-ratio: needs --background RUN (a model trained "
                         "by `vaelab train --background-of RUN`), got none")
    return tuple(dict.fromkeys(args.score))


def _names_for_data(args: argparse.Namespace, names, dataset, note: Callable):
    """``names`` without input-complexity when the data are not 8-bit or binary values (it
    compares with a compressor of discrete values)."""
    from vaelab.data import kind_of

    kind = kind_of(dataset)
    if "input-complexity" not in names or kind in ("8-bit", "binary"):
        return names
    if args.score is not None:
        raise ValueError(f"--score input-complexity: expected 8-bit or binary data (it "
                         f"compresses them as 8-bit images), got {kind} data; drop it")
    note(f"note: input-complexity skipped: it needs 8-bit or binary data (it compresses them "
         f"as 8-bit images), got {kind} data")
    return tuple(n for n in names if n != "input-complexity")


def _background_model(args: argparse.Namespace, trained, note: Callable):
    background = _load_run(args.background, args.device)
    if background.model.data_dim != trained.model.data_dim:
        raise ValueError(f"--background: expected a model of {trained.model.data_dim} values "
                         f"per example (RUN's), got {background.model.data_dim}")
    if background.config.train.perturb_fraction == 0:
        note(f"note: {args.background} was not trained on perturbed inputs "
             f"(perturb_fraction 0); Ren et al.'s background model is")
    return background.model, background.model.encoder


def cmd_score(args: argparse.Namespace) -> int:
    """``vaelab score``: anomaly scores per example → CSV; metrics and ROC with labels."""
    from vaelab._runtime import isolated_rng
    from vaelab.use import scores as scores_

    note = _printer(False)
    trained = _load_run(args.run, args.device)
    _infer(trained)
    names = _score_names(args)
    out = _out_path(args.out or args.run / "scores.csv", ".csv", "--out")
    roc = _out_path(args.roc or out.with_name(out.stem + "-roc.png"), ".png", "--roc")
    _claim(out, roc)
    background = (_background_model(args, trained, note) if "likelihood-ratio" in names
                  else None)
    dataset, _ = _examples(args, trained)
    names = _names_for_data(args, names, dataset, note)
    labels = _anomaly_labels(args, dataset)
    options = scores_.ScoreOptions(num_samples=args.k, regret_steps=args.regret_steps)
    with isolated_rng(args.seed):
        columns = scores_.anomaly_scores(
            trained.model, dataset.x.to(trained.device), names, background=background,
            image_shape=trained.config.model.image_shape, options=options,
            progress=None if args.quiet or not sys.stderr.isatty() else _progress("score"))
    _write_scores_csv(out, columns, labels)
    print(f"wrote {out}: {len(dataset)} rows, columns {', '.join(columns)} "
          "(higher = more anomalous)")
    meaning = _likelihood_note(trained, dataset.x, note)
    for line in scores_.sampling_warnings(columns, args.k, meaning):   # as evaluate warns
        print(line)
    if labels is not None:
        _report_detection(out, roc, names, columns, labels, dataset.name)
    return 0


def _progress(desc: str) -> Callable:
    from tqdm.auto import tqdm

    return lambda items: tqdm(items, desc=desc, unit="batch", leave=False, dynamic_ncols=True)


def _likelihood_note(trained, x, note: Callable) -> str:
    """Note when nll is only a score; → the likelihood's meaning on x."""
    from vaelab.measure.evaluate import likelihood_meaning

    meaning = likelihood_meaning(trained.model, x)
    if meaning["meaning"] == "score":
        note(f"note: nll is not −log p(x) here: {meaning['note']}")
    return meaning["meaning"]


def _write_scores_csv(path: Path, columns: dict, labels) -> None:
    from vaelab._files import atomic_write_bytes

    names = list(columns)
    header = ["index", *(["label"] if labels is not None else []), *names]
    lines = [",".join(header)]
    for i in range(len(next(iter(columns.values())))):
        cells = [str(i), *([str(int(labels[i]))] if labels is not None else [])]
        values = (float(columns[n][i]) for n in names)    # NaN (undefined) → empty cell
        lines.append(",".join(cells + ["" if v != v else repr(v) for v in values]))
    atomic_write_bytes(path, ("\n".join(lines) + "\n").encode())


def _report_detection(out: Path, roc: Path, names, columns: dict, labels, data: str) -> None:
    """Print and write (JSON beside the CSV) each score's metrics; draw the ROC figure."""
    import numpy as np

    from vaelab._files import atomic_write_json
    from vaelab.show.roc import write_roc
    from vaelab.use.detect import anomaly_metrics, roc_points
    from vaelab.use.scores import SCORE_COLUMNS

    results: dict[str, dict] = {}
    curves: dict = {}
    print(f"{'score':<18}{'column':<18}{'AUROC':>8}{'AUPRC':>8}{'FPR@95%TPR':>12}")
    for name in names:
        values = columns[SCORE_COLUMNS[name]]
        if np.isnan(values).any():
            results[name] = {"undefined": f"{int(np.isnan(values).sum())} NaN scores"}
            print(f"{name:<18}{SCORE_COLUMNS[name]:<18}{'undefined':>8}  "
                  f"({results[name]['undefined']})")
            continue
        m = results[name] = anomaly_metrics(values, labels)
        print(f"{name:<18}{SCORE_COLUMNS[name]:<18}{m['auroc']:>8.3f}{m['auprc']:>8.3f}"
              f"{m['fpr_at_95_tpr']:>12.3f}")
        curves[name] = (*roc_points(values, labels), m["auroc"])
    print(f"{int(labels.sum())} anomalous and {int((labels == 0).sum())} normal examples")
    metrics = atomic_write_json(out.with_suffix(".json"), {"data": data, "metrics": results})
    written = [str(metrics)]
    if curves:
        written.append(str(write_roc(roc, curves, f"ROC on {data}")))
    print("wrote " + "  ".join(written))


def cmd_encode(args: argparse.Namespace) -> int:
    """``vaelab encode``: codes E_q[z | x] (or draws) of the data → an N × L .npy array."""
    import io

    import numpy as np
    import torch

    from vaelab._files import atomic_write_bytes
    from vaelab.use.encode import encode

    trained = _load_run(args.run, args.device)
    _infer(trained)
    out = _out_path(args.out, ".npy", "--out")
    _claim(out)
    masked = _masked_run(trained)       # its encoder reads NaN as missing
    dataset, _ = _examples(args, trained, allow_missing=masked)
    encoder = trained.encode if not masked else (
        lambda x: trained.model.encode(x.to(trained.device, torch.float32)))
    z = encode(encoder, dataset.x, sample=args.sample,
               generator=torch.Generator().manual_seed(args.seed))
    buffer = io.BytesIO()
    np.save(buffer, z.detach().cpu().numpy().astype(np.float32), allow_pickle=False)
    atomic_write_bytes(out, buffer.getvalue())
    what = "one draw z ~ q(z | x)" if args.sample else "posterior means E_q[z | x]"
    layers = trained.config.model.latent_dim
    layers = f" (layers {list(layers)}, bottom first)" if isinstance(layers, tuple) else ""
    print(f"wrote {out}: {z.shape[0]} × {z.shape[1]} float32, {what}{layers}")
    return 0


def _cluster_labels(args: argparse.Namespace, dataset):
    if args.labels is None:
        return None if dataset.labels is None else dataset.labels.numpy()
    values = _read_labels(args.labels, "--labels")
    if values.shape[0] != len(dataset) or not (values == values.round()).all():
        raise ValueError(f"--labels: expected {len(dataset)} integer class labels, one per "
                         f"example, got {values.shape[0]} values from {str(args.labels)!r}")
    return values.astype("int64")


def _assign(args: argparse.Namespace, trained, z, labels):
    """(method, number of clusters, assignments [N]) for the codes z [N, L]."""
    from vaelab.use import cluster

    method = args.method
    if method == "auto":
        clusters = getattr(getattr(trained.model, "prior_module", None), "clusters", False)
        method = "prior" if clusters else "kmeans"     # a prior whose components are clusters
    if method == "prior":
        prior = trained.model.prior()
        if not cluster.is_mixture(prior):
            raise ValueError(f"--method prior: expected a run trained with --prior mog, got "
                             f"prior {trained.config.model.prior!r}; use --method kmeans")
        resp = cluster.prior_responsibilities(prior, z)
        if args.clusters is not None and args.clusters != resp.shape[1]:
            raise ValueError(f"--clusters: the run's mixture prior has {resp.shape[1]} "
                             f"components, got {args.clusters}; drop --clusters")
        return "mixture prior p(c | z)", resp.shape[1], resp.argmax(1).cpu().numpy()
    import numpy as np

    k = args.clusters or (len(np.unique(labels)) if labels is not None else 10)
    return "k-means", k, cluster.kmeans(z.cpu().numpy(), k, seed=args.seed)


def cmd_cluster(args: argparse.Namespace) -> int:
    """``vaelab cluster``: clusters of E_q[z | x]; metrics against class labels."""
    import numpy as np

    from vaelab.use import cluster
    from vaelab.use.encode import encode

    trained = _load_run(args.run, args.device)
    _infer(trained)
    out = None if args.out is None else _out_path(args.out, ".csv", "--out")
    if out is not None:
        _claim(out)
    dataset, _ = _examples(args, trained)
    labels = _cluster_labels(args, dataset)
    z = encode(trained.encode, dataset.x)
    method, k, assignments = _assign(args, trained, z, labels)
    print(f"{len(dataset)} examples of {dataset.name}, {method}: {k} clusters, "
          f"{len(np.unique(assignments))} used")
    if labels is not None:
        m = cluster.cluster_metrics(labels, assignments)
        line = (f"accuracy (best one-to-one map) {m['accuracy']:.4f}  NMI {m['nmi']:.4f}  "
                f"ARI {m['ari']:.4f}")
        folds = cluster.probe_folds(labels)       # fewer than 5 folds for small classes
        if folds:
            probe = cluster.linear_probe_accuracy(z.cpu().numpy(), labels, folds=folds,
                                                  seed=args.seed)
            line += f"  linear-probe accuracy ({folds}-fold) {probe:.4f}"
        print(line)
        if not folds:
            print("note: linear probe skipped: it needs two classes with at least 2 examples "
                  "each (stratified 2-fold); use a larger --limit")
        elif folds < 5:
            print(f"note: linear probe on {folds} folds, not 5: the smallest class has "
                  f"{folds} examples")
    if out is not None:
        from vaelab._files import atomic_write_bytes

        rows = ["index,cluster" + (",label" if labels is not None else "")]
        rows += [f"{i},{c}" + (f",{labels[i]}" if labels is not None else "")
                 for i, c in enumerate(assignments)]
        atomic_write_bytes(out, ("\n".join(rows) + "\n").encode())
        print(f"wrote {out}")
    return 0


# --------------------------------------------------------------------------- main


def _one_line(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        where = f": {exc.filename!r}" if exc.filename else ""
        text = f"{exc.strerror}{where}"
    else:
        text = str(exc) or type(exc).__name__
    return " ".join(text.split())


#: Config field names (Python) → the train flag that sets them: CLI messages name flags.
_FIELD_FLAGS = {"missing_model": "--missing-model", "missing": "--missing", "source": "--data",
                "latent_dim": "--latent-dim", "inference": "--inference",
                "classes": "--classes", "perturb_fraction": "--perturb-fraction",
                "binarize": "--binarize", "schedule": "--schedule"}
_FIELD = "|".join(_FIELD_FLAGS)


def _flag_value(value: str) -> str:
    """'self-masking' → self-masking; (4, 2) → 4,2 (a value as typed after its flag)."""
    value = value.strip("'\"")
    if value.startswith("(") and value.endswith(")"):
        value = ",".join(v.strip() for v in value[1:-1].split(",") if v.strip())
    return _kebab(value)


def _cli_words(text: str) -> str:
    """A library message in CLI words: ``missing_model: 'x'`` → ``--missing-model x``,
    ``missing='mask'`` → ``--missing mask``, ``image_shape: ...`` → ``--net conv: ...``."""
    import re

    if text.startswith("image_shape: expected (C, H, W) for a convolutional net"):
        return ("--net conv: expected image data (--data of images, or a .npy of shape "
                "N × C × H × W), got data without an image shape (N × D)")
    text = re.sub(rf"^({_FIELD}): '([^']*)'",
                  lambda m: f"{_FIELD_FLAGS[m.group(1)]} {_flag_value(m.group(2))}:", text)
    text = re.sub(rf"^({_FIELD}):", lambda m: f"{_FIELD_FLAGS[m.group(1)]}:", text)
    return re.sub(rf"\b({_FIELD})=('[^']*'|\([^)]*\)|[\w.-]+)",
                  lambda m: f"{_FIELD_FLAGS[m.group(1)]} {_flag_value(m.group(2))}", text)


def _known_errors() -> tuple[type[BaseException], ...]:
    errors: list[type[BaseException]] = [ValueError, TypeError, OSError, UsageError]
    training_error = getattr(sys.modules.get("vaelab.fit.train"), "TrainingError", None)
    if training_error is not None:
        errors.append(training_error)
    return tuple(errors)


def _command_names(parser: argparse.ArgumentParser) -> str:
    """'train, evaluate, ... or runs': every sub-command, in the order of ``--help``."""
    actions = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    names = [name for action in actions for name in action.choices]
    return ", ".join(names[:-1]) + " or " + names[-1]


def _quiet_rank() -> int | None:
    """This process's torchrun rank when it is not 0 (it then prints nothing), else None."""
    rank = int(os.environ.get("RANK", "0") or 0)
    return rank if rank != 0 else None


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``vaelab`` command with ``argv`` (default: sys.argv[1:]); → exit code.

    Under torchrun only rank 0 speaks: the other ranks print nothing, except an unexpected
    error of their own (one line naming the rank); errors on user input are the same on
    every rank and rank 0 says them.
    """
    if _quiet_rank() is None:
        return _main(argv)
    import contextlib

    errors = sys.stderr
    with open(os.devnull, "w") as devnull, contextlib.redirect_stdout(devnull), \
            contextlib.redirect_stderr(devnull):
        return _main(argv, errors)


def _main(argv: Sequence[str] | None, errors=None) -> int:
    """:func:`main`; ``errors``: where a silent torchrun rank says its own failure."""
    silent = errors is not None
    debug = os.environ.get(DEBUG_ENV, "") not in ("", "0")
    try:
        parser = build_parser()
        args, extra = parser.parse_known_args(argv)
        if args.command is None:
            raise UsageError(f"expected a command: {_command_names(parser)} "
                             f"(see `vaelab --help`)")
        if extra:
            raise UsageError(f"unrecognized arguments: {' '.join(extra)} (see `vaelab "
                             f"{args.command} --help`)")
        try:
            from vaelab._trust import trusting

            with trusting(args.trust):       # consent to import the factories of these runs
                return args.func(args)
        finally:
            if "vaelab.fit.lock" in sys.modules:      # one writer per run: release ours
                sys.modules["vaelab.fit.lock"].unlock_all()
    except SystemExit as exc:        # --help, --version, or an exit code chosen above
        return exc.code if isinstance(exc.code, int) else 0
    except KeyboardInterrupt:
        if not silent:
            print("vaelab: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as exc:
        if debug:
            raise
        code = EXIT_USAGE if isinstance(exc, UsageError) else EXIT_ERROR
        message = _one_line(exc)
        message = _cli_words(message)    # flags, not Python arguments
        known = isinstance(exc, _known_errors())
        if not known:
            message = (f"unexpected {type(exc).__name__}: {message} (set {DEBUG_ENV}=1 for "
                       f"the traceback)")
        if not silent:
            print(f"vaelab: error: {message}", file=sys.stderr)
        elif not known:                  # torchrun: a rank's own failure, said by that rank
            print(f"vaelab: error: [rank {_quiet_rank()}] {message}", file=errors)
        return code
