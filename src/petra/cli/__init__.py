"""The `petra` command: parsing and printing only. The one place errors become exit codes."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from petra import __version__
from petra.errors import PetraError


def build_parser(words: Sequence[str] = ()) -> argparse.ArgumentParser:
    """The whole command line; for `petra box ...` only the box verbs, so that running a command
    in a box does not load the ostree bindings and compose machinery first."""
    common = argparse.ArgumentParser(add_help=False)
    # SUPPRESS: given before or after the command, the flag is kept (no default overwrites it)
    common.add_argument(
        "--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks for errors"
    )
    common.add_argument(
        "--quiet", "-q", action="store_true", default=argparse.SUPPRESS, help="no progress output"
    )
    parser = argparse.ArgumentParser(
        prog="petra",
        parents=[common],
        description="Compose, ship, deploy and update an immutable Debian.",
    )
    parser.add_argument("--version", action="version", version=f"petra {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    from petra.cli import box as box_cli

    if "box" not in words:
        from petra.cli import compose as compose_cli
        from petra.cli import demo as demo_cli
        from petra.cli import device as device_cli
        from petra.cli import machine as machine_cli

        compose_cli.register(sub, common)
        device_cli.register(sub, common)
        machine_cli.register(sub, common)
        demo_cli.register(sub, common)
    box_cli.register(sub, common)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the exit code. User errors print one line (traceback with --debug)."""
    words = list(sys.argv[1:] if argv is None else argv)
    first = next((w for w in words if not w.startswith("-")), "")
    parser = build_parser([first])
    # Everything after the first "--" is a command to run (vm run, enter), never parsed:
    # argparse's own "--" handling does not reach into nested subcommands.
    tail = None
    if "--" in words:
        cut = words.index("--")
        words, tail = words[:cut], words[cut + 1 :]
    args = parser.parse_args(words)
    if tail is not None:
        if not hasattr(args, "command") or not isinstance(args.command, list):
            parser.error("'--' is only for commands that run a command (vm run, enter, box run)")
        args.command = [*args.command, *tail]
    debug = bool(getattr(args, "debug", False)) or os.environ.get("PETRA_DEBUG") == "1"
    try:
        code: int = args.func(args)
        return code
    except PetraError as e:
        if debug:
            raise
        print(f"petra: error: {e}", file=sys.stderr)
        return e.exit_code
    except BrokenPipeError:
        sys.stderr.close()  # the reader (e.g. `head`) went away: not an error
        return 0
    except KeyboardInterrupt:
        print("petra: interrupted", file=sys.stderr)
        return 130
