"""``vaelab evaluate``, ``gaps``, ``sample`` and ``reconstruct``: how good a run is, and what
it draws.

Role in vaelab: each command loads a run and its held-out data (:mod:`vaelab.cli.inputs`),
checks its outputs are writable, calls one function of the library
(:func:`vaelab.measure.protocol.evaluate_run`, :func:`vaelab.measure.gaps.report_gaps`,
:mod:`vaelab.show.plots`) and prints what it found and where it wrote it.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from pathlib import Path

from vaelab.cli.common import add_run_data, non_negative_int, positive_int
from vaelab.cli.components import add_component
from vaelab.cli.inputs import (
    claim,
    held_out,
    inference_of,
    load_run,
    out_path,
    png_path,
    printer,
    writable_dir,
)

DEFAULT_EVAL_K, DEFAULT_EVAL_LIMIT = 1000, 1000


EVAL_FILE = "eval.json"


def add_evaluate(commands) -> None:
    p = commands.add_parser(
        "evaluate", help="test ELBO, log-likelihood, bits/dim, active units",
        description="Evaluate a run on held-out data: ELBO, rate, distortion, importance-"
        "sampled log-likelihood ± standard error (nats per example and bits/dim) and active "
        "units. Writes RUN/eval.json (and --out) and prints a table. The defaults (--k "
        f"{DEFAULT_EVAL_K} --limit {DEFAULT_EVAL_LIMIT}) take about 30 s on 2 idle CPU cores; "
        "the full published protocol is `--k 5000 --limit 0` (all 10,000 test images, "
        "about an hour on 2 CPU cores).")
    p.add_argument("run", type=Path, metavar="RUN", help="a run directory")
    add_run_data(p)
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
    add_component(p, "estimator", "how log p(x) is estimated", skip=("--k",), default="is")


def cmd_evaluate(args: argparse.Namespace) -> int:
    """``vaelab evaluate``: the test protocol, written to RUN/eval.json (and --out)."""
    from vaelab.fit import runs
    from vaelab.measure import protocol, shard
    from vaelab.show import tables

    note = printer(False)
    estimator = _estimator(args)
    trained = load_run(args.run, args.device)
    infer = inference_of(trained)
    targets = _eval_targets(args, note)
    claim(*targets)
    dataset, split = held_out(trained, args.data, args.split, args.seed, note)
    result = protocol.evaluate_run(trained, dataset, estimator, run=str(args.run), split=split,
                                   seed=args.seed, batch_size=args.batch_size,
                                   limit=args.limit or None, infer=infer,
                                   progress=not args.quiet and sys.stderr.isatty())
    if not shard.is_main_process():   # torchrun: every rank computed; rank 0 reports
        return 0
    for path in targets:
        runs.atomic_write_json(path, result)
    print(tables.with_meaning(tables.format_evaluation(result), result))
    print(tables.estimator_lines(result))
    print(tables.trained_with_line(result))
    for line in tables.training_lines(result):
        print(line)
    print("written: " + "  ".join(str(p) for p in targets))
    return 0


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


def _eval_targets(args: argparse.Namespace, note: Callable) -> list[Path]:
    """Where eval.json goes: RUN/eval.json when writable, and --out; checked before computing."""
    targets = []
    if args.out is not None:
        if args.out.suffix.lower() != ".json" or args.out.is_dir():
            raise ValueError(f"--out: expected a .json file name, got {str(args.out)!r}")
        targets.append(writable_dir(args.out.parent, "--out") / args.out.name)
    try:
        targets.insert(0, writable_dir(args.run, "RUN") / EVAL_FILE)
    except ValueError:
        if not targets:
            raise ValueError(f"RUN: cannot write {str(args.run / EVAL_FILE)!r}; pass "
                             f"--out FILE.json to write the results elsewhere") from None
        note(f"note: {args.run} is not writable; writing only {args.out}")
    return targets


def add_gaps(commands) -> None:
    p = commands.add_parser("gaps", help="approximation and amortization gaps",
                            description="Split the inference gap log p(x) − ELBO into the "
                            "approximation and amortization gaps (Cremer et al. 2018): q* is "
                            "the encoder's own family (for a hierarchy, its bottom-up or ladder "
                            "structure) fitted to each example; writes gaps.json and gaps.png.")
    p.add_argument("run", type=Path, metavar="RUN")
    add_run_data(p)
    p.add_argument("--limit", type=positive_int, metavar="N", default=100,
                   help="number of examples (default 100)")
    p.add_argument("--k", type=positive_int, metavar="K", default=1000,
                   help="samples behind each bound (default 1000; the paper uses 5000)")
    p.add_argument("--steps", type=positive_int, metavar="N", default=500,
                   help="most optimizer steps for the per-example q* (default 500)")
    p.add_argument("--seed", type=non_negative_int, metavar="N", default=0)
    p.add_argument("--out", type=Path, metavar="DIR", help="default: RUN")
    p.set_defaults(func=cmd_gaps)


def cmd_gaps(args: argparse.Namespace) -> int:
    """``vaelab gaps``: approximation and amortization gaps on held-out data."""
    from vaelab.measure import gaps

    trained = load_run(args.run, args.device)
    inference_of(trained)
    out = writable_dir(args.out or args.run, "--out")
    claim(out / "gaps.json")
    dataset, _ = held_out(trained, args.data, args.split, args.seed, printer(False))
    x = dataset.x[:args.limit].to(trained.device)
    report = gaps.report_gaps(trained.model, x, num_samples=args.k, steps=args.steps,
                              out_dir=out, seed=args.seed,
                              data_kind=dataset.kind)    # log p(x) or a score
    print(report.table())
    print(f"wrote {out / 'gaps.json'}  {out / 'gaps.png'}")
    return 0


def add_sample(commands) -> None:
    p = commands.add_parser("sample", help="draw samples x ~ p(x) as an image grid",
                            description="Draw z ~ p(z) and write the grid of E[x|z].")
    p.add_argument("run", type=Path, metavar="RUN")
    p.add_argument("-n", type=positive_int, metavar="N", default=64,
                   help="number of samples (default 64)")
    p.add_argument("--out", type=Path, metavar="FILE.png",
                   help="default: RUN/samples-N.png; FILE.csv or FILE.npy: the draws "
                        "x ~ p(x) themselves (a table run: its column names, a mixed table's "
                        "labels kept)")
    p.add_argument("--seed", type=non_negative_int, metavar="N", default=0)
    p.add_argument("--nrow", type=positive_int, metavar="N",
                   help="images per row (default: about √n)")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="cpu")
    p.add_argument("--condition", metavar="VALUE", help="a conditional run: generate for this "
                   "c (a level such as 3, or comma-separated numbers for real covariates)")
    p.set_defaults(func=cmd_sample)


def cmd_sample(args: argparse.Namespace) -> int:
    """``vaelab sample``: a grid of n samples."""
    from vaelab.show import plots

    trained = load_run(args.run, args.device)
    _check_memory("-n", args.n, _bytes_per_sample(trained.config.model))
    suffix = _out_suffix(args.out)
    if suffix in (".csv", ".npy"):                   # the draws themselves, not a picture
        return _sample_values(args, trained, suffix)
    out = png_path(args.out or args.run / f"samples-{args.n}.png", "--out")
    claim(out)
    path = plots.write_samples(_for_condition(trained, args.condition, "sample"), out, args.n,
                               trained.config.model.image_shape,
                               seed=args.seed, nrow=args.nrow,
                               value_range=(0.0, 1.0) if trained.config.train.data in (
                                   "fashion-mnist", "mnist") else None)
    print(f"wrote {path}")
    return 0


def _sample_values(args: argparse.Namespace, trained, suffix: str) -> int:
    """``sample --out FILE.csv|FILE.npy``: n draws x ~ p(x) (p(x | c) with --condition) as a
    table: a mixed table's columns with their labels, else the run's column names."""
    import torch

    from vaelab.model.mixed_likelihood import schema_of
    from vaelab.use import tables

    mixed = schema_of(trained) is not None
    _check_values_out(trained, suffix, mixed)
    out = out_path(args.out, suffix, "--out")
    claim(out)
    if mixed:
        frame = tables.sample_table(trained, args.n, seed=args.seed)
        print(f"wrote {tables.write_table(frame, out)}")
        return 0
    model = _for_condition(trained, args.condition, "sample")
    x = model.sample(args.n, generator=torch.Generator().manual_seed(args.seed))
    tables.write_values(x, out, tables.value_columns(trained))
    given = "" if args.condition is None else f" | c = {args.condition}"
    print(f"wrote {out}: {args.n} draws x ~ p(x{given})")
    return 0


def _out_suffix(out: Path | None) -> str:
    """The suffix of ``--out`` of sample and reconstruct, which write a picture (.png) or the
    values (.npy, .csv); "" when not given. One line for any other."""
    if out is None:
        return ""
    suffix = out.suffix.lower()
    if suffix not in (".png", ".npy", ".csv"):
        raise ValueError(f"--out: expected a .png (a picture), .npy or .csv (the values) file "
                         f"name, got {str(out)!r}")
    return suffix


def _check_values_out(trained, suffix: str, mixed: bool) -> None:
    """One line for an output of values the run cannot give: a mixed table's as .npy (its
    labels), a .csv of images."""
    if mixed and suffix == ".npy":
        raise ValueError("--out: a mixed table's values are written as a .csv (its labels "
                         "kept), got a .npy file name")
    if suffix == ".csv" and trained.config.model.image_shape is not None:
        raise ValueError("--out: expected a .png or .npy file name for a run of images, got a "
                         ".csv file name")


def _for_condition(trained, value: str | None, command: str, own=None):
    """The run's model for ``--condition VALUE`` (a conditional run: ``use.conditioned.Given``);
    one line for a missing or needless --condition."""
    if trained.config.model.condition is None:
        if value is not None:
            raise ValueError(f"--condition: the run is not conditional (trained without "
                             f"--condition); expected no --condition, got {value!r}")
        return trained.model
    if value is None and own is None:
        raise ValueError(f"--condition: this run is conditional, p(x | z, c); `vaelab "
                         f"{command}` needs the condition to generate for, such as "
                         f"--condition {_first_level(trained)}; got none")
    from vaelab.use.conditioned import Given

    c = None if value is None else trained.condition(value, flag="--condition")
    return Given(trained.model, c, own)


def _first_level(trained) -> str:
    spec = trained.config.model.condition
    if spec["kind"] == "categorical":
        return str(spec["levels"][0])
    return ",".join(["0"] * len(spec["loc"]))


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


def add_reconstruct(commands) -> None:
    p = commands.add_parser("reconstruct", help="originals above their reconstructions",
                            description="Encode n held-out examples and write the originals "
                            "above their reconstructions E[x | z = E_q z].")
    p.add_argument("run", type=Path, metavar="RUN")
    add_run_data(p)
    p.add_argument("-n", type=positive_int, metavar="N",
                   help="number of examples, drawn at random (default 16 for a picture; "
                        "every row, in order, for FILE.csv or FILE.npy)")
    p.add_argument("--out", type=Path, metavar="FILE.png",
                   help="default: RUN/reconstructions-N.png; FILE.csv or FILE.npy: the "
                        "reconstructions themselves (a table run: its column names, a mixed "
                        "table's labels kept)")
    p.add_argument("--seed", type=non_negative_int, metavar="N", default=0,
                   help="picks the examples and their binarization")
    p.add_argument("--condition", metavar="VALUE", help="a conditional run: decode each "
                   "example's code under this c instead of its own (x as if it had c)")
    p.set_defaults(func=cmd_reconstruct)


def cmd_reconstruct(args: argparse.Namespace) -> int:
    """``vaelab reconstruct``: n held-out examples above their reconstructions."""
    import torch

    from vaelab.model.mixed_likelihood import schema_of
    from vaelab.show import plots
    from vaelab.use import tables

    trained = load_run(args.run, args.device)
    inference_of(trained)
    suffix = _out_suffix(args.out)
    values = suffix in (".csv", ".npy")              # the reconstructions, not a picture
    mixed = schema_of(trained) is not None
    if values:
        _check_values_out(trained, suffix, mixed)
    n = args.n or (None if values else 16)
    out = (out_path(args.out, suffix, "--out") if values else
           png_path(args.out or args.run / f"reconstructions-{n}.png", "--out"))
    claim(out)
    dataset, _ = held_out(trained, args.data, args.split, args.seed, printer(False))
    generator = torch.Generator().manual_seed(args.seed)
    index = torch.randperm(len(dataset), generator=generator)[:n]
    x = dataset.x[index.sort().values if n is not None else slice(None)].to(trained.device)
    if values and mixed:
        schema = tables.table_schema(trained)
        print(f"wrote {tables.write_table(schema.decode(trained.reconstruct(x).cpu()), out)}")
        return 0
    model = trained.model
    if trained.config.model.condition is not None:   # rows [x | c]: shown x, c held apart
        x, own = model.split(x)
        model = _for_condition(trained, args.condition, "reconstruct", own)
    decoded = ("" if args.condition is None else
               f", each decoded under --condition {args.condition} (x as if it had that c)")
    if values:
        tables.write_values(model.reconstruct(x), out, tables.value_columns(trained, args.data))
        print(f"wrote {out}: {len(x)} rows, E[x | z = E_q z]{decoded}")
        return 0
    path = plots.write_reconstructions(model, x, out, trained.config.model.image_shape,
                                       binarized=trained.config.train.binarize != "none",
                                       value_range=plots.data_range(dataset))
    print(f"wrote {path}{decoded}")
    return 0
