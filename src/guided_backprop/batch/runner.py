"""``run()``: plan, agree across ranks, prepare the folder, run the pipeline, merge the outputs."""

from __future__ import annotations

import contextlib
import errno
import os
import time
from collections.abc import Sequence
from pathlib import Path

from ..atomic import write_text
from ..devices import resolve_device
from ..errors import GuidedBackpropError, Terminated, sigterm_as_interrupt
from ..images import PassedOver
from ..reporting import LineReporter, Reporter
from .config import DISK_ERRNOS, STATE_DIR, BatchConfig, BatchResult, DiskFull, RunStopped
from .dist import Dist, torchrun_env
from .identity import file_identity
from .job import RankJob
from .journal import FolderBefore, Journal, folder_lock, is_complete, prepare_folder, read_journals
from .numbering import save_numbers
from .outputs import local_time, merge_outputs, previous_gradcam_layer, run_json
from .pipeline import run_pipeline, stop_for_dead_worker
from .plan import Plan, input_paths, make_plan


def run(
    inputs: Sequence[str | Path],
    output: str | Path,
    config: BatchConfig | None = None,
    *,
    reporter: Reporter | None = None,
    started_at: float | None = None,
) -> BatchResult:
    """Compute and save the maps of every image in ``inputs`` (files, folders, globs) into ``output``.

    Returns a :class:`BatchResult` (exit code 0 or 1; 130 after SIGINT, 143 after SIGTERM). Raises
    :class:`~guided_backprop.errors.GuidedBackpropError` for usage errors (unknown model, layer or
    class, bad template, a folder that holds another run): nothing has been computed then; and its
    subclass :class:`.config.RunStopped` when the run stopped midway for a reason that is not one
    input's (disk full: :class:`.config.DiskFull`, exit code 4; a decode worker killed: 3): what
    is done is kept, the same command resumes.
    Run under ``torchrun``, each rank takes every ``WORLD_SIZE``-th input; rank 0 writes the index
    of all of them. ``started_at`` (a :func:`time.perf_counter` value) is when the time in
    :attr:`BatchResult.seconds` starts: the command passes its process's start, so that start-up counts.
    ``reporter`` is told the progress, the notes, the inputs passed over and those that failed, and
    warnings (default: :class:`~guided_backprop.reporting.LineReporter`, lines to the ``guided_backprop``
    logger).
    """
    cfg = config or BatchConfig()
    reporter = reporter if reporter is not None else LineReporter()
    out = Path(output).expanduser()
    t0 = time.perf_counter() if started_at is None else started_at
    started = local_time()
    inputs_text = [os.fspath(i) for i in inputs]

    env = torchrun_env()
    device = resolve_device(cfg.model.device, local_rank=env.local_rank, world=env.world)
    dist = Dist(device, env)
    try:
        with sigterm_as_interrupt():
            # Setup errors on any rank stop every rank (the collectives below always run).
            error: BaseException | None = None
            plan = paths = None
            passed_over: list[PassedOver] = []
            try:
                if out.exists() and not out.is_dir():
                    raise GuidedBackpropError(f"the output {str(out)!r} is a file, not a folder; give a folder",
                                              field="output")
                paths, passed_over = input_paths(inputs_text, out)
                plan = make_plan(paths, cfg, device, out)
            except BaseException as err:  # noqa: BLE001 - re-raised after the ranks agree
                error = err
            dist.agree(error)
            assert plan is not None and paths is not None
            if dist.rank == 0:
                for note in plan.notes:
                    reporter.note(note)
                for s in passed_over:
                    reporter.passed_over(s.path, s.reason)
            result = _run_planned(plan, paths, out, dist, inputs_text, started, t0, reporter)
            result.passed_over = passed_over
            return result
    finally:
        dist.close()


def _disk_error(err: OSError, out: Path) -> BaseException:
    """A failure to write the output folder before anything is computed: exit code 4 with the path
    when it is the folder's (read-only, permission denied, full), else ``err`` itself."""
    if err.errno not in DISK_ERRNOS | {errno.EACCES, errno.EPERM}:
        return err
    where = os.fspath(err.filename or out)
    what = os.strerror(err.errno or 0).lower()
    fix = ("free some space" if err.errno in (errno.ENOSPC, errno.EDQUOT) else
           "make it writable (chmod u+w), or choose another output folder with -o")
    return DiskFull(f"cannot write the output folder {os.fspath(out)!r}: {what} at {where!r}; nothing was computed; "
                    f"{fix}, then rerun")


def _run_planned(plan: Plan, paths: list[Path], out: Path, dist: Dist,
                 inputs_text: list[str], started: str, t0: float, reporter: Reporter) -> BatchResult:
    state = out / STATE_DIR
    previous_cam = None
    before = FolderBefore(out) if dist.rank == 0 else None
    with contextlib.ExitStack() as stack:
        error: BaseException | None = None
        if dist.rank == 0:
            try:
                out.mkdir(parents=True, exist_ok=True)
                stack.enter_context(folder_lock(state))
                prepare_folder(out, plan)
                save_numbers(state, plan.number_table)
                previous_cam = None if plan.overwrite else previous_gradcam_layer(out / "run.json")
                write_text(out / "run.json", run_json(plan, inputs_text, dist, started, None, {}, None))
            except OSError as err:
                error = _disk_error(err, out)
            except BaseException as err:  # noqa: BLE001
                error = err
            if error is not None and before is not None and not before.state_existed:
                before.restore()  # unwritable, or interrupted: a folder this run started is not left behind
        dist.agree(error)

        numbered = list(zip(plan.numbers, paths, strict=True))
        mine = [(i, str(p)) for pos, (i, p) in enumerate(numbered) if pos % dist.world == dist.rank]
        done = read_journals(state, plan.fingerprint) if not plan.overwrite else {}
        todo = [(i, p) for i, p in mine if not is_complete(done.get(i), p, out, file_identity(p))]
        result = BatchResult(output=out, rank=dist.rank, world_size=dist.world)
        result.resumed = len(mine) - len(todo)

        job = RankJob(plan, out, dist, reporter)
        job.journal = Journal(state / f"journal-{dist.rank}.jsonl")
        try:
            run_pipeline(job, todo, dist.rank == 0)
        except KeyboardInterrupt as err:
            result.interrupted = True
            result.signal = "SIGTERM" if isinstance(err, Terminated) else "SIGINT"
        except Exception as err:  # noqa: BLE001 - raised on every rank by dist.agree below
            job.fatal = stop_for_dead_worker(job, err)
        finally:
            job.journal.close()

        result.computed = job.ok + job.failed
        result.errors = job.errors
        if result.interrupted:  # no collective: the other ranks are being stopped as well
            result.seconds = time.perf_counter() - t0
            result.failed = job.failed
            result.ok = job.ok
            result.images = len(paths)
            result.maps = job.maps
            result.abandoned = job.abandoned
            return result
        if isinstance(job.fatal, RunStopped) and dist.world == 1:  # list what is done, if the disk lets us
            with contextlib.suppress(Exception):
                _rows, counts, _ = merge_outputs(out, plan, paths, sweep=False)
                write_text(out / "run.json", run_json(plan, inputs_text, dist, started, local_time(), counts,
                                                       job.gradcam_layer or previous_cam))
        # A usage error met at the first batch (no ReLU, a channel out of range...) before any input was
        # journaled on any rank: the folder is put back as it was, so the corrected command is not refused.
        usage = job.fatal is not None and not isinstance(job.fatal, RunStopped)
        journaled, usages = dist.sum([job.ok + job.failed, int(usage)])
        if usages and not journaled and before is not None:
            before.restore()
        dist.agree(job.fatal)
        computed, resumed = dist.sum([result.computed, result.resumed])
        result.computed, result.resumed = int(computed), int(resumed)
        counts = {"images": 0, "ok": 0, "failed": 0, "maps": 0}
        error = None
        if dist.rank == 0:
            try:
                _rows, counts, removed = merge_outputs(out, plan, paths)
                write_text(out / "run.json", run_json(plan, inputs_text, dist, started, local_time(), counts,
                                                       job.gradcam_layer or previous_cam))
                result.index = out / "index.jsonl"
                if removed:
                    shown = ", ".join(repr(n) for n in removed[:3]) + (", ..." if len(removed) > 3 else "")
                    reporter.info(f"removed {len(removed)} file(s) of earlier outputs that no input of this run has: "
                                  f"{shown}")
            except OSError as err:
                error = _disk_error(err, out)
            except BaseException as err:  # noqa: BLE001 - after the ranks agree
                error = err
        dist.agree(error)
        totals = dist.sum([counts["images"], counts["ok"], counts["failed"], counts["maps"]])
        result.images, result.ok, result.failed, result.maps = (int(v) for v in totals)
        result.seconds = time.perf_counter() - t0
        return result
