"""The pipeline: decode workers -> batches of same-size tensors -> compute -> writer pool."""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator
from typing import Any

import torch

from .config import RunStopped
from .decode import Decoded, DecodeDataset, WorkerDied, pass_through, worker_died, worker_init
from .identity import file_identity
from .job import RankJob
from .writer import Writer


def run_pipeline(job: RankJob, todo: list[tuple[int, str]], progress: bool) -> None:
    """Decode ``todo`` in worker processes, compute in batches of ``batch_size`` same-size tensors, write;
    with ``progress``, the inputs done are told to the job's reporter."""
    plan = job.plan
    batch_size = plan.batch_size
    dataset = DecodeDataset(todo, plan.preprocessing, plan.max_pixels)
    workers = min(plan.workers, max(1, len(todo))) if todo else 0
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=None, shuffle=False, num_workers=workers,
        collate_fn=pass_through,  # type: ignore[arg-type]  # batch_size=None: items one by one, not lists
        pin_memory=job.plan.device.type == "cuda", prefetch_factor=max(2, batch_size) if workers else None,
        worker_init_fn=worker_init(os.getpid()) if workers else None,
    )
    threads = max(1, min(4, os.cpu_count() or 1))
    writer = Writer(threads, backlog=2 * batch_size + threads)
    done = [0]

    def advance(n: int) -> None:
        done[0] += n
        if progress:
            job.reporter.progress(done[0], len(todo))

    if progress:
        job.reporter.progress(0, len(todo))
    pending: dict[tuple[int, ...], list[Decoded]] = {}

    def flush(keys: list[tuple[int, ...]]) -> None:
        for key in keys:
            group = pending.pop(key)
            job.compute(group, writer)
            advance(len(group))

    cancel = False
    it = iter(loader) if todo else iter(())
    job.decoding = (dataset, list(getattr(it, "_workers", None) or []))  # for stop_for_dead_worker
    try:
        for item in _decoded(it, job):
            if job.stop is not None:
                raise job.stop
            if item.error is not None:
                job.fail(item.idx, item.path, item.error, item.ident)
                advance(1)
                continue
            key = tuple(item.tensor.shape)  # type: ignore[union-attr]
            group = pending.setdefault(key, [])
            group.append(item)
            if len(group) >= batch_size:
                flush([key])
            elif sum(map(len, pending.values())) >= 2 * batch_size:  # many sizes: keep memory bounded
                flush(list(pending))
        flush(list(pending))
    except RunStopped:
        cancel = True  # a full disk, a dead worker: drop the queued writes, as Ctrl-C does
        raise
    except KeyboardInterrupt:
        cancel = True  # Ctrl-C: drop the queued writes (their inputs are redone by a rerun), finish the running ones
        raise
    finally:
        shutdown = getattr(it, "_shutdown_workers", None)
        if shutdown is not None:  # stop the decode workers now, not when garbage is collected
            shutdown()
        del it
        try:
            job.abandoned = writer.close(cancel=cancel)
        except KeyboardInterrupt:  # stopped while waiting for the last writes: wait no more than a stop does
            job.abandoned = writer.close(cancel=True)
            raise
    if job.stop is not None:  # the last writes filled the disk
        raise job.stop


def _dead_workers(workers: list[Any], wait: float = 2.0) -> list[int]:
    """The pids of decode worker processes that have died (not a clean exit). A worker killed a moment
    ago may still be exiting when its lost queue item is noticed: it is waited for up to ``wait`` s."""
    deadline = time.monotonic() + wait
    while True:
        dead = []
        for worker in workers:
            with contextlib.suppress(Exception):
                if not worker.is_alive() and worker.exitcode not in (None, 0):
                    dead.append(int(worker.pid))
        if dead or time.monotonic() >= deadline or not workers:
            return dead
        time.sleep(0.05)


def stop_for_dead_worker(job: RankJob, err: BaseException) -> BaseException:
    """What stops the run when ``err`` escaped the pipeline: for a decode worker that died (however the
    loader showed it: its ``RuntimeError``, a lost queue item, a SIGCHLD raised anywhere), a
    :class:`.decode.WorkerDied` that names the file the worker was reading, which is journaled as a
    ``poison`` failure so that the rerun gets past it; else ``err`` itself."""
    if isinstance(err, RunStopped) and not isinstance(err, WorkerDied):
        return err
    dataset, workers = job.decoding or (None, [])
    died = err if isinstance(err, WorkerDied) else worker_died(err, job.ok + job.failed, _dead_workers(workers))
    if died is None:
        return err
    reading = dataset.reading_when_died(died.pids) if dataset is not None else None
    if reading is None:
        return died
    idx, path = reading
    job.fail(idx, path, f"a decode worker process died while reading {path!r} (killed, perhaps by the "
                        f"out-of-memory killer); --overwrite retries it", file_identity(path), poison=True)
    root = (err.__cause__ or err) if isinstance(err, WorkerDied) else err  # the loader's own words
    named = worker_died(root, job.ok + job.failed - 1, died.pids, reading) or died
    named.__cause__ = err
    return named


def _decoded(it: Iterator[Decoded], job: RankJob) -> Iterator[Decoded]:
    """The loader's items; a decode worker that died (the OOM killer's ``kill -9``) stops the run with
    one line that says so (exit code 3), not a traceback. The loader reports it as its own
    ``RuntimeError``, or as the failure to receive an item the dead worker had queued
    (``ConnectionResetError``): whichever comes, the dead workers are looked for."""
    while True:
        try:
            item = next(it)
        except StopIteration:
            return
        except Exception as err:
            died = worker_died(err, job.ok + job.failed, _dead_workers(list(getattr(it, "_workers", None) or [])))
            if died is None:
                raise
            raise died from err
        yield item
