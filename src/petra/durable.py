"""Files that survive a power cut whole: the new content is written beside the old file,
synced, renamed over it, and the directory synced, so a crash leaves the old file or the new
one, never a torn one."""

from __future__ import annotations

import os
from pathlib import Path


def replace(path: Path, data: bytes) -> None:
    """Make `path` hold `data`, old or new whole at any moment. OSError if the directory is not
    writable (then `path` is unchanged and no partial file is left)."""
    partial = path.with_name(f".{path.name}.petra-{os.getpid()}")
    try:
        with open(partial, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.rename(partial, path)
    finally:
        partial.unlink(missing_ok=True)
    directory = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)
