"""An OS file lock on a folder: one autombw process per run folder (and per simulator folder).

`FolderLock.acquire(folder)` opens ``folder/.autombw.lock`` and takes an exclusive,
non-blocking lock on it (``fcntl.flock`` on POSIX, ``msvcrt.locking`` on Windows), then writes
the holder's pid into the file for the message a second process prints. The operating system
drops the lock when the holding process exits or dies (SIGKILL, a crash, a power cut), so a
stale lock file never blocks anything: only a live holder does. The file itself stays; removing
it would let two processes lock two different files of the same name.

flock locks belong to the open file, so a second `acquire` of the same folder in the same
process is refused too (a run and a resume of one folder in one test process).
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import IO

from autombw_cli.errors import JournalError

LOCK_FILE = ".autombw.lock"
_WINDOWS_LOCK_OFFSET = 1 << 20  # msvcrt locks bytes; lock one far past the pid text


class FolderInUse(JournalError):
    """Another live process holds the folder's lock."""

    def __init__(self, message: str, *, hint: str | None = None, pid: int | None = None) -> None:
        super().__init__(message, hint=hint)
        self.pid = pid


class FolderLock:
    """A held lock on ``folder`` (release with `release`, or let the process end)."""

    def __init__(self, folder: Path, fh: IO[bytes]) -> None:
        self.folder = folder
        self.path = folder / LOCK_FILE
        self._fh: IO[bytes] | None = fh

    @classmethod
    def acquire(cls, folder: Path | str, *, what: str = "run folder") -> FolderLock:
        """Lock ``folder`` or raise `FolderInUse` naming the holder's pid."""
        folder = Path(folder)
        path = folder / LOCK_FILE
        try:
            fh = open(path, "a+b")  # noqa: SIM115  (held open for the lock's lifetime)
        except OSError as exc:
            raise JournalError(
                f"cannot lock the {what} {folder}: {exc.strerror or exc} ({path})",
                hint="check that the folder exists and is writable",
            ) from None
        if not _try_lock(fh):
            pid = _read_pid(path)
            fh.close()
            holder = f"pid {pid}" if pid is not None else "pid unknown"
            raise FolderInUse(
                f"{what} {folder} is in use by another autombw ({holder})",
                hint="wait for that search to finish or stop it (Ctrl-C) first; two processes "
                "appending to one journal would record evaluations twice",
                pid=pid,
            )
        with contextlib.suppress(OSError):  # the pid is only for the message (a full disk)
            fh.seek(0)
            fh.truncate()
            fh.write(f"{os.getpid()}\n".encode("ascii"))
            fh.flush()
        return cls(folder, fh)

    @property
    def held(self) -> bool:
        return self._fh is not None

    def release(self) -> None:
        """Drop the lock (closing the file releases it); safe to call twice."""
        fh, self._fh = self._fh, None
        if fh is not None:
            with contextlib.suppress(OSError):
                _unlock(fh)
            with contextlib.suppress(OSError):
                fh.close()

    def __enter__(self) -> FolderLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def is_locked(folder: Path | str) -> bool | None:
    """True when a live process holds ``folder``'s lock, False when nobody does, None when the
    folder has no lock file (or it cannot be opened)."""
    path = Path(folder) / LOCK_FILE
    try:
        fh = open(path, "r+b")  # noqa: SIM115
    except OSError:
        return None
    try:
        if _try_lock(fh):
            with contextlib.suppress(OSError):
                _unlock(fh)
            return False
        return True
    finally:
        fh.close()


def _try_lock(fh: IO[bytes]) -> bool:
    if os.name == "nt":  # pragma: no cover - exercised on Windows only
        import msvcrt

        fh.seek(_WINDOWS_LOCK_OFFSET)
        try:
            msvcrt.locking(fh.fileno(), msvcrt.LK_NBLCK, 1)
        except OSError:
            return False
        return True
    import fcntl

    try:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    except OSError as exc:  # e.g. a file system without locks: say so rather than run twice
        raise JournalError(
            f"cannot lock {fh.name}: {exc.strerror or exc}",
            hint="put the run folder on a local file system that supports file locks",
        ) from None
    return True


def _unlock(fh: IO[bytes]) -> None:
    if os.name == "nt":  # pragma: no cover
        import msvcrt

        fh.seek(_WINDOWS_LOCK_OFFSET)
        msvcrt.locking(fh.fileno(), msvcrt.LK_UNLCK, 1)
        return
    import fcntl

    fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def _read_pid(path: Path) -> int | None:
    try:
        with open(path, "rb") as fh:
            text = fh.read(32).decode("ascii", "replace").strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None
