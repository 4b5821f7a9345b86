"""The pure decisions of the device side: which deployments to keep, what rollback picks."""

from __future__ import annotations

from pathlib import Path

import pytest

from petra.ostree import Deployment
from petra.sysroot import keep_list, remote_name, rollback_target, split_refspec

pytestmark = pytest.mark.unit


def dep(name: str, osname: str = "petra", booted: bool = False, pinned: bool = False) -> Deployment:
    return Deployment(0, osname, name, 0, None, booted, Path(), "", name, pinned=pinned)


def names(deployments: list[Deployment]) -> list[str]:
    return [d.checksum for d in deployments]


def test_pinned_deployments_stay_and_do_not_count() -> None:
    a, b, c, d, e = dep("a"), dep("b", pinned=True), dep("c"), dep("d", pinned=True), dep("e")
    assert names(keep_list([a, b, c, d, e], "petra", 2)) == ["a", "b", "c", "d"]
    assert names(keep_list([a, b, c, d, e], "petra", 1)) == ["a", "b", "d"]


def test_keep_drops_the_oldest_beyond_the_limit() -> None:
    a, b, c, d = dep("a"), dep("b"), dep("c"), dep("d")
    assert names(keep_list([a, b, c, d], "petra", 2)) == ["a", "b"]
    assert names(keep_list([a, b, c, d], "petra", 3)) == ["a", "b", "c"]
    assert names(keep_list([a, b], "petra", 2)) == ["a", "b"]
    assert names(keep_list([a], "petra", 1)) == ["a"]


def test_keep_never_drops_the_default_the_booted_or_other_stateroots() -> None:
    a, b, c = dep("a"), dep("b", booted=True), dep("c")
    other = dep("x", osname="other")
    assert names(keep_list([a, b, c, other], "petra", 1)) == ["a", "b", "x"]
    assert names(keep_list([a, other, b, c], "petra", 2)) == ["a", "x", "b"]
    assert names(keep_list([a, b, c], "petra", 2, protect=[c])) == ["a", "b", "c"]


def test_rollback_picks_the_next_of_the_same_stateroot() -> None:
    a, b, c = dep("a"), dep("b"), dep("c")
    assert rollback_target([a, b, c]) is b
    assert rollback_target([a]) is None
    assert rollback_target([]) is None
    assert rollback_target([a, dep("x", osname="other"), c]) is c


def test_rollback_undoes_a_pending_update_first() -> None:
    pending, booted, older = dep("new"), dep("cur", booted=True), dep("old")
    assert rollback_target([pending, booted, older]) is booted
    booted_default = dep("cur", booted=True)
    assert rollback_target([booted_default, older]) is older


def test_refspecs_and_remote_names() -> None:
    assert split_refspec("petra-abc:petra/trixie/amd64/server") == (
        "petra-abc",
        "petra/trixie/amd64/server",
    )
    assert split_refspec("a" * 64) == (None, "a" * 64)
    assert remote_name("file:///a") == remote_name("file:///a") != remote_name("file:///b")
    assert remote_name("file:///a").startswith("petra-")
