"""GRUB's environment block (/boot/grub/grubenv): the one file GRUB itself reads and writes
before any kernel runs, so the place to count boot attempts.

The block is exactly 1024 bytes: a header line, `name=value` lines, `#` padding. GRUB's
`save_env` rewrites it in place; petra writes a whole new block beside it and renames it over
the old one, so a power cut leaves the old block or the new one, never a torn one.
"""

from __future__ import annotations

from pathlib import Path

from petra import durable

SIZE = 1024
HEADER = "# GRUB Environment Block\n"


def path_of(sysroot: Path) -> Path:
    """Where GRUB keeps the environment block of the sysroot's bootloader."""
    return sysroot / "boot/grub/grubenv"


def parse(data: bytes) -> dict[str, str]:
    """The variables of a block; empty for a missing or damaged one (as GRUB treats it)."""
    text = data.decode(errors="replace")
    if not text.startswith(HEADER):
        return {}
    found = {}
    for line in _unescape_lines(text[len(HEADER) :]):
        if line.startswith("#"):
            break
        name, sep, value = line.partition("=")
        if sep and name:
            found[name] = value
    return found


def render(variables: dict[str, str]) -> bytes:
    """A block holding `variables` (in order), padded to SIZE. ValueError if they do not fit
    or a name is not one GRUB can read."""
    body = HEADER
    for name, value in variables.items():
        if not name or not all(c.isalnum() or c == "_" for c in name):
            raise ValueError(f"not a GRUB variable name: {name!r}")
        escaped = value.replace("\\", "\\\\").replace("\n", "\\\n")
        body += f"{name}={escaped}\n"
    data = body.encode()
    if len(data) > SIZE:
        raise ValueError(f"the GRUB environment would take {len(data)} bytes, over {SIZE}")
    return data + b"#" * (SIZE - len(data))


def read(path: Path) -> dict[str, str]:
    """The variables in the block at `path`; empty if there is none."""
    try:
        return parse(path.read_bytes())
    except FileNotFoundError:
        return {}


def update(path: Path, changes: dict[str, str | None]) -> None:
    """Set (a string) or unset (None) variables of the block at `path`, keeping the others:
    a new block written, synced and renamed over the old one. OSError if /boot is not
    writable (the old block is then unchanged)."""
    variables = read(path)
    for name, value in changes.items():
        if value is None:
            variables.pop(name, None)
        else:
            variables[name] = value
    durable.replace(path, render(variables))


def _unescape_lines(text: str) -> list[str]:
    """Split on newlines that are not escaped, undoing GRUB's backslash escapes."""
    lines, current, i = [], "", 0
    while i < len(text):
        c = text[i]
        if c == "\\" and i + 1 < len(text):
            current += text[i + 1]
            i += 2
            continue
        if c == "\n":
            lines.append(current)
            current = ""
        else:
            current += c
        i += 1
    if current:
        lines.append(current)
    return lines
