"""Maps -> pictures: normalisation, colour maps, heat-map overlays, colour bars, panels, saving.

Used by the command line, the HTML report and the Python API. Nothing here reads a file;
only :func:`save_image` writes one (atomically). Colour maps come from matplotlib as lookup
tables (imported lazily, never ``pyplot``); drawing is done with Pillow.

Pictures are ``numpy.uint8`` arrays of shape (H, W, 3), RGB; :func:`panel` and
:func:`colorbar` return ``PIL.Image.Image``.
"""

from __future__ import annotations

import contextlib
import importlib.util
import math
import os
from collections.abc import Mapping, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import torch
from PIL import Image, ImageDraw, ImageFont

from .atomic import atomic_file
from .errors import InputError, UnknownNameError
from .methods import Drawing, get_method, method_title

__all__ = [
    "DEFAULT_PERCENTILE",
    "HEAT_CMAP",
    "NORMALIZATIONS",
    "SIGNED_CMAP",
    "bytescale",
    "class_panel",
    "colorbar",
    "explanation_panel",
    "heatmap",
    "heatmap_overlay",
    "map_to_image",
    "method_picture",
    "panel",
    "panel_note",
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

ArrayLike = np.ndarray | torch.Tensor
Picture = np.ndarray | Image.Image


# ----------------------------------------------------------------------------- helpers


def _to_numpy(m: Any) -> np.ndarray:
    """Tensor or array -> numpy array (detached, on the CPU; half/bfloat16 widened to float32)."""
    if isinstance(m, torch.Tensor):
        t = m.detach().cpu()
        if t.is_floating_point() and t.dtype not in (torch.float32, torch.float64):
            t = t.float()
        return t.numpy()
    return np.asarray(m)


def _finite(a: np.ndarray, dtype: npt.DTypeLike = np.float64) -> np.ndarray:
    """A float copy with NaN and +-inf replaced by 0 (a map with them would otherwise be all NaN)."""
    out: np.ndarray = np.array(a, dtype=dtype)
    out[~np.isfinite(out)] = 0
    return out


def _chw(m: Any, *, what: str = "map") -> np.ndarray:
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


def _check_norm(norm: str) -> str:
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


def _colorize(t: np.ndarray, cmap: str, *, odd: bool = False) -> np.ndarray:
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
    _check_norm(norm)
    percentile = _check_percentile(percentile)
    a = _finite(_chw(m))
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
    _check_norm(norm)
    percentile = _check_percentile(percentile)
    raw = _chw(m)
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
        data = raw if raw.dtype == np.uint8 else _finite(raw, dtype)
        hwc = bytescale(np.ascontiguousarray(data.transpose(1, 2, 0)))
        return hwc if channels == 3 else _grey_or_cmap(hwc[..., 0], cmap)

    a = _finite(raw)
    if norm == "percentile":
        p = _clip_value(np.abs(a), percentile)
        v = np.clip(a / p, -1.0, 1.0) if p > 0 else np.zeros_like(a)
        if channels == 1 and cmap is not None:
            return _colorize((v[0] + 1.0) / 2.0, cmap)
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
    return _colorize((v + 1.0) / 2.0, cmap or SIGNED_CMAP, odd=True)


def to_pil(m: ArrayLike, **options: Any) -> Image.Image:
    """:func:`map_to_image` as a ``PIL.Image`` (same options), e.g. for a notebook."""
    return Image.fromarray(map_to_image(m, **options))


def _image_array(image: Picture, *, what: str = "image") -> np.ndarray:
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


def _heat2d(heat: ArrayLike) -> np.ndarray:
    """A heat map (H, W), (1, H, W) or (1, 1, H, W) -> float64 (H, W), finite, >= 0."""
    h = _to_numpy(heat)
    while h.ndim > 2 and h.shape[0] == 1:
        h = h[0]
    if h.ndim != 2 or h.size == 0:
        raise InputError(f"heat map must have shape (H, W) or (1, H, W), got {tuple(_to_numpy(heat).shape)}")
    return _finite(h).clip(min=0.0)


def _resize_float(h: np.ndarray, size: tuple[int, int]) -> np.ndarray:
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
    h = _heat2d(heat)
    if size is not None:
        h = _resize_float(h, size)
    top = float(h.max())
    return _colorize(h / top if top > 0 else np.zeros_like(h), cmap)


def heatmap_overlay(image: Picture, heat: ArrayLike, *, cmap: str = HEAT_CMAP, alpha: float = 0.5) -> np.ndarray:
    """Blend a heat map over an RGB picture: ``(1 - alpha) * image + alpha * colour(heat / max)``.

    ``image``: uint8 (H, W, 3) or PIL; ``heat``: (H, W) or (1, H, W), resized (bilinear) to the
    image if its size differs. Returns uint8 (H, W, 3), the size of ``image``.
    """
    if not 0.0 <= alpha <= 1.0:
        raise InputError(f"alpha must be in [0, 1], got {alpha!r}")
    base = _image_array(image)
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


# ----------------------------------------------------------------------------- text, colour bars, panels

_TEXT = (25, 25, 25)
_BACKGROUND = (255, 255, 255)


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
def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
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


def _printable(text: str, font: Any) -> str:
    """The bitmap fallback font encodes Latin-1 only; replace what it cannot draw."""
    if isinstance(font, ImageFont.FreeTypeFont):
        return text
    return text.encode("latin-1", "replace").decode("latin-1")


def _fit(draw: ImageDraw.ImageDraw, text: str, font: Any, width: float) -> str:
    """``text``, shortened with an ellipsis if it is wider than ``width`` pixels."""
    text = _printable(" ".join(text.split()), font)
    if draw.textlength(text, font=font) <= width:
        return text
    ellipsis = _printable("…", font)
    while text and draw.textlength(text + ellipsis, font=font) > width:
        text = text[:-1]
    return text.rstrip() + ellipsis if text else ""


def _wrap(draw: ImageDraw.ImageDraw, text: str, font: Any, width: float, max_lines: int | None = None) -> list[str]:
    """``text`` broken into lines of at most ``width`` px, at spaces (a word too long for a line is
    broken inside); with ``max_lines``, the last line kept ends in an ellipsis if text was left over."""
    words = _printable(" ".join(text.split()), font).split(" ")
    lines: list[str] = []
    line = ""
    for word in words:
        candidate = f"{line} {word}" if line else word
        if draw.textlength(candidate, font=font) <= width:
            line = candidate
            continue
        if line:
            lines.append(line)
        while draw.textlength(word, font=font) > width and len(word) > 1:  # break a long word
            cut = len(word) - 1
            while cut > 1 and draw.textlength(word[:cut], font=font) > width:
                cut -= 1
            lines.append(word[:cut])
            word = word[cut:]
        line = word
    if line:
        lines.append(line)
    if max_lines is not None and len(lines) > max_lines:
        rest = " ".join(lines[max_lines - 1 :])
        lines = lines[: max_lines - 1] + [_fit_end(draw, rest, font, width)]
    return lines


def _fit_end(draw: ImageDraw.ImageDraw, text: str, font: Any, width: float) -> str:
    """``text`` cut to ``width`` px and always ending in an ellipsis (more text followed)."""
    ellipsis = _printable("…", font)
    while text and draw.textlength(text + ellipsis, font=font) > width:
        text = text[:-1]
    return text.rstrip() + ellipsis


def _line_height(font: Any) -> int:
    box = font.getbbox("Ag·Éy")
    return int(box[3]) + 2


def _title_font(texts: list[str], width: int, *, largest: int, smallest: int = 10) -> Any:
    """The largest font (``smallest``..``largest`` px) in which every text fits ``width`` px."""
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    for size in range(largest, smallest, -1):
        font = _font(size)
        if all(measure.textlength(_printable(t, font), font=font) <= width for t in texts):
            return font
    return _font(smallest)


def colorbar(
    cmap: str,
    vmin: float,
    vmax: float,
    *,
    width: int = 256,
    height: int = 12,
    label: str | None = None,
    font_size: int = 11,
    diverging: bool = False,
) -> Image.Image:
    """A horizontal colour-bar strip with ``vmin`` under its left end and ``vmax`` under its right.

    ``label`` (e.g. ``"0"`` for a signed map, or a unit) is written under the centre. With
    ``diverging`` the strip is sampled like ``norm="signed"`` (odd table, exact neutral centre).
    Returns an RGB ``PIL.Image`` of ``width`` px wide.
    """
    if width < 2 or height < 1:
        raise InputError(f"colour bar needs width >= 2 and height >= 1, got {width}x{height}")
    t = np.linspace(0.0, 1.0, width)[None, :].repeat(height, axis=0)
    strip = _colorize(t, cmap, odd=diverging)
    lo, hi = f"{vmin:.3g}", f"{vmax:.3g}"
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    font = _font(font_size)
    for size in range(font_size, 6, -1):  # a narrow bar gets smaller (still crisp) figures, never overlapping ones
        font = _font(size)
        if measure.textlength(lo, font=font) + measure.textlength(hi, font=font) + 4 <= width:
            break
    line = _line_height(font)
    canvas = Image.new("RGB", (width, height + 2 + line), _BACKGROUND)
    canvas.paste(Image.fromarray(strip), (0, 0))
    draw = ImageDraw.Draw(canvas)
    y = height + 1
    lo_w, hi_w = draw.textlength(lo, font=font), draw.textlength(hi, font=font)
    draw.text((0, y), _printable(lo, font), fill=_TEXT, font=font)
    draw.text((width - hi_w, y), _printable(hi, font), fill=_TEXT, font=font)
    if label:
        room = width - 2 * max(lo_w, hi_w) - 8  # centred, clear of both end figures
        if draw.textlength(label, font=font) <= room:
            draw.text(((width - draw.textlength(label, font=font)) / 2, y), _printable(label, font),
                      fill=_TEXT, font=font)
    return canvas


def panel(
    image: Picture,
    maps: Mapping[str, Picture],
    *,
    title: str | None = None,
    titles: Mapping[str, str] | None = None,
    input_title: str | None = "input",
    colorbars: Mapping[str, Image.Image] | None = None,
    min_tile: int = 128,
    gap: int = 8,
) -> Image.Image:
    """The input the network saw, then each map, side by side, each with its title above it.

    - ``image``: uint8 (H, W, 3) or PIL — what the network saw (e.g. ``Preprocessing.invert``);
    - ``maps``: title -> picture (uint8 (H, W, 3) or PIL), in display order, e.g.
      ``{"guided backprop · Egyptian cat 0.76": pic}``; pictures of another size are resized;
    - ``titles``: optional display titles for some keys of ``maps`` (default: the key);
    - ``input_title``: the first tile's title (``None`` for none); ``title``: a headline on top;
    - ``colorbars``: key of ``maps`` -> a strip (see :func:`colorbar`) shown under that tile;
    - images smaller than ``min_tile`` px are enlarged by an integer factor (nearest neighbour)
      so tiny inputs stay visible and titles fit.

    Long titles are shortened with an ellipsis. Returns an RGB ``PIL.Image``.
    """
    base = Image.fromarray(_image_array(image))
    factor = max(1, math.ceil(min_tile / max(1, min(base.size))))
    tile_w, tile_h = base.width * factor, base.height * factor
    tiles: list[tuple[str | None, Image.Image, Image.Image | None]] = []
    tiles.append((input_title, base.resize((tile_w, tile_h), Image.Resampling.NEAREST), None))
    for key, pic in maps.items():
        tile = _to_tile(Image.fromarray(_image_array(pic, what=f"picture {key!r}")), tile_w, tile_h)
        bar = (colorbars or {}).get(key)
        if bar is not None and bar.width != tile_w:
            bar = bar.resize((tile_w, bar.height), Image.Resampling.BILINEAR)
        tiles.append(((titles or {}).get(key, key), tile, bar))

    font = _title_font([t for t, _, _ in tiles if t], tile_w, largest=max(10, min(15, tile_w // 16)))
    head_font = _font(max(12, min(20, tile_w // 12)))
    line = _line_height(font)
    has_titles = any(t for t, _, _ in tiles)
    title_h = line + 2 if has_titles else 0
    bar_h = max((b.height + 2 for _, _, b in tiles if b is not None), default=0)
    head_h = _line_height(head_font) + gap // 2 if title else 0
    width = gap + len(tiles) * (tile_w + gap)
    height = gap + head_h + title_h + tile_h + bar_h + gap
    canvas = Image.new("RGB", (width, height), _BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    if title:
        draw.text((gap, gap), _fit(draw, title, head_font, width - 2 * gap), fill=_TEXT, font=head_font)
    top = gap + head_h
    for i, (text, tile, bar) in enumerate(tiles):
        x = gap + i * (tile_w + gap)
        if text:
            fitted = _fit(draw, text, font, tile_w)
            draw.text((x + (tile_w - draw.textlength(fitted, font=font)) / 2, top), fitted, fill=_TEXT, font=font)
        canvas.paste(tile, (x, top + title_h))
        if bar is not None:
            canvas.paste(bar, (x, top + title_h + tile_h + 2))
    return canvas




def panel_note(*, smooth: int = 0, noise: float | None = None) -> str | None:
    """The words a panel's headline adds about how its maps were computed (SmoothGrad), or None."""
    if not smooth:
        return None
    text = f"SmoothGrad: mean of {int(smooth)} noisy copies"
    return text + (f", noise σ = {noise:g} × the input's range" if noise is not None else "")


def _row_label(
    class_name: str | None, probability: float | None, position: tuple[int, int] | None
) -> tuple[str, list[str]]:
    """A grid row's label: the name (wrapped, may be shortened) and the lines that must stay whole."""
    fixed = []
    if probability is not None:
        fixed.append(f"p = {probability:.2f}" if probability >= 0.01 else f"p = {probability:.1g}")
    if position is not None:
        fixed.append(f"at (y, x) = ({int(position[0])}, {int(position[1])})")
    return (class_name or ""), fixed


def _stack(method: str, value: ArrayLike | Sequence[ArrayLike]) -> list[ArrayLike]:
    """One method's maps for K classes: a (K, C, H, W) array or tensor, or a sequence of K maps."""
    if isinstance(value, (np.ndarray, torch.Tensor)) and value.ndim != 4:
        raise InputError(
            f"maps[{method!r}] must be (K, C, H, W), one map per class, or a list of K maps; got shape "
            f"{tuple(value.shape)}; for one class use explanation_panel(), or e.maps[{method!r}][i] for image i"
        )
    return list(value)


def class_panel(
    image: Picture,
    maps: Mapping[str, ArrayLike | Sequence[ArrayLike]],
    *,
    classes: Sequence[str | None] | None = None,
    probabilities: Sequence[float | None] | None = None,
    norm: str = "percentile",
    percentile: float = DEFAULT_PERCENTILE,
    colorbars: bool = True,
    title: str | None = None,
    smooth: int = 0,
    noise: float | None = None,
    position: tuple[int, int] | None = None,
    min_tile: int = 128,
    gap: int = 8,
    headers: bool = True,
) -> Image.Image:
    """The per-image panel for K explained classes: a grid, one row per class, one column per method.

    - ``maps``: method name -> its K maps, a ``(K, C, H, W)`` array or tensor (Grad-CAM ``(K, 1, H, W)``)
      or a sequence of K maps ``(C, H, W)`` / ``(H, W)``, in display order;
    - ``classes``, ``probabilities``: per row, the class name and its probability (the row's label;
      a long name is wrapped, then shortened, the probability always stays whole);
    - the first column is ``image``, the input the network saw (uint8 (H, W, 3) or PIL), in every row;
    - ``smooth``, ``noise``: the SmoothGrad samples and noise, named in the headline; ``position``: the
      (y, x) of a neuron target, named in the row label; ``title``: a headline on top;
    - with ``colorbars``, Grad-CAM heat maps and ``signed`` maps get a colour bar of their value range,
      drawn at the tile's final width.

    Tiles smaller than ``min_tile`` px are enlarged by an integer factor (nearest neighbour); without
    ``headers`` the column titles are left out (for panels stacked under a first one). Returns an RGB
    ``PIL.Image``.
    """
    stacks = {method: _stack(method, value) for method, value in maps.items()}
    counts = {len(v) for v in stacks.values()}
    if len(counts) > 1:
        raise InputError(f"every method needs the same number of class maps, got {sorted(counts)}")
    k = counts.pop() if counts else len(classes or [None])
    names = list(classes) if classes is not None else [None] * k
    probs = list(probabilities) if probabilities is not None else [None] * k
    if len(names) != k or len(probs) != k:
        raise InputError(f"got {k} maps per method but {len(names)} class names and {len(probs)} probabilities; "
                         "give one of each per row")

    base = Image.fromarray(_image_array(image))
    factor = max(1, math.ceil(min_tile / max(1, min(base.size))))
    tile_w, tile_h = base.width * factor, base.height * factor
    seen = base.resize((tile_w, tile_h), Image.Resampling.NEAREST)
    font = _font(max(11, min(15, tile_w // 11)))
    line = _line_height(font)

    cells: list[list[tuple[Image.Image, Image.Image | None]]] = []
    for r in range(k):
        row: list[tuple[Image.Image, Image.Image | None]] = [(seen, None)]
        for method, stack in stacks.items():
            m = stack[r]
            pic = Image.fromarray(method_picture(method, m, image=image, norm=norm, percentile=percentile))
            bar = _bar(method, m, norm, percentile, tile_w) if colorbars else None
            row.append((_to_tile(pic, tile_w, tile_h), bar))
        cells.append(row)

    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    titles = ["input"] + [method_title(m) for m in stacks]
    header_lines = [_wrap(measure, h, font, tile_w, max_lines=2) for h in titles] if headers else []
    label_w = max(96, min(tile_w, 160))
    labels = []
    for r in range(k):
        name, fixed = _row_label(names[r], probs[r], position)
        fixed = [_fit(measure, f, font, label_w) for f in fixed]  # short by construction; never more than the column
        labels.append((_wrap(measure, name, font, label_w, max_lines=4) if name else []) + fixed)
    bar_h = max((b.height + 2 for row in cells for _, b in row if b is not None), default=0)
    row_h = max([tile_h + bar_h] + [len(lines) * line for lines in labels])
    header_h = max((len(h) * line + 2 for h in header_lines), default=0)

    ncols = 1 + len(stacks)
    width = gap + label_w + gap + ncols * (tile_w + gap)
    head_font = _font(max(12, min(18, tile_w // 10)))
    head_line = _line_height(head_font)
    headline = [t for t in (title, panel_note(smooth=smooth, noise=noise)) if t]
    head_lines = [ln for t in headline for ln in _wrap(measure, t, head_font, width - 2 * gap)]
    head_h = len(head_lines) * head_line + (gap // 2 if head_lines else 0)
    height = gap + head_h + header_h + k * row_h + (k - 1) * gap + gap
    canvas = Image.new("RGB", (width, height), _BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    for i, text in enumerate(head_lines):
        draw.text((gap, gap + i * head_line), text, fill=_TEXT, font=head_font)
    top = gap + head_h
    x0 = gap + label_w + gap
    for c, lines in enumerate(header_lines):
        x = x0 + c * (tile_w + gap)
        y = top + header_h - 2 - len(lines) * line  # bottom-aligned over the tiles
        for i, text in enumerate(lines):
            draw.text((x + (tile_w - draw.textlength(text, font=font)) / 2, y + i * line), text, fill=_TEXT, font=font)
    top += header_h
    for r, row in enumerate(cells):
        y = top + r * (row_h + gap)
        ly = y + max(0, (tile_h - len(labels[r]) * line) // 2)
        for i, text in enumerate(labels[r]):
            draw.text((gap, ly + i * line), text, fill=_TEXT, font=font)
        for c, (tile, bar) in enumerate(row):
            x = x0 + c * (tile_w + gap)
            canvas.paste(tile, (x, y))
            if bar is not None:
                canvas.paste(bar, (x, y + tile_h + 2))
    return canvas


def _to_tile(pic: Image.Image, tile_w: int, tile_h: int) -> Image.Image:
    """``pic`` at the tile size: nearest neighbour for whole-number enlargements, else bilinear."""
    if pic.size == (tile_w, tile_h):
        return pic
    whole = pic.width * tile_h == pic.height * tile_w and tile_w % pic.width == 0
    return pic.resize((tile_w, tile_h), Image.Resampling.NEAREST if whole else Image.Resampling.BILINEAR)


def _bar(method: str, m: ArrayLike, norm: str, percentile: float, width: int) -> Image.Image | None:
    """The colour bar a method's tile gets (Grad-CAM heat, or a ``signed`` map), ``width`` px wide; else None."""
    if get_method(method).drawing is Drawing.HEATMAP:
        return colorbar(HEAT_CMAP, 0.0, float(np.max(_heat2d(m), initial=0.0)), width=width, height=8)
    if norm == "signed":
        lo, hi = value_range(m, norm=norm, percentile=percentile)
        return colorbar(SIGNED_CMAP, lo, hi, width=width, height=8, label="0", diverging=True)
    return None


def explanation_panel(
    image: Picture,
    maps: Mapping[str, ArrayLike],
    *,
    class_name: str | None = None,
    probability: float | None = None,
    norm: str = "percentile",
    percentile: float = DEFAULT_PERCENTILE,
    colorbars: bool = True,
    title: str | None = None,
    smooth: int = 0,
    noise: float | None = None,
    position: tuple[int, int] | None = None,
) -> Image.Image:
    """The per-image panel for one explained class: :func:`class_panel` with one row.

    ``maps``: method name -> its map ``(C, H, W)`` (Grad-CAM ``(1, H, W)`` or ``(H, W)``), in display
    order; ``class_name`` and ``probability`` label the row (for a layer target, e.g.
    ``"blocks.3 channel 12"`` and ``position=(y, x)``).
    """
    return class_panel(
        image, {method: [m] for method, m in maps.items()}, classes=[class_name], probabilities=[probability],
        norm=norm, percentile=percentile, colorbars=colorbars, title=title, smooth=smooth, noise=noise,
        position=position,
    )


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
