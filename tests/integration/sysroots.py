"""What the device tests and the kill harness check on a sysroot: one view of the deployments
from petra, ostree and the bootloader entries; the trees on disk; a file system not frozen."""

from __future__ import annotations

import json
import os
import re
import stat
import subprocess
import time
from pathlib import Path
from typing import Any

from tests.integration.conftest import Releases, ostree, petra


class Source:
    """A ref of the test's own in the shared repo, which the test moves between releases."""

    def __init__(self, releases: Releases, name: str) -> None:
        self.repo = releases.repo
        self.releases = releases
        self.ref = f"test/{re.sub(r'[^A-Za-z0-9_-]', '-', name)}"
        self.point_at(releases.v1)

    def point_at(self, commit: str) -> None:
        ostree("--repo", self.repo, "refs", "--force", f"--create={self.ref}", commit)


def status(sysroot: Path) -> list[dict[str, Any]]:
    data: list[dict[str, Any]] = json.loads(petra("status", "--sysroot", sysroot, "--json").stdout)
    return data


def assert_consistent(sysroot: Path) -> list[dict[str, Any]]:
    """`petra status`, `ostree admin status` and the bootloader entries list the same
    deployments in the same order. Returns petra's status."""
    ours = status(sysroot)
    listed = [(d["osname"], f"{d['commit']}.{d['serial']}") for d in ours]
    theirs = re.findall(
        r"^[* ] (\S+) ([0-9a-f]{64}\.\d+)", ostree("admin", f"--sysroot={sysroot}", "status"), re.M
    )
    assert theirs == listed
    entries = []
    for conf in (sysroot / "boot/loader/entries").glob("*.conf"):
        fields = dict(line.split(" ", 1) for line in conf.read_text().splitlines() if " " in line)
        bootlink = re.search(r"ostree=(\S+)", fields["options"])
        assert bootlink, conf
        target = (sysroot / bootlink.group(1).lstrip("/")).resolve()
        entries.append((int(fields["version"]), target.parent.parent.name, target.name))
    by_entry = [(os, name) for _, os, name in sorted(entries, reverse=True)]
    assert by_entry == listed
    assert [d["index"] for d in ours] == list(range(len(ours)))
    return ours


def deploy_dirs(sysroot: Path) -> dict[str, int]:
    """Each deployment directory and its inode: a re-checkout would change them."""
    return {p.name: p.stat().st_ino for p in sysroot.glob("ostree/deploy/*/deploy/*") if p.is_dir()}


def thaw_guards() -> list[int]:
    """The pids of petra thaw guards still running."""
    pids = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                argv = (proc / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue  # it exited meanwhile
            if any(arg.endswith(b"petra/freeze.py") for arg in argv):
                pids.append(int(proc.name))
    return pids


def frozen(mountpoint: Path, settle: float = 30.0) -> bool:
    """Whether the file system at `mountpoint` is frozen once every thaw guard has done its work
    (waiting at most `settle` seconds for them to exit); it is always thawed afterwards.

    The probe is FITHAW (`fsfreeze -u`): it succeeds only on a frozen file system, and on one
    that is not frozen it fails with EINVAL and changes nothing. (`fsfreeze -f` would tell the
    same by failing with "busy", but it syncs and freezes a healthy file system to find out.)
    """
    deadline = time.monotonic() + settle
    while thaw_guards() and time.monotonic() < deadline:
        time.sleep(0.02)
    probe = subprocess.run(
        ["fsfreeze", "-u", mountpoint], capture_output=True, text=True, timeout=60
    )
    if probe.returncode != 0 and "Invalid argument" not in probe.stderr:
        raise AssertionError(f"cannot probe {mountpoint}: {probe.stderr.strip()}")
    return probe.returncode == 0


def usr_listing(repo: Path, commit: str) -> dict[str, tuple[str, int]]:
    """Every path under /usr in `commit`: its type (d, -, l) and, for a file, its size."""
    listing = {}
    for line in ostree("--repo", repo, "ls", "-R", commit, "/usr").splitlines():
        mode, _, _, size, path = line.split(None, 4)
        kind = mode[0]
        if kind == "l":
            path = path.split(" -> ", 1)[0]
        listing[path] = (kind, int(size) if kind == "-" else 0)
    return listing


def usr_on_disk(root: Path) -> dict[str, tuple[str, int]]:
    """The same for the /usr of a deployment's tree."""
    found = {}
    for dirpath, dirnames, filenames in os.walk(root / "usr"):
        base = "/" + os.path.relpath(dirpath, root)
        found[base] = ("d", 0)
        for name in (*dirnames, *filenames):
            mode = os.lstat(os.path.join(dirpath, name))
            if stat.S_ISLNK(mode.st_mode):
                found[f"{base}/{name}"] = ("l", 0)
            elif stat.S_ISDIR(mode.st_mode):
                found[f"{base}/{name}"] = ("d", 0)
            else:
                found[f"{base}/{name}"] = ("-", mode.st_size)
    return found


def snapshot(sysroot: Path) -> tuple[str, dict[str, int], list[str]]:
    entries = sorted(p.name for p in (sysroot / "boot/loader/entries").glob("*"))
    return petra("status", "--sysroot", sysroot, "--json").stdout, deploy_dirs(sysroot), entries


def assert_refused(proc: subprocess.CompletedProcess[str], *needles: str) -> None:
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()  # progress lines may come first
    errors = [line for line in lines if "error" in line.lower() or "Traceback" in line]
    assert errors == lines[-1:], proc.stderr
    assert lines[-1].startswith("petra: error: ") and "(hint: " in lines[-1], lines[-1]
    for needle in needles:
        assert needle in lines[-1], lines[-1]
