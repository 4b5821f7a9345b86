"""Reading composed commits: what `petra log`, `show` and `diff` report."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from petra.ostree import CommitInfo, Repo


@dataclass(frozen=True)
class PackageChange:
    name: str
    old: str | None
    new: str | None


def packages(info: CommitInfo) -> dict[str, str]:
    """name → version recorded in a petra commit (empty for commits petra did not make)."""
    return {str(n): str(v) for n, v in info.metadata.get("petra.packages", [])}


def describe(info: CommitInfo, ref: str | None = None) -> dict[str, Any]:
    """Everything `petra show` prints, as plain data."""
    meta = info.metadata
    return {
        "commit": info.checksum,
        "ref": ref,
        "parent": info.parent,
        "subject": info.subject,
        "timestamp": info.timestamp,
        "version": info.version,
        "name": meta.get("petra.name"),
        "suite": meta.get("petra.suite"),
        "architecture": meta.get("petra.architecture"),
        "mirror": meta.get("petra.mirror"),
        "spec-digest": meta.get("petra.spec-digest"),
        "kernel": meta.get("ostree.linux"),
        "kernel-args": list(meta.get("petra.kernel-args", [])),
        "size": meta.get("petra.size"),
        "file-count": meta.get("petra.file-count"),
        "packages": packages(info),
    }


def package_changes(old: CommitInfo, new: CommitInfo) -> list[PackageChange]:
    """Packages added, removed or changed in version, sorted by name."""
    a, b = packages(old), packages(new)
    changes = []
    for name in sorted(a.keys() | b.keys()):
        if a.get(name) != b.get(name):
            changes.append(PackageChange(name, a.get(name), b.get(name)))
    return changes


def diff(repo: Repo, old_rev: str, new_rev: str) -> dict[str, Any]:
    """Package and file differences between two commits. Raises RepoError for unknown revs."""
    old = repo.read_commit(_resolved(repo, old_rev))
    new = repo.read_commit(_resolved(repo, new_rev))
    modified, removed, added = repo.diff(old.checksum, new.checksum)
    changes = package_changes(old, new)
    return {
        "old": old.checksum,
        "new": new.checksum,
        "packages": {
            "added": {c.name: c.new for c in changes if c.old is None},
            "removed": {c.name: c.old for c in changes if c.new is None},
            "changed": {c.name: [c.old, c.new] for c in changes if c.old and c.new},
        },
        "files": {"modified": modified, "removed": removed, "added": added},
    }


def _resolved(repo: Repo, rev: str) -> str:
    checksum = repo.resolve(rev)
    assert checksum is not None
    return checksum
