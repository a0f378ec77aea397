"""The decode stage: ``DataLoader`` workers read and preprocess images; a bad file becomes an error record."""

from __future__ import annotations

import contextlib
import ctypes
import functools
import os
import signal
import sys
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import torch

from .. import images
from ..errors import ImageError
from .config import RunStopped
from .identity import file_identity


class _Decoded(NamedTuple):
    idx: int
    path: str
    tensor: torch.Tensor | None
    error: str | None
    ident: list[int] | None = None  # the file's [size, mtime_ns] when it was read (see identity.py)


class _DecodeDataset(torch.utils.data.Dataset):
    """(global idx, path) -> decoded, preprocessed tensor, or an error record (never raises)."""

    def __init__(self, items: Sequence[tuple[int, str]], preprocessing: Any) -> None:
        self.items = list(items)
        self.preprocessing = preprocessing

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> _Decoded:
        idx, path = self.items[i]
        ident = file_identity(path)
        try:  # load_image opens only a regular file: a FIFO named x.png would block this worker forever
            tensor = self.preprocessing(images.load_image(path))
        except ImageError as err:
            return _Decoded(idx, path, None, _one_line(str(err)), ident)
        except Exception as err:  # preprocessing of a strange picture; report it, keep going
            return _Decoded(idx, path, None, _one_line(f"cannot read image {path!r}: {type(err).__name__}: {err}"),
                            ident)
        return _Decoded(idx, path, tensor, None, ident)


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


def _pass_through(item: _Decoded) -> _Decoded:
    """The DataLoader's collate: items travel one by one, errors included (batched after decoding)."""
    return item


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def worker_died(err: BaseException, done: int) -> RunStopped | None:
    """The stop for a decode worker that died (``None`` when ``err`` is about something else).

    PyTorch reports it as a ``RuntimeError`` from the loader, or from wherever the main process was
    when SIGCHLD arrived (a forward pass, which then reports it as the input's error).
    """
    text = str(err) + " " + str(err.__cause__ or "")
    if "DataLoader worker" not in text:
        return None
    return RunStopped(f"a decode worker process died ({_one_line(str(err.__cause__ or err))}): it was killed, "
                      f"perhaps by the out-of-memory killer; {done} inputs were done; rerun the same command to "
                      f"resume (with fewer workers if memory is short)")
