"""Shared artefacts for the integration tier: one .deb/index cache for every run, one cold
compose of each example per session. Real apt (the Debian archive), real ostree, real bwrap."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    selected = [item for item in items if item.get_closest_marker("integration")]
    if selected and os.geteuid() != 0:
        raise pytest.UsageError("the integration tier runs as root (composes mount and chroot)")


@dataclass(frozen=True)
class Composed:
    repo: Path
    cache: Path
    ref: str
    commit: str


def petra(
    *args: str | Path, check: bool = True, **kwargs: object
) -> subprocess.CompletedProcess[str]:
    """Run the real CLI, as a user would."""
    proc = subprocess.run(
        [sys.executable, "-m", "petra", *map(str, args)], capture_output=True, text=True, **kwargs
    )  # type: ignore[call-overload]
    if check and proc.returncode != 0:
        raise AssertionError(f"petra {args} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return proc  # type: ignore[no-any-return]


def ostree(*args: str | Path) -> str:
    """Run the real ostree CLI; `ostree("--repo", R, "ls", …)` becomes `ostree ls --repo=R …`."""
    argv = [str(a) for a in args]
    if argv[0] == "--repo":
        argv = [argv[2], f"--repo={argv[1]}", *argv[3:]]
    elif argv[0].startswith("--repo="):
        argv = [argv[1], argv[0], *argv[2:]]
    proc = subprocess.run(["ostree", *argv], capture_output=True, text=True)
    if proc.returncode != 0:
        raise AssertionError(f"ostree {argv} failed: {proc.stderr}")
    return proc.stdout


@pytest.fixture(scope="session")
def shared_cache() -> Path:
    """Downloaded .debs and apt indices, kept across runs ($PETRA_TEST_CACHE)."""
    path = Path(os.environ.get("PETRA_TEST_CACHE", "/var/tmp/petra-test-cache"))
    (path / "debs").mkdir(parents=True, exist_ok=True)
    (path / "apt").mkdir(parents=True, exist_ok=True)
    return path


def fresh_cache(shared: Path, where: Path) -> Path:
    """A compose cache with no package trees (so the build is cold) that shares the .deb store
    and indices with every other test (so nothing is downloaded twice)."""
    where.mkdir(parents=True)
    (where / "debs").symlink_to(shared / "debs")
    (where / "apt").symlink_to(shared / "apt")
    return where


def compose(spec: Path, repo: Path, cache: Path, *extra: str) -> Composed:
    proc = petra("compose", spec, "--repo", repo, "--cache", cache, "--quiet", *extra)
    lines = dict(line.split(":", 1) for line in proc.stdout.splitlines() if ":" in line)
    return Composed(repo, cache, lines["ref"].strip(), lines["commit"].strip())


@pytest.fixture(scope="session")
def minimal(tmp_path_factory: pytest.TempPathFactory, shared_cache: Path) -> Composed:
    """examples/minimal.toml, composed cold once per session."""
    base = tmp_path_factory.mktemp("minimal")
    return compose(
        EXAMPLES / "minimal.toml", base / "repo", fresh_cache(shared_cache, base / "cache")
    )


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory, shared_cache: Path) -> Composed:
    """examples/server.toml (kernel, systemd, ssh), composed cold once per session."""
    base = tmp_path_factory.mktemp("server")
    return compose(
        EXAMPLES / "server.toml", base / "repo", fresh_cache(shared_cache, base / "cache")
    )


@pytest.fixture
def variant(tmp_path: Path) -> Iterator[Path]:
    """A spec that is examples/minimal.toml plus one small package (htop), version bumped."""
    path = tmp_path / "variant.toml"
    path.write_text(
        textwrap.dedent(f"""
        include = ["{EXAMPLES / 'minimal.toml'}"]
        name = "minimal"
        version = "2026.11.2"
        packages = ["htop"]
    """)
    )
    yield path
