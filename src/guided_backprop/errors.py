"""Typed errors. Every error names the offending value and what would be valid."""

from __future__ import annotations

import difflib
import enum
from collections.abc import Iterable


class ExitCode(enum.IntEnum):
    """The exit codes of every ``guided-backprop`` command (one table, documented in the README)."""

    OK = 0  #: every input done
    SOME_FAILED = 1  #: some inputs could not be read or written; each was reported, the others are done
    USAGE = 2  #: bad option, unknown model / layer / class, unusable output folder: nothing was computed
    FAILED = 3  #: the run itself failed unexpectedly (``--verbose`` shows the traceback)
    DISK_FULL = 4  #: the output folder's disk is full (or another write failed for every input): rerun to resume
    INTERRUPTED = 130  #: Ctrl-C (SIGINT): stopped cleanly, rerun the same command to finish
    TERMINATED = 143  #: SIGTERM (systemd, Slurm, ``kill``): stopped cleanly, rerun the same command to finish


class GuidedBackpropError(Exception):
    """Base class of every error this package raises on purpose.

    ``field`` names the setting at fault in the library's words (``"target"``, ``"layer"``,
    ``"weights"``...), so that a front end can name its own spelling of it (the CLI: ``--target``).
    """

    field: str | None = None

    def __init__(self, *args: object, field: str | None = None) -> None:
        super().__init__(*args)
        if field is not None:
            self.field = field


class UnknownNameError(GuidedBackpropError, LookupError):
    """A name (layer, model, method, class, ...) that does not exist."""

    def __init__(self, kind: str, value: str, choices: Iterable[str], *, hint: str = "",
                 field: str | None = None) -> None:
        self.kind = kind
        self.value = value
        self.choices = list(dict.fromkeys(choices))
        self.matches = close_matches(value, self.choices)
        msg = f"unknown {kind} {value!r}"
        if self.matches:
            msg += "; did you mean " + ", ".join(repr(m) for m in self.matches) + "?"
        elif self.choices and len(self.choices) <= 12:
            msg += "; valid: " + ", ".join(repr(c) for c in self.choices)
        if hint:
            msg += f" ({hint})"
        super().__init__(msg, field=field)


class TargetError(GuidedBackpropError, ValueError):
    """A target that does not fit the model's output (class out of range, bad shape...)."""


class InputError(GuidedBackpropError, ValueError):
    """An input tensor the model cannot take (wrong shape, dtype, ...)."""


class NoReLUError(GuidedBackpropError):
    """The forward pass applied no ReLU, so a ReLU rule would silently equal the plain gradient."""


class ModelError(GuidedBackpropError):
    """A model that cannot be built, loaded or run as asked."""


class CheckpointError(ModelError):
    """A checkpoint that does not fit the model, or that is unsafe to load."""


class ImageError(GuidedBackpropError):
    """An image file that cannot be read as an image."""


def close_matches(value: str, choices: Iterable[str], n: int = 3) -> list[str]:
    """Entries of ``choices`` that look like ``value``: those holding it as a word first ("cat" ->
    "tabby cat", "Egyptian cat"), then those holding it at all ("bobcat"), up to 6 of them; then, up
    to ``n`` in all, difflib's closest spellings (ratio >= 0.5)."""
    choices = list(dict.fromkeys(choices))  # once each, in order
    low = value.strip().casefold()
    words = [c for c in choices if low and low in c.casefold().replace("_", " ").replace("-", " ").split()]
    inside = [c for c in choices if low and low in c.casefold() and c not in words]
    found = (words + inside)[:6]
    for c in difflib.get_close_matches(value, choices, n=n, cutoff=0.5):
        if len(found) >= n:
            break
        if c not in found:
            found.append(c)
    return found
