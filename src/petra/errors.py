"""One tree of errors. Each carries a one-line message and a hint; the CLI prints both on one line.

Grouped by whose fault it is, as python-tuf does: the user's input, the archive or mirror,
the repository, the local system (tools, space, locks).
"""

from __future__ import annotations


class PetraError(Exception):
    """An error a user can act on. `message` says what is wrong, `hint` what to do."""

    exit_code = 1

    def __init__(self, message: str, hint: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message if not self.hint else f"{self.message} (hint: {self.hint})"


class UsageError(PetraError):
    """Bad command-line input."""

    exit_code = 2


class SpecError(PetraError):
    """The spec file (or one it includes) is invalid. Raised before any work is done."""

    exit_code = 2


class ArchiveError(PetraError):
    """The Debian archive: unreachable mirror, unknown suite, unknown or uninstallable package."""


class RepoError(PetraError):
    """The OSTree repository: missing, not a repo, unknown ref or commit."""


class ToolError(PetraError):
    """An external tool failed. The message names the exact command so it can be rerun."""


class LockedError(PetraError):
    """Another petra process holds the lock on the same repository or cache."""


class IntegrityError(PetraError):
    """A deployment's files differ from its commit (petra verify found them)."""

    exit_code = 3


class SpaceError(PetraError):
    """A file system of the sysroot has too little room for the command (nothing written)."""
