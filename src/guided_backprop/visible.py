"""Names from the user's files, made safe to show: on the terminal and in the report alike.

A file name can hold characters that change how the text around it is displayed without being seen
themselves: a right-to-left override (``holiday\\u202egnp.exe`` shows as "holidayexe.png"), other
bidirectional controls, zero-width characters, terminal escape sequences (``\\x1b[2J``), newlines
that forge a second line of output, and undecodable bytes (surrogate escapes). :func:`visible`
spells each such character as its Python escape, so what is shown is what is there.
"""

from __future__ import annotations

__all__ = ["passed_over_line", "visible"]


def visible(text: object) -> str:
    """``str(text)`` with every character that is not printable shown as its escape (``\\u202e``, ``\\x1b``,
    ``\\n``, ``\\udcff``); letters of every script, spaces and punctuation are kept as they are."""
    s = str(text)
    if s.isprintable():
        return s
    return "".join(ch if ch.isprintable() else repr(ch)[1:-1] for ch in s)


def passed_over_line(path: object, reason: str) -> str:
    """The one line every command prints for an input it passes over: ``skipped: 'PATH': REASON``."""
    return f"skipped: {visible(repr(str(path)))}: {visible(reason)}"
