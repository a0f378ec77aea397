"""Stable input numbers and the removal of outputs that no input has any more.

An output's name carries its input's number (``map_{idx}_...``, ``im_{idx}.png``), so the numbers
must not move when a folder grows: ``aaa.jpg`` added before five done photos must not renumber them
(their files would then name one input while showing another). The numbers an output folder has
given are kept in ``OUT/.guided-backprop/numbers.json`` (``{"inputs": {path: idx}}``, also read back
from the journal lines of folders written before that file existed): an input keeps its number for
good, a new input gets the next unused one.

What this tool wrote is known from the journal lines and the previous ``index.jsonl``; once a run has
merged its index, a file they name that no row of the new index names (an input's earlier class, an
input no longer given, an earlier name template) is removed: only those names, only inside the folder.
"""

from __future__ import annotations

import contextlib
import json
import os
import stat
from collections.abc import Iterable, Sequence
from pathlib import Path

from ..atomic import write_text
from ..records import IndexRecord, json_text
from .journal import journal_entries

NUMBERS = "numbers.json"  # in the state folder


def _known_numbers(state: Path) -> dict[str, int]:
    """``{input path: idx}`` this folder has given: ``numbers.json``, then the journal lines."""
    known: dict[str, int] = {}
    try:
        data = json.loads((state / NUMBERS).read_text(encoding="utf-8")).get("inputs", {})
    except (OSError, ValueError, AttributeError):
        data = {}
    if isinstance(data, dict):
        known.update({str(k): v for k, v in data.items() if isinstance(v, int) and not isinstance(v, bool) and v >= 0})
    for entry in journal_entries(state):
        known.setdefault(entry.record.input, entry.record.idx)
    return known


def input_numbers(state: Path, paths: Sequence[Path]) -> tuple[list[int], dict[str, int]]:
    """The number of each input (aligned with ``paths``) and the table to save (:func:`save_numbers`).

    An input keeps the number the folder gave it; new inputs get the next unused numbers, in order.
    """
    known = _known_numbers(state)
    taken: set[int] = set()
    numbers: list[int] = []
    fresh = max(known.values(), default=-1) + 1
    for path in paths:
        idx = known.get(str(path))
        if idx is None or idx in taken:  # new, or a damaged table giving two inputs one number
            idx, fresh = fresh, fresh + 1
            known[str(path)] = idx
        taken.add(idx)
        numbers.append(idx)
    return numbers, known


def save_numbers(state: Path, table: dict[str, int]) -> None:
    """Write ``numbers.json`` (atomically); the state folder must exist."""
    write_text(state / NUMBERS, json_text({"inputs": table}, indent=0) + "\n")


def _listed_files(records: Iterable[IndexRecord]) -> set[str]:
    names: set[str] = set()
    for r in records:
        names |= set(r.files.values()) | set((r.raw or {}).values())
    return names


def _previous_index(out: Path) -> list[IndexRecord]:
    rows = []
    try:
        lines = (out / "index.jsonl").read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError):
        return []
    for line in lines:
        with contextlib.suppress(ValueError):  # a line of another version or cut: its files are not known
            rows.append(IndexRecord.from_json(json.loads(line)))
    return rows


def earlier_outputs(out: Path, state: Path) -> set[str]:
    """Every file name (relative to ``out``) this tool's journals and index have listed."""
    return _listed_files([e.record for e in journal_entries(state)]) | _listed_files(_previous_index(out))


def remove_stale(out: Path, earlier: set[str], rows: Sequence[IndexRecord]) -> list[str]:
    """Remove the files of ``earlier`` that no row of the new index lists; returns their names.

    A name is only followed inside ``out`` (no absolute path, no ``..``), and only a regular file is
    removed (never a folder or what a symbolic link points to); folders left empty go as well.
    """
    current = {os.path.normcase(os.path.normpath(n)) for n in _listed_files(rows)}
    removed = []
    for name in sorted(earlier):
        norm = os.path.normpath(name)
        if os.path.isabs(norm) or norm.split(os.sep)[0] == ".." or os.path.normcase(norm) in current:
            continue
        path = out / norm
        try:
            if not stat.S_ISREG(os.lstat(path).st_mode):
                continue
            os.unlink(path)
        except OSError:
            continue
        removed.append(name)
        parent = path.parent
        while parent != out and out in parent.parents:  # class-dependent subfolders left empty
            try:
                parent.rmdir()
            except OSError:
                break
            parent = parent.parent
    return removed
