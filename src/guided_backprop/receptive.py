"""Receptive fields of a model's units, computed from its own layers.

The input region a unit ``(y, x)`` of a convolutional layer can see is, along each axis, the
interval ``[start + i * jump, start + i * jump + size)`` of input pixels (``i`` = ``y`` or ``x``).
``size``, ``jump`` (the layer's stride in input pixels) and ``start`` (negative when padding
reaches outside the image) are found by tracing one forward pass of a dummy input and composing
every convolution, pooling and padding on the way (Zeiler & Fergus 2013, arXiv:1311.2901, and
Springenberg et al. 2014, arXiv:1412.6806, fig. 3, crop the image to this region).

The trace runs on the ``meta`` device (no arithmetic, no memory for activations; the model is
untouched) and falls back to a real forward of zeros when an operation needs real values. Every
torch operation is seen through a :class:`~torch.overrides.TorchFunctionMode`, so functional
calls (``F.max_pool2d`` in ``forward``) count as much as modules do, and branching networks work:

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
from torch.overrides import TorchFunctionMode

from .errors import InputError, ModelError
from .hooks import find_layer, forward_hooks, model_state

__all__ = ["LayerRow", "ReceptiveField", "layer_table", "receptive_field", "receptive_fields"]

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


# -- the per-tensor field state -------------------------------------------------------------------
@dataclass(frozen=True)
class _Axis:
    start: int
    size: int
    jump: int


@dataclass(frozen=True)
class _Field:
    """Field of every unit of one traced tensor.

    ``dims`` are the (negative) indices of the tensor's two spatial dimensions and ``shape`` their
    sizes; ``dims is None`` marks an opaque tensor (no spatial layout left): it sees the whole input.
    """

    axes: tuple[_Axis, _Axis]
    dims: tuple[int, int] | None
    shape: tuple[int, int]
    exact: bool = True
    notes: tuple[str, ...] = ()


def _note(notes: Sequence[str], *more: str) -> tuple[str, ...]:
    out = list(notes)
    for m in more:
        if m and m not in out:
            out.append(m)
    return tuple(out)


def _pair(v: Any, name: str) -> tuple[int, int]:
    if isinstance(v, (list, tuple, torch.Size)):
        if len(v) == 0:
            return (0, 0) if name != "kernel" else (1, 1)
        if len(v) == 1:
            return int(v[0]), int(v[0])
        return int(v[-2]), int(v[-1])
    return int(v), int(v)


def _arg(args: Sequence[Any], kwargs: dict[str, Any], pos: int, name: str, default: Any) -> Any:
    if len(args) > pos:
        return args[pos]
    return kwargs.get(name, default)


# name -> positions of (kernel, stride, padding, dilation) in the call; kernel given by weight for conv.
_POOLS = {
    "max_pool2d": (1, 2, 3, 4),
    "_max_pool2d": (1, 2, 3, 4),
    "max_pool2d_with_indices": (1, 2, 3, 4),
    "avg_pool2d": (1, 2, 3, None),
    "lp_pool2d": (2, 3, None, None),
}
_ADAPTIVE = {"adaptive_avg_pool2d", "adaptive_max_pool2d", "adaptive_max_pool2d_with_indices"}
_CONCAT = {"cat", "concat", "concatenate"}
# Operations that keep the shape but move values across space when their dim(s) are spatial.
_MIXING = {"flip", "fliplr", "flipud", "roll", "rot90", "cumsum", "cumprod", "cummax", "cummin",
           "logcumsumexp", "sort", "argsort", "softmax", "log_softmax", "softmin", "grid_sample",
           "gather", "scatter", "scatter_", "scatter_add", "scatter_add_", "index_select", "take_along_dim"}


# Spatial operations not followed: their output sees the whole input (a safe superset).
_OPAQUE = {"conv_transpose1d", "conv_transpose2d", "conv_transpose3d", "conv1d", "conv3d", "unfold", "fold",
           "interpolate", "upsample", "upsample_nearest", "upsample_bilinear", "pixel_shuffle", "pixel_unshuffle",
           "max_pool1d", "avg_pool1d", "max_pool3d", "avg_pool3d", "max_unpool2d", "fractional_max_pool2d"}
_WINDOWS = {"conv2d", "pad", *_POOLS, *_ADAPTIVE}


class _Tracer(TorchFunctionMode):
    """Follows the field of every tensor derived from the dummy input (see the module docstring)."""

    def __init__(self, input_size: tuple[int, int], *, meta: bool, include_global: bool) -> None:
        super().__init__()
        self.input_size = input_size
        self.meta = meta
        self.include_global = include_global
        self.fields: dict[int, tuple[torch.Tensor, _Field]] = {}

    # -- bookkeeping ---------------------------------------------------------------------------
    def register(self, t: torch.Tensor, f: _Field) -> None:
        self.fields[id(t)] = (t, f)  # the tensor is kept alive, so its id cannot be reused

    def field_of(self, t: Any) -> _Field | None:
        if not isinstance(t, torch.Tensor):
            return None
        entry = self.fields.get(id(t))
        return entry[1] if entry is not None and entry[0] is t else None

    def opaque(self, notes: Sequence[str], why: str) -> _Field:
        h, w = self.input_size
        return _Field((_Axis(0, h, 0), _Axis(0, w, 0)), None, (1, 1), exact=False, notes=_note(notes, why))

    def _to_meta(self, v: Any) -> Any:
        if isinstance(v, torch.Tensor):
            return v if v.device.type == "meta" else v.to("meta")
        if isinstance(v, (list, tuple)):
            return type(v)(self._to_meta(e) for e in v) if not hasattr(v, "_fields") else v
        if isinstance(v, dict):
            return {k: self._to_meta(e) for k, e in v.items()}
        return v

    # -- the mode -------------------------------------------------------------------------------
    def __torch_function__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        kwargs = kwargs or {}
        if self.meta:
            args, kwargs = self._to_meta(tuple(args)), self._to_meta(kwargs)
        out = func(*args, **kwargs)
        inputs = [t for t in _tensors(args) + _tensors(kwargs) if self.field_of(t) is not None]
        if not inputs:
            return out
        name = getattr(func, "__name__", str(func))
        outs = _tensors(out)
        if out is None and name == "__setitem__" and isinstance(args[0], torch.Tensor):
            outs = [args[0]]
        for t in outs:
            try:
                f = self._propagate(name, args, kwargs, inputs, t)
            except (TypeError, ValueError, IndexError) as err:  # arguments we cannot read: be safe
                f = self.opaque(self._notes(inputs), f"{name} ({type(err).__name__}: {err})")
            self.register(t, f)
        return out

    def _notes(self, inputs: Sequence[torch.Tensor]) -> tuple[str, ...]:
        notes: tuple[str, ...] = ()
        for t in inputs:
            notes = _note(notes, *self.field_of(t).notes)  # type: ignore[union-attr]
        return notes

    def _propagate(self, name: str, args: Sequence[Any], kwargs: dict[str, Any],
                   inputs: list[torch.Tensor], out: torch.Tensor) -> _Field:
        first = self.field_of(args[0]) if args else None
        if name in _OPAQUE or (name in _WINDOWS and (first is None or first.dims != (-2, -1))):
            return self.opaque(self._notes(inputs), f"{name} is not followed")
        if name == "conv2d":
            weight = _arg(args, kwargs, 1, "weight", None)
            kh, kw = (int(k) for k in weight.shape[-2:])
            kernel = (kh, kw)
            stride = _pair(_arg(args, kwargs, 3, "stride", 1), "stride")
            dilation = _pair(_arg(args, kwargs, 5, "dilation", 1), "dilation")
            padding = _arg(args, kwargs, 4, "padding", 0)
            if isinstance(padding, str):
                if padding == "valid":
                    padding = (0, 0)
                else:  # "same": PyTorch pads (total // 2) before and the rest after
                    padding = tuple((d * (k - 1)) // 2 for d, k in zip(dilation, kernel))
            assert first is not None
            return _window(first, kernel, stride, _pair(padding, "padding"), dilation, out)
        if name in _POOLS:
            kpos, spos, ppos, dpos = _POOLS[name]
            kernel = _pair(_arg(args, kwargs, kpos, "kernel_size", 1), "kernel")
            stride_arg = _arg(args, kwargs, spos, "stride", None)
            stride = kernel if stride_arg is None or (isinstance(stride_arg, (list, tuple)) and not stride_arg) \
                else _pair(stride_arg, "stride")
            padding = _pair(_arg(args, kwargs, ppos, "padding", 0), "padding") if ppos is not None else (0, 0)
            dilation = _pair(_arg(args, kwargs, dpos, "dilation", 1), "dilation") if dpos is not None else (1, 1)
            assert first is not None
            return _window(first, kernel, stride, padding, dilation, out)
        if name in _ADAPTIVE:
            assert first is not None
            return _adaptive(first, out)
        if name == "pad":
            assert first is not None
            return self._pad(first, args, kwargs, out)
        if name in ("permute", "transpose", "swapaxes", "swapdims", "movedim", "moveaxis") and first is not None \
                and first.dims is not None and args[0].ndim == out.ndim:
            return _relayout(name, args, kwargs, first, out)
        if name in _MIXING and any(self._mixes(name, args, kwargs, t) for t in inputs):
            return self.opaque(self._notes(inputs), f"{name} moves values across space")
        if name in _CONCAT:
            dim = int(_arg(args, kwargs, 1, "dim", 0))
            for t in inputs:
                f = self.field_of(t)
                if f.dims is not None and (dim - t.ndim if dim >= 0 else dim) in f.dims:  # type: ignore[union-attr]
                    return self.opaque(self._notes(inputs), f"{name} along a spatial dimension")
        return self._union(name, inputs, out)

    def _mixes(self, name: str, args: Sequence[Any], kwargs: dict[str, Any], t: torch.Tensor) -> bool:
        f = self.field_of(t)
        if f is None or f.dims is None or not args or args[0] is not t:
            return f is not None and f.dims is not None and name == "grid_sample"
        if name == "fliplr":
            dims: Any = [1]
        elif name == "flipud":
            dims = [0]
        elif name == "flip":
            dims = _arg(args, kwargs, 1, "dims", None)
        elif name == "roll":
            dims = _arg(args, kwargs, 2, "dims", None)
        elif name == "take_along_dim":
            dims = _arg(args, kwargs, 2, "dim", None)
        elif name == "rot90":
            dims = _arg(args, kwargs, 2, "dims", [0, 1])
        else:
            dims = _arg(args, kwargs, 1, "dim", None)
        if dims is None:
            return True
        dims = [dims] if isinstance(dims, int) else list(dims)
        return any((d - t.ndim if d >= 0 else d) in f.dims for d in dims)

    def _pad(self, f: _Field, args: Sequence[Any], kwargs: dict[str, Any], out: torch.Tensor) -> _Field:
        pad = [int(p) for p in _arg(args, kwargs, 1, "pad", ())]
        mode = _arg(args, kwargs, 2, "mode", "constant")
        pad += [0] * (4 - len(pad))
        left, top = pad[0], pad[2]
        axes = (_Axis(f.axes[0].start - top * f.axes[0].jump, f.axes[0].size, f.axes[0].jump),
                _Axis(f.axes[1].start - left * f.axes[1].jump, f.axes[1].size, f.axes[1].jump))
        notes = f.notes
        if mode != "constant" and any(pad[:4]):
            notes = _note(notes, f"{mode} padding treated like zero padding")
        assert f.dims is not None  # a window's input has spatial dims (checked by _propagate)
        return _Field(axes, f.dims, _spatial(out, f.dims), f.exact, notes)

    def _union(self, name: str, inputs: list[torch.Tensor], out: torch.Tensor) -> _Field:
        notes = self._notes(inputs)
        parts: list[tuple[_Field, tuple[bool, bool]]] = []  # field, broadcast per axis
        for t in inputs:
            f = self.field_of(t)
            assert f is not None
            if f.dims is None:  # already the whole input
                return self.opaque(notes, "")
            if out.ndim < -min(f.dims):
                return self.opaque(notes, f"{name} removes the spatial layout {tuple(t.shape)} -> {tuple(out.shape)}")
            shape = _spatial(out, f.dims)
            if shape == f.shape:
                parts.append((f, (False, False)))
            elif all(s == 1 for s in shape) and t.ndim == out.ndim:  # a reduction over space
                return self._whole_map(f, shape, notes)
            elif all(fs in (1, s) for fs, s in zip(f.shape, shape)):
                parts.append((f, (f.shape[0] != shape[0], f.shape[1] != shape[1])))
            else:
                return self.opaque(notes, f"{name} changes the spatial size {f.shape} -> {shape}")
        if not self.include_global:
            local = [p for p in parts if not all(p[1])]
            if local and len(local) < len(parts):
                notes = _note(notes, "inputs broadcast over space (e.g. squeeze-excitation gates) left out")
                parts = local
        dims = parts[0][0].dims
        shape = _spatial(out, dims)  # type: ignore[arg-type]
        axes = []
        exact = all(p[0].exact for p in parts)
        for a in range(2):
            pieces = [(p[0].axes[a], p[1][a]) for p in parts]
            ax, ok = _cover([(ax.start, ax.size, 0 if b else ax.jump) for ax, b in pieces], shape[a])
            exact = exact and ok
            axes.append(ax)
        if not exact and all(p[0].exact for p in parts):
            notes = _note(notes, f"{name} joins fields of different strides; their cover is used")
        return _Field((axes[0], axes[1]), dims, shape, exact, notes)

    @staticmethod
    def _whole_map(f: _Field, shape: tuple[int, int], notes: tuple[str, ...]) -> _Field:
        axes = tuple(_Axis(ax.start, (n - 1) * ax.jump + ax.size, ax.jump) for ax, n in zip(f.axes, f.shape))
        return _Field((axes[0], axes[1]), f.dims, shape, f.exact, notes)


def _tensors(v: Any) -> list[torch.Tensor]:
    if isinstance(v, torch.Tensor):
        return [v]
    if isinstance(v, (list, tuple)):
        return [t for e in v for t in _tensors(e)]
    if isinstance(v, dict):
        return [t for e in v.values() for t in _tensors(e)]
    return []


def _spatial(t: torch.Tensor, dims: tuple[int, int]) -> tuple[int, int]:
    return int(t.shape[dims[0]]), int(t.shape[dims[1]])


def _window(f: _Field, kernel: tuple[int, int], stride: tuple[int, int], padding: tuple[int, int],
            dilation: tuple[int, int], out: torch.Tensor) -> _Field:
    """Compose a sliding window (convolution or pooling) onto field ``f``."""
    axes = []
    for a in range(2):
        ax = f.axes[a]
        span = dilation[a] * (kernel[a] - 1) + 1
        axes.append(_Axis(ax.start - padding[a] * ax.jump, ax.size + (span - 1) * ax.jump, ax.jump * stride[a]))
    return _Field((axes[0], axes[1]), f.dims, _spatial(out, f.dims), f.exact, f.notes)  # type: ignore[arg-type]


def _adaptive(f: _Field, out: torch.Tensor) -> _Field:
    """Adaptive pooling: window i covers [floor(i n / o), ceil((i + 1) n / o)); exact when o divides n."""
    shape = _spatial(out, f.dims)  # type: ignore[arg-type]
    axes = []
    exact = f.exact
    for a in range(2):
        n, o, ax = f.shape[a], shape[a], f.axes[a]
        stride = max(n // o, 0) if n % o == 0 else max(round(n / o), 0)
        windows = [(i * n // o, -((-(i + 1) * n) // o)) for i in range(o)]
        offset = min(lo - i * stride for i, (lo, _) in enumerate(windows))
        kernel = max(hi - i * stride for i, (_, hi) in enumerate(windows)) - offset
        exact = exact and n % o == 0
        axes.append(_Axis(ax.start + offset * ax.jump, ax.size + (kernel - 1) * ax.jump, ax.jump * stride))
    notes = f.notes if exact or not f.exact else _note(f.notes, "adaptive pooling with uneven windows bounded")
    return _Field((axes[0], axes[1]), f.dims, shape, exact, notes)


def _relayout(name: str, args: Sequence[Any], kwargs: dict[str, Any], f: _Field, out: torch.Tensor) -> _Field:
    ndim = out.ndim
    norm = [d + ndim for d in f.dims]  # type: ignore[union-attr]
    if name == "permute":
        perm = args[1:] if len(args) > 2 or (len(args) == 2 and isinstance(args[1], int)) else \
            _arg(args, kwargs, 1, "dims", None)
        perm = [int(p) % ndim for p in perm]
        new = [perm.index(d) for d in norm]
    elif name in ("movedim", "moveaxis"):
        src = _arg(args, kwargs, 1, "source", None)
        dst = _arg(args, kwargs, 2, "destination", None)
        src = [int(s) % ndim for s in ([src] if isinstance(src, int) else src)]
        dst = [int(d) % ndim for d in ([dst] if isinstance(dst, int) else dst)]
        rest = [d for d in range(ndim) if d not in src]
        placed: list[int | None] = [None] * ndim
        for s, d in zip(src, dst):
            placed[d] = s
        it = iter(rest)
        order = [o if o is not None else next(it) for o in placed]
        new = [order.index(d) for d in norm]
    else:
        d0 = int(_arg(args, kwargs, 1, "dim0", 0)) % ndim
        d1 = int(_arg(args, kwargs, 2, "dim1", 1)) % ndim
        swap = {d0: d1, d1: d0}
        new = [swap.get(d, d) for d in norm]
    dims = (new[0] - ndim, new[1] - ndim)
    return _Field(f.axes, dims, _spatial(out, dims), f.exact, f.notes)


def _cover(pieces: list[tuple[int, int, int]], n: int) -> tuple[_Axis, bool]:
    """One affine field ``(start, size, jump)`` covering the union of ``pieces`` for units 0..n-1.

    Exact (second value True) when all pieces share one jump; otherwise the cover uses the largest
    jump and is widened until every unit's true union is inside it.
    """
    jump = max(j for _, _, j in pieces)
    exact = all(j == jump for _, _, j in pieces) or n == 1
    ends = [0, max(n - 1, 0)]
    lo = min(s + i * j - i * jump for s, _, j in pieces for i in ends)
    hi = max(s + size + i * j - i * jump for s, size, j in pieces for i in ends)
    return _Axis(lo, hi - lo, jump if n > 1 else pieces[0][2]), exact


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


def _trace_once(model: nn.Module, modules: dict[str, nn.Module], x: torch.Tensor, tracer: _Tracer,
                stop: bool) -> dict[str, tuple[_Field | None, torch.Tensor | None]]:
    """One traced forward of ``x``; each named layer's (field of its first output, that output)."""
    found: dict[str, tuple[_Field | None, torch.Tensor | None]] = {}

    def make(name: str) -> Any:
        def hook(_m: nn.Module, _i: Any, out: Any) -> None:
            if name not in found:
                t = out if isinstance(out, torch.Tensor) else None
                found[name] = (tracer.field_of(t) if t is not None else None, t)
            if stop and len(found) == len(modules):
                raise _Stop  # everything asked for is known: skip the rest of the network
        return hook

    tracer.register(x, _Field((_Axis(0, 1, 1), _Axis(0, 1, 1)), (-2, -1), (int(x.shape[-2]), int(x.shape[-1]))))
    try:
        with model_state(model), torch.no_grad(), forward_hooks([(m, make(n)) for n, m in modules.items()]), tracer:
            model(x)
    except _Stop:
        pass
    return found


def _trace(model: nn.Module, names: Sequence[str], size: tuple[int, int], channels: int,
           include_global: bool, stop: bool) -> dict[str, tuple[_Field | None, torch.Tensor | None]]:
    """Trace on the meta device; if an operation needs real values, trace again on zeros."""
    modules = {n: find_layer(model, n) for n in names}
    param = next(model.parameters(), None)
    dtype = param.dtype if param is not None and param.is_floating_point() else torch.float32
    device = param.device if param is not None else torch.device("cpu")
    errors = (RuntimeError, NotImplementedError, TypeError, ValueError, IndexError)
    try:
        x = torch.zeros(1, channels, *size, dtype=dtype, device="meta")
        return _trace_once(model, modules, x, _Tracer(size, meta=True, include_global=include_global), stop)
    except errors:
        pass
    x = torch.zeros(1, channels, *size, dtype=dtype, device=device)
    try:
        return _trace_once(model, modules, x, _Tracer(size, meta=False, include_global=include_global), stop)
    except errors as err:
        raise InputError(
            f"the model's forward pass failed on a dummy input of shape {tuple(x.shape)}: {err}; "
            f"give an input_size (and in_channels) the model accepts"
        ) from err


def _to_public(name: str, f: _Field | None, out: torch.Tensor | None, size: tuple[int, int]) -> ReceptiveField:
    if out is None:
        raise ModelError(
            f"layer {name!r} returns no tensor (or was not called in the forward pass); "
            f"pick a layer whose output is an (N, C, H, W) feature map"
        )
    if f is None:
        raise ModelError(f"layer {name!r}'s output does not depend on the model's input; it has no receptive field")
    if f.dims is None:
        return ReceptiveField(name, size, (0, 0), (0, 0), size, None, exact=False,
                              notes=_note(f.notes, "no spatial layout: the whole input"))
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
        """Whether the output is an ``(N, C, H, W)`` map (usable for Grad-CAM and units)."""
        return self.shape is not None and len(self.shape) == 4

    @property
    def shape_text(self) -> str:
        return "-" if self.shape is None else "x".join(map(str, self.shape))

    @property
    def field_text(self) -> str:
        f = self.field
        if f is None:
            return "-"
        if f.size[0] >= self.input_size[0] and f.size[1] >= self.input_size[1]:
            whole = "the whole input"
        else:
            whole = ""
        text = f"{f.size[0]}x{f.size[1]} px, stride {f.jump[0]}x{f.jump[1]}"
        return text + (f" ({whole})" if whole else "") + ("" if f.exact else " (at most)")


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
