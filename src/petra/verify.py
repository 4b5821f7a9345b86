"""petra verify: does each deployment's /usr hold exactly its commit, and what changed in /etc.

Content is checked, not presence: every file's libostree checksum (its bytes, mode, owner and
extended attributes) is computed and compared with the commit's, as `ostree fsck` does for the
repo's objects. Each inode is hashed once, so deployments that share files (hardlinks to the
same objects) cost one; the hashing runs on every core. Files under /usr that the commit does
not have are named too. /etc is compared with the deployment's /usr/etc, the defaults it was
made from: local changes are listed as information, not as problems.

Reads only: no lock, no network; a deployment being written meanwhile is not listed yet.
"""

from __future__ import annotations

import filecmp
import os
import stat
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from petra.ostree import (
    Deployment,
    Repo,
    Sysroot,
    TreeEntry,
    file_checksum,
    file_checksum_as,
)

_KIND = {stat.S_IFDIR: "d", stat.S_IFREG: "-", stat.S_IFLNK: "l"}


@dataclass(frozen=True)
class Problem:
    """A way a deployment's /usr differs from its commit."""

    path: str
    kind: str  # missing, extra, type, content, mode, owner, target, unreadable
    detail: str = ""


@dataclass(frozen=True)
class EtcChange:
    """A local change of /etc against the deployment's /usr/etc."""

    path: str
    change: str  # added, modified, removed


@dataclass
class Report:
    """What `verify` found in one deployment."""

    deployment: Deployment
    checked: int = 0  # entries of the commit's /usr compared
    problems: list[Problem] = field(default_factory=list)
    etc: list[EtcChange] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def verify(sysroot: Sysroot, deployments: Sequence[Deployment], jobs: int = 0) -> list[Report]:
    """Check each deployment's /usr against its commit and list its /etc changes. Raises
    RepoError if a commit cannot be read from the sysroot's repo (then nothing is reported)."""
    reports = [Report(dep) for dep in deployments]
    pending: dict[tuple[int, int], tuple[Path, list[tuple[Report, str, str]]]] = {}
    for report in reports:
        dep = report.deployment
        listing = sysroot.repo.tree(dep.checksum, "/usr")
        report.checked = len(listing)
        for path, want in listing.items():
            _check_entry(report, path, want, pending)
        for path in _walk(dep.path, "/usr"):
            if path not in listing:
                report.problems.append(Problem(path, "extra", "not in the commit"))
        report.etc = etc_changes(dep.path)
    # The content of every inode still to check, hashed once, on every core.
    items = list(pending.values())
    workers = jobs or os.cpu_count() or 1
    with ThreadPoolExecutor(max_workers=workers) as pool:
        sums = pool.map(_checksum_or_none, [path for path, _ in items], chunksize=64)
        for (_, users), got in zip(items, sums, strict=True):
            for report, path, expected in users:
                if got is None:
                    report.problems.append(Problem(path, "unreadable"))
                elif got != expected:
                    on_disk = report.deployment.path / path.lstrip("/")
                    report.problems += diagnose(on_disk, path, sysroot.repo, expected)
    for report in reports:
        report.problems.sort(key=lambda p: p.path)
    return reports


def _check_entry(
    report: Report,
    path: str,
    want: TreeEntry,
    pending: dict[tuple[int, int], tuple[Path, list[tuple[Report, str, str]]]],
) -> None:
    on_disk = report.deployment.path / path.lstrip("/")
    try:
        st = os.lstat(on_disk)
    except FileNotFoundError:
        report.problems.append(Problem(path, "missing"))
        return
    kind = _KIND.get(stat.S_IFMT(st.st_mode), "?")
    if kind != want.kind:
        report.problems.append(Problem(path, "type", f"a {_name(kind)}, not a {_name(want.kind)}"))
        return
    if kind == "d":  # a directory's mode and owner come from its own metadata object
        if st.st_mode != want.mode:
            detail = f"{st.st_mode:o}, the commit has {want.mode:o}"
            report.problems.append(Problem(path, "mode", detail))
        if (st.st_uid, st.st_gid) != (want.uid, want.gid):
            detail = f"{st.st_uid}:{st.st_gid}, the commit has {want.uid}:{want.gid}"
            report.problems.append(Problem(path, "owner", detail))
    elif kind == "l":
        if os.readlink(on_disk) != want.target:
            detail = f"-> {os.readlink(on_disk)}, the commit has -> {want.target}"
            report.problems.append(Problem(path, "target", detail))
    elif want.checksum is not None:
        # A file's mode and owner are part of its checksum (a bare repo records them only
        # there): hashing it checks them with the bytes.
        key = (st.st_dev, st.st_ino)
        pending.setdefault(key, (on_disk, []))[1].append((report, path, want.checksum))


def diagnose(on_disk: Path, path: str, repo: Repo, checksum: str) -> list[Problem]:
    """Why a file's checksum is not the commit's: its mode, owner or bytes against the repo's
    object when that is intact and another inode; else that it changed in place."""
    obj = repo.object_path(checksum)
    try:
        if os.path.samefile(on_disk, obj):  # the repo's object changed with it
            return _guess(on_disk, path, checksum)
        if file_checksum(obj) != checksum:
            return [Problem(path, "content", "differs, and the repo's object is damaged")]
        have, want = os.lstat(on_disk), os.lstat(obj)
        same_bytes = filecmp.cmp(on_disk, obj, shallow=False)
    except OSError:
        return [Problem(path, "content", "differs; the repo has no intact object to compare")]
    problems = []
    if have.st_mode != want.st_mode:
        detail = f"{have.st_mode:o}, the commit has {want.st_mode:o}"
        problems.append(Problem(path, "mode", detail))
    if (have.st_uid, have.st_gid) != (want.st_uid, want.st_gid):
        detail = f"{have.st_uid}:{have.st_gid}, the commit has {want.st_uid}:{want.st_gid}"
        problems.append(Problem(path, "owner", detail))
    if not same_bytes:
        problems.append(Problem(path, "content", "bytes differ"))
    return problems or [Problem(path, "content", "extended attributes differ")]


# Modes and owners a file of a Debian tree has: a changed one is named by finding which of
# them gives the commit's checksum with the file's bytes.
USUAL_MODES = tuple(stat.S_IFREG | m for m in (0o644, 0o755, 0o600, 0o700, 0o640, 0o750,
                                              0o444, 0o555, 0o4755, 0o2755))  # fmt: skip


def _guess(on_disk: Path, path: str, checksum: str) -> list[Problem]:
    """A file changed in place (so the repo's object too): is it its mode or owner alone?"""
    have = os.lstat(on_disk)
    owners = {(have.st_uid, have.st_gid), (0, 0)}
    for mode in (have.st_mode, *USUAL_MODES):
        for uid, gid in owners:
            if (mode, uid, gid) == (have.st_mode, have.st_uid, have.st_gid):
                continue
            if file_checksum_as(on_disk, mode, uid, gid) == checksum:
                problems = []
                if mode != have.st_mode:
                    detail = f"{have.st_mode:o}, the commit has {mode:o}"
                    problems.append(Problem(path, "mode", detail))
                if (uid, gid) != (have.st_uid, have.st_gid):
                    detail = f"{have.st_uid}:{have.st_gid}, the commit has {uid}:{gid}"
                    problems.append(Problem(path, "owner", detail))
                return problems
    return [Problem(path, "content", "changed in place, and so is the repo's object")]


def _checksum_or_none(path: Path) -> str | None:
    try:
        return file_checksum(path)
    except OSError:
        return None


def _name(kind: str) -> str:
    return {"d": "directory", "-": "file", "l": "symlink"}.get(kind, "special file")


def _walk(root: Path, top: str) -> Iterator[str]:
    """Every path under `top` of the tree at `root` (absolute, as in the commit), not
    following symlinks and not entering other mounts."""
    base = root / top.lstrip("/")
    if not base.is_dir():
        return
    device = os.lstat(base).st_dev
    stack = [(base, top)]
    while stack:
        directory, path = stack.pop()
        with os.scandir(directory) as entries:
            for entry in entries:
                child = f"{path}/{entry.name}"
                yield child
                is_dir = entry.is_dir(follow_symlinks=False)
                if is_dir and entry.stat(follow_symlinks=False).st_dev == device:
                    stack.append((Path(entry.path), child))


def etc_changes(root: Path) -> list[EtcChange]:
    """Local changes of the deployment's /etc against its /usr/etc: added, modified (bytes,
    mode, owner, a symlink's target, the kind) or removed, sorted by path."""
    etc, defaults = (
        set(_walk(root, "/etc")),
        {"/etc" + p.removeprefix("/usr/etc") for p in _walk(root, "/usr/etc")},
    )
    changes = [EtcChange(p, "added") for p in etc - defaults]
    changes += [EtcChange(p, "removed") for p in defaults - etc]
    for path in etc & defaults:
        if _differs(root / path.lstrip("/"), root / "usr" / path.lstrip("/")):
            changes.append(EtcChange(path, "modified"))
    return sorted(changes, key=lambda c: c.path)


def _differs(local: Path, default: Path) -> bool:
    a, b = os.lstat(local), os.lstat(default)
    if (a.st_mode, a.st_uid, a.st_gid) != (b.st_mode, b.st_uid, b.st_gid):
        return True
    if stat.S_ISLNK(a.st_mode):
        return os.readlink(local) != os.readlink(default)
    if stat.S_ISREG(a.st_mode):
        if (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino):
            return False
        return a.st_size != b.st_size or not filecmp.cmp(local, default, shallow=False)
    return False
