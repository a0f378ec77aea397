"""attribute() and Explainer: one forward pass, one backward pass per (method, target).

Gradient methods (all exact on any ReLU network, see :mod:`.rules`; the registry is :mod:`.methods`):

* ``saliency`` -- the plain input gradient (Simonyan et al. 2013, arXiv:1312.6034);
* ``deconvnet`` -- Zeiler & Fergus 2013 (arXiv:1311.2901);
* ``guided_backprop`` -- Springenberg et al. 2014 (arXiv:1412.6806);
* ``gradcam`` -- Selvaraju et al. 2017 (arXiv:1610.02391): ``relu(sum_c mean_hw(dS/dA_c) * A_c)``
  at a layer ``A``, upsampled bilinearly to the input size, one channel;
* ``guided_gradcam`` -- the guided-backprop map times the *same target's* Grad-CAM.

SmoothGrad (Smilkov et al. 2017, arXiv:1706.03825), :class:`SmoothGrad`, wraps an :class:`Explainer`
and averages any of them over noisy copies.

An explanation runs in four steps, each a function of its own: :class:`Capture` records what the
forward pass produces (the explained layer, the Grad-CAM layer), :func:`score_targets` turns the output
into the explained scores, :func:`backward_plan` lists the backward passes the methods need,
:func:`assemble_maps` builds each method's map from their gradients.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .errors import GuidedBackpropError, InputError, ModelError, NoReLUError, TargetError, UnknownNameError
from .hooks import StopForward, exact_cuda_math, find_layer, forward_hooks, layer_output, logits_of, model_state
from .methods import METHODS, REGISTRY, get_method, parse_methods
from .rules import ReLURouting, Rule, RuleState
from .targets import (
    LAYER_TARGETS,
    OUTPUT_TARGETS,
    Box,
    Channel,
    Context,
    LayerTarget,
    MaxNeuron,
    Neuron,
    Region,
    Score,
    Similarity,
    Target,
    TopK,
    layer_scores,
    resolve_classes,
    select_output,
)

__all__ = ["Explanation", "Explainer", "Recorded", "SmoothGrad", "attribute", "find_layer", "layer_output",
           "model_state", "smoothgrad_seed"]


def smoothgrad_seed(seed: int, sample: int) -> int:
    """The SmoothGrad noise seed of one sample: ``sample`` is its id (e.g. its index in a folder).

    Seeding each sample on its own makes its map independent of how samples were batched, so the
    batch job and :meth:`Explainer.explain` compute the same maps.
    """
    return (int(seed) * 1_000_003 + int(sample)) % (2**63)


@dataclass
class Explanation:
    """The result of :meth:`Explainer.explain`.

    ``maps[method]`` has shape ``(N, K, *x.shape[1:])`` (``gradcam``: ``(N, K, 1, H, W)``), detached,
    on the input's device and dtype. ``targets`` are the class indices ``(N, K)`` (``None`` unless every
    target is a class), ``scores`` the explained values ``(N, K)`` (logits, layer activations, or the raw
    scores of output targets: never probabilities; :attr:`value_kind` says which :attr:`values` are).
    ``titles`` name the K targets; ``details[i][k]`` are JSON-ready facts about what was explained
    (a box and its label and score, a region's class and pixel count, a similarity); ``found[i, k]`` is
    False where sample ``i`` had nothing to explain for target ``k`` (no matching detection): its maps
    are NaN, never a zero map.
    """

    maps: dict[str, torch.Tensor]
    scores: torch.Tensor
    targets: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    positions: torch.Tensor | None = None  # (N, 2) (y, x) of Neuron / MaxNeuron targets
    gradcam_layer: str | None = None
    relu_calls: int = 0  # ReLU applications routed through the rules in the forward pass
    extra: dict[str, Any] = field(default_factory=dict)
    titles: list[str] = field(default_factory=list)
    details: list[list[dict[str, Any]]] = field(default_factory=list)
    found: torch.Tensor | None = None  # (N, K) bool; None: every target found
    #: target k -> ``(N, h, w)`` bool: the pixels a :class:`Region` target sums over (the output's resolution)
    regions: dict[int, torch.Tensor] = field(default_factory=dict)

    def __getitem__(self, method: str) -> torch.Tensor:
        key = get_method(method).name
        if key not in self.maps:
            raise UnknownNameError("method", method, list(self.maps), hint="not computed in this explanation")
        return self.maps[key]

    def __len__(self) -> int:
        return int(self.scores.shape[0])

    @property
    def probabilities(self) -> torch.Tensor | None:
        """Softmax probabilities ``(N, K)`` of the explained classes (class targets only)."""
        if self.logits is None or self.targets is None:
            return None
        logits = self.logits.to(torch.promote_types(self.logits.dtype, torch.float32))  # half -> float
        return logits.softmax(dim=1).gather(1, self.targets)

    @property
    def value_kind(self) -> str:
        """``"probability"`` where the targets are classes of class logits, else ``"score"`` (raw)."""
        return "probability" if self.logits is not None and self.targets is not None else "score"

    @property
    def values(self) -> torch.Tensor:
        """``(N, K)``: the probabilities of class targets, otherwise the raw explained scores."""
        probs = self.probabilities
        return self.scores if probs is None else probs

    def zero_maps(self, method: str) -> torch.Tensor:
        """``(N, K)`` bool: where ``method``'s map is all zeros (an empty region, every ReLU gated off)."""
        m = self[method]
        return (m.reshape(m.shape[0], m.shape[1], -1) == 0).all(dim=2)

    @classmethod
    def concat(cls, parts: Sequence[Explanation]) -> Explanation:
        """The explanations of consecutive batches as one, samples in order (same methods and K)."""
        if not parts:
            raise ValueError("Explanation.concat needs at least one explanation")
        first = parts[0]
        if len(parts) == 1:
            return first
        if any(set(p.maps) != set(first.maps) for p in parts):
            raise ValueError("Explanation.concat: the explanations hold different methods")

        def cat(values: list[torch.Tensor | None]) -> torch.Tensor | None:
            return None if any(v is None for v in values) else torch.cat(values)  # type: ignore[arg-type]

        return cls(
            maps={m: torch.cat([p.maps[m] for p in parts]) for m in first.maps},
            scores=torch.cat([p.scores for p in parts]),
            targets=cat([p.targets for p in parts]),
            logits=cat([p.logits for p in parts]),
            positions=cat([p.positions for p in parts]),
            gradcam_layer=first.gradcam_layer,
            relu_calls=first.relu_calls,
            extra=dict(first.extra),
            titles=list(first.titles),
            details=[row for p in parts for row in p.details],
            found=None if all(p.found is None for p in parts) else torch.cat(
                [p.found if p.found is not None else torch.ones(p.scores.shape, dtype=torch.bool) for p in parts]),
            regions={k: torch.cat([p.regions[k] for p in parts]) for k in first.regions
                     if all(k in p.regions and p.regions[k].shape[1:] == first.regions[k].shape[1:] for p in parts)},
        )


# --------------------------------------------------------------------------------------------- steps


class Capture:
    """Forward hooks that record the explained layer's output and the Grad-CAM layer's.

    A layer target stops the forward at its layer (nothing after it is needed). Without a named
    Grad-CAM layer, every spatial ``(N, C, h, w)`` output is a candidate and the last one is used.
    """

    def __init__(self, model: nn.Module, layer_target: LayerTarget | None, cam_layer: str | None,
                 want_cam: bool, n: int, keep: Sequence[str] = ()) -> None:
        self.model = model
        self.layer_target = layer_target
        self.cam_layer = cam_layer
        self.want_cam = want_cam
        self.n = n  # the input's batch size: Grad-CAM candidates must have it
        self.keep = list(dict.fromkeys(keep))  # layers whose outputs output targets read
        self.kept: dict[str, Any] = {}
        self.target: Any = None
        self.cam: Any = None
        self.candidates: list[tuple[str, torch.Tensor]] = []

    def hooks(self) -> list[tuple[nn.Module, Any]]:
        hooks: list[tuple[nn.Module, Any]] = [(find_layer(self.model, name, field="layer"), self._keeper(name))
                                              for name in self.keep]
        if self.layer_target is not None:
            hooks.append((find_layer(self.model, self.layer_target.layer), self._stop))
        if self.want_cam and self.cam_layer is not None:
            hooks.append((find_layer(self.model, self.cam_layer), self._keep_cam))
        elif self.want_cam:
            hooks.extend((m, self._candidate(n)) for n, m in self.model.named_modules() if n)
        return hooks

    def _stop(self, _m: nn.Module, _i: Any, out: Any) -> None:
        self.target = out
        raise StopForward

    def _keep_cam(self, _m: nn.Module, _i: Any, out: Any) -> Any:
        if isinstance(out, torch.Tensor):
            # Keep the layer's own output: later in-place ops then act on the clone.
            self.cam = out
            return out.clone()
        self.cam = out
        return None

    def _keeper(self, name: str) -> Any:
        def hook(_m: nn.Module, _i: Any, out: Any) -> None:
            self.kept[name] = out
        return hook

    def _candidate(self, name: str) -> Any:
        def hook(module: nn.Module, _i: Any, out: Any) -> None:
            # Adaptive pools only resample the last feature map (VGG's avgpool): skip them. A batch
            # dimension other than the input's (a detector's 150 box proposals) is not a map of the input.
            if _is_spatial(out) and out.shape[0] == self.n and out.requires_grad and not isinstance(
                    module, (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)):
                self.candidates.append((name, out))
        return hook

    def gradcam_activation(self, scores: torch.Tensor | None = None) -> tuple[str | None, torch.Tensor | None]:
        """The Grad-CAM layer's name and output, checked (after the forward). By default the last spatial
        layer with the input's batch dimension that ``scores`` depend on (a detector's RPN head, whose
        outputs torchvision detaches, is skipped)."""
        if not self.want_cam:
            return None, None
        if self.cam_layer is None:
            last = _last_reachable(scores, [t for _n, t in self.candidates]) if scores is not None else (
                len(self.candidates) - 1)
            if last < 0:
                raise TargetError(f"Grad-CAM found no layer with a spatial ({self.n}, C, h, w) output that the "
                                  f"explained score depends on; name one with gradcam_layer", field="gradcam_layer")
            return self.candidates[last]
        if self.cam is None:
            raise TargetError(f"Grad-CAM layer {self.cam_layer!r} was not called during the forward pass",
                              field="gradcam_layer")
        if not isinstance(self.cam, torch.Tensor) or self.cam.ndim != 4:
            shape = tuple(self.cam.shape) if isinstance(self.cam, torch.Tensor) else type(self.cam).__name__
            raise TargetError(
                f"Grad-CAM layer {self.cam_layer!r} outputs {shape}, not a spatial (N, C, h, w) feature map; "
                f"choose a convolutional layer{_spatial_hint(self.model, self.cam_layer)}", field="gradcam_layer")
        if self.cam.shape[0] != self.n:
            raise TargetError(
                f"Grad-CAM layer {self.cam_layer!r} outputs {tuple(self.cam.shape)}: its batch dimension is "
                f"{self.cam.shape[0]}, not the input's {self.n} (e.g. one row per box proposal), so its map is not "
                f"one per input; choose a layer before it{_spatial_hint(self.model, self.cam_layer)}",
                field="gradcam_layer")
        return self.cam_layer, self.cam

    def layer_activation(self) -> torch.Tensor:
        """The explained layer's output, checked (after the forward)."""
        assert self.layer_target is not None
        name = self.layer_target.layer
        if self.target is None:
            raise TargetError(f"layer {name!r} was not called during the forward pass", field="layer")
        if not isinstance(self.target, torch.Tensor):
            raise TargetError(f"layer {name!r} returns {type(self.target).__name__}, not a tensor", field="layer")
        return self.target


def _last_reachable(scores: torch.Tensor, tensors: Sequence[torch.Tensor]) -> int:
    """The index of the last of ``tensors`` that ``scores`` depend on through autograd (-1: none).

    A walk of the backward graph from ``scores``; it stops as soon as the last tensor is found (a
    classifier's last feature map is a few nodes from its logits)."""
    nodes = {t.grad_fn: i for i, t in enumerate(tensors) if t.grad_fn is not None}
    if not nodes or scores.grad_fn is None:
        return -1
    best, last = -1, len(tensors) - 1
    seen = {scores.grad_fn}
    todo = [scores.grad_fn]
    while todo:
        node = todo.pop()
        i = nodes.get(node)
        if i is not None and i > best:
            best = i
            if best == last:
                break
        for nxt, _ in node.next_functions:
            if nxt is not None and nxt not in seen:
                seen.add(nxt)
                todo.append(nxt)
    return best


def _is_spatial(out: Any) -> bool:
    return isinstance(out, torch.Tensor) and out.ndim == 4 and out.shape[-1] * out.shape[-2] > 1


def _spatial_hint(model: nn.Module, skip: str) -> str:
    """", e.g. 'a', 'b'": the last spatial layers, named by name (the error path only)."""
    names = [n for n, m in model.named_modules() if n and isinstance(m, (nn.Conv2d, nn.BatchNorm2d))][-3:]
    names = [n for n in names if n != skip]
    return ", e.g. " + ", ".join(repr(n) for n in reversed(names)) if names else ""


def score_targets(
    out: Any, target: Target, layer_target: LayerTarget | None, positions: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None, torch.Tensor | None]:
    """(scores (N, K), class indices or None, logits or None, unit positions or None)."""
    if layer_target is None:
        classes = resolve_classes(target, out)
        return out.gather(1, classes), classes, out, None
    if positions is not None:  # SmoothGrad: positions fixed on the clean input
        act = out[:, layer_target.channel]
        rows = torch.arange(act.shape[0], device=act.device)
        return act[rows, positions[:, 0], positions[:, 1]][:, None], None, None, positions
    scores, positions = layer_scores(layer_target, out)
    return scores, None, None, positions


@dataclass(frozen=True)
class _How:
    """How one call reads the output: ``output=`` selection and the model's class names."""

    output: Any
    labels: Sequence[str] | None


@dataclass
class _Column:
    """The scores ``(N, k)`` of one item of a target list, with what they explain."""

    scores: torch.Tensor
    found: torch.Tensor
    titles: list[str]
    details: list[list[dict[str, Any]]]
    classes: torch.Tensor | None = None
    positions: torch.Tensor | None = None
    frozen: Any = None


def _target_list(target: Target) -> list[Any] | None:
    """The targets of a call as a list, or ``None`` for a class or layer target alone (the fast path).

    An output target or a callable, alone or in a list, and any list holding one of them or a layer
    target, is a list of targets (its ints are classes for every sample); a list of ints alone stays
    one class per sample, as before."""
    def single(t: Any) -> bool:
        return isinstance(t, OUTPUT_TARGETS) or (callable(t) and not isinstance(t, (torch.Tensor, type)))

    if single(target):
        return [target]
    if isinstance(target, (list, tuple)) and any(single(t) or isinstance(t, LAYER_TARGETS) for t in target):
        return list(target)
    return None


def class_logits(out: Any, n: int) -> torch.Tensor:
    """The class logits of a (selected) output, whose first dimension must be the batch."""
    if isinstance(out, dict) and not hasattr(out, "logits"):
        raise ModelError(f"the model returned a dict with keys {list(out)}, not a logits tensor; choose the logits "
                         f"with output=KEY, or explain the output with gbp.Region / gbp.Box / gbp.Score(fn)",
                         field="output_key")
    logits = logits_of(out)
    if logits.ndim == 0 or logits.shape[0] != n:
        raise ModelError(f"the model returned shape {tuple(logits.shape)} for an input batch of {n}: the first "
                         f"dimension must be the batch ({n}), so that samples never mix", field="output_key")
    return logits


def _evaluate(t: Any, output: Any, ctx: Context) -> _Column:
    """One item of a target list scored on the output (or a recorded layer), checked."""
    n = ctx.n
    if isinstance(t, (int, TopK)) and not isinstance(t, bool) or isinstance(t, _Classes):
        logits = class_logits(output, n)
        idx = t.index if isinstance(t, _Classes) else resolve_classes(t, logits)
        titles = ["class"] * idx.shape[1] if isinstance(t, TopK) else [f"class {int(idx[0, j])}" for j in
                                                                       range(idx.shape[1])]
        details: list[list[dict[str, Any]]] = [[{"class": int(c)} for c in row] for row in idx.tolist()]
        ones = torch.ones(idx.shape, dtype=torch.bool)
        return _Column(logits.gather(1, idx), ones, titles, details, classes=idx, frozen=_Classes(idx))
    if isinstance(t, LAYER_TARGETS):
        act = ctx.layers.get(t.layer)
        if not isinstance(act, torch.Tensor):
            raise TargetError(f"layer {t.layer!r} {'was not called' if act is None else 'returns no tensor'} "
                              f"during the forward pass", field="layer")
        scores, pos = layer_scores(t, act)
        facts: list[list[dict[str, Any]]] = [[{"layer": t.layer, "channel": t.channel}] for _ in range(n)]
        return _Column(scores, torch.ones(n, 1, dtype=torch.bool), [f"{t.layer} channel {t.channel}"], facts,
                       positions=pos, frozen=t)
    if not isinstance(t, OUTPUT_TARGETS):
        if not callable(t):
            raise TargetError(f"cannot read target {t!r} in a list of targets: give ints (classes), TopK, layer "
                              f"targets, gbp.Score / Region / Box / Similarity / Output, or callables", field="target")
        t = Score(t)
    got = t.evaluate(output, ctx)
    s, found = got.scores, got.found.to(got.scores.device)
    if s.shape != (n,):
        raise TargetError(f"{t.title}: got scores of shape {tuple(s.shape)} for a batch of {n}", field="target")
    bad = found & ~torch.isfinite(s.detach())
    if bad.any():
        i = int(bad.nonzero()[0])
        raise TargetError(f"{t.title}: the score of sample {i} is {float(s.detach()[i])}; a score must be a finite "
                          f"number", field="target")
    if bool(found.any()) and not s.requires_grad:
        raise TargetError(f"{t.title}: the score does not depend on the input through autograd (is it computed "
                          f"from detached tensors, .item() or numpy?)", field="target")
    return _Column(s.unsqueeze(1), found.cpu().unsqueeze(1), [t.title], [[d] for d in got.details],
                   frozen=got.frozen if got.frozen is not None else t)


def _regions(columns: list[_Column]) -> dict[int, torch.Tensor]:
    """Target index -> the ``(N, h, w)`` pixels of each :class:`Region` target (what its maps explain)."""
    out, k = {}, 0
    for c in columns:
        if isinstance(c.frozen, Region) and isinstance(c.frozen.mask, torch.Tensor):
            out[k] = c.frozen.mask.detach().bool().cpu()
        k += c.scores.shape[1]
    return out


@dataclass(frozen=True)
class _Classes:
    """Class indices ``(N, k)`` fixed on the clean input (SmoothGrad's noisy copies of a target list)."""

    index: torch.Tensor


def _frozen_rows(t: Any, rows: torch.Tensor, n: int) -> Any:
    """A target of a batch of ``n`` for its samples ``rows`` (SmoothGrad's noisy copies): what is given
    per sample (a mask, a box, a reference, a class) is indexed, the rest is shared."""
    def per_sample(v: Any, ndim: int) -> bool:
        return isinstance(v, torch.Tensor) and v.ndim == ndim and v.shape[0] == n

    if isinstance(t, _Classes):
        return _Classes(t.index[rows.to(t.index.device)])
    if isinstance(t, Region) and per_sample(t.mask, 3):
        return Region(t.cls, t.mask[rows.to(t.mask.device)])
    if isinstance(t, Box) and per_sample(t.box, 2):
        labels = [t.label[i] for i in rows.tolist()] if isinstance(t.label, list) else t.label
        return Box(t.box[rows], labels, t.iou, t.rank, t.min_score)
    if isinstance(t, Similarity) and per_sample(t.reference, 2) and n > 1:
        return Similarity(t.reference[rows.to(t.reference.device)], t.layer)
    return t


def check_relus(state: RuleState, plan: list[_Pass], strict: bool) -> None:
    ruled = [p.rule for p in plan if p.rule not in (None, Rule.SALIENCY)]
    if state.calls == 0 and ruled and strict:
        raise NoReLUError(
            f"the model applied no ReLU or ReLU6 in its forward pass, so {ruled[0].value} "  # type: ignore[union-attr]
            f"would equal the plain gradient; use the saliency method, or a model with ReLU activations",
            field="methods")


@dataclass(frozen=True)
class _Pass:
    """One backward pass: its ReLU rule (``None``: Grad-CAM's gradient only), and whether it also
    takes the gradient at the Grad-CAM layer."""

    rule: Rule | None
    with_cam: bool


def backward_plan(methods: Sequence[str]) -> list[_Pass]:
    """The backward passes the methods need, per target: one per distinct rule, Grad-CAM riding on
    the saliency pass (plain gradients) or, without one, on a cheap pass that stops at its layer."""
    want_cam = any(REGISTRY[m].gradcam for m in methods)
    rules = list(dict.fromkeys(r for m in methods if (r := REGISTRY[m].rule) is not None))
    plan = [_Pass(r, want_cam and r is Rule.SALIENCY) for r in rules]
    if want_cam and Rule.SALIENCY not in rules:
        plan.append(_Pass(None, True))
    return plan


def assemble_maps(methods: Sequence[str], per_rule: dict[Rule, list[torch.Tensor]], cams: list[torch.Tensor],
              dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """Each method's maps ``(N, K, ...)`` from the gradients of the backward passes."""
    maps: dict[str, torch.Tensor] = {}
    for m in methods:
        spec = REGISTRY[m]
        if spec.rule is None:  # Grad-CAM
            maps[m] = torch.stack(cams, dim=1)
        elif spec.gradcam:  # Guided Grad-CAM: the rule's map times the same target's Grad-CAM
            maps[m] = torch.stack(per_rule[spec.rule], dim=1) * torch.stack(cams, dim=1)
        else:
            maps[m] = torch.stack(per_rule[spec.rule], dim=1)
    # contiguous NCHW also where the caller's input or model is channels_last
    return {m: v.detach().to(dtype=dtype).contiguous() for m, v in maps.items()}


# ------------------------------------------------------------------------------------------ Explainer


class Explainer:
    """Explains one model; reusable across batches, methods and targets.

    Args:
        model: any ``nn.Module`` whose ``forward`` applies ReLU or ReLU6 somewhere (modules,
            functional calls, in-place forms and reused modules are all seen).
        eval_mode: run in eval mode (BatchNorm on running statistics, no dropout) so that the
            samples of a batch are independent; every module's own flag is restored afterwards.

    The model is never modified: no hooks or modes outlive a call, ``requires_grad`` and
    parameters are untouched and no ``.grad`` is written.
    """

    def __init__(self, model: nn.Module, *, eval_mode: bool = True) -> None:
        if not isinstance(model, nn.Module):
            raise ModelError(f"expected a torch.nn.Module, got {type(model).__name__}")
        self.model = model
        self.eval_mode = eval_mode
        self._lock = threading.RLock()
        self._how = _How(None, None)  # the call's output= and labels (set by explain, under the lock)

    # -- public -----------------------------------------------------------------------------
    def explain(
        self,
        x: torch.Tensor,
        target: Target = None,
        *,
        methods: str | Sequence[str] = ("guided_backprop",),
        gradcam_layer: str | None = None,
        strict: bool = True,
        output: str | int | Callable[[Any], Any] | None = None,
        labels: Sequence[str] | None = None,
    ) -> Explanation:
        """Maps of every method in ``methods`` for every target, from one forward pass.

        Args:
            x: input batch ``(N, C, H, W)`` (or whatever the model takes), float.
            target: ``None`` (top-1 class), an int, N ints, an ``(N, K)`` tensor, ``TopK(k)``,
                a layer target (``Channel``, ``Neuron``, ``MaxNeuron``), an output target
                (``Score``, ``Region``, ``Box``, ``Similarity``, ``Output``; a plain callable
                ``fn(output) -> (N,)`` is a ``Score``), or a list of targets (ints are classes),
                all explained from the same forward pass.
            output: which part of a dict / tuple / object output the targets read: a key, an
                index or a callable (``"logits"``, ``0``, ``lambda o: o.logits``).
            labels: the model's class names, for class names in ``Region`` / ``Box``.
            methods: names from :data:`~guided_backprop.methods.METHODS` (aliases accepted).
            gradcam_layer: layer for Grad-CAM; default: the last module with a spatial
                ``(N, C, h, w)`` output (h or w > 1), found during the forward pass.
            strict: a forward pass that applies no ReLU is an error for the ReLU rules (their maps
                would silently equal the plain gradient). ``False`` accepts it: every rule is then
                exactly the plain gradient (e.g. a unit of the first layer, before any ReLU).

        SmoothGrad wraps this call: :class:`SmoothGrad`.
        """
        call = _Call(parse_methods(methods), gradcam_layer, strict)
        with self._session(x, target, output, labels) as (x, target):
            return self._explain(x, target, call.methods, call.cam_layer, strict=call.strict)

    # -- internals --------------------------------------------------------------------------
    @contextmanager
    def _session(self, x: Any, target: Target, output: Any, labels: Sequence[str] | None
                 ) -> Iterator[tuple[torch.Tensor, Target]]:
        """One call's hold on the explainer: the input checked, the lock and exact CUDA math held, the
        output selection set, similarity references run; yields the input and the targets to explain."""
        x = self._check_input(x)
        with self._lock, exact_cuda_math(x.device):
            items = _target_list(target)
            if items is not None:
                target = self._with_references(items, x, output)
            self._how = _How(output, labels)
            yield x, target

    def _check_input(self, x: Any) -> torch.Tensor:
        if not isinstance(x, torch.Tensor):
            raise InputError(f"x must be a torch.Tensor, got {type(x).__name__}")
        if not x.is_floating_point():
            raise InputError(f"x must be a floating-point tensor, got dtype {x.dtype}; convert with x.float()")
        if x.ndim < 2 or x.shape[0] == 0:
            raise InputError(f"x must be a non-empty batch (N, ...), got shape {tuple(x.shape)}")
        conv_dims: dict[type[nn.Module], int] = {nn.Conv1d: 3, nn.Conv2d: 4, nn.Conv3d: 5}
        first = next((m for m in self.model.modules() if type(m) in conv_dims), None)
        if isinstance(first, nn.modules.conv._ConvNd):
            want = conv_dims[type(first)]
            if x.ndim == want - 1 and x.shape[0] == first.in_channels:
                raise InputError(
                    f"x has shape {tuple(x.shape)}: no batch dimension; use x.unsqueeze(0) for a single sample"
                )
        return x

    def _forward(self, x: torch.Tensor, capture: Capture) -> tuple[torch.Tensor, Any, RuleState]:
        """One forward under the routing mode: (input leaf, output or None when stopped, rule state)."""
        state = RuleState()
        leaf = x.detach().clone().requires_grad_(True)
        output: Any = None
        try:
            with model_state(self.model, eval_mode=self.eval_mode), forward_hooks(capture.hooks()), \
                    ReLURouting(state), torch.enable_grad():
                output = self.model(leaf.clone())
        except StopForward:
            output = None
        except GuidedBackpropError:
            raise
        except (RuntimeError, AssertionError) as err:
            if "training mode" in str(err):  # torchvision's detectors want targets when training
                raise ModelError(f"the model is in training mode and needs training targets ({err}); explain it "
                                 f"in eval mode (eval_mode=True, the default)", field="model") from err
            if isinstance(err, AssertionError):
                raise
            raise InputError(f"the model's forward pass failed on an input of shape {tuple(x.shape)}: {err}") from err
        return leaf, output, state

    def _with_references(self, items: list[Any], x: torch.Tensor, output: Any) -> list[Any]:
        """The targets with each Similarity's reference input run through the model (its embedding)."""
        done = []
        for t in items:
            ref = t.reference if isinstance(t, Similarity) else None
            shaped = isinstance(ref, torch.Tensor) and ref.is_floating_point() and (
                tuple(ref.shape) == tuple(x.shape[1:]) or tuple(ref.shape) == (1, *x.shape[1:]))
            if isinstance(ref, torch.Tensor) and (t.is_input or (t.is_input is None and shaped)):
                capture = Capture(self.model, None, None, False, 1, keep=[t.layer] if t.layer else [])
                with model_state(self.model, eval_mode=self.eval_mode), forward_hooks(capture.hooks()), \
                        torch.no_grad():
                    out = self.model((ref if ref.ndim == x.ndim else ref[None]).to(x.device, x.dtype))
                emb = capture.kept.get(t.layer) if t.layer else select_output(out, output)
                if not isinstance(emb, torch.Tensor):
                    raise TargetError(f"Similarity: the reference's {t.layer or 'output'} is {type(emb).__name__}, "
                                      f"not a tensor; choose one with output= or layer=", field="target")
                t = Similarity(emb.detach(), t.layer)
            done.append(t)
        return done

    def _explain(
        self,
        x: torch.Tensor,
        target: Target,
        methods: tuple[str, ...],
        cam_layer: str | None,
        positions: torch.Tensor | None = None,
        *,
        strict: bool = True,
    ) -> Explanation:
        items = _target_list(target)
        if items is not None:
            return self._explain_many(x, items, methods, cam_layer, strict=strict)[0]
        layer_target = target if isinstance(target, (Channel, Neuron, MaxNeuron)) else None
        plan = backward_plan(methods)
        want_cam = any(p.with_cam for p in plan)
        capture = Capture(self.model, layer_target, cam_layer, want_cam, x.shape[0])
        leaf, output, state = self._forward(x, capture)
        if layer_target is not None:
            out = capture.layer_activation()
        else:
            out = class_logits(select_output(output, self._how.output), x.shape[0])
        scores, classes, logits, positions = score_targets(out, target, layer_target, positions)
        cam_name, cam_act = capture.gradcam_activation(scores)

        check_relus(state, plan, strict)
        if not scores.requires_grad:
            raise ModelError("the explained score does not depend on the input through autograd "
                             "(is the model wrapped in torch.no_grad or built from detached tensors?)")

        per_rule, cams = self._backward(scores, leaf, cam_act, plan, state, x.shape[2:])
        return Explanation(
            maps=assemble_maps(methods, per_rule, cams, x.dtype),
            scores=scores.detach(),
            targets=classes,
            logits=None if logits is None else logits.detach(),
            positions=positions,
            gradcam_layer=cam_name,
            relu_calls=state.calls,
        )

    def _explain_many(self, x: torch.Tensor, items: list[Any], methods: tuple[str, ...], cam_layer: str | None,
                      *, strict: bool = True) -> tuple[Explanation, list[Any]]:
        """Any targets, from one forward pass: (the explanation, the targets frozen for SmoothGrad)."""
        n = x.shape[0]
        plan = backward_plan(methods)
        keep = [t.layer for t in items if isinstance(t, LAYER_TARGETS)] + [
            t.layer for t in items if isinstance(t, Similarity) and t.layer]
        capture = Capture(self.model, None, cam_layer, any(p.with_cam for p in plan), n, keep=keep)
        leaf, output, state = self._forward(x, capture)
        selected = select_output(output, self._how.output)
        ctx = Context(n=n, input_size=tuple(x.shape[2:]), layers=capture.kept, labels=self._how.labels)
        columns = [_evaluate(t, selected, ctx) for t in items]
        dtype = torch.promote_types(x.dtype, torch.float32)
        scores = torch.cat([c.scores.to(dtype) for c in columns], dim=1)
        found = torch.cat([c.found for c in columns], dim=1).to(scores.device)
        idx = [c.classes for c in columns if c.classes is not None]
        classes = torch.cat(idx, 1) if len(idx) == len(columns) else None
        logits = class_logits(selected, n).detach() if classes is not None else None
        # Nothing found anywhere (no detection): every map is NaN, any candidate layer will do.
        cam_name, cam_act = capture.gradcam_activation(scores if bool(found.any()) else None)
        check_relus(state, plan, strict)
        if not scores.requires_grad:  # nothing found anywhere (no detection): no backward, no maps
            scores = scores + 0 * leaf.sum()  # keeps the shapes flowing; every map is NaN below
        per_rule, cams = self._backward(scores.masked_fill(~found, 0), leaf, cam_act, plan, state, x.shape[2:])
        maps = assemble_maps(methods, per_rule, cams, x.dtype)
        for v in maps.values():
            v[~found.to(v.device)] = float("nan")  # no detection: no map, never a zero map
        explanation = Explanation(
            maps=maps,
            scores=scores.detach(),
            targets=classes,
            logits=logits,
            positions=next((c.positions for c in columns if c.positions is not None), None),
            gradcam_layer=cam_name,
            relu_calls=state.calls,
            titles=[t for c in columns for t in c.titles],
            details=[[d for c in columns for d in c.details[i]] for i in range(n)],
            found=None if bool(found.all()) else found.cpu(),
            regions=_regions(columns),
        )
        return explanation, [c.frozen for c in columns]

    @staticmethod
    def _backward(
        scores: torch.Tensor, leaf: torch.Tensor, cam_act: torch.Tensor | None, plan: list[_Pass],
        state: RuleState, size: Sequence[int], keep_graph: bool = False,
    ) -> tuple[dict[Rule, list[torch.Tensor]], list[torch.Tensor]]:
        """Every pass of ``plan`` for each of the K targets, on the one recorded forward graph (kept after
        the last pass with ``keep_graph``, for later passes: :class:`Recorded`)."""
        k = scores.shape[1]
        per_rule: dict[Rule, list[torch.Tensor]] = {p.rule: [] for p in plan if p.rule is not None}
        cams: list[torch.Tensor] = []
        for j in range(k):
            grad_out = torch.zeros_like(scores)
            grad_out[:, j] = 1
            for i, step in enumerate(plan):
                state.method = step.rule if step.rule is not None else Rule.SALIENCY
                wrt = ([leaf] if step.rule is not None else []) + ([cam_act] if step.with_cam and cam_act is not None
                                                                   else [])
                last = j == k - 1 and i == len(plan) - 1 and not keep_graph
                try:
                    grads = torch.autograd.grad(scores, wrt, grad_outputs=grad_out, retain_graph=not last,
                                                allow_unused=True)
                except RuntimeError as err:
                    raise ModelError(f"the backward pass failed: {err}") from err
                if step.rule is not None:
                    per_rule[step.rule].append(_zeros_if_none(grads[0], leaf))
                if step.with_cam:
                    assert cam_act is not None
                    cams.append(_gradcam(cam_act, _zeros_if_none(grads[-1], cam_act), size))
        return per_rule, cams


@dataclass(frozen=True)
class _Call:
    """What one call explains with: the methods, the Grad-CAM layer asked for, strictness about ReLUs."""

    methods: tuple[str, ...]
    cam_layer: str | None
    strict: bool


class SmoothGrad:
    """SmoothGrad (Smilkov et al. 2017, arXiv:1706.03825) around an :class:`Explainer`: each map is the
    mean of the explainer's maps over ``samples`` noisy copies of the input, for any method.

    The targets are fixed on the clean input (the classes it predicts, the unit positions it finds), so
    that every noisy copy explains the same score; the result's scores, targets and probabilities are
    the clean input's, its ``extra`` says ``smooth`` and ``noise``.

    Args:
        explainer: the explainer wrapped (its model, eval mode and lock are the ones used).
        samples: noisy copies per input (0: no smoothing, the explainer's own maps).
        noise: the noise's standard deviation as a fraction of each input's value range (max - min).
        batch: noisy copies per forward pass.

    >>> e = SmoothGrad(Explainer(model), samples=25, noise=0.15).explain(x, methods=["guided_backprop"])
    """

    def __init__(self, explainer: Explainer, *, samples: int = 25, noise: float = 0.15, batch: int = 16) -> None:
        if not isinstance(explainer, Explainer):
            raise ModelError(f"SmoothGrad wraps an Explainer, got {type(explainer).__name__}; use "
                             f"SmoothGrad(Explainer(model))", field="explainer")
        self.explainer = explainer
        self.samples = int(samples)
        self.noise = float(noise)
        self.batch = int(batch)

    def explain(
        self,
        x: torch.Tensor,
        target: Target = None,
        *,
        methods: str | Sequence[str] = ("guided_backprop",),
        gradcam_layer: str | None = None,
        strict: bool = True,
        output: str | int | Callable[[Any], Any] | None = None,
        labels: Sequence[str] | None = None,
        generator: torch.Generator | None = None,
        seed: int | None = None,
        sample_ids: Sequence[int] | None = None,
    ) -> Explanation:
        """:meth:`Explainer.explain`, smoothed. The noise comes from ``generator`` (one for the whole
        batch), or with ``seed`` from a generator per sample (:func:`smoothgrad_seed` of ``seed`` and
        its id), so that a sample's map does not depend on the batch it came in; ``sample_ids`` are
        the ids (default ``0..N-1``)."""
        if self.samples <= 0:
            return self.explainer.explain(x, target, methods=methods, gradcam_layer=gradcam_layer, strict=strict,
                                          output=output, labels=labels)
        call = _Call(parse_methods(methods), gradcam_layer, strict)
        with self.explainer._session(x, target, output, labels) as (x, target):
            if seed is None:
                return self._smooth(x, target, call, generator)
            ids = list(range(x.shape[0])) if sample_ids is None else [int(i) for i in sample_ids]
            if len(ids) != x.shape[0]:
                raise InputError(f"got {len(ids)} sample ids for a batch of {x.shape[0]}; give one per sample")
            return Explanation.concat([
                self._smooth(x[i:i + 1], _sample_target(target, i, x.shape[0]), call,
                             torch.Generator().manual_seed(smoothgrad_seed(seed, sid)))
                for i, sid in enumerate(ids)
            ])

    def _smooth(self, x: torch.Tensor, target: Target, call: _Call, generator: torch.Generator | None
                ) -> Explanation:
        ex, methods, cam_layer, strict = self.explainer, call.methods, call.cam_layer, call.strict
        samples, batch = self.samples, self.batch
        # Fix the targets on the clean input, so that every noisy copy explains the same score.
        items = _target_list(target)
        if items is not None:
            clean, frozen = ex._explain_many(x, items, methods, cam_layer, strict=strict)
        else:
            clean = ex._explain(x, target, methods, cam_layer, strict=strict)
        n = x.shape[0]
        layer_target = target if isinstance(target, (Channel, Neuron, MaxNeuron)) else None
        span = (x.reshape(n, -1).amax(1) - x.reshape(n, -1).amin(1)).reshape(n, *([1] * (x.ndim - 1)))
        sigma = self.noise * span
        sums = {m: torch.zeros_like(v) for m, v in clean.maps.items()}
        per = max(1, batch // n) if batch >= n else 1
        chunks = [(s, min(s + batch, n)) for s in range(0, n, batch)] if batch < n else [(0, n)]
        noise_device = "cpu" if generator is None or generator.device.type == "cpu" else x.device
        done = 0
        while done < samples:
            reps = min(per, samples - done)
            for s, e in chunks:
                xs = x[s:e]
                noisy = xs.unsqueeze(0).expand(reps, *xs.shape).reshape(reps * (e - s), *xs.shape[1:])
                eps = torch.randn(noisy.shape, generator=generator, dtype=x.dtype, device=noise_device)
                noisy = noisy + eps.to(x.device) * sigma[s:e].repeat(reps, *([1] * (x.ndim - 1)))
                if items is not None:
                    rows = torch.arange(s, e).repeat(reps)
                    many = [_frozen_rows(f, rows, n) for f in frozen]
                    part = ex._explain_many(noisy, many, methods, clean.gradcam_layer or cam_layer, strict=strict)[0]
                    for m, v in part.maps.items():
                        sums[m][s:e] += v.reshape(reps, e - s, *v.shape[1:]).sum(0)
                    continue
                if layer_target is not None:
                    pos = clean.positions[s:e].repeat(reps, 1) if clean.positions is not None else None
                    tgt: Target = layer_target
                else:
                    pos = None
                    assert clean.targets is not None
                    tgt = clean.targets[s:e].repeat(reps, 1)
                part = ex._explain(noisy, tgt, methods, clean.gradcam_layer or cam_layer, positions=pos,
                               strict=strict)
                for m, v in part.maps.items():
                    sums[m][s:e] += v.reshape(reps, e - s, *v.shape[1:]).sum(0)
            done += reps
        clean.maps = {m: v / samples for m, v in sums.items()}
        clean.extra.update(smooth=samples, noise=self.noise)
        return clean


def _sample_target(target: Target, i: int, n: int) -> Target:
    """Sample ``i``'s share of a batch's target (a per-sample list or tensor is indexed)."""
    items = _target_list(target)
    if items is not None:
        return [_frozen_rows(t, torch.tensor([i]), n) for t in items]
    if target is None or isinstance(target, (int, TopK, Channel, Neuron, MaxNeuron)):
        return target
    t = torch.as_tensor(target)
    if t.ndim >= 1 and t.shape[0] == n:
        return t[i:i + 1]
    return target


def _zeros_if_none(g: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor:
    return torch.zeros_like(like) if g is None else g


def _gradcam(act: torch.Tensor, grad: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """``relu(sum_c mean_hw(grad_c) * act_c)`` upsampled to ``size``: ``(N, 1, *size)``."""
    weights = grad.mean(dim=(2, 3), keepdim=True)
    cam = torch.relu((weights * act.detach()).sum(dim=1, keepdim=True))
    if tuple(cam.shape[2:]) != tuple(size):
        cam = F.interpolate(cam, size=tuple(size), mode="bilinear", align_corners=False)
    return cam


def attribute(
    model: nn.Module,
    x: torch.Tensor,
    target: Target = None,
    method: str = "guided_backprop",
    **options: Any,
) -> torch.Tensor:
    """The attribution map of ``method`` for ``target``, shaped like ``x``.

    ``method`` is ``"guided_backprop"`` (Springenberg et al. 2014, arXiv:1412.6806),
    ``"deconvnet"``, ``"saliency"``, ``"gradcam"`` or ``"guided_gradcam"``. ``target=None``
    explains each sample's top-1 class; an int or N ints give class indices; ``gbp.Region``,
    ``gbp.Box``, ``gbp.Similarity``, ``gbp.Output`` or any ``fn(output) -> (N,)`` explain other
    outputs (``output=`` picks the part of a dict or tuple output they read). With ``TopK(k)``,
    an ``(N, K)`` target or a list of targets the result is ``(N, K, *x.shape[1:])``. ``options`` go to
    :meth:`Explainer.explain` (``gradcam_layer``, ``output``...), to :class:`Explainer` (``eval_mode``),
    or with ``smooth=N`` to :class:`SmoothGrad` (``smooth`` samples, ``noise``, ``smooth_batch``; to its
    ``explain``: ``generator``, ``seed``, ``sample_ids``).
    """
    eval_mode = options.pop("eval_mode", True)
    smoothing = {key: options.pop(key) for key in ("smooth", "noise", "smooth_batch") if key in options}
    if not isinstance(method, str):
        raise UnknownNameError("method", str(method), METHODS,
                               hint="attribute() takes one method; use Explainer for several")
    name = get_method(method).name
    explainer = Explainer(model, eval_mode=eval_mode)
    if smoothing.get("smooth", 0):
        result = SmoothGrad(explainer, samples=smoothing["smooth"], noise=smoothing.get("noise", 0.15),
                            batch=smoothing.get("smooth_batch", 16)).explain(x, target, methods=(name,), **options)
    else:  # the noise's seeds mean nothing without noise
        plain = {k: v for k, v in options.items() if k not in ("generator", "seed", "sample_ids")}
        result = explainer.explain(x, target, methods=(name,), **plain)
    maps = result.maps[name]
    many = isinstance(target, (list, tuple)) and _target_list(target) is not None
    if maps.shape[1] == 1 and not many and not isinstance(target, TopK) and not (
        isinstance(target, torch.Tensor) and target.ndim == 2
    ):
        return maps[:, 0]
    return maps


# ------------------------------------------------------------------------------------------- Recorded


class Recorded:
    """One forward pass of an input, kept with its graph, for the maps of any class and method later.

    The forward runs once under the ReLU routing; each routed ReLU reads the rule when the backward
    runs (:class:`~guided_backprop.rules.RuleState`), so the one graph serves guided backprop,
    deconvnet and saliency, and Grad-CAM's layer gradient rides on the saliency pass, exactly as one
    :meth:`Explainer.explain` call does. :meth:`explain` runs only the backward passes of the asked
    methods for the asked classes (``retain_graph``), so the maps equal those of a fresh
    ``Explainer(model).explain(x, classes, methods=...)``: the same forward, the same backward.

    The graph holds the forward's activations (memory): :meth:`close` frees it. One :meth:`explain` at
    a time (the rule state belongs to the graph; a lock serialises the calls).

    Args:
        explainer: the model's :class:`Explainer` (its ``eval_mode`` applies).
        x: the input batch ``(N, C, H, W)``.
        gradcam_layer: Grad-CAM's layer (default: the last spatial layer the logits depend on).
        output: which part of a dict / tuple output holds the class logits (as ``explain``'s ``output``).
    """

    def __init__(self, explainer: Explainer, x: torch.Tensor, *, gradcam_layer: str | None = None,
                 output: str | int | Callable[[Any], Any] | None = None) -> None:
        x = explainer._check_input(x)
        self.size = tuple(x.shape[2:])
        self.dtype = x.dtype
        self.device = x.device
        self.lock = threading.RLock()
        self._cam_error: TargetError | None = None
        with explainer._lock, exact_cuda_math(x.device):
            capture = Capture(explainer.model, None, gradcam_layer, True, x.shape[0])
            leaf, out, state = explainer._forward(x, capture)
            logits = class_logits(select_output(out, output), x.shape[0])
            if not logits.requires_grad:
                raise ModelError("the model's logits do not depend on the input through autograd "
                                 "(is the model wrapped in torch.no_grad or built from detached tensors?)")
            try:
                self.gradcam_layer, cam = capture.gradcam_activation(logits)
            except TargetError as err:  # raised when Grad-CAM is asked for, not before
                self.gradcam_layer, cam, self._cam_error = None, None, err
        self._leaf: torch.Tensor | None = leaf
        self._logits: torch.Tensor | None = logits
        self._cam: torch.Tensor | None = cam
        self._state = state
        self.logits = logits.detach()  # (N, classes)

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` freed the graph."""
        return self._logits is None

    def explain(self, target: Target = None, *, methods: str | Sequence[str] = ("guided_backprop",),
                strict: bool = True) -> Explanation:
        """Maps of ``methods`` for class targets (``None``: top-1, an int, N ints, ``(N, K)``, ``TopK``),
        from the recorded forward: only backward passes run."""
        names = parse_methods(methods)
        if _target_list(target) is not None or isinstance(target, LAYER_TARGETS):
            raise TargetError("a recorded forward explains classes only; use Explainer.explain for other targets",
                              field="target")
        plan = backward_plan(names)
        if any(p.with_cam for p in plan) and self._cam_error is not None:
            raise self._cam_error
        check_relus(self._state, plan, strict)
        with self.lock, exact_cuda_math(self.device):
            if self._logits is None or self._leaf is None:
                raise InputError("this recorded forward was closed (its graph freed); record the input again")
            scores, classes, logits, _ = score_targets(self._logits, target, None, None)
            per_rule, cams = Explainer._backward(scores, self._leaf, self._cam, plan, self._state, self.size,
                                                 keep_graph=True)
        return Explanation(maps=assemble_maps(names, per_rule, cams, self.dtype), scores=scores.detach(),
                           targets=classes, logits=None if logits is None else logits.detach(),
                           gradcam_layer=self.gradcam_layer if any(p.with_cam for p in plan) else None,
                           relu_calls=self._state.calls)

    def close(self) -> None:
        """Free the graph (the forward's saved activations); later :meth:`explain` calls raise."""
        with self.lock:
            self._leaf = self._logits = self._cam = None
