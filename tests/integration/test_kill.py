"""A compose killed with SIGKILL at random moments leaves the repo valid and the ref where it was;
the next compose succeeds."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.integration.conftest import EXAMPLES, Composed, fresh_cache, ostree
from tests.integration.sysroots import frozen

pytestmark = pytest.mark.integration


def start_compose(spec: Path, repo: Path, cache: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "petra", "compose", spec, "--repo", repo, "--cache", cache, "-q"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )


def kill_at(proc: subprocess.Popen[bytes], seconds: float) -> bool:
    """SIGKILL the compose and everything it started (as a power cut would). True if it was
    still running at that moment."""
    try:
        proc.wait(timeout=seconds)
        return False
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        return True


def assert_intact(repo: Path, ref: str, commit: str, cache: Path) -> None:
    # Compose freezes nothing, but after every kill the harness makes sure of it.
    where = subprocess.run(
        ["findmnt", "-n", "-o", "TARGET", "-T", repo.parent],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert not frozen(Path(where.stdout.strip())), f"{where.stdout.strip()} was frozen"
    assert "no errors found" in ostree("--repo", repo, "fsck")
    assert ostree("--repo", repo, "rev-parse", ref).strip() == commit
    if (cache / "repo/config").exists():
        assert "no errors" in ostree("--repo", cache / "repo", "fsck")
    with open("/proc/self/mounts") as mounts:
        assert str(cache) not in mounts.read()  # nothing leaked into the host's mounts


def spec_with(tmp_path: Path, name: str, packages: list[str], version: str) -> Path:
    path = tmp_path / f"{name}.toml"
    path.write_text(
        textwrap.dedent(f"""
        include = ["{EXAMPLES / "minimal.toml"}"]
        name = "minimal"
        version = "{version}"
        packages = {packages!r}
    """).replace("'", '"')
    )
    return path


def test_sigkill_during_compose_leaves_repo_valid(
    minimal: Composed, shared_cache: Path, tmp_path: Path, kill_seed: int
) -> None:
    rng = random.Random(kill_seed)
    repo = tmp_path / "repo"
    ostree("--repo", repo, "init", "--mode=bare")
    ostree("--repo", repo, "pull-local", minimal.repo, minimal.commit)
    ostree("--repo", repo, "refs", "--create", minimal.ref, minimal.commit)
    cache = fresh_cache(shared_cache, tmp_path / "cache")
    cold = spec_with(tmp_path, "cold", ["htop"], "2")
    warm = spec_with(tmp_path, "warm", ["htop", "tree"], "3")

    # Cold builds (download, mmdebstrap, cache commit, customise, commit, import): each kill
    # starts from a cache with no package tree, so every phase is in reach.
    kills = 0
    moments = sorted(rng.uniform(0.3, 16.0) for _ in range(5))
    for i, moment in enumerate(moments):
        kill_cache = fresh_cache(shared_cache, tmp_path / f"cold-cache-{i}")
        if kill_at(start_compose(cold, repo, kill_cache), moment):
            kills += 1
            assert_intact(repo, minimal.ref, minimal.commit, kill_cache)
        else:  # it finished first: a complete commit; put the ref back for the next round
            assert "Version: 2" in ostree("--repo", repo, "show", minimal.ref)
            ostree("--repo", repo, "reset", minimal.ref, minimal.commit)

    # The short, cached path: kills during incremental apt, customise, commit and import.
    done = start_compose(cold, repo, cache)
    assert done.wait() == 0
    after_cold = ostree("--repo", repo, "rev-parse", minimal.ref).strip()
    assert after_cold != minimal.commit
    for moment in sorted(rng.uniform(0.05, 4.0) for _ in range(8)):
        kills += kill_at(start_compose(warm, repo, cache), moment)
        current = ostree("--repo", repo, "rev-parse", minimal.ref).strip()
        if current != after_cold:
            # killed after the ref moved: that compose was complete
            assert "Version: 3" in ostree("--repo", repo, "show", current)
        assert_intact(repo, minimal.ref, current, cache)
    assert kills >= 8, f"only {kills} kills landed while compose ran"

    final = start_compose(warm, repo, cache)
    assert final.wait() == 0
    assert "no errors found" in ostree("--repo", repo, "fsck")
    log = ostree("--repo", repo, "log", minimal.ref)
    assert "Version: 3" in log and "Version: 2" in log
