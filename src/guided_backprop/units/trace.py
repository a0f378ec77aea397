"""The receptive-field tracer: how each torch operation changes the field of the tensors it makes.

:class:`FieldTracer` is a :class:`~torch.overrides.TorchFunctionMode` that sees every torch call of
one forward pass (functional calls included) and keeps, per tensor derived from the dummy input, a
:class:`Field`: per spatial axis the ``start``, ``size`` and ``jump`` of its units' input region.
Convolutions, pooling and padding compose windows; element-wise operations take the union of their
inputs' fields; anything that mixes space is the whole input. :mod:`.receptive` drives the forward
and turns fields into :class:`~guided_backprop.units.receptive.ReceptiveField`; the rules are described there.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch.overrides import TorchFunctionMode

from ..rules import call_arg

__all__ = ["Axis", "Field", "FieldTracer", "add_notes"]


# -- the per-tensor field state -------------------------------------------------------------------
@dataclass(frozen=True)
class Axis:
    """One axis of a field: unit ``i`` sees input pixels ``[start + i * jump, start + i * jump + size)``."""

    start: int
    size: int
    jump: int


@dataclass(frozen=True)
class Field:
    """Field of every unit of one traced tensor.

    ``dims`` are the (negative) indices of the tensor's two spatial dimensions and ``shape`` their
    sizes; ``dims is None`` marks an opaque tensor (no spatial layout left): it sees the whole input.
    """

    axes: tuple[Axis, Axis]
    dims: tuple[int, int] | None
    shape: tuple[int, int]
    exact: bool = True
    notes: tuple[str, ...] = ()


def add_notes(notes: Sequence[str], *more: str) -> tuple[str, ...]:
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


class FieldTracer(TorchFunctionMode):
    """Follows the field of every tensor derived from the dummy input (see the module docstring)."""

    def __init__(self, input_size: tuple[int, int], *, meta: bool, include_global: bool) -> None:
        super().__init__()
        self.input_size = input_size
        self.meta = meta
        self.include_global = include_global
        self.fields: dict[int, tuple[torch.Tensor, Field]] = {}

    # -- bookkeeping ---------------------------------------------------------------------------
    def register(self, t: torch.Tensor, f: Field) -> None:
        self.fields[id(t)] = (t, f)  # the tensor is kept alive, so its id cannot be reused

    def field_of(self, t: Any) -> Field | None:
        if not isinstance(t, torch.Tensor):
            return None
        entry = self.fields.get(id(t))
        return entry[1] if entry is not None and entry[0] is t else None

    def opaque(self, notes: Sequence[str], why: str) -> Field:
        h, w = self.input_size
        return Field((Axis(0, h, 0), Axis(0, w, 0)), None, (1, 1), exact=False, notes=add_notes(notes, why))

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
            notes = add_notes(notes, *self.field_of(t).notes)  # type: ignore[union-attr]
        return notes

    def _propagate(self, name: str, args: Sequence[Any], kwargs: dict[str, Any],
                   inputs: list[torch.Tensor], out: torch.Tensor) -> Field:
        first = self.field_of(args[0]) if args else None
        if name in _OPAQUE or (name in _WINDOWS and (first is None or first.dims != (-2, -1))):
            return self.opaque(self._notes(inputs), f"{name} is not followed")
        if name == "conv2d":
            weight = call_arg(args, kwargs, 1, "weight", None)
            kh, kw = (int(k) for k in weight.shape[-2:])
            kernel = (kh, kw)
            stride = _pair(call_arg(args, kwargs, 3, "stride", 1), "stride")
            dilation = _pair(call_arg(args, kwargs, 5, "dilation", 1), "dilation")
            padding = call_arg(args, kwargs, 4, "padding", 0)
            if isinstance(padding, str):
                if padding == "valid":
                    padding = (0, 0)
                else:  # "same": PyTorch pads (total // 2) before and the rest after
                    padding = tuple((d * (k - 1)) // 2 for d, k in zip(dilation, kernel))
            assert first is not None
            return _window(first, kernel, stride, _pair(padding, "padding"), dilation, out)
        if name in _POOLS:
            kpos, spos, ppos, dpos = _POOLS[name]
            kernel = _pair(call_arg(args, kwargs, kpos, "kernel_size", 1), "kernel")
            stride_arg = call_arg(args, kwargs, spos, "stride", None)
            stride = kernel if stride_arg is None or (isinstance(stride_arg, (list, tuple)) and not stride_arg) \
                else _pair(stride_arg, "stride")
            padding = _pair(call_arg(args, kwargs, ppos, "padding", 0), "padding") if ppos is not None else (0, 0)
            dilation = _pair(call_arg(args, kwargs, dpos, "dilation", 1), "dilation") if dpos is not None else (1, 1)
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
            dim = int(call_arg(args, kwargs, 1, "dim", 0))
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
            dims = call_arg(args, kwargs, 1, "dims", None)
        elif name == "roll":
            dims = call_arg(args, kwargs, 2, "dims", None)
        elif name == "take_along_dim":
            dims = call_arg(args, kwargs, 2, "dim", None)
        elif name == "rot90":
            dims = call_arg(args, kwargs, 2, "dims", [0, 1])
        else:
            dims = call_arg(args, kwargs, 1, "dim", None)
        if dims is None:
            return True
        dims = [dims] if isinstance(dims, int) else list(dims)
        return any((d - t.ndim if d >= 0 else d) in f.dims for d in dims)

    def _pad(self, f: Field, args: Sequence[Any], kwargs: dict[str, Any], out: torch.Tensor) -> Field:
        pad = [int(p) for p in call_arg(args, kwargs, 1, "pad", ())]
        mode = call_arg(args, kwargs, 2, "mode", "constant")
        pad += [0] * (4 - len(pad))
        left, top = pad[0], pad[2]
        axes = (Axis(f.axes[0].start - top * f.axes[0].jump, f.axes[0].size, f.axes[0].jump),
                Axis(f.axes[1].start - left * f.axes[1].jump, f.axes[1].size, f.axes[1].jump))
        notes = f.notes
        if mode != "constant" and any(pad[:4]):
            notes = add_notes(notes, f"{mode} padding treated like zero padding")
        assert f.dims is not None  # a window's input has spatial dims (checked by _propagate)
        return Field(axes, f.dims, _spatial(out, f.dims), f.exact, notes)

    def _union(self, name: str, inputs: list[torch.Tensor], out: torch.Tensor) -> Field:
        notes = self._notes(inputs)
        parts: list[tuple[Field, tuple[bool, bool]]] = []  # field, broadcast per axis
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
                notes = add_notes(notes, "inputs broadcast over space (e.g. squeeze-excitation gates) left out")
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
            notes = add_notes(notes, f"{name} joins fields of different strides; their cover is used")
        return Field((axes[0], axes[1]), dims, shape, exact, notes)

    @staticmethod
    def _whole_map(f: Field, shape: tuple[int, int], notes: tuple[str, ...]) -> Field:
        axes = tuple(Axis(ax.start, (n - 1) * ax.jump + ax.size, ax.jump) for ax, n in zip(f.axes, f.shape))
        return Field((axes[0], axes[1]), f.dims, shape, f.exact, notes)


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


def _window(f: Field, kernel: tuple[int, int], stride: tuple[int, int], padding: tuple[int, int],
            dilation: tuple[int, int], out: torch.Tensor) -> Field:
    """Compose a sliding window (convolution or pooling) onto field ``f``."""
    axes = []
    for a in range(2):
        ax = f.axes[a]
        span = dilation[a] * (kernel[a] - 1) + 1
        axes.append(Axis(ax.start - padding[a] * ax.jump, ax.size + (span - 1) * ax.jump, ax.jump * stride[a]))
    return Field((axes[0], axes[1]), f.dims, _spatial(out, f.dims), f.exact, f.notes)  # type: ignore[arg-type]


def _adaptive(f: Field, out: torch.Tensor) -> Field:
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
        axes.append(Axis(ax.start + offset * ax.jump, ax.size + (kernel - 1) * ax.jump, ax.jump * stride))
    notes = f.notes if exact or not f.exact else add_notes(f.notes, "adaptive pooling with uneven windows bounded")
    return Field((axes[0], axes[1]), f.dims, shape, exact, notes)


def _relayout(name: str, args: Sequence[Any], kwargs: dict[str, Any], f: Field, out: torch.Tensor) -> Field:
    ndim = out.ndim
    norm = [d + ndim for d in f.dims]  # type: ignore[union-attr]
    if name == "permute":
        perm = args[1:] if len(args) > 2 or (len(args) == 2 and isinstance(args[1], int)) else \
            call_arg(args, kwargs, 1, "dims", None)
        perm = [int(p) % ndim for p in perm]
        new = [perm.index(d) for d in norm]
    elif name in ("movedim", "moveaxis"):
        src = call_arg(args, kwargs, 1, "source", None)
        dst = call_arg(args, kwargs, 2, "destination", None)
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
        d0 = int(call_arg(args, kwargs, 1, "dim0", 0)) % ndim
        d1 = int(call_arg(args, kwargs, 2, "dim1", 1)) % ndim
        swap = {d0: d1, d1: d0}
        new = [swap.get(d, d) for d in norm]
    dims = (new[0] - ndim, new[1] - ndim)
    return Field(f.axes, dims, _spatial(out, dims), f.exact, f.notes)


def _cover(pieces: list[tuple[int, int, int]], n: int) -> tuple[Axis, bool]:
    """One affine field ``(start, size, jump)`` covering the union of ``pieces`` for units 0..n-1.

    Exact (second value True) when all pieces share one jump; otherwise the cover uses the largest
    jump and is widened until every unit's true union is inside it.
    """
    jump = max(j for _, _, j in pieces)
    exact = all(j == jump for _, _, j in pieces) or n == 1
    ends = [0, max(n - 1, 0)]
    lo = min(s + i * j - i * jump for s, _, j in pieces for i in ends)
    hi = max(s + size + i * j - i * jump for s, size, j in pieces for i in ends)
    return Axis(lo, hi - lo, jump if n > 1 else pieces[0][2]), exact
