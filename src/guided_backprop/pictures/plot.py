"""Maps -> a matplotlib Figure, for a notebook: :func:`show`.

Unlike Captum's ``visualize_image_attr_multiple``, it takes the tensors as they come (channels first,
a whole :class:`~guided_backprop.Explanation`), so no HWC transposes are needed. The figure is a
``matplotlib.figure.Figure`` made without ``pyplot``: a notebook shows it once (as the cell's value),
a script saves it with ``fig.savefig(path)``. matplotlib is imported on the first call only.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Sequence
from functools import cache
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from PIL import Image

from ..errors import InputError, UnknownNameError
from ..methods import Drawing, get_method
from .grid import Row, class_name, explanation_grid
from .render import (
    BOX_COLOURS,
    DEFAULT_PERCENTILE,
    HEAT_CMAP,
    SIGNED_CMAP,
    check_norm,
    chw,
    finite_copy,
    heat2d,
    image_array,
    map_to_image,
    region_at,
    resize_float,
    value_range,
)

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from ..attribution import Explanation

__all__ = ["show"]

Labels = Sequence[str] | Callable[[int], str] | Any


def show(
    explanation: Explanation,
    image: torch.Tensor | np.ndarray | Image.Image,
    *,
    index: int = 0,
    methods: Sequence[str] | None = None,
    labels: Labels | None = None,
    preprocessing: Any = None,
    norm: str = "percentile",
    percentile: float = DEFAULT_PERCENTILE,
    overlay: bool = True,
    colorbar: bool = True,
    size: float = 2.4,
) -> Figure:
    """A figure of image ``index`` of ``explanation``: one row per explained class, one column per method.

    - ``image``: the input batch ``x`` ``(N, C, H, W)`` or one input ``(C, H, W)`` (shown through
      ``preprocessing.invert`` when given, else scaled from its min to its max), or the picture the
      network saw, uint8 ``(H, W, 3)`` (``Preprocessing.invert(x[i])``) or a PIL image;
    - ``methods``: which of ``explanation.maps`` to show, in order (default: all, in their order);
    - ``labels``: class names, a sequence, a function ``index -> name`` or a ``LoadedModel``; the rows are
      labelled with the class and its probability (a neuron target: the layer, channel and position);
    - ``preprocessing``: a ``Preprocessing`` (or a ``LoadedModel``) to turn a tensor ``image`` into a picture;
    - ``norm``, ``percentile``: how pixel-space maps become pictures (:func:`guided_backprop.map_to_image`);
      ``"abs"`` and ``"signed"`` are drawn as values through a colour map, with a colour bar;
    - ``overlay``: Grad-CAM heat maps over the picture (else alone);
    - ``colorbar``: a colour bar under each column drawn as values (Grad-CAM, ``abs``, ``signed``), one
      scale shared by the column's rows so that they compare.

    SmoothGrad (samples, noise) is named in the figure's title. Returns a ``matplotlib.figure.Figure``
    that a notebook displays as the cell's value (it renders itself as a PNG), and ``savefig`` saves.
    """
    check_norm(norm)
    names = list(explanation.maps) if methods is None else [get_method(m).name for m in methods]
    missing = [m for m in names if m not in explanation.maps]
    if missing:
        raise UnknownNameError("method", missing[0], list(explanation.maps),
                               hint="the explanation holds these maps; compute others with methods=[...]")
    n = next(iter(explanation.maps.values())).shape[0] if explanation.maps else 0
    if not 0 <= index < n:
        raise InputError(f"index {index} is out of range: the explanation holds {n} image(s) (0..{n - 1})")
    picture = _picture(image, index, preprocessing)
    layout = explanation_grid(explanation, index, names, labels)  # what the rows, columns and headline say
    k = len(layout.rows)
    rows = [_ylabel(row) for row in layout.rows]

    aspect = picture.shape[0] / picture.shape[1]  # rows as tall as the picture: no gaps between them
    note = layout.note
    values = norm in ("abs", "signed") or any(get_method(m).drawing is Drawing.HEATMAP for m in names)
    bars = int(colorbar and values)  # a row for colour bars, if any column draws values
    height = size * aspect * k + 0.35 + (0.55 if bars else 0.0) + (0.3 if note else 0.0)
    fig = _figure_class()(figsize=(size * (1 + len(names)), height), layout="constrained")
    # a thin last row holds the colour bars, each under its own column (never between two columns)
    grid = fig.add_gridspec(k + bars, 1 + len(names), height_ratios=[size * aspect] * k + [0.1 * size] * bars)
    axes = [[fig.add_subplot(grid[r, c]) for c in range(1 + len(names))] for r in range(k)]
    for r in range(k):
        ax = axes[r][0]
        ax.imshow(picture)
        ax.set_ylabel(rows[r], fontsize=9)
    for c, method in enumerate(names, start=1):
        column = [explanation.maps[method][index, r] for r in range(k)]
        scale = _draw_column([axes[r][c] for r in range(k)], method, column, picture, norm=norm,
                             percentile=percentile, overlay=overlay)
        if colorbar and scale is not None:  # one bar for every row of the column (one scale)
            bar = fig.colorbar(scale, cax=fig.add_subplot(grid[k, c], label="<colorbar>"), orientation="horizontal")
            bar.ax.tick_params(labelsize=7)
    for r in range(k):  # what each row explains: a detection's box, a region's outline
        _draw_mark(axes[r], explanation, index, r, labels, picture.shape[:2])
    for c, text in enumerate(layout.columns):
        axes[0][c].set_title(text, fontsize=10)
    for ax in (ax for row in axes for ax in row):
        ax.set_xticks([])
        ax.set_yticks([])
    if note:
        fig.suptitle(note, fontsize=10)
    return fig


@cache
def _figure_class() -> type[Figure]:
    """A ``Figure`` that shows itself as a PNG in a notebook (IPython's ``_repr_png_``).

    ``show`` makes its figure without ``pyplot`` (nothing to close, no second copy drawn at the end
    of the cell), so no inline backend is there to display it: the figure renders itself.
    """
    from matplotlib.figure import Figure

    class NotebookFigure(Figure):
        def _repr_png_(self) -> bytes:
            buffer = io.BytesIO()
            self.savefig(buffer, format="png", dpi=96)
            return buffer.getvalue()

    NotebookFigure.__qualname__ = "NotebookFigure"  # pickled by name: plot.NotebookFigure (__getattr__)
    return NotebookFigure


def __getattr__(name: str) -> Any:
    if name == "NotebookFigure":
        return _figure_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _picture(image: Any, index: int, preprocessing: Any) -> np.ndarray:
    """The picture to show, uint8 (H, W, 3), from a batch, one input tensor, an array or a PIL image."""
    if isinstance(image, Image.Image):
        return image_array(image)
    if isinstance(image, np.ndarray) and image.dtype == np.uint8 and image.ndim in (2, 3) and (
        image.ndim == 2 or image.shape[2] in (3, 4)
    ):
        return image_array(image)
    t = image if isinstance(image, torch.Tensor) else torch.as_tensor(np.asarray(image))
    if t.ndim == 4:
        if not 0 <= index < t.shape[0]:
            raise InputError(f"index {index} is out of range for an image batch of {t.shape[0]}")
        t = t[index]
    if t.ndim != 3:
        raise InputError(f"image must be the input (N, C, H, W) or (C, H, W), or a uint8 (H, W, 3) picture; "
                         f"got shape {tuple(t.shape)}")
    pre = getattr(preprocessing, "preprocessing", preprocessing)  # a LoadedModel carries its preprocessing
    if pre is not None:
        return image_array(pre.invert(t.detach().cpu()), what="preprocessing.invert(image)")
    a = t.detach().cpu().double()
    if a.shape[0] not in (1, 3):
        a = a.mean(0, keepdim=True)
    return map_to_image(a, norm="minmax")


def _ylabel(row: Row) -> str:
    """A row's label beside its input: the name shortened to one line of the margin, the other lines whole."""
    name = row.name if len(row.name) <= 28 else row.name[:27] + "…"
    return "\n".join(t for t in (name, *row.lines) if t)


def _draw_mark(axes: list[Any], explanation: Explanation, index: int, r: int, labels: Any,
               size: tuple[int, int]) -> None:
    """Row ``r``'s target drawn on each of its axes: a detection's box with its label and score, or a
    region's outline with its class (the colours of the command's pictures)."""
    from matplotlib.patches import Rectangle

    facts = explanation.details[index][r] if explanation.details and r < len(explanation.details[index]) else {}
    region = explanation.regions.get(r)
    box = facts.get("box")
    if box is None and region is None:
        return
    colour = tuple(c / 255 for c in BOX_COLOURS[r % len(BOX_COLOURS)])
    cls = facts.get("label", facts.get("class"))
    name = class_name(labels, int(cls)) if cls is not None else ""
    corner: tuple[float, float] | None
    if box is not None:
        x0, y0, x1, y1 = (float(v) for v in box)
        score = facts.get("detection_score")
        text, corner = (f"{name} {score:.2f}" if score is not None else name).strip(), (x0, y0)
    else:
        assert region is not None
        mask = region_at(region[index].numpy(), size)
        ys, xs = np.nonzero(mask)
        text, corner = name, ((float(xs.min()), float(ys.min())) if len(xs) else None)
    for ax in axes:
        limits = ax.get_xlim(), ax.get_ylim()
        if box is not None:
            ax.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, edgecolor=colour, linewidth=1.5))
        else:
            ax.contour(mask.astype(float), levels=[0.5], colors=[colour], linewidths=1.5)
        if text and corner is not None:
            ax.text(corner[0], corner[1], text, color="white", fontsize=7, va="bottom",
                    bbox={"facecolor": colour, "edgecolor": "none", "pad": 1})
        ax.set_xlim(*limits[0])
        ax.set_ylim(*limits[1])


def _draw_column(axes: list[Any], method: str, maps: list[torch.Tensor], picture: np.ndarray, *, norm: str,
                 percentile: float, overlay: bool) -> Any:
    """A method's maps down one column; returns the scale of a colour bar (``None``: RGB pictures).

    Heat maps (over the picture) and ``abs`` / ``signed`` values share one range down the column,
    so that one colour bar reads for every row (and the rows compare).
    """
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize

    if get_method(method).drawing is Drawing.HEATMAP:
        heats = [resize_float(heat2d(m), (picture.shape[1], picture.shape[0])) for m in maps]
        scale = ScalarMappable(Normalize(0.0, max(max(float(h.max()) for h in heats), 1e-12)), HEAT_CMAP)
        for ax, heat in zip(axes, heats):
            if overlay:
                ax.imshow(picture)
            ax.imshow(heat, cmap=scale.cmap, norm=scale.norm, alpha=0.5 if overlay else 1.0)
        return scale  # the bar in the colour map's own colours, not the blend's
    if norm in ("abs", "signed"):
        values = []
        lo, hi = np.inf, -np.inf
        for m in maps:
            a = finite_copy(chw(m))
            values.append(np.abs(a).max(axis=0) if norm == "abs" else a.sum(axis=0))
            low, high = value_range(m, norm=norm, percentile=percentile)
            lo, hi = min(lo, low), max(hi, high)
        scale = ScalarMappable(Normalize(lo, hi), "gray" if norm == "abs" else SIGNED_CMAP)
        for ax, v in zip(axes, values):
            ax.imshow(v, cmap=scale.cmap, norm=scale.norm)
        return scale
    for ax, m in zip(axes, maps):
        ax.imshow(map_to_image(m, norm=norm, percentile=percentile))
    return None
