"""The pure parts of image build and vm run: sizes, kernel arguments, credentials, results."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest

from petra.compose.rootfs import dracut_conf
from petra.errors import UsageError
from petra.image import human, kernel_args, needed_size, parse_size
from petra.vm import (
    Machine,
    command_credentials,
    command_script,
    credential,
    image_format,
    parse_result,
    qemu_argv,
)

pytestmark = pytest.mark.unit


def test_sizes_parse_in_powers_of_1024() -> None:
    assert parse_size("4G") == 4 << 30
    assert parse_size("4096M") == 4 << 30
    assert parse_size("2.5GiB") == 5 << 29
    assert parse_size("1048576") == 1 << 20
    for bad in ("", "4X", "-1G", "G", "4 G B"):
        with pytest.raises(UsageError):
            parse_size(bad)


def test_needed_size_grows_with_the_tree_and_is_whole_mib() -> None:
    small, large = needed_size(100_000_000), needed_size(400_000_000)
    assert small % (1 << 20) == 0 and large % (1 << 20) == 0
    assert large - small >= 300_000_000
    assert small > 100_000_000 + (256 << 20)
    assert human(large) == f"{-(-large // (1 << 20))} MiB"
    assert human(6 << 29) == "3.0 GiB"


def test_the_first_kernel_command_line_names_the_root_first() -> None:
    args = kernel_args("1234-abcd", ["console=ttyS0,115200"])
    assert args == [
        "root=UUID=1234-abcd",
        "rw",
        "panic=10",
        "rd.shell=0",
        "rd.emergency=reboot",
        "console=ttyS0,115200",
    ]


def test_credentials_double_commas_for_qemu() -> None:
    cred = credential("x", "a,b")
    assert cred == "type=11,value=io.systemd.credential:x=a,,b"


def test_the_command_travels_quoted_and_the_unit_powers_off() -> None:
    script = command_script(["sh", "-c", "echo 'a b'; exit 7"]).decode()
    assert script.endswith("exec sh -c 'echo '\"'\"'a b'\"'\"'; exit 7'\n")
    creds = command_credentials(["true"], "MARK123", share=True)
    unit = next(c for c in creds if "extra-unit.petra-run.service" in c)
    assert "SuccessAction=poweroff-force" in unit and "FailureAction=poweroff-force" in unit
    assert "MARK123 $${EXIT_STATUS:-none}" in unit
    # after the boot is judged (a bad boot on trial reboots first), and after the share
    assert "After=multi-user.target petra-health.service run-petra" in unit
    assert "{" not in unit.replace("${", "")  # every format field was filled
    dropin = next(c for c in creds if "unit-dropin.multi-user.target" in c)
    assert "Wants=petra-run.service run-petra-share.mount" in dropin
    binary = next(c for c in creds if "credential.binary:petra.command=" in c)
    assert base64.b64decode(binary.split("=", 3)[3]) == command_script(["true"])
    assert not any("run-petra-share" in c for c in command_credentials(["true"], "M", False))


def test_results_split_output_from_the_closing_line() -> None:
    mark = "petra-vm-exit-00ff"
    assert parse_result(b"hello\r\n", mark) == ("hello\n", None)
    assert parse_result(b"hello\r\n" + mark.encode() + b" 7", mark) == (f"hello\n{mark} 7", None)
    assert parse_result(f"hi\n{mark} 7 exit-code\r\n".encode(), mark) == ("hi\n", 7)
    assert parse_result(f"{mark} 0 success\n".encode(), mark) == ("", 0)
    assert parse_result(f"{mark} KILL signal\n".encode(), mark)[1] == 129
    # Output that prints the prefix of the mark does not end the command.
    assert parse_result(b"petra-vm-exit-\n", mark) == ("petra-vm-exit-\n", None)


def test_qemu_has_no_network_and_a_read_only_share(tmp_path: Path) -> None:
    image = tmp_path / "disk.img"
    image.write_bytes(b"QFI\xfb" + bytes(60))
    assert image_format(image) == "qcow2"
    machine = Machine(image=image, share=tmp_path, memory=1024, cpus=1)
    argv = qemu_argv(machine, "tcg", "qcow2", ["file:/c", "file:/r"])
    assert argv[argv.index("-nic") + 1] == "none"
    assert argv[argv.index("-accel") + 1] == "tcg"
    assert f"file={image},format=qcow2,if=virtio" in argv
    assert argv.count("-serial") == 2
    assert "-nodefaults" in argv  # no floppy, CD-ROM or VGA to probe
    assert any(a.startswith(f"local,path={tmp_path},") and a.endswith("readonly=on") for a in argv)
    (tmp_path / "raw.img").write_bytes(bytes(64))
    assert image_format(tmp_path / "raw.img") == "raw"


def test_the_initramfs_carries_only_what_a_petra_boot_needs() -> None:
    conf = dracut_conf("amd64")
    assert 'add_dracutmodules+=" ostree systemd "' in conf
    omitted = conf.split('omit_dracutmodules+="')[1].split('"')[0].split()
    assert {"hwdb", "plymouth", "network", "resume"} <= set(omitted)
    assert not {"ostree", "systemd", "rootfs-block"} & set(omitted)
    drivers = conf.split('drivers="')[1].split('"')[0].split()
    assert {"virtio_blk", "ahci", "nvme", "ext4", "usb_storage"} <= set(drivers)
    # Architectures without a tested driver list keep dracut's generic set.
    assert "drivers=" not in dracut_conf("arm64")
