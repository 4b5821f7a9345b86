"""The package tree: what apt and dpkg make of a package set, before Petra's conventions.

Cold: mmdebstrap (minbase + the packages), fed from the .deb store, no download of its own.
Incremental: a cached package tree whose packages are all in the new set (same versions) is
checked out, and apt installs the rest inside bubblewrap over an overlay of it. Both run apt with
the same options and SOURCE_DATE_EPOCH, so the same package set gives the same tree.
"""

from __future__ import annotations

import hashlib
import json
import shlex
from dataclasses import dataclass
from pathlib import Path

from petra import mounts, selfdeb, tree
from petra.archive import Archive, Deb, exclude_preferences
from petra.reporting import Reporter
from petra.run import run
from petra.sandbox import Bind, Sandbox
from petra.spec import Spec

# Bump when the way package trees are built changes: old cache entries then no longer match.
RECIPE = "petra-rootfs-2"

KERNEL_PACKAGES = {
    "amd64": "linux-image-amd64",
    "arm64": "linux-image-arm64",
    "i386": "linux-image-686",
    "armhf": "linux-image-armmp",
    "ppc64el": "linux-image-powerpc64le",
    "riscv64": "linux-image-riscv64",
    "s390x": "linux-image-s390x",
}

# dracut: a generic (not host-only) initramfs, byte-reproducible; ostree-boot adds its module.
# A Petra boot mounts one ext4 root and hands over to ostree-prepare-root: no hardware database,
# graphics, network, splash, hibernation resume or keymaps in the initramfs (each costs boot time,
# most under emulation). Modules a tree's packages bring (lvm2, cryptsetup...) still come in.
DRACUT_OMIT = (
    "drm hwdb i18n kernel-modules-extra lunmask network nvdimm overlay-root plymouth qemu "
    "qemu-net resume systemd-battery-check systemd-pcrphase terminfo virtfs virtiofs"
)
# On amd64, only the drivers a root disk needs (virtio, SATA, NVMe, USB, SD) and a keyboard for
# the emergency shell, instead of every storage, HID and watchdog driver: 47 modules, not 783.
DRACUT_DRIVERS = {
    "amd64": (
        "ahci nvme sd_mod virtio_blk virtio_scsi usb_storage uas xhci_pci ehci_pci ohci_pci "
        "mmc_block sdhci_pci sdhci_acpi ext4 hid_generic usbhid"
    ),
}


def dracut_conf(architecture: str) -> str:
    """The dracut.conf.d file compose writes before the kernel package runs dracut."""
    lines = [
        'hostonly="no"',
        'reproducible="yes"',
        'add_dracutmodules+=" ostree systemd "',
        f'omit_dracutmodules+=" {DRACUT_OMIT} "',
    ]
    if architecture in DRACUT_DRIVERS:
        lines.append(f'drivers=" {DRACUT_DRIVERS[architecture]} "')
    return "\n".join(lines) + "\n"


def requested_packages(spec: Spec) -> list[str]:
    """The spec's packages plus what `kernel = true` brings (kernel, dracut, ostree's boot bits)
    and what `petra = true` needs (petra's own .deb is installed later, in the customise step)."""
    extra = list(selfdeb.DEPENDS) if spec.petra else []
    if spec.kernel:
        extra += [
            KERNEL_PACKAGES.get(spec.architecture, f"linux-image-{spec.architecture}"),
            "dracut",
            "ostree",
            "ostree-boot",
        ]
    return sorted({*spec.packages, *extra})


def base_key(spec: Spec) -> str:
    """Everything but the package set that shapes a package tree."""
    data = [
        RECIPE,
        spec.mirror,
        spec.suite,
        spec.architecture,
        spec.kernel,
        list(spec.exclude_packages),
    ]
    return hashlib.sha256(json.dumps(data).encode()).hexdigest()[:32]


def tree_key(base: str, debs: list[Deb], requested: list[str]) -> str:
    """The cache key of a package tree: its base key, requested names and resolved versions."""
    data = [base, requested, [f"{d.name}={d.version}" for d in debs]]
    return hashlib.sha256(json.dumps(data).encode()).hexdigest()[:32]


@dataclass(frozen=True)
class CachedTree:
    checksum: str
    packages: dict[str, str]


def pick_base(candidates: list[CachedTree], debs: list[Deb]) -> CachedTree | None:
    """The largest cached tree whose every package is in `debs` at the same version."""
    wanted = {d.name: d.version for d in debs}
    usable = [
        c
        for c in candidates
        if c.packages and all(wanted.get(n) == v for n, v in c.packages.items())
    ]
    if not usable:
        return None
    return max(usable, key=lambda c: len(c.packages))


def build_cold(
    spec: Spec, archive: Archive, archives: Path, target: Path, epoch: int, reporter: Reporter
) -> None:
    """Run mmdebstrap into `target` with the already fetched debs and indices.

    Raises ToolError with the exact mmdebstrap command if it fails.
    """
    packages = requested_packages(spec)
    setup = [
        'mkdir -p "$1/var/lib/apt/lists" "$1/var/cache/apt/archives"',
        _link_or_copy(f"{shlex.quote(str(archive.lists_dir))}/*_*", '"$1/var/lib/apt/lists/"'),
        _link_or_copy(f"{shlex.quote(str(archives))}/*.deb", '"$1/var/cache/apt/archives/"'),
    ]
    if spec.kernel:
        conf = shlex.quote(dracut_conf(spec.architecture))
        setup += [
            'mkdir -p "$1/etc/dracut.conf.d"',
            f'printf %s {conf} > "$1/etc/dracut.conf.d/10-petra.conf"',
        ]
    if spec.exclude_packages:
        pref = shlex.quote(exclude_preferences(spec.exclude_packages))
        setup += [
            'mkdir -p "$1/etc/apt/preferences.d"',
            f'printf %s {pref} > "$1/etc/apt/preferences.d/petra-exclude.pref"',
        ]
    argv = [
        "mmdebstrap",
        "--variant=minbase",
        "--mode=root",
        "--format=directory",
        f"--architectures={spec.architecture}",
        "--skip=update",
        "--skip=download/empty",
        "--skip=essential/unlink",
        '--aptopt=APT::Install-Recommends "false"',
        '--aptopt=Acquire::Languages "none"',
        # The build dir is thrown away if anything fails, so per-file fsync buys nothing here;
        # durability comes from the ostree commit.
        "--dpkgopt=force-unsafe-io",
        *[f"--setup-hook={cmd}" for cmd in setup],
    ]
    if packages:
        argv.append("--include=" + ",".join(packages))
    argv += [spec.suite, str(target), archive.sources_line]
    run(
        argv,
        env=_build_env(epoch),
        reporter=reporter,
        hint="the command above shows mmdebstrap's error",
    )
    _clear_dev(target)


def build_incremental(
    spec: Spec,
    archive: Archive,
    archives: Path,
    base_checkout: Path,
    scratch: Path,
    epoch: int,
    reporter: Reporter,
) -> None:
    """apt-get install the spec's packages inside an overlay of `base_checkout`, then replay the
    changes onto it. The checkout's shared files are never written. Raises ToolError on failure.
    """
    packages = requested_packages(spec)
    with mounts.overlay(base_checkout, scratch) as (merged, upper):
        sandbox = Sandbox(
            root=merged,
            binds=(
                Bind(archive.lists_dir, "/var/lib/apt/lists"),
                Bind(archives, "/var/cache/apt/archives"),
            ),
            privileged=True,
            env={**_build_env(epoch), "DEBIAN_FRONTEND": "noninteractive"},
        )
        apt = [
            "apt-get",
            "install",
            "-y",
            "--no-download",
            "-oAPT::Install-Recommends=false",
            "-oAcquire::Languages=none",
            "-oDPkg::Options::=--force-unsafe-io",
            *packages,
        ]
        run(sandbox.argv(apt), reporter=reporter, hint="the command above shows apt's error")
        run(sandbox.argv(["apt-get", "clean"]))
    tree.apply_upper(upper, base_checkout)


def installed_packages(root: Path, dpkg_dir: str = "var/lib/dpkg") -> dict[str, str]:
    """name → version of every installed package, from the tree's dpkg status file."""
    status = root / dpkg_dir / "status"
    packages: dict[str, str] = {}
    for stanza in status.read_text(encoding="utf-8").split("\n\n"):
        fields = dict(_fields(stanza))
        if fields.get("Status", "").endswith(" installed") and "Package" in fields:
            packages[fields["Package"]] = fields.get("Version", "")
    return dict(sorted(packages.items()))


def _fields(stanza: str) -> list[tuple[str, str]]:
    out = []
    for line in stanza.splitlines():
        if line and not line[0].isspace() and ":" in line:
            key, _, value = line.partition(":")
            out.append((key, value.strip()))
    return out


def _build_env(epoch: int) -> dict[str, str]:
    return {"SOURCE_DATE_EPOCH": str(epoch), "LC_ALL": "C.UTF-8", "TZ": "UTC"}


def _clear_dev(target: Path) -> None:
    # Root mode makes device nodes, which a commit cannot hold; /dev is a mount point anyway.
    dev = target / "dev"
    if dev.is_dir():
        for entry in dev.iterdir():
            tree.remove(entry)


def _link_or_copy(sources: str, dest: str) -> str:
    """A shell line that hardlinks `sources` into `dest`, or copies them when the cache's
    store lives on another file system."""
    return f"cp -al {sources} {dest} 2>/dev/null || cp -a {sources} {dest}"
