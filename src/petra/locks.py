"""Fail-fast exclusive locks between petra processes (flock: released when the holder dies)."""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from petra.errors import LockedError


@contextmanager
def exclusive(path: Path, message: str, hint: str) -> Iterator[None]:
    """Hold an exclusive lock on `path` (a directory, or a lock file created if missing) for
    the block. Raises LockedError(message, hint) at once if another process holds it."""
    flags = os.O_RDONLY | os.O_DIRECTORY if path.is_dir() else os.O_RDWR | os.O_CREAT
    fd = os.open(path, flags, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as e:
            raise LockedError(message, hint) from e
        yield
    finally:
        os.close(fd)
