"""Pure parts of petra box: names, identity files, launchers and .desktop files, bwrap lines."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest

from petra import box
from petra.errors import UsageError

pytestmark = pytest.mark.unit


def make_box(tmp_path: Path, network: bool = True) -> box.Box:
    root = tmp_path / "dev" / "root"
    (root / "etc").mkdir(parents=True)
    (root / "bin").mkdir()
    (root / "bin/bash").write_text("")
    (root / "etc/passwd").write_text("root:x:0:0:root:/root:/bin/bash\n")
    (root / "etc/group").write_text("root:x:0:\n")
    return box.Box(tmp_path / "dev", "dev", "trixie", "amd64", "http://m", ("htop",), network, 0.0)


@pytest.mark.parametrize("name", ["dev", "a", "my-box_2.1", "x" * 64])
def test_good_names(name: str) -> None:
    box.check_name(name)


@pytest.mark.parametrize("name", ["a/b", "..", "a..b", "with space", "x" * 65, "", "-x", ".x"])
def test_bad_names_are_refused(name: str) -> None:
    with pytest.raises(UsageError):
        box.check_name(name)


def test_identity_files_add_an_unknown_caller_only(tmp_path: Path) -> None:
    b = make_box(tmp_path)
    alice = box.Caller(1000, 1000, "alice", Path("/home/alice"), "/bin/zsh")
    passwd, group = box.identity_files(b, alice)
    assert passwd is not None and passwd.endswith("alice:x:1000:1000::/home/alice:/bin/bash\n")
    assert passwd.startswith("root:x:0:0:")  # the box's own entries stay
    assert group == "root:x:0:\nalice:x:1000:\n"
    root = box.Caller(0, 0, "root", Path("/root"), "/bin/bash")
    assert box.identity_files(b, root) == (None, None)


def test_bwrap_line_isolates_and_maps_the_caller(tmp_path: Path) -> None:
    b = make_box(tmp_path, network=False)
    alice = box.Caller(1000, 1000, "alice", tmp_path, "/bin/bash")
    argv = box.bwrap_argv(b, ["vim", "x y"], alice, network=False, cwd="/")
    assert argv[:4] == ["bwrap", "--bind", str(b.root), "/"]
    for flag in ("--unshare-pid", "--unshare-ipc", "--unshare-uts", "--unshare-net"):
        assert flag in argv
    assert ["--bind", str(tmp_path), str(tmp_path)] == argv[argv.index(str(tmp_path)) - 1 :][:3]
    assert "--cap-add" not in argv  # a user gets no capabilities
    assert argv[-5:] == ["/bin/sh", "-c", 'exec "$0" "$@"', "vim", "x y"]
    root = box.Caller(0, 0, "root", Path("/root"), "/bin/bash")
    as_root = box.bwrap_argv(b, ["true"], root, network=True, cwd="/")
    assert "--unshare-net" not in as_root and "CAP_CHOWN" in as_root and "CAP_MKNOD" not in as_root


def test_launcher_and_desktop_file(tmp_path: Path) -> None:
    b = make_box(tmp_path)
    root = box.Caller(0, 0, "root", Path("/root"), "/bin/bash")
    text = box.launcher_text(b, "htop", root, ["/usr/bin/python3", "-m", "petra"])
    assert text.startswith("#!/bin/sh\n") and "# petra-box: dev htop\n" in text
    assert text.rstrip().endswith('exec /usr/bin/python3 -m petra box run dev -- htop "$@"')
    source = "[Desktop Entry]\nName=Htop\nTryExec=htop\nExec=htop %F\nType=Application\n"
    launcher = tmp_path / "bin/htop"
    desktop = box.desktop_text(source, b, launcher)
    assert f"Exec={launcher} %F" in desktop and "Name=Htop (dev)" in desktop
    assert "TryExec" not in desktop and "X-Petra-Box=dev" in desktop
    home = tmp_path / "home"
    (home / ".local/bin").mkdir(parents=True)
    (home / ".local/bin/htop").write_text(text)
    (home / ".local/bin/other").write_text("#!/bin/sh\n")
    assert box.all_exports("dev", home) == ["htop"]
    assert box.exported_files("dev", "htop", home) == [home / ".local/bin/htop"]
    assert box.exported_files("other-box", "htop", home) == []


def test_launcher_fast_path_starts_bwrap_as_box_run_would_and_falls_back(tmp_path: Path) -> None:
    """The launcher run for real, with stand-ins for bwrap and petra that record their
    arguments: the fast path gets the box's bwrap line, the caller's directory and variables
    and the caller's passwd line on fd 7; a changed passwd in the box sends it to petra."""
    b = make_box(tmp_path)
    (b.root / "usr/bin").mkdir(parents=True)
    (b.root / "usr/bin/htop").write_text("")
    (b.root / "usr/bin/htop").chmod(0o755)
    (b.path / "lock").touch()
    home = tmp_path / "home"
    (home / "src").mkdir(parents=True)
    alice = box.Caller(1000, 1000, "alice", home, "/bin/bash")
    fake = tmp_path / "fake"
    fake.mkdir()
    (fake / "bwrap").write_text(
        f"#!/bin/sh\nprintf '%s\\n' \"$@\" >{tmp_path}/args; cat <&7 >{tmp_path}/passwd\n"
    )
    (fake / "petra").write_text(f'#!/bin/sh\necho "$@" >{tmp_path}/slow\n')
    for tool in fake.iterdir():
        tool.chmod(0o755)
    launcher = home / ".local/bin/htop"
    launcher.parent.mkdir(parents=True)
    launcher.write_text(box.launcher_text(b, "htop", alice, [str(fake / "petra")], [], launcher))
    launcher.chmod(0o755)
    env = {"HOME": str(home), "PATH": f"{fake}:/usr/bin:/bin", "TERM": "xterm-kitty"}

    subprocess.run([launcher, "a b", "c"], cwd=home / "src", env=env, check=True, timeout=30)
    args = (tmp_path / "args").read_text().splitlines()
    expected = box.bwrap_argv(b, ["/usr/bin/htop"], alice, network=True, cwd=str(home / "src"),
                              passwd_fd=7, group_fd=8, passed_env={}, direct=True)  # fmt: skip
    assert ["bwrap", *args[: args.index("--")]] == expected[: expected.index("--")] + [
        "--setenv", "TERM", "xterm-kitty",
    ]  # fmt: skip
    assert args[args.index("--") :] == ["--", "/usr/bin/htop", "a b", "c"]
    assert (tmp_path / "passwd").read_text().endswith(f"alice:x:1000:1000::{home}:/bin/bash\n")
    assert not (tmp_path / "slow").exists()

    later = time.time() + 10  # the box's passwd changed after the launcher was made
    os.utime(b.root / "etc/passwd", (later, later))
    subprocess.run([launcher, "x"], cwd=tmp_path, env=env, check=True, timeout=30)
    assert (tmp_path / "slow").read_text() == "box run dev -- htop x\n"
