"""Maps -> pictures: normalisation, colour maps, heat maps and overlays, saving.

Used by the command line, the HTML report and the Python API. Nothing here reads a file;
only :func:`save_image` writes one (atomically). Colour maps come from matplotlib as lookup
tables (imported lazily, never ``pyplot``); drawing is done with Pillow.

Pictures are ``numpy.uint8`` arrays of shape (H, W, 3), RGB. Text, colour bars and panels are
drawn around them by :mod:`.panels`.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Union

import numpy as np
import numpy.typing as npt
from PIL import Image, ImageDraw

from ..atomic import atomic_file
from ..errors import InputError, UnknownNameError
from ..methods import Drawing, get_method
from .fonts import load_font, printable

if TYPE_CHECKING:
    import torch

__all__ = [
    "DEFAULT_PERCENTILE",
    "HEAT_CMAP",
    "NORMALIZATIONS",
    "SIGNED_CMAP",
    "bytescale",
    "Mark",
    "outline_box",
    "outline_region",
    "heatmap",
    "heatmap_overlay",
    "map_to_image",
    "method_picture",
    "save_image",
    "to_pil",
    "value_range",
]

Normalization = Literal["percentile", "minmax", "abs", "signed"]
#: The ways :func:`map_to_image` turns a map into a picture; the first is the default.
NORMALIZATIONS: tuple[str, ...] = ("percentile", "minmax", "abs", "signed")
DEFAULT_PERCENTILE = 99.5
SIGNED_CMAP = "RdBu_r"  # diverging: negative blue, zero neutral (#f7f7f7), positive red
HEAT_CMAP = "inferno"  # perceptually uniform, for Grad-CAM heat maps

ArrayLike = Union[np.ndarray, "torch.Tensor"]  # torch is not imported here: the CLI's --help loads this module
Picture = np.ndarray | Image.Image


# ----------------------------------------------------------------------------- helpers


def _to_numpy(m: Any) -> np.ndarray:
    """Tensor or array -> numpy array (detached, on the CPU; half/bfloat16 widened to float32)."""
    tensors = sys.modules.get("torch")  # a tensor means torch is loaded; an array does not need it
    if tensors is not None and isinstance(m, tensors.Tensor):
        t = m.detach().cpu()
        if t.is_floating_point() and t.dtype not in (tensors.float32, tensors.float64):
            t = t.float()
        return t.numpy()
    return np.asarray(m)


def finite_copy(a: np.ndarray, dtype: npt.DTypeLike = np.float64) -> np.ndarray:
    """A float copy with NaN and +-inf replaced by 0 (a map with them would otherwise be all NaN)."""
    out: np.ndarray = np.array(a, dtype=dtype)
    out[~np.isfinite(out)] = 0
    return out


def chw(m: Any, *, what: str = "map") -> np.ndarray:
    """A map of shape (C, H, W) or (H, W) -> numpy (C, H, W), same dtype."""
    a = _to_numpy(m)
    if a.ndim == 2:
        a = a[None]
    if a.ndim != 3 or a.shape[1] == 0 or a.shape[2] == 0:
        raise InputError(
            f"{what} must have shape (C, H, W) or (H, W), got {tuple(a.shape)}; "
            "pick one map first, e.g. explanation.maps['guided_backprop'][0, 0]"
        )
    return a


def _check_percentile(percentile: float) -> float:
    if not 0 < percentile <= 100:
        raise InputError(f"percentile must be in (0, 100], got {percentile!r}; 99.5 is the default")
    return float(percentile)


def check_norm(norm: str) -> str:
    if norm not in NORMALIZATIONS:
        raise UnknownNameError("normalization", str(norm), NORMALIZATIONS)
    return norm


def _clip_value(magnitudes: np.ndarray, percentile: float) -> float:
    """The ``percentile``-th percentile of ``magnitudes`` (>= 0); its maximum if that is 0; 0 if all are 0."""
    p = float(np.percentile(magnitudes, percentile))
    if not p > 0:
        p = float(magnitudes.max())
    return p


def _round_byte(x: np.ndarray) -> np.ndarray:
    """Values in [0, 255] -> uint8, rounding halves up (127.5 -> 128)."""
    return np.floor(np.clip(x, 0, 255) + 0.5).astype(np.uint8)


@lru_cache(maxsize=64)
def _lut(name: str, n: int = 256) -> np.ndarray:
    """Matplotlib colour map ``name`` sampled at ``n`` evenly spaced points -> (n, 3) uint8, read-only."""
    import matplotlib  # lazy: keeps ``import guided_backprop`` light

    try:
        cmap = matplotlib.colormaps[name]
    except KeyError:
        raise UnknownNameError(
            "colour map", name, sorted(matplotlib.colormaps), hint="any name of matplotlib.colormaps"
        ) from None
    rgba = cmap.resampled(n)(np.arange(n))
    lut = _round_byte(np.asarray(rgba)[:, :3] * 255.0)
    lut.setflags(write=False)
    return lut


def colorize(t: np.ndarray, cmap: str, *, odd: bool = False) -> np.ndarray:
    """Values ``t`` in [0, 1] (H, W) -> (H, W, 3) uint8 through colour map ``cmap``.

    With ``odd`` the table has 255 entries, so t = 0.5 lands exactly on the colour map's centre
    (the neutral colour of a diverging map).
    """
    n = 255 if odd else 256
    idx = np.floor(np.clip(t, 0.0, 1.0) * (n - 1) + 0.5).astype(np.intp)
    return _lut(cmap, n)[idx]


def _grey_or_cmap(byte_values: np.ndarray, cmap: str | None) -> np.ndarray:
    """(H, W) uint8 -> (H, W, 3): grey, or through ``cmap`` (byte value = table index)."""
    if cmap is None:
        return np.repeat(byte_values[..., None], 3, axis=-1)
    return _lut(cmap, 256)[byte_values]


# ----------------------------------------------------------------------------- maps -> pictures


def bytescale(data: np.ndarray, cmin: float | None = None, cmax: float | None = None) -> np.ndarray:
    """``scipy.misc.bytescale`` as ``scipy.misc.imsave`` applied it (scipy < 1.2): the seed's look.

    ``(data - min) * (255 / (max - min))``, then ``.clip(0, 255) + 0.5`` cast to uint8 (i.e.
    rounded half up), computed in the data's own float type like scipy did. A constant array
    (max == min) has its range taken as 1, so it comes out all 0 (black). A uint8 array is
    returned unchanged, as scipy did.
    """
    if data.dtype == np.uint8:
        return data
    if not np.issubdtype(data.dtype, np.floating):
        data = data.astype(np.float64)  # scipy's int array * float64 scale gave float64 too
    kind = data.dtype.type
    lo = kind(data.min() if cmin is None else cmin)
    hi = kind(data.max() if cmax is None else cmax)
    span = hi - lo
    if span < 0:
        raise InputError(f"cmax ({hi!r}) must not be below cmin ({lo!r})")
    if span == 0:
        span = kind(1)
    # scipy computed the scale in float64, then numpy (< 2) cast it to the array's type for the product
    scale = kind(255.0 / float(span))
    scaled = (data - lo) * scale + kind(0)
    return (scaled.clip(0, 255) + kind(0.5)).astype(np.uint8)


def value_range(
    m: ArrayLike, *, norm: str = "percentile", percentile: float = DEFAULT_PERCENTILE
) -> tuple[float, float]:
    """The map values that :func:`map_to_image` puts at the two ends of its scale (for colour bars).

    percentile / signed: (-p, p); abs: (0, p); minmax: (min, max) of the whole map. ``p`` is the
    clip value described in :func:`map_to_image`.
    """
    check_norm(norm)
    percentile = _check_percentile(percentile)
    a = finite_copy(chw(m))
    if norm == "minmax":
        return float(a.min()), float(a.max())
    if norm == "abs":
        return 0.0, _clip_value(np.abs(a).max(axis=0), percentile)
    if norm == "signed":
        p = _clip_value(np.abs(a.sum(axis=0)), percentile)
        return -p, p
    p = _clip_value(np.abs(a), percentile)
    return -p, p


def map_to_image(
    m: ArrayLike,
    *,
    norm: str = "percentile",
    percentile: float = DEFAULT_PERCENTILE,
    cmap: str | None = None,
) -> np.ndarray:
    """Turn one attribution map (C, H, W) or (H, W) into an RGB picture (H, W, 3) uint8.

    Channels are taken in the map's order as R, G, B (flip a BGR network's map first).
    NaN and infinite values count as 0. ``p`` below is the ``percentile``-th percentile of
    the magnitudes, or their maximum when that percentile is 0 (sparse maps).

    - ``"percentile"`` (default; Captum's ``outlier_perc`` idea): ``p`` of |value| over all pixels
      and channels; each value clipped to [-p, p] and mapped linearly to [0, 255], per pixel and
      channel, so 0 is mid grey (128) and a few dominant pixels do not wash out the rest.
      An all-zero map gives uniform mid grey.
    - ``"minmax"``: the seed's exact look, ``scipy.misc.imsave``'s :func:`bytescale` over the whole
      map (all pixels and channels together). A constant map gives black.
    - ``"abs"``: max over channels of |value|, clipped at ``p`` and scaled to [0, 255]: grayscale,
      or through ``cmap``. An all-zero map gives black (the colour map's low end).
    - ``"signed"``: sum over channels, divided by ``p`` of its magnitude, clipped to [-1, 1], through
      a diverging colour map (``cmap``, default ``"RdBu_r"``): negative blue, 0 the map's neutral
      centre, positive red. An all-zero map gives the neutral colour everywhere.

    ``cmap`` (any ``matplotlib.colormaps`` name) colours single-channel pictures: ``abs``,
    ``signed``, and ``percentile``/``minmax`` of a one-channel map.
    """
    check_norm(norm)
    percentile = _check_percentile(percentile)
    raw = chw(m)
    channels = raw.shape[0]
    if norm in ("percentile", "minmax") and channels not in (1, 3):
        hint = " (channels first: transpose an (H, W, C) array)" if raw.shape[2] in (1, 3) else ""
        raise InputError(
            f"norm={norm!r} needs a map with 1 or 3 channels, got shape {tuple(raw.shape)}{hint}; "
            "norm='abs' or 'signed' reduce any number of channels"
        )
    if cmap is not None and norm in ("percentile", "minmax") and channels == 3:
        raise InputError(
            f"cmap={cmap!r} colours single-channel pictures, but norm={norm!r} of a 3-channel map is "
            "already in colour; use norm='abs' or norm='signed' with a colour map"
        )

    if norm == "minmax":
        dtype = raw.dtype if raw.dtype in (np.float32, np.float64) else np.float64
        data = raw if raw.dtype == np.uint8 else finite_copy(raw, dtype)
        hwc = bytescale(np.ascontiguousarray(data.transpose(1, 2, 0)))
        return hwc if channels == 3 else _grey_or_cmap(hwc[..., 0], cmap)

    a = finite_copy(raw)
    if norm == "percentile":
        p = _clip_value(np.abs(a), percentile)
        v = np.clip(a / p, -1.0, 1.0) if p > 0 else np.zeros_like(a)
        if channels == 1 and cmap is not None:
            return colorize((v[0] + 1.0) / 2.0, cmap)
        out = _round_byte((v + 1.0) * 127.5).transpose(1, 2, 0)
        return np.ascontiguousarray(np.repeat(out, 3, axis=2) if channels == 1 else out)
    if norm == "abs":
        mag = np.abs(a).max(axis=0)
        p = _clip_value(mag, percentile)
        g = np.clip(mag / p, 0.0, 1.0) if p > 0 else np.zeros_like(mag)
        return _grey_or_cmap(_round_byte(g * 255.0), cmap)
    # signed
    s = a.sum(axis=0)
    p = _clip_value(np.abs(s), percentile)
    v = np.clip(s / p, -1.0, 1.0) if p > 0 else np.zeros_like(s)
    return colorize((v + 1.0) / 2.0, cmap or SIGNED_CMAP, odd=True)


def to_pil(m: ArrayLike, **options: Any) -> Image.Image:
    """:func:`map_to_image` as a ``PIL.Image`` (same options), e.g. for a notebook."""
    return Image.fromarray(map_to_image(m, **options))


def image_array(image: Picture, *, what: str = "image") -> np.ndarray:
    """An RGB picture (PIL, or uint8 (H, W, 3) / (H, W)) -> uint8 (H, W, 3)."""
    if isinstance(image, Image.Image):
        return np.asarray(image.convert("RGB"))
    a = _to_numpy(image)
    if a.ndim == 2:
        a = np.repeat(a[..., None], 3, axis=2)
    if a.ndim != 3 or a.shape[2] not in (3, 4) or a.dtype != np.uint8:
        raise InputError(
            f"{what} must be a uint8 array of shape (H, W, 3) or a PIL image, got {a.dtype} {tuple(a.shape)}; "
            "turn a map into one with map_to_image()"
        )
    return a[..., :3]


def heat2d(heat: ArrayLike) -> np.ndarray:
    """A heat map (H, W), (1, H, W) or (1, 1, H, W) -> float64 (H, W), finite, >= 0."""
    h = _to_numpy(heat)
    while h.ndim > 2 and h.shape[0] == 1:
        h = h[0]
    if h.ndim != 2 or h.size == 0:
        raise InputError(f"heat map must have shape (H, W) or (1, H, W), got {tuple(_to_numpy(heat).shape)}")
    return finite_copy(h).clip(min=0.0)


def resize_float(h: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of a float (H, W) array to ``size`` = (width, height)."""
    if (h.shape[1], h.shape[0]) == size:
        return h
    img = Image.fromarray(h.astype(np.float32), mode="F").resize(size, Image.Resampling.BILINEAR)
    return np.asarray(img, dtype=np.float64)


def heatmap(heat: ArrayLike, *, cmap: str = HEAT_CMAP, size: tuple[int, int] | None = None) -> np.ndarray:
    """A heat map (H, W) or (1, H, W) -> (H, W, 3) uint8 through ``cmap``, normalised by its maximum.

    Grad-CAM convention: negative values count as 0, the maximum maps to the top of the colour
    map; an all-zero map gives the bottom colour. ``size`` = (width, height) resizes (bilinear).
    """
    h = heat2d(heat)
    if size is not None:
        h = resize_float(h, size)
    top = float(h.max())
    return colorize(h / top if top > 0 else np.zeros_like(h), cmap)


def heatmap_overlay(image: Picture, heat: ArrayLike, *, cmap: str = HEAT_CMAP, alpha: float = 0.5) -> np.ndarray:
    """Blend a heat map over an RGB picture: ``(1 - alpha) * image + alpha * colour(heat / max)``.

    ``image``: uint8 (H, W, 3) or PIL; ``heat``: (H, W) or (1, H, W), resized (bilinear) to the
    image if its size differs. Returns uint8 (H, W, 3), the size of ``image``.
    """
    if not 0.0 <= alpha <= 1.0:
        raise InputError(f"alpha must be in [0, 1], got {alpha!r}")
    base = image_array(image)
    colours = heatmap(heat, cmap=cmap, size=(base.shape[1], base.shape[0]))
    mixed = (1.0 - alpha) * base.astype(np.float64) + alpha * colours.astype(np.float64)
    return _round_byte(mixed)


def method_picture(
    method: str,
    m: ArrayLike,
    *,
    image: Picture | None = None,
    norm: str = "percentile",
    percentile: float = DEFAULT_PERCENTILE,
    cmap: str | None = None,
) -> np.ndarray:
    """The picture for one method's map: Grad-CAM as a heat map (over ``image`` when given), the
    pixel-space methods (guided backprop, deconvnet, saliency, Guided Grad-CAM) through
    :func:`map_to_image`. Returns uint8 (H, W, 3)."""
    if get_method(method).drawing is Drawing.HEATMAP:
        heat_cmap = cmap or HEAT_CMAP
        return heatmap(m, cmap=heat_cmap) if image is None else heatmap_overlay(image, m, cmap=heat_cmap)
    return map_to_image(m, norm=norm, percentile=percentile, cmap=cmap)


# ----------------------------------------------------------------------------- saving


#: zlib level for PNG files. Pillow's default (6) spends 11-24 ms on one 224x224 map or photo, as
#: long as a third of its compute; level 1 takes 4-5 ms for files ~10% larger (the pixels are the same).
PNG_COMPRESS_LEVEL = 1


def _writable_formats() -> dict[str, str]:
    Image.init()
    return {ext.lower(): fmt for ext, fmt in Image.registered_extensions().items() if fmt in Image.SAVE}


def save_image(picture: Picture, path: str | Path) -> Path:
    """Write a picture (PIL, or uint8 (H, W), (H, W, 3), (H, W, 4)) to ``path``, atomically.

    The format follows the extension (any case; none -> PNG). The bytes go to a hidden temporary
    file in the same folder (``.<name>.<pid>.<random>.tmp``), are flushed and fsynced, then the
    file is renamed over ``path`` with ``os.replace``: a reader, or a run killed at any moment,
    never sees half a file. The temporary file is removed on any error. Missing parent folders
    are created. Returns ``path`` as a ``Path``.
    """
    target = Path(path)
    suffix = target.suffix.lower()
    formats = _writable_formats()
    if suffix and suffix not in formats:
        raise UnknownNameError(
            "image file extension", suffix, sorted(formats), hint=f"in {os.fspath(target)!r}; .png is the default"
        )
    fmt = formats.get(suffix, "PNG")
    if isinstance(picture, Image.Image):
        img = picture
    else:
        a = _to_numpy(picture)
        if a.dtype != np.uint8 or a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[2] not in (3, 4)):
            raise InputError(
                f"picture must be uint8 (H, W), (H, W, 3) or (H, W, 4), got {a.dtype} {tuple(a.shape)}; "
                "turn a map into one with map_to_image()"
            )
        img = Image.fromarray(np.ascontiguousarray(a))
    options: dict[str, Any] = {}
    if fmt == "JPEG":
        img = img.convert("RGB") if img.mode not in ("RGB", "L", "CMYK") else img
        options["quality"] = 95
    elif fmt == "PNG":
        options["compress_level"] = PNG_COMPRESS_LEVEL

    with atomic_file(target) as f:
        img.save(f, format=fmt, **options)
    return target


#: Outline colours of explained boxes, by rank (the first is the best detection).
BOX_COLOURS = ((255, 40, 40), (40, 200, 255), (255, 200, 0), (160, 80, 255), (60, 220, 60))


def outline_box(picture: np.ndarray, box: Sequence[float], colour: Sequence[int] = BOX_COLOURS[0], *,
                width: int = 2) -> np.ndarray:
    """A copy of ``picture`` (uint8 ``(H, W, 3)``) with the box ``x0, y0, x1, y1`` (pixels) outlined: what a
    detection map explains, drawn on it."""
    out = np.array(picture, copy=True)
    h, w = out.shape[:2]
    x0, y0 = (max(0, min(int(round(v)), lim - 1)) for v, lim in zip(box[:2], (w, h)))
    x1, y1 = (max(0, min(int(round(v)), lim - 1)) for v, lim in zip(box[2:4], (w, h)))
    c = np.asarray(colour, dtype=out.dtype)
    out[y0:min(y0 + width, h), x0:x1 + 1] = c
    out[max(y1 - width + 1, 0):y1 + 1, x0:x1 + 1] = c
    out[y0:y1 + 1, x0:min(x0 + width, w)] = c
    out[y0:y1 + 1, max(x1 - width + 1, 0):x1 + 1] = c
    return out


def _thin(mask: np.ndarray) -> np.ndarray:
    """``mask`` less its border pixels (4-neighbour erosion; outside the picture counts as outside)."""
    inner = mask.copy()
    inner[1:] &= mask[:-1]
    inner[:-1] &= mask[1:]
    inner[:, 1:] &= mask[:, :-1]
    inner[:, :-1] &= mask[:, 1:]
    inner[0], inner[-1], inner[:, 0], inner[:, -1] = False, False, False, False
    return inner


def region_at(mask: ArrayLike, size: tuple[int, int]) -> np.ndarray:
    """``mask`` (``(h, w)``, bool or float) as a bool array of ``size`` (H, W), resized nearest."""
    m = np.asarray(_to_numpy(mask)) > 0.5
    if m.shape != size:
        m = np.asarray(Image.fromarray(m).resize((size[1], size[0]), Image.Resampling.NEAREST))
    return m


def outline_region(picture: np.ndarray, mask: ArrayLike, colour: Sequence[int] = BOX_COLOURS[0], *,
                   width: int = 2) -> np.ndarray:
    """A copy of ``picture`` (uint8 ``(H, W, 3)``) with the outline of ``mask`` (``(h, w)``, any resolution:
    resized to the picture's, nearest) drawn ``width`` pixels wide inside the region: what a region map
    explains, drawn on it."""
    out = np.array(picture, copy=True)
    m = region_at(mask, out.shape[:2])
    inner = m
    for _ in range(width):
        inner = _thin(inner)
    out[m & ~inner] = np.asarray(colour, dtype=out.dtype)
    return out


def _tag(picture: np.ndarray, text: str, corner: tuple[int, int], colour: Sequence[int]) -> np.ndarray:
    """``text`` on a ``colour`` tag just above ``corner`` (x, y), or just inside it at the picture's top."""
    size = max(9, min(14, picture.shape[1] // 28))
    font = load_font(size)
    text = printable(text, font)
    pil = Image.fromarray(picture)
    draw = ImageDraw.Draw(pil)
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    tw, th = right - left + 4, bottom - top + 4
    x = max(0, min(corner[0], picture.shape[1] - tw))
    y = corner[1] - th if corner[1] - th >= 0 else corner[1]
    draw.rectangle((x, y, x + tw - 1, y + th - 1), fill=tuple(int(c) for c in colour))
    ink = (0, 0, 0) if sum(int(c) for c in colour) > 380 else (255, 255, 255)
    draw.text((x + 2 - left, y + 2 - top), text, fill=ink, font=font)
    return np.asarray(pil).copy()


@dataclass(frozen=True)
class Mark:
    """What one map explains, drawn on its pictures: a detection's ``box`` (``x0, y0, x1, y1`` in the
    picture's pixels) or a region's ``mask`` outlined in ``colour``, with ``text`` (a label and score) on a
    tag at the box's top-left corner (a region's: at its top-left pixel)."""

    box: Sequence[float] | None = None
    mask: Any = None
    text: str | None = None
    colour: tuple[int, int, int] = BOX_COLOURS[0]

    def draw(self, picture: np.ndarray) -> np.ndarray:
        """A copy of ``picture`` (uint8 ``(H, W, 3)``) with the mark drawn."""
        out = np.array(picture, copy=True)
        corner = None
        if self.mask is not None:
            out = outline_region(out, self.mask, self.colour)
            ys, xs = np.nonzero(region_at(self.mask, out.shape[:2]))
            corner = (int(xs.min()), int(ys.min())) if len(xs) else None
        if self.box is not None:
            out = outline_box(out, self.box, self.colour)
            corner = (int(round(float(self.box[0]))), int(round(float(self.box[1]))))
        if self.text and corner is not None:
            out = _tag(out, self.text, corner, self.colour)
        return out
