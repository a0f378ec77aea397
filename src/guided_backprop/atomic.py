"""Atomic file writes: a hidden temporary file beside the target, then one rename.

A process killed at any moment (even ``kill -9``) leaves either the old file or the new one,
never half of one; the leftover temporary files are named ``.<name>.gbp.<pid>.<random>.tmp``
(:data:`TEMP_NAME`) so that a later run can sweep them, and nothing else.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

__all__ = ["TEMP_NAME", "atomic_file", "is_temp_name", "safe_name", "write_bytes", "write_text"]

_UNSAFE = re.compile(r"[^\w.\-]+")
#: The names of this module's temporary files, and of no other file.
TEMP_NAME = re.compile(r"^\..+\.gbp\.\d+\.[0-9a-f]{8}\.tmp$", re.DOTALL)


def is_temp_name(name: str) -> bool:
    """Whether ``name`` (a file name, no folder) is one of :func:`atomic_file`'s temporary files."""
    return TEMP_NAME.match(name) is not None


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike[str]) -> Iterator[BinaryIO]:
    """Open a temporary file for binary writing; on success it is flushed, fsynced and renamed over
    ``path`` (parent folders are created); on any exception it is removed and nothing changes."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name[:200]}.gbp.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    # 0o666 minus the umask, like an ordinary new file (mkstemp would give 0o600)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    try:
        with os.fdopen(fd, "wb") as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def write_bytes(path: str | os.PathLike[str], payload: bytes) -> None:
    """Write ``payload`` to ``path`` atomically."""
    with atomic_file(path) as fh:
        fh.write(payload)


def write_text(path: str | os.PathLike[str], text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    write_bytes(path, text.encode("utf-8"))


def safe_name(text: str, limit: int = 80) -> str:
    """A file-name-safe version of a label, stem or layer name (no separators, no leading dot)."""
    cleaned = _UNSAFE.sub("_", str(text)).strip("_").lstrip(".")
    return cleaned[:limit] or "_"
