"""Boot assessment's pure parts: GRUB's environment block, a deployment's standing, the
health checks' verdicts (systemctl faked), the spec's [health] table."""

from __future__ import annotations

import subprocess
from collections.abc import Sequence
from pathlib import Path

import pytest

from petra import grubenv, health
from petra.errors import SpecError
from petra.ostree import Deployment
from petra.spec import load_spec

pytestmark = pytest.mark.unit


def test_environment_block_round_trips_and_keeps_its_size(tmp_path: Path) -> None:
    variables = {"saved_entry": "0", "petra_trial": "ab12.0", "odd": "a\\b\nc"}
    block = grubenv.render(variables)
    assert len(block) == grubenv.SIZE and block.startswith(b"# GRUB Environment Block\n")
    assert block.endswith(b"#")
    assert grubenv.parse(block) == variables
    assert grubenv.parse(b"garbage" + block) == {}  # a damaged block reads as empty, as in GRUB
    with pytest.raises(ValueError, match="over 1024"):
        grubenv.render({"x": "y" * 1100})
    with pytest.raises(ValueError, match="variable name"):
        grubenv.render({"a-b": "1"})


def test_update_sets_and_unsets_keeping_the_others(tmp_path: Path) -> None:
    path = tmp_path / "grubenv"
    assert grubenv.read(path) == {}
    grubenv.update(path, {"saved_entry": "1", "petra_trial": "c.0", "petra_tries": "3"})
    grubenv.update(path, {"petra_trial": None, "petra_tries": None, "next": "x"})
    assert grubenv.read(path) == {"saved_entry": "1", "next": "x"}
    assert path.stat().st_size == grubenv.SIZE
    assert [p.name for p in tmp_path.iterdir()] == ["grubenv"]  # no partial file left


def test_grub_script_counts_every_attempt_down_and_falls_back_at_zero() -> None:
    script = health.GRUB_SCRIPT
    assert script.startswith("#!/bin/sh\n") and "cat <<'EOF'" in script
    for n in range(1, health.MAX_ATTEMPTS + 1):
        step = f'= "{n}" ]; then\n    set petra_tries="{n - 1}"\n    save_env petra_tries\n'
        assert step in script
    assert script.count('set default="1"') == 2  # none left, or a count GRUB cannot read


def dep(index: int, checksum: str, serial: int = 0, booted: bool = False) -> Deployment:
    return Deployment(index, "petra", checksum, serial, None, booted, Path(), "", None)


def test_standing_reads_the_trial_from_grub_and_the_verdicts_from_the_records() -> None:
    new, old = dep(0, "b" * 64), dep(1, "a" * 64, booted=True)
    records = health.Records(
        deployments={
            health.ident(new): {"state": "trial", "failed-at": "T1", "failed-check": "x failed"},
            health.ident(old): {"state": "good", "since": "T0"},
        }
    )
    env = {health.TRIAL: health.ident(new), health.TRIES: "2"}
    trial, good = health.standing([new, old], env, records)
    assert (trial.state, trial.attempts_left, trial.failed_check) == ("trial", 2, "x failed")
    assert (good.state, good.since, good.attempts_left) == ("good", "T0", None)
    # The trial ended without a verdict (the entry was changed by hand): no state claimed.
    assert health.standing([new, old], {}, records)[0].state is None
    # A trial names one deployment: another at index 0 is not on trial.
    other = dep(0, "c" * 64)
    assert health.standing([other], env, records)[0].state is None


def test_each_failed_boot_is_kept_with_the_last_one_first_in_view() -> None:
    record: dict[str, object] = {"state": "trial"}
    health.failed_boot(record, "no verdict 100 s after boot")
    health.failed_boot(record, "petra-check-x.service failed (exit-code)")
    assert record["failed-check"] == "petra-check-x.service failed (exit-code)"
    whys = [b["why"] for b in record["failed-boots"]]  # type: ignore[attr-defined]
    assert whys == ["no verdict 100 s after boot", "petra-check-x.service failed (exit-code)"]
    for n in range(20):
        health.failed_boot(record, f"boot {n}")
    assert len(record["failed-boots"]) == health.MAX_ATTEMPTS  # type: ignore[arg-type]
    records = health.Records(deployments={health.ident(dep(0, "b" * 64)): record})
    [shown] = health.standing([dep(0, "b" * 64)], {}, records)
    assert shown.to_json()["failed-boots"][-1]["why"] == "boot 19"


def test_the_deadline_ends_only_an_attempt_of_a_trial_that_no_verdict_ended() -> None:
    new, old = dep(0, "b" * 64, booted=True), dep(1, "a" * 64)
    env = {health.TRIAL: health.ident(new), health.TRIES: "1"}
    assert health.awaiting_verdict([new, old], env) is new
    assert health.awaiting_verdict([new, old], {}) is None  # judged good: the trial ended
    # GRUB fell back to the old one: this boot is not an attempt, the deadline leaves it be
    fallback = [dep(0, "b" * 64), dep(1, "a" * 64, booted=True)]
    assert health.awaiting_verdict(fallback, {**env, health.TRIES: "0"}) is None
    # a trial of another deployment (an upgrade made during this boot): not this boot's
    assert health.awaiting_verdict([dep(0, "c" * 64), old], env) is None
    assert "hung before multi-user.target" in health.deadline_reason(95.7)
    assert health.deadline_reason(95.7).startswith("no verdict 95 s after boot")


def test_the_deadline_timer_outlives_emergency_mode_and_a_spec_can_move_it() -> None:
    timer = health.DEADLINE_TIMER_UNIT
    assert "DefaultDependencies=no" in timer and "IgnoreOnIsolate=yes" in timer
    assert f"OnBootSec={health.DEFAULT_DEADLINE}\n" in timer
    assert "WantedBy=sysinit.target" in timer
    assert "ExecStart=/usr/bin/petra health --deadline" in health.DEADLINE_SERVICE_UNIT
    # a drop-in must clear the packaged trigger, or systemd keeps both
    assert health.deadline_dropin(90) == "[Timer]\nOnBootSec=\nOnBootSec=90\n"


def test_after_an_automatic_rollback_status_says_so_while_the_old_one_is_the_default() -> None:
    good, bad = dep(0, "a" * 64, booted=True), dep(1, "b" * 64)
    rolled = {
        "at": "T2",
        "from": health.ident(bad),
        "from-version": "2.0",
        "to": health.ident(good),
        "to-version": "1.0",
        "reason": "petra-check-web.service failed (exit-code)",
    }
    records = health.Records(
        deployments={health.ident(bad): {"state": "failed", "failed-at": "T1"}},
        rollbacks=[rolled],
    )
    notice = health.rollback_notice([good, bad], records)
    assert notice is not None
    assert "2.0 (bbbbbbbbbbbb) did not boot healthy (petra-check-web.service failed" in notice
    assert "1.0 is running and the default again" in notice
    failed = health.standing([good, bad], {}, records)[1]
    assert failed.state == "failed" and failed.rolled_back == rolled
    assert health.rollback_notice([bad, good], records) is None  # a later change of default


def test_records_survive_a_round_trip_and_drop_deployments_no_longer_listed(
    tmp_path: Path,
) -> None:
    records = health.Records(deployments={"a.0": {"state": "good"}, "b.0": {"state": "trial"}})
    records.save(tmp_path, keep=["a.0"])
    assert health.Records.load(tmp_path).deployments == {"a.0": {"state": "good"}}
    (tmp_path / health.STATE).write_text("{not json")
    assert health.Records.load(tmp_path).deployments == {}  # unreadable: empty, never fatal


def test_attempts_come_from_the_commit_within_bounds() -> None:
    assert health.attempts_of({}) == health.DEFAULT_ATTEMPTS
    assert health.attempts_of({"petra.boot-attempts": 2}) == 2
    assert health.attempts_of({"petra.boot-attempts": 0}) == health.DEFAULT_ATTEMPTS
    assert health.attempts_of({"petra.boot-attempts": 12}) == health.DEFAULT_ATTEMPTS


class FakeSystemctl:
    """systemctl for run_checks: which units each target wants and which of them fail."""

    def __init__(self, wants: dict[str, list[str]], failing: set[str]) -> None:
        self.wants, self.failing, self.started = wants, failing, []

    def __call__(self, argv: Sequence[str]) -> subprocess.CompletedProcess[str]:
        out, code = "", 0
        if argv[0] == "show" and "--property=Wants" in argv:
            out = " ".join(self.wants.get(argv[-1], [])) + "\n\n"
        elif argv[0] == "show":
            out = "exit-code\n"
        elif argv[0] == "start":
            self.started.append(argv[1])
            code = 1 if argv[1] in self.failing else 0
        return subprocess.CompletedProcess(list(argv), code, out, "")


def test_checks_run_one_by_one_and_only_required_ones_fail_the_boot() -> None:
    fake = FakeSystemctl(
        {
            health.REQUIRED_TARGET: ["b.service", "a.service"],
            health.WANTED_TARGET: ["w.service"],
        },
        failing={"b.service", "w.service"},
    )
    results = health.run_checks(fake)
    assert fake.started == ["a.service", "b.service", "w.service"]
    assert [(r.unit, r.required, r.passed) for r in results] == [
        ("a.service", True, True), ("b.service", True, False), ("w.service", False, False),
    ]  # fmt: skip
    assert results[1].detail == "b.service failed (exit-code)"
    assert health.run_checks(FakeSystemctl({}, set())) == []


def write_spec(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "s.toml"
    path.write_text(f'name = "s"\nversion = "1"\npetra = true\n{body}')
    return path


def test_spec_health_table(tmp_path: Path) -> None:
    spec = load_spec(
        write_spec(
            tmp_path,
            '[health]\nattempts = 2\n[health.required]\nssh = "systemctl is-active ssh"\n'
            '[health.wanted]\ndisk = "test -w /var"\n',
        )
    )
    assert spec.boot_attempts == 2 and spec.boot_deadline is None
    assert [(c.name, c.required) for c in spec.health_checks] == [("ssh", True), ("disk", False)]
    assert spec.to_json()["health"]["required"] == {"ssh": "systemctl is-active ssh"}
    timed = load_spec(write_spec(tmp_path, "[health]\ndeadline = 90\n"))
    assert timed.boot_deadline == 90 and timed.to_json()["health"]["deadline"] == 90
    plain = load_spec(write_spec(tmp_path, ""))
    assert "health" not in plain.to_json()  # specs without [health] keep their digest


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("[health]\nattempts = 0\n", "outside 1..9"),
        ("[health]\ntries = 2\n", "unknown key 'health.tries'"),
        ("[health]\ndeadline = 5\n", "outside 30..86400"),
        ('[health]\ndeadline = "10min"\n', "health.deadline"),
        ('[health.required]\n"Bad Name" = "true"\n', "is not a check name"),
        ('[health.required]\nx = ""\n', "expected a shell command"),
        ('[health.required]\nx = "true"\n[health.wanted]\nx = "true"\n', "both required"),
    ],
)
def test_spec_health_errors(tmp_path: Path, body: str, message: str) -> None:
    with pytest.raises(SpecError, match=message):
        load_spec(write_spec(tmp_path, body))


def test_health_checks_need_petra_in_the_image(tmp_path: Path) -> None:
    path = tmp_path / "s.toml"
    path.write_text('name = "s"\nversion = "1"\n[health.required]\nx = "true"\n')
    with pytest.raises(SpecError, match="needs petra = true"):
        load_spec(path)
    path.write_text('name = "s"\nversion = "1"\n[health]\ndeadline = 60\n')
    with pytest.raises(SpecError, match="needs petra = true"):
        load_spec(path)
