"""Finding and reading image files: the only module of the package that opens them.

``find_images`` turns files, folders and glob patterns into an ordered list of paths;
``load_image`` reads one of them as an 8-bit RGB ``PIL.Image`` or raises a one-line
:class:`~guided_backprop.errors.ImageError` naming the file and the reason.
"""

from __future__ import annotations

import errno
import glob
import os
import stat
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .atomic import is_temp_name
from .errors import ImageError

__all__ = ["IMAGE_EXTENSIONS", "OUTPUT_MARKERS", "ImageNotFoundError", "ImageSearch", "PassedOver", "find_images",
           "load_image", "search_images", "to_rgb", "tool_output_reason"]

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

#: Picture formats Pillow cannot read here: a folder walk lists such files as passed over (never silently).
_UNSUPPORTED_PICTURES = frozenset({
    ".heic", ".heif", ".svg", ".svgz", ".eps", ".ps", ".ai", ".wmf", ".emf", ".raw", ".cr2", ".cr3", ".nef",
    ".arw", ".dng", ".orf", ".rw2", ".raf", ".xcf", ".jxl", ".exr", ".hdr", ".kra",
} - IMAGE_EXTENSIONS)

_GLOB_CHARS = frozenset("*?[")
_ALPHA_MODES = frozenset({"RGBA", "RGBa", "LA", "La", "PA"})


class ImageNotFoundError(ImageError, FileNotFoundError):
    """An input of :func:`find_images` (path, folder or glob) that yields no image: a usage error."""


class PassedOver(NamedTuple):
    """A path that looked like an input but is not read, and why (one line)."""

    path: Path
    reason: str


@dataclass
class ImageSearch:
    """What :func:`search_images` found: the image paths, and every path it passed over with a reason."""

    paths: list[Path] = field(default_factory=list)
    passed_over: list[PassedOver] = field(default_factory=list)


def _is_image_name(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_EXTENSIONS


def _is_hidden(name: str) -> bool:
    return name.startswith(".")


def not_a_file_reason(path: str | os.PathLike[str]) -> str | None:
    """Why ``path`` cannot be read as a file without opening it (``None``: a regular file, or missing).

    A FIFO, socket or device is never opened (opening a FIFO blocks forever); a symbolic-link loop
    or a link into an unreadable place is named as such.
    """
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return None if not os.path.islink(path) else "a broken symbolic link (its target does not exist)"
    except OSError as err:
        if err.errno == errno.ELOOP:
            return "a symbolic-link loop"
        return f"cannot be examined ({err.strerror or err})"
    if stat.S_ISREG(mode) or stat.S_ISDIR(mode):
        return None
    kind = ("a FIFO (named pipe)" if stat.S_ISFIFO(mode) else "a socket" if stat.S_ISSOCK(mode)
            else "a device" if stat.S_ISBLK(mode) or stat.S_ISCHR(mode) else "not a regular file")
    return f"{kind}, not a regular file"


#: What marks a folder as holding this tool's output: (file or folder name, text its first 64 KiB must hold,
#: or None; the command that writes it). A command that writes a new kind of folder adds its marker here.
OUTPUT_MARKERS: tuple[tuple[str, str | None, str], ...] = (
    (".guided-backprop", None, "a guided-backprop run"),  # the main command's state folder
    ("run.json", '"tool": "guided-backprop"', "a guided-backprop run"),
    ("evaluation.json", None, "guided-backprop evaluate"),
    ("units.json", '"units"', "guided-backprop units"),
    ("index.html", 'name="generator" content="guided-backprop', "a guided-backprop report"),
)


def tool_output_reason(folder: str | os.PathLike[str]) -> str | None:
    """Why ``folder`` holds this tool's output (one line for a ``skipped:`` line), or ``None``.

    Every command passes over such folders when it looks for inputs (:func:`search_images` does it
    for them), so that no command reads another's pictures (maps, figures, grids, thumbnails) as
    inputs. The markers are :data:`OUTPUT_MARKERS`: the main run's ``.guided-backprop/`` state
    folder or ``run.json``, ``evaluation.json``, ``units.json``, a report's ``index.html``.
    """
    for name, text, what in OUTPUT_MARKERS:
        path = os.path.join(folder, name)
        if text is None:
            if os.path.lexists(path):
                return f"holds the output of {what} ({name}): this tool's outputs are not inputs"
            continue
        if not os.path.isfile(path):
            continue
        try:
            with open(path, "rb") as fh:
                head = fh.read(1 << 16).decode("utf-8", "replace")
        except OSError:
            continue
        if text in head:
            return f"holds the output of {what} ({name}): this tool's outputs are not inputs"
    return None


def _walk(folder: Path, passed_over: list[PassedOver]) -> list[Path]:
    """Image files under ``folder``, recursively, sorted by their path components.

    Hidden folders are not entered and symbolic links to folders are not followed. Passed over, and
    listed in ``passed_over`` with the reason: hidden files named like images (``._IMG.jpg``, ``..png``),
    pictures Pillow cannot read (``.heic``, ``.svg``, ``.eps``...), anything named like an image that
    is not a regular file (FIFO, socket, device, symbolic-link loop), folders that cannot be read and
    folders that hold this tool's output (:func:`tool_output_reason`).
    Files with other extensions (``.txt``, ``.npy``) are not inputs and are not listed.
    """
    found: list[Path] = []

    def unreadable(err: OSError) -> None:
        passed_over.append(PassedOver(Path(err.filename or folder), f"folder cannot be read ({err.strerror or err})"))

    for root, dirs, files in os.walk(folder, onerror=unreadable):
        dirs[:] = [d for d in dirs if not _is_hidden(d)]
        ours = tool_output_reason(root)
        if ours is not None:
            passed_over.append(PassedOver(Path(root), ours))
            dirs[:] = []
            continue
        for f in files:
            path = Path(root, f)
            ext = path.suffix.lower()
            if _is_hidden(f):
                if (ext in IMAGE_EXTENSIONS or ext in _UNSUPPORTED_PICTURES) and not is_temp_name(f):
                    passed_over.append(PassedOver(path, "hidden file (the name starts with '.')"))
            elif ext in _UNSUPPORTED_PICTURES:
                passed_over.append(PassedOver(path, f"{ext} pictures cannot be read here (convert to PNG or JPEG)"))
            elif ext in IMAGE_EXTENSIONS:
                reason = not_a_file_reason(path)
                if reason is None:
                    found.append(path)
                else:
                    passed_over.append(PassedOver(path, reason))
    return sorted(found, key=lambda p: p.relative_to(folder).parts)


def _expand(item: str | Path, passed_over: list[PassedOver]) -> list[Path]:
    """The image paths one input stands for; raises ImageNotFoundError when it stands for none."""
    text = os.fspath(item)
    path = Path(text).expanduser()
    if path.is_dir():
        found = _walk(path, passed_over)
        ours = tool_output_reason(path)
        if ours is not None:
            passed_over.pop()  # the error below says it
            raise ImageNotFoundError(f"folder {text!r} {ours}; give the folder of the pictures instead")
        if not found:
            raise ImageNotFoundError(
                f"folder {text!r} contains no image files (looked for {_extensions_hint()}, recursively)"
            )
        return found
    if path.exists() or path.is_symlink():  # a named file is taken whatever its extension
        reason = not_a_file_reason(path)
        if reason is not None:
            passed_over.append(PassedOver(path, reason))
            return []
        return [path]
    if _GLOB_CHARS & set(text):
        matches = sorted(glob.glob(os.path.expanduser(text), recursive=True))
        found = []
        inside = _OutputFolders(_glob_base(text), passed_over)
        for match in matches:
            m = Path(match)
            if inside(m):
                continue
            if m.is_dir():
                found.extend(_walk(m, passed_over))
            elif _is_image_name(m):
                reason = not_a_file_reason(m)
                if reason is None:
                    found.append(m)
                else:
                    passed_over.append(PassedOver(m, reason))
        if not found:
            what = f"{len(matches)} path(s), none of them an image file" if matches else "nothing"
            raise ImageNotFoundError(
                f"pattern {text!r} matched {what} (quote the pattern so the shell does not expand it; "
                f"image extensions: {_extensions_hint()})"
            )
        return found
    raise ImageNotFoundError(f"no such file or folder: {text!r} (check the path, or quote a glob pattern)")


def _glob_base(pattern: str) -> str:
    """The folder a glob pattern starts from: its leading components without ``*``, ``?`` or ``[``."""
    parts = os.path.expanduser(pattern).split(os.sep)
    fixed = []
    for part in parts[:-1]:
        if _GLOB_CHARS & set(part):
            break
        fixed.append(part)
    return os.sep.join(fixed) or ("." if not pattern.startswith(os.sep) else os.sep)


class _OutputFolders:
    """Whether a glob's match lies in a folder holding this tool's output, between the match and the
    pattern's fixed base (each such folder listed once in ``passed_over``)."""

    def __init__(self, base: str, passed_over: list[PassedOver]) -> None:
        self.base = os.path.abspath(base)
        self.passed_over = passed_over
        self.known: dict[str, bool] = {}

    def __call__(self, match: Path) -> bool:
        folder = os.path.abspath(match if match.is_dir() else match.parent)
        chain = []
        while True:
            chain.append(folder)
            if folder == self.base or os.path.dirname(folder) == folder or not folder.startswith(self.base):
                break
            folder = os.path.dirname(folder)
        for f in reversed(chain):  # from the base down: the outermost output folder is the one named
            if f not in self.known:
                reason = tool_output_reason(f)
                self.known[f] = reason is not None
                if reason is not None:
                    self.passed_over.append(PassedOver(Path(f), reason))
            if self.known[f]:
                return True
        return False


def _extensions_hint() -> str:
    common = [".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"]
    return ", ".join(e for e in common if e in IMAGE_EXTENSIONS) + ", ... (any case)"


def find_images(inputs: Sequence[str | Path] | str | Path) -> list[Path]:
    """The image paths of :func:`search_images` (what it passed over is dropped)."""
    return search_images(inputs).paths


def search_images(inputs: Sequence[str | Path] | str | Path, *, exclude: str | os.PathLike[str] | None = None
                  ) -> ImageSearch:
    """Expand files, folders and glob patterns into a list of absolute image paths.

    - a file is taken as given, whatever its extension (reading it may still fail later);
    - a folder is walked recursively; files whose extension (any case) is in
      :data:`IMAGE_EXTENSIONS` are taken, sorted by path, hidden names skipped;
    - a pattern with ``*``, ``?`` or ``[...]`` (``**`` crosses folders) is expanded in sorted
      order; matching folders are walked, matching files kept if they have an image extension.

    Inputs keep their order; a file reached twice (also through a symbolic link) is listed once,
    at its first place. What is passed over (not a regular file, a symbolic-link loop, an unreadable
    folder, a hidden or unsupported picture in a walk) is listed in ``passed_over`` with its reason.
    Images inside the folder ``exclude`` (a command's own output folder: its pictures are no inputs
    on a rerun) are left out. Raises :class:`ImageNotFoundError` (a ``FileNotFoundError``) for no
    inputs, a missing path, an empty folder or a pattern that matches no image.
    """
    items: Iterable[str | Path] = [inputs] if isinstance(inputs, str | os.PathLike) else inputs
    items = list(items)
    if not items:
        raise ImageNotFoundError("no input given: pass image files, folders or glob patterns")
    seen: set[str] = set()
    home = None if exclude is None else os.path.realpath(exclude)
    result = ImageSearch()
    for item in items:
        for path in _expand(item, result.passed_over):
            key = os.path.realpath(path)
            if home is not None and (key == home or key.startswith(home.rstrip(os.sep) + os.sep)):
                continue
            if key not in seen:
                seen.add(key)
                result.paths.append(Path(os.path.abspath(path)))
    if home is not None:  # the command's own output folder is left out without a word, as its files are
        result.passed_over = [s for s in result.passed_over if os.path.realpath(s.path) != home]
    return result


def to_rgb(image: Image.Image) -> Image.Image:
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
    reason = not_a_file_reason(name)
    if reason is not None:
        raise ImageError(f"cannot read image {name!r}: {reason}")
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
                rgb = to_rgb(image)
                rgb.load()
    except ImageError:
        raise
    except Exception as err:  # Pillow raises many types for bad files (OSError, SyntaxError, ValueError, ...)
        raise ImageError(f"cannot read image {name!r}: {_reason(err)}") from err
    if rgb.width < 1 or rgb.height < 1:
        raise ImageError(f"cannot read image {name!r}: it has no pixels ({rgb.width}x{rgb.height})")
    return rgb
