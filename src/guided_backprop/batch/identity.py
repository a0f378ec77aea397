"""What resume compares: the content of the weights, labels and model code, and each input's identity.

A rerun skips an input only when its maps would come out the same: same settings (the plan's), same
bytes of the weights file, label file and factory source (sha256), and the same input file (size and
modification time, as ``os.stat`` gives them). Hashing a 550 MB checkpoint takes seconds, so the
digests are cached in the state folder by (path, size, mtime_ns): a file is read again only when it
changed.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path

from ..atomic import write_text

DIGESTS = "digests.json"  # in the state folder


class Digests:
    """sha256 of files, cached by (path, size, mtime_ns) in ``state/digests.json``."""

    def __init__(self, state: Path) -> None:
        self.path = state / DIGESTS
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            data = {}
        self._cache: dict[str, list] = data if isinstance(data, dict) else {}
        self._new = False

    def of(self, path: str | os.PathLike[str]) -> str | None:
        """The file's sha256 (hex), or ``None`` when ``path`` is not a readable regular file."""
        name = os.path.abspath(path)
        key = file_identity(name)
        if key is None:
            return None
        hit = self._cache.get(name)
        if isinstance(hit, list) and len(hit) == 3 and hit[:2] == key:
            return str(hit[2])
        digest = hashlib.sha256()
        try:
            with open(name, "rb") as fh:
                for block in iter(lambda: fh.read(1 << 20), b""):
                    digest.update(block)
        except OSError:
            return None
        self._cache[name] = [*key, digest.hexdigest()]
        self._new = True
        return digest.hexdigest()

    def save(self) -> None:
        """Write the cache (atomically) when a digest was computed; the state folder must exist."""
        if self._new:
            write_text(self.path, json.dumps(self._cache, indent=0, ensure_ascii=True))
            self._new = False


def model_source_file(model: str) -> str | None:
    """The Python file a factory model comes from: ``path/file.py:fn``'s file, or ``pkg.module:fn``'s module
    file (it is imported by then). ``None`` for the built-in and registry models."""
    target, sep, _attr = model.rpartition(":")
    if not sep or not target or target == "timm":
        return None
    if target.endswith(".py") or "/" in target or os.sep in target:
        return str(Path(target).expanduser().resolve())
    module = sys.modules.get(target)
    file = getattr(module, "__file__", None)
    return os.path.abspath(file) if file else None


def file_identity(path: str | os.PathLike[str]) -> list[int] | None:
    """``[size, mtime_ns]`` of an input file (following links), ``None`` when it cannot be examined."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return [st.st_size, st.st_mtime_ns]
