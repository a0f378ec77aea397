"""The resume journal (one line per finished input), the folder lock, the settings check, temp sweep."""

from __future__ import annotations

import contextlib
import json
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..atomic import write_text
from ..errors import GuidedBackpropError
from .config import STATE_DIR, BatchConfig

if TYPE_CHECKING:
    from .plan import _Plan

def _sweep_temp_files(folder: Path) -> int:
    """Remove ``.*.tmp`` files left by a run killed mid-write (ours and :func:`render.save_image`'s)."""
    removed = 0
    for dirpath, _dirnames, filenames in os.walk(folder):
        for f in filenames:
            if f.startswith(".") and f.endswith(".tmp"):
                with contextlib.suppress(OSError):
                    os.unlink(os.path.join(dirpath, f))
                    removed += 1
    return removed


class _Journal:
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

    def write(self, record: dict[str, Any]) -> None:
        line = (json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8")
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


def _read_journals(state: Path, fingerprint: str) -> dict[int, dict[str, Any]]:
    """The newest record of each idx over every journal in ``state`` that matches ``fingerprint``."""
    best: dict[int, dict[str, Any]] = {}
    for path in sorted(state.glob("journal-*.jsonl")):
        try:
            data = path.read_bytes()
        except OSError:
            continue
        for line in data.split(b"\n"):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except ValueError:
                continue  # a line cut by a kill
            if not isinstance(rec, dict) or rec.get("_fp") != fingerprint or not isinstance(rec.get("idx"), int):
                continue
            old = best.get(rec["idx"])
            if old is None or float(rec.get("_t", 0)) >= float(old.get("_t", 0)):
                best[rec["idx"]] = rec
    return best


def _complete(rec: dict[str, Any] | None, path: str, out: Path) -> bool:
    """A journal record that says this input is done and whose files all exist."""
    if not rec or rec.get("status") != "ok" or rec.get("input") != path:
        return False
    names = list((rec.get("files") or {}).values()) + list((rec.get("raw") or {}).values())
    return bool(names) and all((out / n).is_file() for n in names)


@contextlib.contextmanager
def _folder_lock(state: Path) -> Iterator[None]:
    """Refuse a second run writing into the same output folder at the same time (POSIX only)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    state.mkdir(parents=True, exist_ok=True)
    fh = open(state / "lock", "a+")  # noqa: SIM115
    try:
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            raise GuidedBackpropError(f"another guided-backprop run is writing to {str(state.parent)!r}; wait for "
                                      f"it to finish or choose another --output") from err
        yield
    finally:
        fh.close()


def _prepare_folder(out: Path, plan: _Plan, cfg: BatchConfig) -> None:
    """Rank 0, before any image: check the folder holds no other job, write job.json and run.json."""
    state = out / STATE_DIR
    job_path = state / "job.json"
    if cfg.overwrite:
        for p in state.glob("journal-*.jsonl"):
            p.unlink()
    elif job_path.is_file():
        try:
            old = json.loads(job_path.read_text(encoding="utf-8")).get("settings", {})
        except (OSError, ValueError, AttributeError):
            old = None
        if old is not None and old != plan.settings:
            diff = [k for k in sorted(set(old) | set(plan.settings)) if old.get(k) != plan.settings.get(k)]
            shown = "; ".join(f"{k}: {old.get(k)!r} -> {plan.settings.get(k)!r}" for k in diff[:3])
            raise GuidedBackpropError(
                f"{str(out)!r} holds the output of a run with other settings ({shown}); rerun with --overwrite "
                f"to replace it, or choose another --output"
            )
    _sweep_temp_files(out)
    write_text(job_path, json.dumps({"fingerprint": plan.fingerprint, "settings": plan.settings}, indent=1))
