"""Mounts that cannot outlive petra: a private mount namespace and overlay views.

`private_mount_namespace()` moves the calling process into its own mount namespace, so every
mount petra (or mmdebstrap, bwrap) makes disappears with the process, even on SIGKILL.
"""

from __future__ import annotations

import ctypes
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from petra.errors import ToolError
from petra.run import run

_CLONE_NEWNS = 0x00020000
_done = False


def private_mount_namespace() -> None:
    """Unshare the mount namespace of this (single-threaded, root) process; idempotent.

    Raises ToolError if the kernel refuses (not root, or threads already running).
    """
    global _done
    if _done:
        return
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.unshare(_CLONE_NEWNS) != 0:
        err = ctypes.get_errno()
        raise ToolError(
            f"cannot create a private mount namespace: {os.strerror(err)}",
            "petra compose must run as root",
        )
    run(["mount", "--make-rprivate", "/"])
    _done = True


@contextmanager
def overlay(lower: Path, scratch: Path) -> Iterator[tuple[Path, Path]]:
    """Mount a writable overlay of `lower`; yields (merged, upper). Writes land in `upper` only,
    so `lower` (a hardlink checkout of a repo) is never modified. Unmounted on exit.
    """
    upper, work, merged = scratch / "upper", scratch / "work", scratch / "merged"
    for d in (upper, work, merged):
        d.mkdir(parents=True)
    run(
        [
            "mount",
            "-t",
            "overlay",
            "overlay",
            "-o",
            f"lowerdir={lower},upperdir={upper},workdir={work}",
            str(merged),
        ]
    )
    try:
        yield merged, upper
    finally:
        run(["umount", "--lazy", str(merged)], check=False)
        shutil.rmtree(work, ignore_errors=True)
