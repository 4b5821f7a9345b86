"""Bad specs and arguments: one clear line naming file and key, non-zero exit, repo untouched."""

from __future__ import annotations

import hashlib
import textwrap
from pathlib import Path

import pytest

from tests.integration.conftest import EXAMPLES, Composed, petra

pytestmark = pytest.mark.integration


def snapshot(repo: Path) -> str:
    """A digest of every path and file content in the repo (refs included)."""
    h = hashlib.sha256()
    for path in sorted(repo.rglob("*")):
        h.update(str(path.relative_to(repo)).encode())
        if path.is_file() and not path.is_symlink():
            h.update(path.read_bytes())
    return h.hexdigest()


def spec(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "bad.toml"
    path.write_text(
        textwrap.dedent(f"""
        include = ["{EXAMPLES / 'minimal.toml'}"]
        name = "minimal"
        version = "9"
    """)
        + textwrap.dedent(body)
    )
    return path


CASES = {
    "unknown key": ('pakages = ["x"]\n', "unknown key 'pakages'", 5),
    "wrong type": ('kernel = "yes"\n', "kernel: expected true or false", 5),
    "missing include": ('include = ["nowhere.toml"]\n', "not found", 5),
    "unknown package": (
        'packages = ["no-such-package-petra"]\n',
        "no package 'no-such-package-petra' in trixie",
        5,
    ),
    "unknown suite": ('suite = "no-such-suite"\n', "suite 'no-such-suite' not found", 5),
    "unreachable mirror": ('mirror = "http://127.0.0.1:9/debian"\n', "is unreachable", 5),
    "missing file source": ('[files]\n"/etc/x" = "no-such-file"\n', "does not exist", 6),
    "file source escapes": ('[files]\n"/etc/x" = "../../../etc/passwd"\n', "escapes", 6),
    "destination outside the tree": (
        '[files]\n"/etc/../../x" = "bad.toml"\n',
        "outside the tree",
        6,
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_spec_is_one_line_and_changes_nothing(
    case: str, minimal: Composed, tmp_path: Path, shared_cache: Path
) -> None:
    body, expected, line = CASES[case]
    if case == "missing include":
        path = tmp_path / "bad.toml"
        path.write_text(f'{body}name = "minimal"\nversion = "9"\n')
        line = 1
    else:
        path = spec(tmp_path, body)
    before = snapshot(minimal.repo)
    new_repo = tmp_path / "new-repo"
    for repo in (minimal.repo, new_repo):
        proc = petra("compose", path, "--repo", repo, "--cache", minimal.cache, check=False)
        assert proc.returncode != 0
        # Progress lines may come first; the error is one line, the last.
        assert proc.stderr.count("petra: error:") == 1, proc.stderr
        lines = proc.stderr.strip().splitlines()[-1:]
        assert lines[0].startswith("petra: error: ") and "Traceback" not in proc.stderr
        assert expected in lines[0]
        assert f"{path}:{line}" in lines[0], lines[0]
        assert "hint:" in lines[0]
    assert snapshot(minimal.repo) == before
    assert not new_repo.exists()


def test_include_cycle(tmp_path: Path, minimal: Composed) -> None:
    (tmp_path / "a.toml").write_text('include = ["b.toml"]\nname = "a"\nversion = "1"\n')
    (tmp_path / "b.toml").write_text('include = ["a.toml"]\n')
    proc = petra("compose", tmp_path / "a.toml", "--repo", tmp_path / "r", check=False)
    assert proc.returncode == 2 and "cycle" in proc.stderr and not (tmp_path / "r").exists()


def test_debug_shows_the_traceback(tmp_path: Path) -> None:
    path = tmp_path / "s.toml"
    path.write_text('name = "s"\n')
    assert "Traceback" not in petra("compose", path, "--repo", tmp_path / "r", check=False).stderr
    proc = petra("--debug", "compose", path, "--repo", tmp_path / "r", check=False)
    assert "Traceback" in proc.stderr and proc.returncode != 0


def test_unknown_ref_and_not_a_repo(minimal: Composed, tmp_path: Path) -> None:
    proc = petra("show", "--repo", minimal.repo, "petra/nope", check=False)
    assert proc.returncode == 1 and "no ref or commit 'petra/nope'" in proc.stderr
    proc = petra("log", "--repo", tmp_path, "x", check=False)
    assert proc.returncode == 1 and "is not an OSTree repository" in proc.stderr
    (tmp_path / "junk").write_text("x")
    proc = petra("compose", EXAMPLES / "minimal.toml", "--repo", tmp_path, check=False)
    assert "is not an OSTree repository" in proc.stderr and sorted(tmp_path.iterdir()) == [
        tmp_path / "junk"
    ]
