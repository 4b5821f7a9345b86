"""Safe edits of a hardlink checkout, whose files are the repository's own objects.

Rule: never write into an existing file. Every change is unlink-then-create, rename or remove,
so the objects the checkout shares with the repo stay intact. `apply_upper` replays an overlayfs
upper directory onto such a checkout under the same rule.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
from pathlib import Path

_OVERLAY_XATTR = "trusted.overlay."


def remove(path: Path) -> None:
    """Remove a file, symlink or whole directory tree if present."""
    if path.is_symlink() or (path.exists() and not path.is_dir()):
        path.unlink()
    elif path.is_dir():
        shutil.rmtree(path)


def remove_tree(path: Path) -> None:
    """Remove a directory tree if present, never crossing into a file system mounted below it
    (`rm --one-file-system`); what is mounted there stays."""
    subprocess.run(["rm", "-rf", "--one-file-system", str(path)], check=False, timeout=1800)


def write_file(
    path: Path, data: bytes | str, mode: int = 0o644, uid: int = 0, gid: int = 0
) -> None:
    """Replace `path` with a new file holding `data` (never writes into the old inode)."""
    remove(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    raw = data.encode() if isinstance(data, str) else data
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        os.write(fd, raw)
        os.fchown(fd, uid, gid)
        os.fchmod(fd, mode)
    finally:
        os.close(fd)


def symlink(path: Path, target: str) -> None:
    """Replace `path` with a symlink to `target`."""
    remove(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    os.symlink(target, path)


def move(src: Path, dst: Path) -> None:
    """Rename `src` to `dst`, replacing what was there."""
    remove(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    os.rename(src, dst)


def apply_upper(upper: Path, tree: Path) -> None:
    """Replay an overlayfs upper dir onto `tree`: whiteouts delete, opaque dirs replace, files
    and symlinks are moved in (rename, so no hardlinked object is written). overlayfs's own
    xattrs are dropped. `upper` is consumed.
    """
    _apply_dir(upper, tree)


def _apply_dir(upper: Path, tree: Path) -> None:
    with os.scandir(upper) as entries:
        children = sorted(entries, key=lambda e: e.name)
    for entry in children:
        src = Path(entry.path)
        dst = tree / entry.name
        st = os.lstat(src)
        if stat.S_ISCHR(st.st_mode) and st.st_rdev == 0:
            remove(dst)  # whiteout
            continue
        if stat.S_ISDIR(st.st_mode):
            opaque = _get_xattr(src, "trusted.overlay.opaque") == b"y"
            if opaque or (dst.exists() and (dst.is_symlink() or not dst.is_dir())):
                remove(dst)
            if not dst.exists():
                os.mkdir(dst)
            _apply_dir(src, dst)
            _copy_dir_attributes(src, dst, st)
            continue
        remove(dst)
        os.rename(src, dst)
        _strip_overlay_xattrs(dst)


def _copy_dir_attributes(src: Path, dst: Path, st: os.stat_result) -> None:
    os.chown(dst, st.st_uid, st.st_gid)
    os.chmod(dst, stat.S_IMODE(st.st_mode))
    for name in os.listxattr(src):
        if not name.startswith(_OVERLAY_XATTR):
            os.setxattr(dst, name, os.getxattr(src, name))


def _strip_overlay_xattrs(path: Path) -> None:
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError:
        return
    for name in names:
        if name.startswith(_OVERLAY_XATTR):
            os.removexattr(path, name, follow_symlinks=False)


def _get_xattr(path: Path, name: str) -> bytes | None:
    try:
        return os.getxattr(path, name, follow_symlinks=False)
    except OSError:
        return None


def stats(tree: Path) -> tuple[int, int]:
    """(number of entries, total bytes of regular files) under `tree`."""
    count = 0
    size = 0
    for root, dirs, files in os.walk(tree):
        count += len(dirs) + len(files)
        for name in files:
            st = os.lstat(os.path.join(root, name))
            if stat.S_ISREG(st.st_mode):
                size += st.st_size
    return count, size
