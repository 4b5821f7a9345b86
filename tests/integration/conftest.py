"""Shared artefacts for the integration tier: one .deb/index cache for every run, one cold
compose of each example per session. Real apt (the Debian archive), real ostree, real bwrap."""

from __future__ import annotations

import ctypes
import os
import random
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from tests.integration.sysroots import Source

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"


@pytest.hookimpl(trylast=True)  # after -m has deselected what does not run
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    selected = [item for item in items if item.get_closest_marker("integration")]
    if selected and os.geteuid() != 0:
        raise pytest.UsageError("the integration tier runs as root (composes mount and chroot)")
    if selected:
        # Every mount the tier makes (the test file system below) lives in the test run's own
        # mount namespace and disappears with it. Done here, while pytest has one thread.
        if ctypes.CDLL(None, use_errno=True).unshare(0x00020000) != 0:  # CLONE_NEWNS
            raise pytest.UsageError(f"unshare: {os.strerror(ctypes.get_errno())}")
        subprocess.run(["mount", "--make-rprivate", "/"], check=True)


# What the kill tests report at the end of the run: their seeds and how many kills landed.
KILL_REPORT: list[str] = []


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if KILL_REPORT:
        terminalreporter.section("kills")
        for line in KILL_REPORT:
            terminalreporter.write_line(line)


@pytest.fixture
def kill_seed(request: pytest.FixtureRequest) -> int:
    """The seed of a test's random kill moments: $PETRA_KILL_SEED replays a run."""
    seed = int(os.environ.get("PETRA_KILL_SEED") or random.SystemRandom().randrange(2**32))
    KILL_REPORT.append(f"{request.node.name}: seed {seed} (replay: PETRA_KILL_SEED={seed})")
    return seed


@pytest.fixture(scope="session")
def testfs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """One loop-mounted ext4 made for this test run: every sysroot the tests create (and the
    repos they deploy from, so pulls are hardlinks) lives here, never on the machine's own file
    system, which a frozen sysroot write would block for good (NOTES.md, "READ FIRST")."""
    mountpoint = tmp_path_factory.mktemp("testfs")
    image = mountpoint.with_suffix(".img")
    subprocess.run(["truncate", "-s", "24G", image], check=True, timeout=60)
    subprocess.run(["mkfs.ext4", "-q", "-E", "nodiscard", image], check=True, timeout=300)
    subprocess.run(["mount", "-o", "loop", image, mountpoint], check=True, timeout=60)
    image.unlink()  # the loop device holds it; its space returns when it is unmounted
    yield mountpoint
    # Thaw before unmounting: tearing down a frozen mount can hang.
    subprocess.run(["fsfreeze", "-u", mountpoint], capture_output=True, timeout=60)
    subprocess.run(["umount", mountpoint], check=False, timeout=300)


@dataclass(frozen=True)
class Composed:
    repo: Path
    cache: Path
    ref: str
    commit: str


def petra(
    *args: str | Path, check: bool = True, **kwargs: object
) -> subprocess.CompletedProcess[str]:
    """Run the real CLI, as a user would. Sysroots live on the test file system, so even the
    timeout's kill cannot freeze the machine (and petra's thaw guard thaws after it)."""
    kwargs.setdefault("timeout", 1200)
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
    proc = subprocess.run(["ostree", *argv], capture_output=True, text=True, timeout=600)
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
def server(testfs: Path, shared_cache: Path) -> Composed:
    """examples/server.toml (kernel, systemd, ssh), composed cold once per session, on the
    test file system so that the device tests deploy it with hardlinks."""
    base = testfs / "server"
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


@dataclass(frozen=True)
class Releases:
    repo: Path
    v1: str
    v2: str


@pytest.fixture(scope="session")
def releases(server: Composed) -> Releases:
    """v1: the composed server tree; v2: the same plus one small package, version bumped."""
    spec = server.repo.parent / "server-next.toml"
    spec.write_text(
        textwrap.dedent(f"""
        include = ["{EXAMPLES / "server.toml"}"]
        name = "server-next"
        version = "2026.11.2"
        packages = ["htop"]
    """)
    )
    v2 = compose(spec, server.repo, server.cache)
    return Releases(server.repo, server.commit, v2.commit)


@dataclass(frozen=True)
class World:
    """A deployed sysroot with a box "dev" (trixie + htop, made cold once per session in the
    server's compose cache), and a home for the boxes' caller."""

    sysroot: Path
    source: Source
    cache: Path
    home: Path

    @property
    def boxes(self) -> Path:
        return self.sysroot / "ostree/deploy/petra/var/lib/petra/boxes"

    def box(self, *args: str | Path, check: bool = True) -> subprocess.CompletedProcess[str]:
        """petra box VERB ... on this sysroot, with this world's home."""
        verb, rest = args[0], args[1:]
        extra: list[str | Path] = ["--sysroot", self.sysroot]
        if not check:  # an error is then the only line on stderr (no progress lines)
            extra.append("--quiet")
        if verb == "create":
            extra += ["--cache", self.cache]
        env = {**os.environ, "HOME": str(self.home)}
        return petra("box", verb, *extra, *rest, check=check, env=env, timeout=900)


@pytest.fixture(scope="session")
def world(releases: Releases, server_cache: Path, testfs: Path) -> World:
    from tests.integration.sysroots import Source  # it imports this module

    sysroot = testfs / "sysroots" / "boxes"
    source = Source(releases, "boxes")
    petra("init", "--sysroot", sysroot)
    petra("deploy", "--sysroot", sysroot, "--repo", source.repo, source.ref)
    home = testfs / "box-home"
    home.mkdir()
    w = World(sysroot, source, server_cache, home)
    w.box("create", "dev", "--packages", "htop")
    return w


@pytest.fixture(scope="session")
def server_cache(releases: Releases) -> Path:
    """The server compose's cache: its .deb store and index, where box trees are cached too."""
    return releases.repo.parent / "cache"
