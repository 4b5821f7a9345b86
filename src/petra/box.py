"""Boxes: persistent Debian app containers beside the read-only system (toolbox, distrobox).

A box is a plain Debian root made from real packages (compose's package-tree cache: mmdebstrap
when cold, apt on a cached tree when warm), copied out of the cache so that no box shares a
writable file with the cache or with another box. Boxes live under the system's /var
(`var/lib/petra/boxes/NAME`; the stateroot's /var of a --sysroot), so OS upgrades and rollbacks
keep them. Commands run in bubblewrap: the box's root at /, own mount, pid, ipc and uts
namespaces, the caller's uid and gid, the caller's home shared read-write, the host's network
unless the box was made without it. Nothing of the host's file system but the home, the
resolver's configuration and the X11 socket directory is visible.

    boxes/NAME/box.json   what it is (suite, packages, network, created, the cache's tree)
    boxes/NAME/root/      the box's root
    boxes/NAME/lock       kept open by every command running in the box (rm needs it closed)
    boxes/NAME/used       its mtime: when the box was last used

A box appears under its name only when it is complete: `create` builds it in
`boxes/.new-NAME-PID` and renames it last; `rm` renames it to `.rm-NAME-PID` first. Leftovers
of a killed create or rm are removed by the next create or rm.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import pwd
import re
import shlex
import signal
import subprocess
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from petra import locks, tree
from petra.errors import LockedError, PetraError, UsageError
from petra.sandbox import DEFAULT_PATH, Bind, Sandbox

if TYPE_CHECKING:  # run and enter start fast: no ostree bindings, no compose machinery
    from petra.archive import ArchiveFailure
    from petra.reporting import Reporter
    from petra.spec import Spec

SYSTEM_BOXES = Path("/var/lib/petra/boxes")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
MAX_NAME = 64
# What root keeps inside a box: enough for apt and dpkg (owners, modes, file capabilities,
# apt's drop to _apt) and for daemons, not enough to reach the host (no mknod, mount, ptrace).
ROOT_CAPABILITIES = (
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_SETFCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_AUDIT_WRITE",
)
# Passed from the caller's environment into a box (a terminal, a desktop session).
PASSED_ENV = ("TERM", "COLORTERM", "LANG", "DISPLAY", "WAYLAND_DISPLAY", "XDG_RUNTIME_DIR")


def check_name(name: str) -> None:
    """UsageError unless `name` can name a box (and a directory): letters, digits, '.', '_',
    '-', starting with a letter or digit, at most 64 characters."""
    if len(name) > MAX_NAME:
        raise UsageError(
            f"box name '{name[:20]}...' is {len(name)} characters long",
            f"use at most {MAX_NAME}",
        )
    if not _NAME.match(name) or ".." in name:
        raise UsageError(
            f"'{name}' is not a box name",
            "use letters, digits, '.', '_' and '-' (no '/', '..' or spaces)",
        )


@dataclass
class Box:
    """One box on disk."""

    path: Path
    name: str
    suite: str
    architecture: str
    mirror: str
    packages: tuple[str, ...]
    network: bool
    created: float
    tree: str = ""  # the compose cache's package tree (a commit) the root was copied from

    @property
    def root(self) -> Path:
        return self.path / "root"

    @property
    def used(self) -> float:
        """When a command last ran in the box (its creation, if none has)."""
        try:
            return (self.path / "used").stat().st_mtime
        except FileNotFoundError:
            return self.created

    def size(self) -> int:
        """Bytes the box's files take on disk."""
        out = subprocess.run(
            ["du", "-s", "-B1", "--one-file-system", str(self.root)],
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        ).stdout
        return int(out.split()[0]) if out.split() else 0

    def to_json(self) -> dict[str, object]:
        return {
            "name": self.name,
            "suite": self.suite,
            "architecture": self.architecture,
            "mirror": self.mirror,
            "packages": list(self.packages),
            "network": self.network,
            "created": self.created,
            "tree": self.tree,
        }

    def save(self) -> None:
        """Write box.json atomically."""
        tmp = self.path / "box.json.tmp"
        tmp.write_text(json.dumps(self.to_json(), indent=2) + "\n")
        os.replace(tmp, self.path / "box.json")

    @classmethod
    def load(cls, path: Path) -> Box:
        data = json.loads((path / "box.json").read_text())
        return cls(
            path=path,
            name=str(data["name"]),
            suite=str(data["suite"]),
            architecture=str(data["architecture"]),
            mirror=str(data["mirror"]),
            packages=tuple(data.get("packages", ())),
            network=bool(data.get("network", True)),
            created=float(data.get("created", 0)),
            tree=str(data.get("tree", "")),
        )


class Boxes:
    """The boxes of one system: a directory under its /var."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def list(self) -> list[Box]:
        """Every complete box, by name (half-made or half-removed ones are not listed)."""
        if not self.path.is_dir():
            return []
        found = []
        for entry in sorted(self.path.iterdir()):
            if entry.name.startswith(".") or not (entry / "box.json").is_file():
                continue
            found.append(Box.load(entry))
        return found

    def get(self, name: str) -> Box:
        """The box `name`. UsageError if there is none."""
        check_name(name)
        path = self.path / name
        if not (path / "box.json").is_file():
            names = ", ".join(b.name for b in self.list()) or "none yet"
            raise UsageError(
                f"no box named {name}",
                f"boxes: {names}; make one with: petra box create {name}",
            )
        return Box.load(path)

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the lock that orders create and rm (a box is made or removed by one at a time);
        leftovers of killed creates and removes are cleaned under it."""
        self.path.mkdir(parents=True, exist_ok=True)
        with locks.exclusive(
            self.path / ".lock", "another petra box create or rm is running", "wait and retry"
        ):
            for stale in [*self.path.glob(".new-*"), *self.path.glob(".rm-*")]:
                tree.remove_tree(stale)
            yield


# --- running commands in a box ---------------------------------------------------------------


@dataclass(frozen=True)
class Caller:
    """Who runs a command in a box: the same uid, gid and home inside as outside."""

    uid: int
    gid: int
    name: str
    home: Path
    shell: str

    @classmethod
    def current(cls) -> Caller:
        uid, gid = os.getuid(), os.getgid()
        try:
            entry = pwd.getpwuid(uid)
            name, home, shell = entry.pw_name, entry.pw_dir, entry.pw_shell
        except KeyError:
            name, home, shell = str(uid), "/", "/bin/sh"
        return cls(uid, gid, name, Path(os.environ.get("HOME") or home), shell)


def hold(box: Box) -> int:
    """Open the box's lock file and return the fd, inheritable: the command started in the box
    keeps it open, and so the box in use, for as long as it runs (rm looks for such fds)."""
    fd = os.open(box.path / "lock", os.O_RDONLY | os.O_CREAT, 0o644)
    os.set_inheritable(fd, True)
    with contextlib.suppress(OSError):  # a caller who may not write it leaves it as it was
        os.utime(box.path / "used")
    return fd


def bwrap_argv(
    box: Box,
    command: Sequence[str],
    caller: Caller,
    *,
    network: bool,
    passwd_fd: int | None = None,
    group_fd: int | None = None,
    cwd: str | None = None,
    passed_env: Mapping[str, str] | None = None,
    direct: bool = False,
) -> list[str]:
    """The bubblewrap command line that runs `command` in `box` as `caller`. The variables of
    PASSED_ENV come from `passed_env` (default: this process's environment). `direct` execs
    the command itself; else a shell does, so that a missing command exits 127."""
    binds = []
    if caller.home != Path("/") and caller.home.is_dir():
        binds.append(Bind(caller.home, str(caller.home)))
    if network:
        for name in ("resolv.conf", "hosts"):
            host = Path("/etc") / name
            if host.exists():
                binds.append(Bind(host.resolve(), f"/etc/{name}", read_only=True))
    x11 = Path("/tmp/.X11-unix")
    if x11.is_dir():
        binds.append(Bind(x11, str(x11), read_only=True))
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if caller.uid != 0 and runtime and Path(runtime).is_dir():
        binds.append(Bind(Path(runtime), runtime))
    data = []
    if passwd_fd is not None:
        data.append((passwd_fd, "/etc/passwd"))
    if group_fd is not None:
        data.append((group_fd, "/etc/group"))
    env = {
        "PATH": DEFAULT_PATH,
        "HOME": str(caller.home),
        "USER": caller.name,
        "LOGNAME": caller.name,
        "SHELL": shell_in(box, caller),
        "container": "petra-box",
        "PETRA_BOX": box.name,
    }
    passed = os.environ if passed_env is None else passed_env
    for key in PASSED_ENV:
        if passed.get(key):
            env[key] = passed[key]
    env.setdefault("LANG", "C.UTF-8")
    env.setdefault("TERM", "dumb")
    sandbox = Sandbox(
        root=box.root,
        binds=tuple(binds),
        network=network,
        capabilities=ROOT_CAPABILITIES if caller.uid == 0 else None,
        hostname=box.name,
        data=tuple(data),
        env=env,
        default_env=False,
    )
    if not direct:  # exec through a shell: a missing command says so and exits 127
        command = ["/bin/sh", "-c", 'exec "$0" "$@"', *command]
    return sandbox.argv(command, cwd=cwd or working_dir(caller))


def working_dir(caller: Caller) -> str:
    """The caller's directory if the box can see it (it is in the home), else the home."""
    try:
        here = Path.cwd()
    except OSError:
        return str(caller.home)
    if here == caller.home or caller.home in here.parents:
        return str(here)
    return str(caller.home)


def shell_in(box: Box, caller: Caller) -> str:
    """The caller's login shell if the box has it, else bash, else sh."""
    for shell in (caller.shell, "/bin/bash", "/bin/sh"):
        if shell and (box.root / shell.lstrip("/")).exists():
            return shell
    return "/bin/sh"


def identity_files(box: Box, caller: Caller) -> tuple[str | None, str | None]:
    """passwd and group contents that add the caller to the box's own, when the box does not
    know the caller's uid (or gid): shown in its place, the box's files are not changed."""
    passwd = (box.root / "etc/passwd").read_text()
    group = (box.root / "etc/group").read_text()
    uids = {ln.split(":")[2] for ln in passwd.splitlines() if ln.count(":") >= 6}
    gids = {ln.split(":")[2] for ln in group.splitlines() if ln.count(":") >= 3}
    new_passwd = new_group = None
    if str(caller.uid) not in uids:
        line = f"{caller.name}:x:{caller.uid}:{caller.gid}::{caller.home}:{shell_in(box, caller)}"
        new_passwd = passwd.rstrip("\n") + "\n" + line + "\n"
    if str(caller.gid) not in gids:
        new_group = group.rstrip("\n") + "\n" + f"{caller.name}:x:{caller.gid}:\n"
    return new_passwd, new_group


def data_fd(text: str) -> int:
    """An inheritable file descriptor to read `text` from (for bwrap's --ro-bind-data)."""
    fd = os.memfd_create("petra-box", 0)
    os.write(fd, text.encode())
    os.lseek(fd, 0, os.SEEK_SET)
    os.set_inheritable(fd, True)
    return fd


def processes_in(box: Box) -> list[int]:
    """Pids of the processes that run in the box: those whose root directory is the box's root
    (compared by inode: inside its mount namespace the path reads "/"), and those with its lock
    file open (bwrap, which started them, and what inherited it). What `rm` looks for, and
    what `rm --force` stops. Complete only for root (other users' /proc entries are hidden)."""
    try:
        root = os.stat(box.root)
        lock = os.stat(box.path / "lock")
    except FileNotFoundError:
        return []
    wanted = {(root.st_dev, root.st_ino), (lock.st_dev, lock.st_ino)}
    pids = set()
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            seen = os.stat(f"/proc/{entry.name}/root")
            if (seen.st_dev, seen.st_ino) in wanted:
                pids.add(int(entry.name))
                continue
            for fd in os.scandir(f"/proc/{entry.name}/fd"):
                with contextlib.suppress(OSError):
                    opened = os.stat(fd.path)
                    if (opened.st_dev, opened.st_ino) == (lock.st_dev, lock.st_ino):
                        pids.add(int(entry.name))
                        break
    pids.discard(os.getpid())
    return sorted(pids)


def stop_processes(box: Box, timeout: float = 30.0) -> None:
    """SIGKILL every process in the box, again until none is left (bounded by `timeout`)."""
    deadline = time.monotonic() + timeout
    while (pids := processes_in(box)) and time.monotonic() < deadline:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.1)


def in_use(box: Box) -> bool:
    """True while some process runs in the box or has its lock file open."""
    return bool(processes_in(box))


# --- what the commands do -------------------------------------------------------------------


def require_root(what: str) -> None:
    """UsageError unless running as root (boxes are made and removed by root)."""
    if os.geteuid() != 0:
        raise UsageError(f"{what} needs root", f"run it with sudo: sudo petra box {what}")


def prepare_root(root: Path, name: str) -> None:
    """What a fresh box needs beyond its packages: its name, and a hosts file that knows it."""
    (root / "etc/hostname").write_text(name + "\n")
    hosts = "127.0.0.1\tlocalhost\n127.0.1.1\t" + name + "\n::1\tlocalhost ip6-localhost\n"
    (root / "etc/hosts").write_text(hosts)
    resolv = root / "etc/resolv.conf"  # the host's is bound over it when the box has network
    with contextlib.suppress(FileNotFoundError):
        resolv.unlink()
    resolv.write_text("")


def launcher_text(
    box: Box,
    app: str,
    caller: Caller,
    petra_argv: Sequence[str],
    where: Sequence[str] = (),
    launcher: Path | None = None,
) -> str:
    """The script `export` writes to ~/.local/bin/APP for `caller`. `petra_argv` runs petra,
    `where` are the options that find the box (--sysroot).

    Its fast path starts bubblewrap itself, with the command line `petra box run` would build
    (a shell script starts in about a millisecond, Python in tens): it keeps the box's lock
    file open, marks the box used, follows the caller's directory and passes the same
    variables. It takes `petra box run` instead when anything it was made from changed: the
    box gone, the box's passwd or group newer than the launcher, a bound path missing, another
    home."""
    path = find_command(box, app) or app
    passwd, group = identity_files(box, caller)
    here = "\0here\0"  # stands for the directory chosen at run time
    argv = bwrap_argv(
        box,
        [path],
        caller,
        network=box.network,
        passwd_fd=7 if passwd else None,
        group_fd=8 if group else None,
        cwd=here,
        passed_env={},
        direct=True,
    )
    words = [shlex.quote(a) if a != here else '"$here"' for a in argv[: argv.index("--")]]
    for key in PASSED_ENV:
        words.append(f'${{{key}:+--setenv {key} "${key}"}}')
    words += ["--", shlex.quote(path), '"$@"']
    bodies = ""  # the here-documents of the fds that show passwd and group
    if passwd:
        words.append("7<<'PETRA-PASSWD'")
        bodies += passwd + "PETRA-PASSWD\n"
    if group:
        words.append("8<<'PETRA-GROUP'")
        bodies += group + "PETRA-GROUP\n"
    home = shlex.quote(str(caller.home))
    checks = [
        '[ -d "$box/root" ]',
        '[ -r "$box/lock" ]',
        f'[ "$HOME" = {home} ]',
        *(f'[ ! "$box/root/etc/{f}" -nt {shlex.quote(str(launcher))} ]' for f in
          ("passwd", "group") if launcher),
        *(f"[ -e {shlex.quote(a)} ]" for a in _bound_sources(argv)),
    ]  # fmt: skip
    call = shlex.join([*petra_argv, "box", "run", *where, box.name, "--", app])
    return (
        "#!/bin/sh\n"
        f"# Made by petra box export: runs {app} in the box {box.name} as {caller.name}.\n"
        f"# petra-box: {box.name} {app}\n"
        f"box={shlex.quote(str(box.path))}\n"
        f"if {' && '.join(checks)}; then\n"
        '    exec 9<"$box/lock"  # open while the box is in use\n'
        '    : >"$box/used" 2>/dev/null\n'
        f'    case $PWD in {home} | {home}/*) here=$PWD ;; *) here={home} ;; esac\n'
        f"    exec {' '.join(words)}\n"
        f"{bodies}"
        "fi\n"
        f'exec {call} "$@"\n'
    )


def _bound_sources(argv: Sequence[str]) -> list[str]:
    """The host paths a bwrap command line binds (each must exist when it runs)."""
    return [
        argv[i + 1]
        for i, a in enumerate(argv[: argv.index("--")])
        if a in ("--bind", "--ro-bind") and i > 1
    ]


def desktop_text(source: str, box: Box, launcher: Path) -> str:
    """A box's .desktop file, its Exec lines pointing at the launcher, its name marked."""
    lines = []
    for line in source.splitlines():
        if line.startswith("Exec="):
            rest = line[len("Exec=") :].split(" ", 1)
            line = f"Exec={launcher}" + (f" {rest[1]}" if len(rest) > 1 else "")
        elif line.startswith("TryExec="):
            continue
        elif line.startswith("Name="):
            line = f"{line} ({box.name})"
        lines.append(line)
    lines.append(f"X-Petra-Box={box.name}")
    return "\n".join(lines) + "\n"


def desktop_files_for(box: Box, app: str, path: str) -> list[Path]:
    """The box's .desktop files that start `app` (by name or by its path in the box)."""
    found = []
    for entry in sorted((box.root / "usr/share/applications").glob("*.desktop")):
        with contextlib.suppress(OSError, UnicodeDecodeError):
            for line in entry.read_text().splitlines():
                if line.startswith("Exec="):
                    first = line[len("Exec=") :].split(" ", 1)[0]
                    if first in (app, path) or Path(first).name == app:
                        found.append(entry)
                        break
    return found


def exported_files(box_name: str, app: str, home: Path) -> list[Path]:
    """The launcher and .desktop files `export` made for `app` of the box, in `home`."""
    files = []
    launcher = home / ".local/bin" / app
    with contextlib.suppress(OSError, UnicodeDecodeError):
        if f"# petra-box: {box_name} {app}\n" in launcher.read_text():
            files.append(launcher)
    apps = home / ".local/share/applications"
    for entry in sorted(apps.glob(f"petra-{box_name}-*.desktop")):
        with contextlib.suppress(OSError, UnicodeDecodeError):
            text = entry.read_text()
            if f"X-Petra-Box={box_name}\n" in text and f"Exec={launcher}" in text:
                files.append(entry)
    return files


def all_exports(box_name: str, home: Path) -> list[str]:
    """The apps of the box that have a launcher in `home`."""
    apps = []
    for entry in sorted((home / ".local/bin").glob("*")):
        with contextlib.suppress(OSError, UnicodeDecodeError):
            if entry.is_file() and f"# petra-box: {box_name} {entry.name}\n" in entry.read_text():
                apps.append(entry.name)
    return apps


def create(
    boxes: Boxes,
    name: str,
    *,
    suite: str,
    packages: Sequence[str],
    network: bool,
    mirror: str,
    architecture: str,
    cache_dir: Path,
    reporter: Reporter,
) -> tuple[Box, str]:
    """Make the box `name`; returns it and how its tree was built ("cached", "incremental",
    "cold"). UsageError for a bad or taken name, an unknown suite or package; nothing is listed
    unless the box is complete (a killed create leaves a leftover the next one removes).
    """
    from petra.archive import ArchiveFailure
    from petra.compose import package_tree_copy
    from petra.layering import check_name as check_package

    check_name(name)
    for package in packages:
        check_package(package)
    require_root(f"create {name}")
    with boxes.locked():
        final = boxes.path / name
        if final.exists():
            raise UsageError(
                f"a box named {name} exists",
                f"use it (petra box enter {name}), or remove it first (petra box rm {name})",
            )
        staging = boxes.path / f".new-{name}-{os.getpid()}"
        staging.mkdir()
        try:
            spec = box_spec(name, suite, packages, mirror, architecture)
            try:
                build, raw = package_tree_copy(
                    spec, staging / "root", cache_dir=cache_dir, reporter=reporter
                )
            except ArchiveFailure as e:
                raise _box_archive_error(e, suite, mirror) from e
            prepare_root(staging / "root", name)
            (staging / "lock").touch()
            (staging / "used").touch()
            os.chmod(staging / "used", 0o666)  # any user of the box may mark it used
            box = Box(
                staging,
                name,
                suite,
                architecture,
                mirror,
                tuple(sorted(set(packages))),
                network,
                time.time(),
                raw,
            )
            box.save()
            os.rename(staging, final)
        except BaseException:
            tree.remove_tree(staging)
            raise
    return Box.load(final), build


def box_spec(
    name: str, suite: str, packages: Sequence[str], mirror: str, architecture: str
) -> Spec:
    """The compose spec of a box's package tree: minbase plus `packages`, no kernel."""
    from petra.spec import Spec

    return Spec(
        path=Path(f"<box {name}>"),
        name=f"box-{name}",
        version="0",
        suite=suite,
        architecture=architecture,
        mirror=mirror,
        packages=tuple(sorted(set(packages))),
        exclude_packages=(),
        kernel=False,
        hostname=name,
        kernel_args=(),
        services_enable=(),
        services_disable=(),
        files=(),
        users=(),
    )


def _box_archive_error(e: ArchiveFailure, suite: str, mirror: str) -> PetraError:
    if e.key == "suite":
        return UsageError(
            f"the archive at {mirror} has no suite '{suite}'",
            "use a Debian suite such as trixie, bookworm or sid",
        )
    if e.key == "packages":
        return UsageError(e.message.removeprefix("packages: "), e.hint)
    return e


def remove(boxes: Boxes, name: str, *, force: bool, home: Path) -> None:
    """Remove the box `name` and the launchers it exported to `home`. UsageError if it is in
    use (unless `force`: its processes are killed first) or missing."""
    box = boxes.get(name)
    require_root(f"rm {name}")
    with boxes.locked():
        _stop_or_refuse(box, force)
        # Renamed, the box can no longer be started; a command that started in it before the
        # rename (after the check above) holds its lock file open and is found now.
        going = dataclasses.replace(box, path=boxes.path / f".rm-{name}-{os.getpid()}")
        os.rename(box.path, going.path)
        try:
            _stop_or_refuse(going, force)
        except PetraError:
            os.rename(going.path, box.path)
            raise
        for app in all_exports(name, home):
            for path in exported_files(name, app, home):
                path.unlink()
        tree.remove_tree(going.path)


def _stop_or_refuse(box: Box, force: bool) -> None:
    pids = processes_in(box)
    if not pids:
        return
    if not force:
        count = len(pids)
        raise UsageError(
            f"box {box.name} is in use ({count} process{'es' if count != 1 else ''})",
            f"stop them, or remove it anyway: petra box rm --force {box.name}",
        )
    stop_processes(box)
    if in_use(box):
        raise LockedError(f"box {box.name} is still in use", "retry in a moment")


def find_command(box: Box, app: str) -> str | None:
    """Where `app` is in the box's PATH, or None."""
    for directory in DEFAULT_PATH.split(":"):
        candidate = box.root / directory.lstrip("/") / app
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return f"{directory}/{app}"
    return None


def export(
    box: Box, app: str, caller: Caller, petra_argv: Sequence[str], where: Sequence[str] = ()
) -> list[Path]:
    """Write a launcher ~/.local/bin/APP that runs `app` in the box, and a .desktop file for
    each the box ships for it; returns the files. UsageError if the box has no such command or
    the launcher's path is taken by a file petra did not make."""
    if "/" in app or not app:
        raise UsageError(f"'{app}' is not a command name", "give the name, such as vim")
    path = find_command(box, app)
    if path is None:
        raise UsageError(
            f"box {box.name} has no command {app}",
            f"install it first: petra box run {box.name} -- apt-get install -y PACKAGE",
        )
    home = caller.home
    launcher = home / ".local/bin" / app
    if launcher.exists() and launcher not in exported_files(box.name, app, home):
        raise UsageError(f"{launcher} exists and petra did not make it", "move it away first")
    text = launcher_text(box, app, caller, petra_argv, where, launcher)
    made = [_write(launcher, text, 0o755)]
    for entry in desktop_files_for(box, app, path):
        target = home / ".local/share/applications" / f"petra-{box.name}-{entry.name}"
        made.append(_write(target, desktop_text(entry.read_text(), box, launcher), 0o644))
    return made


def unexport(box: Box, app: str, home: Path) -> list[Path]:
    """Remove what `export` made for `app`; returns the files. UsageError if it made none."""
    files = exported_files(box.name, app, home)
    if not files:
        exported = ", ".join(all_exports(box.name, home)) or "none"
        raise UsageError(f"{app} of box {box.name} is not exported", f"exported: {exported}")
    for path in files:
        path.unlink()
    return files


def _write(path: Path, text: str, mode: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.petra-tmp")
    tmp.write_text(text)
    os.chmod(tmp, mode)
    os.replace(tmp, path)
    return path
