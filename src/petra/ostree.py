"""The one place that talks to libostree (through PyGObject) and the `ostree` CLI.

Everything here is a thin, typed wrapper: transactions, refs, checkouts and pruning are
libostree's. Errors become RepoError with a hint.
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gi

gi.require_version("OSTree", "1.0")
from gi.repository import Gio, GLib, OSTree  # noqa: E402

from petra import locks, stateroot  # noqa: E402
from petra.errors import LockedError, RepoError, ToolError  # noqa: E402
from petra.freeze import thaw_guard  # noqa: E402
from petra.run import run  # noqa: E402

MetadataValue = str | bool | int | list[str] | list[tuple[str, str]]
# Origin file groups petra writes besides libostree's [origin] (the names rpm-ostree uses).
ORIGIN_GROUPS = ("packages", "overrides")


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
        with locks.exclusive(
            self.path, f"{self.path} is in use by another petra process", "wait for it to finish"
        ):
            yield

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

    def has_path(self, checksum: str, path: str) -> bool:
        """Whether the tree of commit `checksum` holds `path` (absolute, in the tree)."""
        try:
            _, root, _ = self._repo.read_commit(checksum, None)
        except GLib.Error as e:
            raise RepoError(f"commit {checksum} is not in {self.path}", "check the checksum") from e
        return bool(root.resolve_relative_path(path.lstrip("/")).query_exists(None))

    def log(self, rev: str) -> list[CommitInfo]:
        """The commit `rev` names and its ancestors present in the repo, newest first."""
        checksum = self.resolve(rev)
        history: list[CommitInfo] = []
        while checksum and self.has_commit(checksum):
            info = self.read_commit(checksum)
            history.append(info)
            checksum = info.parent
        return history

    def set_ref(self, ref: str, checksum: str | None, remote: str | None = None) -> None:
        """Point `ref` (of `remote`, if given) at `checksum` (None deletes it). ostree writes
        refs atomically."""
        self._repo.set_ref_immediate(remote, ref, checksum, None)

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

    def checkout(self, checksum: str, dest: Path, *, copy: bool = False) -> None:
        """Check out `checksum` to a new directory `dest`, hardlinking files from the repo
        (never write into such a checkout's files in place: they are the repo's objects), or,
        with `copy`, as files of its own that share nothing with the repo.
        """
        options = OSTree.RepoCheckoutAtOptions()
        options.mode = OSTree.RepoCheckoutMode.NONE
        options.overwrite_mode = OSTree.RepoCheckoutOverwriteMode.NONE
        options.force_copy = copy
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

    def tree(
        self, checksum: str, subpath: str = "/usr", recursive: bool = True
    ) -> dict[str, TreeEntry]:
        """Every entry under `subpath` of the commit (itself included; with recursive=False,
        its entries alone), by absolute path. Raises RepoError if the commit or its tree
        objects are missing."""
        # libostree's own listing walks the tree objects in C: 0.3 s for a server tree,
        # where the GObject file API takes twice that.
        try:
            deep = ["-R"] if recursive else []
            out = run(["ostree", f"--repo={self.path}", "ls", *deep, "-C", checksum, subpath])
        except ToolError as e:
            raise RepoError(
                f"cannot read {subpath} of {checksum[:12]} in {self.path}",
                f"check the repository: ostree fsck --repo={self.path}",
            ) from e
        entries: dict[str, TreeEntry] = {}
        for line in out.stdout.splitlines():
            kind, perms = line[:1], int(line[1:7], 8)
            if kind == "d":
                _, uid, gid, _, _, _, path = line.split(maxsplit=6)
                entries[path] = TreeEntry("d", stat.S_IFDIR | perms, int(uid), int(gid))
                continue
            _, uid, gid, size, sum_, path = line.split(maxsplit=5)
            if kind == "l":
                path, _, target = path.partition(" -> ")
                mode = stat.S_IFLNK | perms
                entries[path] = TreeEntry("l", mode, int(uid), int(gid), sum_, target, int(size))
            else:
                mode = stat.S_IFREG | perms
                entries[path] = TreeEntry("-", mode, int(uid), int(gid), sum_, None, int(size))
        return entries

    def new_files(self, checksum: str, have: Repo) -> tuple[dict[str, str], int]:
        """The files (path -> file checksum) and the number of directories of commit
        `checksum` under the directories whose tree object the repo `have` lacks: what pulling
        it into `have` may bring. Only those directories' tree objects are read (a few for an
        update, over any file system). RepoError if an object is missing."""
        files: dict[str, str] = {}
        dirs = 0
        try:
            _, commit = self._repo.load_variant(OSTree.ObjectType.COMMIT, checksum)
            stack = [("", _hex(commit.get_child_value(6)))]
            while stack:
                path, tree = stack.pop()
                if have._repo.has_object(OSTree.ObjectType.DIR_TREE, tree, None)[1]:
                    continue
                dirs += 1
                _, listing = self._repo.load_variant(OSTree.ObjectType.DIR_TREE, tree)
                entries, subdirs = listing.get_child_value(0), listing.get_child_value(1)
                for i in range(entries.n_children()):
                    entry = entries.get_child_value(i)
                    name = entry.get_child_value(0).get_string()
                    files[f"{path}/{name}"] = _hex(entry.get_child_value(1))
                for i in range(subdirs.n_children()):
                    entry = subdirs.get_child_value(i)
                    name = entry.get_child_value(0).get_string()
                    stack.append((f"{path}/{name}", _hex(entry.get_child_value(1))))
        except GLib.Error as e:
            raise RepoError(
                f"cannot read the tree of {checksum[:12]} in {self.path}: {e.message}",
                f"check the repository: ostree fsck --repo={self.path}",
            ) from e
        return files, dirs

    def object_path(self, checksum: str) -> Path:
        """Where a bare repo keeps the file object `checksum`."""
        return self.path / "objects" / checksum[:2] / f"{checksum[2:]}.file"


_NOFOLLOW = Gio.FileQueryInfoFlags.NOFOLLOW_SYMLINKS


def _hex(checksum: Any) -> str:
    """A checksum held as a byte-array variant, in hex."""
    return bytes(checksum.get_data_as_bytes().get_data()).hex()


@dataclass(frozen=True)
class TreeEntry:
    """One entry of a commit's tree: kind ("d", "-", "l"), mode (with the type bits), owner,
    and a file's content checksum or a symlink's target."""

    kind: str
    mode: int
    uid: int
    gid: int
    checksum: str | None = None
    target: str | None = None
    size: int = 0


def file_checksum(path: Path) -> str:
    """libostree's checksum of the file (or symlink) at `path`: its bytes, mode, owner and
    extended attributes, as a bare repo's object of it would be named. OSError if unreadable."""
    try:
        _, raw = OSTree.checksum_file(Gio.File.new_for_path(str(path)), OSTree.ObjectType.FILE)
    except GLib.Error as e:
        raise OSError(f"cannot read {path}: {e.message}") from e
    return str(OSTree.checksum_from_bytes(raw))


def file_checksum_as(path: Path, mode: int, uid: int, gid: int) -> str:
    """The checksum the file at `path` would have with this mode and owner (and no extended
    attributes): how `verify` tells a changed mode from changed bytes. OSError if unreadable."""
    handle = Gio.File.new_for_path(str(path))
    try:
        info = handle.query_info("standard::*,unix::*", _NOFOLLOW, None)
        info.set_attribute_uint32("unix::mode", mode)
        info.set_attribute_uint32("unix::uid", uid)
        info.set_attribute_uint32("unix::gid", gid)
        _, raw = OSTree.checksum_file_from_input(
            info, None, handle.read(None), OSTree.ObjectType.FILE
        )
    except GLib.Error as e:
        raise OSError(f"cannot read {path}: {e.message}") from e
    return str(OSTree.checksum_from_bytes(raw))


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


# --- sysroots ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Deployment:
    """One deployment of a sysroot, as libostree lists it (index 0 is the default)."""

    index: int
    osname: str
    checksum: str
    serial: int
    refspec: str | None
    booted: bool
    path: Path
    kernel_args: str
    handle: Any = field(compare=False, repr=False)
    # What the origin file records besides the refspec: "group.key" -> its list of strings
    # (petra keeps a deployment's layered packages and overrides there).
    origin: dict[str, tuple[str, ...]] = field(default_factory=dict, compare=False)
    pinned: bool = False  # never removed by deploy, upgrade or cleanup (libostree's pin)


class Sysroot:
    """A sysroot: `/` on a Petra machine, or any directory made by `Sysroot.init`.

    Reading needs no lock. Every write goes through `Sysroot.writing()` (the petra lock, which
    is libostree's own sysroot lock, plus the thaw guard of petra.freeze).
    """

    def __init__(self, path: Path, handle: Any) -> None:
        self.path = path
        self._sysroot = handle
        _, repo = handle.get_repo(None)
        self.repo = Repo(path / "ostree/repo", repo)

    @staticmethod
    def is_sysroot(path: Path) -> bool:
        return stateroot.is_sysroot(path)

    @classmethod
    def open(cls, path: str | os.PathLike[str]) -> Sysroot:
        """Load the sysroot at `path`. Raises RepoError if it is not one."""
        p = Path(path).absolute()
        if not cls.is_sysroot(p):
            hint = (
                "this machine is not a Petra system; pass --sysroot DIR"
                if p == Path("/")
                else f"make one with: petra init --sysroot {path}"
            )
            raise RepoError(f"{p} is not a sysroot", hint)
        handle = OSTree.Sysroot.new(Gio.File.new_for_path(str(p)))
        try:
            handle.load(None)
        except GLib.Error as e:
            raise RepoError(f"cannot load sysroot {p}: {e.message}", "check the path") from e
        return cls(p, handle)

    @classmethod
    def init(cls, path: Path, osname: str) -> Sysroot:
        """Create the sysroot layout and the stateroot `osname` in the existing empty `path`."""
        p = path.absolute()
        run(["ostree", "admin", "init-fs", "--modern", str(p)])
        handle = OSTree.Sysroot.new(Gio.File.new_for_path(str(p)))
        try:
            handle.load(None)
            handle.init_osname(osname, None)
        except GLib.Error as e:
            raise RepoError(f"cannot initialise {p}: {e.message}", "check the path") from e
        return cls(p, handle)

    @contextmanager
    def writing(self, *, tidy: bool = True) -> Iterator[None]:
        """Hold the sysroot lock (fail fast if another writer has it) and a thaw guard.

        With `tidy`, a body that completes also removes what an interrupted command left
        behind (a deployment tree that no listed deployment owns), so that the next command
        finishes its work. Raises LockedError if another writer holds the lock.
        """
        _, acquired = self._sysroot.try_lock()
        if not acquired:
            raise LockedError(
                f"sysroot {self.path} is in use by another petra or ostree process",
                "wait for it to finish, then run the command again",
            )
        try:
            with thaw_guard(self.path / "boot"):
                yield
                if tidy and self.unlisted_trees():
                    self.clean()
        finally:
            self._sysroot.unlock()

    # --- reading ---------------------------------------------------------------------------

    def deployments(self) -> list[Deployment]:
        """Every deployment, in boot order (index 0 is the default)."""
        booted = self._sysroot.get_booted_deployment()
        result = []
        for index, dep in enumerate(self._sysroot.get_deployments()):
            refspec = _keyfile_get(dep.get_origin(), "origin", "refspec")
            origin = _keyfile_lists(dep.get_origin(), ORIGIN_GROUPS)
            bootconfig = dep.get_bootconfig()
            rel = self._sysroot.get_deployment_dirpath(dep)
            result.append(
                Deployment(
                    index=index,
                    osname=dep.get_osname(),
                    checksum=dep.get_csum(),
                    serial=dep.get_deployserial(),
                    refspec=refspec,
                    booted=booted is not None and OSTree.Deployment.equal(dep, booted),
                    path=self.path / rel,
                    kernel_args=(bootconfig.get("options") if bootconfig else None) or "",
                    handle=dep,
                    pinned=bool(dep.is_pinned()),
                    origin=origin,
                )
            )
        return result

    def unlisted_trees(self) -> list[Path]:
        """Deployment trees on disk that no listed deployment owns: what a command killed
        between checking a tree out and writing the list (or pruning) leaves behind."""
        listed = {d.path for d in self.deployments()}
        trees = (self.path / "ostree/deploy").glob("*/deploy/*")
        return sorted(p for p in trees if p.is_dir() and not p.is_symlink() and p not in listed)

    def stateroot_var(self, osname: str) -> Path:
        return self.path / "ostree/deploy" / osname / "var"

    def config(self, section: str, key: str) -> str | None:
        """A value from the sysroot repo's config (petra keeps its settings there)."""
        return _keyfile_get(self.repo._repo.get_config(), section, key)

    def set_config(self, section: str, key: str, value: str) -> None:
        config = self.repo._repo.copy_config()
        config.set_string(section, key, value)
        self.repo._repo.write_config(config)

    # --- writing (inside `writing()`) ------------------------------------------------------

    def ensure_remote(self, name: str, url: str) -> None:
        """Add the unsigned remote `name` for `url` unless it exists (a local repo as a source)."""
        options = GLib.Variant("a{sv}", {"gpg-verify": GLib.Variant("b", False)})
        try:
            self.repo._repo.remote_change(
                None, OSTree.RepoRemoteChange.ADD_IF_NOT_EXISTS, name, url, options, None
            )
        except GLib.Error as e:
            raise RepoError(f"cannot add remote {name} ({url}): {e.message}", "") from e

    def remote_url(self, name: str) -> str | None:
        try:
            _, url = self.repo._repo.remote_get_url(name)
        except GLib.Error:
            return None
        return str(url)

    def pull(
        self, remote: str, ref: str, commit: str | None = None, *, commit_only: bool = False
    ) -> str:
        """Pull `ref` (or `commit`, recorded under `ref`) from `remote`; returns the commit.

        With commit_only, only the commit object (metadata) is fetched. Raises RepoError naming
        the remote and its URL when the pull fails; the repo then holds at most prunable objects.
        """
        flags = OSTree.RepoPullFlags.COMMIT_ONLY if commit_only else OSTree.RepoPullFlags.NONE
        options: dict[str, Any] = {
            "refs": GLib.Variant("as", [ref]),
            "flags": GLib.Variant("i", int(flags)),
        }
        if commit:
            options["override-commit-ids"] = GLib.Variant("as", [commit])
        try:
            self.repo._repo.pull_with_options(remote, GLib.Variant("a{sv}", options), None, None)
        except GLib.Error as e:
            url = self.remote_url(remote) or "?"
            raise RepoError(
                f"cannot pull {ref} from {url}: {e.message}",
                "check that the source repository still exists and holds the ref",
            ) from e
        if commit:
            return commit
        found = self.repo.resolve(f"{remote}:{ref}")
        assert found is not None
        return found

    def deploy_tree(
        self,
        osname: str,
        checksum: str,
        refspec: str,
        override_commit: str | None,
        kernel_args: list[str] | None,
        origin_extra: dict[str, tuple[str, ...]] | None = None,
    ) -> Any:
        """Check out `checksum` as a new (not yet listed) deployment, /etc merged from the
        current default. `origin_extra` ("group.key" -> strings, groups from ORIGIN_GROUPS)
        goes into its origin file. Returns libostree's handle for `write_deployments`."""
        origin = self._sysroot.origin_new_from_refspec(refspec)
        if override_commit:
            origin.set_string("origin", "override-commit", override_commit)
        for name, values in sorted((origin_extra or {}).items()):
            group, _, key = name.partition(".")
            assert group in ORIGIN_GROUPS, name
            if values:
                origin.set_string_list(group, key, list(values))
        merge = self._sysroot.get_merge_deployment(osname)
        try:
            _, new = self._sysroot.deploy_tree(osname, checksum, origin, merge, kernel_args, None)
        except GLib.Error as e:
            hint = (
                "ostree deploys only trees with a kernel: compose a spec with kernel = true"
                if "kernel" in e.message.lower()
                else "the deployment list is unchanged; see the message"
            )
            raise RepoError(f"deploying {checksum[:12]} failed: {e.message}", hint) from e
        return new

    def redeploy(self, dep: Deployment, kernel_args: list[str]) -> Any:
        """Check out `dep`'s commit again as a new (not yet listed) deployment with the same
        origin (not its pin) and `kernel_args`, /etc merged from the current default. Returns
        libostree's handle for `write_deployments`."""
        text = dep.handle.get_origin().to_data()[0]
        origin = GLib.KeyFile()
        origin.load_from_data(text, len(text.encode()), GLib.KeyFileFlags.NONE)
        if origin.has_group("libostree-transient"):
            origin.remove_group("libostree-transient")
        merge = self._sysroot.get_merge_deployment(dep.osname)
        try:
            _, new = self._sysroot.deploy_tree(
                dep.osname, dep.checksum, origin, merge, kernel_args, None
            )
        except GLib.Error as e:
            raise RepoError(f"deploying {dep.checksum[:12]} failed: {e.message}", "") from e
        return new

    def set_pinned(self, dep: Deployment, pinned: bool) -> None:
        """Pin or unpin `dep` (a flag in its origin file, written atomically)."""
        try:
            self._sysroot.deployment_set_pinned(dep.handle, pinned)
        except GLib.Error as e:
            raise RepoError(f"pinning deployment {dep.index} failed: {e.message}", "") from e
        self._sysroot.load(None)

    def write_deployments(self, handles: list[Any], *, prune: bool = True) -> None:
        """Make `handles` the deployment list, in that order (the first is the default).

        libostree swaps the bootloader entries atomically and removes deployments no longer
        listed; with `prune`, it then frees the objects only they used (a walk of the whole
        repo, so a pure reorder skips it). On failure the old list stays in place.
        """
        opts = OSTree.SysrootWriteDeploymentsOpts()
        opts.do_postclean = prune
        try:
            self._sysroot.write_deployments_with_options(handles, opts, None)
        except GLib.Error as e:
            raise RepoError(f"writing the deployment list failed: {e.message}", "") from e
        self._sysroot.load(None)

    def clean(self) -> None:
        """Remove what no listed deployment uses: trees and boot directories left by an
        interrupted write, and the objects only they held. Raises RepoError on failure."""
        try:
            self._sysroot.cleanup(None)
        except GLib.Error as e:
            raise RepoError(f"cleaning the sysroot failed: {e.message}", "") from e


def _keyfile_lists(keyfile: Any, groups: tuple[str, ...]) -> dict[str, tuple[str, ...]]:
    values: dict[str, tuple[str, ...]] = {}
    if keyfile is None:
        return values
    for group in groups:
        if not keyfile.has_group(group):
            continue
        keys, _ = keyfile.get_keys(group)
        for key in keys:
            values[f"{group}.{key}"] = tuple(keyfile.get_string_list(group, key))
    return values


def _keyfile_get(keyfile: Any, section: str, key: str) -> str | None:
    if keyfile is None:
        return None
    try:
        return str(keyfile.get_string(section, key))
    except GLib.Error:
        return None
