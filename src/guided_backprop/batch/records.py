"""The output folder's records: how ``index.jsonl``, ``run.json`` and the journal are encoded."""

from __future__ import annotations

import json
import re
from typing import Any

_SURROGATE = re.compile("[\ud800-\udfff]")


def json_text(value: Any, *, indent: int | None = None) -> str:
    """JSON that is valid UTF-8 for any file name: readable non-ASCII, lossless for names that are
    not UTF-8.

    A file name that is not valid UTF-8 reaches Python with surrogate escapes (``b"\\xff"`` is
    ``"\\udcff"``); it is written as the JSON escape ``\\udcff``, which ``json.loads`` turns back into
    the same string (``os.fsencode`` then gives the original bytes). Every other character is
    written as itself.
    """
    text = json.dumps(value, ensure_ascii=False, indent=indent)
    return _SURROGATE.sub(lambda m: f"\\u{ord(m.group()):04x}", text)
