"""Debian on OSTree: turn a package tree into a tree ostree can deploy.

- /etc ships as /usr/etc (ostree makes /etc from it with a three-way merge on deploy);
- the package databases (dpkg, debconf, ucf, apt's auto marks) move under /usr/lib/sysimage and
  /var gets symlinks to them from tmpfiles.d, so each commit knows exactly what it holds;
- /var is emptied; every directory it had becomes a tmpfiles.d line;
- /home, /root, /opt, /srv, /mnt and /usr/local point into /var;
- the kernel and initramfs move to /usr/lib/modules/$KVER/; /boot is left empty;
- tmpfiles.d lines for paths that are now links (/root, /home, /srv ...) are redirected into /var;
- nothing machine-specific: machine-id reads "uninitialized" (systemd's mark of an image that has
  not booted yet, so the first boot is a first boot), no SSH host keys, no logs, caches or apt
  lists, no /vmlinuz or /initrd.img links at the root.

Runs on a hardlink checkout, so it only renames, removes and creates (petra.tree's rule).
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import Path

from petra import tree
from petra.errors import ToolError

SYSIMAGE = "usr/lib/sysimage"

# Package state that belongs to the tree: moved under /usr/lib/sysimage, linked from /var.
STATE_DIRS = {
    "var/lib/dpkg": "dpkg",
    "var/cache/debconf": "debconf",
    "var/lib/ucf": "ucf",
}
STATE_FILES = {"var/lib/apt/extended_states": "apt/extended_states"}

# Top-level directories that are state, and where in /var they live.
VAR_LINKS = {
    "home": "var/home",
    "root": "var/roothome",
    "opt": "var/opt",
    "srv": "var/srv",
    "mnt": "var/mnt",
    "usr/local": "../var/usrlocal",
}

# What apt and dpkg need under /var at run time (layering) besides the links above.
APT_RUNTIME_DIRS = (
    "d /var/cache/apt/archives/partial 0755 root root -",
    "d /var/lib/apt/lists/partial 0755 root root -",
    "d /var/log/apt 0755 root root -",
)

# What apt and dpkg leave in those directories besides the databases.
STATE_JUNK = (
    "lock",
    "lock-frontend",
    "triggers/Lock",
    "status-old",
    "available-old",
    "diversions-old",
    "statoverride-old",
    "config.dat-old",
    "templates.dat-old",
    "passwords.dat-old",
    "hashfile.0",
    "registry.0",
)

MACHINE_SPECIFIC = (
    "etc/ssh/ssh_host_*",
    "etc/*-",  # passwd-, shadow-, group-, gshadow-, subuid-, subgid- backups
    "etc/ld.so.cache~",
    "var/lib/dbus/machine-id",
)


@dataclass(frozen=True)
class ConventionResult:
    kernel_version: str | None


def apply(root: Path, extra_tmpfiles: list[str], kernel: bool) -> ConventionResult:
    """Apply every convention to the tree at `root` (see the module docstring).

    Raises ToolError if `kernel` is set and the tree has no single kernel + initramfs.
    """
    _remove_machine_specific(root)
    kver = _move_kernel(root) if kernel else None
    if not kernel:
        _clear(root / "boot")
    tmpfiles = _move_state(root)
    tmpfiles += _link_toplevel(root)
    tmpfiles += var_tmpfiles(root, root / "etc")
    _clear(root / "var")
    tmpfiles += list(APT_RUNTIME_DIRS)
    tmpfiles += extra_tmpfiles
    _write_tmpfiles(root, tmpfiles)
    _redirect_tmpfiles(root)
    _ostree_dirs(root)
    tree.move(root / "etc", root / "usr/etc")  # ostree refuses a tree with both
    return ConventionResult(kver)


def _remove_machine_specific(root: Path) -> None:
    for pattern in MACHINE_SPECIFIC:
        for path in root.glob(pattern):
            tree.remove(path)
    tree.write_file(root / "etc/machine-id", b"uninitialized\n", 0o444)
    # Debian's kernel postinst points these at /boot, which a deployed tree does not use.
    for name in ("vmlinuz", "vmlinuz.old", "initrd.img", "initrd.img.old"):
        if (root / name).is_symlink():
            tree.remove(root / name)
    # Host-derived files that mmdebstrap copies in and cleanup may leave.
    for name in ("var/lib/systemd/random-seed", "var/lib/systemd/credential.secret"):
        tree.remove(root / name)


def _move_kernel(root: Path) -> str:
    modules = root / "usr/lib/modules"
    versions = sorted(p.name for p in modules.iterdir()) if modules.is_dir() else []
    versions = [v for v in versions if (root / "boot" / f"vmlinuz-{v}").exists()]
    if len(versions) != 1:
        raise ToolError(
            f"expected one kernel in the tree, found {len(versions)}",
            "the kernel package did not install; see the compose output",
        )
    kver = versions[0]
    initrd = root / "boot" / f"initrd.img-{kver}"
    if not initrd.exists():
        raise ToolError(f"no initramfs for kernel {kver}", "dracut did not run; check its output")
    dest = modules / kver
    tree.move(root / "boot" / f"vmlinuz-{kver}", dest / "vmlinuz")
    tree.move(initrd, dest / "initramfs.img")
    for extra in ("config", "System.map"):
        src = root / "boot" / f"{extra}-{kver}"
        if src.exists():
            tree.move(src, dest / extra)
    _clear(root / "boot")
    return kver


def _move_state(root: Path) -> list[str]:
    lines = []
    for src, name in STATE_DIRS.items():
        path = root / src
        if not path.is_dir():
            continue
        tree.move(path, root / SYSIMAGE / name)
        depth = src.count("/")
        lines.append(f"L /{src} - - - - {'../' * depth}{SYSIMAGE}/{name}")
    tidy_state(root / SYSIMAGE)
    for src, name in STATE_FILES.items():
        path = root / src
        if path.exists():
            tree.move(path, root / SYSIMAGE / name)
            _sort_stanzas(root / SYSIMAGE / name)
            lines.append(f"L /{src} - - - - /{SYSIMAGE}/{name}")
    return lines


def tidy_state(sysimage: Path) -> None:
    """Drop what apt and dpkg leave beside the package databases under `sysimage` (locks,
    backups, debconf's scratch dir): the databases alone belong to a commit."""
    for name in STATE_DIRS.values():
        for junk in STATE_JUNK:
            tree.remove(sysimage / name / junk)
    tree.remove(sysimage / "debconf/tmp.ci")


def _sort_stanzas(path: Path) -> None:
    """apt writes extended_states in the order it met the packages; sort it so the file
    depends only on which packages are marked, not on how they were installed."""
    stanzas = [s.strip("\n") for s in path.read_text().split("\n\n") if s.strip()]
    tree.write_file(path, "\n\n".join(sorted(stanzas)) + "\n\n" if stanzas else "")


def var_tmpfiles(root: Path, etc: Path) -> list[str]:
    """A `d` line for every directory and an `L` line for every symlink in `root`/var (owners
    named from the passwd and group files in `etc`)."""
    users = _names(etc / "passwd")
    groups = _names(etc / "group")
    lines = []
    var = root / "var"
    for dirpath, dirnames, filenames in os.walk(var):
        if dirpath == str(var):  # systemd's own tmpfiles.d makes these
            dirnames[:] = [d for d in dirnames if d not in ("tmp", "run", "lock")]
            filenames = [f for f in filenames if f not in ("run", "lock")]
        dirnames.sort()
        rel_dir = Path(dirpath).relative_to(root)
        for name in [*dirnames, *sorted(filenames)]:
            path = Path(dirpath) / name
            st = os.lstat(path)
            target = f"/{rel_dir / name}"
            if stat.S_ISLNK(st.st_mode):
                lines.append(f"L {target} - - - - {os.readlink(path)}")
            elif stat.S_ISDIR(st.st_mode):
                owner = users.get(st.st_uid, str(st.st_uid))
                group = groups.get(st.st_gid, str(st.st_gid))
                mode = f"{stat.S_IMODE(st.st_mode):04o}"
                lines.append(f"d {target} {mode} {owner} {group} -")
    return lines


def _link_toplevel(root: Path) -> list[str]:
    lines = []
    for name, target in VAR_LINKS.items():
        path = root / name
        var_path = "/" + target.removeprefix("../")
        if path.is_dir() and not path.is_symlink() and any(path.iterdir()):
            # e.g. /root/.bashrc or /usr/local/bin: copied into /var at boot if missing there
            skel = root / "usr/share/petra/skel" / name
            tree.move(path, skel)
            lines.append(f"C {var_path} - - - - /usr/share/petra/skel/{name}")
        else:
            mode = "0700" if name == "root" else "0755"
            lines.append(f"d {var_path} {mode} root root -")
        tree.symlink(path, target)
    tree.symlink(root / "media", "run/media")
    return lines


def _write_tmpfiles(root: Path, lines: list[str]) -> None:
    seen: set[str] = set()
    unique = []
    for line in lines:
        path = line.split()[1]
        if path not in seen:
            seen.add(path)
            unique.append(line)
    body = "# Made by petra compose: what this tree needs under /var.\n" + "\n".join(unique) + "\n"
    tree.write_file(root / "usr/lib/tmpfiles.d/petra-var.conf", body)


def _redirect_tmpfiles(root: Path) -> None:
    """Packages' tmpfiles.d lines for /root, /home, /srv ... (e.g. systemd's home.conf and
    provision.conf) expect directories; an override of the same name in /etc points them at
    the /var directories the links lead to, so tmpfiles neither warns nor fails at boot."""
    rewrites = {"/" + name: "/" + target.removeprefix("../") for name, target in VAR_LINKS.items()}
    for conf in sorted((root / "usr/lib/tmpfiles.d").glob("*.conf")):
        if conf.name == "petra-var.conf" or (root / "etc/tmpfiles.d" / conf.name).exists():
            continue
        lines, changed = [], False
        for line in conf.read_text().splitlines():
            fields = line.split(None, 2)
            if len(fields) >= 2 and not line.startswith("#"):
                path = fields[1]
                for old, new in rewrites.items():
                    if path == old or path.startswith(old + "/"):
                        line = line.replace(path, new + path[len(old) :], 1)
                        changed = True
                        break
            lines.append(line)
        if changed:
            header = f"# Petra: {conf.name} with its paths redirected into /var.\n"
            tree.write_file(root / "etc/tmpfiles.d" / conf.name, header + "\n".join(lines) + "\n")


def _ostree_dirs(root: Path) -> None:
    for name in ("sysroot", "boot", "dev", "proc", "sys", "run", "tmp", "var"):
        (root / name).mkdir(exist_ok=True)
    os.chmod(root / "tmp", 0o1777)
    tree.symlink(root / "ostree", "sysroot/ostree")


def _clear(path: Path) -> None:
    if path.is_dir():
        for entry in path.iterdir():
            tree.remove(entry)


def _names(path: Path) -> dict[int, str]:
    names: dict[int, str] = {}
    if path.exists():
        for line in path.read_text().splitlines():
            parts = line.split(":")
            if len(parts) > 2 and parts[2].isdigit():
                names.setdefault(int(parts[2]), parts[0])
    return names
