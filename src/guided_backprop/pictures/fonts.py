"""The fonts pictures are drawn with: matplotlib's bundled DejaVu Sans at any size, found offline
(without importing matplotlib), with Pillow's own fonts as fallbacks; and text the chosen font can draw."""

from __future__ import annotations

import contextlib
import importlib.util
import os
from functools import lru_cache
from typing import Any

from PIL import ImageFont

__all__ = ["load_font", "printable"]


def _dejavu_path() -> str | None:
    """matplotlib's bundled DejaVu Sans (wide Unicode coverage: accents, Greek, Cyrillic, dashes), found
    without importing matplotlib; None if it is not there."""
    spec = importlib.util.find_spec("matplotlib")
    for folder in (spec.submodule_search_locations or []) if spec else []:
        candidate = os.path.join(folder, "mpl-data", "fonts", "ttf", "DejaVuSans.ttf")
        if os.path.isfile(candidate):
            return candidate
    return None


def _findfont() -> str | None:
    """DejaVu Sans through ``matplotlib.font_manager`` (for an unusual matplotlib layout); None if absent."""
    with contextlib.suppress(Exception):
        from matplotlib import font_manager

        return str(font_manager.findfont("DejaVu Sans", fallback_to_default=False))
    return None


@lru_cache(maxsize=32)
def load_font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    """A font at ``size`` px that exists offline: matplotlib's DejaVu Sans, else Pillow's built-in
    FreeType font (ASCII only), else Pillow's fixed bitmap font."""
    path = _dejavu_path() or _findfont()
    if path is not None:
        with contextlib.suppress(OSError, ImportError):
            return ImageFont.truetype(path, size=size)
    try:
        return ImageFont.load_default(size=size)
    except Exception:  # old Pillow or no FreeType: the bitmap font, whatever the size
        return ImageFont.load_default()


def printable(text: str, font: Any) -> str:
    """``text`` as ``font`` can draw it: the bitmap fallback font encodes Latin-1 only, the rest is replaced."""
    if isinstance(font, ImageFont.FreeTypeFont):
        return text
    return text.encode("latin-1", "replace").decode("latin-1")
