"""Pins and kernel arguments on a real sysroot: pinned deployments outlive deploy, upgrade,
cleanup and the kept number; `kargs` deploys the default again with edited arguments, seen in
its bootloader entry, while the old deployment keeps its own; bad requests change nothing."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.integration.conftest import Releases, ostree, petra
from tests.integration.sysroots import (
    Source,
    assert_consistent,
    assert_refused,
    deploy_dirs,
    snapshot,
)

pytestmark = pytest.mark.integration


@pytest.fixture
def source(releases: Releases, request: pytest.FixtureRequest) -> Source:
    return Source(releases, request.node.name)


@pytest.fixture
def deployed(source: Source, testfs: Path, request: pytest.FixtureRequest) -> Path:
    """A sysroot (keeping 2) with the source's v1 deployed."""
    path = testfs / "sysroots" / re.sub(r"[^A-Za-z0-9_-]", "-", request.node.name)
    petra("init", "--sysroot", path)
    petra("deploy", "--sysroot", path, "--repo", source.repo, source.ref)
    return path


def listed(sysroot: Path) -> list[tuple[str, int, bool]]:
    return [(d["commit"], d["serial"], d["pinned"]) for d in assert_consistent(sysroot)]


def entry_options(sysroot: Path) -> list[str]:
    """The bootloader entries' options lines, the default's first."""
    entries = []
    for conf in (sysroot / "boot/loader/entries").glob("*.conf"):
        fields = dict(ln.split(" ", 1) for ln in conf.read_text().splitlines() if " " in ln)
        entries.append((int(fields["version"]), fields["options"]))
    return [options for _, options in sorted(entries, reverse=True)]


def test_pins_survive_deploy_upgrade_cleanup_and_the_kept_number(
    source: Source, deployed: Path
) -> None:
    v1, v2 = source.releases.v1, source.releases.v2
    sysroot = deployed
    out = petra("pin", "--sysroot", sysroot, "0").stdout
    assert "pinned" in out and v1 in out
    pinned = (v1, 0, True)
    assert listed(sysroot) == [pinned]
    assert "(default, pinned)" in petra("status", "--sysroot", sysroot).stdout

    source.point_at(v2)
    petra("upgrade", "--sysroot", sysroot)
    source.point_at(v1)
    petra("deploy", "--sysroot", sysroot, "--repo", source.repo, source.ref)
    # keep = 2 counts the unpinned ones: the pinned one is kept besides them
    assert listed(sysroot) == [(v1, 1, False), (v2, 0, False), pinned]
    source.point_at(v2)
    petra("upgrade", "--sysroot", sysroot)
    assert listed(sysroot) == [(v2, 1, False), (v1, 1, False), pinned]
    assert "removed 0 deployment" in petra("cleanup", "--sysroot", sysroot).stdout
    assert listed(sysroot)[-1] == pinned
    petra("pin", "--sysroot", sysroot, "2")  # pinning a pinned one changes nothing
    assert listed(sysroot)[-1] == pinned

    # Unpinned, it counts again: cleanup drops it, the oldest beyond the two kept.
    assert "unpinned" in petra("unpin", "--sysroot", sysroot, "2").stdout
    assert listed(sysroot) == [(v2, 1, False), (v1, 1, False), (v1, 0, False)]
    assert "removed 1 deployment" in petra("cleanup", "--sysroot", sysroot).stdout
    assert listed(sysroot) == [(v2, 1, False), (v1, 1, False)]
    assert len(deploy_dirs(sysroot)) == 2
    assert "no errors found" in ostree("--repo", sysroot / "ostree/repo", "fsck")


def test_kargs_make_a_new_default_and_the_old_keeps_its_own(source: Source, deployed: Path) -> None:
    sysroot = deployed
    v1 = source.releases.v1
    spec_args = petra("kargs", "--sysroot", sysroot).stdout.strip()
    assert spec_args == "console=ttyS0,115200"  # the spec's, on the first deployment
    out = petra(
        "kargs", "--sysroot", sysroot, "--append", "quiet", "--append", "petra.note=a b",
        "--replace", "console=ttyS1,9600",
    ).stdout  # fmt: skip
    assert "deployed" in out
    new, old = assert_consistent(sysroot)
    assert (new["commit"], new["serial"], old["serial"]) == (v1, 1, 0)
    assert new["kernel-args"] == 'console=ttyS1,9600 quiet petra.note="a b"'
    assert old["kernel-args"] == "console=ttyS0,115200"
    new_entry, old_entry = entry_options(sysroot)
    assert 'console=ttyS1,9600 quiet petra.note="a b"' in new_entry and "ostree=" in new_entry
    assert "quiet" not in old_entry and "console=ttyS0,115200" in old_entry
    text = petra("status", "--sysroot", sysroot).stdout
    assert 'kargs   console=ttyS1,9600 quiet petra.note="a b"' in text

    # Deleting what was added: a third deployment; the kept number drops the oldest.
    petra("kargs", "--sysroot", sysroot, "--delete", "quiet", "--delete", "petra.note")
    newest, previous = assert_consistent(sysroot)
    assert newest["kernel-args"] == "console=ttyS1,9600" and previous["serial"] == 1
    assert len(deploy_dirs(sysroot)) == 2
    # An edit that changes nothing writes nothing.
    before = snapshot(sysroot)
    out = petra("kargs", "--sysroot", sysroot, "--append", "x=1", "--delete", "x=1").stdout
    assert "no change" in out and snapshot(sysroot) == before


def test_bad_pin_and_kargs_requests_change_nothing(deployed: Path) -> None:
    sysroot = deployed
    before = snapshot(sysroot)
    cases = [
        (["pin", "1"], "no deployment 1"),
        (["unpin", "7"], "no deployment 7"),
        (["pin", "-1"], "no deployment -1"),
        (["kargs", "--append", "=x"], "the key is empty"),
        (["kargs", "--append", ""], "the key is empty"),
        (["kargs", "--append", "bad key=1"], "not a kernel argument name"),
        (["kargs", "--append", "x=1\n2"], "newline"),
        (["kargs", "--delete", "nosuch"], "not set"),
        (["kargs", "--replace", "nosuch=1"], "not set"),
        (["kargs", "--append", "ostree=/boot/x"], "set by ostree"),
    ]
    for args, message in cases:
        proc = petra(*args, "--sysroot", sysroot, check=False)
        assert_refused(proc, message)
        assert snapshot(sysroot) == before, args
