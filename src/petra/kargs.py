"""Kernel arguments: a deployment's command line as a list of words, and the edits `petra
kargs` makes to it (append, delete, replace), each checked before anything is written.

A word is KEY or KEY=VALUE; a value with spaces is written in double quotes, as the kernel
reads it. `ostree=` is libostree's own (it names the deployment to boot) and cannot be edited.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from petra.errors import UsageError

MANAGED = ("ostree",)  # keys libostree writes for each deployment
_KEY = re.compile(r"^[A-Za-z0-9_.][A-Za-z0-9_.,:/@+-]*$")


def split(cmdline: str) -> list[str]:
    """The words of a kernel command line (double quotes keep spaces inside one word)."""
    words, word, quoted, started = [], "", False, False
    for char in cmdline:
        if char == '"':
            quoted, started = not quoted, True
            word += char
        elif char.isspace() and not quoted:
            if started:
                words.append(word)
            word, started = "", False
        else:
            word, started = word + char, True
    if started:
        words.append(word)
    return words


def key_of(word: str) -> str:
    return word.split("=", 1)[0]


def value_of(word: str) -> str | None:
    """The value of KEY=VALUE without its quotes; None for a bare KEY."""
    if "=" not in word:
        return None
    value = word.split("=", 1)[1]
    return value[1:-1] if len(value) >= 2 and value[0] == value[-1] == '"' else value


def word(key: str, value: str | None) -> str:
    if value is None:
        return key
    return f'{key}="{value}"' if any(c.isspace() for c in value) else f"{key}={value}"


def parse(text: str, option: str) -> tuple[str, str | None]:
    """KEY or KEY=VALUE as given to `option`; UsageError (with a hint) if it is no argument the
    kernel could read: an empty key, a key with spaces or odd characters, a newline or a double
    quote in the value, a key libostree manages."""
    key, sep, value = text.partition("=")
    shown = text.replace("\n", "\\n")
    if not key:
        raise UsageError(f"{option} '{shown}': the key is empty", f"use {option} KEY=VALUE")
    if not _KEY.match(key):
        raise UsageError(
            f"{option} '{shown}': '{key}' is not a kernel argument name",
            "use letters, digits and . _ - , : / @ +, as in console=ttyS0",
        )
    if key in MANAGED:
        raise UsageError(
            f"{option} '{shown}': {key}= is set by ostree for each deployment",
            "choose another argument",
        )
    if any(c in value for c in '\n\r\0"'):
        raise UsageError(
            f"{option} '{shown}': the value holds a newline or a double quote",
            "the kernel command line is one line; use a plain value",
        )
    return key, (value if sep else None)


@dataclass(frozen=True)
class Edit:
    """One requested change, in the order given on the command line."""

    action: str  # "append", "delete" or "replace"
    text: str


def apply(words: Sequence[str], edits: Sequence[Edit]) -> list[str]:
    """`words` with `edits` applied in order. UsageError if an edit cannot apply: a delete or
    replace of an argument that is not set, or a replace of a key set more than once without
    saying which value (KEY=OLD=NEW)."""
    result = list(words)
    for edit in edits:
        option = f"--{edit.action}"
        if edit.action == "append":
            key, value = parse(edit.text, option)
            result.append(word(key, value))
        elif edit.action == "delete":
            key, value = parse(edit.text, option)
            hits = [
                i for i, w in enumerate(result)
                if key_of(w) == key and (value is None or value_of(w) == value)
            ]  # fmt: skip
            if not hits:
                raise UsageError(
                    f"--delete {edit.text}: not set",
                    f"the arguments are: {' '.join(result) or '(none)'}",
                )
            result = [w for i, w in enumerate(result) if i not in hits]
        elif edit.action == "replace":
            key, value = parse(edit.text, option)
            old: str | None = None
            if value is not None and "=" in value:
                old, value = value.split("=", 1)
            hits = [
                i for i, w in enumerate(result)
                if key_of(w) == key and (old is None or value_of(w) == old)
            ]  # fmt: skip
            if not hits:
                raise UsageError(
                    f"--replace {edit.text}: {key if old is None else f'{key}={old}'} is not set",
                    f"add it with --append {key}={value or ''}".rstrip("="),
                )
            if len(hits) > 1:
                raise UsageError(
                    f"--replace {edit.text}: {key} is set {len(hits)} times",
                    f"say which: --replace {key}=OLD=NEW",
                )
            result[hits[0]] = word(key, value)
        else:
            raise ValueError(edit.action)
    return result


def editable(cmdline: str) -> list[str]:
    """The words of a deployment's options line that petra kargs shows and edits (not those
    libostree sets for each deployment)."""
    return [w for w in split(cmdline) if key_of(w) not in MANAGED]
