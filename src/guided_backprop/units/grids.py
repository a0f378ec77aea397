"""What single units of higher layers respond to: the figures of Springenberg et al. 2014
(arXiv:1412.6806, fig. 3) and Zeiler & Fergus 2013 (arXiv:1311.2901, fig. 2).

For one unit (a channel of a layer) over a set of images: the ``k`` image positions where it
fires most (one per image, so ``k`` different images when there are that many), and for each the
image patch in the unit's receptive field next to the guided-backprop and deconvnet maps of that
unit (target :class:`~guided_backprop.Neuron`), cropped the same way, as ``3 x 3`` grids::

    grids = unit_grids(model, images, "features.34", top_channels=4)
    save_unit_grids(grids, "out/units")

Images are streamed in batches: only a running top ``k`` per unit is kept (indices and values),
and the few winning images are read again at the end to explain them.
"""

from __future__ import annotations

import dataclasses
import json
import math
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, NamedTuple

import numpy as np
import torch
from PIL import Image
from torch import nn

from ..atomic import safe_name, write_text
from ..attribution import Explainer
from ..errors import ImageError, InputError, TargetError, UnknownNameError
from ..hooks import find_layer, layer_output
from ..methods import method_title, parse_methods
from ..pictures import render
from ..pictures.panels import panel
from ..reporting import Reporter
from ..targets import Neuron
from .receptive import ReceptiveField, receptive_field

__all__ = [
    "TopActivation",
    "UnitGrid",
    "ImageFiles",
    "UnitTop",
    "top_activations",
    "MAX_TOP",
    "iter_unit_grids",
    "unit_grids",
    "unit_grids_from_paths",
    "save_unit_grids",
]

Display = Callable[[torch.Tensor], np.ndarray]
RankBy = Literal["mean", "max"]
_RANKS = ("mean", "max")


@dataclass
class TopActivation:
    """One of a unit's strongest responses: where, how strong, and what it saw.

    ``box`` is ``(top, left, bottom, right)`` in the image (bottom/right exclusive), the unit's
    receptive field clipped to the image. ``patch`` is that part of the image, ``pictures[m]`` the
    rendered map of method ``m`` cropped the same way (all uint8 ``(h, w, 3)``), ``maps[m]`` the raw
    cropped map ``(C, h, w)`` as :meth:`Explainer.explain` returned it.
    """

    image: int  # index in the images given
    y: int
    x: int
    activation: float
    box: tuple[int, int, int, int] = (0, 0, 0, 0)
    patch: np.ndarray | None = None
    pictures: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)
    maps: dict[str, torch.Tensor] = dataclasses.field(default_factory=dict)
    source: str | None = None  # the file, when the images came from files

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary (no pixels)."""
        return {"image": self.image, "source": self.source, "y": self.y, "x": self.x,
                "activation": self.activation, "box": list(self.box)}


@dataclass
class UnitGrid:
    """The figure of one unit: its top activations and the composed picture.

    ``panels`` holds one grid per column group (``"image"`` then each method), ``picture`` all of
    them side by side under a title line. ``score`` is the channel's mean or max activation over
    the images when channels were ranked (``None`` when the channel was given).
    """

    layer: str
    channel: int
    field: ReceptiveField
    methods: tuple[str, ...]
    top: list[TopActivation]
    panels: dict[str, Image.Image]
    picture: Image.Image
    score: float | None = None
    rank_by: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary (no pixels)."""
        f = self.field
        return {
            "layer": self.layer, "channel": self.channel, "methods": list(self.methods),
            "score": self.score, "rank_by": self.rank_by,
            "receptive_field": {"size": list(f.size), "jump": list(f.jump), "start": list(f.start),
                                "exact": f.exact, "notes": list(f.notes)},
            "top": [t.to_dict() for t in self.top],
        }


class ImageFiles(Sequence[torch.Tensor]):
    """Image files as a lazy sequence of preprocessed ``(3, H, W)`` tensors (read on access).

    ``preprocessing`` is a :class:`~guided_backprop.models.Preprocessing` (any callable
    PIL image -> tensor works). Unreadable files raise :class:`~guided_backprop.ImageError`.
    """

    def __init__(self, paths: Sequence[str | Path], preprocessing: Callable[[Image.Image], torch.Tensor]) -> None:
        self.paths = [Path(p) for p in paths]
        self.preprocessing = preprocessing

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> torch.Tensor:  # type: ignore[override]
        from ..images import load_image  # the only module that reads image files

        return self.preprocessing(load_image(self.paths[i]))


class UnitTop(NamedTuple):
    """The strongest responses of one unit (see :func:`top_activations`)."""

    channel: int
    score: float | None  # the channel's mean / max activation when channels were ranked
    top: list[TopActivation]


# -- scanning: the running top k of every unit ---------------------------------------------------------
_ROW = 1 << 24  # positions are kept as y * _ROW + x: row-major order whatever each image's width
#: The most top activations per unit a grid shows (a 10 x 10 grid): every one is explained and drawn.
MAX_TOP = 100


def _layer_output(model: nn.Module, x: torch.Tensor, layer: str) -> torch.Tensor:
    """``layer``'s output ``(N, C, h, w)`` for batch ``x`` (no gradients, eval mode, forward stopped there)."""
    out = layer_output(model, x, layer)
    if out.ndim != 4:
        raise TargetError(f"layer {layer!r} outputs {tuple(out.shape)}; units need a layer with an (N, C, H, W) "
                          f"feature map")
    return out


def _model_device_dtype(model: nn.Module) -> tuple[torch.device, torch.dtype | None]:
    p = next(model.parameters(), None)
    if p is None:
        return torch.device("cpu"), None
    return p.device, (p.dtype if p.is_floating_point() else None)


def _as_images(images: Any) -> Sequence[torch.Tensor]:
    if isinstance(images, torch.Tensor):
        if images.ndim == 3:
            images = images.unsqueeze(0)
        if images.ndim != 4:
            raise InputError(
                f"images must be (N, C, H, W) or a sequence of (C, H, W) tensors, got shape {tuple(images.shape)}"
            )
        return images
    if not isinstance(images, Sequence) or isinstance(images, (str, bytes)):
        raise InputError(
            f"images must be a tensor (N, C, H, W) or a sequence of (C, H, W) tensors, got {type(images).__name__}; "
            f"for image files use unit_grids_from_paths()"
        )
    return images


def _check_image(t: Any, i: int) -> torch.Tensor:
    if not isinstance(t, torch.Tensor) or not t.is_floating_point() or t.ndim != 3:
        what = f"{t.dtype} {tuple(t.shape)}" if isinstance(t, torch.Tensor) else type(t).__name__
        raise InputError(f"image {i} must be a float tensor (C, H, W), already preprocessed; got {what}")
    return t


def _load(images: Sequence[torch.Tensor], i: int) -> torch.Tensor:
    return _check_image(images[i], i)


class _RunningTop:
    """Running top ``k`` (value, image, position) of ``units`` channels, one entry per image.

    Ties go to the earlier image, then the earlier position (row-major): the result equals taking
    all (image, position) pairs sorted by (-value, image, position) and keeping each image's first.
    Until ``k`` images have been seen a second list keeps the best other positions, used to fill up
    to ``k`` when fewer images could be read than ``k`` (unreadable files count only once read).
    """

    def __init__(self, units: int, k: int) -> None:
        self.k = k
        self.seen = 0  # images merged so far
        self.best = self._empty(units)
        self.more: list[torch.Tensor] | None = self._empty(units)

    def _empty(self, units: int) -> list[torch.Tensor]:
        return [torch.full((units, self.k), -math.inf, dtype=torch.float64),
                torch.full((units, self.k), -1, dtype=torch.long),
                torch.full((units, self.k), -1, dtype=torch.long)]

    def _merge(self, state: list[torch.Tensor], vals: torch.Tensor, imgs: torch.Tensor, pos: torch.Tensor) -> None:
        # The old entries come first and the new ones in image order: a stable sort keeps ties in that order.
        v = torch.cat([state[0], vals], dim=1)
        i = torch.cat([state[1], imgs], dim=1)
        p = torch.cat([state[2], pos], dim=1)
        order = torch.sort(v, dim=1, descending=True, stable=True).indices[:, : self.k]
        state[0], state[1], state[2] = v.gather(1, order), i.gather(1, order), p.gather(1, order)

    def update(self, acts: torch.Tensor, indices: Sequence[int]) -> None:
        """``acts``: ``(B, units, h, w)`` of the images numbered ``indices``."""
        b, u, _h, w = acts.shape
        flat = acts.detach().to("cpu", torch.float64).reshape(b, u, -1)
        images = torch.as_tensor(list(indices), dtype=torch.long).view(1, b).expand(u, b)
        vmax, arg = flat.max(dim=2)  # the first maximum on ties
        self._merge(self.best, vmax.t(), images, (arg // w * _ROW + arg % w).t())
        if self.more is not None and flat.shape[2] > 1:
            srt = torch.sort(flat, dim=2, descending=True, stable=True)
            m = min(self.k - 1, flat.shape[2] - 1)
            vals = srt.values[:, :, 1 : 1 + m].permute(1, 0, 2).reshape(u, b * m)
            arg = srt.indices[:, :, 1 : 1 + m].permute(1, 0, 2).reshape(u, b * m)
            imgs = images.unsqueeze(2).expand(u, b, m).reshape(u, b * m)
            self._merge(self.more, vals, imgs, arg // w * _ROW + arg % w)
        self.seen += b
        if self.seen >= self.k:
            self.more = None  # k images give k entries, one each: the other positions are never used

    def result(self, unit: int) -> list[TopActivation]:
        """Row ``unit``'s entries, best first."""
        out: list[TopActivation] = []
        for state in (self.best,) if self.more is None else (self.best, self.more):
            for v, i, p in zip(state[0][unit].tolist(), state[1][unit].tolist(), state[2][unit].tolist()):
                if i >= 0 and len(out) < self.k:
                    out.append(TopActivation(image=int(i), y=int(p // _ROW), x=int(p % _ROW), activation=float(v)))
        return out


def _batches(
    images: Sequence[torch.Tensor], batch_size: int, on_error: str, reporter: Reporter | None = None
) -> Iterator[tuple[list[int], torch.Tensor]]:
    """Consecutive images of one size, up to ``batch_size`` at a time, as ``(indices, (B, C, H, W))``;
    an unreadable image is told to ``reporter`` (without one: a ``UserWarning``) when skipped."""
    idx: list[int] = []
    items: list[torch.Tensor] = []
    for i in range(len(images)):
        try:
            t = _load(images, i)
        except ImageError as err:
            if on_error == "raise":
                raise
            if reporter is not None:
                reporter.failed(f"skipped: {err}")
            else:
                warnings.warn(f"skipped: {err}", stacklevel=4)
            continue
        if items and (t.shape != items[0].shape or len(items) >= batch_size):
            yield idx, torch.stack(items)
            idx, items = [], []
        idx.append(i)
        items.append(t)
    if items:
        yield idx, torch.stack(items)


def top_activations(
    model: nn.Module,
    images: torch.Tensor | Sequence[torch.Tensor],
    layer: str,
    channels: int | Sequence[int] | None = None,
    top_channels: int = 4,
    k: int = 9,
    *,
    rank_by: RankBy = "mean",
    batch_size: int = 16,
    on_error: Literal["raise", "skip"] = "raise",
    reporter: Reporter | None = None,
) -> list[UnitTop]:
    """Where the units of ``layer`` fire most, from one streamed pass over ``images``.

    Returns one :class:`UnitTop` per unit with at most ``k`` entries, best first: each image's
    strongest position, one per image while there are images, then (fewer than ``k`` images) the
    next best positions. ``channels`` picks the units; by default the ``top_channels`` channels
    with the highest mean activation (``rank_by="mean"``: mean over images of the spatial mean)
    or maximum activation (``"max"``), and ``score`` is that value. Only the running top ``k`` per
    unit is kept, never the activations of past batches. ``reporter`` is told the progress after
    every batch. Unreadable images (:class:`~guided_backprop.ImageError`) raise, or with
    ``on_error="skip"`` are skipped and told to ``reporter`` (without one: a ``UserWarning``).
    """
    if rank_by not in _RANKS:
        raise UnknownNameError("ranking", str(rank_by), _RANKS)
    if int(k) < 1:
        raise InputError(f"k must be >= 1 (the number of top activations per unit), got {k}")
    if int(batch_size) < 1:
        raise InputError(f"batch_size must be >= 1, got {batch_size}")
    if channels is None and int(top_channels) < 1:
        raise InputError(f"top_channels must be >= 1, got {top_channels}")
    if on_error not in ("raise", "skip"):
        raise UnknownNameError("on_error", str(on_error), ("raise", "skip"))
    if isinstance(channels, int):
        channels = [channels]
    images = _as_images(images)
    total = len(images)
    if total == 0:
        raise InputError("no images given: finding what a unit responds to needs at least one image")
    find_layer(model, layer)
    device, dtype = _model_device_dtype(model)
    chosen = None if channels is None else [int(c) for c in channels]
    if chosen is not None and not chosen:
        raise InputError("channels is empty; give channel numbers, or channels=None to rank them")
    tops: _RunningTop | None = None
    sums = torch.zeros(0, dtype=torch.float64)
    maxes = torch.zeros(0, dtype=torch.float64)
    seen = 0
    for idx, xb in _batches(images, int(batch_size), on_error, reporter):
        acts = _layer_output(model, xb.to(device=device, dtype=dtype or xb.dtype), layer)
        n_ch = acts.shape[1]
        if tops is None:
            bad = [c for c in chosen or [] if not 0 <= c < n_ch]
            if bad:
                raise TargetError(
                    f"channel {bad[0]} is out of range for layer {layer!r} with {n_ch} channels (valid: 0..{n_ch - 1})"
                )
            tops = _RunningTop(n_ch if chosen is None else len(chosen), int(k))
            sums = torch.zeros(n_ch, dtype=torch.float64)
            maxes = torch.full((n_ch,), -math.inf, dtype=torch.float64)
        a64 = acts.detach().to("cpu", torch.float64)
        sums += a64.mean(dim=(2, 3)).sum(0)
        maxes = torch.maximum(maxes, a64.amax(dim=(0, 2, 3)))
        tops.update(acts if chosen is None else acts[:, chosen], idx)
        seen += len(idx)
        if reporter is not None:
            reporter.progress(idx[-1] + 1, total)
    if tops is None:
        raise InputError(f"none of the {total} images could be read")
    if chosen is None:
        scores = sums / seen if rank_by == "mean" else maxes
        order = torch.sort(scores, descending=True, stable=True).indices[: int(top_channels)].tolist()
        return [UnitTop(int(c), float(scores[c]), tops.result(int(c))) for c in order]
    return [UnitTop(c, None, tops.result(row)) for row, c in enumerate(chosen)]


# -- explaining and cropping ----------------------------------------------------------------------------
def _display(display: Any) -> Display:
    if display is None:
        return _minmax_picture
    invert = getattr(display, "invert", None)
    if callable(invert):
        return invert  # type: ignore[no-any-return]
    if callable(display):
        return display  # type: ignore[no-any-return]
    raise InputError(
        f"display must be a Preprocessing (its invert() is used), a function tensor -> uint8 (H, W, 3) "
        f"picture, or None; got {type(display).__name__}"
    )


def _minmax_picture(x: torch.Tensor) -> np.ndarray:
    """``(C, H, W)`` -> uint8 ``(H, W, 3)``, scaled from its min..max (3 channels as RGB, else their mean as grey)."""
    a = x.detach().to("cpu", torch.float64)
    a = a if a.shape[0] == 3 else a.mean(0, keepdim=True).expand(3, *a.shape[1:])
    lo, hi = float(a.min()), float(a.max())
    a = (a - lo) / (hi - lo) if hi > lo else torch.zeros_like(a)
    return (a * 255).round().clamp(0, 255).to(torch.uint8).permute(1, 2, 0).numpy()


def _picture(arr: Any, shape: tuple[int, int], what: str) -> np.ndarray:
    a = np.asarray(arr)
    if a.ndim == 2:
        a = np.repeat(a[..., None], 3, axis=2)
    if a.dtype != np.uint8 or a.ndim != 3 or a.shape[2] != 3 or a.shape[:2] != shape:
        raise InputError(f"{what} must give a uint8 (H, W, 3) picture of the image's size {shape}, "
                         f"got {a.dtype} {tuple(a.shape)}")
    return a


def _explain(
    explainer: Explainer, x: torch.Tensor, target: Neuron, methods: tuple[str, ...]
) -> dict[str, torch.Tensor]:
    """Maps ``(C, H, W)`` (Grad-CAM: ``(1, H, W)``) of ``target`` for ``x`` ``(1, C, H, W)``: one forward."""
    # strict=False: a unit before any ReLU (a first-layer unit) has every rule equal to the plain gradient.
    e = explainer.explain(x, target, methods=methods, strict=False)
    return {m: e.maps[m][0, 0] for m in methods}


def _fill(
    entry: TopActivation,
    x: torch.Tensor,
    rf: ReceptiveField,
    maps: dict[str, torch.Tensor],
    picture: np.ndarray,
    norm: str,
    percentile: float,
    bgr: bool,
) -> None:
    top, left, bottom, right = rf.box(entry.y, entry.x, (x.shape[-2], x.shape[-1]))
    entry.box = (top, left, bottom, right)
    entry.patch = np.ascontiguousarray(picture[top:bottom, left:right])
    for m, full in maps.items():
        crop = full[:, top:bottom, left:right].detach().cpu().clone()
        entry.maps[m] = crop
        shown = crop.flip(0) if bgr and crop.shape[0] == 3 else crop  # render takes channels as R, G, B
        entry.pictures[m] = render.method_picture(m, shown, image=entry.patch, norm=norm, percentile=percentile)


# -- grids ----------------------------------------------------------------------------------------------
def _grid(cells: Sequence[np.ndarray | None], offsets: Sequence[tuple[int, int]], cell: tuple[int, int],
          cols: int, rows: int, factor: int, gap: int) -> np.ndarray:
    """Cells (each placed at its offset inside a ``cell``-sized box) on a ``rows x cols`` grid, enlarged ``factor``x."""
    ch, cw = cell[0] * factor, cell[1] * factor
    out = np.full((rows * ch + (rows - 1) * gap, cols * cw + (cols - 1) * gap, 3), 255, dtype=np.uint8)
    for n in range(rows * cols):
        r, c = divmod(n, cols)
        y0, x0 = r * (ch + gap), c * (cw + gap)
        out[y0 : y0 + ch, x0 : x0 + cw] = _EMPTY
        if n >= len(cells) or cells[n] is None:
            continue
        pic = cells[n]
        assert pic is not None
        big = np.repeat(np.repeat(pic, factor, axis=0), factor, axis=1)
        oy, ox = offsets[n][0] * factor, offsets[n][1] * factor
        out[y0 + oy : y0 + oy + big.shape[0], x0 + ox : x0 + ox + big.shape[1]] = big
    return out


_EMPTY = np.array([225, 225, 225], dtype=np.uint8)  # the part of a field outside the image, and empty cells


def _compose(layer: str, channel: int, rf: ReceptiveField, top: list[TopActivation], methods: tuple[str, ...],
             sizes: list[tuple[int, int]], k: int, score: float | None, rank_by: str | None,
             min_cell: int, gap: int) -> tuple[dict[str, Image.Image], Image.Image]:
    cols = math.ceil(math.sqrt(k))
    rows = math.ceil(k / cols)
    big_h = max((s[0] for s in sizes), default=1)
    big_w = max((s[1] for s in sizes), default=1)
    cell = (max(1, min(rf.size[0], big_h)), max(1, min(rf.size[1], big_w)))
    factor = max(1, math.ceil(min_cell / max(1, min(cell))))
    offsets = []
    for e in top:
        utop, uleft, _, _ = rf.unclipped_box(e.y, e.x)
        h, w = e.patch.shape[:2] if e.patch is not None else (0, 0)
        # Keep the unit's centre where it is in its field: clipped borders leave the field's remainder empty.
        offsets.append((min(max(e.box[0] - utop, 0), cell[0] - h), min(max(e.box[1] - uleft, 0), cell[1] - w)))
    panels = {"image": _grid([e.patch for e in top], offsets, cell, cols, rows, factor, gap)}
    for m in methods:
        panels[m] = _grid([e.pictures.get(m) for e in top], offsets, cell, cols, rows, factor, gap)
    title = f"layer {layer}, channel {channel}"
    if score is not None:
        title += f" ({rank_by} activation {score:.3g})"
    title += f", receptive field {rf.size[0]}x{rf.size[1]}"
    picture = panel(
        panels["image"],
        {method_title(m): panels[m] for m in methods},
        title=title,
        input_title="image patches",
        min_tile=0,
    )
    return {key: Image.fromarray(p) for key, p in panels.items()}, picture


def iter_unit_grids(
    model: nn.Module,
    images: torch.Tensor | Sequence[torch.Tensor],
    layer: str,
    channels: int | Sequence[int] | None = None,
    top_channels: int = 4,
    k: int = 9,
    *,
    rank_by: RankBy = "mean",
    methods: Sequence[str] = ("guided_backprop", "deconvnet"),
    display: Any = None,
    norm: str = "percentile",
    percentile: float = render.DEFAULT_PERCENTILE,
    batch_size: int = 16,
    min_cell: int = 64,
    gap: int = 2,
    include_global: bool = False,
    on_error: Literal["raise", "skip"] = "raise",
    sources: Sequence[str] | None = None,
    reporter: Reporter | None = None,
    tops: Sequence[UnitTop] | None = None,
) -> Iterator[UnitGrid]:
    """What units of ``layer`` respond to, as in Springenberg et al. 2014 (arXiv:1412.6806), fig. 3.

    For each unit (``channels``, or the ``top_channels`` most active channels by ``rank_by``), the
    ``k`` strongest responses over ``images`` (see :func:`top_activations`); for each, the image patch
    in the unit's receptive field (:func:`~guided_backprop.units.receptive.receptive_field`) and the maps of
    the unit (target ``Neuron(layer, channel, y, x)``, all ``methods`` from one forward pass) cropped
    the same way, composed as ``sqrt(k) x sqrt(k)`` grids side by side: image patches | guided
    backpropagation | deconvnet.

    Args:
        images: ``(N, C, H, W)`` or a sequence of ``(C, H, W)`` tensors, already preprocessed
            (sizes may differ; a lazy sequence such as :class:`ImageFiles` is read batch by batch).
        display: how an input is shown: a ``Preprocessing`` (its ``invert``; with ``bgr=True`` the
            maps' channels are also shown flipped to RGB), a function ``(C, H, W) -> uint8 (H, W, 3)``,
            or ``None`` (each image scaled from its min to its max).
        norm, percentile: how maps become pictures (:func:`guided_backprop.pictures.render.map_to_image`),
            each crop normalised on its own.
        min_cell: grid cells smaller than this many pixels are enlarged by an integer factor.
        include_global: count inputs broadcast over space (squeeze-excitation gates) in the field.
        sources: a name per image (e.g. its file), copied into :attr:`TopActivation.source`.
        reporter: told the pass's progress and the images skipped (:func:`top_activations`).
        tops: the units' top activations when already known (e.g. :func:`guided_backprop.units.cache.cached_tops`):
            the pass over ``images`` is skipped.

    Yields one :class:`UnitGrid` per unit, in channel-rank (or given) order, each made when asked for:
    a caller that saves and drops each one holds one grid at a time, whatever ``top_channels``.
    ``k`` is at most :data:`MAX_TOP` (the grid is drawn for every unit).
    """
    if int(k) > MAX_TOP:
        raise InputError(f"k={k} top activations per unit cannot be drawn: at most {MAX_TOP} (a "
                         f"{math.isqrt(MAX_TOP)}x{math.isqrt(MAX_TOP)} grid per unit); top_activations() has no limit",
                         field="k")
    names = parse_methods(methods)
    show = _display(display)
    bgr = bool(getattr(display, "bgr", False))  # a Caffe-style Preprocessing: the maps come in B, G, R
    images = _as_images(images)
    if sources is not None and len(sources) != len(images):
        raise InputError(f"got {len(sources)} sources for {len(images)} images; give one name per image")
    if isinstance(channels, int):
        channels = [channels]
    units = list(tops) if tops is not None else top_activations(
        model, images, layer, channels, top_channels, k, rank_by=rank_by, batch_size=batch_size, on_error=on_error,
        reporter=reporter)
    device, dtype = _model_device_dtype(model)
    explainer = Explainer(model)
    fields: dict[tuple[int, ...], ReceptiveField] = {}
    for unit in units:
        sizes = []
        rf0: ReceptiveField | None = None
        for entry in unit.top:
            x = _load(images, entry.image)
            key = tuple(x.shape)
            if key not in fields:
                fields[key] = receptive_field(model, layer, x.shape[-2:], in_channels=x.shape[0],
                                              include_global=include_global)
            rf = fields[key]
            rf0 = rf0 or rf
            xb = x.unsqueeze(0).to(device=device, dtype=dtype or x.dtype)
            maps = _explain(explainer, xb, Neuron(layer, unit.channel, entry.y, entry.x), names)
            picture = _picture(show(x), (x.shape[-2], x.shape[-1]), "display")
            _fill(entry, x, rf, maps, picture, norm, percentile, bgr)
            entry.source = None if sources is None else str(sources[entry.image])
            sizes.append((int(x.shape[-2]), int(x.shape[-1])))
        if rf0 is None:  # no entries at all: trace on the first image's size
            first = _load(images, 0)
            rf0 = receptive_field(model, layer, first.shape[-2:], in_channels=first.shape[0],
                                  include_global=include_global)
        panels, grid_picture = _compose(layer, unit.channel, rf0, unit.top, names, sizes, int(k), unit.score,
                                   rank_by if unit.score is not None else None, int(min_cell), int(gap))
        yield UnitGrid(layer, unit.channel, rf0, names, unit.top, panels, grid_picture, unit.score,
                       rank_by if unit.score is not None else None)


def unit_grids(model: nn.Module, images: torch.Tensor | Sequence[torch.Tensor], layer: str, *args: Any,
               **options: Any) -> list[UnitGrid]:
    """What units of ``layer`` respond to, as in Springenberg et al. 2014 (arXiv:1412.6806), fig. 3: the
    grids of :func:`iter_unit_grids` (same arguments), all of them, as a list."""
    return list(iter_unit_grids(model, images, layer, *args, **options))


def unit_grids_from_paths(
    model: nn.Module,
    inputs: Sequence[str | Path] | str | Path,
    layer: str,
    preprocessing: Any,
    channels: int | Sequence[int] | None = None,
    top_channels: int = 4,
    k: int = 9,
    **options: Any,
) -> list[UnitGrid]:
    """:func:`unit_grids` over image files, folders or globs (``images.find_images``), read lazily
    with ``images.load_image`` and ``preprocessing`` (a ``Preprocessing``, also used to show the
    patches). ``options`` go to :func:`unit_grids` (``on_error="skip"`` skips unreadable files with a
    warning); :attr:`TopActivation.source` is the file.
    """
    from ..images import find_images

    paths = find_images(inputs)
    if not paths:
        raise InputError(f"no image files found in {inputs!r}")
    options.setdefault("display", preprocessing)
    return unit_grids(model, ImageFiles(paths, preprocessing), layer, channels, top_channels, k,
                      sources=[str(p) for p in paths], **options)


# -- saving -----------------------------------------------------------------------------------------------
def _write_json(data: Any, path: Path) -> None:
    write_text(path, json.dumps(finite_copy(data), indent=2, allow_nan=False) + "\n")


def finite_copy(value: Any) -> Any:
    """``value`` with every non-finite float as ``None``: the file stays JSON (``NaN`` is not)."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: finite_copy(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [finite_copy(v) for v in value]
    return value


def _listed_grids(path: Path, prefix: str) -> set[str]:
    """The grid files a previous manifest lists (only plain names this function writes: ``<prefix>_*.png``)."""
    try:
        doc = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    except (OSError, ValueError):
        return set()
    units = doc.get("units") if isinstance(doc, dict) else None
    names = {u.get("file") for u in units if isinstance(u, dict)} if isinstance(units, list) else set()
    return {n for n in names if isinstance(n, str) and n == Path(n).name and n.startswith(f"{prefix}_")
            and n.endswith(".png")}


def save_unit_grids(grids: Iterable[UnitGrid], out_dir: str | Path, *, prefix: str = "unit",
                    manifest: str | None = "units.json") -> list[Path]:
    """Write each grid's picture as ``<prefix>_<layer>_c<channel>.png`` in ``out_dir`` and, unless
    ``manifest`` is None, a JSON summary (``{"units": [UnitGrid.to_dict() + {"file": name}]}``);
    return the PNG paths, in order.

    Every file is written atomically (a temporary file, then a rename): whole or not at all. Grids are
    written as ``grids`` yields them (give :func:`iter_unit_grids` to hold one at a time), the manifest
    last: it lists the grids of the run that wrote it. Grids a previous manifest listed that this one
    does not (other channels, another layer) are removed after it is written. A failed write raises
    :class:`~guided_backprop.batch.DiskFull` naming the file.
    """
    from ..batch.config import write_failed

    out = Path(out_dir)
    rerun = "rerun the same command"
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise write_failed(err, out, rerun) from err
    before = _listed_grids(out / manifest, prefix) if manifest else set()
    paths, records = [], []
    for g in grids:
        name = f"{prefix}_{safe_name(g.layer)}_c{g.channel}.png"
        try:
            paths.append(render.save_image(g.picture, out / name))
        except OSError as err:
            raise write_failed(err, out / name, rerun) from err
        records.append({**g.to_dict(), "file": name})
    if manifest:
        try:
            _write_json({"units": records}, out / manifest)
        except OSError as err:
            raise write_failed(err, out / manifest, rerun) from err
        for stale in before - {r["file"] for r in records}:
            if (out / stale).is_file() and not (out / stale).is_symlink():
                (out / stale).unlink()
    return paths
