"""``vaelab tune``: search for the best model of some data within a budget.

Role in vaelab: parses the flags, calls :func:`vaelab.tune.search.tune` and prints the
re-ranked best trials and where the recipe is. Everything else — the space, the study, the
trials, the ranking — lives in :mod:`vaelab.tune`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from vaelab.cli.common import non_negative_int, number, positive_int
from vaelab.dataset_names import data_names


def add_tune(commands) -> None:
    p = commands.add_parser(
        "tune", help="search for the best model of your data within a budget",
        description="Search over the catalogue's components and options (TPE sampling, "
        "pruning of bad trials from their per-epoch validation ELBO) until the budget is "
        "spent. Every trial is a run directory DIR/trials/NNNN; the best trials by validation "
        "ELBO are re-ranked by importance-sampled validation log-likelihood and the winner's "
        "config is written to DIR/best.toml. The study lives in a database (DIR/study.db by "
        "default): run the same command again to resume it, or start several on one "
        "--storage to search in parallel. The test split is never read.")
    p.add_argument("--data", required=True, metavar="NAME|PATH",
                   help=f"dataset name ({', '.join(data_names())}) or a .npy/.npz/.csv file")
    p.add_argument("--budget", required=True, metavar="TIME|N-trials",
                   help="a time for this command (1h, 30m, 1h30m, 90s: no trial starts after "
                   "it) or a number of trials for the whole study (50-trials)")
    p.add_argument("--out", type=Path, required=True, metavar="DIR",
                   help="the study's folder (an existing study there is resumed)")
    p.add_argument("--space", type=Path, metavar="FILE", help="a .toml or .json file "
                   "overriding the default search space (see the tuning docs)")
    p.add_argument("--config", type=Path, metavar="FILE", help="the config every trial "
                   "starts from (a recipe; default: vaelab's defaults)")
    p.add_argument("--storage", metavar="URL", help="the study's database, any URL Optuna "
                   "supports (sqlite:///study.db, postgresql://user@host/db; default: "
                   "DIR/study.db)")
    p.add_argument("--study-name", default="vaelab", metavar="NAME",
                   help="the study's name in the database (default vaelab)")
    p.add_argument("--workers", type=positive_int, default=1, metavar="N",
                   help="processes running trials at once (default 1)")
    p.add_argument("--epochs", type=positive_int, default=20, metavar="N",
                   help="epochs per trial (default 20)")
    p.add_argument("--pruner", choices=("median", "halving", "none"), default="median",
                   help="stop a trial whose validation ELBO is below the median of the "
                   "others' at the same epoch, or successive halving (default median)")
    p.add_argument("--limit", type=positive_int, metavar="N",
                   help="use only the first N training examples")
    p.add_argument("--val-fraction", type=number(float, lambda v: 0 < v < 1,
                                                  "a number in (0, 1)"), metavar="F",
                   help="fraction of the training rows every trial holds out (seeded) to be "
                   "scored and re-ranked on (default: the --config file's, else 0.05); on a "
                   "small table more rows rank trials more surely")
    p.add_argument("--seed", type=non_negative_int, default=0, metavar="N",
                   help="the trials' seed (the same validation rows for all) and the sampler's")
    p.add_argument("--rerank", type=non_negative_int, default=3, metavar="N",
                   help="re-rank the best N trials by validation log-likelihood (default 3)")
    p.add_argument("--rerank-k", type=positive_int, default=1000, metavar="K",
                   help="importance samples per example of the re-ranking (default 1000)")
    p.add_argument("--rerank-limit", type=non_negative_int, default=1000, metavar="N",
                   help="validation examples of the re-ranking, 0 = all (default 1000)")
    p.add_argument("--quiet", action="store_true", help="no progress bars or notes")
    p.set_defaults(func=cmd_tune)


def cmd_tune(args: argparse.Namespace) -> int:
    """``vaelab tune``: the search, then the ranking and the recipe."""
    from vaelab.cli.inputs import printer
    from vaelab.show.plots import write_run_figures
    from vaelab.tune.budget import parse_budget
    from vaelab.tune.rank import ranking_lines
    from vaelab.tune.search import tune

    budget = parse_budget(args.budget)
    result = tune(args.data, args.out, budget, epochs=args.epochs, space_file=args.space,
                  config_file=args.config, storage=args.storage, study_name=args.study_name,
                  workers=args.workers, pruner=args.pruner, seed=args.seed, limit=args.limit,
                  val_fraction=args.val_fraction,
                  rerank_top=args.rerank, rerank_k=args.rerank_k,
                  rerank_limit=args.rerank_limit or None, progress=not args.quiet,
                  figures=write_run_figures, log=printer(args.quiet))
    counts = ", ".join(f"{n} {state}" for state, n in sorted(result.trials.items()))
    print(f"trials: {counts or 'none'}")
    for line in ranking_lines(result.ranking):
        print(line)
    if result.recipe is not None:
        print(f"best: trial {result.best}; recipe {result.recipe}")
    else:
        print("best: none (no trial completed)")
    print(f"report: vaelab report {args.out}")
    return 0
