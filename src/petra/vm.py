"""petra vm run: boot a disk image in qemu, interactively or to run one command.

A command reaches the booted system without changing the image: qemu hands systemd credentials
through SMBIOS (type 11 strings). One credential adds a service that runs the command after
multi-user.target, with its output on the second serial port; its ExecStopPost writes a closing
line with the exit status (and a random mark, so output cannot fake it) and the service powers
the machine off. The first serial port is the console. A VM that does not report within the
timeout is stopped and that is an error, never a hang.

A shared folder is a read-only 9p export that a second credential mounts at SHARE_MOUNT, which
is where the images `petra image build` makes look for updates.
"""

from __future__ import annotations

import base64
import contextlib
import ctypes
import json
import os
import re
import secrets
import shlex
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from petra.errors import ToolError, UsageError
from petra.reporting import Reporter

QEMU = "qemu-system-x86_64"
SHARE_MOUNT = "/run/petra/share"
SHARE_TAG = "petra-share"
DEFAULT_TIMEOUT = 900
# After the command's result, how long a clean power-off may take before qemu is stopped.
POWEROFF_GRACE = 60
# --accel auto: how long a KVM boot may take to show kernel output before TCG is used instead.
KVM_PROBE_SECONDS = 25
ACCEL_CACHE = Path("/var/cache/petra/accel.json")
_PR_SET_PDEATHSIG = 1
_KERNEL_OUTPUT = re.compile(rb"\[\s*\d+\.\d{6}\]|Linux version")
# Boot milestones as the console shows them (seen from the host, so times are qemu-relative).
# systemd greets ("Welcome to") only once, on the real root, after the switch from the initramfs.
MILESTONES = (
    ("kernel", re.compile(rb"Linux version")),
    ("initramfs", re.compile(rb"Run /init as init process")),
    ("switch-root", re.compile(rb"Welcome to ")),
    ("multi-user", re.compile(rb"Reached target .{0,20}multi-user\.target")),
)

RUN_UNIT = """[Unit]
Description=The command of petra vm run
After=multi-user.target petra-health.service{after}
SuccessAction=poweroff-force
FailureAction=poweroff-force

[Service]
Type=oneshot
TimeoutStartSec=infinity
ImportCredential=petra.command
Environment=HOME=/root TERM=dumb
StandardInput=null
StandardOutput=file:/dev/ttyS1
StandardError=inherit
ExecStart=/bin/sh -c 'exec /bin/sh "$${{CREDENTIALS_DIRECTORY}}/petra.command"'
ExecStopPost=/bin/sh -c 'sync; echo "{mark} $${{EXIT_STATUS:-none}} $$SERVICE_RESULT" >/dev/ttyS1'
"""

SHARE_UNIT = f"""[Unit]
Description=The folder shared by petra vm run --share

[Mount]
What={SHARE_TAG}
Where={SHARE_MOUNT}
Type=9p
Options=trans=virtio,version=9p2000.L,msize=524288,ro
"""


@dataclass(frozen=True)
class Machine:
    """What to boot and with what: the qemu settings `vm run` takes."""

    image: Path
    share: Path | None = None
    memory: int = 2048
    cpus: int = 2
    accel: str = "auto"  # auto, kvm or tcg
    console: Path | None = None  # also write the serial console here


@dataclass(frozen=True)
class CommandResult:
    exit_code: int
    output: str
    accel: str
    result_seconds: float  # qemu start to the command's result
    exit_seconds: float  # qemu start to qemu's exit
    milestones: dict[str, float]  # boot milestone (MILESTONES) -> seconds after qemu start
    boots: int = 1  # kernels started: more than one when the guest rebooted


# --- pure parts (unit-tested) ----------------------------------------------------------------


def credential(name: str, value: str) -> str:
    """A `-smbios` argument carrying systemd credential `name` (commas doubled for qemu)."""
    payload = f"io.systemd.credential:{name}={value}".replace(",", ",,")
    return f"type=11,value={payload}"


def binary_credential(name: str, data: bytes) -> str:
    encoded = base64.b64encode(data).decode()
    return f"type=11,value=io.systemd.credential.binary:{name}={encoded}"


def command_script(command: Sequence[str]) -> bytes:
    """The script the guest runs: `command` from root's home, as root."""
    return f"cd /root 2>/dev/null || cd /\nexec {shlex.join(command)}\n".encode()


def command_credentials(command: Sequence[str], mark: str, share: bool) -> list[str]:
    """The SMBIOS credentials that make the guest run `command` once and power off."""
    wants = ["petra-run.service"] + (["run-petra-share.mount"] if share else [])
    after = " run-petra-share.mount" if share else ""
    creds = [
        credential("systemd.extra-unit.petra-run.service", RUN_UNIT.format(after=after, mark=mark)),
        credential("systemd.unit-dropin.multi-user.target", f"[Unit]\nWants={' '.join(wants)}\n"),
        binary_credential("petra.command", command_script(command)),
    ]
    if share:
        creds.append(credential("systemd.extra-unit.run-petra-share.mount", SHARE_UNIT))
    return creds


def share_credentials() -> list[str]:
    """For an interactive boot: only the shared folder's mount."""
    return [
        credential("systemd.extra-unit.run-petra-share.mount", SHARE_UNIT),
        credential(
            "systemd.unit-dropin.multi-user.target", "[Unit]\nWants=run-petra-share.mount\n"
        ),
    ]


def image_format(path: Path) -> str:
    """'qcow2' or 'raw', from the file's first bytes."""
    with open(path, "rb") as f:
        return "qcow2" if f.read(4) == b"QFI\xfb" else "raw"


def qemu_argv(machine: Machine, accel: str, fmt: str, serials: Sequence[str]) -> list[str]:
    """qemu's command line, without credentials: no network, the disk on virtio.

    -nodefaults: no floppy, CD-ROM, VGA or parallel port for the firmware and the kernel to probe
    and udev to process (each costs seconds under TCG); the serial ports are given explicitly.
    """
    argv = [QEMU, "-accel", accel, "-m", str(machine.memory), "-smp", str(machine.cpus)]
    argv += ["-drive", f"file={machine.image},format={fmt},if=virtio", "-nic", "none"]
    argv += ["-display", "none", "-nodefaults"]
    for serial in serials:
        argv += ["-serial", serial]
    if machine.share is not None:
        share = str(machine.share.absolute()).replace(",", ",,")
        argv += [
            "-virtfs",
            f"local,path={share},mount_tag={SHARE_TAG},security_model=none,readonly=on",
        ]
    return argv


def parse_result(data: bytes, mark: str) -> tuple[str, int | None]:
    """Split the result port's bytes into (command output, exit code); None: no result yet.

    The closing line is `mark status result`; a status that is a signal name gives 128 + 1.
    """
    text = data.decode(errors="replace").replace("\r\n", "\n")
    index = text.rfind(mark + " ")
    if index < 0 or "\n" not in text[index:]:
        return text, None
    output = text[:index]
    status = text[index + len(mark) + 1 :].split("\n", 1)[0].split()
    if status and status[0].isdigit():
        return output, int(status[0])
    return output, 129


def count_boots(console: bytes) -> int:
    """How many times a kernel started, from the console's output."""
    return len(re.findall(rb"Linux version \d", console))


# --- running ---------------------------------------------------------------------------------


def check(machine: Machine) -> None:
    """Raise UsageError for a missing image or share, or impossible settings."""
    if not machine.image.is_file():
        raise UsageError(
            f"no image at {machine.image}",
            "build one with: petra image build --repo REPO REF -o IMAGE",
        )
    if machine.share is not None and not machine.share.is_dir():
        raise UsageError(f"--share {machine.share} is not a directory", "share a folder")
    if machine.memory < 256:
        raise UsageError(f"--memory {machine.memory} MiB is too little", "give at least 512")
    if machine.cpus < 1:
        raise UsageError(f"--cpus {machine.cpus}", "give at least 1")


def run_command(
    machine: Machine,
    command: Sequence[str],
    reporter: Reporter,
    *,
    timeout: int = DEFAULT_TIMEOUT,
    output: TextIO | None = None,
) -> CommandResult:
    """Boot `machine.image`, run `command` as root once the system is up, power off.

    The command's output is written to `output` as it arrives. Returns its exit code. Raises
    UsageError for bad input, ToolError if qemu fails or the VM does not report within
    `timeout` seconds (qemu is stopped then; the console log is kept and named).
    """
    check(machine)
    if timeout < 1:
        raise UsageError(f"--timeout {timeout}", "give the VM at least a few seconds")
    accel = choose_accel(machine, reporter)
    mark = f"petra-vm-exit-{secrets.token_hex(8)}"
    with tempfile.TemporaryDirectory(prefix="petra-vm-") as scratch:
        results = Path(scratch) / "results"
        console = machine.console or Path(scratch) / "console"
        argv = qemu_argv(
            machine, accel, image_format(machine.image), [f"file:{console}", f"file:{results}"]
        )
        # A reboot by the guest (a bad boot of a deployment on trial, a kernel panic) is
        # followed, as on a real machine: the command runs on the first boot judged good.
        for cred in command_credentials(command, mark, machine.share is not None):
            argv += ["-smbios", cred]
        reporter.step("vm", f"boot {machine.image.name} ({accel}), then: {shlex.join(command)}")
        start = time.monotonic()
        milestones: dict[str, float] = {}
        with _qemu(argv, Path(scratch) / "qemu.log") as qemu:
            printed, code, result_at = 0, None, 0.0
            while True:
                _note_milestones(console, milestones, time.monotonic() - start)
                data = results.read_bytes() if results.exists() else b""
                text, code = parse_result(data, mark)
                if output is not None:
                    # Print whole lines only, so a half-written closing line never shows.
                    ready = len(text) if code is not None else text.rfind("\n") + 1
                    if ready > printed:
                        output.write(text[printed:ready])
                        output.flush()
                        printed = ready
                if code is not None:
                    result_at = time.monotonic() - start
                    break
                if qemu.poll() is not None:
                    raise _failure(
                        "the VM stopped without reporting the command's result",
                        console,
                        machine.console,
                        Path(scratch) / "qemu.log",
                    )
                if time.monotonic() - start > timeout:
                    raise _failure(
                        f"the VM did not report within {timeout} s; it was stopped",
                        console,
                        machine.console,
                        Path(scratch) / "qemu.log",
                    )
                time.sleep(0.2)
            try:
                qemu.wait(POWEROFF_GRACE)
            except subprocess.TimeoutExpired:
                reporter.info(f"the VM did not power off within {POWEROFF_GRACE} s; stopped it")
        exit_at = time.monotonic() - start
        boots = max(1, count_boots(console.read_bytes() if console.exists() else b""))
        detail = f"result after {result_at:.1f} s, exit {code}"
        reporter.done("vm", exit_at, detail + (f", {boots} boots" if boots > 1 else ""))
        return CommandResult(code, text, accel, result_at, exit_at, milestones, boots)


def _note_milestones(console: Path, seen: dict[str, float], now: float) -> None:
    if len(seen) == len(MILESTONES) or not console.exists():
        return
    text = console.read_bytes()
    for name, pattern in MILESTONES:
        if name not in seen and pattern.search(text):
            seen[name] = now


def interactive(machine: Machine, reporter: Reporter) -> int:
    """Boot with the serial console on this terminal (Ctrl-A X stops qemu); returns qemu's
    exit code. Raises UsageError for bad input."""
    check(machine)
    accel = choose_accel(machine, reporter)
    argv = qemu_argv(machine, accel, image_format(machine.image), ["mon:stdio"])
    if machine.share is not None:
        for cred in share_credentials():
            argv += ["-smbios", cred]
    reporter.step("vm", f"boot {machine.image.name} ({accel}); Ctrl-A X stops it")
    try:
        return subprocess.call(argv)
    except FileNotFoundError as e:
        raise ToolError(f"{QEMU}: command not found", "run 'make setup'") from e


# --- acceleration ----------------------------------------------------------------------------


def choose_accel(machine: Machine, reporter: Reporter) -> str:
    """The accelerator to use. `auto` takes KVM only if a short KVM boot of the image shows
    kernel output (on some hosts /dev/kvm exists but guests hang); the probe's answer is kept
    for the host's current boot. Raises UsageError for `kvm` without /dev/kvm."""
    kvm_usable = os.access("/dev/kvm", os.R_OK | os.W_OK)
    if machine.accel == "tcg":
        return "tcg"
    if machine.accel == "kvm":
        if not kvm_usable:
            raise UsageError("--accel kvm: /dev/kvm is not usable here", "use --accel tcg")
        return "kvm"
    if not kvm_usable:
        reporter.info("accel: tcg (no usable /dev/kvm)")
        return "tcg"
    key = _host_key()
    cached = _read_accel_cache(key)
    if cached:
        reporter.info(f"accel: {cached} (probed earlier since this host booted)")
        return cached
    reporter.info(f"accel: probing kvm (up to {KVM_PROBE_SECONDS} s)")
    accel = "kvm" if _kvm_boots(machine) else "tcg"
    why = "a kvm boot shows kernel output" if accel == "kvm" else "a kvm boot hung; using tcg"
    reporter.info(f"accel: {accel} ({why})")
    _write_accel_cache(key, accel)
    return accel


def _kvm_boots(machine: Machine) -> bool:
    with tempfile.TemporaryDirectory(prefix="petra-kvm-probe-") as scratch:
        console = Path(scratch) / "console"
        argv = qemu_argv(machine, "kvm", image_format(machine.image), [f"file:{console}"])
        argv += ["-snapshot", "-no-reboot"]
        with _qemu(argv, Path(scratch) / "qemu.log") as qemu:
            deadline = time.monotonic() + KVM_PROBE_SECONDS
            while time.monotonic() < deadline and qemu.poll() is None:
                if console.exists() and _KERNEL_OUTPUT.search(console.read_bytes()):
                    return True
                time.sleep(0.2)
    return False


def _host_key() -> str:
    boot_id = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    return f"{boot_id} {os.uname().release}"


def _read_accel_cache(key: str) -> str | None:
    with contextlib.suppress(OSError, ValueError):
        data = json.loads(ACCEL_CACHE.read_text())
        if data.get("host") == key and data.get("accel") in ("kvm", "tcg"):
            return str(data["accel"])
    return None


def _write_accel_cache(key: str, accel: str) -> None:
    with contextlib.suppress(OSError):
        ACCEL_CACHE.parent.mkdir(parents=True, exist_ok=True)
        partial = ACCEL_CACHE.with_suffix(".partial")
        partial.write_text(json.dumps({"host": key, "accel": accel}) + "\n")
        partial.rename(ACCEL_CACHE)


# --- qemu processes --------------------------------------------------------------------------


@contextlib.contextmanager
def _qemu(argv: list[str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """Start qemu (its own messages to `log`); it is always stopped when the block ends."""
    with open(log, "wb") as log_file:
        try:
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                preexec_fn=_own_session_dying_with_petra,
            )
        except FileNotFoundError as e:
            raise ToolError(f"{QEMU}: command not found", "run 'make setup'") from e
    try:
        time.sleep(0.3)
        if proc.poll() not in (None, 0):
            message = log.read_text(errors="replace").strip().splitlines() or ["(no output)"]
            raise ToolError(f"qemu failed to start: {message[-1]}", shlex.join(argv[:6]) + " ...")
        yield proc
    finally:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def _own_session_dying_with_petra() -> None:
    # Its own session (a Ctrl-C for petra is not one for qemu), and killed by the kernel if
    # petra dies, so no VM outlives the command that started it.
    os.setsid()
    ctypes.CDLL(None).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def _failure(message: str, console: Path, kept: Path | None, qemu_log: Path) -> ToolError:
    """A ToolError naming the last console line; the console log is kept for the user."""
    where = kept
    if where is None and console.exists():
        fd, name = tempfile.mkstemp(prefix="petra-vm-", suffix=".console")
        os.close(fd)
        where = Path(name)
        where.write_bytes(console.read_bytes())
    lines = console.read_text(errors="replace").strip().splitlines() if console.exists() else []
    qemu_lines = qemu_log.read_text(errors="replace").strip().splitlines()
    last = (lines or qemu_lines or ["(no console output)"])[-1].strip()
    return ToolError(f"{message}; last console line: {last}", f"the console log is {where}")
