"""The decode stage: ``DataLoader`` workers read and preprocess images; a bad file becomes an error record."""

from __future__ import annotations

import contextlib
import ctypes
import functools
import os
import re
import signal
import sys
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import torch

from .. import images
from ..errors import ImageError
from .config import BatchConfig, RunStopped
from .identity import file_identity


class Decoded(NamedTuple):
    idx: int
    path: str
    tensor: torch.Tensor | None
    error: str | None
    ident: list[int] | None = None  # the file's [size, mtime_ns] when it was read (see identity.py)


#: Default cap on an input's pixels after preprocessing (``max_pixels``, ``--max-pixels``): 2048 x 2048.
MAX_PIXELS = BatchConfig.max_pixels
#: Worker slots of :attr:`DecodeDataset.reading` (more workers than this are not tracked).
_SLOTS = 64


class DecodeDataset(torch.utils.data.Dataset):
    """(global idx, path) -> decoded, preprocessed tensor, or an error record (never raises).

    An input whose size after preprocessing (the resize, or the resize before a crop) would exceed
    ``max_pixels`` is refused by name before it is resized: a 30000x10 strip resized by its shorter side
    would become a 224x672000 tensor. :attr:`reading` (shared with the worker processes) holds, per
    worker, its pid and the idx + 1 of the input it is reading, so that a worker that dies can be named
    with its file (:meth:`reading_when_died`).
    """

    def __init__(self, items: Sequence[tuple[int, str]], preprocessing: Any, max_pixels: int = MAX_PIXELS) -> None:
        self.items = list(items)
        self.preprocessing = preprocessing
        self.max_pixels = int(max_pixels)
        self.reading = torch.zeros(2 * _SLOTS, dtype=torch.int64).share_memory_()

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> Decoded:
        idx, path = self.items[i]
        info = torch.utils.data.get_worker_info()
        slot = info.id if info is not None and info.id < _SLOTS else None
        if slot is not None:
            self.reading[2 * slot] = os.getpid()
            self.reading[2 * slot + 1] = idx + 1
        try:
            return self._decode(idx, path)
        finally:
            if slot is not None:
                self.reading[2 * slot + 1] = 0

    def _decode(self, idx: int, path: str) -> Decoded:
        ident = file_identity(path)
        try:  # load_image opens only a regular file: a FIFO named x.png would block this worker forever
            image = images.load_image(path)
            too_big = self._too_big(path, image.height, image.width)
            if too_big is not None:
                return Decoded(idx, path, None, too_big, ident)
            tensor = self.preprocessing(image)
        except ImageError as err:
            return Decoded(idx, path, None, one_line(str(err)), ident)
        except Exception as err:  # preprocessing of a strange picture; report it, keep going
            return Decoded(idx, path, None, one_line(f"cannot read image {path!r}: {type(err).__name__}: {err}"),
                            ident)
        return Decoded(idx, path, tensor, None, ident)

    def _too_big(self, path: str, height: int, width: int) -> str | None:
        """Why the picture's preprocessed size is refused, or ``None`` (computed, not made)."""
        sizes = [size(height, width) for size in (getattr(self.preprocessing, "resized_size", None),
                                                  getattr(self.preprocessing, "output_size", None)) if size]
        h, w = max(sizes, key=lambda hw: hw[0] * hw[1], default=(height, width))
        if h * w <= self.max_pixels:
            return None
        return (f"cannot process {path!r}: its preprocessing would make a {h}x{w} picture ({h * w / 1e6:.1f} M pixels) "
                f"from its {width}x{height}, over the cap of {self.max_pixels / 1e6:.1f} M pixels; crop or shrink it, "
                f"or raise the cap (--max-pixels, max_pixels) if it is meant")

    def reading_when_died(self, pids: Sequence[int]) -> tuple[int, str] | None:
        """(idx, path) of the input the worker ``pids`` was reading when it died; with no pid known, the
        only input being read, if there is one."""
        slots = self.reading.view(_SLOTS, 2).tolist()
        busy = [(pid, at - 1) for pid, at in slots if at > 0]
        hits = [at for pid, at in busy if pid in pids] or ([busy[0][1]] if len(busy) == 1 and not pids else [])
        if not hits:
            return None
        path = dict(self.items).get(hits[0])
        return None if path is None else (hits[0], path)


def worker_init(parent: int) -> Callable[[int], None]:
    """A ``DataLoader`` ``worker_init_fn``: the worker dies with the main process and ignores the
    signals that the main process handles for everyone.

    A ``kill -9`` of the main process must not leave workers behind (they would hold files open
    and keep computing): on Linux ``PR_SET_PDEATHSIG`` makes the kernel send them SIGKILL, and a
    worker that starts after its parent died exits at once. SIGINT and SIGTERM sent to the whole
    process group (Ctrl-C, systemd, Slurm) are left to the main process, which stops the workers.
    """
    return functools.partial(_init_worker, parent)


def _init_worker(parent: int, _worker_id: int) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if sys.platform.startswith("linux"):
        with contextlib.suppress(Exception):
            libc = ctypes.CDLL(None, use_errno=True)
            libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent:  # the parent died before prctl: do not outlive it
        os._exit(0)


_PR_SET_PDEATHSIG = 1


def pass_through(item: Decoded) -> Decoded:
    """The DataLoader's collate: items travel one by one, errors included (batched after decoding)."""
    return item


def one_line(text: str) -> str:
    return " ".join(str(text).split())


class WorkerDied(RunStopped):
    """A decode worker process died (killed: the out-of-memory killer's ``kill -9``): the run stops.
    ``pids``: the dead workers' process ids, as far as known."""

    def __init__(self, message: str, pids: Sequence[int] = ()) -> None:
        super().__init__(message)
        self.pids = list(pids)


def worker_died(err: BaseException, done: int, dead: Sequence[int] = (),
                reading: tuple[int, str] | None = None) -> WorkerDied | None:
    """The stop for a decode worker that died (``None`` when ``err`` is about something else and no
    worker is ``dead``); ``reading``: the (idx, path) it was reading, which is then named (and recorded
    as failed by the pipeline).

    PyTorch reports it as a ``RuntimeError`` from the loader (``DataLoader worker (pid 123) is killed by
    signal``), as a lost item the worker had queued, or from wherever the main process was when SIGCHLD
    arrived (a forward pass, which then reports it as the input's error).
    """
    text = str(err) + " " + str(err.__cause__ or "")
    if "DataLoader worker" not in text and not dead:
        return None
    pids = sorted(set(dead) | {int(p) for p in re.findall(r"\d+", " ".join(re.findall(r"pid\(?s?\)? ([\d, ]+)",
                                                                                        text)))})
    cause = one_line(str(err.__cause__ or err)) if "DataLoader worker" in text else f"pid {', '.join(map(str, pids))}"
    if reading is not None:
        return WorkerDied(f"a decode worker process died while reading {reading[1]!r} ({cause}): it was killed, "
                          f"perhaps by the out-of-memory killer; that input is recorded as failed and a rerun passes "
                          f"over it (--overwrite retries it); {done} inputs were done; rerun the same command to "
                          f"resume", pids)
    return WorkerDied(f"a decode worker process died ({cause}): it was killed, "
                      f"perhaps by the out-of-memory killer; {done} inputs were done; rerun the same command to "
                      f"resume (with fewer workers if memory is short)", pids)
