"""The bootable example: kernel and initramfs where ostree wants them, and `ostree admin deploy`."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.integration.conftest import Composed, ostree

pytestmark = pytest.mark.integration


def kernel_version(server: Composed) -> str:
    listing = ostree("--repo", server.repo, "ls", server.commit, "/usr/lib/modules")
    versions = [line.split("/")[-1] for line in listing.splitlines()[1:]]
    assert len(versions) == 1, listing
    return versions[0]


def test_kernel_and_initramfs_live_in_usr_lib_modules(server: Composed) -> None:
    kver = kernel_version(server)
    files = ostree("--repo", server.repo, "ls", server.commit, f"/usr/lib/modules/{kver}")
    assert f"/usr/lib/modules/{kver}/vmlinuz" in files
    assert f"/usr/lib/modules/{kver}/initramfs.img" in files
    assert ostree("--repo", server.repo, "ls", "-R", server.commit, "/boot").count("\n") == 1
    show = ostree("--repo", server.repo, "show", "--print-metadata-key=ostree.linux", server.commit)
    assert kver in show
    top = ostree("--repo", server.repo, "ls", server.commit, "/")
    assert "vmlinuz" not in top and "initrd.img" not in top  # the kernel postinst's links


def test_tmpfiles_paths_that_became_links_point_into_var(server: Composed) -> None:
    cat = lambda path: ostree("--repo", server.repo, "cat", server.commit, path)  # noqa: E731
    provision = cat("/usr/etc/tmpfiles.d/provision.conf")  # systemd's, redirected
    assert "d- /var/roothome :0700 root :root -" in provision
    assert "\nd- /root" not in provision
    assert "Q /var/home 0755" in cat("/usr/etc/tmpfiles.d/home.conf")  # systemd's, redirected
    assert cat("/usr/etc/machine-id") == "uninitialized\n"


def test_initramfs_has_ostree_prepare_root(server: Composed, testfs: Path) -> None:
    kver = kernel_version(server)
    root = testfs / "initramfs-checkout"  # a hardlink checkout: on the repo's file system
    ostree("--repo", server.repo, "checkout", "-H", server.commit, root)
    listing = subprocess.run(
        [
            "bwrap",
            "--ro-bind",
            root / "usr",
            "/usr",
            "--ro-bind",
            root / "usr/etc",
            "/etc",
            "--symlink",
            "usr/bin",
            "/bin",
            "--symlink",
            "usr/sbin",
            "/sbin",
            "--symlink",
            "usr/lib",
            "/lib",
            "--symlink",
            "usr/lib64",
            "/lib64",
            "--proc",
            "/proc",
            "--dev",
            "/dev",
            "--tmpfs",
            "/tmp",
            "--tmpfs",
            "/var",
            "--unshare-all",
            "lsinitrd",
            f"/usr/lib/modules/{kver}/initramfs.img",
        ],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    assert "ostree-prepare-root" in listing
    assert "usr/lib/systemd/systemd" in listing


def test_spec_users_services_and_no_host_keys(server: Composed) -> None:
    cat = lambda path: ostree("--repo", server.repo, "cat", server.commit, path)  # noqa: E731
    admin = [line for line in cat("/usr/etc/passwd").splitlines() if line.startswith("admin:")]
    assert admin and admin[0].endswith(":/home/admin:/bin/bash")
    assert "sudo:x:27:admin" in cat("/usr/etc/group")
    assert "d /var/home/admin 0700 admin admin -" in cat("/usr/lib/tmpfiles.d/petra-var.conf")
    wants = ostree(
        "--repo",
        server.repo,
        "ls",
        server.commit,
        "/usr/etc/systemd/system/multi-user.target.wants",
    )
    assert "ssh.service" in wants
    timers = ostree(
        "--repo", server.repo, "ls", server.commit, "/usr/etc/systemd/system/timers.target.wants"
    )
    assert "apt-daily.timer" not in timers
    assert "ssh_host_" not in ostree("--repo", server.repo, "ls", server.commit, "/usr/etc/ssh")


def test_ostree_admin_deploys_the_commit(server: Composed, testfs: Path) -> None:
    sysroot = testfs / "ostree-admin-sysroot"
    sysroot.mkdir()
    ostree("admin", "init-fs", sysroot)
    ostree("admin", f"--sysroot={sysroot}", "os-init", "petra")
    ostree(f"--repo={sysroot}/ostree/repo", "pull-local", server.repo, server.commit)
    ostree("admin", f"--sysroot={sysroot}", "deploy", "--os=petra", server.commit)
    status = ostree("admin", f"--sysroot={sysroot}", "status")
    assert f"petra {server.commit}.0" in status
    deployment = sysroot / f"ostree/deploy/petra/deploy/{server.commit}.0"
    assert (deployment / "etc/hostname").read_text() == "petra\n"  # /etc made from /usr/etc
    entries = list((sysroot / "boot/loader/entries").glob("*.conf"))
    assert len(entries) == 1
    assert "ostree=/ostree/boot." in entries[0].read_text()
