"""petra box create / enter / run / export / unexport / list / upgrade / rm: app containers."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from petra import box as boxes_
from petra.cli.output import date, human_size, print_json, reporter_for
from petra.errors import UsageError


def register(sub: Any, common: argparse.ArgumentParser) -> None:
    where = argparse.ArgumentParser(add_help=False)
    where.add_argument(
        "--sysroot",
        type=Path,
        default=Path("/"),
        help="the system whose /var holds the boxes (default: / , this machine)",
    )
    p = sub.add_parser("box", help="app containers beside the read-only system")
    verbs = p.add_subparsers(dest="verb", metavar="VERB", required=True)

    v = verbs.add_parser("create", parents=[common, where], help="make a box")
    v.add_argument("name")
    v.add_argument("--suite", default="trixie", help="Debian suite (default: trixie)")
    v.add_argument(
        "--packages", default="", help="packages beyond a minimal Debian, comma-separated"
    )
    v.add_argument("--no-network", action="store_true", help="commands in it have no network")
    v.add_argument("--mirror", default="http://deb.debian.org/debian", help="Debian mirror")
    v.add_argument(
        "--cache",
        type=Path,
        default=None,
        help="package cache (default: $PETRA_CACHE or ~/.cache/petra)",
    )
    v.set_defaults(func=cmd_create)

    v = verbs.add_parser("enter", parents=[common, where], help="an interactive shell in a box")
    v.add_argument("name")
    v.set_defaults(func=cmd_enter)

    v = verbs.add_parser("run", parents=[common, where], help="run a command in a box")
    v.add_argument("name")
    v.add_argument("command", nargs="*", metavar="-- CMD")
    v.set_defaults(func=cmd_run)

    v = verbs.add_parser("export", parents=[common, where], help="a launcher in ~/.local/bin")
    v.add_argument("name")
    v.add_argument("app")
    v.set_defaults(func=cmd_export)

    v = verbs.add_parser("unexport", parents=[common, where], help="remove a launcher")
    v.add_argument("name")
    v.add_argument("app")
    v.set_defaults(func=cmd_unexport)

    v = verbs.add_parser("list", parents=[common, where], help="list the boxes")
    v.add_argument("--json", action="store_true")
    v.set_defaults(func=cmd_list)

    v = verbs.add_parser("upgrade", parents=[common, where], help="apt full-upgrade in a box")
    v.add_argument("name")
    v.set_defaults(func=cmd_upgrade)

    v = verbs.add_parser("rm", parents=[common, where], help="remove a box")
    v.add_argument("name")
    v.add_argument("--force", action="store_true", help="even if in use: stop its processes")
    v.set_defaults(func=cmd_rm)


def boxes_of(sysroot: Path) -> boxes_.Boxes:
    """The boxes of the system at `sysroot`: /var/lib/petra/boxes for this machine, the
    stateroot's var/lib/petra/boxes for another sysroot. UsageError if it is not a sysroot."""
    if sysroot.resolve() == Path("/"):
        return boxes_.Boxes(boxes_.SYSTEM_BOXES)
    from petra.stateroot import var_of

    return boxes_.Boxes(var_of(sysroot) / "lib/petra/boxes")


def where_args(sysroot: Path) -> list[str]:
    """The options that find the boxes of `sysroot` again (for a launcher)."""
    return [] if sysroot.resolve() == Path("/") else ["--sysroot", str(sysroot.resolve())]


def cmd_create(args: argparse.Namespace) -> int:
    from petra.compose.cache import default_cache_dir
    from petra.spec import host_architecture

    packages = [p.strip() for p in args.packages.split(",") if p.strip()]
    box, build = boxes_.create(
        boxes_of(args.sysroot),
        args.name,
        suite=args.suite,
        packages=packages,
        network=not args.no_network,
        mirror=args.mirror,
        architecture=host_architecture(),
        cache_dir=args.cache or default_cache_dir(),
        reporter=reporter_for(args),
    )
    extra = f" + {', '.join(box.packages)}" if box.packages else ""
    network = "" if box.network else ", no network"
    print(f"box {box.name}: Debian {box.suite}{extra} ({build} package tree{network})")
    print(f"enter it: petra box enter {box.name}")
    return 0


def _exec(box: boxes_.Box, command: list[str], network: bool | None = None) -> int:
    """Become bwrap running `command` in the box (network: the box's own setting if None)."""
    caller = boxes_.Caller.current()
    passwd, group = boxes_.identity_files(box, caller)
    argv = boxes_.bwrap_argv(
        box,
        command,
        caller,
        network=box.network if network is None else network,
        passwd_fd=boxes_.data_fd(passwd) if passwd else None,
        group_fd=boxes_.data_fd(group) if group else None,
    )
    boxes_.hold(box)
    sys.stdout.flush()
    sys.stderr.flush()
    os.execvp(argv[0], argv)  # noqa: S606 (petra becomes bwrap: the exit code is CMD's)


def cmd_run(args: argparse.Namespace) -> int:
    box = boxes_of(args.sysroot).get(args.name)
    command = list(args.command)
    if not command:
        raise UsageError("no command to run", f"petra box run {args.name} -- CMD ARGS...")
    return _exec(box, command)


def cmd_enter(args: argparse.Namespace) -> int:
    box = boxes_of(args.sysroot).get(args.name)
    if not sys.stdin.isatty():
        raise UsageError(
            "petra box enter needs a terminal", f"without one: petra box run {args.name} -- CMD"
        )
    shell = boxes_.shell_in(box, boxes_.Caller.current())
    return _exec(box, [shell, "-l"])


def cmd_export(args: argparse.Namespace) -> int:
    box = boxes_of(args.sysroot).get(args.name)
    caller = boxes_.Caller.current()
    petra = [sys.executable, "-m", "petra"]
    made = boxes_.export(box, args.app, caller, petra, where_args(args.sysroot))
    for path in made:
        print(f"made {path}")
    return 0


def cmd_unexport(args: argparse.Namespace) -> int:
    box = boxes_of(args.sysroot).get(args.name)
    for path in boxes_.unexport(box, args.app, boxes_.Caller.current().home):
        print(f"removed {path}")
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    found = [(b, b.size()) for b in boxes_of(args.sysroot).list()]
    if args.json:
        print_json([{**b.to_json(), "size": size, "used": b.used} for b, size in found])
        return 0
    if not found:
        print("no boxes; make one with: petra box create NAME")
        return 0
    print(f"{'NAME':16} {'SUITE':9} {'SIZE':>9}  {'CREATED':23}  {'LAST USED':23}  PACKAGES")
    for b, size in found:
        network = "" if b.network else " (no network)"
        print(
            f"{b.name:16} {b.suite:9} {human_size(size):>9}  {date(int(b.created)):23}  "
            f"{date(int(b.used)):23}  {', '.join(b.packages) or '-'}{network}"
        )
    return 0


def cmd_upgrade(args: argparse.Namespace) -> int:
    box = boxes_of(args.sysroot).get(args.name)
    boxes_.require_root(f"upgrade {args.name}")
    script = (
        "export DEBIAN_FRONTEND=noninteractive; apt-get update -q"
        " && apt-get full-upgrade -y -q -oDPkg::Options::=--force-confold"
    )
    # An upgrade reaches the archive even in a box made without network.
    return _exec(box, ["/bin/sh", "-c", script], network=True)


def cmd_rm(args: argparse.Namespace) -> int:
    boxes_.remove(
        boxes_of(args.sysroot), args.name, force=args.force, home=boxes_.Caller.current().home
    )
    print(f"removed box {args.name}")
    return 0
