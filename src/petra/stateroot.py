"""Which stateroot of a sysroot Petra manages, read from the sysroot's files alone: no ostree
bindings, so the commands that only need a path under it (petra box) start fast."""

from __future__ import annotations

import configparser
from pathlib import Path

from petra.errors import RepoError

DEFAULT_OSNAME = "petra"


def osname(sysroot: Path) -> str:
    """The stateroot Petra manages in `sysroot`: the one `petra init` recorded in the repo's
    config ([petra] osname), else the only one there is, else "petra"."""
    config = configparser.ConfigParser(interpolation=None, strict=False)
    try:
        config.read(sysroot / "ostree/repo/config")
        configured = config.get("petra", "osname", fallback="")
    except configparser.Error:
        configured = ""
    if configured:
        return configured
    deploy = sysroot / "ostree/deploy"
    names = sorted(p.name for p in deploy.iterdir() if p.is_dir()) if deploy.is_dir() else []
    return names[0] if len(names) == 1 else DEFAULT_OSNAME


def is_sysroot(path: Path) -> bool:
    """True if `path` has a sysroot's layout (ostree/repo and ostree/deploy)."""
    return (path / "ostree/repo/config").is_file() and (path / "ostree/deploy").is_dir()


def var_of(sysroot: Path) -> Path:
    """The /var of the stateroot Petra manages in `sysroot`. RepoError if it is not a sysroot."""
    path = sysroot.absolute()
    if not is_sysroot(path):
        raise RepoError(f"{path} is not a sysroot", f"make one with: petra init --sysroot {path}")
    return path / "ostree/deploy" / osname(path) / "var"
