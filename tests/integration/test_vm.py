"""The vm tier: the composed server spec as a disk image, booted in qemu (TCG), checked from inside:
a healthy first boot, then the update cycle (upgrade from a shared repo, reboot, rollback, reboot)
with the petra the image carries, power cuts of a deployment on trial, and the automatic
rollback of a release whose kernel crashes, then hangs, then fails its required check.

One image per session; every test boots its own copy-on-write overlay of it (qemu-img create -b),
so no test changes what another sees. A boot under TCG costs about a minute here.
"""

from __future__ import annotations

import contextlib
import json
import os
import pty
import random
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from petra import health
from petra.archive import Archive
from tests.integration.conftest import EXAMPLES, Composed, World, compose, ostree, petra
from tests.integration.sysroots import frozen

pytestmark = pytest.mark.integration

# A boot plus the command: generous, since TCG on a busy 2-core machine is slow. petra vm run
# stops the VM itself at --timeout; the subprocess timeout is only a backstop (no sysroot on
# the host is written by vm run, so a kill cannot freeze anything).
VM_TIMEOUT = 540
# make soak: rounds of power cuts of a deployment on trial (0: the test is skipped).
POWER_CUT_ROUNDS = int(os.environ.get("PETRA_POWER_CUT_ROUNDS", "0"))


@pytest.fixture(scope="session")
def image(server: Composed, testfs: Path) -> Path:
    path = testfs / "vm" / "server.img"
    path.parent.mkdir()
    petra("image", "build", "--repo", server.repo, server.ref, "-o", path, "--quiet")
    return path


@pytest.fixture
def disk(image: Path, tmp_path: Path) -> Iterator[Path]:
    """A qcow2 overlay of the shared image: this test's writes land here only."""
    overlay = tmp_path / "disk.qcow2"
    subprocess.run(
        ["qemu-img", "create", "-q", "-f", "qcow2", "-b", image, "-F", "raw", overlay],
        check=True,
        timeout=60,
    )
    yield overlay
    overlay.unlink()


def vm(
    disk: Path,
    *command: str,
    accel: str = "tcg",
    share: Path | None = None,
    console: Path | None = None,
) -> subprocess.CompletedProcess[str]:
    return petra(
        "vm",
        "run",
        disk,
        "--accel",
        accel,
        *(["--share", str(share)] if share else []),
        *(["--console", str(console)] if console else []),
        "--timeout",
        str(VM_TIMEOUT - 60),
        "--",
        *command,
        check=False,
        timeout=VM_TIMEOUT,
    )


def loop_devices() -> str:
    return subprocess.run(["losetup", "-a"], capture_output=True, text=True, timeout=30).stdout


def qemus() -> list[str]:
    out = subprocess.run(["pgrep", "-a", "qemu-system"], capture_output=True, text=True).stdout
    return out.splitlines()


# The first boot checks the booted system, leaves state in /etc and /var, and upgrades from the
# shared repo; what it prints is parsed by the test.
FIRST_BOOT = r"""
set -u
echo "cmdline: $(cat /proc/cmdline)"
echo "status: $(ostree admin status | grep '^\*')"
touch /usr/petra-test 2>&1 | sed 's/^/usr: /'
echo changed > /etc/petra-test && echo "etc: $(cat /etc/petra-test)"
mkdir -p /var/lib/petra-test && echo kept > /var/lib/petra-test/marker
echo "failed: [$(systemctl --failed --no-legend --plain)]"
echo "running: $(systemctl is-system-running)"
echo "ssh: $(ss -Htln 'sport = :22' | wc -l) $(ls /etc/ssh/ssh_host_ed25519_key)"
echo "machine-id: $(cat /etc/machine-id)"
echo "petra: $(petra status --json | tr -d '\n ')"
petra upgrade -q >/dev/null && echo "upgrade: $(petra status --json | tr -d '\n ')"
echo "menu: $(grep -c '^menuentry' /boot/grub/grub.cfg)"
echo "grubenv: $(grub-editenv /boot/grub/grubenv list | grep petra_ | sort | tr '\n' ' ')"
grub-script-check /boot/grub/grub.cfg && echo "grub-script: ok"
"""


def fields(output: str) -> dict[str, str]:
    return dict(line.split(": ", 1) for line in output.splitlines() if ": " in line)


def deployments(text: str) -> list[dict[str, object]]:
    data = json.loads(text)
    assert isinstance(data, list)
    return data


def booted(text: str) -> dict[str, object]:
    return next(d for d in deployments(text) if d["booted"])


def next_release(server: Composed, where: Path) -> tuple[Path, str]:
    """A repo holding the server ref at v1 and, on top, v2 = the same spec + htop: the folder
    the VM is given, as a real update server would hold the next release."""
    repo = where / "share"
    ostree("--repo", repo, "init", "--mode=bare")
    ostree("--repo", repo, "pull-local", server.repo, server.ref)
    spec = where / "server-v2.toml"
    spec.write_text(
        f'include = ["{EXAMPLES / "server.toml"}"]\nversion = "2026.11.2"\npackages = ["htop"]\n'
    )
    v2 = compose(spec, repo, server.cache)
    assert v2.ref == server.ref
    return repo, v2.commit


def offline_cache(repo: Path, cache: Path, base: str, wanted: str, dest: Path) -> Path:
    """A package cache for `petra install` in the VM, which has no network: the archive's index
    and the .debs that `wanted` (a commit) has and `base` lacks, from the compose cache."""
    shown = {
        c: json.loads(petra("show", "--repo", repo, c, "--json").stdout) for c in (base, wanted)
    }
    extra = {
        name: version
        for name, version in shown[wanted]["packages"].items()
        if shown[base]["packages"].get(name) != version
    }
    meta = shown[base]
    source = Archive(meta["mirror"], meta["suite"], meta["architecture"], cache)
    target = Archive(meta["mirror"], meta["suite"], meta["architecture"], dest)
    target.lists_dir.mkdir(parents=True)
    target.debs.mkdir(parents=True)
    for index in source.lists_dir.glob("*_*"):
        shutil.copyfile(index, target.lists_dir / index.name)
    packages = next(source.lists_dir.glob("*_Packages")).read_text()
    found = []
    for stanza in packages.split("\n\n"):
        field = dict(ln.split(": ", 1) for ln in stanza.splitlines() if ": " in ln and ln[0] != " ")
        if "Package" in field and extra.get(field["Package"]) == field["Version"]:
            found.append(field["Package"])
            sha = field["SHA256"]
            shutil.copyfile(source.debs / f"{sha}.deb", target.debs / f"{sha}.deb")
    assert sorted(found) == sorted(extra), (found, extra)
    return dest


def box_tree(w: World, name: str, dest: Path) -> None:
    """Put the cached package tree that box `name` of `w` was copied from, under its raw/ ref,
    into the compose cache at `dest` (a bare repo of one commit): a `petra box create` of the
    same suite and packages then needs neither network nor .debs."""
    tree = json.loads((w.boxes / name / "box.json").read_text())["tree"]
    source = w.cache / "repo"
    refs = [
        r if r.startswith("raw/") else f"raw/{r}"
        for r in ostree("--repo", source, "refs", "raw").split()
    ]
    ref = next(r for r in refs if ostree("--repo", source, "rev-parse", r).strip() == tree)
    ostree("--repo", dest / "repo", "init", "--mode=bare")
    ostree("--repo", dest / "repo", "pull-local", source, ref)


def power_cut(disk: Path, after: float, scratch: Path) -> None:
    """Boot the disk and cut the power `after` seconds in: petra vm run is killed, and qemu,
    which dies with it, stops wherever the guest was. (No sysroot of the host is written by a
    VM: nothing of the host can be left frozen; the caller checks.)"""
    argv = [sys.executable, "-m", "petra", "vm", "run", str(disk), "--accel", "tcg", "-q"]
    env = {**os.environ, "TMPDIR": str(scratch)}  # where a killed vm run leaves its console
    proc = subprocess.Popen(
        [*argv, "--", "true"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env
    )
    try:
        proc.wait(after)  # (a boot that ends before the cut is a boot that was not cut)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(60)
    for _ in range(300):
        if not qemus():
            break
        time.sleep(0.1)
    assert not qemus(), "qemu outlived the power cut"


def test_boot_upgrade_reboot_rollback_reboot(
    disk: Path, server: Composed, world: World, testfs: Path, kill_seed: int, tmp_path: Path
) -> None:
    where = Path(tempfile.mkdtemp(dir=testfs))
    share, v2 = next_release(server, where)
    broken = broken_release(server, share, where)
    first = vm(disk, "sh", "-c", FIRST_BOOT, share=share)
    assert first.returncode == 0, first.stderr[-3000:]
    seen = fields(first.stdout)
    assert "ostree=/ostree/boot." in seen["cmdline"] and "root=UUID=" in seen["cmdline"]
    assert server.commit in seen["status"]  # `*` marks the booted deployment
    assert "Read-only file system" in seen["usr"]
    assert seen["etc"] == "changed"
    assert seen["failed"] == "[]", first.stdout
    assert seen["ssh"] == "1 /etc/ssh/ssh_host_ed25519_key"  # keys made on the first boot
    assert len(seen["machine-id"]) == 32 and seen["machine-id"] != "uninitialized"
    assert seen["running"] in ("running", "starting"), first.stdout
    running = booted(seen["petra"])
    assert running["commit"] == server.commit  # petra runs on the booted system
    assert running["health"]["state"] == "good"  # judged before the command ran
    upgraded = deployments(seen["upgrade"])
    assert [d["commit"] for d in upgraded] == [v2, server.commit], seen["upgrade"]
    assert upgraded[1]["booted"] and not upgraded[0]["booted"]
    assert upgraded[0]["health"]["state"] == "trial"
    assert upgraded[0]["health"]["attempts-left"] == health.DEFAULT_ATTEMPTS
    assert seen["menu"] == "2"  # GRUB's menu lists both deployments
    # the boot counting GRUB does, with the block and the menu GRUB's own tools accept
    trial = f"petra_trial={v2}.0 petra_tries={health.DEFAULT_ATTEMPTS}"
    assert seen["grubenv"].strip() == trial, seen["grubenv"]
    assert seen["grub-script"] == "ok"

    # Power cuts of the new version's boots (each may cost an attempt; there are more
    # attempts than cuts), then a whole boot: it becomes good. The first cut is at the login
    # prompt of an interactive boot (the console on a pseudo-terminal; Ctrl-A X stops qemu),
    # the second at a random moment.
    interactive_until_login(disk)
    power_cut(disk, random.Random(kill_seed).uniform(2, 40), tmp_path)
    assert not frozen(testfs), f"a power cut left {testfs} frozen (thawed it now)"

    # Reboot: the new version runs, with the /etc change and the /var state; roll back.
    second = vm(
        disk,
        "sh",
        "-c",
        "petra status --json | tr -d '\\n '; echo; command -v htop;"
        " cat /var/lib/petra-test/marker /etc/petra-test;"
        " grub-editenv /boot/grub/grubenv list | grep -c petra_; petra rollback -q; exit 7",
    )
    assert second.returncode == 7, second.stderr[-3000:]  # the command's own exit code
    status, htop, marker, etc, counting = second.stdout.splitlines()[:5]
    assert booted(status)["commit"] == v2 and len(deployments(status)) == 2
    assert booted(status)["health"]["state"] == "good" and counting == "0"  # trial over
    assert htop == "/usr/bin/htop" and marker == "kept" and etc == "changed"

    # Reboot: the old version runs again, without htop, with the same /var; both are listed.
    # Then, offline, from a package cache the share brings: layer htop onto it, and make a box
    # (trixie + htop) beside the read-only system.
    offline_cache(share, server.cache, server.commit, v2, share / "cache")
    box_tree(world, "dev", share / "cache")
    third = vm(
        disk,
        "sh",
        "-c",
        "echo status: $(petra status --json | tr -d '\\n ');"
        " echo htop: $(command -v htop || echo none);"
        " echo marker: $(cat /var/lib/petra-test/marker);"
        " cp -a /run/petra/share/cache /var/cache/petra"
        " && petra install -q --cache /var/cache/petra htop >/tmp/log 2>&1; echo install: $?;"
        " petra box create dev --packages htop --cache /var/cache/petra -q >>/tmp/log 2>&1;"
        " echo box: $?; petra box run dev -- sh -c 'echo in-box: $(htop --version | head -1)"
        " $(cat /etc/debian_version); touch /usr/from-box && echo box-usr: written';"
        " echo host-usr: $(ls /usr/from-box 2>&1 | grep -c 'No such'); sed 's/^/log: /' /tmp/log",
        share=share,
    )
    assert third.returncode == 0, third.stderr[-3000:]
    seen = fields(third.stdout)
    status = seen["status"]
    assert booted(status)["commit"] == server.commit and deployments(status)[0]["booted"]
    assert booted(status)["health"]["state"] == "good"  # rolled to: on trial, then good
    assert [d["commit"] for d in deployments(status)] == [server.commit, v2]
    assert seen["htop"] == "none" and seen["marker"] == "kept"
    assert seen["install"] == "0" and seen["box"] == "0", third.stdout
    assert seen["in-box"].startswith("htop ") and seen["in-box"].split()[-1].startswith("13")
    # the box's /usr is the box's own: written there, not on the host
    assert seen["box-usr"] == "written" and seen["host-usr"] == "1"

    # Reboot: the layered deployment runs, htop works, the base and /var are as they were; the
    # box is still there, with what was written in it.
    fourth = vm(
        disk,
        "sh",
        "-c",
        "echo status: $(petra status --json | tr -d '\\n ');"
        " echo htop: $(htop --version | head -1);"
        " echo marker: $(cat /var/lib/petra-test/marker);"
        " echo boxes: $(petra box list --json | tr -d '\\n ');"
        " petra box run dev -- sh -c 'echo in-box: $(ls /usr/from-box) $(id -u)';"
        f" petra deploy -q --repo /run/petra/share {broken.ref} >/dev/null"
        " && echo deployed: ok",
        share=share,
    )
    assert fourth.returncode == 0, fourth.stderr[-3000:]
    seen = fields(fourth.stdout)
    running = booted(seen["status"])
    assert running["layered"] == ["htop"] and running["base"] == server.commit, seen["status"]
    assert running["health"]["state"] == "good"
    assert deployments(seen["status"])[1]["commit"] == server.commit  # unlayered, to roll back to
    assert seen["htop"].startswith("htop ") and seen["marker"] == "kept"
    boxes = json.loads(seen["boxes"])
    assert [(b["name"], b["suite"], b["packages"]) for b in boxes] == [("dev", "trixie", ["htop"])]
    assert seen["in-box"] == "/usr/from-box 0"
    assert seen["deployed"] == "ok"
    good = f"{running['commit']}.{running['serial']}"

    # A release that never boots healthy, in every way there is (3 attempts): its kernel
    # crashes (panic=10 reboots); then its boot hangs before multi-user.target (the deadline
    # timer records it and reboots); then its required check fails (petra records it and
    # reboots). GRUB counted each attempt and falls back to the layered deployment, and petra
    # makes that the default again. (And: the exit code of the command is vm run's; --accel
    # auto says which accelerator it took.)
    console = tmp_path / "console"
    fifth = vm(disk, "sh", "-c", f"{STATUS}; false", console=console, accel="auto")
    assert fifth.returncode == 1, fifth.stderr[-3000:]
    assert "accel: kvm" in fifth.stderr or "accel: tcg" in fifth.stderr, fifth.stderr
    assert "4 boots" in fifth.stderr, fifth.stderr[-2000:]  # 3 attempts, then the fallback
    assert b"Kernel panic" in console.read_bytes()
    seen = fields(fifth.stdout)
    now = deployments(seen["status"])
    assert now[0]["booted"] and f"{now[0]['commit']}.{now[0]['serial']}" == good
    assert now[0]["health"]["state"] == "good"
    failed = now[1]["health"]
    assert now[1]["commit"] == broken.commit and failed["state"] == "failed", failed
    assert failed["failed-check"] == "petra-check-app-ready.service failed (exit-code)"
    hung, check = (b["why"] for b in failed["failed-boots"])  # the crash left no record
    assert hung.startswith("no verdict ") and "hung before multi-user.target" in hung, hung
    assert int(hung.split()[2]) >= HANG_DEADLINE and check == failed["failed-check"]
    assert failed["automatic-rollback"]["to"] == good
    assert "automatic rollback at" in seen["notice"] and "2026.11.4" in seen["notice"]
    assert "did not boot healthy" in seen["notice"]


# The first attempt's kernel crashes; the second never reaches multi-user.target; the third
# does (and its required check fails). GRUB's count of attempts left tells them apart.
BROKEN_BOOT_UNIT = """[Unit]
Description=A broken update: a kernel crash, then a hang, then a boot that goes on
Before=multi-user.target

[Service]
Type=oneshot
TimeoutStartSec=infinity
ExecStart=/bin/sh -c 'case "$$(cat /boot/grub/grubenv /sysroot/boot/grub/grubenv 2>/dev/null \\
  | sed -n s/^petra_tries=//p | head -n1)" in 2) echo c > /proc/sysrq-trigger ;; \\
  1) exec sleep infinity ;; esac'

[Install]
WantedBy=multi-user.target
"""
# When the hanging attempt is ended: long after a boot of this image reaches multi-user.target
# under TCG (35-45 s here), so that the first attempt crashes before it.
HANG_DEADLINE = 80


def broken_release(server: Composed, repo: Path, where: Path) -> Composed:
    """Into `repo`, beside the server ref: a release with 3 boot attempts, a kernel that
    crashes on the first, a boot that hangs on the second and a required health check that
    fails on the third."""
    (where / "broken.service").write_text(BROKEN_BOOT_UNIT)
    spec = where / "server-broken.toml"
    spec.write_text(
        f'include = ["{EXAMPLES / "server.toml"}"]\nname = "server-broken"\n'
        f'version = "2026.11.4"\n[health]\nattempts = 3\ndeadline = {HANG_DEADLINE}\n'
        '[health.required]\napp-ready = "test -e /etc/app-ready"\n'
        '[files]\n"/etc/systemd/system/broken.service" = "broken.service"\n'
        '[services]\nenable = ["broken.service"]\n'
    )
    return compose(spec, repo, server.cache)


STATUS = (
    "echo \"status: $(petra status --json | tr -d '\\n')\";"
    " petra status | sed -n 's/^! /notice: /p'"
)


@pytest.mark.skipif(not POWER_CUT_ROUNDS, reason="make soak sets PETRA_POWER_CUT_ROUNDS")
def test_power_cuts_of_a_trial_never_cost_it_its_good_boot(
    disk: Path, testfs: Path, kill_seed: int, tmp_path: Path
) -> None:
    """Soak: each round, the default deployment is on trial; the power is cut at random
    moments of its boots (one fewer time than it has attempts), then it boots whole: it is
    the one running, and good. `petra rollback` then puts the other one on trial for the
    next round."""
    moments = random.Random(kill_seed)
    made = vm(disk, "sh", "-c", "petra kargs --append petra.soak=1 >/dev/null && " + STATUS)
    assert made.returncode == 0, made.stderr[-3000:]
    trial = deployments(fields(made.stdout)["status"])[0]
    for round_ in range(POWER_CUT_ROUNDS):
        assert trial["health"]["state"] == "trial", trial
        expected = f"{trial['commit']}.{trial['serial']}:{trial['kernel-args']}"
        for cut in range(health.DEFAULT_ATTEMPTS - 1):
            power_cut(disk, moments.uniform(2, 45), tmp_path)
            assert not frozen(testfs), f"round {round_}, cut {cut} left {testfs} frozen"
        run = vm(disk, "sh", "-c", f"{STATUS}; petra rollback -q >/dev/null && {STATUS}")
        assert run.returncode == 0, run.stderr[-3000:]
        before, after = (
            deployments(line.split(": ", 1)[1])
            for line in run.stdout.splitlines()
            if line.startswith("status: ")
        )
        running = before[0]
        assert running["booted"], f"round {round_}: {before}"
        assert f"{running['commit']}.{running['serial']}:{running['kernel-args']}" == expected
        assert running["health"]["state"] == "good", f"round {round_}: {running}"
        trial = after[0]


def test_bad_input_is_refused_and_leaves_nothing(
    server: Composed, image: Path, tmp_path: Path
) -> None:
    before_loops, before_files = loop_devices(), sorted(os.listdir(image.parent))
    out = tmp_path / "taken.img"
    out.write_text("mine")
    cases = [
        (["image", "build", "--repo", server.repo, server.ref, "-o", out], "exists", "--force"),
        (
            [
                "image",
                "build",
                "--repo",
                server.repo,
                server.ref,
                "-o",
                tmp_path / "s.img",
                "--size",
                "300M",
            ],  # fmt: skip
            "too small",
            "--size",
        ),
        (
            ["image", "build", "--repo", server.repo, "petra/no/such", "-o", tmp_path / "n.img"],
            "petra/no/such",
            "",
        ),
        (["vm", "run", tmp_path / "missing.img", "--", "true"], "no image at", "image build"),
        (["vm", "run", image, "--share", out, "--", "true"], "not a directory", ""),
    ]
    for args, message, hint in cases:
        result = petra(*args, check=False, timeout=120)
        assert result.returncode != 0, args
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("petra: error:"), result.stderr
        assert message in lines[0] and hint in lines[0], lines[0]
    assert out.read_text() == "mine"
    assert not (tmp_path / "s.img").exists() and not (tmp_path / "n.img").exists()
    assert sorted(os.listdir(tmp_path)) == ["taken.img"]
    assert loop_devices() == before_loops
    assert sorted(os.listdir(image.parent)) == before_files
    assert not qemus()


def test_a_tree_without_a_kernel_is_refused(minimal: Composed, tmp_path: Path) -> None:
    result = petra(
        "image", "build", "--repo", minimal.repo, minimal.ref, "-o", tmp_path / "m.img",
        check=False, timeout=120,
    )  # fmt: skip
    assert result.returncode == 1
    assert "has no kernel" in result.stderr and "kernel = true" in result.stderr
    assert not list(tmp_path.iterdir())


def interactive_until_login(disk: Path) -> None:
    """`vm run` without a command: the serial console on the terminal (a pseudo-terminal here)
    shows the login prompt, and Ctrl-A X stops qemu (a power cut for the guest)."""
    pid, fd = pty.fork()
    if pid == 0:  # the child: petra vm run on the pseudo-terminal
        os.execv(sys.executable, [sys.executable, "-m", "petra", "vm", "run", str(disk),
                                  "--accel", "tcg", "--quiet"])  # fmt: skip
    seen, deadline = b"", time.monotonic() + VM_TIMEOUT
    try:
        while b"login:" not in seen and time.monotonic() < deadline:
            if select.select([fd], [], [], 1)[0]:
                try:
                    seen += os.read(fd, 65536)
                except OSError:  # the child exited: the pty is closed
                    break
        assert b"login:" in seen, seen[-2000:].decode(errors="replace")
        os.write(fd, b"\x01x")  # Ctrl-A X: qemu's monitor multiplexer quits
        for _ in range(300):
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                break
            time.sleep(0.1)
        assert done == pid and os.waitstatus_to_exitcode(status) == 0
    finally:
        with contextlib.suppress(ProcessLookupError, ChildProcessError):
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        os.close(fd)
    assert not qemus()
