"""How long-running work reports progress without printing itself (the CLI hands in a Reporter)."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Protocol, TextIO


class Reporter(Protocol):
    """Receives progress from the library. Implementations decide whether and where to print."""

    def step(self, name: str, detail: str = "") -> None:
        """A named step starts."""

    def info(self, line: str) -> None:
        """A line of detail inside the current step (tool output, counts)."""

    def done(self, name: str, seconds: float, detail: str = "") -> None:
        """A named step finished."""


class SilentReporter:
    """Reports nothing (`--quiet`, tests)."""

    def step(self, name: str, detail: str = "") -> None:
        pass

    def info(self, line: str) -> None:
        pass

    def done(self, name: str, seconds: float, detail: str = "") -> None:
        pass


class TerminalReporter:
    """Prints one line per step and its time on stderr, so stdout stays for results."""

    def __init__(self, stream: TextIO = sys.stderr, verbose: bool = False) -> None:
        self.stream = stream
        self.verbose = verbose

    def step(self, name: str, detail: str = "") -> None:
        print(f"==> {name}" + (f": {detail}" if detail else ""), file=self.stream, flush=True)

    def info(self, line: str) -> None:
        print(f"    {line}", file=self.stream, flush=True)

    def done(self, name: str, seconds: float, detail: str = "") -> None:
        extra = f", {detail}" if detail else ""
        print(f"    {name} done in {seconds:.1f} s{extra}", file=self.stream, flush=True)


@contextmanager
def timed_step(reporter: Reporter, name: str, detail: str = "") -> Iterator[dict[str, str]]:
    """Report a step's start and end with its duration; the body may set result['detail']."""
    reporter.step(name, detail)
    start = time.monotonic()
    result: dict[str, str] = {}
    yield result
    reporter.done(name, time.monotonic() - start, result.get("detail", ""))
