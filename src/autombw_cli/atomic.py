"""Atomic file writes: a temp file in the same folder, fsync, then os.replace.

A reader (or a crash) sees either the old file or the complete new one, never half of it.

Temp files are named ``.autombw-tmp.<host>.<pid>.<target name>.<random><suffix>``, so the
leftovers of a killed writer (a checkpoint's are hundreds of MB) are recognisable:
`clean_stale_temps` removes those whose writer is dead (same host, PID gone) or that have
not been written to for `STALE_AFTER_S`. The checkpoint writers call it before each write.
"""

from __future__ import annotations

import contextlib
import os
import re
import socket
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

TEMP_PREFIX = ".autombw-tmp."
STALE_AFTER_S = 6 * 3600  # a live writer touches its file far more often than this
_TEMP_NAME = re.compile(r"\.autombw-tmp\.(?P<host>[A-Za-z0-9]*)\.(?P<pid>\d+)\.")


def _host_tag() -> str:
    return re.sub(r"[^A-Za-z0-9]", "", socket.gethostname())[:32]


def temp_prefix(target_name: str) -> str:
    """The prefix of this process's temp files for ``target_name`` (cut to stay well within
    the 255-byte file name limit)."""
    short = target_name.encode("utf-8")[:80].decode("utf-8", errors="ignore")
    return f"{TEMP_PREFIX}{_host_tag()}.{os.getpid()}.{short}."


def clean_stale_temps(folder: Path | str, *, now: float | None = None) -> list[Path]:
    """Remove the temp files in ``folder`` left by dead or long-silent writers; return them.

    A temp file is stale when its writer ran on this host and its PID is gone, or when it
    has not changed for `STALE_AFTER_S` (a reused PID, another host). Other files, and the
    temp files of live writers, are left alone; errors (a file another cleaner removed, a
    folder we cannot read) are ignored."""
    removed: list[Path] = []
    current = time.time() if now is None else now
    host = _host_tag()
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    for entry in entries:
        m = _TEMP_NAME.match(entry.name)
        if m is None:
            continue
        try:
            if not entry.is_file(follow_symlinks=False):
                continue
            age = current - entry.stat(follow_symlinks=False).st_mtime
            dead = m["host"] == host and not _pid_alive(int(m["pid"]))
            if dead or age > STALE_AFTER_S:
                os.unlink(entry.path)
                removed.append(Path(entry.path))
        except OSError:
            continue
    return removed


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    except OSError:
        return True  # cannot tell: keep the file (the age rule still applies)
    return True


@contextlib.contextmanager
def atomic_path(path: Path | str, *, suffix: str = ".tmp") -> Iterator[Path]:
    """Yield a temp path beside ``path``; on success fsync it and rename it into place.

    On an exception the temp file is removed and ``path`` is untouched.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(
        prefix=temp_prefix(target.name), suffix=suffix, dir=target.parent
    )
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        # mkstemp makes the file 0600; give it the mode a plain open() would have.
        os.chmod(tmp, 0o666 & ~_umask())
        yield tmp
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, target)
        _fsync_dir(target.parent)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


def atomic_write_bytes(path: Path | str, data: bytes) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def atomic_write_text(path: Path | str, text: str, encoding: str = "utf-8") -> Path:
    return atomic_write_bytes(path, text.encode(encoding))


def _umask() -> int:
    """The process umask, read without changing it (os.umask would race with threads)."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    return 0o022


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # e.g. Windows cannot open folders
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
