"""Package layering: a deployment that is a base commit plus packages, built by real apt/dpkg.

What the user asked for (`Layers`: packages from the archive, local .debs, base packages
removed) lives in the deployment's origin file, so `upgrade` builds it again on the new base.
A layered tree is built from a hardlink checkout of the base: apt runs in bubblewrap over a
writable overlay of it (no network; only the host-side download step reaches the archive),
the overlay's changes are replayed onto the checkout, and the result is committed to the
sysroot's repo with the devino cache, so only the new files are hashed. The repo's objects and
the existing deployments are never written; on any failure the work directory is removed and
the deployment list is untouched.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

from petra import mounts, tree
from petra.archive import Archive, ArchiveFailure, Deb, parse_uri_line
from petra.compose import conventions
from petra.compose.rootfs import installed_packages
from petra.errors import ArchiveError, ToolError, UsageError
from petra.ostree import CommitInfo, Deployment, MetadataValue, Repo, Sysroot
from petra.reporting import Reporter
from petra.run import run
from petra.sandbox import Bind, Sandbox

# Origin keys (rpm-ostree's names): packages from the archive, local .debs, removed base packages.
REQUESTED = "packages.requested"
REQUESTED_LOCAL = "packages.requested-local"
REMOVED = "overrides.remove"
LAYER_TMPFILES = "usr/lib/tmpfiles.d/petra-layer.conf"
# Base commit metadata a layered commit keeps as it is (what it is, where it came from, boot).
_INHERITED = (
    "version",
    "petra.name",
    "petra.suite",
    "petra.mirror",
    "petra.architecture",
    "petra.kernel-args",
    "ostree.bootable",
    "ostree.linux",
)
_DEB_NAME = re.compile(r"^[a-z0-9][a-z0-9+.-]+$")
# A build uses the cached package index as it is when it was fetched less than this long ago
# (seconds); if a package is then unknown or gone from the mirror, it fetches it again.
INDEX_MAX_AGE = 3600.0


@dataclass(frozen=True)
class Layers:
    """What a deployment adds to or removes from its base; all sorted, no duplicates."""

    packages: tuple[str, ...] = ()
    local: tuple[str, ...] = ()  # "sha256:package" of local .debs kept in the stateroot
    removed: tuple[str, ...] = ()

    @classmethod
    def of(cls, dep: Deployment) -> Layers:
        return cls(
            tuple(sorted(dep.origin.get(REQUESTED, ()))),
            tuple(sorted(dep.origin.get(REQUESTED_LOCAL, ()))),
            tuple(sorted(dep.origin.get(REMOVED, ()))),
        )

    @property
    def empty(self) -> bool:
        return not (self.packages or self.local or self.removed)

    @property
    def local_names(self) -> tuple[str, ...]:
        return tuple(entry.partition(":")[2] for entry in self.local)

    @property
    def layered(self) -> tuple[str, ...]:
        """Every layered package's name: from the archive, then local .debs."""
        return (*self.packages, *self.local_names)

    def origin(self) -> dict[str, tuple[str, ...]]:
        return {REQUESTED: self.packages, REQUESTED_LOCAL: self.local, REMOVED: self.removed}


# --- pure decisions (unit-tested) -----------------------------------------------------------


def add(layers: Layers, names: Sequence[str], base: dict[str, str]) -> Layers:
    """`layers` plus packages `names`. UsageError for a bad name, one already layered, or one
    the base already has (nothing would change)."""
    for name in names:
        check_name(name)
        if name in layers.layered:
            raise UsageError(f"{name} is already layered", "see: petra status")
        if name in base and name not in layers.removed:
            raise UsageError(f"{name} is already in the base ({base[name]})", "nothing to install")
    return replace(layers, packages=tuple(sorted({*layers.packages, *names})))


def add_local(layers: Layers, entries: Sequence[str]) -> Layers:
    """`layers` plus local .debs given as "sha256:package"; a package already layered from the
    archive or as another local .deb is replaced by this one."""
    names = {e.partition(":")[2] for e in entries}
    kept = [e for e in layers.local if e.partition(":")[2] not in names]
    packages = tuple(p for p in layers.packages if p not in names)
    return replace(layers, packages=packages, local=tuple(sorted({*kept, *entries})))


def remove(layers: Layers, names: Sequence[str]) -> Layers:
    """`layers` without the layered packages `names`. UsageError for one that is not layered."""
    for name in names:
        if name not in layers.layered:
            layered = ", ".join(layers.layered) or "none"
            raise UsageError(f"{name} is not a layered package", f"layered: {layered}")
    gone = set(names)
    return replace(
        layers,
        packages=tuple(p for p in layers.packages if p not in gone),
        local=tuple(e for e in layers.local if e.partition(":")[2] not in gone),
    )


def override_remove(layers: Layers, names: Sequence[str], base: dict[str, str]) -> Layers:
    """`layers` with base packages `names` removed. UsageError if the base lacks one or it is
    removed already."""
    for name in names:
        check_name(name)
        if name not in base:
            raise UsageError(f"the base has no package {name}", "see: petra status")
        if name in layers.removed:
            raise UsageError(f"{name} is already removed", "undo with: petra override reset")
    return replace(layers, removed=tuple(sorted({*layers.removed, *names})))


def override_reset(layers: Layers, names: Sequence[str]) -> Layers:
    """`layers` with the removals of `names` undone. UsageError for one that is not removed."""
    for name in names:
        if name not in layers.removed:
            removed = ", ".join(layers.removed) or "none"
            raise UsageError(f"{name} is not removed from the base", f"removed: {removed}")
    return replace(layers, removed=tuple(p for p in layers.removed if p not in names))


def check_name(name: str) -> None:
    """UsageError unless `name` is a valid Debian package name."""
    if not _DEB_NAME.match(name):
        raise UsageError(f"'{name}' is not a package name", "Debian names: a-z, 0-9, + - .")


def summarise_apt(output: str) -> str:
    """apt's most telling line: dpkg's reason for a failed package, else the first broken
    dependency apt lists, else its first error (without the 'E: ')."""
    lines = [ln.strip() for ln in output.splitlines()]
    for i, line in enumerate(lines[:-1]):
        # dpkg: error processing package foo (--configure):
        #  installed foo package post-installation script subprocess returned error exit status 1
        if line.startswith("dpkg: error processing package"):
            return f"{line.removeprefix('dpkg: ').rstrip(':')}: {lines[i + 1]}"
    broken = [
        ln
        for ln in lines
        if " : " in ln and ("Depends:" in ln or "Conflicts:" in ln or "Breaks:" in ln)
    ]
    if broken:
        return " ".join(broken[0].split())
    errors = [ln[3:] for ln in lines if ln.startswith("E: ")]
    if errors:
        return errors[0]
    return lines[-1] if lines else "apt failed"


def new_tmpfiles(base_lines: Sequence[str], lines: Sequence[str]) -> list[str]:
    """The tmpfiles.d lines in `lines` for paths the base's lines do not create."""
    known = {ln.split()[1] for ln in base_lines if len(ln.split()) > 1}
    return [ln for ln in lines if ln.split()[1] not in known]


# --- building a layered commit ---------------------------------------------------------------


def local_store(sysroot: Sysroot, osname: str) -> Path:
    """Where local .debs are kept for rebuilds: the stateroot's /var/lib/petra/debs."""
    return sysroot.stateroot_var(osname) / "lib/petra/debs"


def keep_local_deb(sysroot: Sysroot, osname: str, path: Path) -> str:
    """Copy a local .deb into the stateroot's store; returns its "sha256:package" entry.

    Raises UsageError if it is missing or not a Debian package."""
    if not path.is_file():
        raise UsageError(f"no file {path}", "give the path of a .deb")
    proc = run(["dpkg-deb", "--field", str(path), "Package"], check=False)
    name = proc.stdout.strip()
    if proc.returncode != 0 or not name:
        raise UsageError(f"{path} is not a Debian package", "give a .deb built by dpkg-deb")
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    store = local_store(sysroot, osname)
    store.mkdir(parents=True, exist_ok=True)
    dest = store / f"{digest}.deb"
    if not dest.exists():
        tmp = store / f".{digest}.tmp"
        shutil.copyfile(path, tmp)
        os.replace(tmp, dest)
    return f"{digest}:{name}"


def build(
    sysroot: Sysroot,
    osname: str,
    base: CommitInfo,
    layers: Layers,
    cache: Path,
    reporter: Reporter,
) -> str:
    """Commit base + `layers` to the sysroot's repo (not under any ref); returns the commit.

    Raises UsageError/ToolError/ArchiveError naming apt's complaint (unknown package, conflict,
    a failing maintainer script, the archive unreachable with a package not cached). Nothing
    but unreferenced objects is left behind on failure.
    """
    mounts.private_mount_namespace()
    # Opened again after the unshare: a hardlink between a descriptor from before it and a path
    # resolved after it crosses two mounts (EXDEV), and the checkout would silently be a copy.
    repo = Repo.open(sysroot.repo.path)
    timings: dict[str, float] = {}
    meta = base.metadata
    archive = Archive(
        str(meta.get("petra.mirror") or "http://deb.debian.org/debian"),
        str(meta.get("petra.suite") or "trixie"),
        str(meta.get("petra.architecture") or "amd64"),
        cache,
    )
    with _workdir(repo) as work:
        start = time.monotonic()
        reporter.step("prepare", f"checkout of {base.version or base.checksum[:12]}")
        checkout = work / "tree"
        repo.checkout(base.checksum, checkout)
        archives = work / "archives"
        (archives / "partial").mkdir(parents=True)
        behind = _indices(archive, reporter, INDEX_MAX_AGE)
        timings["prepare"] = time.monotonic() - start
        with mounts.overlay(checkout, work / "overlay") as (merged, upper):
            start = time.monotonic()
            base_lines = _prepare_var(merged)
            sandbox = _sandbox(merged, archive, archives, local_store(sysroot, osname))
            if layers.removed:
                _remove(sandbox, layers.removed, reporter)
            wanted = [*layers.packages, *(f"/run/petra/debs/{e[:64]}.deb" for e in layers.local)]
            names = " ".join(layers.layered)
            if wanted:
                status = merged / conventions.SYSIMAGE / "dpkg/status"
                try:
                    _download(sandbox, archive, archives, status, wanted, names, reporter)
                except (UsageError, ArchiveError):
                    if not behind:  # the index is as new as it gets
                        raise
                    _indices(archive, reporter, 0)
                    _download(sandbox, archive, archives, status, wanted, names, reporter)
                _install(sandbox, wanted, names, reporter)
            timings["apt"] = time.monotonic() - start
            start = time.monotonic()
            _finish(merged, base_lines)
        tree.apply_upper(upper, checkout)
        _clean_upper_leftovers(checkout)
        packages = installed_packages(checkout, f"{conventions.SYSIMAGE}/dpkg")
        reporter.step("commit", f"{len(packages)} packages")
        checksum = repo.commit_dir(
            checkout,
            subject=f"{base.version or base.checksum[:12]} + {_describe(layers)}",
            metadata=_metadata(base, layers, packages),
            timestamp=base.timestamp,
            parent=base.checksum,
        )
        timings["commit"] = time.monotonic() - start
    split = ", ".join(f"{name} {seconds:.1f} s" for name, seconds in timings.items())
    reporter.done("layer", sum(timings.values()), split)
    return checksum


def base_of(info: CommitInfo) -> str:
    """The base commit of a (possibly layered) commit."""
    return str(info.metadata.get("petra.base") or info.checksum)


def _describe(layers: Layers) -> str:
    text = " ".join(layers.layered) or "-"
    if layers.removed:
        text += " - " + " ".join(layers.removed)
    return text


def _metadata(
    base: CommitInfo, layers: Layers, packages: dict[str, str]
) -> dict[str, MetadataValue]:
    meta: dict[str, MetadataValue] = {
        key: base.metadata[key] for key in _INHERITED if key in base.metadata
    }
    meta["petra.base"] = base.checksum
    meta["petra.layered"] = list(layers.layered)
    meta["petra.removed"] = list(layers.removed)
    meta["petra.packages"] = list(packages.items())
    return meta


@contextmanager
def _workdir(repo: Repo) -> Iterator[Path]:
    # In the repo's tmp/: same file system, so the checkout hardlinks and the commit reuses.
    # The caller holds the sysroot lock, so any other work dir is a killed build's leftover
    # (its overlay was in that process's mount namespace and went with it).
    parent = repo.path / "tmp"
    for stale in parent.glob("petra-layer-*"):
        tree.remove_tree(stale)
    work = Path(tempfile.mkdtemp(prefix="petra-layer-", dir=parent))
    try:
        yield work
    finally:
        # The overlay is unmounted by now (its context has exited); nothing is mounted below.
        tree.remove_tree(work)


def _indices(archive: Archive, reporter: Reporter, max_age: float) -> bool:
    """Refresh the index (see Archive.refresh); returns True if the refresh was skipped."""
    try:
        return archive.refresh(reporter, max_age)
    except ArchiveFailure as e:
        if e.key != "mirror":
            raise
        raise ArchiveError(
            f"{e.message}, and no package index is cached",
            "layering needs the archive once; check the network",
        ) from e


def _prepare_var(merged: Path) -> list[str]:
    """Make /var as the base's tmpfiles.d lines would on a booted system (the package
    databases' links into /usr/lib/sysimage, apt's dirs); returns those lines."""
    conf = merged / "usr/lib/tmpfiles.d/petra-var.conf"
    lines = [ln for ln in conf.read_text().splitlines() if ln and not ln.startswith("#")]
    for line in lines:
        fields = line.split()
        kind, path = fields[0], merged / fields[1].lstrip("/")
        if not fields[1].startswith("/var/"):
            continue
        if kind == "d":
            path.mkdir(parents=True, exist_ok=True)
            os.chmod(path, int(fields[2], 8))
        elif kind == "L":
            path.parent.mkdir(parents=True, exist_ok=True)
            if not path.is_symlink():
                path.symlink_to(fields[6])
    (merged / "etc").mkdir(exist_ok=True)  # where the tree's /usr/etc is bound
    return lines


def _sandbox(merged: Path, archive: Archive, archives: Path, local: Path) -> Sandbox:
    local.mkdir(parents=True, exist_ok=True)
    archive.tree_cache_dir.mkdir(parents=True, exist_ok=True)
    return Sandbox(
        root=merged,
        binds=(
            Bind(merged / "usr/etc", "/etc"),
            Bind(archive.lists_dir, "/var/lib/apt/lists"),
            Bind(archive.tree_cache_dir, "/run/petra/apt-cache"),
            Bind(archives, "/var/cache/apt/archives"),
            Bind(archive.tree_sources_list(), "/run/petra/sources.list", read_only=True),
            Bind(local, "/run/petra/debs", read_only=True),
        ),
        privileged=True,
        env={"DEBIAN_FRONTEND": "noninteractive", "TZ": "UTC"},
    )


_APT_OPTIONS = (
    "-oAPT::Install-Recommends=false",
    "-oAcquire::Languages=none",
    "-oAcquire::ForceHash=SHA256",  # --print-uris gives the checksum the .deb store is keyed by
    "-oDir::Etc::SourceList=/run/petra/sources.list",
    "-oDir::Etc::SourceParts=/nonexistent",
    # The index parsed once per index, not once per build (apt checks it is still current).
    "-oDir::Cache::srcpkgcache=/run/petra/apt-cache/srcpkgcache.bin",
    "-oDPkg::Options::=--force-unsafe-io",
)


def _apt(sandbox: Sandbox, args: Sequence[str]) -> subprocess.CompletedProcess[str]:
    return run(sandbox.argv(["apt-get", *_APT_OPTIONS, *args]), check=False)


def _remove(sandbox: Sandbox, names: Sequence[str], reporter: Reporter) -> None:
    sim = _apt(sandbox, ["purge", "-s", *names])
    if sim.returncode != 0:
        raise UsageError(
            f"cannot remove {' '.join(names)}: {summarise_apt(sim.stdout + sim.stderr)}",
            "see: petra status",
        )
    going = sorted(
        {ln.split()[1] for ln in sim.stdout.splitlines() if ln.startswith(("Remv ", "Purg "))}
    )
    extra = [n for n in going if n not in names]
    if extra:
        raise UsageError(
            f"removing {' '.join(names)} would also remove {', '.join(extra)}, which depend on it",
            "remove those too, or keep it",
        )
    reporter.step("remove", " ".join(names))
    proc = _apt(sandbox, ["purge", "-y", *names])
    if proc.returncode != 0:
        raise ToolError(
            f"apt could not remove {' '.join(names)}: {summarise_apt(proc.stdout + proc.stderr)}",
            "nothing changed",
        )


def _download(
    sandbox: Sandbox,
    archive: Archive,
    archives: Path,
    status: Path,
    wanted: Sequence[str],
    names: str,
    reporter: Reporter,
) -> None:
    """Put the .debs installing `wanted` needs into `archives` (from the store, else the
    archive). UsageError/ArchiveError as _resolve, or if the archive cannot be reached."""
    debs = _resolve(sandbox, wanted, names)
    try:
        archive.fetch(debs, archives, reporter, status)
    except ArchiveError as e:
        missing = ", ".join(d.name for d in debs)
        raise ArchiveError(
            f"cannot download {missing}: {archive.mirror} is unreachable and they "
            "are not in the package cache",
            "check the network, or layer them again when the archive is reachable",
        ) from e


def _resolve(sandbox: Sandbox, wanted: Sequence[str], names: str) -> list[Deb]:
    """What installing `wanted` downloads, from one resolver run with removals forbidden.
    UsageError for an unknown package, one apt cannot install on this base, or one that would
    remove base packages (a conflict: a second run, removals allowed, names them)."""
    proc = _apt(sandbox, ["install", "--print-uris", "-q", "-oAPT::Get::Remove=false", *wanted])
    out = proc.stdout + proc.stderr
    if proc.returncode == 0:
        # Local .debs are listed too (as file: URIs, without a checksum): only the archive's.
        lines = proc.stdout.splitlines()
        return [
            parse_uri_line(ln) for ln in lines if ln.startswith("'") and not ln.startswith("'file:")
        ]
    missing = re.search(r"Unable to locate package (\S+)", out)
    if missing:
        raise UsageError(
            f"unknown package {missing.group(1)}", "check the name: apt-cache search NAME"
        )
    sim = _apt(sandbox, ["install", "-s", *wanted])
    going = sorted({ln.split()[1] for ln in sim.stdout.splitlines() if ln.startswith("Remv ")})
    if sim.returncode == 0 and going:
        raise UsageError(
            f"installing {names} would remove {', '.join(going)} from the base (a conflict)",
            "nothing changed; to remove them anyway: petra override remove " + " ".join(going),
        )
    raise UsageError(f"cannot install {names}: {summarise_apt(out)}", "nothing changed")


def _install(sandbox: Sandbox, wanted: Sequence[str], names: str, reporter: Reporter) -> None:
    reporter.step("apt", f"install {names}")
    # No --no-download: apt copies local .debs in through their file: URIs; the archive's are
    # already in place, and the sandbox has no network for anything else.
    proc = _apt(sandbox, ["install", "-y", *wanted])
    if proc.returncode != 0:
        raise ToolError(
            f"apt could not install {names}: " f"{summarise_apt(proc.stdout + proc.stderr)}",
            "nothing changed; the current deployment is as it was",
        )


def _finish(merged: Path, base_lines: list[str]) -> None:
    """Petra's conventions for what apt changed: new /var dirs become tmpfiles.d lines, then
    /var is emptied again; no machine-specific files."""
    for pattern in ("usr/etc/ssh/ssh_host_*", "usr/etc/*-", "usr/etc/ld.so.cache~"):
        for path in merged.glob(pattern):
            tree.remove(path)
    sysimage = merged / conventions.SYSIMAGE
    states = merged / "var/lib/apt/extended_states"
    if states.is_file() and not states.is_symlink():  # apt replaced the link with a file
        tree.move(states, sysimage / "apt/extended_states")
    conventions.tidy_state(sysimage)
    lines = conventions.var_tmpfiles(merged, merged / "usr/etc")
    extra = new_tmpfiles(base_lines, lines)
    target = merged / LAYER_TMPFILES
    if extra:
        body = "# Made by petra: what the layered packages need under /var.\n"
        tree.write_file(target, body + "\n".join(extra) + "\n")
    for entry in (merged / "var").iterdir():
        tree.remove(entry)


def _clean_upper_leftovers(checkout: Path) -> None:
    # The mount points the sandbox needed: an empty /etc (the tree keeps /usr/etc), /boot.
    etc = checkout / "etc"
    if etc.is_dir() and not any(etc.iterdir()):
        etc.rmdir()
