"""petra image build: a commit becomes a disk image that boots (BIOS, GRUB, one ext4 partition).

The disk: an MBR partition table and one ext4 partition (label petra-root) from 1 MiB on. GRUB's
boot code sits in the MBR and the gap before the partition; the partition holds a sysroot
(ostree/ and boot/) with one deployment of the commit. GRUB reads boot/grub/grub.cfg, a link to
the menu the tree's own ostree writes (grub-mkconfig with ostree's 15_ostree script) on every
change of the deployment list, so the menu always lists every deployment, the default first.

What needs a newer ostree than the build host's (boot paths under /boot/ostree for a one-partition
layout: `sysroot.bootprefix`, and the GRUB menu) and grub-install run from the tree itself, in
bubblewrap, as bootc does: the disk holds what the booted system's own tools would have made.

The image is built under a temporary name beside the output and renamed last: a failed build
leaves no image, and `--force` replaces an old one only when the new one is complete.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from petra import mounts, stateroot, sysroot, tree
from petra.errors import RepoError, ToolError, UsageError
from petra.freeze import thaw_guard
from petra.ostree import Repo, Sysroot
from petra.reporting import Reporter, timed_step
from petra.run import run
from petra.sandbox import Bind, Sandbox

DEFAULT_SIZE = 4 << 30
# Where `petra vm run --share DIR` mounts DIR in the guest: the image's remote points there, so
# `petra upgrade` inside the VM pulls from the repository the host shares.
DEFAULT_REMOTE_URL = "file:///run/petra/share"
LABEL = "petra-root"
PARTITION_START = 1 << 20  # 1 MiB: room for GRUB's core image before the partition
# What a tree needs for this layout (the spec's packages: grub-pc-bin, grub2-common, ostree-boot).
GRUB_FILES = {
    "/usr/sbin/grub-install": "grub2-common",
    "/usr/lib/grub/i386-pc/boot.img": "grub-pc-bin",
    "/usr/etc/grub.d/15_ostree": "ostree-boot",
    "/usr/etc/default/grub": 'a [files] entry "/etc/default/grub" (see examples/server.toml)',
}

_SIZE_RE = re.compile(r"^(\d+(?:\.\d+)?)([KMGT]?)(i?B)?$", re.IGNORECASE)
_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


# --- pure decisions (unit-tested) -----------------------------------------------------------


def parse_size(text: str) -> int:
    """'4G', '4096M', '2.5GiB' or a byte count as bytes (units are powers of 1024).

    Raises UsageError for anything else.
    """
    match = _SIZE_RE.match(text.strip())
    if not match:
        raise UsageError(f"invalid size '{text}'", "write it like 4G or 4096M")
    return int(float(match.group(1)) * _UNITS[match.group(2).upper()])


def needed_size(tree_bytes: int) -> int:
    """The smallest disk that holds a tree of `tree_bytes` as a sysroot: the repo's objects,
    the boot files, the file system's own metadata and room for one /etc merge and /var.
    Rounded up to a MiB."""
    raw = PARTITION_START + tree_bytes * 1.25 + (256 << 20)
    return math.ceil(raw / (1 << 20)) << 20


def human(size: int) -> str:
    """1.5 GiB, 746 MiB: how sizes are printed."""
    if size >= 1 << 30:
        return f"{size / (1 << 30):.1f} GiB"
    return f"{math.ceil(size / (1 << 20))} MiB"


PANIC_REBOOT_SECONDS = 10
# An initramfs that fails reboots instead of waiting at a shell nobody is at.
INITRAMFS_FAILURE = ("rd.shell=0", "rd.emergency=reboot")


def kernel_args(fs_uuid: str, spec_args: list[str]) -> list[str]:
    """The first deployment's kernel command line: the root file system, a kernel panic or a
    failing initramfs that reboots (an unattended machine comes back, and GRUB counts the
    attempt of a deployment on trial), then the spec's."""
    return [
        f"root=UUID={fs_uuid}",
        "rw",
        f"panic={PANIC_REBOOT_SECONDS}",
        *INITRAMFS_FAILURE,
        *spec_args,
    ]


# --- the build -------------------------------------------------------------------------------


@dataclass(frozen=True)
class ImageResult:
    path: Path
    checksum: str
    version: str
    size: int  # the disk's size
    used: int  # bytes the file system uses
    seconds: float


def build(
    repo_path: Path,
    rev: str,
    output: Path,
    reporter: Reporter,
    *,
    size: int = DEFAULT_SIZE,
    force: bool = False,
    remote_url: str = DEFAULT_REMOTE_URL,
    osname: str = stateroot.DEFAULT_OSNAME,
) -> ImageResult:
    """Build a bootable disk image of `rev` (a ref or commit of the repo at `repo_path`).

    Every check on the input (output path, ref, a bootable tree with GRUB, the size) happens
    before anything is written; UsageError or RepoError say what to change. On any later
    failure the partial image is removed and `output` is as it was.
    """
    start = time.monotonic()
    output = output.absolute()
    if output.is_dir():
        raise UsageError(f"{output} is a directory", "name the image file, e.g. -o petra.img")
    if output.exists() and not force:
        raise UsageError(f"{output} exists", "pass --force to replace it")
    if not output.parent.is_dir():
        raise UsageError(f"{output.parent} does not exist", "create the directory first")
    repo = Repo.open(repo_path)
    checksum = repo.resolve(rev)
    assert checksum is not None
    info = repo.read_commit(checksum)
    _check_bootable(repo, rev, checksum, info.metadata)
    needed = needed_size(int(info.metadata.get("petra.size", 0)))
    if size < needed:
        raise UsageError(
            f"--size {human(size)} is too small for {rev}: the image needs at least "
            f"{human(needed)}",
            f"pass --size {math.ceil(needed / (1 << 30))}G",
        )
    mounts.private_mount_namespace()
    partial = output.with_name(f".{output.name}.partial")
    tree.remove(partial)
    try:
        with timed_step(reporter, "disk", f"{human(size)}, MBR, ext4 {LABEL}"):
            with open(partial, "wb") as f:
                f.truncate(size)
            table = f"start={PARTITION_START // 512}, type=83, bootable\n"
            run(["sfdisk", "--quiet", str(partial)], input_text=table)
        with _loop_device(partial) as disk:
            fs_uuid = str(uuid.uuid4())
            run(["mkfs.ext4", "-q", "-L", LABEL, "-U", fs_uuid, f"{disk}p1"])
            with _mounted(Path(f"{disk}p1"), output.with_name(f".{output.name}.mnt")) as root:
                target = _make_sysroot(root, repo, rev, checksum, remote_url, osname, reporter)
                spec_args = [str(a) for a in info.metadata.get("petra.kernel-args", [])]
                args = kernel_args(fs_uuid, spec_args)
                _deploy_and_install_grub(root, disk, osname, target, checksum, args, reporter)
                stat = os.statvfs(root)
                used = (stat.f_blocks - stat.f_bfree) * stat.f_frsize
        os.rename(partial, output)
    except BaseException:
        tree.remove(partial)
        raise
    return ImageResult(output, checksum, info.version, size, used, time.monotonic() - start)


def _check_bootable(repo: Repo, rev: str, checksum: str, metadata: dict[str, object]) -> None:
    if not metadata.get("ostree.linux"):
        raise RepoError(
            f"{rev} ({checksum[:12]}) has no kernel, so it cannot boot",
            "compose a spec with kernel = true (e.g. examples/server.toml)",
        )
    for path, provider in GRUB_FILES.items():
        if not repo.has_path(checksum, path):
            raise RepoError(
                f"{rev} ({checksum[:12]}) has no {path}: it cannot boot with GRUB for BIOS",
                f"add {provider} to the spec and compose again",
            )


def _make_sysroot(
    root: Path,
    repo: Repo,
    rev: str,
    checksum: str,
    remote_url: str,
    osname: str,
    reporter: Reporter,
) -> str:
    """A sysroot at the file system's root, the commit pulled under the remote the image will
    upgrade from. Returns what to deploy: `remote:ref` (followed by upgrades) or the checksum."""
    with timed_step(reporter, "sysroot", f"stateroot {osname}, pull {rev}") as r:
        target = Sysroot.init(root, osname)
        target.set_config("petra", "osname", osname)
        target.set_config("petra", "keep", str(sysroot.DEFAULT_KEEP))
        # The tree's ostree reads these: kernels under /boot/ostree (one partition), GRUB menu.
        target.set_config("sysroot", "bootloader", "grub2")
        target.set_config("sysroot", "bootprefix", "true")
        remote = sysroot.remote_name(remote_url)
        target.ensure_remote(remote, remote_url)
        # A commit given by checksum follows the ref whose history holds it, as deploy does.
        ref = rev if rev in repo.refs() else sysroot.ref_holding(repo, checksum)
        pull = ["ostree", f"--repo={target.repo.path}", "pull-local", str(repo.path), checksum]
        run(pull)
        if ref:
            target.repo.set_ref(ref, checksum, remote=remote)
        r["detail"] = f"remote {remote} = {remote_url}"
    return f"{remote}:{ref}" if ref else checksum


def _deploy_and_install_grub(
    root: Path,
    disk: str,
    osname: str,
    target: str,
    checksum: str,
    args: list[str],
    reporter: Reporter,
) -> None:
    tools = root / "ostree/petra-image-tools"
    run(["ostree", f"--repo={root}/ostree/repo", "checkout", checksum, str(tools)])
    (tools / "etc").mkdir()  # where the tree's /usr/etc is bound (the tree itself is read-only)
    try:
        grub_dir = root / "boot/grub"
        grub_dir.mkdir(parents=True, exist_ok=True)
        tree.symlink(grub_dir / "grub.cfg", "../loader/grub.cfg")
        # The sysroot is "/" for the tree's ostree (its /ostree leads to /sysroot/ostree): with
        # another path, ostree runs grub-mkconfig chrooted into the new deployment, where no
        # /dev is mounted and grub-probe cannot find the disk.
        deploy = ["ostree", "admin", "deploy", f"--os={osname}"]
        deploy += [f"--karg={a}" for a in args]
        step = f"{target} with the tree's ostree and GRUB menu"
        with timed_step(reporter, "deploy", step), thaw_guard(root / "boot") as guard:
            run(_in_tree(tools, root, [*deploy, target]), pass_fds=(guard,), reporter=reporter)
        with timed_step(reporter, "bootloader", f"grub-install --target=i386-pc {disk}"):
            install = ["grub-install", "--target=i386-pc", "--boot-directory=/boot", disk]
            run(_in_tree(tools, root, install), reporter=reporter)
    finally:
        tree.remove(tools)


def _in_tree(tools: Path, root: Path, command: list[str]) -> list[str]:
    """bwrap argv running `command` from a checkout of the tree, the new sysroot at /sysroot
    and its /boot at /boot, the host's devices (the loop disk) and /sys visible."""
    sandbox = Sandbox(
        root=tools,
        binds=(
            Bind(tools / "usr/etc", "/etc", read_only=True),
            Bind(root, "/sysroot"),
            Bind(root / "boot", "/boot"),
        ),
        privileged=True,
        read_only_root=True,
        host_devices=True,
        tmpfs=("/var",),
        env={"PATH": "/usr/sbin:/usr/bin"},
    )
    return sandbox.argv(command)


@contextlib.contextmanager
def _loop_device(image: Path) -> Iterator[str]:
    """Attach `image` as a loop device with its partitions; detached on exit."""
    disk = run(["losetup", "--find", "--show", "--partscan", str(image)]).stdout.strip()
    try:
        partition = Path(f"{disk}p1")
        for attempt in range(50):
            if partition.exists():
                break
            if attempt == 5:
                run(["partx", "--add", disk], check=False)
            time.sleep(0.1)
        else:
            raise ToolError(f"{partition} did not appear", "is udev or devtmpfs missing?")
        yield disk
    finally:
        run(["losetup", "--detach", disk], check=False)


@contextlib.contextmanager
def _mounted(device: Path, mountpoint: Path) -> Iterator[Path]:
    mountpoint.mkdir(exist_ok=True)
    run(["mount", str(device), str(mountpoint)])
    try:
        yield mountpoint
    finally:
        if run(["umount", str(mountpoint)], check=False).returncode != 0:
            run(["umount", "--lazy", str(mountpoint)], check=False)
        with contextlib.suppress(OSError):
            mountpoint.rmdir()
