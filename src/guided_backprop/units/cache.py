"""Where units fire, kept on disk: the top activations of a channel over a set of image files.

Finding a channel's strongest responses takes one pass over every image of the folder; drawing its
grid afterwards takes ``k`` explanations. The explorer ("what does this unit respond to in the
folder") and ``guided-backprop units`` share the pass through this cache: one JSON file per
channel in ``<folder>/.unit-cache/``, beside the grids, named by the layer, the channel and a key
that changes with anything that changes the answer: the model's parameters and buffers, the
preprocessing, ``k``, and each file's path, size and modification time. A stale or unreadable entry
is ignored (computed again and replaced); files are written atomically.
"""

from __future__ import annotations

import hashlib
import json
import math
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..atomic import safe_name, write_text
from ..batch.identity import file_identity
from ..reporting import Reporter
from .grids import ImageFiles, TopActivation, UnitTop, top_activations

__all__ = ["CACHE_FOLDER", "cached_tops", "model_digest", "tops_key"]

CACHE_FOLDER = ".unit-cache"
_VERSION = 1


def model_digest(model: nn.Module) -> str:
    """A digest of the model's parameters and buffers (names, shapes, dtypes, values)."""
    h = hashlib.blake2b(digest_size=16)
    h.update(type(model).__qualname__.encode())
    for name, t in [*model.named_parameters(), *model.named_buffers()]:
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype}".encode())
        h.update(t.detach().to("cpu").contiguous().view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def tops_key(model: nn.Module, paths: Sequence[Path], preprocessing: Any, layer: str, k: int, *,
             digest: str | None = None) -> str:
    """The key of one layer's cached tops: changes with the model, the inputs, the preprocessing and ``k``."""
    pre = preprocessing.to_dict() if hasattr(preprocessing, "to_dict") else repr(preprocessing)
    files = sorted([str(Path(p).resolve()), file_identity(p)] for p in paths)  # any order of the same files
    text = json.dumps({"v": _VERSION, "model": digest or model_digest(model), "pre": pre, "layer": layer,
                       "k": int(k), "files": files}, sort_keys=True, default=str)
    return hashlib.blake2b(text.encode(), digest_size=12).hexdigest()


def _file(folder: Path, layer: str, channel: int, key: str) -> Path:
    return folder / CACHE_FOLDER / f"{safe_name(layer)}_c{int(channel)}_{key}.json"


def _read(path: Path, key: str, channel: int, where: dict[str, int]) -> tuple[list[TopActivation], list[str]] | None:
    """The cached tops of a channel, their images indexed by ``where`` (file -> index in the inputs)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        if data.get("key") != key or data.get("channel") != channel:
            return None
        top = [TopActivation(where[str(t["source"])], int(t["y"]), int(t["x"]), float(t["activation"]),
                             source=str(t["source"])) for t in data["top"]]
        skipped = [str(s) for s in data["skipped"]]
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None  # unreadable, from another version or of other files: computed again
    return top, skipped


def _write(path: Path, key: str, layer: str, unit: UnitTop, sources: Sequence[str], skipped: list[str]) -> None:
    top = [{"image": t.image, "source": sources[t.image], "y": t.y, "x": t.x,
            "activation": t.activation if math.isfinite(t.activation) else None} for t in unit.top]
    data = {"key": key, "layer": layer, "channel": unit.channel, "top": top, "skipped": skipped}
    write_text(path, json.dumps(data, indent=1) + "\n")


def cached_tops(folder: str | Path, model: nn.Module, paths: Sequence[str | Path], layer: str, preprocessing: Any,
                channels: Sequence[int], k: int = 9, *, batch_size: int = 16,
                reporter: Reporter | None = None) -> tuple[list[UnitTop], list[int]]:
    """The top ``k`` activations of each of ``channels`` of ``layer`` over the image files ``paths``
    (see :func:`guided_backprop.units.grids.top_activations`), read from ``folder/.unit-cache`` where a
    previous run left them, the others computed in one pass (its progress told to ``reporter``;
    unreadable images skipped and told to ``reporter``, without one as a ``UserWarning``, also when
    read from the cache) and stored. Returns the tops in the order of ``channels`` and the channels
    read from the cache."""
    folder = Path(folder)
    files = [Path(p) for p in paths]
    key = tops_key(model, files, preprocessing, layer, k)
    sources = [str(p.resolve()) for p in files]
    where = {source: i for i, source in enumerate(sources)}
    found: dict[int, UnitTop] = {}
    skipped: list[str] = []
    for c in channels:
        entry = _read(_file(folder, layer, c, key), key, int(c), where)
        if entry is not None:
            found[int(c)] = UnitTop(int(c), None, entry[0])
            skipped = entry[1]
    reused = list(found)
    missing = [int(c) for c in channels if int(c) not in found]
    if missing:
        caught = _Unreadable(reporter)
        tops = top_activations(model, ImageFiles(files, preprocessing), layer, missing, k=k,
                               batch_size=batch_size, on_error="skip", reporter=caught)
        skipped = caught.messages
        for unit in tops:
            found[unit.channel] = unit
            _write(_file(folder, layer, unit.channel, key), key, layer, unit, sources, skipped)
    for message in skipped:  # the unreadable images, said again whether the pass ran or not
        if reporter is not None:
            reporter.failed(message)
        else:
            warnings.warn(message, UserWarning, stacklevel=2)
    return [found[int(c)] for c in channels], reused


class _Unreadable(Reporter):
    """Keeps the images a pass skipped (to store them with the tops); passes its progress on."""

    def __init__(self, reporter: Reporter | None) -> None:
        self.reporter = reporter
        self.messages: list[str] = []

    def progress(self, done: int, total: int, task: str = "") -> None:
        if self.reporter is not None:
            self.reporter.progress(done, total, task)

    def failed(self, reason: str) -> None:
        self.messages.append(reason)
