"""Crash-safe deployments: deploy, upgrade, rollback and cleanup SIGKILLed at random moments
leave the old system or the new one, complete, usable, and never a frozen file system.

$PETRA_KILLS sets the number of kills of deploy/upgrade/rollback/cleanup (`make test`: 30;
`make soak`: 500 by default), $PETRA_LAYER_KILLS those of install/uninstall (15; 100),
$PETRA_PIN_KILLS those of kargs/pin/unpin/cleanup with a pinned deployment (30; 200), and
$PETRA_KILL_SEED replays a run; the seed and the counts are printed at the end of the run.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.integration.conftest import KILL_REPORT, Releases, ostree, petra
from tests.integration.killing import NEW, Expected, Ident, KillHarness, fingerprint
from tests.integration.sysroots import Source, status

pytestmark = pytest.mark.integration

KILLS = int(os.environ.get("PETRA_KILLS", "30"))
LAYER_KILLS = int(os.environ.get("PETRA_LAYER_KILLS", "15"))
PIN_KILLS = int(os.environ.get("PETRA_PIN_KILLS", "30"))
KEEP = 2


def test_sigkill_at_random_moments_leaves_the_old_or_the_new_system(
    releases: Releases, testfs: Path, kill_seed: int
) -> None:
    source = Source(releases, "kills")
    sysroot = testfs / "sysroots" / "kills"
    sysroot_repo = sysroot / "ostree/repo"
    harness = KillHarness(testfs, sysroot, kill_seed)
    petra("init", "--sysroot", sysroot, "--keep", str(KEEP))

    def deploy_one_more_than_kept(commit: str) -> None:
        """Leave KEEP + 1 deployments, the newest of `commit`, for cleanup to trim."""
        ostree("--repo", sysroot_repo, "config", "set", "petra.keep", str(KEEP + 1))
        source.point_at(commit)
        petra("deploy", "--sysroot", sysroot, "--repo", source.repo, source.ref)
        ostree("--repo", sysroot_repo, "config", "set", "petra.keep", str(KEEP))

    # Each command once, to completion, doing real work: its run time sets its kill window.
    harness.calibrate("deploy", "--repo", source.repo, source.ref)
    source.point_at(releases.v2)
    harness.calibrate("upgrade")
    harness.calibrate("rollback")
    deploy_one_more_than_kept(releases.v2)
    harness.calibrate("cleanup")
    # What counts a kill as mid-write: a command that only reads changes nothing it looks at.
    on_disk = fingerprint(sysroot)
    petra("status", "--sysroot", sysroot)
    assert fingerprint(sysroot) == on_disk

    try:
        for _ in range(KILLS):
            command = harness.rng.choice(["deploy", "upgrade", "rollback", "cleanup"])
            before = harness.listed()
            other = releases.v2 if before[0][0] == releases.v1 else releases.v1
            after: Expected
            if command in ("deploy", "upgrade"):
                source.point_at(other)
                argv: tuple[str | Path, ...] = (
                    ("deploy", "--repo", source.repo, source.ref)
                    if command == "deploy"
                    else ("upgrade",)
                )
                after = [other, *before[: KEEP - 1]]
            elif command == "rollback":
                argv, after = ("rollback",), [before[1], before[0], *before[2:]]
            else:
                deploy_one_more_than_kept(other)
                before = harness.listed()
                argv, after = ("cleanup",), list(before[:KEEP])
            harness.kill(argv, before, after)
            if command in ("deploy", "upgrade"):  # run again: the new system is the default
                assert harness.listed()[0][0] == other
    finally:
        KILL_REPORT.append(f"  {harness.summary()}")
    landed = sum(k.landed for k in harness.kills)
    assert landed >= KILLS // 2, f"only {landed} of {KILLS} kills landed while a command ran"


def test_sigkill_during_install_and_uninstall_leaves_the_old_or_the_new_system(
    releases: Releases, testfs: Path, kill_seed: int
) -> None:
    """Layering builds a commit (apt in an overlay, commit) and then deploys it: a kill at any
    moment leaves the list as it was or with the new layered deployment, complete."""
    source = Source(releases, "layer-kills")
    sysroot = testfs / "sysroots" / "layer-kills"
    cache = os.environ.get("PETRA_TEST_CACHE", "/var/tmp/petra-test-cache")
    harness = KillHarness(testfs, sysroot, kill_seed + 1)
    petra("init", "--sysroot", sysroot, "--keep", str(KEEP))
    petra("deploy", "--sysroot", sysroot, "--repo", source.repo, source.ref)
    install: tuple[str | Path, ...] = ("install", "htop", "--cache", cache)
    harness.calibrate(*install)
    harness.calibrate("uninstall", "htop")
    try:
        for _ in range(LAYER_KILLS):
            before = harness.listed()
            layered = "htop" in status(sysroot)[0]["layered"]
            argv = ("uninstall", "htop") if layered else install
            harness.kill(argv, before, [NEW, before[0]], rerun=False)
    finally:
        KILL_REPORT.append(f"  layering: {harness.summary()}")
    landed = sum(k.landed for k in harness.kills)
    assert landed >= LAYER_KILLS // 2, f"only {landed} of {LAYER_KILLS} kills landed"
    # Whatever the kills left, the next command works and leaves no work directory behind.
    layered = "htop" in status(sysroot)[0]["layered"]
    petra(*(("uninstall", "htop") if layered else install), "--sysroot", sysroot)
    assert not list((sysroot / "ostree/repo/tmp").glob("petra-layer-*"))
    assert "no errors found" in ostree("--repo", sysroot / "ostree/repo", "fsck")


def kept_after(listed: list[tuple[Ident | str, bool]], keep: int) -> Expected:
    """What `keep_list` keeps of `listed` ((deployment, pinned), the default first): pinned
    ones and the first always, then the newest unpinned ones up to `keep`."""
    result = list(listed)
    count = sum(1 for _, pinned in result if not pinned)
    for item in reversed(listed[1:]):
        if count <= keep:
            break
        if not item[1]:
            result.remove(item)
            count -= 1
    return [dep for dep, _ in result]


def test_sigkill_during_kargs_pin_unpin_and_cleanup_with_pins(
    releases: Releases, testfs: Path, kill_seed: int
) -> None:
    """kargs deploys the default again; pin and unpin rewrite an origin file; cleanup drops
    what is beyond the kept number around a pinned deployment. A kill at any moment leaves
    the old state or the new one."""
    source = Source(releases, "pin-kills")
    sysroot = testfs / "sysroots" / "pin-kills"
    sysroot_repo = sysroot / "ostree/repo"
    harness = KillHarness(testfs, sysroot, kill_seed + 2, verify=True)
    petra("init", "--sysroot", sysroot, "--keep", str(KEEP))
    petra("deploy", "--sysroot", sysroot, "--repo", source.repo, source.ref)
    petra("kargs", "--sysroot", sysroot, "--append", "petra.kill=0")

    def one_more_than_kept(label: str) -> None:
        """A new default (kargs) with the kept number lifted: one deployment too many."""
        ostree("--repo", sysroot_repo, "config", "set", "petra.keep", "9")
        petra("kargs", "--sysroot", sysroot, "--replace", f"petra.kill={label}")
        ostree("--repo", sysroot_repo, "config", "set", "petra.keep", str(KEEP))

    harness.calibrate("pin", "1")
    harness.calibrate("unpin", "1")
    harness.calibrate("kargs", "--replace", "petra.kill=1")
    one_more_than_kept("more")
    harness.calibrate("cleanup")
    try:
        for n in range(PIN_KILLS):
            command = harness.rng.choice(["kargs", "pin", "cleanup"])
            if command == "cleanup":
                petra("pin", "--sysroot", sysroot, "1")  # a pinned one among those dropped
                one_more_than_kept(f"more-{n}")
            data = status(sysroot)
            before = harness.listed()
            with_pins: list[tuple[Ident | str, bool]] = [
                (ident, d["pinned"]) for ident, d in zip(before, data, strict=True)
            ]
            if command == "pin":
                pinned = [d["index"] for d in data if d["pinned"]]
                argv = ("unpin", str(pinned[0])) if pinned else ("pin", str(len(data) - 1))
                harness.kill(argv, before, before)
                index = int(argv[1])
                assert status(sysroot)[index]["pinned"] == (argv[0] == "pin")
            elif command == "kargs":
                value = f"petra.kill={n + 2}"
                after = kept_after([(data[0]["commit"], False), *with_pins], KEEP)
                harness.kill(("kargs", "--replace", value), before, after)
                assert value in status(sysroot)[0]["kernel-args"]
            else:
                harness.kill(("cleanup",), before, kept_after(with_pins, KEEP))
                assert any(d["pinned"] for d in status(sysroot))
    finally:
        KILL_REPORT.append(f"  kargs/pin: {harness.summary()}")
    landed = sum(k.landed for k in harness.kills)
    assert landed >= PIN_KILLS // 2, f"only {landed} of {PIN_KILLS} kills landed"
