"""The vm tier: the composed server spec as a disk image, booted in qemu (TCG), checked from inside.

One image per session; every test boots its own copy-on-write overlay of it (qemu-img create -b),
so no test changes what another sees. A boot under TCG costs about a minute here.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.conftest import Composed, petra

pytestmark = pytest.mark.integration

# A boot plus the command: generous, since TCG on a busy 2-core machine is slow. petra vm run
# stops the VM itself at --timeout; the subprocess timeout is only a backstop (no sysroot on
# the host is written by vm run, so a kill cannot freeze anything).
VM_TIMEOUT = 420


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


def vm(disk: Path, *command: str, accel: str = "tcg") -> subprocess.CompletedProcess[str]:
    return petra(
        "vm",
        "run",
        disk,
        "--accel",
        accel,
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


# One boot checks the booted system; what it prints is parsed by the test.
HEALTH = r"""
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
"""


def fields(output: str) -> dict[str, str]:
    return dict(line.split(": ", 1) for line in output.splitlines() if ": " in line)


def test_the_image_boots_a_healthy_read_only_system(disk: Path, server: Composed) -> None:
    first = vm(disk, "sh", "-c", HEALTH)
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
    # The next boot of the same disk: /var and /etc kept, exit codes pass through.
    second = vm(disk, "sh", "-c", "cat /var/lib/petra-test/marker /etc/petra-test; exit 7")
    assert second.returncode == 7, second.stderr[-3000:]
    assert second.stdout == "kept\nchanged\n"


def test_false_exits_1_and_auto_says_which_accelerator(disk: Path) -> None:
    result = vm(disk, "false", accel="auto")
    assert result.returncode == 1, result.stderr[-3000:]
    assert "accel: kvm" in result.stderr or "accel: tcg" in result.stderr, result.stderr


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
