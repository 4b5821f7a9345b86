"""The device side on a real sysroot: init, deploy, status, upgrade, rollback, cleanup, enter.

Every sysroot lives on the test run's loop-mounted file system (`testfs`). Two commits of a
kernel-bearing tree are shared by all tests: examples/server.toml (v1) and the same spec plus
htop (v2). Each test follows its own ref in the shared repo, so moving it is free.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest

from tests.integration.conftest import Releases, ostree, petra
from tests.integration.sysroots import (
    Source,
    assert_consistent,
    assert_refused,
    deploy_dirs,
    snapshot,
    status,
)

pytestmark = pytest.mark.integration


@pytest.fixture
def source(releases: Releases, request: pytest.FixtureRequest) -> Source:
    return Source(releases, request.node.name)


@pytest.fixture
def sysroot(testfs: Path, request: pytest.FixtureRequest) -> Path:
    """A new, initialised sysroot on the test file system."""
    path = testfs / "sysroots" / re.sub(r"[^A-Za-z0-9_-]", "-", request.node.name)
    petra("init", "--sysroot", path)
    return path


def enter(
    sysroot: Path, *command: str, deployment: int | None = None
) -> subprocess.CompletedProcess[str]:
    extra = ["--deployment", str(deployment)] if deployment is not None else []
    return petra("enter", "--sysroot", sysroot, *extra, "--", *command, check=False)


def test_deploy_shows_in_status_ostree_and_bootloader(source: Source, sysroot: Path) -> None:
    out = petra("deploy", "--sysroot", sysroot, "--repo", source.repo, source.ref).stdout
    assert source.releases.v1 in out
    [dep] = assert_consistent(sysroot)
    assert dep["default"] and not dep["booted"] and not dep["rollback"]
    assert dep["commit"] == source.releases.v1
    assert dep["ref"] == source.ref
    assert dep["version"] == "2026.11.1"
    assert dep["source"] == str(source.repo)
    assert dep["osname"] == "petra"
    assert "console=ttyS0,115200" in dep["kernel-args"]  # from the spec, on the first deploy
    text = petra("status", "--sysroot", sysroot).stdout
    assert source.releases.v1 in text and "(default)" in text
    assert "no errors found" in ostree("--repo", sysroot / "ostree/repo", "fsck")


def test_usr_is_read_only_etc_writable_var_shared(source: Source, sysroot: Path) -> None:
    petra("deploy", "--sysroot", sysroot, "--repo", source.repo, source.ref)
    usr = enter(sysroot, "touch", "/usr/bin/petra-was-here")
    assert usr.returncode != 0
    assert "Read-only file system" in usr.stderr
    assert enter(sysroot, "sh", "-c", "echo local > /etc/petra-local").returncode == 0
    assert enter(sysroot, "cat", "/etc/petra-local").stdout == "local\n"
    assert enter(sysroot, "sh", "-c", "echo state > /var/petra-state").returncode == 0
    [dep] = status(sysroot)
    assert (sysroot / "ostree/deploy/petra/var/petra-state").read_text() == "state\n"
    deployment_root = sysroot / f"ostree/deploy/petra/deploy/{dep['commit']}.0"
    assert (deployment_root / "etc/petra-local").read_text() == "local\n"
    assert enter(sysroot, "sh", "-c", "exit 3").returncode == 3  # the command's exit code
    assert enter(sysroot, "test", "-d", "/proc/self").returncode == 0
    assert enter(sysroot, "stat", "-c", "%a", "/tmp").stdout.strip() == "1777"


def test_upgrade_merges_etc_keeps_var_and_rolls_back(source: Source, sysroot: Path) -> None:
    releases = source.releases
    petra("deploy", "--sysroot", sysroot, "--repo", source.repo, source.ref)
    enter(sysroot, "sh", "-c", "echo mine > /etc/petra-local && echo kept > /var/petra-state")
    enter(sysroot, "sh", "-c", "echo edited >> /etc/motd")

    check = petra("upgrade", "--sysroot", sysroot, "--check", check=False)
    assert check.returncode == 77, check.stdout + check.stderr
    source.point_at(releases.v2)
    check = petra("upgrade", "--sysroot", sysroot, "--check")
    assert releases.v2 in check.stdout and "2026.11.1 -> 2026.11.2" in check.stdout
    assert "htop" in check.stdout and "1 added" in check.stdout
    assert [d["commit"] for d in assert_consistent(sysroot)] == [releases.v1]

    petra("upgrade", "--sysroot", sysroot, "--download-only")
    assert [d["commit"] for d in assert_consistent(sysroot)] == [releases.v1]
    assert "/usr/bin/htop" in ostree(
        "--repo", sysroot / "ostree/repo", "ls", releases.v2, "/usr/bin"
    )

    petra("upgrade", "--sysroot", sysroot)
    new, old = assert_consistent(sysroot)
    assert (new["commit"], new["version"], new["default"]) == (releases.v2, "2026.11.2", True)
    assert (old["commit"], old["rollback"]) == (releases.v1, True)
    assert enter(sysroot, "cat", "/etc/petra-local").stdout == "mine\n"  # three-way merge
    assert enter(sysroot, "tail", "-n1", "/etc/motd").stdout == "edited\n"
    assert enter(sysroot, "cat", "/var/petra-state").stdout == "kept\n"
    assert enter(sysroot, "sh", "-c", "command -v htop").stdout.strip() == "/usr/bin/htop"
    assert enter(sysroot, "sh", "-c", "command -v htop", deployment=1).returncode != 0
    assert petra("upgrade", "--sysroot", sysroot, "--check", check=False).returncode == 77

    before = deploy_dirs(sysroot)
    petra("rollback", "--sysroot", sysroot)
    rolled = assert_consistent(sysroot)
    assert [d["commit"] for d in rolled] == [releases.v1, releases.v2]
    assert enter(sysroot, "cat", "/var/petra-state").stdout == "kept\n"
    assert enter(sysroot, "sh", "-c", "command -v htop").returncode != 0
    petra("rollback", "--sysroot", sysroot)
    again = assert_consistent(sysroot)
    assert [(d["commit"], d["serial"]) for d in again] == [
        (d["commit"], d["serial"]) for d in (new, old)
    ]
    assert deploy_dirs(sysroot) == before  # a reorder: nothing copied or checked out again
    assert "no errors found" in ostree("--repo", sysroot / "ostree/repo", "fsck")


def test_kept_deployments_and_cleanup(source: Source, testfs: Path) -> None:
    releases = source.releases
    sysroot = testfs / "sysroots" / "keep-three"
    petra("init", "--sysroot", sysroot, "--keep", "3")
    petra("deploy", "--sysroot", sysroot, "--repo", source.repo, source.ref)
    source.point_at(releases.v2)
    petra("upgrade", "--sysroot", sysroot)
    petra("deploy", "--sysroot", sysroot, "--repo", source.repo, releases.v1)
    assert [d["commit"] for d in assert_consistent(sysroot)] == [
        releases.v1,
        releases.v2,
        releases.v1,
    ]
    out = petra("deploy", "--sysroot", sysroot, "--repo", source.repo, source.ref).stdout
    assert "removed 1 old deployment" in out
    kept = assert_consistent(sysroot)
    assert [d["commit"] for d in kept] == [releases.v2, releases.v1, releases.v2]
    assert len(deploy_dirs(sysroot)) == 3  # the oldest one's tree is gone too

    ostree("--repo", sysroot / "ostree/repo", "config", "set", "petra.keep", "2")
    assert "removed 1 deployment" in petra("cleanup", "--sysroot", sysroot).stdout
    assert [d["commit"] for d in assert_consistent(sysroot)] == [releases.v2, releases.v1]
    assert len(deploy_dirs(sysroot)) == 2
    assert "removed 0 deployment" in petra("cleanup", "--sysroot", sysroot).stdout
    assert "no errors found" in ostree("--repo", sysroot / "ostree/repo", "fsck")


def test_default_keeps_two(source: Source, sysroot: Path) -> None:
    releases = source.releases
    petra("deploy", "--sysroot", sysroot, "--repo", source.repo, source.ref)
    petra("deploy", "--sysroot", sysroot, "--repo", source.repo, releases.v2)
    petra("deploy", "--sysroot", sysroot, "--repo", source.repo, source.ref)
    assert [d["commit"] for d in assert_consistent(sysroot)] == [releases.v1, releases.v2]
    assert len(deploy_dirs(sysroot)) == 2


def test_a_tree_left_by_a_killed_command_is_removed_by_the_next(
    source: Source, sysroot: Path
) -> None:
    # What a deploy killed after its checkout and before writing the list leaves: an unlisted
    # tree beside the listed ones (the kill harness meets it at random; here it is made).
    petra("deploy", "--sysroot", sysroot, "--repo", source.repo, source.ref)
    [dep] = status(sysroot)
    listed = sysroot / f"ostree/deploy/petra/deploy/{dep['commit']}.{dep['serial']}"
    stray = listed.with_name(f"{dep['commit']}.{dep['serial'] + 1}")
    subprocess.run(["cp", "-al", listed, stray], check=True, timeout=600)
    assert len(deploy_dirs(sysroot)) == 2

    out = petra("upgrade", "--sysroot", sysroot).stdout  # nothing new, but it tidies up
    assert "no update" in out
    assert sorted(deploy_dirs(sysroot)) == [listed.name]
    assert [d["commit"] for d in assert_consistent(sysroot)] == [dep["commit"]]
    assert "no errors found" in ostree("--repo", sysroot / "ostree/repo", "fsck")


# --- bad input: one line with a hint, non-zero exit, nothing changed ----------------------


@pytest.fixture
def deployed(source: Source, sysroot: Path) -> Path:
    petra("deploy", "--sysroot", sysroot, "--repo", source.repo, source.ref)
    return sysroot


def test_unknown_ref_or_commit(source: Source, deployed: Path) -> None:
    before = snapshot(deployed)
    for rev in ("no/such/ref", "0123456789abcdef0123"):
        proc = petra("deploy", "--sysroot", deployed, "--repo", source.repo, rev, check=False)
        assert_refused(proc, rev)
    assert snapshot(deployed) == before


def test_not_a_sysroot_and_init_on_a_used_directory(source: Source, testfs: Path) -> None:
    plain = testfs / "not-a-sysroot"
    plain.mkdir()
    (plain / "precious").write_text("keep me\n")
    for argv in (
        ("status",),
        ("deploy", "--repo", source.repo, source.ref),
        ("upgrade",),
        ("rollback",),
        ("enter", "--", "true"),
    ):
        assert_refused(petra(*argv, "--sysroot", plain, check=False), "not a sysroot")
    assert_refused(petra("init", "--sysroot", plain, check=False), "not empty")
    assert [p.name for p in plain.iterdir()] == ["precious"]


def test_rollback_with_one_deployment(deployed: Path) -> None:
    before = snapshot(deployed)
    assert_refused(petra("rollback", "--sysroot", deployed, check=False), "nothing to roll back")
    assert snapshot(deployed) == before
    # Judging a boot is for the machine that booted the sysroot; and a sysroot that does not
    # boot with GRUB has no trials: status shows no health.
    judged = petra("health", "--boot", "--sysroot", deployed, check=False)
    assert_refused(judged, "not the running system's sysroot")
    assert snapshot(deployed) == before
    status = json.loads(petra("status", "--sysroot", deployed, "--json").stdout)
    assert [d["health"] for d in status] == [None]


def test_enter_out_of_range_and_missing_command(deployed: Path) -> None:
    proc = petra("enter", "--sysroot", deployed, "--deployment", "3", "--", "true", check=False)
    assert_refused(proc, "no deployment 3")
    missing = enter(deployed, "no-such-command")
    assert missing.returncode == 127
    assert "no-such-command: not found" in missing.stderr
    assert "Traceback" not in missing.stderr


def test_upgrade_when_the_source_has_gone(testfs: Path, releases: Releases, sysroot: Path) -> None:
    moved = testfs / "moved-repo"
    ostree("--repo", moved, "init", "--mode=bare")
    ostree("--repo", moved, "pull-local", releases.repo, releases.v1)
    ostree("--repo", moved, "refs", "--create=gone", releases.v1)
    petra("deploy", "--sysroot", sysroot, "--repo", moved, "gone")
    moved.rename(testfs / "moved-repo.away")
    before = snapshot(sysroot)
    for flag in ((), ("--check",)):
        proc = petra("upgrade", "--sysroot", sysroot, *flag, check=False)
        assert_refused(proc, str(moved), "gone")
    assert snapshot(sysroot) == before


def test_a_second_writer_fails_fast(source: Source, deployed: Path) -> None:
    # Another process holds libostree's sysroot lock, as a running deploy would.
    holder = subprocess.Popen(
        [
            "/usr/bin/python3",  # Debian's, which has PyGObject
            "-c",
            "import sys, gi; gi.require_version('OSTree', '1.0');"
            "from gi.repository import OSTree, Gio;"
            f"s = OSTree.Sysroot.new(Gio.File.new_for_path('{deployed}')); s.load(None);"
            "s.lock(); print('locked', flush=True); sys.stdin.read()",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "locked\n"
        before = snapshot(deployed)
        for argv in (
            ("deploy", "--repo", source.repo, source.ref),
            ("upgrade",),
            ("rollback",),
            ("cleanup",),
        ):
            assert_refused(petra(*argv, "--sysroot", deployed, check=False), "in use")
        assert len(status(deployed)) == 1  # a reader runs beside the writer
        assert snapshot(deployed) == before
    finally:
        assert holder.stdin is not None
        holder.stdin.close()  # it exits by itself: nothing that writes a sysroot is killed
        holder.wait(timeout=60)
