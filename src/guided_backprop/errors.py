"""Typed errors (every error names the offending value and what would be valid), the exit codes, and
the one mapping from how a run ended to its exit code (:func:`exit_code`)."""

from __future__ import annotations

import contextlib
import difflib
import enum
import signal
import threading
from collections.abc import Iterable, Iterator
from typing import Any


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
    ``exit_code``: what a command that stops on it exits with (a usage error unless a subclass says
    otherwise: a full disk, a failed peer process).
    """

    field: str | None = None
    exit_code: int = ExitCode.USAGE

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


class Terminated(KeyboardInterrupt):
    """SIGTERM (systemd, Slurm, ``kill``, torchrun): stops a run like Ctrl-C, with exit code 143."""


@contextlib.contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """While inside, SIGTERM (sent by torchrun, systemd, Slurm, ``kill``) stops the run like Ctrl-C,
    cleanly, as :class:`Terminated` (exit code 143). Only in the main thread (elsewhere: no change)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(_signum: int, _frame: Any) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second SIGTERM must not cut the clean stop short
        raise Terminated

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def exit_code(stop: BaseException | None = None, *, failed: int = 0) -> ExitCode:
    """The one mapping from how a run ended to its exit code: ``stop`` is what stopped it (``None``: it
    finished, and ``failed`` inputs could not be done). Ctrl-C is 130, SIGTERM (:class:`Terminated`) 143,
    an error of this package its ``exit_code`` (2, a usage error, unless it says otherwise), anything
    else 3 (the run failed unexpectedly)."""
    if stop is None:
        return ExitCode.SOME_FAILED if failed else ExitCode.OK
    if isinstance(stop, KeyboardInterrupt):
        return ExitCode.TERMINATED if isinstance(stop, Terminated) else ExitCode.INTERRUPTED
    if isinstance(stop, GuidedBackpropError):
        return ExitCode(stop.exit_code)
    return ExitCode.FAILED


def stopped_in_words(stop: KeyboardInterrupt) -> str:
    """What stopped a run, in the words a command prints: ``terminated (SIGTERM)`` or ``interrupted``."""
    return "terminated (SIGTERM)" if isinstance(stop, Terminated) else "interrupted"


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
