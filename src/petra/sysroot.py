"""Device-side transactions on a sysroot: init, deploy, upgrade, rollback, cleanup, pin, kargs,
enter.

Deployments, the /etc three-way merge, bootloader entries and pruning are libostree's; this
module decides *what* to deploy and in which order, and records where a commit came from.
Every write goes through `Sysroot.writing()`: the sysroot lock plus the thaw guard. A command
either completes (the new deployment list is written in one libostree call, which swaps the
bootloader entries atomically) or leaves the list as it was.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from petra import health, inspect, kargs, layering, space
from petra.compose.cache import default_cache_dir
from petra.errors import PetraError, RepoError, UsageError
from petra.layering import Layers
from petra.ostree import CommitInfo, Deployment, Repo, Sysroot
from petra.reporting import Reporter
from petra.sandbox import Bind, Sandbox
from petra.stateroot import DEFAULT_OSNAME, osname

DEFAULT_KEEP = 2
EXIT_NO_UPDATE = 77  # `upgrade --check` with nothing new (as rpm-ostree does)


# --- pure decisions (unit-tested) -----------------------------------------------------------


def keep_list(
    ordered: Sequence[Deployment], osname: str, keep: int, protect: Sequence[Deployment] = ()
) -> list[Deployment]:
    """The deployments to keep, in order: at most `keep` unpinned ones of `osname`, dropping
    the oldest (last listed) first. The first one, booted ones, pinned ones and those in
    `protect` always stay (pinned ones besides the `keep`); other stateroots are never
    touched."""
    kept = list(ordered)
    count = sum(1 for d in kept if d.osname == osname and not d.pinned)
    for dep in reversed(list(ordered)):
        if count <= keep:
            break
        if dep.osname != osname or dep.pinned:
            continue
        if dep is ordered[0] or dep.booted or dep in protect:
            continue
        kept.remove(dep)
        count -= 1
    return kept


def rollback_target(deployments: Sequence[Deployment]) -> Deployment | None:
    """What `rollback` makes the default: the booted deployment if something else is the
    default (undo a pending update), else the next deployment of the default's stateroot."""
    if not deployments:
        return None
    default = deployments[0]
    booted = next((d for d in deployments if d.booted), None)
    if booted is not None and booted != default:
        return booted
    return next((d for d in deployments[1:] if d.osname == default.osname), None)


def remote_name(url: str) -> str:
    """A stable ostree remote name for a source repository URL."""
    return "petra-" + hashlib.sha256(url.encode()).hexdigest()[:12]


def split_refspec(refspec: str) -> tuple[str | None, str]:
    remote, sep, ref = refspec.partition(":")
    return (remote, ref) if sep else (None, refspec)


# --- the sysroot ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Source:
    """Where a deployment's commit came from and what `upgrade` follows."""

    remote: str | None
    ref: str | None
    url: str | None


def init(path: Path, osname: str = DEFAULT_OSNAME, keep: int = DEFAULT_KEEP) -> Sysroot:
    """Make an empty sysroot with stateroot `osname` at `path` (absent or an empty directory).

    Raises UsageError if `path` holds anything, so nothing of the user's is ever touched.
    """
    if not osname.replace("-", "").replace("_", "").isalnum():
        raise UsageError(f"invalid osname '{osname}'", "use letters, digits, '-' and '_'")
    if keep < 1:
        raise UsageError(f"--keep must be at least 1, not {keep}", "the default is 2")
    if path.exists() and not path.is_dir():
        raise UsageError(f"{path} exists and is not a directory", "choose a new path")
    if path.is_dir() and any(path.iterdir()):
        hint = "it is already a sysroot" if Sysroot.is_sysroot(path) else "choose a new path"
        raise UsageError(f"{path} is not empty", hint)
    path.mkdir(parents=True, exist_ok=True)
    sysroot = Sysroot.init(path, osname)
    sysroot.set_config("petra", "osname", osname)
    sysroot.set_config("petra", "keep", str(keep))
    return sysroot


def osname_of(sysroot: Sysroot) -> str:
    return osname(sysroot.path)


def keep_of(sysroot: Sysroot) -> int:
    value = sysroot.config("petra", "keep")
    return int(value) if value and value.isdigit() and int(value) > 0 else DEFAULT_KEEP


def source_of(sysroot: Sysroot, dep: Deployment) -> Source:
    if not dep.refspec:
        return Source(None, None, None)
    remote, ref = split_refspec(dep.refspec)
    if remote is None and _is_checksum(ref):
        return Source(None, None, None)
    return Source(remote, ref, sysroot.remote_url(remote) if remote else None)


def _is_checksum(text: str) -> bool:
    return len(text) == 64 and all(c in "0123456789abcdef" for c in text)


@dataclass(frozen=True)
class DeployResult:
    checksum: str
    version: str
    removed: int
    seconds: float


def deploy(sysroot: Sysroot, source_repo: Path, rev: str, reporter: Reporter) -> DeployResult:
    """Pull `rev` (a ref or a commit) from `source_repo` and make it the new default deployment.

    The source is recorded as an ostree remote, so `upgrade` knows where to look. Raises
    RepoError for an unknown ref or commit before anything is written; on any later failure the
    deployment list is unchanged.
    """
    start = time.monotonic()
    source = Repo.open(source_repo)
    checksum = source.resolve(rev)
    assert checksum is not None
    ref = rev if rev in source.refs() else ref_holding(source, checksum)
    url = "file://" + str(source_repo.absolute())
    remote = remote_name(url)
    with sysroot.writing():
        space.check(space.needs(sysroot, source, checksum))
        sysroot.ensure_remote(remote, url)
        reporter.step("pull", f"{rev} from {source_repo}")
        if ref:
            pulled = sysroot.pull(remote, ref, None if rev == ref else checksum)
            refspec, override = f"{remote}:{ref}", (None if rev == ref else checksum)
        else:
            pulled = sysroot.pull(remote, checksum)
            refspec, override = checksum, None
        return _deploy_commit(sysroot, pulled, refspec, override, reporter, start)


def ref_holding(repo: Repo, checksum: str) -> str | None:
    """The ref whose history holds `checksum` (so a deployed commit can still be upgraded)."""
    for ref in sorted(repo.refs()):
        if any(c.checksum == checksum for c in repo.log(ref)):
            return ref
    return None


def _deploy_commit(
    sysroot: Sysroot,
    checksum: str,
    refspec: str,
    override: str | None,
    reporter: Reporter,
    start: float,
    layers: Layers | None = None,
) -> DeployResult:
    osname = osname_of(sysroot)
    current = sysroot.deployments()
    info = sysroot.repo.read_commit(checksum)
    # The first deployment takes the kernel arguments the spec asked for; later ones inherit
    # the current default's (libostree copies them from the merge deployment).
    kargs = None if current else [str(a) for a in info.metadata.get("petra.kernel-args", [])]
    reporter.step("deploy", f"{info.version or checksum[:12]} into {osname}")
    extra = layers.origin() if layers is not None and not layers.empty else None
    new = sysroot.deploy_tree(osname, checksum, refspec, override, kargs, extra)
    removed = _add_default(sysroot, new, current, osname, info)
    return DeployResult(checksum, info.version, removed, time.monotonic() - start)


def _add_default(
    sysroot: Sysroot, new: Any, current: list[Deployment], osname: str, info: CommitInfo
) -> int:
    """List `new` (a deployment of `info`) first, on trial, before `current`, less what the
    kept number drops (never a pinned one); returns how many were dropped."""
    planned = keep_list([_placeholder(new, osname), *current], osname, keep_of(sysroot))
    _start_trial(sysroot, planned[0], info)
    sysroot.write_deployments([new] + [d.handle for d in planned[1:]])
    return len(current) + 1 - len(planned)


def _placeholder(handle: Any, osname: str) -> Deployment:
    """A Deployment standing for a new (not yet listed) one."""
    checksum, serial = handle.get_csum(), handle.get_deployserial()
    return Deployment(0, osname, checksum, serial, None, False, Path(), "", handle)


def _start_trial(sysroot: Sysroot, dep: Deployment, info: CommitInfo) -> None:
    """`dep`, about to become the default, boots on trial (see health)."""
    attempts = health.attempts_of(info.metadata)
    var = sysroot.stateroot_var(dep.osname)
    health.start_trial(sysroot.path, var, dep, info.version, attempts)


@dataclass(frozen=True)
class UpdateCheck:
    current: CommitInfo
    available: CommitInfo | None  # None: nothing new
    changes: list[inspect.PackageChange]


def check_update(sysroot: Sysroot, commit_only: bool) -> tuple[Deployment, str, str]:
    """Fetch the newest commit of the default deployment's tracked ref.

    Returns (default deployment, its refspec, new checksum). Raises RepoError if there is no
    deployment, it tracks no ref, or its source is gone (the message names it).
    """
    current = sysroot.deployments()
    if not current:
        raise RepoError(
            f"{sysroot.path} has no deployment", "deploy one with: petra deploy --repo R REF"
        )
    default = current[0]
    source = source_of(sysroot, default)
    if not source.remote or not source.ref:
        raise RepoError(
            f"deployment 0 ({default.checksum[:12]}) was deployed from a commit that no ref "
            "holds, so there is nothing to follow",
            "deploy a ref: petra deploy --repo R REF",
        )
    url = source.url or ""
    local = Path(url.removeprefix("file://"))
    if url.startswith("file://") and not (local / "config").is_file():
        raise RepoError(
            f"the source of {source.ref}, {local}, is gone",
            "deploy again from a repository that exists: petra deploy --repo R REF",
        )
    if url.startswith("file://") and not commit_only:  # will the new commit fit?
        origin = Repo.open(local)
        new = origin.resolve(source.ref, allow_missing=True)
        if new and new != layering.base_of(sysroot.repo.read_commit(default.checksum)):
            space.check(space.needs(sysroot, origin, new))
    checksum = sysroot.pull(source.remote, source.ref, commit_only=commit_only)
    return default, f"{source.remote}:{source.ref}", checksum


def upgrade_check(sysroot: Sysroot) -> UpdateCheck:
    """What `upgrade` would do, fetching only commit metadata. Nothing is deployed."""
    with sysroot.writing(tidy=False):
        default, _, checksum = check_update(sysroot, commit_only=True)
    current = sysroot.repo.read_commit(default.checksum)
    if checksum == layering.base_of(current):
        return UpdateCheck(current, None, [])
    new = sysroot.repo.read_commit(checksum)
    return UpdateCheck(current, new, inspect.package_changes(current, new))


def upgrade(
    sysroot: Sysroot, reporter: Reporter, download_only: bool = False, cache: Path | None = None
) -> DeployResult | None:
    """Pull the newest commit of the tracked ref and deploy it as the new default, with the
    default's layered packages and overrides applied again (apt, packages cached in `cache`).

    Returns None when there is nothing new (nothing is written). With download_only, the
    commit is pulled and kept (under the remote ref) but not deployed (`removed` is 0). Raises
    RepoError when the source is gone, UsageError/ToolError when a layered package no longer
    installs on the new base; the deployment list is then unchanged.
    """
    start = time.monotonic()
    with sysroot.writing():
        reporter.step("pull", "newest commit of the tracked ref")
        default, refspec, checksum = check_update(sysroot, commit_only=False)
        if checksum == layering.base_of(sysroot.repo.read_commit(default.checksum)):
            return None
        new = sysroot.repo.read_commit(checksum)
        if download_only:
            return DeployResult(checksum, new.version, 0, time.monotonic() - start)
        layers = Layers.of(default)
        if layers.empty:
            return _deploy_commit(sysroot, checksum, refspec, None, reporter, start)
        built = _build(sysroot, new, layers, cache, reporter, f"on {new.version or checksum}")
        return _deploy_commit(sysroot, built, refspec, None, reporter, start, layers)


LayerChange = Callable[[Layers, dict[str, str]], Layers]


def change_layers(
    sysroot: Sysroot, change: LayerChange, reporter: Reporter, cache: Path | None = None
) -> DeployResult:
    """Deploy, as the new default, the default's base with the layers `change` makes of the
    default's (given the base's packages): install, uninstall, override remove/reset.

    The running and the default deployment are untouched. Raises UsageError for a request
    that makes no sense (before any work), UsageError/ToolError/ArchiveError naming apt's
    complaint; the deployment list is unchanged on any failure.
    """
    start = time.monotonic()
    with sysroot.writing():
        current = sysroot.deployments()
        if not current:
            raise RepoError(
                f"{sysroot.path} has no deployment", "deploy one with: petra deploy --repo R REF"
            )
        default = current[0]
        base_checksum = layering.base_of(sysroot.repo.read_commit(default.checksum))
        if not sysroot.repo.has_commit(base_checksum):
            raise RepoError(
                f"the base commit {base_checksum[:12]} of deployment 0 is gone",
                "upgrade or deploy a base first: petra upgrade",
            )
        base = sysroot.repo.read_commit(base_checksum)
        layers = change(Layers.of(default), inspect.packages(base))
        refspec = default.refspec or base_checksum
        if layers.empty:
            return _deploy_commit(sysroot, base_checksum, refspec, None, reporter, start)
        built = _build(sysroot, base, layers, cache, reporter, "")
        return _deploy_commit(sysroot, built, refspec, None, reporter, start, layers)


def _build(
    sysroot: Sysroot,
    base: CommitInfo,
    layers: Layers,
    cache: Path | None,
    reporter: Reporter,
    where: str,
) -> str:
    try:
        return layering.build(
            sysroot, osname_of(sysroot), base, layers, cache or default_cache_dir(), reporter
        )
    except PetraError as e:
        if where:
            e.message = f"the layered packages do not install {where}: {e.message}"
        raise


def rollback(sysroot: Sysroot) -> Deployment:
    """Make the rollback deployment the default: a reorder of the list, no checkout.

    Raises RepoError if there is nothing to roll back to; nothing is written then.
    """
    with sysroot.writing():
        current = sysroot.deployments()
        target = rollback_target(current)
        if target is None:
            raise RepoError(
                f"{sysroot.path} has {len(current)} deployment(s): nothing to roll back to",
                "rollback needs an earlier deployment; see: petra status",
            )
        order = [target, *(d for d in current if d is not target)]
        if not target.booted:  # the running one needs no trial
            _start_trial(sysroot, target, sysroot.repo.read_commit(target.checksum))
        sysroot.write_deployments([d.handle for d in order], prune=False)
    return target


def cleanup(sysroot: Sysroot) -> int:
    """Drop deployments beyond the kept number, remove what an interrupted command left (an
    unlisted tree, an old boot directory) and free the objects only they used.

    Returns how many deployments were removed. Raises RepoError on failure, list unchanged.
    """
    with sysroot.writing():
        current = sysroot.deployments()
        kept = keep_list(current, osname_of(sysroot), keep_of(sysroot))
        if len(kept) < len(current):
            sysroot.write_deployments([d.handle for d in kept])  # cleans up after itself
        else:
            sysroot.clean()  # (also what an interrupted command left)
    return len(current) - len(kept)


def pin(sysroot: Sysroot, index: int, pinned: bool = True) -> Deployment:
    """Pin deployment `index` (never removed by deploy, upgrade or cleanup; not counted in
    the kept number), or unpin it. UsageError if there is no such deployment; nothing is
    written then, nor when it already is as asked."""
    with sysroot.writing(tidy=False):
        dep = pick(sysroot, index)
        if dep.pinned != pinned:
            sysroot.set_pinned(dep, pinned)
    return sysroot.deployments()[index]


def set_kernel_args(
    sysroot: Sysroot, edits: Sequence[kargs.Edit], reporter: Reporter
) -> DeployResult | None:
    """Deploy the default's commit again, as the new default, with its kernel arguments
    edited; the old deployment keeps its own. Returns None when the edits change nothing
    (nothing is written). UsageError for an edit that cannot apply, before anything is
    written; on a later failure the deployment list is unchanged."""
    start = time.monotonic()
    with sysroot.writing():
        current = sysroot.deployments()
        default = pick(sysroot, None)
        words = kargs.editable(default.kernel_args)
        wanted = kargs.apply(words, edits)
        if wanted == words:
            return None
        reporter.step("deploy", f"{default.checksum[:12]} with {' '.join(wanted)}")
        new = sysroot.redeploy(default, wanted)
        info = sysroot.repo.read_commit(default.checksum)
        removed = _add_default(sysroot, new, current, default.osname, info)
    return DeployResult(default.checksum, info.version, removed, time.monotonic() - start)


# --- enter ---------------------------------------------------------------------------------


def pick(sysroot: Sysroot, index: int | None) -> Deployment:
    """Deployment `index` (default: the default one). Raises UsageError if out of range."""
    deployments = sysroot.deployments()
    if not deployments:
        raise RepoError(f"{sysroot.path} has no deployment", "deploy one with: petra deploy")
    if index is None:
        return deployments[0]
    if not 0 <= index < len(deployments):
        raise UsageError(
            f"no deployment {index}: {sysroot.path} has {len(deployments)} (0 to "
            f"{len(deployments) - 1})",
            "see: petra status",
        )
    return deployments[index]


def enter_argv(sysroot: Sysroot, dep: Deployment, command: Sequence[str]) -> list[str]:
    """The bubblewrap argv that runs `command` (a login shell if empty) in deployment `dep`:
    `/` the deployment, `/usr` read-only, its own writable `/etc`, the stateroot's `/var`."""
    if command:
        # Through a shell, so a missing command gives the shell's message and exit 127.
        inner = ["/bin/sh", "-c", 'exec "$@"', "sh", *command]
    else:
        inner = ["/bin/bash", "-l"] if (dep.path / "usr/bin/bash").exists() else ["/bin/sh"]
    sandbox = Sandbox(
        root=dep.path,
        binds=(Bind(sysroot.stateroot_var(dep.osname), "/var"),),
        network=True,
        privileged=True,
        read_only_usr=True,
        env={"TERM": os.environ.get("TERM", "dumb"), "PS1": f"[{dep.osname}:{dep.index}] \\w# "},
    )
    return sandbox.argv(inner)
