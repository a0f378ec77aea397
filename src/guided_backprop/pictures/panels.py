"""Text, colour bars and panels: the pictures of :mod:`.render` laid out with titles and labels.

:func:`panel` puts the input and its maps side by side; :func:`class_panel` draws the per-image grid
(one row per explained class, one column per method; what it says is laid out by :mod:`.grid`) and
:func:`explanation_panel` its one-row case; :func:`colorbar` is the strip of a map's value range.
Text is drawn with Pillow in matplotlib's bundled DejaVu Sans (no ``pyplot``), found offline, with
fallbacks; long titles are wrapped, then shortened. All return ``PIL.Image.Image``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw

from ..errors import InputError
from ..methods import Drawing, get_method
from .fonts import load_font, printable
from .grid import Grid, Row, panel_note, row_label
from .render import (
    DEFAULT_PERCENTILE,
    HEAT_CMAP,
    SIGNED_CMAP,
    ArrayLike,
    Mark,
    Picture,
    colorize,
    heat2d,
    image_array,
    method_picture,
    value_range,
)

__all__ = ["class_panel", "colorbar", "explanation_panel", "panel"]

_TEXT = (25, 25, 25)
_BACKGROUND = (255, 255, 255)


def _fitting(draw: ImageDraw.ImageDraw, text: str, font: Any, width: float, suffix: str = "") -> int:
    """The most leading characters of ``text`` that, followed by ``suffix``, fit in ``width`` px.

    A binary search over prefixes no longer than ``width`` characters (no glyph is narrower than a
    pixel, zero-width marks aside), so a long text costs O(log n) measurements of at most a line each,
    not one per character of the whole text.
    """
    hi = min(len(text), int(width) + 1)
    lo = 0
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if draw.textlength(text[:mid] + suffix, font=font) <= width:
            lo = mid
        else:
            hi = mid - 1
    return lo


def _fit(draw: ImageDraw.ImageDraw, text: str, font: Any, width: float) -> str:
    """``text``, shortened with an ellipsis if it is wider than ``width`` pixels."""
    text = printable(" ".join(text.split()), font)
    if _fitting(draw, text, font, width) >= len(text):
        return text
    return _fit_end(draw, text, font, width)


def _wrap(draw: ImageDraw.ImageDraw, text: str, font: Any, width: float, max_lines: int | None = None) -> list[str]:
    """``text`` broken into lines of at most ``width`` px, at spaces (a word too long for a line is
    broken inside); with ``max_lines``, the last line kept ends in an ellipsis if text was left over.

    Linear in the length of ``text``: each line is measured O(log line) times, and with ``max_lines`` the
    text after the lines kept is not measured at all (a 1 MB class name costs what a short one does).
    """
    words = printable(" ".join(text.split()), font).split(" ")
    lines: list[str] = []
    line = ""
    for word in words:
        if max_lines is not None and len(lines) > max_lines:
            break  # enough to know the text is cut: the rest is never measured
        candidate = f"{line} {word}" if line else word
        if len(candidate) <= int(width) + 1 and draw.textlength(candidate, font=font) <= width:
            line = candidate
            continue
        if line:
            lines.append(line)
        while True:  # break a word too long for a line
            cut = _fitting(draw, word, font, width)
            if cut >= len(word) or (max_lines is not None and len(lines) > max_lines):
                break
            cut = max(cut, 1)
            lines.append(word[:cut])
            word = word[cut:]
        line = word
    if line and (max_lines is None or len(lines) <= max_lines):
        lines.append(line)
    if max_lines is not None and len(lines) > max_lines:
        rest = " ".join(lines[max_lines - 1 : max_lines + 1])
        lines = lines[: max_lines - 1] + [_fit_end(draw, rest, font, width)]
    return lines


def _fit_end(draw: ImageDraw.ImageDraw, text: str, font: Any, width: float) -> str:
    """``text`` cut to ``width`` px and always ending in an ellipsis (more text followed)."""
    ellipsis = printable("…", font)
    return text[: _fitting(draw, text, font, width, ellipsis)].rstrip() + ellipsis


def _line_height(font: Any) -> int:
    box = font.getbbox("Ag·Éy")
    return int(box[3]) + 2


def _title_font(texts: list[str], width: int, *, largest: int, smallest: int = 10) -> Any:
    """The largest font (``smallest``..``largest`` px) in which every text fits ``width`` px."""
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    for size in range(largest, smallest, -1):
        font = load_font(size)
        if all(measure.textlength(printable(t, font), font=font) <= width for t in texts):
            return font
    return load_font(smallest)


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
    strip = colorize(t, cmap, odd=diverging)
    lo, hi = f"{vmin:.3g}", f"{vmax:.3g}"
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    font = load_font(font_size)
    for size in range(font_size, 6, -1):  # a narrow bar gets smaller (still crisp) figures, never overlapping ones
        font = load_font(size)
        if measure.textlength(lo, font=font) + measure.textlength(hi, font=font) + 4 <= width:
            break
    line = _line_height(font)
    canvas = Image.new("RGB", (width, height + 2 + line), _BACKGROUND)
    canvas.paste(Image.fromarray(strip), (0, 0))
    draw = ImageDraw.Draw(canvas)
    y = height + 1
    lo_w, hi_w = draw.textlength(lo, font=font), draw.textlength(hi, font=font)
    draw.text((0, y), printable(lo, font), fill=_TEXT, font=font)
    draw.text((width - hi_w, y), printable(hi, font), fill=_TEXT, font=font)
    if label:
        room = width - 2 * max(lo_w, hi_w) - 8  # centred, clear of both end figures
        if draw.textlength(label, font=font) <= room:
            draw.text(((width - draw.textlength(label, font=font)) / 2, y), printable(label, font),
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
    base = Image.fromarray(image_array(image))
    factor = max(1, math.ceil(min_tile / max(1, min(base.size))))
    tile_w, tile_h = base.width * factor, base.height * factor
    tiles: list[tuple[str | None, Image.Image, Image.Image | None]] = []
    tiles.append((input_title, base.resize((tile_w, tile_h), Image.Resampling.NEAREST), None))
    for key, pic in maps.items():
        tile = _to_tile(Image.fromarray(image_array(pic, what=f"picture {key!r}")), tile_w, tile_h)
        bar = (colorbars or {}).get(key)
        if bar is not None and bar.width != tile_w:
            bar = bar.resize((tile_w, bar.height), Image.Resampling.BILINEAR)
        tiles.append(((titles or {}).get(key, key), tile, bar))

    font = _title_font([t for t, _, _ in tiles if t], tile_w, largest=max(10, min(15, tile_w // 16)))
    head_font = load_font(max(12, min(20, tile_w // 12)))
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
    marks: Sequence[Mark | None] | None = None,
    rows: Sequence[Row] | None = None,
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
      drawn at the tile's final width;
    - ``marks``: per row, what it explains (:class:`~guided_backprop.pictures.render.Mark`: a detection's box, a
      region's outline), drawn on the row's input and maps.

    Tiles smaller than ``min_tile`` px are enlarged by an integer factor (nearest neighbour); without
    ``headers`` the column titles are left out (for panels stacked under a first one). ``rows``: the rows'
    labels as :func:`~guided_backprop.pictures.grid.row_label` lays them out (e.g. a target's raw score),
    instead of ``classes``, ``probabilities`` and ``position``. Returns an RGB ``PIL.Image``.
    """
    stacks = {method: _stack(method, value) for method, value in maps.items()}
    counts = {len(v) for v in stacks.values()}
    if len(counts) > 1:
        raise InputError(f"every method needs the same number of class maps, got {sorted(counts)}")
    k = counts.pop() if counts else len(rows or classes or [None])
    if rows is None:
        names = list(classes) if classes is not None else [None] * k
        probs = list(probabilities) if probabilities is not None else [None] * k
        if len(names) != k or len(probs) != k:
            raise InputError(f"got {k} maps per method but {len(names)} class names and {len(probs)} "
                             "probabilities; give one of each per row")
        rows = [row_label(names[r], probability=probs[r], position=position) for r in range(k)]
    elif len(rows) != k:
        raise InputError(f"got {k} maps per method but {len(rows)} row labels; give one per row")
    grid = Grid(methods=tuple(stacks), rows=tuple(rows), note=panel_note(smooth=smooth, noise=noise))

    base = Image.fromarray(image_array(image))
    factor = max(1, math.ceil(min_tile / max(1, min(base.size))))
    tile_w, tile_h = base.width * factor, base.height * factor
    seen = base.resize((tile_w, tile_h), Image.Resampling.NEAREST)
    font = load_font(max(11, min(15, tile_w // 11)))
    line = _line_height(font)

    marked = list(marks) if marks is not None else [None] * k
    if len(marked) != k:
        raise InputError(f"got {k} maps per method but {len(marked)} marks; give one (or None) per row")

    def drawn(picture: np.ndarray, r: int) -> np.ndarray:
        mark = marked[r]
        return picture if mark is None else mark.draw(picture)

    cells: list[list[tuple[Image.Image, Image.Image | None]]] = []
    for r in range(k):
        own = seen if marked[r] is None else _to_tile(Image.fromarray(drawn(image_array(image), r)), tile_w, tile_h)
        row: list[tuple[Image.Image, Image.Image | None]] = [(own, None)]
        for method, stack in stacks.items():
            m = stack[r]
            pic = Image.fromarray(drawn(method_picture(method, m, image=image, norm=norm, percentile=percentile), r))
            bar = _bar(method, m, norm, percentile, tile_w) if colorbars else None
            row.append((_to_tile(pic, tile_w, tile_h), bar))
        cells.append(row)

    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    header_lines = [_wrap(measure, h, font, tile_w, max_lines=2) for h in grid.columns] if headers else []
    label_w = max(96, min(tile_w, 160))
    labels = []
    for row_words in grid.rows:  # the name wrapped (may be shortened), the other lines whole
        fixed = [_fit(measure, f, font, label_w) for f in row_words.lines]  # short by construction
        labels.append((_wrap(measure, row_words.name, font, label_w, max_lines=4) if row_words.name else []) + fixed)
    bar_h = max((b.height + 2 for row in cells for _, b in row if b is not None), default=0)
    row_h = max([tile_h + bar_h] + [len(lines) * line for lines in labels])
    header_h = max((len(h) * line + 2 for h in header_lines), default=0)

    ncols = 1 + len(stacks)
    width = gap + label_w + gap + ncols * (tile_w + gap)
    head_font = load_font(max(12, min(18, tile_w // 10)))
    head_line = _line_height(head_font)
    headline = [t for t in (title, grid.note) if t]
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
        return colorbar(HEAT_CMAP, 0.0, float(np.max(heat2d(m), initial=0.0)), width=width, height=8)
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
