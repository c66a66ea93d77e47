"""Where a tuning study lives: an Optuna database, and the folder of its trials.

Role in vaelab: opens (or creates) the study in any database Optuna's RDB storage supports —
by default the SQLite file ``DIR/study.db``, so a killed ``vaelab tune`` finds its trials
again; a PostgreSQL or MySQL URL lets processes on several machines share one study (their
trial folders then must be on a shared file system: each trial's run directory holds the lock
that tells a live trial from one whose process was killed, ``vaelab.tune.study``). A database
that cannot be opened is one line naming ``--storage``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

#: The study's database in DIR unless --storage names another.
DEFAULT_DB = "study.db"
#: Seconds a process waits for another's write to an SQLite study before it gives up.
SQLITE_TIMEOUT = 120


def require_optuna() -> None:
    """ValueError with the install line when Optuna (the ``tune`` extra) is missing."""
    try:
        import optuna  # noqa: F401
    except ModuleNotFoundError:
        raise ValueError("vaelab tune needs Optuna, an optional dependency: pip install "
                         "'vaelab[tune]' (or pip install optuna)") from None


def storage_url(out: Path, storage: str | None) -> str:
    """``storage`` as given, or the SQLite file in ``out`` (an absolute path)."""
    if storage:
        return storage
    return f"sqlite:///{(out / DEFAULT_DB).resolve()}"


def shown_url(url: str) -> str:
    """The URL with any password hidden (what messages and study.json say)."""
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:       # not a URL at all: said as given, it holds no parsed password
        return url


def open_storage(url: str) -> Any:
    """An Optuna RDB storage on ``url``; ValueError naming ``--storage`` when it cannot be
    opened (no such driver, a folder that does not exist, refused connection…)."""
    import optuna

    engine: dict[str, Any] = {}
    if url.startswith("sqlite"):      # several processes write one file: wait, don't fail
        engine = {"connect_args": {"timeout": SQLITE_TIMEOUT}}
    try:
        return optuna.storages.RDBStorage(url, engine_kwargs=engine)
    except Exception as exc:          # sqlalchemy's and drivers' errors alike: one line
        reason = " ".join(str(exc).split("\n")[0].split()) or type(exc).__name__
        raise ValueError(f"--storage: cannot open the study database {shown_url(url)!r}: "
                         f"{reason[:300]}") from None


def open_study(url: str, name: str, *, sampler: Any = None, pruner: Any = None) -> Any:
    """The study ``name`` in the database at ``url`` (created if new), maximizing."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)   # vaelab says what happens
    storage = open_storage(url)
    try:
        return optuna.create_study(storage=storage, study_name=name, direction="maximize",
                                   sampler=sampler, pruner=pruner, load_if_exists=True)
    except ValueError as exc:      # e.g. a study of that name that minimizes
        raise ValueError(f"--storage: the study {name!r} in {shown_url(url)!r} cannot be "
                         f"used: {exc}") from None
