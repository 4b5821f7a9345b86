"""The one helper that runs external tools; on failure, ToolError names the exact command."""

from __future__ import annotations

import collections
import ctypes
import os
import shlex
import signal
import subprocess
from collections.abc import Mapping, Sequence

from petra.errors import ToolError
from petra.reporting import Reporter

_PR_SET_PDEATHSIG = 1


def _die_with_petra() -> None:
    # A child must not outlive petra (e.g. mmdebstrap writing on after petra was SIGKILLed,
    # while the next compose cleans up): the kernel kills it when petra dies.
    ctypes.CDLL(None).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def run(
    argv: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    reporter: Reporter | None = None,
    check: bool = True,
    input_text: str | None = None,
    pass_fds: Sequence[int] = (),
    hint: str = "rerun the command above to see its full output",
) -> subprocess.CompletedProcess[str]:
    """Run `argv`, capturing stdout and stderr (merged when streaming to a reporter).

    `pass_fds` are file descriptors the child inherits (every other one is closed; -1 is
    ignored).
    With a reporter, each output line is passed to reporter.info as it arrives. With check=True a
    non-zero exit raises ToolError whose message holds the command line and its last output lines.
    """
    full_env = {**os.environ, **(env or {})}
    if reporter is None:
        try:
            proc = subprocess.run(
                list(argv),
                preexec_fn=_die_with_petra,
                env=full_env,
                capture_output=True,
                text=True,
                input=input_text,
                pass_fds=tuple(fd for fd in pass_fds if fd >= 0),
                check=False,
            )
        except FileNotFoundError as e:
            raise ToolError(f"{argv[0]}: command not found", "run 'make setup'") from e
        if check and proc.returncode != 0:
            raise _failure(argv, proc.returncode, (proc.stderr or proc.stdout).splitlines(), hint)
        return proc
    tail: collections.deque[str] = collections.deque(maxlen=15)
    lines: list[str] = []
    try:
        with subprocess.Popen(
            list(argv),
            preexec_fn=_die_with_petra,
            env=full_env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            pass_fds=tuple(fd for fd in pass_fds if fd >= 0),
            text=True,
            bufsize=1,
        ) as popen:
            assert popen.stdout is not None
            for raw in popen.stdout:
                line = raw.rstrip("\n")
                lines.append(line)
                tail.append(line)
                if line.strip():
                    reporter.info(line)
            code = popen.wait()
    except FileNotFoundError as e:
        raise ToolError(f"{argv[0]}: command not found", "run 'make setup'") from e
    if check and code != 0:
        raise _failure(argv, code, list(tail), hint)
    return subprocess.CompletedProcess(list(argv), code, "\n".join(lines), "")


def _failure(argv: Sequence[str], code: int, lines: list[str], hint: str) -> ToolError:
    useful = [ln.strip() for ln in lines if ln.strip()]
    errors = [ln for ln in useful if ln.startswith(("E:", "error", "Error", "dpkg: error"))]
    last = (errors or useful or ["(no output)"])[-1]
    return ToolError(f"`{shlex.join(argv)}` failed (exit {code}): {last}", hint)
