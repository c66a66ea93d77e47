"""The ``vaelab`` command line, by command group; each command parses, calls, prints.

Role in vaelab: the user's entry point; nothing in the library imports it. The console script
and ``python -m vaelab`` call :func:`main`; the documentation's command-line reference is
generated from :func:`build_parser`. Modules: :mod:`~vaelab.cli.command` (the parser and
:func:`main`), :mod:`~vaelab.cli.train`, :mod:`~vaelab.cli.evaluate` (evaluate, gaps, sample,
reconstruct), :mod:`~vaelab.cli.use` (score, encode, cluster, complete, impute),
:mod:`~vaelab.cli.show` (figures, report, runs), and what they share:
:mod:`~vaelab.cli.common` (argument types), :mod:`~vaelab.cli.inputs` (runs, data, outputs)
and :mod:`~vaelab.cli.errors` (one-line errors and exit codes).
"""

from vaelab.cli.command import build_parser, main

__all__ = ["build_parser", "main"]
