"""Kernel arguments: splitting a command line and the edits of petra kargs."""

from __future__ import annotations

import pytest

from petra import kargs
from petra.errors import UsageError
from petra.kargs import Edit

pytestmark = pytest.mark.unit


def test_split_keeps_quoted_values_whole() -> None:
    line = 'root=UUID=ab-12  console=ttyS0,115200 quiet dyndbg="file x.c +p" ostree=/ostree/b.1'
    assert kargs.split(line) == [
        "root=UUID=ab-12", "console=ttyS0,115200", "quiet", 'dyndbg="file x.c +p"',
        "ostree=/ostree/b.1",
    ]  # fmt: skip
    assert kargs.value_of('dyndbg="file x.c +p"') == "file x.c +p"
    assert kargs.value_of("quiet") is None
    assert kargs.editable(line)[-1] == 'dyndbg="file x.c +p"'  # ostree= is not shown


def test_edits_apply_in_order() -> None:
    words = ["console=ttyS0", "quiet", "mitigations=auto"]
    edits = [
        Edit("append", "loglevel=3"),
        Edit("delete", "quiet"),
        Edit("replace", "mitigations=off"),
        Edit("append", "note=a b"),
        Edit("append", "console=tty0"),
        Edit("replace", "console=tty0=ttyS1"),
    ]
    assert kargs.apply(words, edits) == [
        "console=ttyS0", "mitigations=off", "loglevel=3", 'note="a b"', "console=ttyS1",
    ]  # fmt: skip
    assert words == ["console=ttyS0", "quiet", "mitigations=auto"]  # not changed in place
    assert kargs.apply(["a=1", "a=2", "b"], [Edit("delete", "a=2")]) == ["a=1", "b"]
    assert kargs.apply(["a=1", "a=2", "b"], [Edit("delete", "a")]) == ["b"]


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (Edit("append", "=x"), "the key is empty"),
        (Edit("append", ""), "the key is empty"),
        (Edit("append", "a b=1"), "not a kernel argument name"),
        (Edit("append", "x=1\n2"), "newline"),
        (Edit("append", 'x="1"'), "double quote"),
        (Edit("append", "ostree=/x"), "set by ostree"),
        (Edit("delete", "nosuch"), "not set"),
        (Edit("delete", "console=tty9"), "not set"),
        (Edit("replace", "nosuch=1"), "is not set"),
        (Edit("replace", "a=3"), "set 2 times"),
    ],
)
def test_bad_edits_are_refused_with_a_hint(edit: Edit, message: str) -> None:
    with pytest.raises(UsageError, match=message) as caught:
        kargs.apply(["console=ttyS0", "a=1", "a=2"], [edit])
    assert caught.value.hint and "\n" not in caught.value.message
