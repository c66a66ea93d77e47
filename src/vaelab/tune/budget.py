"""How much a ``vaelab tune`` may spend: a number of trials for the study, or a time.

Role in vaelab: the one place that reads ``--budget``. ``50-trials`` is a budget of the
*study*: trials that ended (complete, pruned or failed) and those running count, so a resumed
or a second process runs only what is left. ``1h``, ``30m``, ``90s`` (or ``1h30m``) is a
budget of *this process's* wall-clock time: no trial starts after it; a trial that started
finishes (its run directory resumes if the process is killed instead).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_TIME = re.compile(r"^(?:(\d+(?:\.\d+)?)h)?(?:(\d+(?:\.\d+)?)m)?(?:(\d+(?:\.\d+)?)s)?$")
EXPECTED = "a time such as 1h, 30m, 1h30m or 90s, or a number of trials such as 50-trials"


@dataclass(frozen=True)
class Budget:
    """``trials`` for the study, or ``seconds`` for this process (exactly one is set)."""

    trials: int | None = None
    seconds: float | None = None

    def __str__(self) -> str:
        return f"{self.trials} trials" if self.trials is not None else f"{self.seconds:g} s"


def parse_budget(text: str) -> Budget:
    """``"50-trials"`` → Budget(trials=50); ``"1h30m"`` → Budget(seconds=5400).

    Raises ValueError (``--budget: expected …, got '0'``) for anything else, zero included:
    a budget that allows nothing is a mistake, not a request.
    """
    words = text.strip().lower()
    trials = re.fullmatch(r"(\d+)[- ]?trials?", words)
    if trials:
        count = int(trials.group(1))
        if count >= 1:
            return Budget(trials=count)
    else:
        match = _TIME.match(words)
        if match and words and any(match.groups()):
            h, m, s = (float(g or 0) for g in match.groups())
            seconds = 3600 * h + 60 * m + s
            if seconds > 0:
                return Budget(seconds=seconds)
    raise ValueError(f"--budget: expected {EXPECTED} (more than zero), got {text!r}")
