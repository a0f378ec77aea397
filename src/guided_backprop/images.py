"""Finding and reading image files: the only module of the package that opens them.

``find_images`` turns files, folders and glob patterns into an ordered list of paths;
``load_image`` reads one of them as an 8-bit RGB ``PIL.Image`` or raises a one-line
:class:`~guided_backprop.errors.ImageError` naming the file and the reason.
"""

from __future__ import annotations

import glob
import os
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import ImageError

__all__ = ["IMAGE_EXTENSIONS", "ImageNotFoundError", "find_images", "load_image"]

# Formats Pillow registers but cannot decode here: identification stubs (BUFR, GRIB, HDF5,
# WMF/EMF off Windows, MPEG) and EPS, which needs Ghostscript. A file named explicitly is
# still tried; folder walks and globs skip these extensions.
_UNDECODABLE_FORMATS = frozenset({"BUFR", "GRIB", "HDF5", "WMF", "MPEG", "EPS"})


def _image_extensions() -> frozenset[str]:
    Image.init()
    return frozenset(
        ext.lower()
        for ext, fmt in Image.registered_extensions().items()
        if fmt in Image.OPEN and fmt not in _UNDECODABLE_FORMATS
    )


#: Lower-case extensions (with the dot) of every format Pillow can read: ``.jpg``, ``.png``, ``.webp``...
IMAGE_EXTENSIONS: frozenset[str] = _image_extensions()

_GLOB_CHARS = frozenset("*?[")
_ALPHA_MODES = frozenset({"RGBA", "RGBa", "LA", "La", "PA"})


class ImageNotFoundError(ImageError, FileNotFoundError):
    """An input of :func:`find_images` (path, folder or glob) that yields no image: a usage error."""


def _is_image_name(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS


def _is_hidden(name: str) -> bool:
    return name.startswith(".")


def _walk(folder: Path) -> list[Path]:
    """Image files under ``folder``, recursively, sorted by their path components.

    Hidden files and folders (names starting with ".", e.g. macOS ``._IMG.jpg`` resource forks
    and our own ``.*.tmp`` files) are skipped; symbolic links to folders are not followed.
    """
    found: list[Path] = []
    for root, dirs, files in os.walk(folder):
        dirs[:] = [d for d in dirs if not _is_hidden(d)]
        found.extend(Path(root, f) for f in files if not _is_hidden(f) and _is_image_name(Path(f)))
    return sorted(found, key=lambda p: p.relative_to(folder).parts)


def _expand(item: str | Path) -> list[Path]:
    """The image paths one input stands for; raises ImageNotFoundError when it stands for none."""
    text = os.fspath(item)
    path = Path(text).expanduser()
    if path.is_dir():
        found = _walk(path)
        if not found:
            raise ImageNotFoundError(
                f"folder {text!r} contains no image files (looked for {_extensions_hint()}, recursively)"
            )
        return found
    if path.exists() or path.is_symlink():  # a named file is taken whatever its extension
        return [path]
    if _GLOB_CHARS & set(text):
        matches = sorted(glob.glob(os.path.expanduser(text), recursive=True))
        found = []
        for match in matches:
            m = Path(match)
            if m.is_dir():
                found.extend(_walk(m))
            elif _is_image_name(m):
                found.append(m)
        if not found:
            what = f"{len(matches)} path(s), none of them an image file" if matches else "nothing"
            raise ImageNotFoundError(
                f"pattern {text!r} matched {what} (quote the pattern so the shell does not expand it; "
                f"image extensions: {_extensions_hint()})"
            )
        return found
    raise ImageNotFoundError(f"no such file or folder: {text!r} (check the path, or quote a glob pattern)")


def _extensions_hint() -> str:
    common = [".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"]
    return ", ".join(e for e in common if e in IMAGE_EXTENSIONS) + ", ... (any case)"


def find_images(inputs: Sequence[str | Path] | str | Path) -> list[Path]:
    """Expand files, folders and glob patterns into a list of absolute image paths.

    - a file is taken as given, whatever its extension (reading it may still fail later);
    - a folder is walked recursively; files whose extension (any case) is in
      :data:`IMAGE_EXTENSIONS` are taken, sorted by path, hidden names skipped;
    - a pattern with ``*``, ``?`` or ``[...]`` (``**`` crosses folders) is expanded in sorted
      order; matching folders are walked, matching files kept if they have an image extension.

    Inputs keep their order; a file reached twice (also through a symbolic link) is listed once,
    at its first place. Raises :class:`ImageNotFoundError` (a ``FileNotFoundError``) for no inputs,
    a missing path, an empty folder or a pattern that matches no image.
    """
    items: Iterable[str | Path] = [inputs] if isinstance(inputs, str | os.PathLike) else inputs
    items = list(items)
    if not items:
        raise ImageNotFoundError("no input given: pass image files, folders or glob patterns")
    seen: set[str] = set()
    result: list[Path] = []
    for item in items:
        for path in _expand(item):
            key = os.path.realpath(path)
            if key not in seen:
                seen.add(key)
                result.append(Path(os.path.abspath(path)))
    return result


def _to_rgb(image: Image.Image) -> Image.Image:
    """Any Pillow mode -> 8-bit RGB. Transparent pixels are composited on white."""
    mode = image.mode
    if mode.startswith("I;16") or mode in ("I", "F"):
        return _high_depth_to_rgb(image)
    if mode in _ALPHA_MODES or "transparency" in image.info:  # palette / colour-key transparency too
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return image.convert("RGB")  # L, 1, P, CMYK, YCbCr, LAB, HSV, RGB (copy)


def _high_depth_to_rgb(image: Image.Image) -> Image.Image:
    """16-bit and 32-bit grayscale (modes I;16*, I, F) -> 8-bit RGB, scaled, not clipped.

    ``I;16*`` and ``I`` hold 0..65535 and map to 0..255 (``round(v / 257)``); ``I`` values above
    65535 (true 32-bit data) are scaled by the image's maximum instead. ``F`` (float) images in
    0..1 are multiplied by 255, others clipped to 0..255. Negative and non-finite values become 0.
    """
    values = np.asarray(image).astype(np.float64)
    values = np.where(np.isfinite(values), values, 0.0).clip(min=0.0)
    top = float(values.max()) if values.size else 0.0
    if image.mode == "F":
        scale = 1.0 if top <= 1.0 else 255.0
    else:
        scale = 65535.0 if top <= 65535.0 else top
    grey = np.floor(values / scale * 255.0 + 0.5).clip(0, 255).astype(np.uint8)
    return Image.fromarray(grey).convert("RGB")


def _reason(err: BaseException) -> str:
    """A short, one-line reason for a failure of Pillow or the OS."""
    if isinstance(err, IsADirectoryError):
        return "is a folder, not an image file"
    if isinstance(err, FileNotFoundError):
        return "no such file"
    if isinstance(err, PermissionError):
        return "permission denied"
    if isinstance(err, UnidentifiedImageError):
        return "not an image Pillow can read (unknown format or not an image at all)"
    if isinstance(err, Image.DecompressionBombError | Image.DecompressionBombWarning):
        return (
            f"refused as a possible decompression bomb: {err} (raise PIL.Image.MAX_IMAGE_PIXELS if you trust this file)"
        )
    text = " ".join(str(err).split()) or type(err).__name__
    if "truncated" in text:
        return f"truncated or incomplete image data ({text})"
    return f"corrupt or unsupported image ({type(err).__name__}: {text})"


def load_image(path: str | Path) -> Image.Image:
    """Read an image file as an 8-bit RGB ``PIL.Image``, fully loaded, with the file closed.

    - EXIF orientation is applied (``ImageOps.exif_transpose``); a broken EXIF block is ignored;
    - animated GIF/WebP/APNG/TIFF: the first frame;
    - 16-bit images are scaled to 8 bits (``round(v / 257)``), not clipped at 255;
    - palette, CMYK, grayscale (``L``, ``1``) and other modes are converted to RGB;
    - transparency (``RGBA``, ``LA``, ``PA``, palette or colour-key transparency) is composited
      on a white background;
    - truncated files are errors: ``ImageFile.LOAD_TRUNCATED_IMAGES`` is left as it is (False by
      default), so half an image is never returned silently;
    - images over ``PIL.Image.MAX_IMAGE_PIXELS`` are refused (Pillow's decompression-bomb guard,
      its warning made an error for the duration of this call only).

    Raises :class:`ImageError` with a one-line message naming the file and the reason: missing,
    a folder, unreadable, empty, not an image, truncated, corrupt, too large.
    """
    name = os.fspath(path)
    try:
        if os.path.isfile(name) and os.path.getsize(name) == 0:
            raise ImageError(f"cannot read image {name!r}: empty file (0 bytes)")
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(name) as opened:
                opened.seek(0)
                opened.load()
                try:
                    image = ImageOps.exif_transpose(opened)
                except Exception:  # a broken EXIF block must not cost the picture: keep it unrotated
                    image = opened.copy()
                rgb = _to_rgb(image)
                rgb.load()
    except ImageError:
        raise
    except Exception as err:  # Pillow raises many types for bad files (OSError, SyntaxError, ValueError, ...)
        raise ImageError(f"cannot read image {name!r}: {_reason(err)}") from err
    if rgb.width < 1 or rgb.height < 1:
        raise ImageError(f"cannot read image {name!r}: it has no pixels ({rgb.width}x{rgb.height})")
    return rgb
