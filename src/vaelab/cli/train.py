"""``vaelab train``: its flags, the run's config from them, and the training call.

Role in vaelab: the flags override a ``--config`` file, which overrides a resumed run's
``config.json``; a flag this run would silently ignore is refused in one line
(:func:`_check_given_flags`). The body checks every destination before training, holds the
run directory's lock while it trains (one writer per run), removes a folder it created when
training fails, and says where the results are.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import time
from pathlib import Path

from vaelab import catalogue
from vaelab.cli.common import (
    UsageError,
    class_list,
    ema_decay,
    fraction,
    latent_sizes,
    non_negative_float,
    non_negative_int,
    patience,
    positive_float,
    positive_int,
)
from vaelab.cli.components import (
    MODEL_KINDS,
    TRAIN_KINDS,
    add_component,
    check_component_flags,
    component_values,
)
from vaelab.cli.errors import stopped_by
from vaelab.cli.inputs import printer
from vaelab.dataset_names import data_names


def add_train(commands) -> None:
    p = commands.add_parser("train", help="train a VAE into a run directory",
                            description="Train a VAE. Flags override --config; the run "
                            "directory gets config.json, model.safetensors, metrics.jsonl, "
                            "checkpoint/ and pictures (samples, reconstructions, curves, "
                            "latent space).")
    _add_run_flags(p)
    _add_data_flags(p)
    _add_model_flags(p)
    _add_inference_flags(p)
    _add_objective(p)
    _add_optimizer_flags(p)
    p.set_defaults(func=cmd_train)


def _add_run_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("run",
                             "where the run comes from and goes")
    g.add_argument("--data", metavar="NAME|PATH", help=f"dataset name ({', '.join(data_names())}"
                   f"; binarized-fashion-mnist is the published table's protocol) or a "
                   f".npy/.npz/.csv file or image folder (default: fashion-mnist)")
    g.add_argument("--out", type=Path, metavar="DIR",
                   help="run directory (default: runs/<timestamp>)")
    g.add_argument("--config", type=Path, metavar="FILE", help="a .toml or .json config file "
                   "([model] and [train] tables); flags override it; unknown keys are errors")
    g.add_argument("--resume", type=Path, metavar="DIR", help="continue the run in DIR from "
                   "its last checkpoint (--epochs may extend it)")
    g.add_argument("--overwrite", action="store_true", help="replace a run already in --out")
    g.add_argument("--seed", type=non_negative_int, metavar="N")
    g.add_argument("--device", choices=("auto", "cpu", "cuda"))
    g.add_argument("--quiet", action="store_true", help="no progress bar or per-epoch lines")
    g.add_argument("--tensorboard", action="store_true", help="also log the per-epoch metrics "
                   "to RUN/tensorboard (needs the tensorboard package)")


def _add_data_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("data",
                             "which examples, and how their values are read")
    g.add_argument("--missing", choices=("none", "mask"),
                   help="mask: NaN (and empty CSV cells) mark missing entries; train on the "
                        "observed ones only (MIWAE; use --objective iwae --num-samples 20)")
    g.add_argument("--missing-model", choices=("none", "self-masking"),
                   help="self-masking: also learn p(missing | x) per feature, for data "
                        "missing not at random (not-MIWAE); needs --missing mask")
    g.add_argument("--drop-empty-rows", action="store_true", default=None,
                   help="with --missing mask: train without the rows whose every entry is "
                        "missing (refused otherwise); columns never observed are always refused")
    g.add_argument("--standardize", choices=("auto", "on", "off"),
                   help="per-column standardization of a real-valued table, recorded in the "
                        "run and undone on every output (samples, reconstructions, "
                        "imputations; densities keep their Jacobian): auto (default) is on "
                        "for --likelihood gaussian on real-valued data")
    g.add_argument("--condition", metavar="labels|COLUMNS",
                   help="a conditional VAE, p(x | z, c) and q(z | x, c): c is the data's "
                        "class labels, or the named comma-separated columns of a table "
                        "(taken out of x; one integer column with few values is one-hot, "
                        "other columns real)")
    g.add_argument("--binarize", choices=("dynamic", "static", "none"),
                   help="binarize [0, 1] data: a fresh Bernoulli draw per visit (dynamic, the "
                   "default), one draw (static), or keep the values (none: for real-valued "
                   "or 8-bit data)")
    g.add_argument("--limit", type=positive_int, metavar="N",
                   help="use only the first N training examples")
    g.add_argument("--classes", type=class_list, metavar="C,C,...",
                   help="train only on examples of these classes (one-class anomaly detection)")
    g.add_argument("--background-of", type=Path, metavar="RUN", help="train RUN's config on "
                   "inputs with a fraction --perturb-fraction of pixels replaced by noise: the "
                   "background model of `vaelab score --background` (Ren et al. 2019)")
    g.add_argument("--perturb-fraction", type=non_negative_float, metavar="MU",
                   help="fraction of input values replaced by uniform noise (default 0; 0.2 "
                        "with --background-of)")
    g.add_argument("--stream-block", type=positive_int, metavar="ROWS",
                   help="read the training rows of a .npy file (uint8 or float32) from disk in "
                        "blocks of ROWS contiguous rows, shuffled by block and within a few "
                        "blocks, instead of loading it: memory for a few blocks, whatever the "
                        "file's size (e.g. 4096)")
    g.add_argument("--val-fraction", type=fraction, metavar="F",
                   help="fraction of the training examples held out (seeded) for the "
                        "validation ELBO and early stopping (default 0.05; 0: none)")


def _add_model_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model",
                             "p(z), p(x|z) and q(z|x)")
    g.add_argument("--latent-dim", type=latent_sizes, metavar="N[,N,...]",
                   help="latent size; several sizes (bottom to top, e.g. 64,32) stack latent "
                        "layers into a hierarchical VAE")
    g.add_argument("--hierarchy", choices=("bottom-up", "ladder", "top-down"),
                   help="inference for several latent layers: bottom-up q(z1|x) q(z2|z1)... "
                        "(Burda et al. 2016), ladder, top-down with bottom-up evidence "
                        "(Sønderby et al. 2016), or top-down q(z2|x) q(z1|x,z2) with a decoder "
                        "reading every layer (Tomczak & Welling 2018); default bottom-up")
    add_component(g, "likelihood", "p(x|z)")
    add_component(g, "network", "the encoder and decoder networks")
    add_component(g, "family", "q(z|x)")
    add_component(g, "prior", "p(z)")


def _add_inference_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("inference",
                             "where q's parameters come from; how θ and φ take turns")
    g.add_argument("--inference", choices=("amortized", "per-datapoint", "semi-amortized"))
    g.add_argument("--schedule", choices=("joint", "alternating"),
                   help="joint (default): θ and φ step together; alternating: --phi-steps K "
                        "steps on q before each step on the decoder (needs --phi-steps K >= 1)")
    g.add_argument("--phi-steps", type=non_negative_int, metavar="N",
                   help="φ steps per θ step with --schedule alternating (required there, "
                        "--phi-steps K >= 1)")
    g.add_argument("--phi-lr", type=positive_float, metavar="X",
                   help="φ's own learning rate (per-datapoint rows, alternating schedule); "
                        "default: --lr; ~0.05 suits per-datapoint rows")


def _add_optimizer_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("optimization",
                             "epochs, batches, the optimizer and its learning rate")
    g.add_argument("--epochs", type=positive_int, metavar="N")
    g.add_argument("--batch-size", type=positive_int, metavar="N")
    add_component(g, "optimizer", "the optimizer")
    g.add_argument("--lr", type=positive_float, metavar="X", help="the optimizer's learning "
                   "rate")
    g.add_argument("--grad-clip", type=positive_float, metavar="X", help="clip the gradient norm")
    g.add_argument("--early-stopping", type=patience, metavar="PATIENCE",
                   help="stop after PATIENCE epochs without a better validation ELBO; 0 or "
                        "off: no early stopping (e.g. over a --config that sets it)")
    g.add_argument("--ema", type=ema_decay, metavar="DECAY",
                   help="keep an exponential moving average (Polyak) of the weights with this "
                        "decay (e.g. 0.999) and validate, sample and save with it; 0 or off: "
                        "no average (e.g. over a --config that sets one)")
    add_component(g, "lr-schedule", "the learning rate over training")
    g.add_argument("--lr-warmup", type=non_negative_float, metavar="EPOCHS",
                   help="ramp the learning rate linearly from 0 over this many epochs")
    g.add_argument("--compile", choices=("auto", "on", "off"))
    g.add_argument("--precision", choices=("fp32", "bf16"),
                   help="bf16: the step's forward pass under bfloat16 autocast (fast on GPUs "
                        "with bf16 units; weights and Adam stay float32)")


FAMILY_CHOICES = catalogue.names("family")


PRIOR_CHOICES = catalogue.names("prior")


OBJECTIVE_CHOICES = catalogue.names("objective")


KL_SCHEDULE_CHOICES = catalogue.names("kl-schedule")


def _add_objective(p: argparse.ArgumentParser) -> None:
    """--objective, --num-samples, --beta, --kl-schedule and their options."""
    g = p.add_argument_group("objective", "what training maximizes")
    add_component(g, "objective", "what training maximizes; metrics and evaluate always "
                   "report the true ELBO and log p(x)")
    g.add_argument("--num-samples", type=positive_int, metavar="K",
                   help="z samples per example: Monte Carlo samples of the ELBO, K of the "
                        "IWAE bound (per component for --family mixture); default 1")
    g.add_argument("--beta", type=non_negative_float, metavar="X",
                   help="KL weight β (default 1): maximize E log p(x|z) − β KL; for the IWAE "
                        "objectives it tempers the log-weights")
    add_component(g, "kl-schedule", "the KL weight over training; given, it replaces a "
                  "--config file's schedule (constant: no warm-up; linear keeps the file's "
                  "warm-up length unless --kl-warmup is given)")


def cmd_train(args: argparse.Namespace) -> int:
    """``vaelab train``: validate everything, train, then say where the results are."""
    train_ = importlib.import_module("vaelab.fit.train")   # the module, whatever vaelab re-exports
    run_dir = _run_dir(args)
    config = _train_config(args, run_dir)
    result = _train_locked(train_, args, run_dir, config)
    if getattr(result, "nothing_to_do", None):   # a finished run, untouched
        if args.quiet:
            print(result.nothing_to_do)
        return 0
    _report_run(result.run_dir, config.train.inference, config.model.missing == "mask")
    return 0


def _train_locked(train_, args: argparse.Namespace, run_dir: Path, config):
    """``train_.train`` holding the run directory's lock (one writer per run); on failure
    the lock is released and the folders this run created are removed; interrupted after
    an epoch was saved, it says how to continue (exit code 130)."""
    from vaelab.data import first_missing
    from vaelab.fit import lock, runs
    from vaelab.fit.resume import continues_after_restart
    from vaelab.show.plots import write_run_figures

    created, before = first_missing(run_dir), runs.run_files(run_dir)
    logger = None
    # torchrun restarting the workers (--max-restarts) with these very flags: --out continues
    resume = args.resume is not None or continues_after_restart(run_dir, overwrite=args.overwrite)
    lock.lock_run(run_dir, "--resume" if args.resume is not None else "--out")
    try:       # checked again under the lock: another writer may have just finished a run
        if not resume and not args.overwrite and runs.run_exists(run_dir):
            raise ValueError(f"--out: {str(run_dir)!r} already holds a run; pass --resume "
                             f"{run_dir} to continue it or --overwrite to replace it")
        if args.tensorboard:
            from vaelab.show import tensorboard

            logger = tensorboard.open_logger(run_dir)  # one line if tensorboard is missing
        return train_.train(config, run_dir, resume=resume,
                            overwrite=args.overwrite, progress=not args.quiet,
                            log=printer(args.quiet), figures=write_run_figures,
                            on_epoch=logger)
    except BaseException as exc:
        lock.unlock_run(run_dir)      # its file would keep a created folder from being removed
        runs.remove_unfinished(run_dir, created, before)   # no epoch saved: as if never run
        if isinstance(exc, KeyboardInterrupt) and (run_dir / runs.CONFIG_FILE).is_file():
            word, code = stopped_by(exc)      # Ctrl-C, or SIGTERM (kill, a job's time limit)
            print(f"vaelab: {word}; every finished epoch is saved: continue with "
                  f"`vaelab train --resume {run_dir}`", file=sys.stderr)
            raise SystemExit(code) from None
        raise
    finally:
        if logger is not None:
            logger.close()


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
        _check_resumable_here(args.resume)
        return args.resume
    return args.out if args.out is not None else _default_out()


def _check_resumable_here(run_dir: Path) -> None:
    """One line for a run trained on data handed over in memory (``vaelab.fit``): no flag
    finds those rows again, and --data would be other rows as far as the run can tell (it
    records no fingerprint of them), so only Python can hand them over again."""
    import json

    try:
        data = json.loads((run_dir / "config.json").read_text()).get("train", {}).get("data")
    except (OSError, ValueError, AttributeError):
        return                                # the config's own checks say what is wrong
    if data == "in-memory":       # vaelab.fit.train_data.IN_MEMORY (cli imports no torch here)
        raise ValueError(f"--resume: {str(run_dir)!r} was trained on data handed over in "
                         f"memory (vaelab.fit), which the command line cannot hand over again; "
                         f"resume it in Python with vaelab.fit(..., resume=True), passing the "
                         f"same factory and data")


def _default_out() -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    out, i = Path("runs") / stamp, 1
    while out.exists():
        i += 1
        out = Path("runs") / f"{stamp}-{i}"
    return out


def _train_config(args: argparse.Namespace, run_dir: Path):
    """RunConfig from (the resumed run's config.json,) --config and the flags, in that order."""
    from vaelab import config as config_

    base: dict = {}
    if args.resume is not None:
        base = config_.load_config_file(run_dir / "config.json")
    if args.background_of is not None:
        base = _background_base(args, config_)
    if args.config is not None:
        from_file = config_.load_config_file(args.config)
        try:
            base = config_.merge(base, from_file)
        except (ValueError, TypeError) as exc:     # a component the catalogue lacks
            raise type(exc)(f"config file {str(args.config)!r}: {exc}") from None
    merged = config_.merge(base, _train_overrides(args))
    model = merged.get("model", {})        # the model's flags first: before its options' checks
    check_component_flags(args, {kind: model.get(catalogue.FIELDS[kind]) or
                                  catalogue.names(kind)[0] for kind in MODEL_KINDS})
    try:
        config = config_.RunConfig.from_dict(merged)
    except (ValueError, TypeError) as exc:
        if args.config is None:
            raise
        raise _blame_the_file(exc, args.config,
                              lambda: config_.RunConfig.from_dict(base)) from None
    _check_given_flags(args, config)    # flags the run would silently ignore
    return config


def _blame_the_file(exc: Exception, path: Path, file_alone) -> Exception:
    """A bad value in a --config file, said as the file's: ``config file 'x.toml':
    latent_dim: ...``, not as a flag the user never typed. The file is to blame when it
    fails the same way without the flags (``file_alone`` builds that config); otherwise the
    error is the flags' and stays as it was."""
    try:
        file_alone()
    except (ValueError, TypeError) as alone:
        if str(alone) == str(exc):
            return type(exc)(f"config file {str(path)!r}: {exc}")
    return exc


def _train_overrides(args: argparse.Namespace) -> dict:
    """The flags given on the command line as a config dict (None = not given)."""
    compile_ = {"auto": "auto", "on": True, "off": False, None: None}[args.compile]
    return {"model": {"latent_dim": args.latent_dim, "hierarchy": args.hierarchy,
                      **component_values(args, MODEL_KINDS),
                      "missing": args.missing, "missing_model": args.missing_model,
                      "standardize": args.standardize, "condition": args.condition},
            "train": {"data": args.data, "epochs": args.epochs, "batch_size": args.batch_size,
                      "lr": args.lr, "optimizer": args.optimizer,
                      "binarize": args.binarize, "seed": args.seed,
                      "device": args.device, "limit": args.limit, "classes": args.classes,
                      "perturb_fraction": args.perturb_fraction, "inference": args.inference,
                      "val_fraction": args.val_fraction,
                      "schedule": args.schedule, "phi_steps": args.phi_steps,
                      "phi_lr": args.phi_lr, "drop_empty_rows": args.drop_empty_rows,
                      **component_values(args, TRAIN_KINDS), "num_samples": args.num_samples,
                      "beta": args.beta, "grad_clip": args.grad_clip,
                      "early_stopping_patience": args.early_stopping, "compile": compile_,
                      "ema_decay": args.ema, "lr_warmup_epochs": args.lr_warmup,
                      "precision": args.precision, "stream_block": args.stream_block}}


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


def _check_given_flags(args: argparse.Namespace, config) -> None:
    """Refuse a flag given on the command line that this run would ignore.

    Only flags the user gave are checked (a config file's values are left alone): one line
    naming the flag, what it needs, and what the run has instead.
    """
    m, t = config.model, config.train
    if args.kl_schedule == "constant" and args.kl_warmup is not None:   # both typed
        raise UsageError(f"--kl-warmup {args.kl_warmup:g} and --kl-schedule constant: a "
                         f"warm-up ramps the KL weight, a constant schedule has none; expected "
                         f"--kl-schedule linear (or no --kl-schedule), got --kl-schedule constant")
    check_component_flags(args, {kind: getattr(t, catalogue.FIELDS[kind])
                                  for kind in TRAIN_KINDS})   # after the config's own rules
    layers = isinstance(m.latent_dim, tuple)
    checks = (
        (f"--hierarchy {args.hierarchy}", args.hierarchy is not None, layers,
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
