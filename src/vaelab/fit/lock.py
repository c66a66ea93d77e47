"""One writer per run directory: an exclusive OS file lock held for the life of a command.

Every command that writes into a run directory (train and its resume, evaluate, gaps, score,
report and impute writing into a run) calls :func:`lock_run` before it writes anything. The
lock is ``fcntl.flock`` on ``RUN/run.lock``: the kernel releases it when the process ends, however
it ends (SIGKILL included), so a crash never leaves a stale lock behind; the file only records
the holder's PID for the message a second writer gets. Readers (``vaelab runs``, ``load``)
never lock: every file is replaced atomically, so they see the old or the new version.

Under torchrun only rank 0 writes the run directory, so only rank 0 locks it; if it cannot,
it exits with the message and torchrun stops the other ranks (they never wait on the lock).
"""

from __future__ import annotations

import atexit
import os
from pathlib import Path

LOCK_FILE = "run.lock"

#: Run directories locked by this process (resolved path → open file descriptor).
_held: dict[Path, int] = {}


class RunLocked(ValueError):
    """Another process holds the run directory's lock."""


def _holder(path: Path) -> str:
    try:
        pid = path.read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError):
        pid = ""
    return f"PID {pid}" if pid.isdigit() else "an unknown PID"


def _is_rank_zero() -> bool:
    return int(os.environ.get("RANK", "0") or 0) == 0


def lock_run(run_dir: str | os.PathLike, what: str = "RUN") -> Path | None:
    """Take the exclusive lock on ``run_dir`` (created if needed) for this process's lifetime.

    Returns the lock file, or None on a torchrun rank other than 0 (rank 0 holds the lock
    for the job). Locking a folder this process already holds is a no-op.

    Raises:
        RunLocked: another live process holds it (the message names the folder and its PID).
        ValueError: the folder cannot be created or written (naming ``what``).
    """
    if not _is_rank_zero():
        return None
    import fcntl

    folder = Path(run_dir).expanduser()
    key = folder.resolve()
    path = folder / LOCK_FILE
    if key in _held:
        return path
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ValueError(f"{what}: cannot write to {str(folder)!r}: "
                         f"{exc.strerror or exc}") from None
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        except OSError as exc:
            raise ValueError(f"{what}: cannot write to {str(folder)!r}: "
                             f"{exc.strerror or exc}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise RunLocked(f"{what}: {str(folder)!r} is in use by another vaelab process "
                            f"({_holder(path)}); wait for it to finish, or use another "
                            f"folder") from None
        # The holder before us may have removed the file between our open and our lock:
        # then we locked a file nobody else will ever open, so try again on the new one.
        try:
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode("ascii"))
    _held[key] = fd
    return path


def unlock_run(run_dir: str | os.PathLike) -> None:
    """Release the lock on ``run_dir`` if this process holds it (and remove the lock file)."""
    folder = Path(run_dir).expanduser()
    fd = _held.pop(folder.resolve(), None)
    if fd is None:
        return
    try:
        (folder / LOCK_FILE).unlink(missing_ok=True)   # removed while still held: no race
    except OSError:
        pass
    os.close(fd)


def unlock_all() -> None:
    """Release every lock this process holds (also run at interpreter exit)."""
    for key in list(_held):
        unlock_run(key)


atexit.register(unlock_all)
