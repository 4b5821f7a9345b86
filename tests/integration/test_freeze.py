"""The thaw guard: petra SIGKILLed inside libostree's freeze window leaves nothing frozen.

A small LD_PRELOAD shim (built here with gcc) makes `ioctl()` sleep right after a successful
FIFREEZE and report the pid that froze; the test then SIGKILLs petra. The sysroot lives on the
test run's loop-mounted file system, never on the machine's own. The same kill without the
guard (a switch only tests set) must leave the file system frozen: the test can fail.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.integration.conftest import Releases, petra
from tests.integration.sysroots import frozen

pytestmark = pytest.mark.integration

SHIM = r"""
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>
#include <linux/fs.h>

int ioctl(int fd, unsigned long request, ...) {
    static int (*real)(int, unsigned long, void *);
    va_list ap;
    va_start(ap, request);
    void *arg = va_arg(ap, void *);
    va_end(ap);
    if (!real)
        real = (int (*)(int, unsigned long, void *))dlsym(RTLD_NEXT, "ioctl");
    int result = real(fd, request, arg);
    if (request == FIFREEZE && result == 0) {
        const char *path = getenv("FREEZE_SHIM_PIDFILE");
        FILE *out = path ? fopen(path, "w") : NULL;
        if (out) {
            fprintf(out, "%d\n", getpid());
            fclose(out);
        }
        sleep(3600);
    }
    return result;
}
"""


@pytest.fixture(scope="module")
def shim(tmp_path_factory: pytest.TempPathFactory) -> Path:
    where = tmp_path_factory.mktemp("shim")
    (where / "shim.c").write_text(SHIM)
    subprocess.run(
        ["gcc", "-shared", "-fPIC", "-o", where / "shim.so", where / "shim.c", "-ldl"],
        check=True,
        timeout=120,
    )
    return where / "shim.so"


def kill_inside_the_freeze(sysroot: Path, shim: Path, pidfile: Path, guarded: bool) -> None:
    """Run `petra rollback`, wait until it has frozen boot/'s file system, SIGKILL it."""
    env = {**os.environ, "LD_PRELOAD": str(shim), "FREEZE_SHIM_PIDFILE": str(pidfile)}
    if not guarded:
        env["PETRA_TEST_DISABLE_THAW_GUARD"] = "1"
    proc = subprocess.Popen(
        [sys.executable, "-m", "petra", "rollback", "--sysroot", sysroot, "-q"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 300
        while not (pidfile.exists() and pidfile.read_text().strip()):
            assert proc.poll() is None, "petra finished without freezing"
            assert time.monotonic() < deadline, "petra never reached the freeze"
            time.sleep(0.05)
        froze = int(pidfile.read_text())
        os.kill(froze, signal.SIGKILL)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
        pidfile.unlink(missing_ok=True)


def test_a_kill_inside_the_freeze_window_leaves_nothing_frozen(
    releases: Releases, testfs: Path, shim: Path, tmp_path: Path
) -> None:
    sysroot = testfs / "sysroots" / "freeze-window"
    petra("init", "--sysroot", sysroot)
    petra("deploy", "--sysroot", sysroot, "--repo", releases.repo, releases.v1)
    petra("deploy", "--sysroot", sysroot, "--repo", releases.repo, releases.v2)
    pidfile = tmp_path / "froze.pid"  # on the machine's file system: never frozen

    kill_inside_the_freeze(sysroot, shim, pidfile, guarded=False)
    assert frozen(testfs), "without the guard the kill must leave it frozen"

    kill_inside_the_freeze(sysroot, shim, pidfile, guarded=True)
    assert not frozen(testfs), "the thaw guard did not thaw the file system"
    status = petra("status", "--sysroot", sysroot, "--json")
    assert status.stdout.count('"commit"') == 2
    petra("rollback", "--sysroot", sysroot)  # the sysroot is usable afterwards
