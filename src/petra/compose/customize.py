"""Apply what the spec asks for beyond packages: files, host name, users, services, health
checks.

Runs on a writable overlay view of the package tree (tools like useradd and systemctl run inside
it through bubblewrap), so nothing shared with the cache is written.
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path

from petra import health
from petra.errors import SpecError, ToolError
from petra.reporting import Reporter
from petra.run import run
from petra.sandbox import Bind, Sandbox
from petra.spec import Spec

HOSTS = """127.0.0.1\tlocalhost
127.0.1.1\t{hostname}
::1\tlocalhost ip6-localhost ip6-loopback
ff02::1\tip6-allnodes
ff02::2\tip6-allrouters
"""
SSHD_KEYS_DROPIN = """# Petra: keys from the spec live in /etc (homes start empty on a new machine).
AuthorizedKeysFile .ssh/authorized_keys /etc/ssh/authorized_keys.d/%u
"""


def apply_spec(
    spec: Spec, root: Path, epoch: int, reporter: Reporter, local_debs: Sequence[Path] = ()
) -> list[str]:
    """Install `local_debs` (their dependencies are in the tree already), then apply the spec
    to the tree at `root`; returns tmpfiles.d lines the result needs (home directories under
    /var). Raises SpecError for a unit or group that does not exist, ToolError if dpkg fails.
    """
    _install_local(root, local_debs, epoch, reporter)
    _write(root / "etc/hostname", f"{spec.hostname}\n")
    _write(root / "etc/hosts", HOSTS.format(hostname=spec.hostname))
    # mmdebstrap copies the build host's resolv.conf; a commit must not depend on the host.
    _write(root / "etc/resolv.conf", "")
    for entry in spec.files:
        dest = root / entry.destination.lstrip("/")
        if dest.is_dir() and not dest.is_symlink():
            raise SpecError(
                f"{spec.location('files')}: files: {entry.destination} is a directory "
                "in the tree",
                "name a file path",
            )
        dest.parent.mkdir(parents=True, exist_ok=True)
        if dest.exists() or dest.is_symlink():
            dest.unlink()
        shutil.copyfile(entry.source, dest)
        dest.chmod(entry.mode)
    _add_health_checks(spec, root)
    sandbox = Sandbox(root=root, privileged=True, env={"SOURCE_DATE_EPOCH": str(epoch)})
    tmpfiles = _add_users(spec, root, sandbox)
    _set_services(spec, sandbox)
    return tmpfiles


def _install_local(root: Path, debs: Sequence[Path], epoch: int, reporter: Reporter) -> None:
    if not debs:
        return
    binds = tuple(Bind(deb, f"/tmp/petra-local/{deb.name}", read_only=True) for deb in debs)
    env = {"SOURCE_DATE_EPOCH": str(epoch), "DEBIAN_FRONTEND": "noninteractive"}
    sandbox = Sandbox(root=root, binds=binds, privileged=True, env=env)
    argv = ["dpkg", "--force-unsafe-io", "-i", *(b.target for b in binds)]
    run(sandbox.argv(argv), reporter=reporter, hint="the command above shows dpkg's error")


def _add_users(spec: Spec, root: Path, sandbox: Sandbox) -> list[str]:
    lines = []
    for user in spec.users:
        argv = [
            "useradd",
            "--no-create-home",
            "--home-dir",
            f"/home/{user.name}",
            "--shell",
            user.shell,
            "--user-group",
        ]
        if user.uid is not None:
            argv += ["--uid", str(user.uid)]
        if user.groups:
            argv += ["--groups", ",".join(user.groups)]
        if user.password_hash:
            argv += ["--password", user.password_hash]
        try:
            run(sandbox.argv([*argv, user.name]))
        except ToolError as e:
            raise SpecError(
                f"{spec.location('users')}: users: cannot add {user.name}: {e.message}",
                "check its groups exist in the tree and its uid is free",
            ) from e
        lines.append(f"d /var/home/{user.name} 0700 {user.name} {user.name} -")
        if user.ssh_authorized_keys:
            keys = root / "etc/ssh/authorized_keys.d" / user.name
            _write(keys, "".join(f"{k}\n" for k in user.ssh_authorized_keys))
            _write(root / "etc/ssh/sshd_config.d/50-petra-authorized-keys.conf", SSHD_KEYS_DROPIN)
    return lines


def _add_health_checks(spec: Spec, root: Path) -> None:
    """Each [health] check as a script and a oneshot unit, wanted by its health target; the
    deadline as a drop-in of the deadline timer."""
    units = root / "usr/lib/systemd/system"
    if spec.boot_deadline is not None:
        dropin = units / f"{health.DEADLINE_TIMER}.d/50-spec.conf"
        _write(dropin, health.deadline_dropin(spec.boot_deadline))
    for check in spec.health_checks:
        kind = "required" if check.required else "wanted"
        script = f"{health.CHECKS_DIR}/{check.name}"
        _write(root / script.lstrip("/"), health.check_script(check.command))
        (root / script.lstrip("/")).chmod(0o755)
        unit = f"petra-check-{check.name}.service"
        text = health.CHECK_UNIT.format(name=check.name, kind=kind, script=script)
        _write(units / unit, text)
        target = health.REQUIRED_TARGET if check.required else health.WANTED_TARGET
        link = units / f"{target}.wants" / unit
        link.parent.mkdir(parents=True, exist_ok=True)
        link.unlink(missing_ok=True)
        link.symlink_to(f"../{unit}")


def _set_services(spec: Spec, sandbox: Sandbox) -> None:
    for verb, units in (("enable", spec.services_enable), ("disable", spec.services_disable)):
        for unit in units:
            try:
                run(sandbox.argv(["systemctl", verb, unit]))
            except ToolError as e:
                raise SpecError(
                    f"{spec.location('services')}: services: cannot {verb} {unit}: " f"{e.message}",
                    "is the package that ships it in packages?",
                ) from e


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists() or path.is_symlink():
        path.unlink()
    path.write_text(text)
