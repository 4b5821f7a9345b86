"""Compose against real Debian packages: reproducibility, reuse, conventions, log/show/diff."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.integration.conftest import (
    EXAMPLES,
    Composed,
    compose,
    fresh_cache,
    ostree,
    petra,
)

pytestmark = pytest.mark.integration


def test_same_spec_twice_cold_gives_the_same_commit(
    minimal: Composed, shared_cache: Path, tmp_path: Path
) -> None:
    again = compose(
        EXAMPLES / "minimal.toml", tmp_path / "repo", fresh_cache(shared_cache, tmp_path / "cache")
    )
    assert again.commit == minimal.commit
    assert again.ref == minimal.ref == f"petra/trixie/{ref_arch(minimal)}/minimal"


def ref_arch(composed: Composed) -> str:
    return composed.ref.split("/")[2]


def test_recompose_without_changes_writes_nothing(minimal: Composed) -> None:
    objects_before = sorted(p.name for p in (minimal.repo / "objects").rglob("*"))
    proc = petra(
        "compose",
        EXAMPLES / "minimal.toml",
        "--repo",
        minimal.repo,
        "--cache",
        minimal.cache,
        "--json",
        "--quiet",
    )
    result = json.loads(proc.stdout)
    assert result["changed"] is False and result["commit"] == minimal.commit
    assert sorted(p.name for p in (minimal.repo / "objects").rglob("*")) == objects_before
    assert ostree("--repo", minimal.repo, "rev-parse", minimal.ref).strip() == minimal.commit


def test_adding_a_package_reuses_the_cached_tree_and_equals_a_cold_build(
    minimal: Composed, variant: Path, shared_cache: Path, tmp_path: Path
) -> None:
    proc = petra(
        "compose",
        variant,
        "--repo",
        tmp_path / "inc",
        "--cache",
        minimal.cache,
        "--json",
        "--quiet",
    )
    incremental = json.loads(proc.stdout)
    assert incremental["build"] == "incremental"
    assert "htop" in incremental["packages"]
    cold = compose(variant, tmp_path / "cold", fresh_cache(shared_cache, tmp_path / "cache"))
    # Same spec, same package versions: the same tree and metadata, whatever the cache held.
    assert incremental["commit"] == cold.commit


def test_conventions_of_a_composed_tree(minimal: Composed) -> None:
    ls = ostree("--repo", minimal.repo, "ls", minimal.commit, "/")
    entries = {
        line.split()[-1] if "->" not in line else line.split()[-3]: line for line in ls.splitlines()
    }
    assert "/etc" not in entries  # ships as /usr/etc
    for link, target in {
        "/home": "var/home",
        "/root": "var/roothome",
        "/opt": "var/opt",
        "/srv": "var/srv",
        "/mnt": "var/mnt",
        "/ostree": "sysroot/ostree",
    }.items():
        assert entries[link].endswith(f"-> {target}"), entries[link]
    assert "-> ../var/usrlocal" in ostree(
        "--repo", minimal.repo, "ls", minimal.commit, "/usr/local"
    )
    var = ostree("--repo", minimal.repo, "ls", "-R", minimal.commit, "/var").split("\n")
    assert [line for line in var if line.strip()] == [var[0]]  # /var itself, nothing inside
    assert ostree("--repo", minimal.repo, "ls", "-R", minimal.commit, "/boot").count("\n") == 1
    cat = lambda path: ostree("--repo", minimal.repo, "cat", minimal.commit, path)  # noqa: E731
    assert cat("/usr/etc/machine-id") == "uninitialized\n"  # a first boot for systemd
    assert cat("/usr/etc/hostname") == "petra\n"
    assert "Petra" in cat("/usr/etc/motd")
    assert cat("/usr/etc/resolv.conf") == ""
    status = cat("/usr/lib/sysimage/dpkg/status")
    assert "Package: less\n" in status and "Package: apt\n" in status
    tmpfiles = cat("/usr/lib/tmpfiles.d/petra-var.conf")
    assert "L /var/lib/dpkg - - - - ../../usr/lib/sysimage/dpkg" in tmpfiles
    assert "d /var/log/apt 0755 root root -" in tmpfiles
    assert "C /var/roothome - - - - /usr/share/petra/skel/root" in tmpfiles
    listing = ostree("--repo", minimal.repo, "ls", "-R", minimal.commit, "/usr/etc")
    assert "ssh_host_" not in listing and "/usr/etc/passwd-" not in listing


def test_commit_metadata_records_the_build(minimal: Composed) -> None:
    data = json.loads(petra("show", "--repo", minimal.repo, minimal.ref, "--json").stdout)
    spec_digest = json.loads(
        petra("show", "--repo", minimal.repo, minimal.commit[:10], "--json").stdout
    )["spec-digest"]
    assert data["commit"] == minimal.commit
    assert data["version"] == "2026.11.1"
    assert data["suite"] == "trixie" and data["mirror"].startswith("http")
    assert data["spec-digest"] == spec_digest and len(spec_digest) == 64
    status = ostree("--repo", minimal.repo, "cat", minimal.commit, "/usr/lib/sysimage/dpkg/status")
    installed = {s.split("\n")[0].removeprefix("Package: ") for s in status.split("\n\n") if s}
    assert set(data["packages"]) == installed
    assert data["file-count"] > 1000 and data["size"] > 10_000_000
    # The commit date is the newest package's build date: deterministic, not "now".
    assert data["timestamp"] > 1_600_000_000
    assert "version: 2026.11.1" in ostree("--repo", minimal.repo, "show", minimal.commit).lower()


def test_log_and_diff_show_history_and_changes(
    minimal: Composed, variant: Path, tmp_path: Path
) -> None:
    repo = tmp_path / "repo"
    ostree("--repo", repo, "init", "--mode=bare")
    ostree("--repo", repo, "pull-local", minimal.repo, minimal.commit)
    ostree("--repo", repo, "refs", "--create", minimal.ref, minimal.commit)
    new = compose(variant, repo, minimal.cache)
    assert new.commit != minimal.commit
    log = json.loads(petra("log", "--repo", repo, minimal.ref, "--json").stdout)
    assert [c["commit"] for c in log] == [new.commit, minimal.commit]
    assert [c["version"] for c in log] == ["2026.11.2", "2026.11.1"]
    assert log[0]["parent"] == minimal.commit
    diff = json.loads(petra("diff", "--repo", repo, minimal.commit, minimal.ref, "--json").stdout)
    assert "htop" in diff["packages"]["added"]
    assert not diff["packages"]["removed"]
    assert "/usr/bin/htop" in diff["files"]["added"]
    text = petra("diff", "--repo", repo, minimal.commit, new.commit).stdout
    assert "+ htop " in text and "files:" in text


def test_the_ostree_cli_accepts_the_commit(minimal: Composed) -> None:
    fsck = ostree("--repo", minimal.repo, "fsck")
    assert "no errors found" in fsck
    assert "/usr/bin/apt" in ostree("--repo", minimal.repo, "ls", minimal.commit, "/usr/bin/apt")
    assert minimal.commit in ostree("--repo", minimal.repo, "show", minimal.ref)
