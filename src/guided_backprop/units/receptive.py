"""Receptive fields of a model's units, computed from its own layers.

The input region a unit ``(y, x)`` of a convolutional layer can see is, along each axis, the
interval ``[start + i * jump, start + i * jump + size)`` of input pixels (``i`` = ``y`` or ``x``).
``size``, ``jump`` (the layer's stride in input pixels) and ``start`` (negative when padding
reaches outside the image) are found by tracing one forward pass of a dummy input and composing
every convolution, pooling and padding on the way (Zeiler & Fergus 2013, arXiv:1311.2901, and
Springenberg et al. 2014, arXiv:1412.6806, fig. 3, crop the image to this region).

The trace runs on the ``meta`` device (no arithmetic, no memory for activations; the model is
untouched) and falls back to a real forward of zeros when an operation needs real values. Every
torch operation is seen through a :class:`~torch.overrides.TorchFunctionMode` (in
:mod:`.trace`), so functional calls (``F.max_pool2d`` in ``forward``) count as much as
modules do, and branching networks work:

* conv2d / max, avg and lp pooling / ``F.pad`` compose kernel, stride, padding and dilation;
* element-wise operations (``+``, ``*``, ``torch.cat`` of channels, activations, norms) take the
  union of their inputs' fields, so a residual or inception block gets its largest path's field;
* spatial reductions (``mean((2, 3), keepdim=True)``, adaptive pooling) cover the whole map;
* inputs broadcast over space (squeeze-excitation gates, global context) are left out of the
  union unless ``include_global=True``: with them every unit would see the whole image;
* anything else that changes or mixes the spatial layout (interpolation, flips, reshapes into
  tokens, unfolding) makes the field the whole input, and says so in :attr:`ReceptiveField.notes`.

The result is therefore always a superset of the pixels whose gradient can be non-zero for the
unit, and exactly that set for sequential conv/pool networks with positive weights.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..errors import InputError, ModelError
from ..hooks import find_layer, forward_hooks, model_state
from .trace import Axis, Field, FieldTracer, add_notes

__all__ = ["LayerRow", "ReceptiveField", "layer_table", "receptive_field", "receptive_fields", "screen_rows"]

Box = tuple[int, int, int, int]


@dataclass(frozen=True)
class ReceptiveField:
    """Where the units of one layer look in the input.

    Unit ``(y, x)`` sees rows ``start[0] + y * jump[0]`` to ``... + size[0] - 1`` and the same for
    columns with index 1. ``jump`` is 0 when every unit sees the same region (layers after a global
    pooling). ``exact`` is False when some operation on the path could only be bounded (then the field
    is a superset, see ``notes``).
    """

    layer: str
    size: tuple[int, int]
    jump: tuple[int, int]
    start: tuple[int, int]
    input_size: tuple[int, int]  # the (h, w) of the traced dummy input
    output_size: tuple[int, int] | None  # the layer's spatial (h, w) for that input; None: no spatial dims
    exact: bool = True
    notes: tuple[str, ...] = ()

    @property
    def stride(self) -> tuple[int, int]:
        """Alias of :attr:`jump`: how far apart neighbouring units look, in input pixels."""
        return self.jump

    def center(self, y: int, x: int) -> tuple[float, float]:
        """The input coordinate ``(row, col)`` at the centre of unit ``(y, x)``'s field."""
        return (self.start[0] + y * self.jump[0] + (self.size[0] - 1) / 2,
                self.start[1] + x * self.jump[1] + (self.size[1] - 1) / 2)

    def unclipped_box(self, y: int, x: int) -> Box:
        """``(top, left, bottom, right)`` of unit ``(y, x)``'s field (bottom/right exclusive), not clipped."""
        if int(y) < 0 or int(x) < 0:
            raise InputError(f"unit (y={y}, x={x}) of layer {self.layer!r}: positions start at 0")
        top = self.start[0] + y * self.jump[0]
        left = self.start[1] + x * self.jump[1]
        return top, left, top + self.size[0], left + self.size[1]

    def box(self, y: int, x: int, image_size: tuple[int, int] | None = None) -> Box:
        """``(top, left, bottom, right)`` of the input that unit ``(y, x)`` sees, clipped to the image.

        Bottom and right are exclusive, so ``image[..., top:bottom, left:right]`` is the patch.
        ``image_size`` is the input's ``(h, w)`` (default: the traced :attr:`input_size`).
        """
        size = self.input_size if image_size is None else (int(image_size[0]), int(image_size[1]))
        top, left, bottom, right = self.unclipped_box(y, x)
        self._check_unit(y, x, image_size)
        h, w = size
        top, bottom = min(max(top, 0), h), min(max(bottom, 0), h)
        left, right = min(max(left, 0), w), min(max(right, 0), w)
        return top, left, bottom, right

    def _check_unit(self, y: int, x: int, image_size: tuple[int, int] | None) -> None:
        same = image_size is None or tuple(int(v) for v in image_size) == self.input_size
        if same and self.output_size is not None:
            h, w = self.output_size
            if y >= h or x >= w:
                raise InputError(
                    f"unit (y={y}, x={x}) is outside layer {self.layer!r}'s {h}x{w} map for a "
                    f"{self.input_size[0]}x{self.input_size[1]} input (valid: y 0..{h - 1}, x 0..{w - 1})"
                )


# -- tracing ------------------------------------------------------------------------------------
class _Stop(Exception):
    pass


def _input_channels(model: nn.Module) -> int:
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            return int(m.in_channels)
    return 3


def _size2(input_size: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(input_size, int):
        size = (input_size, input_size)
    else:
        size = tuple(int(v) for v in input_size)  # type: ignore[assignment]
        if len(size) == 1:
            size = (size[0], size[0])
    if len(size) != 2 or min(size) < 1:
        raise InputError(f"input_size must be (height, width) with positive sizes, got {input_size!r}")
    return size  # type: ignore[return-value]


def _trace_once(model: nn.Module, modules: dict[str, nn.Module], x: torch.Tensor, tracer: FieldTracer,
                stop: bool) -> dict[str, tuple[Field | None, torch.Tensor | None]]:
    """One traced forward of ``x``; each named layer's (field of its first output, that output)."""
    found: dict[str, tuple[Field | None, torch.Tensor | None]] = {}

    def make(name: str) -> Any:
        def hook(_m: nn.Module, _i: Any, out: Any) -> None:
            if name not in found:
                t = out if isinstance(out, torch.Tensor) else None
                found[name] = (tracer.field_of(t) if t is not None else None, t)
            if stop and len(found) == len(modules):
                raise _Stop  # everything asked for is known: skip the rest of the network
        return hook

    tracer.register(x, Field((Axis(0, 1, 1), Axis(0, 1, 1)), (-2, -1), (int(x.shape[-2]), int(x.shape[-1]))))
    try:
        with model_state(model), torch.no_grad(), forward_hooks([(m, make(n)) for n, m in modules.items()]), tracer:
            model(x)
    except _Stop:
        pass
    return found


def _trace(model: nn.Module, names: Sequence[str], size: tuple[int, int], channels: int,
           include_global: bool, stop: bool) -> dict[str, tuple[Field | None, torch.Tensor | None]]:
    """Trace on the meta device; if an operation needs real values, trace again on zeros."""
    modules = {n: find_layer(model, n) for n in names}
    param = next(model.parameters(), None)
    dtype = param.dtype if param is not None and param.is_floating_point() else torch.float32
    device = param.device if param is not None else torch.device("cpu")
    errors = (RuntimeError, NotImplementedError, TypeError, ValueError, IndexError)
    try:
        x = torch.zeros(1, channels, *size, dtype=dtype, device="meta")
        return _trace_once(model, modules, x, FieldTracer(size, meta=True, include_global=include_global), stop)
    except errors:
        pass
    x = torch.zeros(1, channels, *size, dtype=dtype, device=device)
    try:
        return _trace_once(model, modules, x, FieldTracer(size, meta=False, include_global=include_global), stop)
    except errors as err:
        raise InputError(
            f"the model's forward pass failed on a dummy input of shape {tuple(x.shape)}: {err}; "
            f"give an input_size (and in_channels) the model accepts"
        ) from err


def _to_public(name: str, f: Field | None, out: torch.Tensor | None, size: tuple[int, int]) -> ReceptiveField:
    if out is None:
        raise ModelError(
            f"layer {name!r} returns no tensor (or was not called in the forward pass); "
            f"pick a layer whose output is an (N, C, H, W) feature map"
        )
    if f is None:
        raise ModelError(f"layer {name!r}'s output does not depend on the model's input; it has no receptive field")
    if f.dims is None:
        return ReceptiveField(name, size, (0, 0), (0, 0), size, None, exact=False,
                              notes=add_notes(f.notes, "no spatial layout: the whole input"))
    return ReceptiveField(
        name,
        (f.axes[0].size, f.axes[1].size),
        (f.axes[0].jump, f.axes[1].jump),
        (f.axes[0].start, f.axes[1].start),
        size,
        f.shape,
        exact=f.exact,
        notes=tuple(n for n in f.notes if n),
    )


def receptive_field(
    model: nn.Module,
    layer: str,
    input_size: int | Sequence[int] = (224, 224),
    *,
    in_channels: int | None = None,
    include_global: bool = False,
) -> ReceptiveField:
    """The receptive field of the units of ``layer`` (a name from ``model.named_modules()``).

    Traces one forward pass of a dummy ``(1, in_channels, *input_size)`` input (on the meta device
    when possible) up to the first call of ``layer``. ``in_channels`` defaults to the first
    ``Conv2d``'s. For networks without adaptive pooling on the path the result does not depend on
    ``input_size``. Unknown names raise :class:`~guided_backprop.UnknownNameError` with close matches.

    >>> receptive_field(torchvision.models.vgg16(), "features.30").size   # pool5
    (212, 212)
    """
    size = _size2(input_size)
    channels = _input_channels(model) if in_channels is None else int(in_channels)
    found = _trace(model, [layer], size, channels, include_global, stop=True)
    f, out = found.get(layer, (None, None))
    return _to_public(layer, f, out, size)


def receptive_fields(
    model: nn.Module,
    input_size: int | Sequence[int] = (224, 224),
    *,
    layers: Sequence[str] | None = None,
    in_channels: int | None = None,
    include_global: bool = False,
) -> dict[str, ReceptiveField]:
    """Receptive fields of many layers from one traced forward pass, in call order.

    ``layers`` defaults to every named submodule whose output is a tensor with spatial dimensions
    (containers included); layers that are not called or return no tensor are left out.
    """
    size = _size2(input_size)
    channels = _input_channels(model) if in_channels is None else int(in_channels)
    names = list(layers) if layers is not None else [n for n, _ in model.named_modules() if n]
    found = _trace(model, names, size, channels, include_global, stop=False)
    out: dict[str, ReceptiveField] = {}
    for name, (f, t) in found.items():
        if t is None or f is None:
            if layers is not None:
                out[name] = _to_public(name, f, t, size)  # raises with the reason
            continue
        if layers is None and f.dims is None:
            continue
        out[name] = _to_public(name, f, t, size)
    if layers is not None:
        missing = [n for n in names if n not in found]
        if missing:
            raise ModelError(f"layer {missing[0]!r} was not called during the forward pass; it has no receptive field")
    return out



@dataclass(frozen=True)
class LayerRow:
    """One layer for ``guided-backprop layers``: its type, output shape and receptive field for ``input_size``."""

    name: str
    type: str
    shape: tuple[int, ...] | None  # the first call's output, batch of 1; None: not a tensor or not called
    field: ReceptiveField | None  # for spatial outputs
    input_size: tuple[int, int]

    @property
    def spatial(self) -> bool:
        """Whether the output is an ``(N, C, H, W)`` map with more than one position (usable for
        Grad-CAM and units; a 1x1 map, e.g. after global pooling, is not)."""
        return self.shape is not None and len(self.shape) == 4 and self.shape[-1] * self.shape[-2] > 1

    @property
    def shape_text(self) -> str:
        return "-" if self.shape is None else "x".join(map(str, self.shape))

    @property
    def pass_through(self) -> bool:
        """An ``Identity``, dropout or drop-path layer (its output is its input at eval time), or a layer
        the forward pass never calls: nothing to explain there."""
        return self.shape is None or self.type == "Identity" or "Drop" in self.type

    @property
    def field_text(self) -> str:
        f = self.field
        if f is None:
            return "-"
        if self.shape is not None and (len(self.shape) != 4 or self.shape[-1] * self.shape[-2] == 1):
            return "whole input (no positions)"  # (N, C) or a 1x1 map: no stride to speak of
        whole = f.size[0] >= self.input_size[0] and f.size[1] >= self.input_size[1]
        stride = f"{f.jump[0]}" if f.jump[0] == f.jump[1] else f"{f.jump[0]}x{f.jump[1]}"
        text = f"{f.size[0]}x{f.size[1]} px, stride {stride}"
        return text + (" (whole input)" if whole else "") + ("" if f.exact else " (at most)")


def screen_rows(rows: Sequence[LayerRow], *, limit: int = 50) -> tuple[list[LayerRow], int | None]:
    """The rows of :func:`layer_table` a person reads first: no :attr:`~LayerRow.pass_through` layers,
    and only names down to the deepest nesting level (``blocks.3.0`` is level 3) that keeps at most
    ``limit`` rows (at least level 1). Returns the rows and that level (``None``: every level fits)."""
    kept = [r for r in rows if not r.pass_through]
    depths = sorted({r.name.count(".") + 1 for r in kept})
    for depth in reversed(depths):
        shown = [r for r in kept if r.name.count(".") < depth]
        if len(shown) <= limit or depth == depths[0]:
            return shown, None if depth == depths[-1] else depth
    return kept, None


def layer_table(model: nn.Module, preprocessing: Any, *, input_size: Sequence[int] | None = None) -> list[LayerRow]:
    """Every named layer of ``model`` in definition order, with its output shape and receptive field for
    the input ``preprocessing`` makes (its :attr:`~.Preprocessing.nominal_size`, else 224x224; or
    ``input_size``) and its channel count. One forward of zeros gives the shapes, one trace the fields."""
    nominal = getattr(preprocessing, "nominal_size", None)
    size = _size2(tuple(input_size) if input_size is not None else (nominal or (224, 224)))
    channels = int(getattr(preprocessing, "channels", 3))
    modules = {n: m for n, m in model.named_modules() if n}
    shapes: dict[str, tuple[int, ...] | None] = {}

    def make(name: str) -> Any:
        def hook(_m: nn.Module, _i: Any, out: Any) -> None:
            if name not in shapes:
                shapes[name] = tuple(out.shape) if isinstance(out, torch.Tensor) else None
        return hook

    param = next(model.parameters(), None)
    x = torch.zeros(1, channels, *size, device=param.device if param is not None else "cpu",
                    dtype=param.dtype if param is not None and param.is_floating_point() else torch.float32)
    try:
        with model_state(model), torch.no_grad(), forward_hooks([(m, make(n)) for n, m in modules.items()]):
            model(x)
    except Exception as err:  # noqa: BLE001 - the user's forward: reported with what was tried
        raise InputError(f"the model's forward pass failed on a blank input of shape {tuple(x.shape)}: "
                         f"{type(err).__name__}: {' '.join(str(err).split())[:300]}; give input_size=N or "
                         f"channels=1 as the model expects", field="preprocessing") from err
    fields = receptive_fields(model, size, in_channels=channels)
    return [LayerRow(n, type(m).__name__, shapes.get(n), fields.get(n), size) for n, m in modules.items()]
