"""petra verify on a real sysroot: a clean deployment passes; a file replaced with other bytes,
a changed mode and a file added under /usr are named, with a non-zero exit; local /etc changes
are listed as information; verify writes nothing and needs no network."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from tests.integration.conftest import Releases, petra
from tests.integration.sysroots import Source, assert_refused, snapshot

pytestmark = pytest.mark.integration


@pytest.fixture
def sysroot(releases: Releases, testfs: Path, request: pytest.FixtureRequest) -> Path:
    """v1 deployed, then upgraded to v2: two deployments that share most files."""
    name = re.sub(r"[^A-Za-z0-9_-]", "-", request.node.name)
    source = Source(releases, name)
    path = testfs / "sysroots" / name
    petra("init", "--sysroot", path)
    petra("deploy", "--sysroot", path, "--repo", source.repo, source.ref)
    source.point_at(releases.v2)
    petra("upgrade", "--sysroot", path)
    return path


def verify(sysroot: Path, *extra: str) -> tuple[int, list[dict[str, object]]]:
    proc = petra("verify", "--sysroot", sysroot, "--json", *extra, check=False)
    return proc.returncode, json.loads(proc.stdout)


def problems(report: dict[str, object]) -> dict[str, str]:
    found = report["problems"]
    assert isinstance(found, list)
    return {p["path"]: p["kind"] for p in found}


def test_clean_deployments_pass_and_etc_changes_are_listed(sysroot: Path) -> None:
    before = snapshot(sysroot)
    code, reports = verify(sysroot)
    assert code == 0 and [r["ok"] for r in reports] == [True, True]
    assert all(int(str(r["checked"])) > 10_000 for r in reports)  # the whole /usr, each
    petra("enter", "--sysroot", sysroot, "--", "sh", "-c",
          "echo mine >> /etc/motd; echo new > /etc/petra-new; rm /etc/issue.net")  # fmt: skip
    code, reports = verify(sysroot, "--deployment", "0")
    assert code == 0 and len(reports) == 1
    assert reports[0]["etc"] == [
        {"path": "/etc/issue.net", "change": "removed"},
        {"path": "/etc/motd", "change": "modified"},
        {"path": "/etc/petra-new", "change": "added"},
    ]
    text = petra("verify", "--sysroot", sysroot).stdout
    assert "/usr matches its commit" in text and "modified   /etc/motd" in text
    assert snapshot(sysroot)[:2] == before[:2]  # nothing written (but /etc, by enter)


def test_tampered_files_are_named_and_fail(sysroot: Path, releases: Releases) -> None:
    new, old = (sysroot / f"ostree/deploy/petra/deploy/{c}.0" for c in (releases.v2, releases.v1))
    # Other bytes under the same name (a new file, as an attacker's copy would be) ...
    swapped = new / "usr/bin/true"
    swapped.unlink()
    swapped.write_bytes(b"#!/bin/sh\necho owned\n")
    swapped.chmod(0o755)
    # ... a mode changed in place (the file is the repo's object: both deployments see it) ...
    (old / "usr/bin/false").chmod(0o4755)
    # ... and a file the commit does not have.
    (old / "usr/lib/petra-implant.so").write_bytes(b"\x7fELF")
    code, reports = verify(sysroot)
    assert code == 3
    first, second = problems(reports[0]), problems(reports[1])
    assert first == {"/usr/bin/true": "content", "/usr/bin/false": "mode"}
    assert second == {"/usr/bin/false": "mode", "/usr/lib/petra-implant.so": "extra"}
    proc = petra("verify", "--sysroot", sysroot, check=False)
    assert "mode       /usr/bin/false (104755, the commit has 100755)" in proc.stdout
    assert_refused(proc, "differ from the commit", "ostree fsck")


def test_verify_of_a_missing_deployment_is_refused(sysroot: Path) -> None:
    assert_refused(petra("verify", "--sysroot", sysroot, "--deployment", "2", check=False),
                   "no deployment 2")  # fmt: skip
