"""The thaw guard: no petra command leaves a file system frozen, even when it is SIGKILLed.

libostree ends every write of the deployment list with FIFREEZE then FITHAW of the file system
holding the sysroot's boot/. A writer killed between the two leaves it frozen for good (its
watchdog exits without thawing when the writer dies). So before a sysroot write, petra starts
this guard: a separate process in its own session that ignores SIGINT/SIGTERM/SIGHUP and holds
the read end of a pipe whose write end petra (and whatever libostree forks) holds. When every
holder of the write end is gone, the guard reads EOF. If petra did not first write DONE (a
clean finish), it thaws boot/'s file system (EINVAL from FITHAW just means "not frozen").

The guard writes nothing to disk and imports nothing from the rest of petra: it runs as
`python -I -S freeze.py` so that it starts in a few milliseconds.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

FITHAW = 0xC0045878
DONE = b"done"
_FD_VARIABLE = "PETRA_THAW_FD"
# Only the crash-safety tests set this, to prove that without the guard a kill leaves the
# file system frozen (the test must be able to fail).
DISABLE_VARIABLE = "PETRA_TEST_DISABLE_THAW_GUARD"


@contextmanager
def thaw_guard(boot_dir: Path) -> Iterator[int]:
    """Run the body under a thaw guard for the file system holding `boot_dir`.

    If petra dies (any signal) or the body raises, the guard thaws that file system once every
    process holding the pipe has exited. A clean exit from the body tells the guard not to.
    Yields the pipe's write end: pass it to a child process that may freeze (a tool petra
    runs), so the guard also waits for that child. Raises OSError if `boot_dir` cannot be
    opened or the guard cannot start.
    """
    if os.environ.get(DISABLE_VARIABLE) == "1":
        yield -1
        return
    boot_fd = os.open(boot_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    read_end, write_end = os.pipe()
    try:
        subprocess.Popen(
            [sys.executable, "-I", "-S", __file__],
            stdin=read_end,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            pass_fds=(boot_fd,),
            env={_FD_VARIABLE: str(boot_fd)},
            start_new_session=True,
        )
    finally:
        os.close(read_end)
        os.close(boot_fd)
    # Inherited on purpose: a child that could freeze keeps the guard waiting until it is gone.
    os.set_inheritable(write_end, True)
    clean = False
    try:
        yield write_end
        clean = True
    finally:
        if clean:
            os.write(write_end, DONE)
        os.close(write_end)


def _guard() -> None:
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGPIPE):
        signal.signal(sig, signal.SIG_IGN)
    fs_fd = int(os.environ[_FD_VARIABLE])
    received = b""
    while chunk := os.read(0, 64):
        received += chunk
    if received != DONE:
        with contextlib.suppress(OSError):  # EINVAL: it was not frozen
            fcntl.ioctl(fs_fd, FITHAW, 0)


if __name__ == "__main__":
    _guard()
