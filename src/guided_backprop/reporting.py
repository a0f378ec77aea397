"""What a run tells its user, in one vocabulary: a :class:`Reporter`.

The batch job (:func:`guided_backprop.batch.run`), :func:`guided_backprop.evaluate.evaluate_folder`
and the unit grids (:mod:`guided_backprop.units`) tell their progress, the inputs they passed over
(never opened: a FIFO, a link loop, their own outputs), the inputs that failed (unreadable, not
finite...), warnings, notes and their summary to a reporter; they draw no progress bar and print
nothing themselves. The command line's reporter draws the bars and prints the lines
(:class:`guided_backprop.cli.options.ConsoleReporter`); :class:`LineReporter` hands each line to a function.

Three words that a run's user reads as "skipped" are told apart here: an input *passed over* was
never opened (:meth:`Reporter.passed_over`), an input that *failed* could not be read or used
(:meth:`Reporter.failed`), and an input *already done* by an earlier run is only counted in the
summary (``BatchResult.resumed``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from .visible import passed_over_line, visible

__all__ = ["LineReporter", "Reporter"]

log = logging.getLogger("guided_backprop")


class Reporter:
    """Receives what a run tells its user; this base class keeps all of it to itself.

    Each message is turned into the line a command prints (``skipped: 'PATH': REASON``, ``error:
    REASON``, ``warning: ...``, ``note: ...``) and given to :meth:`line`, which subclasses override;
    :meth:`progress` is told ``done`` of ``total`` steps of ``task`` as the run goes.
    """

    def progress(self, done: int, total: int, task: str = "") -> None:
        """``done`` of ``total`` inputs (or steps of ``task``) are finished."""

    def passed_over(self, path: object, reason: str) -> None:
        """An input that was never opened (not a regular file, an unreadable folder, an output of this tool)."""
        self.line(passed_over_line(path, reason))

    def failed(self, reason: str) -> None:
        """An input that could not be read or used (``reason`` names it); the run goes on without it."""
        self.line(f"error: {visible(reason)}")

    def warning(self, message: str) -> None:
        """Something the user should know about an input or a result (an all-zero map...)."""
        self.line(f"warning: {message}")

    def note(self, message: str) -> None:
        """Said before the work starts (partial guidance, random weights...)."""
        self.line(f"note: {visible(message)}")

    def info(self, message: str) -> None:
        """Any other line (a target with nothing to explain, earlier outputs removed...)."""
        self.line(message)

    def line(self, text: str) -> None:
        """One line for the user (this base class drops it)."""


class LineReporter(Reporter):
    """Hands each line to ``write`` (default: the ``guided_backprop`` logger at WARNING level, which
    Python shows on stderr when logging is not configured)."""

    def __init__(self, write: Callable[[str], None] | None = None) -> None:
        self.write = write or log.warning

    def line(self, text: str) -> None:
        self.write(text)
