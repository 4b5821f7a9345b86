"""petra image build / vm run: a commit becomes a disk, and the disk boots in qemu."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from petra import image, vm
from petra.cli.output import reporter_for


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    p = sub.add_parser("image", parents=[common], help="build a bootable disk image")
    verbs = p.add_subparsers(dest="verb", metavar="VERB", required=True)
    b = verbs.add_parser("build", parents=[common], help="a disk image of a commit (BIOS, GRUB)")
    b.add_argument("--repo", type=Path, required=True, help="the repository holding REF")
    b.add_argument("rev", metavar="REF|COMMIT")
    b.add_argument("-o", "--output", type=Path, required=True, help="the image file to write")
    b.add_argument(
        "--size", type=image.parse_size, default=image.DEFAULT_SIZE, help="disk size (default 4G)"
    )
    b.add_argument("--force", action="store_true", help="replace an existing image")
    b.add_argument(
        "--remote-url",
        default=image.DEFAULT_REMOTE_URL,
        help="where the booted system looks for updates (default: the folder `vm run --share` "
        "shares)",
    )
    b.set_defaults(func=cmd_image_build)

    p = sub.add_parser("vm", parents=[common], help="boot a disk image in qemu")
    verbs = p.add_subparsers(dest="verb", metavar="VERB", required=True)
    r = verbs.add_parser(
        "run", parents=[common], help="boot an image: a console, or run one command and power off"
    )
    r.add_argument("image", type=Path, help="a raw or qcow2 disk image")
    r.add_argument("--share", type=Path, help=f"a host folder, mounted at {vm.SHARE_MOUNT}")
    r.add_argument("--memory", type=int, default=2048, metavar="MIB")
    r.add_argument("--cpus", type=int, default=2)
    r.add_argument("--accel", choices=("auto", "kvm", "tcg"), default="auto")
    r.add_argument(
        "--timeout",
        type=int,
        default=vm.DEFAULT_TIMEOUT,
        metavar="SECONDS",
        help="with a command: give up (and stop the VM) after this long",
    )
    r.add_argument("--console", type=Path, help="also write the serial console to this file")
    r.add_argument("command", nargs="*", metavar="-- CMD", help="run CMD as root, then power off")
    r.set_defaults(func=cmd_vm_run)


def cmd_image_build(args: argparse.Namespace) -> int:
    result = image.build(
        args.repo,
        args.rev,
        args.output,
        reporter_for(args),
        size=args.size,
        force=args.force,
        remote_url=args.remote_url,
    )
    print(
        f"{result.path}: {result.version or result.checksum[:12]}, "
        f"{image.human(result.size)} disk, {image.human(result.used)} used, "
        f"built in {result.seconds:.1f} s"
    )
    return 0


def cmd_vm_run(args: argparse.Namespace) -> int:
    command = args.command
    machine = vm.Machine(
        image=args.image,
        share=args.share,
        memory=args.memory,
        cpus=args.cpus,
        accel=args.accel,
        console=args.console,
    )
    reporter = reporter_for(args)
    if not command:
        return vm.interactive(machine, reporter)
    result = vm.run_command(machine, command, reporter, timeout=args.timeout, output=sys.stdout)
    return result.exit_code
