"""Boot assessment: a new default deployment is on trial until it boots healthy; one that
does not is replaced by the previous one, by the bootloader and then by petra.

The model (greenboot's and systemd's boot assessment, on Debian's GRUB):
- Making a deployment the default (deploy, upgrade, install, kargs, rollback) puts it on
  trial: GRUB's environment block gets `petra_trial` (the deployment) and `petra_tries` (the
  attempts left, the commit's `petra.boot-attempts`, 3 unless the spec says otherwise).
- Before its menu, GRUB (the snippet petra installs in /etc/grub.d) takes one attempt off
  for every boot of a deployment on trial; with none left it boots the second menu entry,
  the previous deployment, instead. The count lives where only GRUB writes it at boot, so a
  system that breaks before anything of its own runs is still counted.
- Once multi-user.target is reached, petra-health.service runs the health checks: the units
  wanted by petra-health-required.target and petra-health-wanted.target (a spec's [health]
  checks, units a package ships, or ones an admin adds under /etc with
  `systemctl add-wants`). All required ones passing makes the boot good: the trial ends. A
  failing required one makes it bad: what failed is recorded and the machine reboots, which
  costs an attempt. Wanted ones only warn.
- A boot on trial with no verdict by its deadline (petra-health-deadline.timer, 600 s after
  the kernel started unless the spec's [health] deadline says otherwise) hung on the way:
  the timer, which outlives emergency mode, records it and reboots, which costs an attempt.
  A kernel that crashes reboots by itself (images boot with panic=10), and so does an
  initramfs that fails (rd.emergency=reboot).
- On the boot GRUB fell back, petra makes the running deployment the default again, ends the
  trial and records the automatic rollback; `petra status` shows it.

What happened is kept in the stateroot's /var/lib/petra/health.json (shared by all
deployments), written whole and renamed into place.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from petra import durable, grubenv
from petra.errors import UsageError
from petra.ostree import Deployment, Sysroot

DEFAULT_ATTEMPTS = 3
MAX_ATTEMPTS = 9  # GRUB counts down with string comparisons: one digit
TRIAL, TRIES = "petra_trial", "petra_tries"
REQUIRED_TARGET = "petra-health-required.target"
WANTED_TARGET = "petra-health-wanted.target"
SERVICE = "petra-health.service"
DEADLINE_TIMER = "petra-health-deadline.timer"
DEADLINE_SERVICE = "petra-health-deadline.service"
DEFAULT_DEADLINE = 600  # seconds after the kernel started that a boot on trial has for a verdict
MIN_DEADLINE, MAX_DEADLINE = 30, 86400
STATE = Path("lib/petra/health.json")  # under the stateroot's /var
CHECKS_DIR = "/usr/lib/petra/health"  # the scripts of a spec's checks
REBOOT = ("systemctl", "reboot")
REBOOT_NOW = ("systemctl", "reboot", "--force")  # a hung boot: no orderly stop of its units
NEVER_REPORTED = "no healthy boot reported (it crashed, hung or powered off before the checks)"

# --- what petra's package installs (see selfdeb) ----------------------------------------------

GRUB_SCRIPT_NAME = "01_petra_trial"
GRUB_SCRIPT = (
    """#!/bin/sh
# Petra: boot counting of a deployment on trial (see petra status). GRUB takes one attempt
# off each boot of the default entry while petra_trial is set; with none left it boots the
# next entry, the previous deployment. petra ends the trial once a boot is healthy.
cat <<'EOF'
if [ -s $prefix/grubenv ]; then
  load_env petra_trial petra_tries
fi
if [ -n "${petra_trial}" ]; then
  if [ "${petra_tries}" = "0" ]; then
    set default="1"
"""
    + "".join(
        f"""  elif [ "${{petra_tries}}" = "{n}" ]; then
    set petra_tries="{n - 1}"
    save_env petra_tries
"""
        for n in range(MAX_ATTEMPTS, 0, -1)
    )
    + """  else
    set default="1"
  fi
fi
EOF
"""
)

SERVICE_UNIT = """[Unit]
Description=Petra: judge this boot (health checks, boot counting)
After=multi-user.target
ConditionKernelCommandLine=ostree

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/usr/bin/petra health --boot

[Install]
WantedBy=multi-user.target
"""

# Started early and kept through emergency mode (IgnoreOnIsolate), so that a boot that never
# reaches multi-user.target still ends.
DEADLINE_TIMER_UNIT = f"""[Unit]
Description=Petra: a boot on trial with no verdict by its deadline is a failed attempt
DefaultDependencies=no
IgnoreOnIsolate=yes
Conflicts=shutdown.target
Before=shutdown.target
ConditionKernelCommandLine=ostree

[Timer]
OnBootSec={DEFAULT_DEADLINE}
AccuracySec=1s

[Install]
WantedBy=sysinit.target
"""

DEADLINE_SERVICE_UNIT = """[Unit]
Description=Petra: end a boot on trial that has no verdict by its deadline (costs an attempt)
DefaultDependencies=no
IgnoreOnIsolate=yes
Conflicts=shutdown.target
Before=shutdown.target

[Service]
Type=oneshot
ExecStart=/usr/bin/petra health --deadline
"""


def deadline_dropin(seconds: int) -> str:
    """A drop-in for the deadline timer that sets a spec's deadline (the empty assignment
    clears the packaged one)."""
    return f"[Timer]\nOnBootSec=\nOnBootSec={seconds}\n"


TARGET_UNIT = """[Unit]
Description=Petra: {kind} health checks (petra health; started by petra-health.service)
"""

CHECK_UNIT = """[Unit]
Description=Petra health check {name} ({kind}, from the spec)

[Service]
Type=oneshot
TimeoutStartSec=300
ExecStart={script}
"""


def check_script(command: str) -> str:
    """The script a spec's check runs: its command, in sh, failing on the first error."""
    return f"#!/bin/sh\nset -e\n{command}\n"


# --- records --------------------------------------------------------------------------------


def ident(dep: Deployment) -> str:
    """A deployment's name in the trial and the records: its commit and serial."""
    return f"{dep.checksum}.{dep.serial}"


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


@dataclass
class Records:
    """What happened to each deployment's boots, and the automatic rollbacks."""

    deployments: dict[str, dict[str, Any]] = field(default_factory=dict)
    rollbacks: list[dict[str, Any]] = field(default_factory=list)

    @classmethod
    def load(cls, var: Path) -> Records:
        """The records under the stateroot's `var`; empty when there are none or they are
        unreadable (they are information, never a reason to fail a boot)."""
        try:
            data = json.loads((var / STATE).read_text())
            return cls(dict(data.get("deployments", {})), list(data.get("rollbacks", [])))
        except (OSError, ValueError, AttributeError):
            return cls()

    def save(self, var: Path, keep: Sequence[str] | None = None) -> None:
        """Write the records (of the deployments in `keep` only, when given) whole and rename
        them into place. OSError if /var is not writable (the old records stay)."""
        if keep is not None:
            self.deployments = {k: v for k, v in self.deployments.items() if k in keep}
        self.rollbacks = self.rollbacks[-10:]
        path = var / STATE
        path.parent.mkdir(parents=True, exist_ok=True)
        data = {"deployments": self.deployments, "rollbacks": self.rollbacks}
        durable.replace(path, json.dumps(data, indent=1, sort_keys=True).encode())

    def of(self, dep: Deployment) -> dict[str, Any]:
        return self.deployments.setdefault(ident(dep), {})


def failed_boot(record: dict[str, Any], why: str) -> None:
    """Record a failed boot of a deployment: the last failure, and each one in turn (a boot
    that crashed before anything of its own ran leaves none)."""
    at = now()
    record.update({"failed-at": at, "failed-check": why})
    attempts = [*record.get("failed-boots", []), {"at": at, "why": why}]
    record["failed-boots"] = attempts[-MAX_ATTEMPTS:]


# --- starting a trial (on the host or the device, inside Sysroot.writing) ------------------


def attempts_of(metadata: dict[str, Any]) -> int:
    """The boot attempts a commit's deployment gets on trial (its spec's [health] attempts)."""
    value = metadata.get("petra.boot-attempts")
    if isinstance(value, int) and 1 <= value <= MAX_ATTEMPTS:
        return value
    return DEFAULT_ATTEMPTS


def counts_boots(sysroot: Path) -> bool:
    """Whether the sysroot boots with GRUB, which counts boots (a sysroot made by
    `petra image build`); other sysroots have no trials."""
    return (sysroot / "boot/grub").is_dir() and (sysroot / "boot/loader").exists()


def start_trial(sysroot: Path, var: Path, dep: Deployment, version: str, attempts: int) -> None:
    """Put `dep`, about to become the default, on trial with `attempts` boots. Written before
    the deployment list, so a crash between the two leaves a trial of the old default, which
    its next healthy boot ends. Nothing is done where GRUB does not count boots."""
    if not counts_boots(sysroot):
        return
    records = Records.load(var)
    records.deployments[ident(dep)] = {"state": "trial", "since": now(), "version": version}
    records.save(var)
    grubenv.update(grubenv.path_of(sysroot), {TRIAL: ident(dep), TRIES: str(attempts)})


def end_trial(sysroot: Path) -> None:
    """No deployment on trial any more (GRUB boots the default, uncounted)."""
    path = grubenv.path_of(sysroot)
    if grubenv.read(path).get(TRIAL) is not None:
        grubenv.update(path, {TRIAL: None, TRIES: None})


# --- what status shows ------------------------------------------------------------------------


@dataclass(frozen=True)
class Health:
    """One deployment's standing: good, trial (attempts left) or failed (when, which check),
    or None when no boot of it was judged yet."""

    state: str | None
    attempts_left: int | None = None
    since: str | None = None
    failed_at: str | None = None
    failed_check: str | None = None
    warnings: tuple[str, ...] = ()
    rolled_back: dict[str, Any] | None = None  # the automatic rollback away from it
    failed_boots: tuple[dict[str, str], ...] = ()  # each recorded failed boot: at, why

    def to_json(self) -> dict[str, Any]:
        return {
            "state": self.state,
            "attempts-left": self.attempts_left,
            "since": self.since,
            "failed-at": self.failed_at,
            "failed-check": self.failed_check,
            "failed-boots": list(self.failed_boots),
            "warnings": list(self.warnings),
            "automatic-rollback": self.rolled_back,
        }


def standing(
    deployments: Sequence[Deployment], env: dict[str, str], records: Records
) -> list[Health]:
    """Each deployment's Health from GRUB's environment and the records (pure)."""
    trial, tries = env.get(TRIAL), env.get(TRIES)
    result = []
    for dep in deployments:
        record = records.deployments.get(ident(dep), {})
        rollback = next(
            (r for r in reversed(records.rollbacks) if r.get("from") == ident(dep)), None
        )
        state = record.get("state")
        left = None
        if trial is not None and trial == ident(dep) and dep.index == 0:
            state = "trial"
            left = int(tries) if tries is not None and tries.isdigit() else 0
        elif state == "trial":
            state = None  # the trial ended without a verdict recorded (e.g. a manual change)
        result.append(
            Health(
                state=state,
                attempts_left=left,
                since=record.get("since"),
                failed_at=record.get("failed-at"),
                failed_check=record.get("failed-check"),
                failed_boots=tuple(record.get("failed-boots", [])),
                warnings=tuple(record.get("warnings", [])),
                rolled_back=rollback,
            )
        )
    return result


def rollback_notice(deployments: Sequence[Deployment], records: Records) -> str | None:
    """The line status prints after an automatic rollback, while the deployment it rolled
    back to is still the default."""
    if not records.rollbacks or not deployments:
        return None
    last = records.rollbacks[-1]
    if last.get("to") != ident(deployments[0]):
        return None
    return (
        f"automatic rollback at {last.get('at')}: {last.get('from-version') or '-'} "
        f"({str(last.get('from', ''))[:12]}) did not boot healthy ({last.get('reason')}); "
        f"{last.get('to-version') or '-'} is running and the default again"
    )


# --- judging a boot (petra health --boot, on the booted system) ---------------------------


@dataclass(frozen=True)
class CheckResult:
    unit: str
    required: bool
    passed: bool
    detail: str = ""


Runner = Callable[[Sequence[str]], "subprocess.CompletedProcess[str]"]


def _systemctl(argv: Sequence[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["systemctl", *argv], capture_output=True, text=True, check=False)


def check_units(target: str, runner: Runner = _systemctl) -> list[str]:
    """The units a health target wants or requires, sorted."""
    proc = runner(["show", "--property=Wants", "--property=Requires", "--value", target])
    return sorted({u for u in proc.stdout.split() if u})


def run_checks(runner: Runner = _systemctl) -> list[CheckResult]:
    """Start every health check, one at a time, and say which passed (a check's unit fails
    when its command does)."""
    results = []
    for target, required in ((REQUIRED_TARGET, True), (WANTED_TARGET, False)):
        for unit in check_units(target, runner):
            passed = runner(["start", unit]).returncode == 0
            detail = ""
            if not passed:
                result = runner(["show", "--property=Result", "--value", unit]).stdout.strip()
                detail = f"{unit} failed ({result or 'unknown'})"
            results.append(CheckResult(unit, required, passed, detail))
    return results


@dataclass(frozen=True)
class Verdict:
    """What `petra health --boot` found and did."""

    booted: Deployment
    good: bool
    on_trial: bool  # this boot was an attempt of the deployment on trial
    checks: list[CheckResult]
    rolled_back: dict[str, Any] | None  # the automatic rollback this boot made, if any
    reboot: bool  # a failed attempt: the caller reboots, GRUB counts the next one


def judge_boot(sysroot: Sysroot, runner: Runner = _systemctl) -> Verdict:
    """Judge the running boot: after a fallback by GRUB make the running deployment the
    default again (recorded as an automatic rollback), run the health checks, record the
    verdict, end the trial of a good boot. Raises UsageError when the sysroot was not
    booted; the records and GRUB's environment change only as described."""
    deployments = sysroot.deployments()
    booted = next((d for d in deployments if d.booted), None)
    if booted is None:
        raise UsageError(
            f"{sysroot.path} is not the running system's sysroot",
            "petra health --boot judges the boot of the machine it runs on",
        )
    var = sysroot.stateroot_var(booted.osname)
    env = grubenv.read(grubenv.path_of(sysroot.path))
    records = Records.load(var)
    default = deployments[0]
    trial, tries = env.get(TRIAL), env.get(TRIES, "")
    rolled, on_trial = None, False
    if trial is not None and trial != ident(default):
        # A trial of a deployment that is not the default: a crash came between writing the
        # trial and the deployment list (its healthy default ends it), or between an
        # automatic rollback's new list and the end of the trial (GRUB then fell back to the
        # failed one again: end the trial and boot the default, the good one).
        with sysroot.writing(tidy=False):
            end_trial(sysroot.path)
        if trial == ident(booted) and tries == "0":
            return Verdict(booted, False, False, [], None, True)
    elif trial is not None and booted is default:
        on_trial = True
    elif trial is not None and (tries == "0" or not tries.isdigit()):
        # GRUB used up the attempts and booted the next entry: this one.
        rolled = _roll_back(sysroot, var, deployments, booted, records)
    # else: the next entry was picked by hand in GRUB's menu; the trial waits.

    checks = run_checks(runner)
    failed = [c for c in checks if c.required and not c.passed]
    record = records.of(booted)
    record["version"] = _version(sysroot, booted)
    record["warnings"] = [c.detail for c in checks if not c.required and not c.passed]
    if failed:
        failed_boot(record, failed[0].detail)
        if not on_trial:
            record["state"] = "failed"
    else:
        if record.get("state") != "good":
            record["since"] = now()
        record["state"] = "good"
        record.pop("failed-at", None)
        record.pop("failed-check", None)
    records.save(var, keep=[ident(d) for d in sysroot.deployments()])
    if on_trial and not failed:
        with sysroot.writing(tidy=False):
            end_trial(sysroot.path)
    return Verdict(booted, not failed, on_trial, checks, rolled, on_trial and bool(failed))


def missed_deadline(sysroot: Sysroot, uptime: float) -> Deployment | None:
    """The deadline of the running boot has come (petra-health-deadline.service): when it is
    an attempt of the deployment on trial, which no verdict ended, record that and return it;
    the caller reboots, which costs the attempt. None (nothing changed) otherwise: a good
    boot's trial has ended, and a boot not on trial is never rebooted by this."""
    booted = awaiting_verdict(sysroot.deployments(), grubenv.read(grubenv.path_of(sysroot.path)))
    if booted is None:
        return None
    var = sysroot.stateroot_var(booted.osname)
    records = Records.load(var)
    record = records.of(booted)
    record.setdefault("version", _version(sysroot, booted))
    failed_boot(record, deadline_reason(uptime))
    with contextlib.suppress(OSError):  # /var may be what hung; GRUB counts the attempt anyway
        records.save(var)
    return booted


def awaiting_verdict(deployments: Sequence[Deployment], env: dict[str, str]) -> Deployment | None:
    """The booted deployment when this boot is an attempt of a trial that no verdict has
    ended yet: it is the default and GRUB's environment names it (pure)."""
    booted = next((d for d in deployments if d.booted), None)
    if booted is None or booted is not deployments[0] or env.get(TRIAL) != ident(booted):
        return None
    return booted


def deadline_reason(uptime: float) -> str:
    return f"no verdict {int(uptime)} s after boot (it hung before multi-user.target or in a check)"


def _roll_back(
    sysroot: Sysroot,
    var: Path,
    deployments: list[Deployment],
    booted: Deployment,
    records: Records,
) -> dict[str, Any]:
    """Record the automatic rollback, then list the running deployment first and end the
    trial (a crash in between: GRUB falls back again and the next boot does this again)."""
    failed = deployments[0]
    record = records.of(failed)
    reason = record.get("failed-check") or NEVER_REPORTED
    record.update({"state": "failed", "failed-check": reason})
    record.setdefault("failed-at", now())
    rolled = {
        "at": now(),
        "from": ident(failed),
        "from-version": _version(sysroot, failed),
        "to": ident(booted),
        "to-version": _version(sysroot, booted),
        "reason": reason,
    }
    records.rollbacks.append(rolled)
    records.save(var)
    with sysroot.writing(tidy=False):
        order = [booted, *(d for d in deployments if d is not booted)]
        sysroot.write_deployments([d.handle for d in order], prune=False)
        end_trial(sysroot.path)
    return rolled


def _version(sysroot: Sysroot, dep: Deployment) -> str | None:
    if not sysroot.repo.has_commit(dep.checksum):
        return None
    return sysroot.repo.read_commit(dep.checksum).version or None
