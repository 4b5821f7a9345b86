"""The spec: a TOML file (plus the files it includes) becomes one validated, frozen `Spec`.

One settings table (`SETTINGS`) says which keys exist, their types, defaults and how included
specs merge; parsing, validation, `--json` output and the README's key list all come from it.
Every error names the file, the key and, where it can be found, the line.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from petra.errors import SpecError
from petra.health import DEFAULT_DEADLINE, MAX_DEADLINE, MIN_DEADLINE

DEFAULT_SUITE = "trixie"
FALLBACK_MIRROR = "http://deb.debian.org/debian"
ARCHITECTURES = ("amd64", "arm64", "armhf", "armel", "i386", "ppc64el", "riscv64", "s390x")

# Paths whose content a commit cannot carry: ostree makes them at deploy time, or they point
# into /var (which starts empty on every deployment).
_NOT_IN_COMMIT = (
    "/var",
    "/boot",
    "/dev",
    "/proc",
    "/sys",
    "/run",
    "/tmp",
    "/home",
    "/root",
    "/opt",
    "/srv",
    "/mnt",
    "/usr/local",
    "/sysroot",
    "/ostree",
)

_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
_PACKAGE_RE = re.compile(r"^[a-z0-9][a-z0-9+.-]+$")
_HOSTNAME_RE = re.compile(r"^[a-zA-Z0-9]([a-zA-Z0-9-]{0,61}[a-zA-Z0-9])?$")
_USER_RE = re.compile(r"^[a-z_][a-z0-9_-]{0,31}$")
_CHECK_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,39}$")
_HEALTH_KEYS = {"attempts", "deadline", "required", "wanted"}
_UNIT_RE = re.compile(r"^[A-Za-z0-9:_.@-]+\.(service|socket|timer|target|path|mount)$")


@dataclass(frozen=True)
class Location:
    """Where a value came from, for error messages."""

    path: Path
    line: int | None = None

    def __str__(self) -> str:
        return f"{self.path}:{self.line}" if self.line else str(self.path)


@dataclass(frozen=True)
class User:
    name: str
    groups: tuple[str, ...] = ()
    uid: int | None = None
    shell: str = "/bin/bash"
    password_hash: str | None = None
    ssh_authorized_keys: tuple[str, ...] = ()


@dataclass(frozen=True)
class FileEntry:
    """A file the spec puts into the tree: `destination` in the tree, `source` on the host."""

    destination: str
    source: Path
    sha256: str
    mode: int


@dataclass(frozen=True)
class HealthCheck:
    """A health check of the spec: a shell command run once a boot reached multi-user.target;
    a failing required one makes the boot bad (see petra.health)."""

    name: str
    command: str
    required: bool


@dataclass(frozen=True)
class Spec:
    path: Path
    name: str
    version: str
    suite: str
    architecture: str
    mirror: str
    packages: tuple[str, ...]
    exclude_packages: tuple[str, ...]
    kernel: bool
    hostname: str
    kernel_args: tuple[str, ...]
    services_enable: tuple[str, ...]
    services_disable: tuple[str, ...]
    files: tuple[FileEntry, ...]
    users: tuple[User, ...]
    petra: bool = False  # install this petra (a .deb of its own source): the system manages itself
    boot_attempts: int | None = None  # boots a new deployment gets on trial (None: petra's)
    boot_deadline: int | None = None  # seconds a boot on trial has for a verdict (None: petra's)
    health_checks: tuple[HealthCheck, ...] = ()
    # Where each key (and each package name) was set, for errors found after parsing.
    locations: Mapping[str, Location] = field(default_factory=dict, compare=False)

    def _health_json(self) -> dict[str, Any]:
        # Only when set, so that specs without [health] keep their digest.
        if self.boot_attempts is None and not self.health_checks and self.boot_deadline is None:
            return {}
        return {
            "health": {
                "attempts": self.boot_attempts,
                **({"deadline": self.boot_deadline} if self.boot_deadline is not None else {}),
                "required": {c.name: c.command for c in self.health_checks if c.required},
                "wanted": {c.name: c.command for c in self.health_checks if not c.required},
            }
        }

    @property
    def ref(self) -> str:
        """The ref this spec's commits go to: petra/<suite>/<architecture>/<name>."""
        return f"petra/{self.suite}/{self.architecture}/{self.name}"

    def location(self, key: str) -> Location:
        return self.locations.get(key, Location(self.path))

    def to_json(self) -> dict[str, Any]:
        """The resolved spec as plain data (what `digest` hashes; paths of spec files excluded)."""
        return {
            "name": self.name,
            "version": self.version,
            "suite": self.suite,
            "architecture": self.architecture,
            "mirror": self.mirror,
            "packages": list(self.packages),
            "exclude-packages": list(self.exclude_packages),
            "kernel": self.kernel,
            "petra": self.petra,
            "hostname": self.hostname,
            "kernel-args": list(self.kernel_args),
            "services": {
                "enable": list(self.services_enable),
                "disable": list(self.services_disable),
            },
            **self._health_json(),
            "files": {f.destination: {"sha256": f.sha256, "mode": f.mode} for f in self.files},
            "users": [
                {
                    "name": u.name,
                    "groups": list(u.groups),
                    "uid": u.uid,
                    "shell": u.shell,
                    "password-hash": u.password_hash,
                    "ssh-authorized-keys": list(u.ssh_authorized_keys),
                }
                for u in self.users
            ],
        }

    @property
    def digest(self) -> str:
        """sha256 of the resolved spec, including the content of every [files] source."""
        text = json.dumps(self.to_json(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()


# ---------------------------------------------------------------------------------------------
# The settings table


@dataclass(frozen=True)
class Setting:
    """One top-level key: its TOML type, default, how includes merge it, and its meaning."""

    kind: str  # "str", "bool", "list", "table", "tables"
    doc: str
    default: Any = None
    required: bool = False
    merge: str = "replace"  # "replace" or "append" (lists: included values first, deduplicated)
    check: Callable[[Any], str | None] | None = None


def _check_name(value: str) -> str | None:
    return None if _NAME_RE.match(value) else "must be lowercase letters, digits, '.', '_', '-'"


def _check_arch(value: str) -> str | None:
    return None if value in ARCHITECTURES else f"must be one of {', '.join(ARCHITECTURES)}"


def _check_hostname(value: str) -> str | None:
    return None if _HOSTNAME_RE.match(value) else "must be a valid host name (RFC 1123 label)"


def _check_packages(value: list[str]) -> str | None:
    bad = [p for p in value if not _PACKAGE_RE.match(p)]
    return f"{bad[0]!r} is not a valid Debian package name" if bad else None


def _check_kargs(value: list[str]) -> str | None:
    bad = [a for a in value if not a or any(c.isspace() for c in a)]
    return f"{bad[0]!r}: a kernel argument cannot be empty or contain spaces" if bad else None


def _check_mirror(value: str) -> str | None:
    ok = value.startswith(("http://", "https://", "file:/"))
    return None if ok else "must be an http://, https:// or file:/ URL"


def _check_version(value: str) -> str | None:
    return None if value and not any(c.isspace() for c in value) else "cannot contain spaces"


SETTINGS: dict[str, Setting] = {
    "name": Setting(
        "str",
        "the ref becomes petra/<suite>/<architecture>/<name>",
        required=True,
        check=_check_name,
    ),
    "version": Setting(
        "str",
        "version recorded in the commit (shown by log/status)",
        required=True,
        check=_check_version,
    ),
    "suite": Setting("str", "Debian suite", default=DEFAULT_SUITE),
    "architecture": Setting("str", "Debian architecture (default: the host's)", check=_check_arch),
    "mirror": Setting(
        "str", "Debian mirror URL (default: the one this machine's apt uses)", check=_check_mirror
    ),
    "include": Setting("list", "other specs merged first, relative to this file", default=[]),
    "packages": Setting(
        "list",
        "packages to install (plus Essential:yes and apt)",
        default=[],
        merge="append",
        check=_check_packages,
    ),
    "exclude-packages": Setting(
        "list",
        "packages that must never be installed",
        default=[],
        merge="append",
        check=_check_packages,
    ),
    "kernel": Setting(
        "bool", "install linux-image + a dracut initramfs with ostree's module", default=False
    ),
    "petra": Setting(
        "bool",
        "install petra itself (a .deb built from its source), so the system manages itself",
        default=False,
    ),
    "hostname": Setting("str", "static host name", default="petra", check=_check_hostname),
    "kernel-args": Setting(
        "list", "kernel command-line arguments", default=[], merge="append", check=_check_kargs
    ),
    "services": Setting("table", "[services] enable = [...], disable = [...]", default={}),
    "files": Setting(
        "table", '[files] "/etc/x" = "files/x" (source relative to the spec)', default={}
    ),
    "health": Setting(
        "table",
        "[health] attempts = 3 (boots on trial), deadline = 600 (seconds), [health.required] / "
        '[health.wanted] NAME = "shell command"',
        default={},
    ),
    "users": Setting(
        "tables",
        "[[users]] name, groups, uid, shell, password-hash, " "ssh-authorized-keys",
        default=[],
    ),
}

_SERVICE_KEYS = {"enable", "disable"}
_USER_KEYS = {"name", "groups", "uid", "shell", "password-hash", "ssh-authorized-keys"}


# ---------------------------------------------------------------------------------------------
# Loading


def load_spec(path: str | os.PathLike[str]) -> Spec:
    """Read, merge (includes first) and validate a spec.

    Raises SpecError naming the file, key and line for any problem; reads nothing but the spec
    files and their [files] sources.
    """
    spec_path = Path(path)
    if not spec_path.is_file():
        raise SpecError(f"{spec_path}: no such spec file", "give the path of a .toml spec")
    merged, locations = _load_merged(spec_path.resolve(), stack=())
    return _build(spec_path, merged, locations)


def _load_merged(path: Path, stack: tuple[Path, ...]) -> tuple[dict[str, Any], dict[str, Location]]:
    data, text = _read_toml(path)
    _validate_file(path, text, data)
    merged: dict[str, Any] = {}
    locations: dict[str, Location] = {}
    for inc in data.get("include", []):
        inc_path = (path.parent / inc).resolve()
        where = Location(path, _find_line(text, None, "include"))
        if inc_path in (*stack, path):
            chain = " -> ".join(p.name for p in (*stack, path, inc_path))
            raise SpecError(f"{where}: include: cycle {chain}", "remove one of the includes")
        if not inc_path.is_file():
            raise SpecError(
                f"{where}: include: {inc!r} not found", "paths are relative to the spec"
            )
        sub, sub_locations = _load_merged(inc_path, (*stack, path))
        merged = _merge(merged, sub)
        locations.update(sub_locations)
    own = {k: v for k, v in data.items() if k != "include"}
    own = _resolve_files(path, text, own)
    merged = _merge(merged, own)
    for key in own:
        locations[key] = Location(path, _find_line(text, None, key))
    for pkg in own.get("packages", []):
        locations[f"packages:{pkg}"] = Location(path, _find_value_line(text, "packages", pkg))
    return merged, locations


def _read_toml(path: Path) -> tuple[dict[str, Any], str]:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise SpecError(f"{path}: cannot read: {e}", "check the file exists and is UTF-8") from e
    try:
        return tomllib.loads(text), text
    except tomllib.TOMLDecodeError as e:
        raise SpecError(f"{path}: invalid TOML: {e}", "fix the syntax at that line") from e


_TYPE_NAMES = {
    str: "string",
    bool: "boolean",
    int: "integer",
    float: "float",
    list: "list",
    dict: "table",
}


def _type_name(value: Any) -> str:
    return _TYPE_NAMES.get(type(value), type(value).__name__)


def _validate_file(path: Path, text: str, data: dict[str, Any]) -> None:
    """Check keys and types of one spec file (before merging, so errors point at the file)."""
    for key, value in data.items():
        where = Location(path, _find_line(text, None, key))
        setting = SETTINGS.get(key)
        if setting is None:
            close = _closest(key, SETTINGS)
            hint = f"did you mean '{close}'?" if close else f"known keys: {', '.join(SETTINGS)}"
            raise SpecError(f"{where}: unknown key '{key}'", hint)
        _check_type(where, key, setting.kind, value)
        if setting.check is not None:
            problem = setting.check(value)
            if problem:
                raise SpecError(f"{where}: {key}: {problem}", f"see the '{key}' key in the README")
    for key, value in data.get("services", {}).items():
        where = Location(path, _find_line(text, "services", key))
        if key not in _SERVICE_KEYS:
            raise SpecError(f"{where}: unknown key 'services.{key}'", "use enable or disable")
        _check_type(where, f"services.{key}", "list", value)
        bad = [u for u in value if not _UNIT_RE.match(u)]
        if bad:
            raise SpecError(
                f"{where}: services.{key}: {bad[0]!r} is not a unit name",
                "write the full unit name, e.g. ssh.service",
            )
    for dest, source in data.get("files", {}).items():
        where = Location(path, _find_line(text, "files", dest))
        if not isinstance(source, str):
            raise SpecError(
                f'{where}: files."{dest}": expected a string (the source path), '
                f"got {_type_name(source)}",
                'write "/dest/path" = "source/path"',
            )
    for index, user in enumerate(data.get("users", [])):
        where = Location(path, _find_nth_table(text, "users", index))
        _validate_user(where, user)
    _validate_health(path, text, data.get("health", {}))


def _validate_health(path: Path, text: str, health: dict[str, Any]) -> None:
    for key, value in health.items():
        where = Location(path, _find_line(text, "health", key) or _find_line(text, None, key))
        if key not in _HEALTH_KEYS:
            raise SpecError(
                f"{where}: unknown key 'health.{key}'",
                "use attempts, deadline, required or wanted",
            )
        if key == "attempts":
            _check_type(where, "health.attempts", "int", value)
            if not 1 <= value <= 9:
                raise SpecError(
                    f"{where}: health.attempts: {value} is outside 1..9",
                    "give the boots a new deployment gets before the previous one returns",
                )
            continue
        if key == "deadline":
            _check_type(where, "health.deadline", "int", value)
            if not MIN_DEADLINE <= value <= MAX_DEADLINE:
                raise SpecError(
                    f"{where}: health.deadline: {value} is outside "
                    f"{MIN_DEADLINE}..{MAX_DEADLINE}",
                    "give the seconds after the kernel starts by which a boot on trial "
                    f"must be judged (default {DEFAULT_DEADLINE})",
                )
            continue
        _check_type(where, f"health.{key}", "table", value)
        for name, command in value.items():
            spot = Location(path, _find_line(text, f"health.{key}", name) or where.line)
            if not _CHECK_RE.match(name):
                raise SpecError(
                    f"{spot}: health.{key}: {name!r} is not a check name",
                    "lowercase letters, digits and '-', at most 40",
                )
            if not isinstance(command, str) or not command.strip():
                raise SpecError(
                    f"{spot}: health.{key}.{name}: expected a shell command",
                    f'write {name} = "systemctl is-active --quiet ssh"',
                )


def _validate_user(where: Location, user: dict[str, Any]) -> None:
    for key in user:
        if key not in _USER_KEYS:
            raise SpecError(
                f"{where}: unknown key 'users.{key}'",
                f"known keys: {', '.join(sorted(_USER_KEYS))}",
            )
    if "name" not in user:
        raise SpecError(f"{where}: users: missing 'name'", "every [[users]] needs a name")
    kinds = {
        "name": "str",
        "groups": "list",
        "uid": "int",
        "shell": "str",
        "password-hash": "str",
        "ssh-authorized-keys": "list",
    }
    for key, value in user.items():
        _check_type(where, f"users.{key}", kinds[key], value)
    if not _USER_RE.match(user["name"]):
        raise SpecError(
            f"{where}: users.name: {user['name']!r} is not a valid user name",
            "lowercase letters, digits, '_' and '-', at most 32",
        )
    uid = user.get("uid")
    if uid is not None and not 1000 <= uid < 60000:
        raise SpecError(
            f"{where}: users.uid: {uid} is outside 1000..59999", "system uids belong to packages"
        )


def _check_type(where: Location, key: str, kind: str, value: Any) -> None:
    ok = {
        "str": isinstance(value, str),
        "bool": isinstance(value, bool),
        "int": isinstance(value, int) and not isinstance(value, bool),
        "list": isinstance(value, list) and all(isinstance(v, str) for v in value),
        "table": isinstance(value, dict),
        "tables": isinstance(value, list) and all(isinstance(v, dict) for v in value),
    }[kind]
    if not ok:
        expected = {
            "str": "a string",
            "bool": "true or false",
            "int": "an integer",
            "list": "a list of strings",
            "table": "a table",
            "tables": "an array of tables ([[...]])",
        }[kind]
        raise SpecError(
            f"{where}: {key}: expected {expected}, got {_describe(value)}",
            f"see the '{key.split('.')[0]}' key in the README",
        )


def _describe(value: Any) -> str:
    if isinstance(value, list):
        inner = {_type_name(v) for v in value}
        return f"a list of {'/'.join(sorted(inner))}" if inner else "a list"
    return _type_name(value)


def _resolve_files(path: Path, text: str, data: dict[str, Any]) -> dict[str, Any]:
    """Turn [files] sources into checked FileEntry values (relative to this spec's folder)."""
    files = data.get("files")
    if not files:
        return data
    base = path.parent.resolve()
    entries: dict[str, FileEntry] = {}
    for dest, source in files.items():
        where = Location(path, _find_line(text, "files", dest))
        entries[dest] = _file_entry(where, base, dest, source)
    return {**data, "files": entries}


def _file_entry(where: Location, base: Path, dest: str, source: str) -> FileEntry:
    norm = os.path.normpath(dest)
    if not dest.startswith("/") or norm != dest.rstrip("/") or norm == "/" or "/../" in f"{dest}/":
        raise SpecError(
            f"{where}: files: destination {dest!r} is outside the tree",
            "use a normalised absolute path such as /etc/motd",
        )
    for prefix in _NOT_IN_COMMIT:
        if norm == prefix or norm.startswith(prefix + "/"):
            raise SpecError(
                f"{where}: files: destination {dest!r} is under {prefix}, "
                "which a commit does not carry",
                "put files under /etc or /usr; create /var content with tmpfiles.d",
            )
    src = (base / source).resolve()
    if src != base and base not in src.parents:
        raise SpecError(
            f"{where}: files: source {source!r} escapes the spec's folder {base}",
            "keep file sources inside the folder of the spec that names them",
        )
    if not src.is_file():
        raise SpecError(
            f"{where}: files: source {source!r} does not exist", f"paths are relative to {base}"
        )
    digest = hashlib.sha256(src.read_bytes()).hexdigest()
    return FileEntry(norm, src, digest, src.stat().st_mode & 0o7777)


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        setting = SETTINGS[key]
        if key not in out:
            out[key] = value
        elif setting.merge == "append":
            out[key] = list(dict.fromkeys([*out[key], *value]))
        elif key == "services":
            out[key] = {
                k: list(dict.fromkeys([*out[key].get(k, []), *value.get(k, [])]))
                for k in _SERVICE_KEYS
            }
        elif key == "files":
            out[key] = {**out[key], **value}
        elif key == "health":
            out[key] = {
                **out[key],
                **value,
                **{k: {**out[key].get(k, {}), **value[k]} for k in ("required", "wanted")
                   if k in value},
            }  # fmt: skip
        elif key == "users":
            by_name = {u["name"]: u for u in out[key]}
            by_name.update({u["name"]: u for u in value})
            out[key] = list(by_name.values())
        else:
            out[key] = value
    return out


def _build(path: Path, data: dict[str, Any], locations: dict[str, Location]) -> Spec:
    for key, setting in SETTINGS.items():
        if setting.required and key not in data:
            raise SpecError(f"{path}: missing required key '{key}'", f'add: {key} = "..."')
    services = data.get("services", {})
    both = set(services.get("enable", [])) & set(services.get("disable", []))
    if both:
        raise SpecError(
            f"{locations.get('services', Location(path))}: services: "
            f"{sorted(both)[0]} is both enabled and disabled",
            "keep it in one list",
        )
    packages = data.get("packages", [])
    excluded = set(data.get("exclude-packages", []))
    clash = [p for p in packages if p in excluded]
    if clash:
        raise SpecError(
            f"{locations.get('exclude-packages', Location(path))}: exclude-packages: "
            f"{clash[0]} is also in packages",
            "remove it from one of the two lists",
        )
    users = tuple(
        User(
            name=u["name"],
            groups=tuple(u.get("groups", [])),
            uid=u.get("uid"),
            shell=u.get("shell", "/bin/bash"),
            password_hash=u.get("password-hash"),
            ssh_authorized_keys=tuple(u.get("ssh-authorized-keys", [])),
        )
        for u in data.get("users", [])
    )
    files = tuple(sorted(data.get("files", {}).values(), key=lambda f: f.destination))
    health = data.get("health", {})
    checks = tuple(
        HealthCheck(name, command, kind == "required")
        for kind in ("required", "wanted")
        for name, command in sorted(health.get(kind, {}).items())
    )
    both_kinds = set(health.get("required", {})) & set(health.get("wanted", {}))
    if both_kinds:
        raise SpecError(
            f"{locations.get('health', Location(path))}: health: {sorted(both_kinds)[0]} is "
            "both required and wanted",
            "keep it in one table",
        )
    if (checks or "attempts" in health or "deadline" in health) and not data.get("petra", False):
        raise SpecError(
            f"{locations.get('health', Location(path))}: health: needs petra = true",
            "the booted system's petra runs the checks and ends a trial",
        )
    return Spec(
        path=path,
        name=data["name"],
        version=data["version"],
        suite=data.get("suite", DEFAULT_SUITE),
        architecture=data.get("architecture") or host_architecture(),
        mirror=(data.get("mirror") or default_mirror()).rstrip("/"),
        packages=tuple(sorted(set(packages))),
        exclude_packages=tuple(sorted(excluded)),
        kernel=data.get("kernel", False),
        petra=data.get("petra", False),
        hostname=data.get("hostname", "petra"),
        kernel_args=tuple(data.get("kernel-args", [])),
        services_enable=tuple(services.get("enable", [])),
        services_disable=tuple(services.get("disable", [])),
        files=files,
        users=users,
        boot_attempts=health.get("attempts"),
        boot_deadline=health.get("deadline"),
        health_checks=checks,
        locations=locations,
    )


# ---------------------------------------------------------------------------------------------
# Host defaults


def host_architecture() -> str:
    """The host's dpkg architecture (amd64 when dpkg cannot say)."""
    try:
        out = subprocess.run(
            ["dpkg", "--print-architecture"], capture_output=True, text=True, check=True
        )
        return out.stdout.strip() or "amd64"
    except (OSError, subprocess.CalledProcessError):
        return "amd64"


def default_mirror(etc_apt: Path = Path("/etc/apt")) -> str:
    """The Debian mirror this machine's apt uses (its first non-security `debian` URI)."""
    candidates: list[str] = []
    sources = [etc_apt / "sources.list", *sorted((etc_apt / "sources.list.d").glob("*"))]
    for source in sources:
        try:
            text = source.read_text()
        except OSError:
            continue
        if source.suffix == ".sources":
            candidates += re.findall(r"^URIs:\s*(\S+)", text, flags=re.MULTILINE)
        else:
            candidates += re.findall(r"^deb\s+(?:\[[^\]]*\]\s+)?(\S+)", text, flags=re.MULTILINE)
    for uri in candidates:
        if uri.rstrip("/").endswith("/debian"):
            return uri.rstrip("/")
    return FALLBACK_MIRROR


# ---------------------------------------------------------------------------------------------
# Finding lines for messages (tomllib keeps no positions)


def _find_line(text: str, table: str | None, key: str) -> int | None:
    current: str | None = None
    key_re = re.compile(rf"""^\s*("{re.escape(key)}"|'{re.escape(key)}'|{re.escape(key)})\s*=""")
    for number, line in enumerate(text.splitlines(), 1):
        header = re.match(r"^\s*\[\[?\s*([^\]]+?)\s*\]\]?", line)
        if header:
            current = header.group(1)
            if table is None and current == key:
                return number
            continue
        if current == table and key_re.match(line):
            return number
    return None


def _find_value_line(text: str, key: str, value: str) -> int | None:
    start = _find_line(text, None, key)
    if start is None:
        return None
    for number, line in enumerate(text.splitlines()[start - 1 :], start):
        if f'"{value}"' in line or f"'{value}'" in line:
            return number
    return start


def _find_nth_table(text: str, name: str, index: int) -> int | None:
    seen = -1
    for number, line in enumerate(text.splitlines(), 1):
        if re.match(rf"^\s*\[\[\s*{re.escape(name)}\s*\]\]", line):
            seen += 1
            if seen == index:
                return number
    return _find_line(text, None, name)


def _closest(word: str, choices: Mapping[str, object]) -> str | None:
    import difflib

    match = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    return match[0] if match else None
