"""The writer pool: background threads that render, encode and save, with back-pressure."""

from __future__ import annotations

import io
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np


def _npy_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(array), allow_pickle=False)
    return buf.getvalue()


class _Writer:
    """Background threads that render, encode and save; at most ``backlog`` jobs wait."""

    def __init__(self, threads: int, backlog: int) -> None:
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="gbp-writer")
        self._slots = threading.BoundedSemaphore(backlog)

    def submit(self, fn: Callable[[], None]) -> None:
        """Queue ``fn``; blocks while ``backlog`` jobs are waiting or running (back-pressure)."""
        self._slots.acquire()
        try:
            fut = self._pool.submit(fn)
        except BaseException:
            self._slots.release()
            raise
        fut.add_done_callback(self._done)

    def _done(self, _fut: Future[None]) -> None:
        self._slots.release()

    def close(self, *, cancel: bool = False) -> None:
        """Wait for the running jobs; drop the waiting ones when ``cancel`` (Ctrl-C)."""
        self._pool.shutdown(wait=True, cancel_futures=cancel)
