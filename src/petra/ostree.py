"""The one place that talks to libostree (through PyGObject) and the `ostree` CLI.

Everything here is a thin, typed wrapper: transactions, refs, checkouts and pruning are
libostree's. Errors become RepoError with a hint.
"""

from __future__ import annotations

import fcntl
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gi

gi.require_version("OSTree", "1.0")
from gi.repository import Gio, GLib, OSTree  # noqa: E402

from petra.errors import LockedError, RepoError  # noqa: E402
from petra.run import run  # noqa: E402

MetadataValue = str | bool | int | list[str] | list[tuple[str, str]]


@dataclass(frozen=True)
class CommitInfo:
    checksum: str
    parent: str | None
    subject: str
    timestamp: int
    metadata: dict[str, Any]

    @property
    def version(self) -> str:
        return str(self.metadata.get("version", ""))


class Repo:
    """An OSTree repository on disk."""

    def __init__(self, path: Path, handle: Any) -> None:
        self.path = path
        self._repo = handle

    # --- opening ---------------------------------------------------------------------------

    @classmethod
    def open(cls, path: str | os.PathLike[str]) -> Repo:
        """Open an existing repo. Raises RepoError if `path` is not one."""
        p = Path(path)
        if not (p / "config").is_file() or not (p / "objects").is_dir():
            raise RepoError(
                f"{p} is not an OSTree repository",
                "pass the --repo a compose created (or a new path)",
            )
        repo = OSTree.Repo.new(Gio.File.new_for_path(str(p)))
        try:
            repo.open(None)
        except GLib.Error as e:
            raise RepoError(f"cannot open repository {p}: {e.message}", "check the path") from e
        return cls(p, repo)

    @classmethod
    def open_or_create(cls, path: str | os.PathLike[str], mode: str = "bare") -> Repo:
        """Open `path`, creating a repo of `mode` first if the directory is absent or empty.

        Raises RepoError if `path` exists, is not empty and is not a repository.
        """
        p = Path(path)
        if p.exists() and any(p.iterdir()) and not (p / "config").exists():
            raise RepoError(
                f"{p} exists and is not an OSTree repository",
                "choose an empty or new directory for --repo",
            )
        if not (p / "config").exists():
            p.mkdir(parents=True, exist_ok=True)
            repo = OSTree.Repo.new(Gio.File.new_for_path(str(p)))
            repo_mode = {
                "bare": OSTree.RepoMode.BARE,
                "archive": OSTree.RepoMode.ARCHIVE,
                "bare-user": OSTree.RepoMode.BARE_USER,
            }[mode]
            repo.create(repo_mode, None)
        return cls.open(p)

    @contextmanager
    def locked(self) -> Iterator[None]:
        """Hold an exclusive petra lock on this repo (other petra writers fail fast)."""
        fd = os.open(self.path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError as e:
                raise LockedError(
                    f"{self.path} is in use by another petra process", "wait for it to finish"
                ) from e
            yield
        finally:
            os.close(fd)

    # --- refs and commits ------------------------------------------------------------------

    def resolve(self, rev: str, allow_missing: bool = False) -> str | None:
        """The commit a ref, full checksum or unique checksum prefix (4+ hex digits) names.

        Raises RepoError for an unknown or ambiguous rev, unless allow_missing (then None).
        """
        if re.fullmatch(r"[0-9a-f]{4,63}", rev):
            _, found = self._repo.list_commit_objects_starting_with(rev, None)
            matches = sorted({v.get_child_value(0).get_string() for v in found})
            if len(matches) == 1:
                return str(matches[0])
            if len(matches) > 1:
                raise RepoError(f"'{rev}' matches {len(matches)} commits", "give more digits")
        try:
            _, checksum = self._repo.resolve_rev(rev, allow_missing)
        except GLib.Error as e:
            if allow_missing:
                return None
            raise RepoError(
                f"no ref or commit '{rev}' in {self.path}",
                f"list refs with: ostree refs --repo={self.path}",
            ) from e
        if checksum is None:
            return None
        if not self.has_commit(checksum):
            if allow_missing:
                return None
            raise RepoError(f"commit {checksum} is not in {self.path}", "pull or compose it first")
        return str(checksum)

    def refs(self, prefix: str | None = None) -> dict[str, str]:
        """All refs (optionally under `prefix`), mapped to their commits."""
        _, refs = self._repo.list_refs(prefix, None)
        if prefix:
            return {f"{prefix.rstrip('/')}/{k}": v for k, v in refs.items()}
        return dict(refs)

    def read_commit(self, checksum: str) -> CommitInfo:
        """Read one commit. Raises RepoError if it is not in the repo."""
        try:
            _, variant, _state = self._repo.load_commit(checksum)
        except GLib.Error as e:
            raise RepoError(f"commit {checksum} is not in {self.path}", "check the checksum") from e
        metadata = dict(variant.get_child_value(0).unpack())
        parent = OSTree.commit_get_parent(variant)
        subject = variant.get_child_value(3).get_string()
        timestamp = OSTree.commit_get_timestamp(variant)
        return CommitInfo(checksum, parent, subject, int(timestamp), metadata)

    def has_commit(self, checksum: str) -> bool:
        try:
            ok, _ = self._repo.has_object(OSTree.ObjectType.COMMIT, checksum, None)
            return bool(ok)
        except GLib.Error:
            return False

    def log(self, rev: str) -> list[CommitInfo]:
        """The commit `rev` names and its ancestors present in the repo, newest first."""
        checksum = self.resolve(rev)
        history: list[CommitInfo] = []
        while checksum and self.has_commit(checksum):
            info = self.read_commit(checksum)
            history.append(info)
            checksum = info.parent
        return history

    def set_ref(self, ref: str, checksum: str | None) -> None:
        """Point `ref` at `checksum` (None deletes it). ostree writes refs atomically."""
        self._repo.set_ref_immediate(None, ref, checksum, None)

    # --- writing ---------------------------------------------------------------------------

    def commit_dir(
        self,
        tree: Path,
        *,
        subject: str,
        metadata: dict[str, MetadataValue],
        timestamp: int,
        parent: str | None = None,
        ref: str | None = None,
    ) -> str:
        """Commit directory `tree` in one transaction; returns the checksum.

        Files hardlinked from a checkout of this repo are not re-hashed (devino cache). The ref,
        if given, moves only when the whole commit is written; on any failure the transaction is
        aborted and refs are unchanged.
        """
        repo = self._repo
        repo.prepare_transaction(None)
        try:
            repo.scan_hardlinks(None)
            modifier = OSTree.RepoCommitModifier.new(OSTree.RepoCommitModifierFlags.NONE, None)
            mtree = OSTree.MutableTree.new()
            repo.write_directory_to_mtree(Gio.File.new_for_path(str(tree)), mtree, modifier, None)
            _, root = repo.write_mtree(mtree, None)
            _, checksum = repo.write_commit_with_time(
                parent, subject, None, _to_variant(metadata), root, timestamp, None
            )
            if ref:
                repo.transaction_set_ref(None, ref, checksum)
            repo.commit_transaction(None)
        except GLib.Error as e:
            repo.abort_transaction(None)
            raise RepoError(f"commit of {tree} failed: {e.message}", "see the message") from e
        except BaseException:
            repo.abort_transaction(None)
            raise
        return str(checksum)

    def checkout(self, checksum: str, dest: Path) -> None:
        """Check out `checksum` to a new directory `dest`, hardlinking files from the repo.

        Never write into such a checkout's files in place: they are the repo's objects.
        """
        options = OSTree.RepoCheckoutAtOptions()
        options.mode = OSTree.RepoCheckoutMode.NONE
        options.overwrite_mode = OSTree.RepoCheckoutOverwriteMode.NONE
        try:
            self._repo.checkout_at(options, -100, str(dest), checksum, None)  # AT_FDCWD
        except GLib.Error as e:
            raise RepoError(f"checkout of {checksum} failed: {e.message}", "run ostree fsck") from e

    def import_commit(self, source: Repo, checksum: str) -> None:
        """Copy a commit and its objects from `source` (hardlinks when both are bare on one
        file system). Refs are not touched; a killed import leaves only prunable objects.
        """
        run(["ostree", f"--repo={self.path}", "pull-local", str(source.path), checksum])

    def diff(self, old: str, new: str) -> tuple[list[str], list[str], list[str]]:
        """Paths (modified, removed, added) between two commits, from `ostree diff`."""
        out = run(["ostree", f"--repo={self.path}", "diff", old, new]).stdout
        changes: dict[str, list[str]] = {"M": [], "D": [], "A": []}
        for line in out.splitlines():
            kind, _, path = line.partition(" ")
            if kind in changes:
                changes[kind].append(path.strip())
        return changes["M"], changes["D"], changes["A"]


def _to_variant(metadata: dict[str, MetadataValue]) -> Any:
    items: dict[str, Any] = {}
    for key, value in metadata.items():
        if isinstance(value, bool):
            items[key] = GLib.Variant("b", value)
        elif isinstance(value, int):
            items[key] = GLib.Variant("t", value)
        elif isinstance(value, str):
            items[key] = GLib.Variant("s", value)
        elif value and isinstance(value[0], tuple):
            items[key] = GLib.Variant("a(ss)", value)
        else:
            items[key] = GLib.Variant("as", value)
    return GLib.Variant("a{sv}", items)
