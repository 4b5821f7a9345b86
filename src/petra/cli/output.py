"""Shared printing helpers for the CLI."""

from __future__ import annotations

import json
import sys
from datetime import UTC, datetime
from typing import Any

from petra.reporting import Reporter, SilentReporter, TerminalReporter


def reporter_for(args: Any) -> Reporter:
    return SilentReporter() if getattr(args, "quiet", False) else TerminalReporter()


def print_json(data: Any) -> None:
    json.dump(data, sys.stdout, indent=2, sort_keys=True)
    sys.stdout.write("\n")


def date(timestamp: int) -> str:
    return datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def human_size(size: int) -> str:
    value = float(size)
    for unit in ("B", "KB", "MB", "GB"):
        if value < 1000 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{value:.1f} GB"
