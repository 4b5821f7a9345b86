"""petra box on a real sysroot: boxes made from real Debian packages (the compose cache's
package trees), run in real bubblewrap, kept in the stateroot's /var across upgrade and
rollback; isolation, network, a non-root caller, export, and every refused request.

One cold box per session (mmdebstrap of a minimal trixie + htop); the others are warm (the same
cached tree, copied). Sysroots and boxes live on the test file system.
"""

from __future__ import annotations

import contextlib
import json
import os
import pty
import pwd
import random
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.conftest import ROOT, World, petra
from tests.integration.sysroots import frozen

pytestmark = pytest.mark.integration


def run(w: World, name: str, script: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return w.box("run", name, "--", "sh", "-c", script, check=check)


def one_line_error(proc: subprocess.CompletedProcess[str], *words: str) -> str:
    assert proc.returncode != 0, proc.stdout
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("petra: error:"), proc.stderr
    for word in words:
        assert word in lines[0], lines[0]
    return lines[0]


def listed(w: World) -> dict[str, dict[str, object]]:
    return {b["name"]: b for b in json.loads(w.box("list", "--json").stdout)}


def test_run_list_export_and_apt_inside(world: World) -> None:
    w = world
    assert run(w, "dev", "exit 3", check=False).returncode == 3  # the command's own code
    missing = run(w, "dev", "exec no-such-command", check=False)
    assert missing.returncode == 127 and "not found" in missing.stderr
    out = run(w, "dev", "cat /etc/debian_version; hostname; id -u; pwd; echo $HOME").stdout
    version, hostname, uid, cwd, home = out.split()
    assert version.startswith("13"), version  # trixie
    assert hostname == "dev" and uid == "0" and home == str(w.home)
    assert cwd == str(w.home)  # the caller's directory is not in the home: the home

    boxes = listed(w)
    dev = boxes["dev"]
    assert dev["suite"] == "trixie" and dev["packages"] == ["htop"] and dev["network"] is True
    assert int(str(dev["size"])) > 50_000_000  # a real Debian root
    assert float(str(dev["used"])) >= float(str(dev["created"]))

    # apt works as on any Debian system: it has an index, and installs from the archive.
    run(w, "dev", "DEBIAN_FRONTEND=noninteractive apt-get install -y -q hello >/dev/null")
    assert run(w, "dev", "hello").stdout.strip() == "Hello, world!"
    assert not (w.sysroot / "usr/bin/hello").exists()

    # export: a launcher that runs htop in the box, and its .desktop file; unexport removes them.
    made = w.box("export", "dev", "htop").stdout
    launcher = w.home / ".local/bin/htop"
    desktop = w.home / ".local/share/applications/petra-dev-htop.desktop"
    assert str(launcher) in made and launcher.exists() and desktop.exists()
    assert f"Exec={launcher}" in desktop.read_text()
    env = {**os.environ, "HOME": str(w.home)}
    # its fast path starts bwrap itself (sh -x shows which exec ran); with the box's passwd
    # changed since the export, it asks petra box run instead; both run htop in the box
    for path in ("fast", "petra"):
        version = subprocess.run(
            ["sh", "-x", launcher, "--version"], capture_output=True, text=True, timeout=120,
            env=env,
        )  # fmt: skip
        assert version.returncode == 0 and version.stdout.startswith("htop 3."), version.stderr
        execs = [ln.split()[2] for ln in version.stderr.splitlines() if ln.startswith("+ exec ")]
        assert execs == (["bwrap"] if path == "fast" else [sys.executable]), version.stderr
        os.utime(w.boxes / "dev/root/etc/passwd")
    assert not shutil.which("htop", path="/usr/bin:/bin")  # the host has none: it ran in the box
    w.box("unexport", "dev", "htop")
    assert not launcher.exists() and not desktop.exists()
    one_line_error(w.box("unexport", "dev", "htop", check=False), "not exported")
    one_line_error(w.box("export", "dev", "no-such-app", check=False), "no command no-such-app")


def test_boxes_are_isolated_and_share_no_writable_file(world: World) -> None:
    w = world
    w.box("create", "other")  # warm: the cached minimal tree
    dev, other = w.boxes / "dev/root", w.boxes / "other/root"
    # Every file of a box is its own: no hardlink into the cache or into another box.
    shared = [
        p for p in (dev / "usr/bin").iterdir() if p.is_file() and not p.is_symlink()
        and p.stat().st_nlink != 1
    ]  # fmt: skip
    assert not shared, shared[:5]
    before = (other / "usr/lib/os-release").read_text()
    run(w, "dev", "echo PETRA_TEST=1 >> /usr/lib/os-release")
    assert "PETRA_TEST" in (dev / "usr/lib/os-release").read_text()
    assert (other / "usr/lib/os-release").read_text() == before
    assert "PETRA_TEST" not in run(w, "other", "cat /usr/lib/os-release").stdout

    # The host's /usr is not there to write; the other box's root and the host's processes
    # are not visible; /usr in the box is the box's own.
    seen = run(
        w,
        "dev",
        f"touch /usr/bin/petra-box-test; test -e {other} && echo sees-other;"
        " test -e /usr/lib/python3/dist-packages/gi && echo sees-host-usr;"
        " ls /proc | grep -c '^[0-9]'; cat /proc/1/comm",
    ).stdout.split()
    assert "sees-other" not in seen and "sees-host-usr" not in seen
    assert int(seen[0]) <= 4, seen  # bwrap, sh, ls, grep: not the host's processes
    assert (dev / "usr/bin/petra-box-test").exists()
    assert not Path("/usr/bin/petra-box-test").exists()


class Server:
    """A TCP server on 127.0.0.1 that counts connections."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen()
        self.port = self.sock.getsockname()[1]
        self.connections = 0
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            conn.close()


def test_no_network_means_no_network(world: World) -> None:
    w = world
    w.box("create", "offline", "--no-network")
    server = Server()
    try:
        connect = f"echo hi > /dev/tcp/127.0.0.1/{server.port} && echo connected"
        inside = w.box("run", "offline", "--", "bash", "-c", connect, check=False)
        assert inside.returncode != 0 and "connected" not in inside.stdout
        assert server.connections == 0
        with_net = w.box("run", "dev", "--", "bash", "-c", connect)
        assert "connected" in with_net.stdout
        assert server.connections == 1
    finally:
        server.sock.close()
    assert listed(w)["offline"]["network"] is False


@pytest.fixture
def view(testfs: Path) -> Iterator[Path]:
    """The test file system at a path a non-root user can reach (pytest's own temporary
    directory is root's alone); a bind mount in the test run's mount namespace."""
    path = Path(tempfile.mkdtemp(prefix="petra-box-view-", dir="/run"))
    path.chmod(0o755)
    subprocess.run(["mount", "--bind", testfs, path], check=True, timeout=60)
    try:
        yield path
    finally:
        subprocess.run(["umount", path], check=False, timeout=60)
        path.rmdir()


@pytest.fixture
def user(view: Path) -> Iterator[pwd.struct_passwd]:
    """A non-root user with a home on the test file system."""
    name = f"petrabox{random.randrange(10**6)}"
    home = view / name
    subprocess.run(["useradd", "-m", "-d", home, "-s", "/bin/bash", name], check=True, timeout=60)
    try:
        yield pwd.getpwnam(name)
    finally:
        subprocess.run(["userdel", name], check=False, timeout=60)
        shutil.rmtree(home, ignore_errors=True)


def test_a_non_root_caller_keeps_its_uid_gid_and_home(
    world: World, user: pwd.struct_passwd, view: Path, testfs: Path
) -> None:
    w = world
    source = view / f"src-{user.pw_name}"  # a copy of petra's source the user can read
    shutil.copytree(ROOT / "src", source)
    for path in (source, *source.rglob("*")):
        path.chmod(0o755 if path.is_dir() else 0o644)
    sysroot = view / w.sysroot.relative_to(testfs)
    proc = subprocess.run(
        ["setpriv", f"--reuid={user.pw_uid}", f"--regid={user.pw_gid}", "--init-groups",
         "/usr/bin/python3", "-m", "petra", "box", "run", "--sysroot", sysroot, "dev", "--",
         "sh", "-c", "id -u; id -g; id -un; echo made-inside > $HOME/from-box; touch /usr/x"],
        capture_output=True, text=True, timeout=300, cwd=user.pw_dir,
        env={"PATH": "/usr/bin:/bin", "HOME": user.pw_dir, "PYTHONPATH": str(source)},
    )  # fmt: skip
    uid, gid, name = proc.stdout.split()[:3]
    assert (int(uid), int(gid), name) == (user.pw_uid, user.pw_gid, user.pw_name), proc.stderr
    made = Path(user.pw_dir) / "from-box"
    assert made.read_text() == "made-inside\n" and made.stat().st_uid == user.pw_uid
    assert "Permission denied" in proc.stderr  # the box's /usr belongs to root
    assert not (w.boxes / "dev/root/usr/x").exists()

    # The user exports `id`: its launcher's fast path shows the user's passwd line in the box
    # (which has none of its own), so the name resolves, as through petra box run.
    as_user = ["setpriv", f"--reuid={user.pw_uid}", f"--regid={user.pw_gid}", "--init-groups"]
    env = {"PATH": "/usr/bin:/bin", "HOME": user.pw_dir, "PYTHONPATH": str(source)}
    subprocess.run(
        [*as_user, "/usr/bin/python3", "-m", "petra", "box", "export", "--sysroot", sysroot,
         "dev", "id"],
        check=True, capture_output=True, timeout=120, cwd=user.pw_dir, env=env,
    )  # fmt: skip
    launcher = Path(user.pw_dir) / ".local/bin/id"
    proc = subprocess.run(
        [*as_user, "sh", "-x", launcher, "-un"],
        capture_output=True, text=True, timeout=120, cwd=user.pw_dir, env=env,
    )  # fmt: skip
    assert proc.returncode == 0 and proc.stdout == f"{user.pw_name}\n", proc.stderr
    assert "+ exec bwrap" in proc.stderr, proc.stderr
    launcher.unlink()
    shutil.rmtree(source)


def test_enter_gives_a_shell_on_a_terminal(world: World) -> None:
    pid, fd = pty.fork()
    if pid == 0:
        os.environ["HOME"] = str(world.home)
        os.execv(sys.executable, [sys.executable, "-m", "petra", "box", "enter", "--sysroot",
                                  str(world.sysroot), "dev"])  # fmt: skip
    seen = b""
    try:
        os.write(fd, b"echo in-box-$((6*7)) $(hostname); exit 5\n")
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if select.select([fd], [], [], 1)[0]:
                try:
                    chunk = os.read(fd, 65536)
                except OSError:
                    break
                if not chunk:
                    break
                seen += chunk
        _, status = os.waitpid(pid, 0)
    finally:
        with contextlib.suppress(ProcessLookupError, ChildProcessError):
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        os.close(fd)
    assert b"in-box-42 dev" in seen, seen[-2000:]
    assert os.waitstatus_to_exitcode(status) == 5


def test_boxes_survive_upgrade_and_rollback_and_upgrade_inside(world: World) -> None:
    w = world
    w.source.point_at(w.source.releases.v2)
    petra("upgrade", "--sysroot", w.sysroot)
    assert "dev" in listed(w)
    petra("rollback", "--sysroot", w.sysroot)
    assert run(w, "dev", "echo alive").stdout.strip() == "alive"
    assert w.box("upgrade", "dev").returncode == 0


def test_refused_requests_change_nothing(world: World) -> None:
    w = world
    before = sorted(listed(w))
    for name in ("a/b", "..", "with space", "x" * 65):
        one_line_error(w.box("create", name, check=False), "box name")
    one_line_error(w.box("create", "dev", check=False), "exists", "petra box rm dev")
    one_line_error(
        w.box("create", "nosuite", "--suite", "no-such-suite", check=False), "no-such-suite"
    )
    one_line_error(
        w.box("create", "nopkg", "--packages", "no-such-package", check=False), "no-such-package"
    )
    one_line_error(w.box("run", "missing", "--", "true", check=False), "no box named missing")
    one_line_error(w.box("enter", "missing", check=False), "no box named missing")
    one_line_error(w.box("export", "missing", "vim", check=False), "no box named missing")
    assert sorted(listed(w)) == before
    assert not [p for p in w.boxes.iterdir() if p.name.startswith(".new-")]


def in_box(root: Path) -> list[str]:
    """The names of the processes whose root directory is `root`."""
    want = os.stat(root)
    names = []
    for proc in Path("/proc").iterdir():
        with contextlib.suppress(OSError):
            seen = os.stat(proc / "root")
            if (seen.st_dev, seen.st_ino) == (want.st_dev, want.st_ino):
                names.append((proc / "comm").read_text().strip())
    return names


def test_rm_refuses_a_box_in_use_unless_forced(world: World) -> None:
    w = world
    w.box("create", "busy")
    env = {**os.environ, "HOME": str(w.home)}
    sleeper = subprocess.Popen(
        [sys.executable, "-m", "petra", "box", "run", "--sysroot", w.sysroot, "busy", "--",
         "sleep", "600"], env=env,
    )  # fmt: skip
    try:
        for _ in range(300):  # until `sleep` runs in the box
            if "sleep" in in_box(w.boxes / "busy/root"):
                break
            time.sleep(0.1)
        one_line_error(w.box("rm", "busy", check=False), "in use", "--force")
        assert "busy" in listed(w)
        root = w.boxes / "busy/root"
        w.box("rm", "busy", "--force")
        assert sleeper.wait(timeout=60) != 0
        assert not root.exists()
    finally:
        sleeper.kill()
        sleeper.wait()
    assert "busy" not in listed(w) and not (w.boxes / "busy").exists()


def test_a_killed_create_leaves_no_box_and_the_next_create_works(
    world: World, kill_seed: int
) -> None:
    w = world
    rng = random.Random(kill_seed)
    env = {**os.environ, "HOME": str(w.home)}
    argv = [sys.executable, "-m", "petra", "box", "create", "--sysroot", str(w.sysroot),
            "--cache", str(w.cache), "half"]  # fmt: skip
    start = time.monotonic()
    subprocess.run(argv, env=env, check=True, capture_output=True, timeout=900)
    window = time.monotonic() - start
    w.box("rm", "half")
    for _ in range(3):
        proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        time.sleep(rng.uniform(0, window))
        proc.kill()
        proc.wait()
        assert not frozen(w.sysroot.parent.parent), f"frozen after a kill (seed {kill_seed})"
        if "half" in listed(w):  # it finished before the kill: start again
            w.box("rm", "half")
            continue
        assert not (w.boxes / "half").exists()
    w.box("create", "half")
    assert run(w, "half", "echo ok").stdout.strip() == "ok"
    assert not [p for p in w.boxes.iterdir() if p.name.startswith((".new-", ".rm-"))]
    w.box("rm", "half")
