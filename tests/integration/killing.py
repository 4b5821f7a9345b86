"""The kill harness: SIGKILL a command that writes a sysroot at a random moment of its run,
then prove what a kill may leave. After every kill, in this order: the file system is not
frozen (else it is thawed and the test fails with the kill's number and the seed); `petra
status` reads and agrees with `ostree admin status` and the bootloader entries; the
deployment list is exactly the one before or the one the command writes. After a kill that
landed mid-write (the sysroot's boot/ or ostree/ changed while the command ran; after every
kill with $PETRA_KILL_VERIFY=all, as `make soak` sets it): `ostree fsck` of the sysroot's repo
is clean, every listed tree holds every file of its commit's /usr, and (in a harness made with
verify=True) `petra verify` finds every file's bytes, mode and owner as the commit has them.
Then the same command, run again, succeeds and leaves no stray deployment directory.

The sysroot must live on the test run's loop-mounted file system (`testfs`): a kill inside
libostree's freeze window freezes the file system that holds it.
"""

from __future__ import annotations

import os
import random
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.integration.conftest import ostree, petra
from tests.integration.sysroots import (
    assert_consistent,
    deploy_dirs,
    frozen,
    usr_listing,
    usr_on_disk,
)

Ident = tuple[str, int]  # a listed deployment: (commit, serial)
# What a kill may leave: a list of deployments. A bare commit stands for a new deployment of it
# (a serial that was not listed before); NEW for a new deployment of any commit (one built by
# the command, such as a layered commit).
Expected = list[Ident | str]
NEW = "*"
VERIFY_ALL = os.environ.get("PETRA_KILL_VERIFY") == "all"


@dataclass(frozen=True)
class Kill:
    number: int
    command: str
    moment: float  # seconds after the start
    landed: bool  # the command was still running
    wrote: bool  # ... and had already changed the sysroot on disk


class KillHarness:
    """Kills commands on one sysroot with moments drawn from one seed."""

    def __init__(self, testfs: Path, sysroot: Path, seed: int, verify: bool = False) -> None:
        self.testfs = testfs
        self.verify = verify  # petra verify after every kill that landed mid-write
        self.sysroot = sysroot
        self.seed = seed
        self.rng = random.Random(seed)
        self.windows: dict[str, float] = {}
        self.kills: list[Kill] = []
        self._listings: dict[str, dict[str, tuple[str, int]]] = {}
        self._listed: tuple[dict[str, tuple[int, int]], list[Ident]] | None = None

    def calibrate(self, *argv: str | Path) -> None:
        """Run a command to completion; its run time (and a quarter more) is the window in
        which later kills of that command are drawn."""
        start = time.monotonic()
        petra(*argv, "--sysroot", self.sysroot)
        self.windows[str(argv[0])] = 1.25 * (time.monotonic() - start)

    def listed(self, fresh: bool = False) -> list[Ident]:
        """The deployments, checked consistent; read again only when the sysroot changed
        since the last time (or `fresh`)."""
        on_disk = fingerprint(self.sysroot)
        if fresh or self._listed is None or self._listed[0] != on_disk:
            now = [(d["commit"], d["serial"]) for d in assert_consistent(self.sysroot)]
            self._listed = (on_disk, now)
        return list(self._listed[1])

    def kill(
        self,
        argv: tuple[str | Path, ...],
        before: list[Ident],
        after: Expected,
        *,
        rerun: bool = True,
    ) -> Kill:
        """SIGKILL `petra ARGV` (and everything it started) at a random moment, check what it
        left, then (with `rerun`) run it again. `before` is the list now, `after` the one it
        writes."""
        command, number = str(argv[0]), len(self.kills) + 1
        moment = self.rng.uniform(0, self.windows[command])
        label = f"kill {number} (seed {self.seed}: {command} at {moment:.2f} s)"
        on_disk = fingerprint(self.sysroot)
        proc = subprocess.Popen(
            [sys.executable, "-m", "petra", *map(str, argv), "--sysroot", self.sysroot, "-q"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        try:
            proc.wait(timeout=moment)
            landed = False
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # as a power cut would: petra and its children
            proc.wait(timeout=60)
            landed = True
        assert proc.stderr is not None
        errors = proc.stderr.read().decode(errors="replace")
        proc.stderr.close()
        assert landed or proc.returncode == 0, f"{label}: it failed by itself: {errors}"
        wrote = landed and fingerprint(self.sysroot) != on_disk
        kill = Kill(number, command, moment, landed, wrote)
        self.kills.append(kill)

        if frozen(self.testfs):
            pytest.fail(f"{label} left {self.testfs} frozen (thawed it now)")
        now = self.listed(fresh=True)  # petra status reads after every kill
        assert matches(now, before, before) or matches(
            now, after, before
        ), f"{label}: the deployments are {now}, neither {before} nor {after}"
        # The checks that read every object and file, after a kill that landed mid-write (the
        # disk changed while the command ran; one that wrote nothing left what was there).
        if wrote or VERIFY_ALL:
            fsck = ostree("--repo", self.sysroot / "ostree/repo", "fsck")
            assert "no errors found" in fsck, f"{label}: {fsck}"
            for commit, serial in now:
                self.assert_complete(commit, serial, label)
        if (wrote and self.verify) or VERIFY_ALL:
            verified = petra("verify", "--sysroot", self.sysroot, check=False)
            assert verified.returncode == 0, f"{label}: {verified.stdout[-2000:]}"

        if not rerun:
            return kill
        petra(*argv, "--sysroot", self.sysroot)  # the command runs again, to completion
        again = self.listed()
        dirs = sorted(deploy_dirs(self.sysroot))
        assert dirs == sorted(f"{c}.{s}" for c, s in again), f"{label}: stray trees {dirs}"
        return kill

    def assert_complete(self, commit: str, serial: int, label: str) -> None:
        """The deployment's tree holds every file of its commit's /usr, and nothing else."""
        if commit not in self._listings:
            self._listings[commit] = usr_listing(self.sysroot / "ostree/repo", commit)
        [root] = self.sysroot.glob(f"ostree/deploy/*/deploy/{commit}.{serial}")
        found = usr_on_disk(root)
        want = self._listings[commit]
        missing = sorted(p for p in want if found.get(p) != want[p])[:5]
        extra = sorted(p for p in found if p not in want)[:5]
        assert not missing and not extra, f"{label}: {root.name} differs: {missing} {extra}"

    def summary(self) -> str:
        landed = sum(k.landed for k in self.kills)
        wrote = sum(k.wrote for k in self.kills)
        windows = ", ".join(f"{c} {w:.1f} s" for c, w in sorted(self.windows.items()))
        return (
            f"seed {self.seed}: {len(self.kills)} kills, {landed} while the command ran, "
            f"{wrote} of them mid-write; windows: {windows}"
        )


def matches(now: list[Ident], expected: Expected, before: list[Ident]) -> bool:
    if len(now) != len(expected):
        return False
    for got, want in zip(now, expected, strict=True):
        if isinstance(want, str):
            if (want != NEW and got[0] != want) or got in before:
                return False
        elif got != want:
            return False
    return True


_UNLISTED = re.compile(r"ostree/(deploy/[^/]+/(deploy/[^/]+|var)|repo/objects/[^/]+)$")


def fingerprint(sysroot: Path) -> dict[str, tuple[int, int]]:
    """The (mtime, size) of every entry of the sysroot's boot/ and ostree/, without going into
    deployment trees, /var or the object store's fan-out directories: any write changes it."""
    seen = {}
    for top in ("boot", "ostree"):
        for dirpath, dirnames, filenames in os.walk(sysroot / top):
            rel = os.path.relpath(dirpath, sysroot)
            names = [*dirnames, *filenames]
            if _UNLISTED.search(rel):
                dirnames.clear()
                names = []
            for name in names:
                entry = os.lstat(os.path.join(dirpath, name))
                seen[f"{rel}/{name}"] = (entry.st_mtime_ns, entry.st_size)
    return seen
