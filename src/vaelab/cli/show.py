"""``vaelab figures``, ``report`` and ``runs``: pictures and pages.

Role in vaelab: the lecture's figures (no run needed), one HTML page for one run or comparing
several, and a table of the runs under a folder — each a call into :mod:`vaelab.show`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from vaelab.cli.inputs import claim, writable_dir


def add_figures(commands) -> None:
    p = commands.add_parser("figures", help="the lecture's figures (no run needed)",
                            description="Draw the figures that illustrate the lecture: "
                            "bimodal posterior, family of bounds, joint vs alternating, EM vs VI.")
    p.add_argument("--out", type=Path, required=True, metavar="DIR")
    p.add_argument("--small", action="store_true", help="quick, low-resolution versions")
    p.set_defaults(func=cmd_figures)


def cmd_figures(args: argparse.Namespace) -> int:
    """``vaelab figures``: the lecture's illustrations."""
    from vaelab.show import figures

    out = writable_dir(args.out, "--out")
    for path in figures.make_all(out, small=args.small):
        print(f"wrote {path}")
    return 0


def add_report(commands) -> None:
    p = commands.add_parser("report", help="one HTML page for one run, or comparing several",
                            description="Write a self-contained HTML report (images embedded, "
                            "opens from disk): what each run is, its test metrics with standard "
                            "errors, gaps, other results and pictures; with several runs, a "
                            "comparison table with paired differences against the first run.")
    p.add_argument("runs", type=Path, nargs="+", metavar="RUN", help="run directories (the "
                   "first is the reference of the comparison), or the folder of a `vaelab "
                   "tune` study (its trials, best config, importances and curves)")
    p.add_argument("--out", type=Path, metavar="FILE.html", help="where to write the page "
                   "(default: RUN/report.html for one run, ./vaelab-report.html for several)")
    p.add_argument("--title", metavar="TEXT", help="the page's title")
    p.set_defaults(func=cmd_report)


def cmd_report(args: argparse.Namespace) -> int:
    """``vaelab report``: the HTML page."""
    from vaelab.show import report

    for run in args.runs:
        if not run.is_dir():
            state = "is a file" if run.exists() else "does not exist"
            raise ValueError(f"RUN: expected a run directory, got {str(run)!r}, which {state}")
    out = args.out or (args.runs[0] / "report.html" if len(args.runs) == 1
                       else Path("vaelab-report.html"))
    from vaelab.show import study_page

    if len(args.runs) == 1 and study_page.is_study(args.runs[0]):   # a `vaelab tune` folder
        path = study_page.write_study_report(args.runs[0], out, title=args.title)
        print(f"report: {path}")
        return 0
    claim(out)
    path = report.write_report(args.runs, out, title=args.title)
    print(f"report: {path}")
    return 0


def add_runs(commands) -> None:
    p = commands.add_parser("runs", help="a table of the runs under a folder, newest first",
                            description="List the run directories at or below DIR (3 levels) "
                            "with their key numbers, newest first.")
    p.add_argument("dir", type=Path, nargs="?", default=Path("runs"), metavar="DIR",
                   help="folder to search (default: runs)")
    p.set_defaults(func=cmd_runs)


def cmd_runs(args: argparse.Namespace) -> int:
    """``vaelab runs``: the table of runs."""
    from vaelab.show import runs_table

    print(runs_table.format_runs(args.dir))
    return 0
