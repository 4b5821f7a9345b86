"""Which stateroot petra manages, read from a sysroot's files."""

from __future__ import annotations

from pathlib import Path

import pytest

from petra import stateroot
from petra.errors import RepoError

pytestmark = pytest.mark.unit


def sysroot(tmp_path: Path, config: str, *osnames: str) -> Path:
    (tmp_path / "ostree/repo").mkdir(parents=True)
    (tmp_path / "ostree/repo/config").write_text(config)
    for name in osnames:
        (tmp_path / "ostree/deploy" / name / "var").mkdir(parents=True)
    (tmp_path / "ostree/deploy").mkdir(parents=True, exist_ok=True)
    return tmp_path


CORE = "[core]\nrepo_version=1\nmode=bare\n# a comment, 100% harmless\n"


def test_the_recorded_osname_wins(tmp_path: Path) -> None:
    path = sysroot(tmp_path, CORE + "\n[petra]\nosname=kiosk\nkeep=2\n", "kiosk", "other")
    assert stateroot.osname(path) == "kiosk"
    assert stateroot.var_of(path) == path / "ostree/deploy/kiosk/var"


def test_else_the_only_stateroot_else_petra(tmp_path: Path) -> None:
    one = sysroot(tmp_path / "one", CORE, "edge")
    assert stateroot.osname(one) == "edge"
    two = sysroot(tmp_path / "two", CORE, "a", "b")
    assert stateroot.osname(two) == stateroot.DEFAULT_OSNAME


def test_a_directory_that_is_no_sysroot_is_refused(tmp_path: Path) -> None:
    with pytest.raises(RepoError, match="is not a sysroot"):
        stateroot.var_of(tmp_path)
