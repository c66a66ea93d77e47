"""Start-up time of the ``vaelab`` command: ``vaelab --help`` and ``vaelab train --help``.

Before the package's re-exports became lazy, every CLI call paid 2-3.5 s of imports (torch,
matplotlib, numpy) before doing anything. This script runs each command ``--runs`` times in
fresh processes, interleaved (a burst of load elsewhere hits every command alike), and reports
the median and the range of the wall-clock times, plus the modules a bare ``import vaelab.cli``
pulls in. It also times ``python -c pass`` as the interpreter's own floor.

    .venv/bin/python benchmarks/startup.py --runs 5 --out benchmarks/results/startup-after.txt
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PYTHON = sys.executable
COMMANDS = {
    "python -c pass": [PYTHON, "-c", "pass"],
    "vaelab --help": [PYTHON, "-m", "vaelab", "--help"],
    "vaelab train --help": [PYTHON, "-m", "vaelab", "train", "--help"],
    "vaelab evaluate --help": [PYTHON, "-m", "vaelab", "evaluate", "--help"],
}
PROBE = ("import sys, vaelab.cli as c; c.build_parser(); "
         "print(' '.join(m for m in ('torch', 'numpy', 'matplotlib', 'safetensors') "
         "if m in sys.modules) or 'none')")


def time_once(command: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, cwd=ROOT)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    times: dict[str, list[float]] = {name: [] for name in COMMANDS}
    for command in COMMANDS.values():
        time_once(command)                      # warm the file cache once, untimed
    for _ in range(args.runs):
        for name, command in COMMANDS.items():
            times[name].append(time_once(command))
    heavy = subprocess.run([PYTHON, "-c", PROBE], capture_output=True, text=True, cwd=ROOT,
                           check=True).stdout.strip()
    lines = [f"# {' '.join(sys.argv)}", f"# load average at end: {os.getloadavg()}",
             f"{'command':<26}{'median s':>10}{'min s':>8}{'max s':>8}  (runs: {args.runs})"]
    for name, values in times.items():
        lines.append(f"{name:<26}{statistics.median(values):>10.3f}{min(values):>8.3f}"
                     f"{max(values):>8.3f}")
    lines.append(f"heavy modules after `import vaelab.cli` + build_parser(): {heavy}")
    text = "\n".join(lines)
    print(text)
    if args.out is not None:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
