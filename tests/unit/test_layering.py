"""Layering's pure decisions: what a request does to a deployment's layers, and apt's words."""

from __future__ import annotations

from pathlib import Path

import pytest

from petra.errors import UsageError
from petra.layering import (
    REMOVED,
    REQUESTED,
    REQUESTED_LOCAL,
    Layers,
    add,
    add_local,
    new_tmpfiles,
    override_remove,
    override_reset,
    remove,
    summarise_apt,
)
from petra.ostree import Deployment

pytestmark = pytest.mark.unit

BASE = {"bash": "5.2", "nano": "8.4", "systemd": "257"}


def test_install_adds_sorted_and_refuses_what_is_there() -> None:
    layers = add(Layers(), ["tmux", "htop"], BASE)
    assert layers.packages == ("htop", "tmux")
    with pytest.raises(UsageError, match="htop is already layered"):
        add(layers, ["htop"], BASE)
    with pytest.raises(UsageError, match=r"nano is already in the base \(8.4\)"):
        add(layers, ["nano"], BASE)
    with pytest.raises(UsageError, match="not a package name"):
        add(layers, ["Bad Name"], BASE)
    # A base package removed by an override may be layered back.
    assert add(Layers(removed=("nano",)), ["nano"], BASE).packages == ("nano",)


def test_a_local_deb_replaces_the_same_package_from_anywhere() -> None:
    layers = add_local(Layers(packages=("htop", "tool")), ["a" * 64 + ":tool"])
    assert layers.packages == ("htop",)
    assert layers.local_names == ("tool",)
    newer = add_local(layers, ["b" * 64 + ":tool"])
    assert newer.local == ("b" * 64 + ":tool",)


def test_uninstall_takes_only_layered_packages() -> None:
    layers = Layers(packages=("htop", "tmux"), local=("c" * 64 + ":tool",))
    assert remove(layers, ["tmux", "tool"]) == Layers(packages=("htop",))
    with pytest.raises(UsageError, match="nano is not a layered package") as e:
        remove(layers, ["nano"])
    assert e.value.hint == "layered: htop, tmux, tool"


def test_overrides_remove_base_packages_and_reset_undoes_them() -> None:
    layers = override_remove(Layers(), ["nano"], BASE)
    assert layers.removed == ("nano",)
    with pytest.raises(UsageError, match="the base has no package vim"):
        override_remove(layers, ["vim"], BASE)
    with pytest.raises(UsageError, match="already removed"):
        override_remove(layers, ["nano"], BASE)
    assert override_reset(layers, ["nano"]).empty
    with pytest.raises(UsageError, match="bash is not removed"):
        override_reset(layers, ["bash"])


def test_layers_round_trip_through_the_origin() -> None:
    layers = Layers(packages=("htop",), local=("d" * 64 + ":tool",), removed=("nano",))
    origin = layers.origin()
    assert origin == {
        REQUESTED: ("htop",),
        REQUESTED_LOCAL: ("d" * 64 + ":tool",),
        REMOVED: ("nano",),
    }
    dep = Deployment(0, "petra", "x", 0, None, False, Path(), "", None, origin)
    assert Layers.of(dep) == layers
    assert Layers.of(Deployment(0, "petra", "x", 0, None, False, Path(), "", None)).empty


def test_apt_failures_are_summarised_in_one_line() -> None:
    unmet = (
        "Some packages could not be installed.\n"
        "The following packages have unmet dependencies:\n"
        " foo : Conflicts: bash but 5.2 is to be installed\n"
        "E: Unable to correct problems, you have held broken packages.\n"
        "E: The following information may help to resolve the situation: unmet dependencies\n"
    )
    assert summarise_apt(unmet) == "foo : Conflicts: bash but 5.2 is to be installed"
    assert summarise_apt("E: Sub-process /usr/bin/dpkg returned an error code (1)\n") == (
        "Sub-process /usr/bin/dpkg returned an error code (1)"
    )
    assert summarise_apt("") == "apt failed"
    script = (
        "Refusing to remove sudo.\n"
        "dpkg: error processing package sudo (--remove):\n"
        " installed sudo package pre-removal script subprocess returned error exit status 1\n"
        "E: Sub-process /usr/bin/dpkg returned an error code (1)\n"
    )
    assert summarise_apt(script) == (
        "error processing package sudo (--remove): installed sudo package pre-removal script "
        "subprocess returned error exit status 1"
    )


def test_only_new_var_paths_become_layer_tmpfiles_lines() -> None:
    base = ["d /var/lib/apt 0755 root root -", "L /var/lib/dpkg - - - - ../../usr/lib/x"]
    lines = [*base, "d /var/lib/htop 0755 root root -"]
    assert new_tmpfiles(base, lines) == ["d /var/lib/htop 0755 root root -"]
