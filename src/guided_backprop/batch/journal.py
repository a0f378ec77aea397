"""The resume journal (one line per finished input), the folder lock, the settings check, temp sweep."""

from __future__ import annotations

import contextlib
import json
import os
import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..atomic import is_temp_name, write_bytes, write_text
from ..errors import GuidedBackpropError
from ..records import IndexRecord, RecordError, json_text
from .config import STATE_DIR

if TYPE_CHECKING:
    from .plan import Plan


def sweep_temp_files(*folders: Path, recursive: Sequence[Path] = ()) -> int:
    """Remove the temporary files a run killed mid-write left in the folders this tool writes.

    Only names of :func:`guided_backprop.atomic.atomic_file`'s own pattern
    (``.<name>.gbp.<pid>.<8 hex>.tmp``) are removed, never another ``*.tmp``; ``folders`` are
    swept one level deep, ``recursive`` ones (a name template with class-dependent subfolders)
    with their subfolders.
    """
    removed = 0

    def sweep(folder: str, names: Iterable[str]) -> None:
        nonlocal removed
        for f in names:
            if is_temp_name(f):
                with contextlib.suppress(OSError):
                    os.unlink(os.path.join(folder, f))
                    removed += 1

    for folder in dict.fromkeys(folders):
        with contextlib.suppress(OSError):
            sweep(str(folder), os.listdir(folder))
    for top in dict.fromkeys(recursive):
        for dirpath, _dirnames, filenames in os.walk(top):
            sweep(dirpath, filenames)
    return removed


@dataclass(frozen=True)
class JournalEntry:
    """One journal line: an input's :class:`~..records.IndexRecord` and what resume compares, written as
    the record's keys followed by the private ``_fp`` (the job's fingerprint), ``_id`` (the input's
    size and modification time, :func:`.identity.file_identity`), ``_t`` (when) and ``_rank``."""

    record: IndexRecord
    fingerprint: str
    ident: list[int] | None
    time: float
    rank: int
    poison: bool = False  # reading this input killed a decode worker: reruns pass over it (``_poison``)

    def to_json(self) -> dict[str, Any]:
        extra = {"_poison": True} if self.poison else {}
        return {**self.record.to_json(), "_fp": self.fingerprint, "_id": self.ident, "_t": self.time,
                "_rank": self.rank, **extra}

    @classmethod
    def from_json(cls, data: Any) -> JournalEntry:
        """Raises :class:`~..records.RecordError` for a line that is not an entry of this version."""
        if not isinstance(data, Mapping):
            raise RecordError(f"journal line: a JSON {type(data).__name__}, expected an object")
        fp, ident, when, rank = (data.get(k) for k in ("_fp", "_id", "_t", "_rank"))
        if not isinstance(fp, str):
            raise RecordError(f"journal line: key '_fp' is {fp!r}, expected a string")
        if ident is not None and not (isinstance(ident, list) and all(isinstance(v, int) for v in ident)):
            raise RecordError(f"journal line: key '_id' is {ident!r}, expected a list of integers or null")
        if not isinstance(when, (int, float)) or not isinstance(rank, int):
            raise RecordError(f"journal line: keys '_t', '_rank' are {when!r}, {rank!r}, expected numbers")
        private = ("_fp", "_id", "_t", "_rank", "_poison")
        record = IndexRecord.from_json({k: v for k, v in data.items() if k not in private})
        return cls(record, fp, ident, float(when), rank, data.get("_poison") is True)


class Journal:
    """Append-only JSON lines, one per finished input; a line is written after the input's files."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._lock = threading.Lock()
        self._fh = open(path, "ab")  # noqa: SIM115 - closed in close()
        if self._fh.tell() > 0:  # a line cut by a kill: end it, so the next one starts clean
            with open(path, "rb") as fh:
                fh.seek(-1, os.SEEK_END)
                if fh.read(1) != b"\n":
                    self._fh.write(b"\n")
                    self._fh.flush()

    def write(self, entry: JournalEntry) -> None:
        line = (json_text(entry.to_json()) + "\n").encode("utf-8")
        with self._lock:
            self._fh.write(line)
            self._fh.flush()

    def close(self) -> None:
        with self._lock:
            if not self._fh.closed:
                self._fh.flush()
                with contextlib.suppress(OSError):
                    os.fsync(self._fh.fileno())
                self._fh.close()


def journal_entries(state: Path) -> Iterator[JournalEntry]:
    """Every entry of every journal in ``state``, whatever its fingerprint, in file order.

    A line cut by a kill, or one that is not an entry of this version, is left out.
    """
    for path in sorted(state.glob("journal-*.jsonl")):
        try:
            data = path.read_bytes()
        except OSError:
            continue
        for line in data.split(b"\n"):
            if not line.strip():
                continue
            try:
                yield JournalEntry.from_json(json.loads(line))
            except ValueError:  # a line cut by a kill (JSONDecodeError), or not an entry (RecordError)
                continue


def read_journals(state: Path, fingerprint: str) -> dict[int, JournalEntry]:
    """The newest entry of each idx over every journal in ``state`` that matches ``fingerprint``.

    A line cut by a kill, or one that is not an entry of this version, is left out (its input is redone).
    """
    best: dict[int, JournalEntry] = {}
    for entry in journal_entries(state):
        if entry.fingerprint != fingerprint:
            continue
        old = best.get(entry.record.idx)
        if old is None or entry.time >= old.time:
            best[entry.record.idx] = entry
    return best


def is_complete(entry: JournalEntry | None, path: str, out: Path, ident: list[int] | None) -> bool:
    """A journal entry that says this input is done, of this very file (``ident``: its size and
    modification time now, :func:`.identity.file_identity`), and whose files all exist; or that reading
    this very file killed a decode worker (its ``poison`` failure stands until the file changes)."""
    if entry is None or entry.record.input != path:
        return False
    if ident is None or entry.ident != ident:  # the input was replaced or touched since: redo it
        return False
    if entry.record.status != "ok":  # failed inputs are retried, but one that killed a decode worker
        return entry.poison
    names = list(entry.record.files.values()) + list((entry.record.raw or {}).values())
    return bool(names) and all((out / n).is_file() for n in names)


_HELD: set[str] = set()  # folders this process holds the lock of (POSIX record locks do not see those)
_HELD_LOCK = threading.Lock()


@contextlib.contextmanager
def folder_lock(state: Path) -> Iterator[None]:
    """Refuse a second run writing into the same output folder at the same time.

    A POSIX record lock (``fcntl.lockf``) belongs to this process alone: the decode workers, which
    are forked and so inherit every file descriptor, do not hold it, and the kernel drops it the
    moment this process dies (even by ``kill -9``), so the same command can be rerun at once.
    (An ``flock`` lock would be shared with the forked workers and outlive a killed main process.)
    Record locks do not conflict within one process, so this process's own locks are kept in a set.
    """
    state.mkdir(parents=True, exist_ok=True)
    key = os.path.realpath(state)
    busy = GuidedBackpropError(f"another guided-backprop run is writing to {str(state.parent)!r}; wait for it to "
                               f"finish or choose another output folder", field="output")
    with _HELD_LOCK:
        if key in _HELD:
            raise busy
        _HELD.add(key)
    fd = -1
    try:
        fd = os.open(state / "lock", os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o666)
        try:
            import fcntl
        except ImportError:  # pragma: no cover - Windows: the in-process check only
            fcntl = None  # type: ignore[assignment]
        if fcntl is not None:
            try:
                fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as err:
                raise busy from err
        yield
    finally:
        if fd >= 0:
            os.close(fd)  # releases the record lock
        with _HELD_LOCK:
            _HELD.discard(key)


def prepare_folder(out: Path, plan: Plan) -> None:
    """Rank 0, before any image: check the folder holds no other job's computed inputs, write job.json.

    A folder whose journals hold no input (a run that failed before its first input) is no other job:
    it is taken over, whatever settings its job.json names.
    """
    state = out / STATE_DIR
    job_path = state / "job.json"
    # --overwrite keeps the journals: they say which files are this tool's (removed once no input lists
    # them, numbering.remove_stale) and which number each input has; the run redoes every input anyway.
    if not plan.overwrite and job_path.is_file() and next(journal_entries(state), None) is not None:
        try:
            old = json.loads(job_path.read_text(encoding="utf-8")).get("settings", {})
        except (OSError, ValueError, AttributeError):
            old = None
        settings = plan.settings.to_json()
        if old is not None and old != settings:
            diff = [k for k in sorted(set(old) | set(settings)) if old.get(k) != settings.get(k)]
            shown = "; ".join(f"{k}: {old.get(k)!r} -> {settings.get(k)!r}" for k in diff[:3])
            raise GuidedBackpropError(
                f"{str(out)!r} holds the output of a run with other settings ({shown}); rerun with overwrite=True "
                f"to replace it, or choose another output folder", field="output"
            )
    sweep_temp_files(out, state, *plan.folders, recursive=plan.class_folders)
    plan.digests.save()
    write_text(job_path, json_text({"fingerprint": plan.fingerprint, "settings": plan.settings.to_json()}, indent=1))


class FolderBefore:
    """What the output folder held before a run touched it, so that a run that computed nothing can
    leave it as it was (a refused model, a bad channel... must not lock the folder for the corrected
    command): :meth:`restore` puts back ``run.json`` and ``job.json``, and removes the state folder and
    the output folder when this run created them."""

    _SAVED = ("run.json", f"{STATE_DIR}/job.json")

    def __init__(self, out: Path) -> None:
        self.out = out
        self.out_existed = out.exists()
        self.state_existed = (out / STATE_DIR).exists()
        self.journals = {p.name for p in (out / STATE_DIR).glob("journal-*.jsonl")}
        self.saved: dict[str, bytes | None] = {}
        for name in self._SAVED:
            try:
                self.saved[name] = (out / name).read_bytes()
            except OSError:
                self.saved[name] = None

    def restore(self) -> None:
        """Undo this run's writes (best effort: a folder that cannot be written stays as it is)."""
        import shutil

        state = self.out / STATE_DIR
        if not self.state_existed:
            shutil.rmtree(state, ignore_errors=True)
        else:
            for p in state.glob("journal-*.jsonl"):
                with contextlib.suppress(OSError):
                    if p.name not in self.journals and p.stat().st_size == 0:
                        p.unlink()
        for name, data in self.saved.items():
            path = self.out / name
            if not self.state_existed and name.startswith(STATE_DIR):
                continue
            with contextlib.suppress(OSError):
                if data is None:
                    path.unlink(missing_ok=True)
                else:
                    write_bytes(path, data)
        if not self.out_existed:
            sweep_temp_files(self.out)
            with contextlib.suppress(OSError):
                self.out.rmdir()  # only when empty
