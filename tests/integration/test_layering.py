"""Package layering on a real sysroot: install, uninstall, override remove/reset, upgrade with
layers, and every refused request leaving the deployments as they were.

Real apt and dpkg in bubblewrap over the shared server tree (v1) and v2 (v1 + htop); local .debs
are built here with dpkg-deb. Sysroots live on the test file system.
"""

from __future__ import annotations

import os
import re
import subprocess
import textwrap
from pathlib import Path

import pytest

from tests.integration.conftest import Releases, ostree, petra
from tests.integration.sysroots import Source, assert_consistent, deploy_dirs, status

pytestmark = pytest.mark.integration


def make_deb(
    where: Path,
    name: str,
    *,
    postinst_exit: int = 0,
    conflicts: str | None = None,
    var_dir: bool = False,
) -> Path:
    """A small local package: /usr/bin/NAME prints 'NAME works'."""
    root = where / f"{name}-root"
    (root / "DEBIAN").mkdir(parents=True)
    (root / "usr/bin").mkdir(parents=True)
    tool = root / "usr/bin" / name
    tool.write_text(f"#!/bin/sh\necho {name} works\n")
    tool.chmod(0o755)
    control = textwrap.dedent(f"""\
        Package: {name}
        Version: 1.0
        Architecture: all
        Maintainer: Petra tests <tests@petra.invalid>
        Description: a package made by petra's tests
        """)
    if conflicts:
        control += f"Conflicts: {conflicts}\n"
    (root / "DEBIAN/control").write_text(control)
    work = f"mkdir -p /var/lib/{name}\n" if var_dir else ""
    script = f"#!/bin/sh\nset -e\n{work}exit {postinst_exit}\n"
    (root / "DEBIAN/postinst").write_text(script)
    (root / "DEBIAN/postinst").chmod(0o755)
    deb = where / f"{name}_1.0_all.deb"
    subprocess.run(
        ["dpkg-deb", "--root-owner-group", "--build", root, deb],
        check=True,
        capture_output=True,
        timeout=60,
    )
    return deb


@pytest.fixture
def source(releases: Releases, request: pytest.FixtureRequest) -> Source:
    return Source(releases, request.node.name)


@pytest.fixture
def deployed(source: Source, testfs: Path, request: pytest.FixtureRequest) -> Path:
    """A sysroot with the server tree (v1) deployed from the test's own ref."""
    path = testfs / "layering" / re.sub(r"[^A-Za-z0-9_-]", "-", request.node.name)
    petra("init", "--sysroot", path)
    petra("deploy", "--sysroot", path, "--repo", source.repo, source.ref)
    return path


# `petra enter` does not run tmpfiles.d, so /var/lib/dpkg (a link made at boot) is not there.
DPKG_QUERY = ("dpkg-query", "--admindir=/usr/lib/sysimage/dpkg", "-Wf", "${db:Status-Status}")


def enter(sysroot: Path, *command: str, deployment: int = 0) -> subprocess.CompletedProcess[str]:
    return petra(
        "enter", "--sysroot", sysroot, "--deployment", str(deployment), "--", *command, check=False
    )


def layer(sysroot: Path, *args: str | Path, check: bool = True) -> subprocess.CompletedProcess[str]:
    """`petra ARGS` on `sysroot` with the test run's package cache; quiet when it may fail."""
    quiet = () if check else ("--quiet",)
    cache = os.environ.get("PETRA_TEST_CACHE", "/var/tmp/petra-test-cache")
    return petra(*args, "--sysroot", sysroot, "--cache", cache, *quiet, check=check)


def test_install_uninstall_and_overrides_make_new_deployments(
    deployed: Path, releases: Releases, tmp_path: Path
) -> None:
    tool = make_deb(tmp_path, "petra-tool", var_dir=True)
    old_dirs = deploy_dirs(deployed)
    out = layer(deployed, "install", "htop", tool).stdout
    assert "the running system is unchanged" in out
    new, old = assert_consistent(deployed)
    assert new["layered"] == ["htop", "petra-tool"] and new["base"] == releases.v1
    assert new["commit"] != releases.v1 and new["default"]
    assert (old["commit"], old["layered"], old["rollback"]) == (releases.v1, [], True)
    assert set(old_dirs) <= set(deploy_dirs(deployed))  # the old tree was not checked out again
    assert all(deploy_dirs(deployed)[d] == ino for d, ino in old_dirs.items())
    assert enter(deployed, "htop", "--version").returncode == 0
    assert enter(deployed, "petra-tool").stdout == "petra-tool works\n"
    # What its script made in /var becomes a tmpfiles.d line: /var is made at boot, not shipped.
    made = enter(deployed, "cat", "/usr/lib/tmpfiles.d/petra-layer.conf").stdout
    assert "d /var/lib/petra-tool 0755 root root -" in made
    assert enter(deployed, "sh", "-c", "command -v htop", deployment=1).returncode != 0
    assert "layered htop petra-tool" in petra("status", "--sysroot", deployed).stdout
    # The package diff between deployments: by default the rollback against the default.
    diff = petra("diff", "--sysroot", deployed).stdout
    assert "2 added, 0 removed, 0 changed" in diff and "+ petra-tool 1.0" in diff
    assert petra("diff", "--sysroot", deployed, "1", "0").stdout == diff
    assert "+ htop" not in petra("diff", "--sysroot", deployed, "0", "0").stdout
    # The layered commit records what it is made of.
    show = ostree("--repo", deployed / "ostree/repo", "show", new["commit"])
    assert f"Parent:  {releases.v1}" in show and "htop" in show

    layer(deployed, "uninstall", "petra-tool")
    assert [d["layered"] for d in assert_consistent(deployed)] == [["htop"], ["htop", "petra-tool"]]
    assert enter(deployed, "sh", "-c", "command -v petra-tool").returncode != 0

    layer(deployed, "override", "remove", "systemd-timesyncd")
    now = assert_consistent(deployed)[0]
    assert (now["layered"], now["removed"]) == (["htop"], ["systemd-timesyncd"])
    assert enter(deployed, *DPKG_QUERY, "systemd-timesyncd").stdout != "installed"
    assert enter(deployed, "test", "-e", "/usr/lib/systemd/systemd-timesyncd").returncode != 0
    assert enter(deployed, "htop", "--version").returncode == 0
    assert "removed systemd-timesyncd" in petra("status", "--sysroot", deployed).stdout

    layer(deployed, "override", "reset", "systemd-timesyncd")
    layer(deployed, "uninstall", "htop")
    back = assert_consistent(deployed)[0]
    assert (back["commit"], back["layered"], back["removed"]) == (releases.v1, [], [])
    assert enter(deployed, *DPKG_QUERY, "systemd-timesyncd").stdout == "installed"
    assert "no errors found" in ostree("--repo", deployed / "ostree/repo", "fsck")


def test_upgrade_applies_the_layers_to_the_new_base(
    source: Source, deployed: Path, releases: Releases, tmp_path: Path
) -> None:
    layer(deployed, "install", make_deb(tmp_path, "petra-tool"))
    source.point_at(releases.v2)
    layer(deployed, "upgrade")
    new = assert_consistent(deployed)[0]
    assert (new["base"], new["version"], new["layered"]) == (
        releases.v2,
        "2026.11.2",
        ["petra-tool"],
    )
    assert enter(deployed, "petra-tool").returncode == 0
    assert enter(deployed, "htop", "--version").returncode == 0  # from the new base
    assert layer(deployed, "upgrade", "--check", check=False).returncode == 77

    # A layer that no longer installs on the new base stops the upgrade; nothing changes.
    source.point_at(releases.v1)
    petra("deploy", "--sysroot", deployed, "--repo", source.repo, source.ref)
    layer(deployed, "install", make_deb(tmp_path / "c", "no-htop", conflicts="htop"))
    before = [(d["commit"], d["serial"]) for d in assert_consistent(deployed)]
    source.point_at(releases.v2)
    failed = layer(deployed, "upgrade", check=False)
    assert failed.returncode != 0 and "Traceback" not in failed.stderr
    assert "do not install on 2026.11.2" in failed.stderr and "htop" in failed.stderr
    assert [(d["commit"], d["serial"]) for d in assert_consistent(deployed)] == before


def test_refused_requests_change_nothing(
    deployed: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = [(d["commit"], d["serial"]) for d in status(deployed)]
    dirs = deploy_dirs(deployed)
    cases: list[tuple[tuple[str | Path, ...], str]] = [
        (("install", "no-such-package-petra"), "unknown package no-such-package-petra"),
        (("install", make_deb(tmp_path, "breaks-sudo", conflicts="sudo")), "would remove sudo"),
        (("install", make_deb(tmp_path, "bad-postinst", postinst_exit=1)), "apt could not install"),
        (("uninstall", "htop"), "htop is not a layered package"),
        (("override", "remove", "no-such-package-petra"), "the base has no package"),
        (("override", "remove", "libc6"), "libc6"),
        (("override", "remove", "sudo"), "pre-removal script"),  # sudo's prerm refuses
        (("override", "reset", "sudo"), "sudo is not removed"),
    ]
    for args, message in cases:
        proc = layer(deployed, *args, check=False)
        lines = proc.stderr.strip().splitlines()
        assert proc.returncode != 0, args
        assert len(lines) == 1 and message in lines[0] and "hint:" in lines[0], (args, lines)
        assert [(d["commit"], d["serial"]) for d in assert_consistent(deployed)] == before
        assert deploy_dirs(deployed) == dirs
    # The archive unreachable and the package not in the cache (an HTTP proxy that refuses).
    monkeypatch.setenv("http_proxy", "http://127.0.0.1:9")
    proc = layer(deployed, "install", "sl", check=False)
    assert proc.returncode != 0 and "not in the package cache" in proc.stderr, proc.stderr
    assert [(d["commit"], d["serial"]) for d in assert_consistent(deployed)] == before
    assert "no errors found" in ostree("--repo", deployed / "ostree/repo", "fsck")
    assert not list((deployed / "ostree/repo/tmp").glob("petra-layer-*"))
    for args in (("9",), ("x", "0"), ()):  # no deployment 9; not an index; nothing to roll back
        proc = petra("diff", "--sysroot", deployed, *args, check=False)
        assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
