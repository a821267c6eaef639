"""The simulator's temporary model folder, ``<tmp>/autombw-sim-<pid>-XXXX``, and its clean-up.

A simulated WebUI keeps its checkpoints (and the final merge it saves) in a temporary folder.
`SimFolder` removes it when the simulator closes and, failing that, when the process exits
normally; a process that is killed (SIGKILL, SIGTERM, a crash) cannot, so the folder carries
an OS file lock (`autombw_cli.folderlock`) that dies with its process, and every new
simulator first removes the folders whose lock nobody holds any more.

Folders without a lock file: those named with a pid are removed when that process is gone
(killed between creating the folder and locking it); those of an older autombw (no pid in the
name) once they are a day old.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import tempfile
import time
import weakref
from pathlib import Path

from autombw_cli.errors import JournalError
from autombw_cli.folderlock import FolderLock, is_locked

log = logging.getLogger(__name__)

PREFIX = "autombw-sim-"
OLD_FOLDER_AGE_S = 24 * 3600
_PID_NAME = re.compile(rf"^{re.escape(PREFIX)}(\d+)-")


class SimFolder:
    """A locked temporary folder (``name``, ``path``); ``cleanup()`` removes it (idempotent,
    also run at normal interpreter exit). The same interface as `tempfile.TemporaryDirectory`."""

    def __init__(self, *, parent: Path | str | None = None) -> None:
        base = Path(parent) if parent is not None else Path(tempfile.gettempdir())
        remove_stale(base)
        self.path = Path(tempfile.mkdtemp(prefix=f"{PREFIX}{os.getpid()}-", dir=base))
        self.name = str(self.path)
        try:
            lock: FolderLock | None = FolderLock.acquire(self.path, what="simulator folder")
        except JournalError:  # no locks here: the pid in the name still identifies the owner
            lock = None
        self._finalizer = weakref.finalize(self, _remove, self.path, lock)

    def cleanup(self) -> None:
        self._finalizer()


def _remove(path: Path, lock: FolderLock | None) -> None:
    if lock is not None:
        lock.release()
    shutil.rmtree(path, ignore_errors=True)


def remove_stale(base: Path | str) -> list[Path]:
    """Remove the simulator folders in ``base`` left by processes that are gone; returns them."""
    removed = []
    try:
        candidates = [p for p in Path(base).iterdir() if p.name.startswith(PREFIX)]
    except OSError:
        return removed
    for folder in candidates:
        with contextlib.suppress(OSError):
            if not folder.is_dir() or folder.is_symlink() or not _stale(folder):
                continue
            shutil.rmtree(folder)
            removed.append(folder)
            log.info("removed %s, left by a simulator whose process is gone", folder)
    return removed


def _stale(folder: Path) -> bool:
    """Nobody holds the folder's lock, and the process named in it is gone (both: a folder is
    created a moment before it is locked, and pids are reused)."""
    locked = is_locked(folder)
    if locked:
        return False
    match = _PID_NAME.match(folder.name)
    if match is not None:
        pid = int(match.group(1))
        alive = True if pid == os.getpid() else _pid_alive(pid)
        if alive is not None:
            return not alive
        if locked is False:  # no pid check here (Windows): the free lock decides
            return True
    return time.time() - folder.stat().st_mtime > OLD_FOLDER_AGE_S


def _pid_alive(pid: int) -> bool | None:
    if os.name == "nt":  # pragma: no cover
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # e.g. EPERM: it exists, owned by someone else
        return True
    return True
