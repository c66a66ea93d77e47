"""How the ``vaelab`` command says what went wrong: one line, in the words of its flags.

Role in vaelab: bad input never shows a traceback. :func:`vaelab.cli.command.main` prints
``vaelab: error: <message>`` on stderr and exits with :data:`EXIT_USAGE` (2) for command-line
usage errors, :data:`EXIT_ERROR` (1) for everything else, :data:`EXIT_INTERRUPTED` (130)
when interrupted (Ctrl-C) and :data:`EXIT_TERMINATED` (143) when terminated (SIGTERM: ``kill``,
a batch scheduler's time limit), which stops as Ctrl-C does, with nothing half-written;
``VAELAB_DEBUG=1`` re-raises instead, for developers. A library message that names a Python
argument is reworded to name the flag (:func:`cli_words`).
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator

from vaelab.cli.common import UsageError, kebab

DEBUG_ENV = "VAELAB_DEBUG"
EXIT_ERROR, EXIT_USAGE, EXIT_INTERRUPTED, EXIT_TERMINATED = 1, 2, 130, 143


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the program is: it unwinds as Ctrl-C does (locks released,
    atomic writes abandoned, a resume hint printed) instead of dying without a word."""


def stopped_by(exc: BaseException) -> tuple[str, int]:
    """How an interruption is said, and its exit code: ("terminated", 143) for SIGTERM,
    ("interrupted", 130) for Ctrl-C."""
    if isinstance(exc, Terminated):
        return "terminated", EXIT_TERMINATED
    return "interrupted", EXIT_INTERRUPTED


@contextlib.contextmanager
def sigterm_raises() -> Iterator[None]:
    """Within the block, SIGTERM raises :class:`Terminated` in the main thread; the previous
    handler is restored after. Elsewhere than the main thread (no signal handlers there) it
    changes nothing."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def _raise(signum, frame):
        raise Terminated

    previous = signal.signal(signal.SIGTERM, _raise)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def one_line(exc: BaseException) -> str:
    """An exception as one line of text (an OSError as its reason and file)."""
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
    return kebab(value)


def cli_words(text: str) -> str:
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


def known_errors() -> tuple[type[BaseException], ...]:
    """The errors that are the user's to fix, said without "unexpected"."""
    errors: list[type[BaseException]] = [ValueError, TypeError, OSError, UsageError]
    training_error = getattr(sys.modules.get("vaelab.fit.train"), "TrainingError", None)
    if training_error is not None:
        errors.append(training_error)
    return tuple(errors)
