"""Folder in -> maps, index and errors out: the batch job behind the ``guided-backprop`` command.

One process (or each ``torchrun`` rank, which takes every ``WORLD_SIZE``-th input) runs a pipeline
whose stages overlap:

1. **decode** in ``DataLoader`` worker processes (:func:`images.load_image` + the model's
   :class:`~guided_backprop.models.preprocessing.Preprocessing`); a file that cannot be read becomes an
   error record, never an exception;
2. **compute** on the device in batches of same-size tensors (inputs of varying size, i.e. a
   preprocessing without a crop, are grouped by size), one forward pass for every method and target;
3. **write** in background threads: rendering (:mod:`guided_backprop.pictures.render`), PNG encoding and atomic saves;
   then one line in the rank's journal.

Queues are bounded (prefetch, pending batch, writer backlog), so memory stays flat for any number of
images. Every file is written to a temporary name and renamed; the journal
(``OUT/.guided-backprop/journal-RANK.jsonl``, one line per finished input, written after its files)
lets a rerun of the same command skip the inputs that are complete. The final ``index.jsonl``,
``predictions.csv`` and ``run.json`` are written (atomically) by rank 0 once every rank is done.

Output folder contract (read by :mod:`.report`): ``docs/output-folder.md`` describes every file and
key (``run.json``, ``index.jsonl``, ``predictions.csv``); :mod:`guided_backprop.records` defines the records
written (:class:`~..records.IndexRecord`, :class:`~..records.RunRecord`) and reads them back.

Modules: :mod:`.config` (settings and result), :mod:`.names` (file name templates), :mod:`.plan`
(everything resolved before any image), :mod:`.decode`, :mod:`.job` (compute and write),
:mod:`.writer` (the writer pool), :mod:`.pipeline`, :mod:`.journal` (resume, lock), :mod:`.dist`
(torchrun), :mod:`.outputs` (index, CSV, run.json), :mod:`.runner` (:func:`run`).
"""

from __future__ import annotations

from .config import (
    STATE_DIR,
    BatchConfig,
    BatchResult,
    DiskFull,
    RunStopped,
    Terminated,
)
from .dist import PeerFailed
from .names import DEFAULT_INPUT_NAME, MAP_NAME_FIELDS, default_map_name
from .runner import run

__all__ = [
    "DEFAULT_INPUT_NAME",
    "PeerFailed",
    "DiskFull",
    "RunStopped",
    "Terminated",
    "MAP_NAME_FIELDS",
    "STATE_DIR",
    "BatchConfig",
    "BatchResult",
    "default_map_name",
    "run",
]
