"""vaelab.tune.budget: --budget as trials for the study or time for the process."""

from __future__ import annotations

import pytest

from vaelab.tune.budget import Budget, parse_budget


@pytest.mark.parametrize("text, budget", [
    ("50-trials", Budget(trials=50)), ("1-trial", Budget(trials=1)),
    ("3 trials", Budget(trials=3)), ("1h", Budget(seconds=3600)),
    ("30m", Budget(seconds=1800)), ("1h30m", Budget(seconds=5400)),
    ("90s", Budget(seconds=90)), ("0.5h", Budget(seconds=1800)), (" 2H ", Budget(seconds=7200)),
])
def test_budgets(text, budget):
    assert parse_budget(text) == budget


@pytest.mark.parametrize("text", ["0", "0-trials", "0h", "0m0s", "", "h", "1d", "-3-trials",
                                  "1.5-trials", "ten minutes", "1h-trials"])
def test_zero_or_garbage_is_one_line_naming_the_flag(text):
    with pytest.raises(ValueError) as info:
        parse_budget(text)
    message = str(info.value)
    assert message.startswith("--budget: expected a time such as 1h") and repr(text) in message
