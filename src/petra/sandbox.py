"""The one place that builds bubblewrap command lines.

A sandbox runs a command with a directory as its root: own pid, ipc, uts and network
namespaces (no network unless asked), fresh /proc, /dev, /run and /tmp.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


@dataclass(frozen=True)
class Bind:
    source: Path
    target: str
    read_only: bool = False


@dataclass(frozen=True)
class Sandbox:
    """How to run commands inside `root`. `privileged` keeps root's capabilities (for dpkg);
    `host_devices` shows the host's /dev and (read-only) /sys, for tools that work on a disk."""

    root: Path
    binds: tuple[Bind, ...] = ()
    network: bool = False
    privileged: bool = False
    read_only_root: bool = False
    read_only_usr: bool = False
    host_devices: bool = False
    tmpfs: tuple[str, ...] = ()  # more empty tmpfs mounts (besides /run and /tmp)
    env: Mapping[str, str] = field(default_factory=dict)
    # Only these capabilities (for root; None: all with `privileged`, else bwrap's default).
    capabilities: tuple[str, ...] | None = None
    hostname: str | None = None
    data: tuple[tuple[int, str], ...] = ()  # (fd, path): a read-only file with the fd's content
    # The variables set when `env` does not (PATH, HOME, LC_ALL, TERM); False: only `env`.
    default_env: bool = True

    def argv(self, command: Sequence[str], cwd: str = "/") -> list[str]:
        """The full bwrap argv that runs `command` in this sandbox."""
        args = ["bwrap", "--ro-bind" if self.read_only_root else "--bind", str(self.root), "/"]
        if self.read_only_usr:
            args += ["--ro-bind", str(self.root / "usr"), "/usr"]
        if self.host_devices:
            args += ["--dev-bind", "/dev", "/dev", "--ro-bind", "/sys", "/sys"]
        else:
            args += ["--dev", "/dev"]
        args += [
            "--proc",
            "/proc",
            "--tmpfs",
            "/run",
            "--perms",
            "1777",
            "--tmpfs",
            "/tmp",
        ]
        for path in self.tmpfs:
            args += ["--tmpfs", path]
        for bind in self.binds:
            args += ["--ro-bind" if bind.read_only else "--bind", str(bind.source), bind.target]
        for fd, target in self.data:
            args += ["--ro-bind-data", str(fd), target]
        args += ["--unshare-pid", "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try"]
        if self.hostname:
            args += ["--hostname", self.hostname]
        if not self.network:
            args.append("--unshare-net")
        args += ["--die-with-parent", "--chdir", cwd, "--clearenv"]
        if self.capabilities is not None:
            args += ["--cap-drop", "ALL"]
            for cap in self.capabilities:
                args += ["--cap-add", cap]
        elif self.privileged:
            args += ["--cap-add", "ALL"]
        defaults = {"PATH": DEFAULT_PATH, "HOME": "/root", "LC_ALL": "C.UTF-8", "TERM": "dumb"}
        env = {**(defaults if self.default_env else {}), **self.env}
        for key, value in sorted(env.items()):
            args += ["--setenv", key, value]
        return [*args, "--", *command]
