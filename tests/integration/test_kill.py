"""A compose killed with SIGKILL at random moments leaves the repo valid and the ref where it was;
the next compose succeeds."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from tests.integration.conftest import EXAMPLES, Composed, fresh_cache, ostree
from tests.integration.sysroots import frozen

pytestmark = pytest.mark.integration

COLD_KILLS, WARM_KILLS = 4, 8


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
    moments = sorted(rng.uniform(0.3, 16.0) for _ in range(COLD_KILLS))
    for i, moment in enumerate(moments):
        kill_cache = fresh_cache(shared_cache, tmp_path / f"cold-cache-{i}")
        kills += kill_at(start_compose(cold, repo, kill_cache), moment)
        current = ostree("--repo", repo, "rev-parse", minimal.ref).strip()
        assert_intact(repo, minimal.ref, current, kill_cache)
        if current != minimal.commit:
            # it ended (or was killed after the ref moved): a complete commit; put the ref
            # back for the next round
            assert "Version: 2" in ostree("--repo", repo, "show", current)
            ostree("--repo", repo, "reset", minimal.ref, minimal.commit)

    # The short, cached path: kills during incremental apt, customise, commit and import. A
    # compose that ends before its kill gives the window (later moments fall within it), and
    # its ref is put back, so every round does the whole build again.
    done = start_compose(cold, repo, cache)
    assert done.wait() == 0
    after_cold = ostree("--repo", repo, "rev-parse", minimal.ref).strip()
    assert after_cold != minimal.commit
    window, warm_kills = 4.0, 0
    for _ in range(3 * WARM_KILLS):
        start = time.monotonic()
        if kill_at(start_compose(warm, repo, cache), rng.uniform(0.05, window)):
            warm_kills += 1
        else:
            window = 0.9 * (time.monotonic() - start)
        current = ostree("--repo", repo, "rev-parse", minimal.ref).strip()
        assert_intact(repo, minimal.ref, current, cache)
        if current != after_cold:
            # it ended (or was killed after the ref moved): that compose was complete
            assert "Version: 3" in ostree("--repo", repo, "show", current)
            ostree("--repo", repo, "reset", minimal.ref, after_cold)
        if warm_kills == WARM_KILLS:
            break
    assert warm_kills == WARM_KILLS, f"only {warm_kills} warm kills landed ({kills} cold)"

    final = start_compose(warm, repo, cache)
    assert final.wait() == 0
    assert "no errors found" in ostree("--repo", repo, "fsck")
    log = ostree("--repo", repo, "log", minimal.ref)
    assert "Version: 3" in log and "Version: 2" in log
