"""The compose cache: a bare OSTree repo of root trees, the .deb store, apt indices, work dirs.

Layout under the cache directory:
  repo/   bare repo; refs raw/<key> hold package trees before Petra's conventions are applied
  debs/   <sha256>.deb, the archive's own checksums
  apt/    per mirror+suite apt configuration and indices
  work/   <pid>-<random>/ scratch dirs; a dead pid's dir is removed by the next compose
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from petra import locks
from petra.ostree import Repo


def default_cache_dir() -> Path:
    """$PETRA_CACHE, else $XDG_CACHE_HOME/petra, else ~/.cache/petra."""
    if os.environ.get("PETRA_CACHE"):
        return Path(os.environ["PETRA_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")
    return Path(base) / "petra"


class BuildCache:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.work = path / "work"

    @contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the cache's exclusive lock (one compose per cache at a time); clean stale work."""
        self.path.mkdir(parents=True, exist_ok=True)
        with locks.exclusive(
            self.path / "lock",
            f"the compose cache {self.path} is in use",
            "wait for the other compose, or pass another --cache",
        ):
            self._remove_stale_work()
            yield

    def repo(self) -> Repo:
        return Repo.open_or_create(self.path / "repo", mode="bare")

    @contextmanager
    def workdir(self) -> Iterator[Path]:
        """A scratch directory on the cache's file system, removed afterwards."""
        self.work.mkdir(parents=True, exist_ok=True)
        path = Path(tempfile.mkdtemp(prefix=f"{os.getpid()}-", dir=self.work))
        try:
            yield path
        finally:
            _force_remove(path)

    def _remove_stale_work(self) -> None:
        if not self.work.is_dir():
            return
        for entry in self.work.iterdir():
            pid = entry.name.split("-", 1)[0]
            if pid.isdigit() and not _alive(int(pid)):
                _force_remove(entry)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _force_remove(path: Path) -> None:
    # A killed build may leave an overlay mounted only in its own (now dead) namespace, so a
    # plain rmtree suffices; mmdebstrap's chroot may hold read-only dirs, which rmtree handles.
    shutil.rmtree(path, ignore_errors=True)
