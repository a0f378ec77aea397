"""The writer pool: background threads that render, encode and save, with back-pressure."""

from __future__ import annotations

import io
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor, wait

import numpy as np


def npy_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(array), allow_pickle=False)
    return buf.getvalue()


class Writer:
    """Background threads that render, encode and save; at most ``backlog`` jobs wait."""

    #: Seconds a stop (Ctrl-C, SIGTERM) waits for the writes under way before leaving them behind.
    GRACE = 3.0

    def __init__(self, threads: int, backlog: int) -> None:
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="gbp-writer")
        self._slots = threading.BoundedSemaphore(backlog)
        self._pending: set[Future[None]] = set()
        self._lock = threading.Lock()

    def submit(self, fn: Callable[[], None]) -> None:
        """Queue ``fn``; blocks while ``backlog`` jobs are waiting or running (back-pressure)."""
        self._slots.acquire()
        try:
            fut = self._pool.submit(fn)
        except BaseException:
            self._slots.release()
            raise
        with self._lock:
            self._pending.add(fut)
        fut.add_done_callback(self._done)

    def _done(self, fut: Future[None]) -> None:
        with self._lock:
            self._pending.discard(fut)
        self._slots.release()

    def close(self, *, cancel: bool = False) -> int:
        """Wait for the running jobs; returns how many were left running.

        With ``cancel`` (Ctrl-C, SIGTERM) the waiting jobs are dropped and the running ones get
        :attr:`GRACE` seconds: a stop must not wait for whatever a job holds (a huge picture, a slow
        disk). A job left running writes through temporary names only, so what it leaves is swept by
        the next run; the command then ends the process without waiting for it.
        """
        if not cancel:
            self._pool.shutdown(wait=True)
            return 0
        self._pool.shutdown(wait=False, cancel_futures=True)
        with self._lock:
            running = set(self._pending)
        _done, left = wait(running, timeout=self.GRACE)
        return len(left)
