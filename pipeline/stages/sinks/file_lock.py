"""
Advisory locks that say "a live run is writing this": held by the writer of a temporary file or a segment folder,
tested by whoever cleans up what killed runs left, so that a concurrent run's work is never taken for a leftover.

Takes: a path (a file; created when missing).
Gives: `FileLock(path).acquire()` -> True when this process now holds it (released by `release()` or when the
process dies, however it dies: the kernel drops the lock with the file descriptor); `is_held_elsewhere(path)` -> True
while another open file description holds it.

`flock(2)` locks: exclusive, non-blocking, per open file description; on NFS Linux emulates them with byte-range
locks, which the server also drops when the client process dies.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path

__all__ = ["FileLock", "is_held_elsewhere"]


class FileLock:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._fd: int | None = None

    def acquire(self) -> bool:
        """Take the lock if no one holds it; False (and nothing held) when another process does."""
        if self._fd is not None:
            return True
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        self._fd = fd
        return True

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            with contextlib.suppress(OSError):
                os.close(fd)  # closing the descriptor releases the flock

    @property
    def held(self) -> bool:
        return self._fd is not None


def is_held_elsewhere(path: str | Path) -> bool:
    """Whether a live process holds the lock on `path` (False for a missing file)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)  # (also releases the lock just taken, if it was free)
    return False
