"""Will it fit? The bytes a deploy or upgrade of a commit needs on the sysroot's file systems
(its repo's, and /boot's when that is another), reckoned from the source repository before
anything is pulled or checked out, so that a refused command changes nothing.

What is counted, per file system:
- the repo: every file object of the commit the sysroot's repo lacks (nothing when the source
  repo is on the same file system: libostree links the objects), plus a block per directory
  for the new tree objects;
- the deployment: a block per directory of the checkout (files are hardlinks) and a copy of
  /usr/etc, which becomes its /etc;
- /boot: the kernel and initramfs, unless a deployment already has the same ones (libostree
  shares them) or /boot is the repo's file system (it links them), plus the new entries.
When the sysroot has a deployment, only the directories of the commit its repo lacks are read
from the source (an update over a slow share reads a handful), and the checkout is reckoned as
the current default's plus what is new. Available is what an unprivileged writer may use, less
the share libostree keeps free on the repo's file system (core.min-free-space-percent, 3 %
unless the repo says otherwise).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from petra.errors import SpaceError
from petra.ostree import Repo, Sysroot

BLOCK = 4096
ENTRIES = 1 << 20  # the new bootloader entries and loader directory, with room to spare
DEFAULT_RESERVE_PERCENT = 3


@dataclass(frozen=True)
class Need:
    """Bytes needed and available on one file system of the sysroot."""

    where: Path
    needed: int
    available: int

    @property
    def fits(self) -> bool:
        return self.needed <= self.available


def needs(sysroot: Sysroot, source: Repo, checksum: str) -> list[Need]:
    """What deploying `checksum` from `source` takes on each file system of `sysroot`."""
    repo_dev = os.stat(sysroot.repo.path).st_dev
    boot = sysroot.path / "boot"
    boot_dev = os.stat(boot).st_dev
    linked = os.stat(source.path).st_dev == repo_dev
    deployed = sysroot.deployments()
    if deployed:
        new, dirs, etc, kernel = _update(sysroot, source, checksum, deployed[0].checksum)
    else:
        new, dirs, etc, kernel = _whole(source, checksum)
    objects = 0
    if not linked:
        for sum_ in set(new):
            if not sysroot.repo.object_path(sum_).exists():
                objects += _blocks(source.object_path(sum_))
    on_repo = objects + 2 * dirs * BLOCK + etc
    on_boot = ENTRIES
    if boot_dev != repo_dev and kernel and not _kernel_in_use(sysroot, kernel):
        on_boot += sum(_blocks(source.object_path(sum_)) for sum_ in kernel.values())
    if boot_dev == repo_dev:
        return [Need(sysroot.path, on_repo + on_boot, available(sysroot.repo.path, reserve=True))]
    return [
        Need(sysroot.path, on_repo, available(sysroot.repo.path, reserve=True)),
        Need(boot, on_boot, available(boot)),
    ]


Found = tuple[list[str], int, int, dict[str, str]]  # new files, dirs, /usr/etc bytes, kernel


def _whole(source: Repo, checksum: str) -> Found:
    """Nothing deployed yet: every file and directory of the commit (libostree's listing)."""
    tree = source.tree(checksum, "/")
    files = [e.checksum for e in tree.values() if e.checksum]
    dirs = sum(1 for e in tree.values() if e.kind == "d")
    etc = sum(
        _blocks(source.object_path(e.checksum))
        for path, e in tree.items()
        if e.checksum and path.startswith("/usr/etc/")
    )
    kernel = {p: e.checksum or "" for p, e in tree.items() if _is_kernel(p)}
    return files, dirs, etc, kernel


def _update(sysroot: Sysroot, source: Repo, checksum: str, current: str) -> Found:
    """A deployment exists: only the directories of the commit the sysroot's repo lacks are
    read from the source (an update over a slow share reads a few); the checkout and its /etc
    are reckoned as the current default's, plus what is new."""
    new, new_dirs = source.new_files(checksum, sysroot.repo)
    here = sysroot.repo.tree(current, "/")
    dirs = new_dirs + sum(1 for e in here.values() if e.kind == "d")
    etc = sum(
        _blocks(sysroot.repo.object_path(e.checksum))
        for path, e in here.items()
        if e.checksum and path.startswith("/usr/etc/")
    )
    etc += sum(_blocks(source.object_path(c)) for p, c in new.items() if p.startswith("/usr/etc/"))
    kernel = {path: sum_ for path, sum_ in new.items() if _is_kernel(path)}
    return list(new.values()), dirs, etc, kernel


def check(found: Iterable[Need]) -> None:
    """SpaceError for the first file system the command does not fit, naming the bytes needed
    and available."""
    for need in found:
        if not need.fits:
            raise SpaceError(
                f"not enough space on the file system of {need.where}: {_mb(need.needed)} "
                f"needed, {_mb(need.available)} available",
                "free some (petra cleanup drops old deployments; unpin what is pinned) "
                "or grow the file system; nothing was written",
            )


def available(path: Path, reserve: bool = False) -> int:
    """Bytes a writer may still use on the file system of `path`; with `reserve`, less the
    share libostree keeps free there."""
    st = os.statvfs(path)
    free = st.f_bavail * st.f_frsize
    if reserve:
        free -= st.f_blocks * st.f_frsize * _reserve_percent(path) // 100
    return max(free, 0)


def _reserve_percent(repo: Path) -> int:
    try:
        for line in (repo / "config").read_text().splitlines():
            key, _, value = line.partition("=")
            if key.strip() == "min-free-space-percent" and value.strip().isdigit():
                return int(value.strip())
    except OSError:
        pass
    return DEFAULT_RESERVE_PERCENT


def _is_kernel(path: str) -> bool:
    """Whether `path` is a kernel or initramfs where libostree looks for them."""
    return (
        path.startswith("/usr/lib/modules/")
        and path.count("/") == 5
        and path.rsplit("/", 1)[1] in ("vmlinuz", "initramfs.img")
    )


def _kernel_in_use(sysroot: Sysroot, kernel: dict[str, str]) -> bool:
    """Whether a listed deployment boots the same kernel and initramfs (path -> checksum;
    libostree shares the copy in /boot then)."""
    for dep in sysroot.deployments():
        theirs: dict[str, str] = {}
        for path, entry in sysroot.repo.tree(dep.checksum, "/usr/lib/modules", False).items():
            if entry.kind == "d" and path.count("/") == 4:
                found = sysroot.repo.tree(dep.checksum, path, False).items()
                theirs |= {p: e.checksum or "" for p, e in found if _is_kernel(p)}
        if theirs == kernel:
            return True
    return False


def _blocks(path: Path) -> int:
    try:
        return os.lstat(path).st_blocks * 512
    except FileNotFoundError:
        return 0


def _mb(count: int) -> str:
    return f"{count / 1e6:.0f} MB" if count >= 10e6 else f"{count / 1e6:.1f} MB"
