"""Space checks on small loop-mounted file systems (mounted in the test run's own mount
namespace, removed afterwards): a deploy or upgrade that cannot fit in the repo's file system,
or in /boot, is refused before anything is written, with the bytes needed and available."""

from __future__ import annotations

import re
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.integration.conftest import Releases, petra
from tests.integration.sysroots import Source, assert_refused, snapshot, status

pytestmark = pytest.mark.integration

Mount = Callable[[Path, str], Path]


@pytest.fixture
def small_fs(testfs: Path) -> Iterator[Mount]:
    """mount(at, size): a new ext4 of `size` mounted at `at`; unmounted after the test."""
    mounted: list[Path] = []

    def mount(at: Path, size: str) -> Path:
        image = testfs / f"small-{len(mounted)}-{at.name}.img"
        subprocess.run(["truncate", "-s", size, image], check=True, timeout=60)
        subprocess.run(["mkfs.ext4", "-q", "-m", "0", image], check=True, timeout=120)
        at.mkdir(parents=True, exist_ok=True)
        subprocess.run(["mount", "-o", "loop", image, at], check=True, timeout=60)
        image.unlink()  # the loop device holds it until the unmount
        mounted.append(at)
        return at

    yield mount
    for at in reversed(mounted):
        subprocess.run(["fsfreeze", "-u", at], capture_output=True, timeout=60)
        subprocess.run(["umount", at], check=False, timeout=120)


def refused_with_figures(proc: subprocess.CompletedProcess[str], where: str) -> None:
    assert_refused(proc, "not enough space", where, "nothing was written")
    needed, available = (
        float(n) for n in re.findall(r"([\d.]+) MB (?:needed|available)", proc.stderr)
    )
    assert needed > available, proc.stderr


def objects(sysroot: Path) -> int:
    return sum(1 for p in (sysroot / "ostree/repo/objects").rglob("*") if p.is_file())


def test_a_deploy_that_does_not_fit_the_repo_is_refused(
    releases: Releases, testfs: Path, small_fs: Mount
) -> None:
    source = Source(releases, "space-deploy")
    sysroot = small_fs(testfs / "space-deploy", "256M") / "sys"  # the tree is ~480 MB
    petra("init", "--sysroot", sysroot)
    before = snapshot(sysroot)
    proc = petra("deploy", "--sysroot", sysroot, "--repo", source.repo, source.ref, check=False)
    refused_with_figures(proc, str(sysroot))
    assert snapshot(sysroot) == before and objects(sysroot) == 0


def test_an_upgrade_that_does_not_fit_is_refused_then_works_with_room(
    releases: Releases, testfs: Path, small_fs: Mount
) -> None:
    source = Source(releases, "space-upgrade")
    where = small_fs(testfs / "space-upgrade", "900M")
    sysroot = where / "sys"
    petra("init", "--sysroot", sysroot)
    petra("deploy", "--sysroot", sysroot, "--repo", source.repo, source.ref)
    # Fill the file system up to a few MB: v2 (htop more) no longer fits.
    filler = where / "filler"
    free = int(subprocess.run(["df", "--output=avail", "-B1", where], capture_output=True,
                              text=True, check=True, timeout=60).stdout.split()[-1])  # fmt: skip
    subprocess.run(["fallocate", "-l", str(free - 4_000_000), filler], check=True, timeout=60)
    source.point_at(releases.v2)
    before, count = snapshot(sysroot), objects(sysroot)
    proc = petra("upgrade", "--sysroot", sysroot, check=False)
    refused_with_figures(proc, str(sysroot))
    assert snapshot(sysroot) == before and objects(sysroot) == count
    filler.unlink()
    petra("upgrade", "--sysroot", sysroot)
    assert [d["commit"] for d in status(sysroot)] == [releases.v2, releases.v1]


def test_a_kernel_that_does_not_fit_boot_is_refused(
    releases: Releases, testfs: Path, small_fs: Mount
) -> None:
    source = Source(releases, "space-boot")
    sysroot = testfs / "sysroots" / "space-boot"
    petra("init", "--sysroot", sysroot)
    assert not any((sysroot / "boot").iterdir())  # nothing hidden by the mount
    small_fs(sysroot / "boot", "12M")  # the kernel and initramfs take ~25 MB
    before = snapshot(sysroot)
    proc = petra("deploy", "--sysroot", sysroot, "--repo", source.repo, source.ref, check=False)
    refused_with_figures(proc, str(sysroot / "boot"))
    assert snapshot(sysroot) == before and objects(sysroot) == 0
