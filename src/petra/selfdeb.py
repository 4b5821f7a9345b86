"""Petra as a Debian package, built from the running petra's own source (a spec's `petra = true`).

The .deb installs the petra Python package under /usr/lib/python3/dist-packages, the `petra`
command in /usr/bin, the units and the GRUB snippet of boot assessment (see health), and
depends on what petra needs on a device (Python, PyGObject, libostree's typelib, ostree,
bubblewrap). Its version carries a digest of the source, and every file's time
is fixed, so the same source always gives the same bytes (and the same commit).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from pathlib import Path

import petra
from petra import health
from petra.run import run

PACKAGE = "petra"
DEPENDS = ("python3", "python3-gi", "gir1.2-ostree-1.0", "ostree", "bubblewrap")
# Every file's mtime in the package, and dpkg-deb's SOURCE_DATE_EPOCH: 2026-01-01 00:00 UTC.
EPOCH = 1767225600
SITE = "usr/lib/python3/dist-packages"

LAUNCHER = """#!/usr/bin/python3
import sys

from petra.cli import main

sys.exit(main())
"""

CONTROL = """Package: {package}
Version: {version}
Architecture: all
Maintainer: Petra developers <petra@localhost>
Depends: python3 (>= 3.11), {depends}
Section: admin
Priority: optional
Description: Petra: deployments, upgrades and rollbacks of this immutable Debian
 The petra command of a Petra system: petra status, upgrade, rollback and deploy
 manage the machine's OSTree deployments (--sysroot defaults to /).
"""


def source_files() -> list[Path]:
    """The files of the petra package that go into the .deb, relative to its directory."""
    root = Path(petra.__file__).parent
    files = []
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root)
        if path.is_file() and "__pycache__" not in rel.parts and path.suffix in (".py", ".typed"):
            files.append(rel)
    return files


def version() -> str:
    """petra's version plus a digest of its source: a changed file is a new package version."""
    root = Path(petra.__file__).parent
    digest = hashlib.sha256()
    for rel in source_files():
        digest.update(f"{rel}\0".encode() + (root / rel).read_bytes() + b"\0")
    return f"{petra.__version__}+src{digest.hexdigest()[:12]}"


def _stage_file(path: Path, text: str, mode: int = 0o644) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(mode)


def _stage_boot_assessment(stage: Path) -> None:
    """GRUB's boot counting and the units that judge a boot (see health)."""
    _stage_file(stage / "etc/grub.d" / health.GRUB_SCRIPT_NAME, health.GRUB_SCRIPT, 0o755)
    units = stage / "usr/lib/systemd/system"
    _stage_file(units / health.SERVICE, health.SERVICE_UNIT)
    for target, kind in ((health.REQUIRED_TARGET, "required"), (health.WANTED_TARGET, "wanted")):
        _stage_file(units / target, health.TARGET_UNIT.format(kind=kind))
    _stage_file(units / health.DEADLINE_TIMER, health.DEADLINE_TIMER_UNIT)
    _stage_file(units / health.DEADLINE_SERVICE, health.DEADLINE_SERVICE_UNIT)
    for target, unit in (("multi-user", health.SERVICE), ("sysinit", health.DEADLINE_TIMER)):
        wants = units / f"{target}.target.wants"
        wants.mkdir()
        (wants / unit).symlink_to(f"../{unit}")


def build(dest_dir: Path) -> Path:
    """Build (or reuse) petra_<version>_all.deb in `dest_dir`; returns its path.

    The file appears complete or not at all. Raises ToolError if dpkg-deb fails.
    """
    ver = version()
    output = dest_dir / f"{PACKAGE}_{ver}_all.deb"
    if output.exists():
        return output
    dest_dir.mkdir(parents=True, exist_ok=True)
    root = Path(petra.__file__).parent
    with tempfile.TemporaryDirectory(dir=dest_dir, prefix=".build-") as scratch:
        stage = Path(scratch) / "stage"
        for rel in source_files():
            target = stage / SITE / "petra" / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(root / rel, target)
            target.chmod(0o644)
        _stage_file(stage / "usr/bin/petra", LAUNCHER, 0o755)
        _stage_boot_assessment(stage)
        control = stage / "DEBIAN/control"
        control.parent.mkdir()
        control.write_text(
            CONTROL.format(package=PACKAGE, version=ver, depends=", ".join(DEPENDS[1:]))
        )
        for dirpath, dirnames, filenames in os.walk(stage):
            for name in [*dirnames, *filenames]:
                os.utime(os.path.join(dirpath, name), (EPOCH, EPOCH), follow_symlinks=False)
            os.chmod(dirpath, 0o755)
        os.utime(stage, (EPOCH, EPOCH))
        partial = Path(scratch) / "petra.deb"
        run(
            ["dpkg-deb", "--root-owner-group", "-Zgzip", "--build", str(stage), str(partial)],
            env={"SOURCE_DATE_EPOCH": str(EPOCH)},
        )
        os.rename(partial, output)
    return output
