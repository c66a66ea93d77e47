"""The ``vaelab`` command itself: its parser (one sub-command each) and :func:`main`.

Role in vaelab: the user's entry point, and nothing else imports the command line. Each
sub-command lives in the module of its group — :mod:`vaelab.cli.train`;
:mod:`vaelab.cli.evaluate` (evaluate, gaps, sample, reconstruct); :mod:`vaelab.cli.use`
(score, encode, cluster, complete, impute); :mod:`vaelab.cli.show` (figures, report, runs) —
as a parser and a body that parses, calls the library and prints. Bad input never shows a
traceback (:mod:`vaelab.cli.errors`). Files are written atomically, and nothing is computed
before the destinations are known to be writable, so a failure loses no work and leaves
nothing half-written.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from vaelab.cli import evaluate, show, train, tune, use
from vaelab.cli.common import Parser, UsageError
from vaelab.cli.errors import (
    DEBUG_ENV,
    EXIT_ERROR,
    EXIT_USAGE,
    cli_words,
    known_errors,
    one_line,
    sigterm_raises,
    stopped_by,
)


def build_parser() -> argparse.ArgumentParser:
    """The ``vaelab`` argument parser with its sub-commands."""
    parser = Parser(prog="vaelab", description="Variational autoencoders on PyTorch: train, "
                     "evaluate and use a VAE. Run `vaelab COMMAND --help` for a command's flags.")
    from vaelab import __version__

    parser.add_argument("--version", action="version", version=f"vaelab {__version__}")
    parser.add_argument("--trust", action="append", metavar="MODULE", default=[],
                        help="import the network factory a run names (a run trained on your "
                        "own networks with vaelab.fit) when it lies in MODULE or below; "
                        "importing runs its code, so only for runs you trust (repeatable; "
                        "before the command: vaelab --trust mypkg evaluate RUN)")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    train.add_train(commands)
    tune.add_tune(commands)
    evaluate.add_evaluate(commands)
    evaluate.add_sample(commands)
    evaluate.add_reconstruct(commands)
    evaluate.add_gaps(commands)
    use.add_complete(commands)
    use.add_impute(commands)
    show.add_figures(commands)
    use.add_score(commands)
    use.add_encode(commands)
    use.add_cluster(commands)
    show.add_report(commands)
    show.add_runs(commands)
    return parser


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

            with trusting(args.trust), sigterm_raises():  # trust: consent to import the
                return args.func(args)                    # factories of these runs
        finally:
            if "vaelab.fit.lock" in sys.modules:      # one writer per run: release ours
                sys.modules["vaelab.fit.lock"].unlock_all()
    except SystemExit as exc:        # --help, --version, or an exit code chosen above
        return exc.code if isinstance(exc.code, int) else 0
    except KeyboardInterrupt as exc:     # Ctrl-C, or SIGTERM (errors.Terminated)
        word, code = stopped_by(exc)
        if not silent:
            print(f"vaelab: {word}", file=sys.stderr)
        return code
    except Exception as exc:
        if debug:
            raise
        code = EXIT_USAGE if isinstance(exc, UsageError) else EXIT_ERROR
        message = one_line(exc)
        message = cli_words(message)    # flags, not Python arguments
        known = isinstance(exc, known_errors())
        if not known:
            message = (f"unexpected {type(exc).__name__}: {message} (set {DEBUG_ENV}=1 for "
                       f"the traceback)")
        if not silent:
            print(f"vaelab: error: {message}", file=sys.stderr)
        elif not known:                  # torchrun: a rank's own failure, said by that rank
            print(f"vaelab: error: [rank {_quiet_rank()}] {message}", file=errors)
        return code
