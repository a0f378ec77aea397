"""What is explained: the scalar whose gradient becomes the map.

A target turns the model's output (class targets) or one layer's activation (layer targets)
into a score tensor of shape ``(N, K)``: K scores per sample, each explained by its own
backward pass. Samples never mix: each map is the gradient of that sample's own score.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, Union

import torch

from .errors import TargetError

__all__ = [
    "TopK",
    "Channel",
    "Neuron",
    "MaxNeuron",
    "LayerTarget",
    "Target",
    "resolve_classes",
    "layer_scores",
    "parse_class_target",
    "parse_neuron",
]


@dataclass(frozen=True)
class TopK:
    """The ``k`` highest-scoring classes of each sample, best first."""

    k: int = 1

    def __post_init__(self) -> None:
        if int(self.k) < 1:
            raise TargetError(f"TopK needs k >= 1, got k={self.k}")


@dataclass(frozen=True)
class Channel:
    """One channel of a named layer, summed over its spatial positions."""

    layer: str
    channel: int


@dataclass(frozen=True)
class Neuron:
    """One unit ``(channel, y, x)`` of a named layer's ``(N, C, H, W)`` output."""

    layer: str
    channel: int
    y: int
    x: int


@dataclass(frozen=True)
class MaxNeuron:
    """The most activated unit of one channel of a named layer, found per sample."""

    layer: str
    channel: int


LayerTarget = Union[Channel, Neuron, MaxNeuron]
Target = Union[None, int, Sequence[int], torch.Tensor, TopK, Channel, Neuron, MaxNeuron]


def _check_range(idx: torch.Tensor, num_classes: int) -> None:
    if idx.numel() == 0:
        return
    lo, hi = int(idx.min()), int(idx.max())
    if lo < 0 or hi >= num_classes:
        bad = lo if lo < 0 else hi
        raise TargetError(
            f"class index {bad} is out of range for a model with {num_classes} classes "
            f"(valid: 0..{num_classes - 1})"
        )


def resolve_classes(target: Target, logits: torch.Tensor) -> torch.Tensor:
    """Class indices ``(N, K)`` (int64, on ``logits.device``) for a class target.

    ``None`` -> each sample's top-1 class; ``int`` -> that class for every sample;
    a sequence or 1-D tensor of N ints -> one class per sample; a 2-D ``(N, K)`` tensor ->
    K classes per sample; :class:`TopK` -> the k best classes of each sample.
    """
    if logits.ndim != 2:
        raise TargetError(
            f"class targets need a model that returns logits of shape (N, classes); "
            f"this one returned shape {tuple(logits.shape)}. Use a layer target instead "
            f"(Channel / Neuron / MaxNeuron)"
        )
    n, num_classes = logits.shape
    if target is None:
        return logits.argmax(dim=1, keepdim=True)
    if isinstance(target, TopK):
        if target.k > num_classes:
            raise TargetError(f"TopK(k={target.k}) asks for more classes than the model has ({num_classes})")
        return logits.topk(int(target.k), dim=1).indices
    if isinstance(target, bool):
        raise TargetError(f"a class target must be an int, got the bool {target!r}")
    if isinstance(target, int):
        idx = torch.full((n, 1), int(target), dtype=torch.long, device=logits.device)
        _check_range(idx, num_classes)
        return idx
    if isinstance(target, (Channel, Neuron, MaxNeuron)):
        raise TargetError(f"{target!r} is a layer target, not a class target")
    try:
        idx = torch.as_tensor(target, device=logits.device)
    except (TypeError, ValueError, RuntimeError) as err:
        raise TargetError(
            f"cannot read target {target!r}: give None, an int, N ints, an (N, K) tensor or TopK(k)"
        ) from err
    if idx.is_floating_point() or idx.is_complex() or idx.dtype == torch.bool:
        raise TargetError(f"class indices must be integers, got dtype {idx.dtype}")
    idx = idx.long()
    if idx.ndim == 0:
        idx = idx.expand(n).reshape(n, 1)
    elif idx.ndim == 1:
        if idx.shape[0] != n:
            raise TargetError(f"got {idx.shape[0]} class indices for a batch of {n} samples; give one per sample")
        idx = idx.unsqueeze(1)
    elif idx.ndim == 2:
        if idx.shape[0] != n:
            raise TargetError(f"target has shape {tuple(idx.shape)}; expected ({n}, K) for a batch of {n}")
    else:
        raise TargetError(f"target has {idx.ndim} dimensions; expected an int, (N,) or (N, K)")
    _check_range(idx, num_classes)
    return idx.contiguous()


def layer_scores(target: LayerTarget, activation: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Scores ``(N, 1)`` of a layer target, and for :class:`MaxNeuron` the ``(N, 2)`` (y, x) chosen.

    ``activation`` is the layer's output, ``(N, C, ...)``.
    """
    if activation.ndim < 2:
        raise TargetError(f"layer {target.layer!r} outputs shape {tuple(activation.shape)}; "
                          f"a layer target needs (N, C, ...)")
    channels = activation.shape[1]
    if not 0 <= target.channel < channels:
        raise TargetError(
            f"channel {target.channel} is out of range for layer {target.layer!r} with {channels} channels "
            f"(valid: 0..{channels - 1})"
        )
    act = activation[:, target.channel]  # (N, ...)
    n = act.shape[0]
    if isinstance(target, Channel):
        return act.reshape(n, -1).sum(dim=1, keepdim=True), None
    if activation.ndim != 4:
        raise TargetError(
            f"{type(target).__name__} needs a layer with (N, C, H, W) output; {target.layer!r} outputs "
            f"{tuple(activation.shape)}"
        )
    h, w = act.shape[1:]
    if isinstance(target, Neuron):
        if not (0 <= target.y < h and 0 <= target.x < w):
            raise TargetError(
                f"neuron (y={target.y}, x={target.x}) is outside layer {target.layer!r}'s {h}x{w} map "
                f"(valid: y 0..{h - 1}, x 0..{w - 1})"
            )
        pos = torch.tensor([[target.y, target.x]], device=act.device).expand(n, 2)
        return act[:, target.y, target.x].unsqueeze(1), pos
    flat = act.reshape(n, -1)
    best = flat.detach().argmax(dim=1)
    pos = torch.stack([best // w, best % w], dim=1)
    return flat.gather(1, best.unsqueeze(1)), pos


# ------------------------------------------------------------------------------------ text forms


def parse_class_target(spec: str | int | TopK | None) -> int | TopK | str | None:
    """A class target written as text, the one grammar for it: ``None``/``"top1"`` -> ``None`` (each
    sample's predicted class; so is ``""``), ``"top<k>"`` -> :class:`TopK`, ``"12"`` -> ``12``, anything else -> the
    text, a class name for the model's labels to look up. Typed values pass through."""
    if spec is None or isinstance(spec, TopK) or (isinstance(spec, int) and not isinstance(spec, bool)):
        return spec
    text = str(spec).strip()
    m = re.fullmatch(r"top-?(\d*)", text.lower())
    if m:
        k = int(m.group(1) or 1)
        if k < 1:
            raise TargetError(f"target={spec!r}: k of top<k> must be 1 or more", field="target")
        return None if k == 1 else TopK(k)
    if re.fullmatch(r"\d+", text):
        return int(text)
    return text or None


def parse_neuron(spec: str | tuple[int, int] | None) -> Literal["max"] | tuple[int, int] | None:
    """Which unit of a layer target's channel, written as text: ``None``/``"all"``/``"sum"`` -> ``None``
    (the channel summed), ``"max"`` (its most active unit, per sample), ``"Y,X"`` -> ``(y, x)``."""
    if spec is None:
        return None
    if isinstance(spec, tuple):
        y, x = (int(v) for v in spec)
        return y, x
    text = str(spec).strip().lower()
    if text in ("", "all", "sum"):
        return None
    if text == "max":
        return "max"
    m = re.fullmatch(r"(\d+)\s*,\s*(\d+)", text)
    if not m:
        raise TargetError(f"neuron={spec!r}: give 'max' or 'Y,X' (a unit's row and column, from 0)",
                          field="neuron")
    return int(m.group(1)), int(m.group(2))
