"""Compose: a spec becomes one OSTree commit, as a flat list of named steps.

    check the repo → read the archive → resolve → (unchanged? stop) → download → package tree
    → customise → conventions → commit → import into the repo and move the ref

Nothing touches the target repo before the commit is complete: the tree is built and committed
in the cache's repo, then imported (hardlinks) and the ref is moved last, atomically. A compose
killed at any point leaves the repo as it was, apart from objects `ostree prune` removes.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from petra import mounts, selfdeb, tree
from petra.archive import Archive, ArchiveFailure, Deb, newest_build_time
from petra.compose import conventions, customize, rootfs
from petra.compose.cache import BuildCache
from petra.errors import RepoError, SpecError
from petra.ostree import MetadataValue, Repo
from petra.reporting import Reporter, timed_step
from petra.spec import Spec

T = TypeVar("T")

# Bump when the conventions change: the same spec then composes to a new commit.
CONVENTIONS = "petra-conventions-2"


@dataclass(frozen=True)
class ComposeResult:
    ref: str
    checksum: str
    changed: bool
    build: str  # "unchanged", "cached", "incremental" or "cold"
    packages: dict[str, str]
    seconds: float


def compose(
    spec: Spec, repo_path: Path, *, cache_dir: Path, reporter: Reporter, force: bool = False
) -> ComposeResult:
    """Compose `spec` into the repo at `repo_path` (created, bare, if absent).

    Returns the ref and commit. If the spec and the resolved package versions are those of the
    ref's current commit, nothing is written (unless `force`). Raises SpecError/ArchiveError for
    bad input before any work, ToolError/RepoError for failures; the repo is unchanged then.
    """
    start = time.monotonic()
    repo_path, cache_dir = repo_path.absolute(), cache_dir.absolute()
    _check_repo_path(repo_path)
    mounts.private_mount_namespace()
    cache = BuildCache(cache_dir)
    with cache.locked():
        repo = Repo.open(repo_path) if (repo_path / "config").exists() else None
        archive = Archive(spec.mirror, spec.suite, spec.architecture, cache_dir)
        with timed_step(reporter, "archive", f"{spec.mirror} {spec.suite}"):
            _archive_call(spec, archive.update)
        requested = rootfs.requested_packages(spec)
        if spec.users:
            requested = sorted({*requested, "passwd"})
        with timed_step(reporter, "resolve", f"{len(requested)} requested") as r:
            debs = _archive_call(spec, lambda: archive.resolve(requested, spec.exclude_packages))
            r["detail"] = f"{len(debs)} packages"
        local = [selfdeb.build(cache_dir / "self")] if spec.petra else []
        input_digest = _input_digest(spec, debs, local)
        parent = repo.resolve(spec.ref, allow_missing=True) if repo else None
        if repo and parent and not force:
            current = repo.read_commit(parent)
            if current.metadata.get("petra.input-digest") == input_digest:
                reporter.info(f"no changes since {parent[:12]}: {spec.ref} stays")
                return ComposeResult(
                    spec.ref,
                    parent,
                    False,
                    "unchanged",
                    _packages(current.metadata),
                    time.monotonic() - start,
                )
        with cache.workdir() as work:
            archives, epoch = _download(archive, debs, work, reporter)
            cache_repo = cache.repo()
            raw, build = _package_tree(
                spec, archive, debs, requested, archives, epoch, cache_repo, work, reporter
            )
            with timed_step(reporter, "customise"):
                root = work / "tree"
                cache_repo.checkout(raw, root)
                with mounts.overlay(root, work / "overlay") as (merged, upper):
                    extra_tmpfiles = customize.apply_spec(spec, merged, epoch, reporter, local)
                tree.apply_upper(upper, root)
            with timed_step(reporter, "conventions"):
                result = conventions.apply(root, extra_tmpfiles, spec.kernel)
            with timed_step(reporter, "commit") as r:
                packages = rootfs.installed_packages(root, f"{conventions.SYSIMAGE}/dpkg")
                count, size = tree.stats(root)
                metadata = _metadata(spec, input_digest, packages, count, size, result)
                checksum = cache_repo.commit_dir(
                    root,
                    subject=f"{spec.name} {spec.version}",
                    metadata=metadata,
                    timestamp=epoch,
                    parent=parent,
                )
                r["detail"] = f"{count} entries, {size / 1e6:.0f} MB"
            with timed_step(reporter, "import", str(repo_path)):
                repo = repo or Repo.open_or_create(repo_path, mode="bare")
                with repo.locked():
                    repo.import_commit(cache_repo, checksum)
                    repo.set_ref(spec.ref, checksum)
    return ComposeResult(spec.ref, checksum, True, build, packages, time.monotonic() - start)


def package_tree_copy(
    spec: Spec, dest: Path, *, cache_dir: Path, reporter: Reporter
) -> tuple[str, str]:
    """Make `dest` a plain Debian root of `spec`'s packages (no conventions), with the
    archive's index in place, as a copy that shares no file with the cache. The tree comes from
    the cache's package trees, built first if new (cold: mmdebstrap; warm: apt on a cached tree
    of a subset, with hardlinks). Returns how it was built ("cached", "incremental" or "cold")
    and the cache commit it was copied from.

    Raises ArchiveFailure for an unreachable mirror, an unknown suite or package (nothing is
    written at `dest` then), ToolError if the build fails, LockedError if a compose holds the
    cache. Needs root and a private mount namespace (which it makes).
    """
    cache_dir = cache_dir.absolute()
    mounts.private_mount_namespace()
    cache = BuildCache(cache_dir)
    with cache.locked():
        archive = Archive(spec.mirror, spec.suite, spec.architecture, cache_dir)
        archive.refresh(reporter)  # offline, the cached index does
        requested = rootfs.requested_packages(spec)
        with timed_step(reporter, "resolve", f"{len(requested)} requested") as r:
            debs = archive.resolve(requested, spec.exclude_packages)
            r["detail"] = f"{len(debs)} packages"
        cache_repo = cache.repo()
        key = rootfs.tree_key(rootfs.base_key(spec), debs, requested)
        raw = cache_repo.refs("raw").get(f"raw/{key}")
        build = "cached"
        if raw is None:  # build it: download what it needs, then mmdebstrap or apt
            with cache.workdir() as work:
                archives, epoch = _download(archive, debs, work, reporter)
                raw, build = _package_tree(
                    spec, archive, debs, requested, archives, epoch, cache_repo, work, reporter
                )
        with timed_step(reporter, "copy", f"package tree {raw[:12]}"):
            cache_repo.checkout(raw, dest, copy=True)
            lists = dest / "var/lib/apt/lists"
            lists.mkdir(parents=True, exist_ok=True)
            for index in archive.lists_dir.glob("*_*"):
                if index.is_file():
                    shutil.copyfile(index, lists / index.name)
    return build, raw


def _download(
    archive: Archive, debs: list[Deb], work: Path, reporter: Reporter
) -> tuple[Path, int]:
    """Every deb of `debs` in work/archives (from the store, else the archive); returns that
    directory and the build date of its newest package (the build's SOURCE_DATE_EPOCH)."""
    with timed_step(reporter, "download") as r:
        archives = work / "archives"
        fetched = archive.fetch(debs, archives, reporter)
        r["detail"] = f"{fetched} downloaded, {len(debs) - fetched} from the cache"
    return archives, newest_build_time([archives / d.filename for d in debs])


def _package_tree(
    spec: Spec,
    archive: Archive,
    debs: list[Deb],
    requested: list[str],
    archives: Path,
    epoch: int,
    cache_repo: Repo,
    work: Path,
    reporter: Reporter,
) -> tuple[str, str]:
    """The cached package tree for this package set, building it (cold or incremental) if new."""
    base = rootfs.base_key(spec)
    key = rootfs.tree_key(base, debs, requested)
    ref = f"raw/{key}"
    existing = cache_repo.refs("raw").get(ref)
    if existing:
        reporter.info(f"package tree {key[:12]} is cached")
        return existing, "cached"
    candidates = []
    for commit in cache_repo.refs("raw").values():
        meta = cache_repo.read_commit(commit).metadata
        if meta.get("petra.base-key") == base:
            candidates.append(rootfs.CachedTree(commit, _packages(meta)))
    reuse = rootfs.pick_base(candidates, debs)
    target = work / "rootfs"
    if reuse:
        with timed_step(reporter, "packages", f"apt on a cached tree of {len(reuse.packages)}"):
            cache_repo.checkout(reuse.checksum, target)
            rootfs.build_incremental(
                spec, archive, archives, target, work / "apt-overlay", epoch, reporter
            )
        build = "incremental"
    else:
        with timed_step(reporter, "packages", f"mmdebstrap {spec.suite}"):
            rootfs.build_cold(spec, archive, archives, target, epoch, reporter)
        build = "cold"
    with timed_step(reporter, "cache", "package tree"):
        installed = rootfs.installed_packages(target)
        checksum = cache_repo.commit_dir(
            target,
            subject=f"package tree {key}",
            timestamp=epoch,
            ref=ref,
            metadata={"petra.base-key": base, "petra.packages": list(installed.items())},
        )
    tree.remove(target)
    return checksum, build


def _metadata(
    spec: Spec,
    input_digest: str,
    packages: dict[str, str],
    count: int,
    size: int,
    result: conventions.ConventionResult,
) -> dict[str, MetadataValue]:
    meta: dict[str, MetadataValue] = {
        "version": spec.version,
        "petra.name": spec.name,
        "petra.spec-digest": spec.digest,
        "petra.input-digest": input_digest,
        "petra.suite": spec.suite,
        "petra.mirror": spec.mirror,
        "petra.architecture": spec.architecture,
        "petra.packages": list(packages.items()),
        "petra.kernel-args": list(spec.kernel_args),
        "petra.file-count": count,
        "petra.size": size,
    }
    if spec.boot_attempts is not None:
        meta["petra.boot-attempts"] = spec.boot_attempts
    if result.kernel_version:
        meta["ostree.bootable"] = True
        meta["ostree.linux"] = result.kernel_version
    return meta


def _input_digest(spec: Spec, debs: list[Deb], local: list[Path]) -> str:
    data = [CONVENTIONS, rootfs.RECIPE, spec.digest, [f"{d.name}={d.version}" for d in debs]]
    if local:  # local .debs (petra's own): their content, not only their names
        data.append([hashlib.sha256(p.read_bytes()).hexdigest() for p in local])
    return hashlib.sha256(json.dumps(data).encode()).hexdigest()


def _packages(metadata: dict[str, object]) -> dict[str, str]:
    raw = metadata.get("petra.packages") or []
    return {str(n): str(v) for n, v in raw}  # type: ignore[attr-defined]


def _archive_call(spec: Spec, call: Callable[[], T]) -> T:
    try:
        return call()
    except ArchiveFailure as e:
        key = f"packages:{e.package}" if e.package else e.key
        where = spec.location(key) if key in spec.locations else spec.location(e.key)
        raise SpecError(f"{where}: {e.message}", e.hint) from e


def _check_repo_path(path: Path) -> None:
    if path.exists() and not path.is_dir():
        raise RepoError(f"{path} is not a directory", "pass a repository directory to --repo")
    if path.is_dir() and any(path.iterdir()) and not (path / "config").exists():
        raise RepoError(
            f"{path} exists and is not an OSTree repository",
            "choose an empty or new directory for --repo",
        )
    if (path / "config").exists():
        Repo.open(path)
