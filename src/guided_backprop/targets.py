"""What is explained: the scalar whose gradient becomes the map.

A target turns the model's output (class targets) or one layer's activation (layer targets)
into a score tensor of shape ``(N, K)``: K scores per sample, each explained by its own
backward pass. Samples never mix: each map is the gradient of that sample's own score.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Union

import torch
import torch.nn.functional as F

from .errors import GuidedBackpropError, TargetError

__all__ = [
    "TopK",
    "Score",
    "Region",
    "Box",
    "Similarity",
    "Output",
    "Channel",
    "Neuron",
    "MaxNeuron",
    "LayerTarget",
    "Target",
    "resolve_classes",
    "layer_scores",
    "parse_class_target",
    "parse_neuron",
    "parse_target",
    "output_kind",
    "OUTPUT_KINDS",
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
Target = Any  # None, int, N ints, an (N, K) tensor, TopK, a layer or output target, a callable, or a list of them


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
            f"this one returned shape {tuple(logits.shape)}. Explain it with an output target (gbp.Output(i) "
            f"for a raw output, gbp.Region / gbp.Box / gbp.Similarity / gbp.Score(fn)) or a layer target "
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


# ------------------------------------------------------------------------ targets on any output
#
# A target below is a function of the model's output (a tensor, a dict, a tuple, a list of dicts)
# that gives one score per sample. The engine calls ``evaluate(output, context)`` after the one
# forward pass; each returns a :class:`Scored`. ``freeze`` gives the same target with the choices
# made on this output fixed (the region's pixels, the matched box), so that SmoothGrad's noisy
# copies explain the very score the clean input did.


@dataclass
class Context:
    """What an output target may need besides the output: the batch size, the input's spatial size,
    the recorded layer outputs and the model's class names."""

    n: int
    input_size: tuple[int, ...]
    layers: dict[str, Any]
    labels: Sequence[str] | None = None


@dataclass
class Scored:
    """The scores ``(N,)`` of one target; ``found[i]`` is False where sample ``i`` has nothing to
    explain (no matching detection): its score is a constant 0 and it gets no map. ``details`` are
    JSON-ready facts about what was explained, one dict per sample."""

    scores: torch.Tensor
    found: torch.Tensor
    details: list[dict[str, Any]]
    frozen: Any = None  # the target with this output's choices fixed (SmoothGrad), or None: itself


def _class_index(cls: int | str, labels: Sequence[str] | None, num_classes: int | None, what: str) -> int:
    """A class given by index or by name, checked against ``labels`` and the number of classes."""
    if isinstance(cls, str):
        if not labels:
            raise TargetError(f"{what}: the class name {cls!r} needs the model's class names; pass labels=[...] "
                              f"or give the class index", field="target")
        if cls not in labels:
            from .errors import UnknownNameError

            folded = [lab.casefold() for lab in labels]
            if cls.casefold() in folded:
                return folded.index(cls.casefold())
            raise UnknownNameError("class", cls, labels, hint=f"{what}: a class of this model", field="target")
        return list(labels).index(cls)
    if isinstance(cls, bool) or not isinstance(cls, int):
        raise TargetError(f"{what}: a class is an int or a class name, got {cls!r}", field="target")
    if num_classes is not None and not 0 <= cls < num_classes:
        raise TargetError(f"{what}: class {cls} is out of range for an output with {num_classes} classes "
                          f"(valid: 0..{num_classes - 1})", field="target")
    return cls


def _shape(value: Any) -> str:
    if isinstance(value, torch.Tensor):
        return str(tuple(value.shape))
    if isinstance(value, (list, tuple)):
        return f"{type(value).__name__} of {len(value)}"
    return type(value).__name__


def _batch_tensor(out: Any, n: int, what: str) -> torch.Tensor:
    """``out`` as a tensor whose first dimension is the batch ``n``: otherwise one error naming the shapes."""
    if not isinstance(out, torch.Tensor):
        keys = f" with keys {list(out)}" if isinstance(out, dict) else ""
        raise TargetError(f"{what} needs a tensor output; the model returned {_shape(out)}{keys}: choose one "
                          f"with output=KEY or output=INDEX", field="output_key")
    if out.ndim == 0 or out.shape[0] != n:
        raise TargetError(f"the model's output has shape {tuple(out.shape)} for an input batch of {n}: its first "
                          f"dimension must be the batch ({n}), so that samples never mix", field="output_key")
    return out


def select_output(output: Any, key: str | int | Callable[[Any], Any] | None) -> Any:
    """The part of a model's output that targets read: ``output[key]`` for a key or an index, ``key(output)``
    for a callable, an attribute for an object (``.logits``); ``None``: the output itself."""
    if key is None:
        return output
    if callable(key):
        return key(output)
    try:
        if isinstance(output, dict) or (isinstance(key, int) and isinstance(output, (tuple, list))):
            return output[key]  # type: ignore[index]
        if isinstance(key, str) and hasattr(output, key):
            return getattr(output, key)
    except (KeyError, IndexError):
        pass
    valid = list(output) if isinstance(output, dict) else (
        f"0..{len(output) - 1}" if isinstance(output, (tuple, list)) else "none")
    raise TargetError(f"output={key!r}: the model's output ({_shape(output)}) has no such entry (valid: {valid})",
                      field="output_key")


@dataclass(frozen=True)
class Score:
    """Any function of the model's output giving one score per sample: ``fn(output) -> (N,)``.

    ``output`` is what the model returns (after ``output=`` selection). The map is the gradient of
    that score under the method's rule. A plain callable given as a target is a ``Score``.
    """

    fn: Callable[[Any], torch.Tensor]
    name: str | None = None

    @property
    def title(self) -> str:
        return self.name or str(getattr(self.fn, "__name__", "score"))

    def evaluate(self, output: Any, ctx: Context) -> Scored:
        try:
            s = self.fn(output)
        except GuidedBackpropError:
            raise
        except Exception as err:  # the user's function failed: say which target and why
            raise TargetError(f"Score {self.title!r} failed on the model's output ({_shape(output)}): "
                              f"{type(err).__name__}: {err}", field="target") from err
        if not isinstance(s, torch.Tensor) or tuple(s.shape) != (ctx.n,):
            raise TargetError(f"Score {self.title!r} returned {_shape(s)}; it must return one score per sample, "
                              f"a tensor of shape ({ctx.n},)", field="target")
        return Scored(s, torch.ones(ctx.n, dtype=torch.bool), [{} for _ in range(ctx.n)])


@dataclass(frozen=True)
class Output:
    """One entry of a raw output vector (regression, multi-label...): ``output[:, index]``, never
    softmaxed. ``index=None`` takes an ``(N,)`` output as it is."""

    index: int | tuple[int, ...] | None = None

    @property
    def title(self) -> str:
        return "output" if self.index is None else f"output {self.index}"

    def evaluate(self, output: Any, ctx: Context) -> Scored:
        out = _batch_tensor(output, ctx.n, f"Output({self.index})")
        if self.index is None:
            if out.ndim != 1:
                raise TargetError(f"Output() takes an (N,) output; this one is {tuple(out.shape)}: give an index",
                                  field="target")
            s = out
        else:
            idx = (self.index,) if isinstance(self.index, int) else tuple(self.index)
            rest = tuple(out.shape[1:])
            if len(idx) != len(rest) or any(not 0 <= i < d for i, d in zip(idx, rest)):
                raise TargetError(f"Output({self.index}) is outside the output's entries {rest} "
                                  f"(shape {tuple(out.shape)})", field="target")
            s = out[(slice(None), *idx)]  # type: ignore[index]
        return Scored(s, torch.ones(ctx.n, dtype=torch.bool), [{"output": self.index} for _ in range(ctx.n)])


def _segmentation_logits(output: Any, n: int) -> torch.Tensor:
    if isinstance(output, dict) and "out" in output:
        output = output["out"]  # torchvision's segmenters: {"out", "aux"}
    out = _batch_tensor(output, n, "Region")
    if out.ndim != 4:
        raise TargetError(f"Region needs a segmentation output (N, classes, H, W); the model returned "
                          f"{tuple(out.shape)}", field="target")
    return out


@dataclass(frozen=True)
class Region:
    """Semantic segmentation: the sum of class ``cls``'s logits over ``mask``.

    ``mask`` is ``(H, W)`` or ``(N, H, W)``, bool or float, at the output's or the input's resolution;
    default: the pixels predicted as ``cls``. Takes ``(N, C, H, W)`` outputs and torchvision's
    ``{"out", "aux"}`` (``"out"`` is used). An empty region gives an all-zero map.
    """

    cls: int | str
    mask: Any = None

    @property
    def title(self) -> str:
        return f"region {self.cls}"

    def _mask(self, out: torch.Tensor, ctx: Context, cls: int) -> torch.Tensor:
        n, _c, h, w = out.shape
        if self.mask is None:
            return (out.detach().argmax(dim=1) == cls).to(out.dtype)
        m = torch.as_tensor(self.mask, device=out.device)
        m = m.to(out.dtype)
        if m.ndim == 2:
            m = m.unsqueeze(0).expand(n, *m.shape)
        if m.ndim != 3 or m.shape[0] != n:
            raise TargetError(f"Region mask has shape {tuple(m.shape)}; give (H, W) or ({n}, H, W) for a batch "
                              f"of {n}", field="mask")
        size = tuple(m.shape[1:])
        if size == (h, w):
            return m
        if size == tuple(ctx.input_size[-2:]):
            return F.interpolate(m.unsqueeze(1), size=(h, w), mode="nearest").squeeze(1)
        raise TargetError(f"Region mask is {size[0]}x{size[1]}; it must be the output's size {h}x{w} or the "
                          f"input's {ctx.input_size[-2]}x{ctx.input_size[-1]}", field="mask")

    def evaluate(self, output: Any, ctx: Context) -> Scored:
        out = _segmentation_logits(output, ctx.n)
        cls = _class_index(self.cls, ctx.labels, out.shape[1], f"Region({self.cls!r})")
        mask = self._mask(out, ctx, cls)
        scores = (out[:, cls] * mask).sum(dim=(1, 2))
        pixels = mask.detach().sum(dim=(1, 2)).tolist()
        details = [{"class": cls, "pixels": float(p)} for p in pixels]
        return Scored(scores, torch.ones(ctx.n, dtype=torch.bool), details, frozen=Region(cls, mask.detach()))


def box_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """IoU ``(len(a),)`` of boxes ``a`` ``(M, 4)`` with one box ``b`` ``(4,)``, all ``x0, y0, x1, y1``."""
    lt = torch.maximum(a[:, :2], b[:2])
    rb = torch.minimum(a[:, 2:], b[2:])
    inter = (rb - lt).clamp(min=0).prod(dim=1)
    area_a = (a[:, 2:] - a[:, :2]).clamp(min=0).prod(dim=1)
    area_b = (b[2:] - b[:2]).clamp(min=0).prod()
    return inter / (area_a + area_b - inter).clamp(min=1e-12)


def _detections(output: Any, n: int) -> list[dict[str, torch.Tensor]]:
    if (not isinstance(output, (list, tuple)) or not all(isinstance(d, dict) for d in output)
            or not all({"boxes", "labels", "scores"} <= set(d) for d in output)):
        if isinstance(output, dict) and any("loss" in str(k) for k in output):
            raise TargetError("the detector returned losses: it is in training mode; explain it in eval mode "
                              "(eval_mode=True, the default)", field="model")
        raise TargetError(f"Box needs a detector's output, a list of dicts with boxes, labels and scores "
                          f"(torchvision's detectors); the model returned {_shape(output)}", field="target")
    if len(output) != n:
        raise TargetError(f"the detector returned {len(output)} results for an input batch of {n}: one per "
                          f"image is needed, so that samples never mix", field="output_key")
    return list(output)


@dataclass(frozen=True)
class Box:
    """Detection: the score of one detection of torchvision's detectors (a list of dicts with
    ``boxes``, ``labels``, ``scores``).

    With ``box`` (``x0, y0, x1, y1`` in input pixels, or one row per sample): the detection that best
    overlaps it (IoU >= ``iou``), of class ``label`` if given. Otherwise the ``rank``-th most confident
    detection (default 0) of class ``label`` if given, among those scoring at least ``min_score`` if given.
    An image without such a detection gets no map (``Explanation.found`` is False), never a zero map.
    """

    box: Any = None
    label: int | str | Sequence[int] | None = None
    iou: float = 0.5
    rank: int | None = None
    min_score: float | None = None

    @property
    def title(self) -> str:
        if self.box is not None and torch.as_tensor(self.box).ndim == 1:
            where = "box " + ",".join(f"{float(v):g}" for v in torch.as_tensor(self.box).tolist())
        elif self.box is not None:
            where = "box"
        else:
            where = f"detection {self.rank or 0}"
        return where if self.label is None or not isinstance(self.label, (int, str)) else f"{where} ({self.label})"

    def _labels(self, ctx: Context, n: int) -> list[int | None]:
        if self.label is None:
            return [None] * n
        if isinstance(self.label, (int, str)):
            return [_class_index(self.label, ctx.labels, None, f"Box(label={self.label!r})")] * n
        given = [int(v) for v in self.label]
        if len(given) != n:
            raise TargetError(f"Box got {len(given)} labels for a batch of {n}", field="target")
        return list(given)

    def _boxes(self, n: int) -> torch.Tensor | None:
        if self.box is None:
            return None
        b = torch.as_tensor(self.box, dtype=torch.float64)
        if b.ndim == 1:
            b = b.unsqueeze(0).expand(n, 4) if b.shape == (4,) else b
        if b.shape != (n, 4):
            raise TargetError(f"Box(box=...) has shape {tuple(b.shape)}; give 4 numbers x0, y0, x1, y1 "
                              f"(or ({n}, 4), one box per sample)", field="target")
        return b

    def evaluate(self, output: Any, ctx: Context) -> Scored:
        dets = _detections(output, ctx.n)
        labels, boxes = self._labels(ctx, ctx.n), self._boxes(ctx.n)
        rank = int(self.rank or 0)
        scores: list[torch.Tensor] = []
        found: list[bool] = []
        details: list[dict[str, Any]] = []
        chosen_boxes: list[torch.Tensor] = []
        chosen_labels: list[int] = []
        for i, det in enumerate(dets):
            s = det["scores"]
            keep = torch.ones_like(s, dtype=torch.bool) if self.min_score is None else s.detach() >= self.min_score
            if labels[i] is not None:
                keep &= det["labels"] == labels[i]
            idx = keep.nonzero().flatten()
            pick: int | None = None
            if boxes is not None:
                ious = box_iou(det["boxes"].detach()[idx].double(), boxes[i].to(det["boxes"].device))
                ok = ious >= self.iou
                if ok.any():
                    pick = int(idx[ok][ious[ok].argmax()])
            elif rank < len(idx):
                pick = int(idx[s.detach()[idx].argsort(descending=True, stable=True)[rank]])
            if pick is None:
                scores.append(s.sum() * 0 if s.numel() else s.new_zeros(()))
                found.append(False)
                details.append({"box": None, "label": labels[i], "reason": self._why_none(len(idx), boxes, rank)})
                chosen_boxes.append(torch.full((4,), float("nan"), dtype=torch.float64))
                chosen_labels.append(-1)
                continue
            scores.append(s[pick])
            found.append(True)
            box = det["boxes"][pick].detach()
            details.append({"box": [round(float(v), 2) for v in box.tolist()], "label": int(det["labels"][pick]),
                            "detection_score": float(s.detach()[pick])})
            chosen_boxes.append(box.double().cpu())
            chosen_labels.append(int(det["labels"][pick]))
        frozen = Box(box=torch.stack(chosen_boxes), label=chosen_labels, iou=0.5 if boxes is None else self.iou)
        return Scored(torch.stack(scores), torch.tensor(found), details, frozen=frozen)

    def _why_none(self, candidates: int, boxes: torch.Tensor | None, rank: int) -> str:
        which = f" of class {self.label}" if isinstance(self.label, (int, str)) else ""
        above = "" if self.min_score is None else f" scoring at least {self.min_score:g}"
        if boxes is not None:
            return f"no detection{which}{above} overlaps the box with IoU >= {self.iou}"
        if not candidates:
            return f"no detection{which}{above}"
        return f"only {candidates} detection(s){which}{above}; rank {rank} asked (from 0)"


@dataclass(frozen=True)
class Similarity:
    """The cosine similarity of the output (or of ``layer``'s output) to a reference embedding.

    ``reference`` is an embedding (``(D,)``, ``(1, D)`` or one per sample ``(N, D)``; any shape that
    flattens to D), or an input shaped like one sample or a batch of one, which the engine runs through
    the same model (and ``output=`` / ``layer``) to get its embedding.
    """

    reference: Any
    layer: str | None = None
    is_input: bool | None = None  # None: an input when shaped like one sample (or a batch of one)

    @property
    def title(self) -> str:
        return "similarity" if self.layer is None else f"similarity at {self.layer}"

    def evaluate(self, output: Any, ctx: Context) -> Scored:
        if self.layer is not None:
            output = ctx.layers.get(self.layer)
        emb = _batch_tensor(output, ctx.n, self.title).reshape(ctx.n, -1)
        ref = torch.as_tensor(self.reference).to(device=emb.device, dtype=emb.dtype)
        ref = ref.reshape(ctx.n if ref.ndim > 1 and ref.shape[0] == ctx.n and ctx.n > 1 else 1, -1)
        if ref.shape[1] != emb.shape[1]:
            raise TargetError(f"Similarity: the reference embedding has {ref.shape[1]} values, the "
                              f"{'output' if self.layer is None else repr(self.layer)} {emb.shape[1]} per sample",
                              field="target")
        s = F.cosine_similarity(emb, ref, dim=1)
        return Scored(s, torch.ones(ctx.n, dtype=torch.bool), [{"similarity": float(v)} for v in s.detach()])


OutputTarget = Union[Score, Region, Box, Similarity, Output]
OUTPUT_TARGETS = (Score, Region, Box, Similarity, Output)
LAYER_TARGETS = (Channel, Neuron, MaxNeuron)


#: What a model's output is, as :func:`output_kind` recognises it.
OUTPUT_KINDS = ("classifier", "segmenter", "detector", "other")


def output_kind(output: Any) -> str:
    """``"classifier"`` for ``(N, classes)`` logits (or an object with ``.logits``), ``"segmenter"`` for
    ``(N, classes, H, W)`` or torchvision's ``{"out": ...}``, ``"detector"`` for a list of dicts with
    ``boxes``/``labels``/``scores``, else ``"other"`` (explain it with ``output:K`` or a Score)."""
    if isinstance(output, dict) and isinstance(output.get("out"), torch.Tensor):
        output = output["out"]
    if not isinstance(output, torch.Tensor) and isinstance(getattr(output, "logits", None), torch.Tensor):
        output = output.logits
    if isinstance(output, torch.Tensor):
        return {2: "classifier", 4: "segmenter"}.get(output.ndim, "other")
    if isinstance(output, (list, tuple)) and output and all(
            isinstance(d, dict) and {"boxes", "labels", "scores"} <= set(d) for d in output):
        return "detector"
    return "other"


def _numbers(text: str, what: str) -> list[float]:
    try:
        return [float(v) for v in text.split(",")]
    except ValueError:
        raise TargetError(f"target={what!r}: {text!r} is not a list of numbers separated by commas",
                          field="target") from None


def parse_target(spec: Any, *, kind: str = "classifier", mask: Any = None, score_threshold: float = 0.5,
                 read_input: Callable[[str], torch.Tensor] | None = None) -> Any:
    """A target written as text, for a model whose output is of ``kind`` (:func:`output_kind`): the one
    grammar of the command line.

    * any model: ``output:K`` (``gbp.Output(K)``; ``output:1,3,4`` for a multi-dimensional output);
      ``similar:REF.png`` (``gbp.Similarity`` to the embedding of that input, read by ``read_input``);
    * detectors: ``detections:5`` (the 5 most confident detections scoring at least ``score_threshold``,
      one ``gbp.Box`` each; the default is ``detections:1``), ``box:x0,y0,x1,y1[:label]``;
    * segmenters: a class name or index (``person``, ``15``): ``gbp.Region`` of the pixels predicted as it,
      or of ``mask`` when given;
    * classifiers: :func:`parse_class_target` (``top5``, ``285``, ``Egyptian cat``).
    """
    if kind == "segmenter" and isinstance(spec, int) and not isinstance(spec, bool):
        return Region(spec, mask)
    if not isinstance(spec, (str, type(None))) or (kind == "classifier" and mask is None and not (
            isinstance(spec, str) and re.match(r"\s*(output|similar|detections|box):", spec, re.I))):
        return parse_class_target(spec)
    text = "" if spec is None else spec.strip()
    head, sep, rest = text.partition(":")
    head = head.lower() if sep else ""
    if mask is not None and kind != "segmenter":
        raise TargetError(f"a mask selects the pixels of a segmenter's class; this model's output is a {kind}'s",
                          field="mask")
    if head == "output":
        idx = [int(v) for v in _numbers(rest, text)]
        return Output(idx[0] if len(idx) == 1 else tuple(idx))
    if head == "similar":
        if read_input is None:
            raise TargetError(f"target={text!r}: a reference input needs a reader", field="target")
        return Similarity(read_input(rest.strip()), is_input=True)
    if head in ("detections", "box") and kind != "detector":
        raise TargetError(f"target={text!r} explains a detector's boxes; this model's output is a {kind}'s "
                          f"(for a segmenter, name a class)", field="target")
    if head == "detections" or (kind == "detector" and not text):
        count = rest.strip() or "1"
        if not count.isdigit() or int(count) < 1:
            raise TargetError(f"target={text!r}: give detections:K with K >= 1", field="target")
        return [Box(rank=r, min_score=score_threshold) for r in range(int(count))]
    if head == "box":
        coords, _, label = rest.partition(":")
        box = _numbers(coords, text)
        if len(box) != 4 or box[2] <= box[0] or box[3] <= box[1]:
            raise TargetError(f"target={text!r}: a box is x0,y0,x1,y1 (input pixels, x0 < x1, y0 < y1)",
                              field="target")
        lab = label.strip()
        return Box(box=tuple(box), label=(int(lab) if lab.isdigit() else lab) if lab else None)
    if kind == "detector":
        raise TargetError(f"target={text!r}: for a detector give detections:K or box:x0,y0,x1,y1[:label]",
                          field="target")
    if kind == "segmenter":
        if not text or text.lower().startswith("top"):
            raise TargetError("a segmenter's target is a class: --target person (its predicted pixels), or with "
                              "--mask mask.png", field="target")
        return Region(int(text) if text.isdigit() else text, mask)
    raise TargetError(f"target={text!r}: this model's output ({kind}) has no classes; give output:K or a "
                      f"similar:REF.png", field="target")
