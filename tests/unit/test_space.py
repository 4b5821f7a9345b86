"""The space check's pure parts: where a tree's kernel is, and the refusal's wording."""

from __future__ import annotations

from pathlib import Path

import pytest

from petra import space
from petra.errors import SpaceError
from petra.ostree import TreeEntry

pytestmark = pytest.mark.unit


def test_the_kernel_is_found_where_libostree_looks() -> None:
    f = TreeEntry("-", 0o100644, 0, 0, checksum="c" * 64)
    tree = {
        "/usr/lib/modules/6.12.1-amd64/vmlinuz": f,
        "/usr/lib/modules/6.12.1-amd64/initramfs.img": f,
        "/usr/lib/modules/6.12.1-amd64/kernel/fs/ext4.ko": f,
        "/boot/vmlinuz-6.12.1-amd64": f,
    }
    assert sorted(p for p in tree if space._is_kernel(p)) == [
        "/usr/lib/modules/6.12.1-amd64/initramfs.img",
        "/usr/lib/modules/6.12.1-amd64/vmlinuz",
    ]


def test_a_need_that_does_not_fit_is_refused_with_both_figures() -> None:
    space.check([space.Need(Path("/sys"), 10, 10)])  # exactly enough fits
    with pytest.raises(SpaceError) as caught:
        space.check(
            [space.Need(Path("/sys"), 10, 10), space.Need(Path("/sys/boot"), 25_000_000, 3_000_000)]
        )
    assert str(caught.value).startswith(
        "not enough space on the file system of /sys/boot: 25 MB needed, 3.0 MB available"
    )
    assert "nothing was written" in caught.value.hint
