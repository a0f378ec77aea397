"""The settings of a batch run (:class:`BatchConfig`), what it did (:class:`BatchResult`), and constants."""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ExitCode, GuidedBackpropError, Terminated, exit_code
from ..images import PassedOver
from ..models.spec import ModelSpec
from .names import DEFAULT_INPUT_NAME

# Kept as module names for code written against them; the one table is errors.ExitCode.

#: Hidden folder inside the output folder: resume journal, job settings, lock.
STATE_DIR = ".guided-backprop"
TOP5 = 5  # classes listed per input in the index


@dataclass
class BatchConfig:
    """Everything a batch run needs besides its inputs and output folder (the CLI's options).

    ``model``: which network and how pictures become its input (:class:`~guided_backprop.ModelSpec`;
    its ``device`` is where the run computes, each torchrun rank on its own GPU). ``target``:
    ``None`` (each image's predicted class), a :class:`~guided_backprop.TopK`, a class
    index or a class name (the strings ``"top1"``/``"top<k>"`` are still read); or a layer target with
    ``layer`` + ``channel`` (``neuron``: ``None`` for the whole channel, ``"max"`` for its most active
    unit, ``(y, x)`` -- or the string ``"y,x"`` -- for one unit). ``name``: template of the
    map file names (fields :data:`MAP_NAME_FIELDS`; default :func:`default_map_name`).
    """

    model: ModelSpec = field(default_factory=ModelSpec)
    methods: Sequence[str] = ("guided_backprop",)
    target: Any = None  # None, TopK, int or str (also targets.parse_target's text: detections:5, box:..., output:K)
    mask: str | None = None  # a segmenter's region: a picture whose non-zero pixels are the region
    score_threshold: float = 0.5  # detections:K counts the detections scoring at least this
    output_key: str | int | None = None  # the entry of a dict / tuple output the targets read
    layer: str | None = None
    channel: int | None = None
    neuron: str | tuple[int, int] | None = None
    gradcam_layer: str | None = None
    smooth: int = 0
    noise: float = 0.15
    seed: int = 0
    norm: str = "percentile"
    name: str | None = None
    input_name: str = DEFAULT_INPUT_NAME
    save_raw: bool = False
    panel: bool = False  # also write panel_{idx}.png: the input then every method's map, titled
    batch_size: int = 8
    workers: int = 2
    overwrite: bool = False
    max_pixels: int = 2048 * 2048  # an input whose preprocessed size has more pixels is refused, by name


@dataclass
class BatchResult:
    """What a run did. ``images``/``ok``/``failed``/``maps`` describe the whole output folder (all ranks)."""

    output: Path
    images: int = 0  # inputs of this run
    ok: int = 0
    failed: int = 0
    maps: int = 0  # map files listed in the index
    computed: int = 0  # inputs processed by this invocation (the others were complete already)
    resumed: int = 0  # inputs already done: a previous run finished them (the summary says "skipped")
    seconds: float = 0.0
    interrupted: bool = False
    signal: str | None = None  # "SIGINT" or "SIGTERM" when interrupted
    rank: int = 0
    world_size: int = 1
    errors: list[str] = field(default_factory=list)  # this rank's error lines
    passed_over: list[PassedOver] = field(default_factory=list)  # inputs never opened (and why)
    index: Path | None = None
    abandoned: int = 0  # writer jobs still running when an interrupted run stopped waiting for them

    @property
    def rate(self) -> float:
        """Inputs per second processed by this invocation."""
        return self.computed / self.seconds if self.seconds > 0 else 0.0

    @property
    def exit_code(self) -> int:
        """0, 1 (some inputs failed), 130 (SIGINT) or 143 (SIGTERM).

        Under torchrun only rank 0 returns 1: torchrun stops the other processes as soon as one
        exits non-zero, which must not happen while rank 0 is still writing the index.
        """
        stop = None if not self.interrupted else Terminated() if self.signal == "SIGTERM" else KeyboardInterrupt()
        return exit_code(stop, failed=self.failed if self.rank == 0 else 0)

    def summary(self) -> str:
        """One line: ``N images: S skipped (already done), C computed, F failed in T s (X img/s) -> OUT``.

        ``S skipped (already done)`` is there only when a previous run had done some inputs. ``C``
        counts the inputs this invocation explained (their maps were written), ``F`` the failed inputs
        of the whole folder (a failed input is retried by every rerun); inputs passed over (not regular
        files, unreadable folders...) are added as ``P passed over`` when there are any. ``T`` counts
        from the start of the process when the command gives it (``run(started_at=...)``). The rate is
        left out when nothing was processed (a rerun of a finished folder).
        """
        over = f", {len(self.passed_over)} passed over (not read)" if self.passed_over else ""
        images = "image" if self.images == 1 else "images"
        explained = max(0, self.computed - self.failed)
        rate = f" ({self.rate:.1f} img/s)" if self.computed else ""
        resumed = f"{self.resumed} skipped (already done), " if self.resumed else ""
        return (f"{self.images} {images}: {resumed}{explained} computed, "
                f"{self.failed} failed{over} in {self.seconds:.1f} s{rate} -> {self.output}")


class RunStopped(GuidedBackpropError):
    """The run stopped for a reason that is not one input's and not a usage error; ``exit_code`` says which.

    What is complete stays complete (journal, files): the same command resumes.
    """

    quiet = False

    def __init__(self, message: str, exit_code: int = ExitCode.FAILED) -> None:
        super().__init__(message)
        self.exit_code = int(exit_code)  # 3, or 4 (DiskFull)


class DiskFull(RunStopped):
    """A write failed for a reason that is the disk's (full, over quota, read-only): exit code 4."""

    def __init__(self, message: str) -> None:
        super().__init__(message, ExitCode.DISK_FULL)


#: ``errno`` values of a write failure that will hit every input, not one.
DISK_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS})


def write_failed(err: OSError, where: str | os.PathLike[str], rerun: str) -> DiskFull:
    """The one-line error (exit code 4) of a command whose output could not be written: what the OS
    said, the path, and what to do (``rerun``: the command to run once space is freed)."""
    what = os.strerror(err.errno).lower() if err.errno else (err.strerror or type(err).__name__)
    return DiskFull(f"cannot write {os.fspath(where)!r}: {what}; free some space or make the "
                    f"folder writable, then {rerun}")


def check_writable(folder: str | os.PathLike[str], rerun: str) -> None:
    """Create ``folder`` if needed and write, then remove, a small temporary file in it, so that a command
    learns that it cannot write (read-only, full, no permission) before it computes: :func:`write_failed`."""
    path = Path(folder)
    probe = path / f"..write-test.gbp.{os.getpid()}.{secrets.token_hex(4)}.tmp"  # an atomic.TEMP_NAME: swept
    try:
        path.mkdir(parents=True, exist_ok=True)
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        try:
            os.write(fd, b"guided-backprop write test\n")
            os.fsync(fd)
        finally:
            os.close(fd)
            with contextlib.suppress(OSError):
                os.unlink(probe)
    except OSError as err:
        raise write_failed(err, path, rerun) from err
