"""Randomisation steps that reuse the trained bottom of the network instead of recomputing it.

At a step of model-parameter randomisation (cascading or independent), every module call that ends
before the first call of the lowest randomised block runs with trained weights on the same input, so its
output is the trained model's. :class:`BottomReuse` runs the trained model once per batch of images
under the ReLU routing, keeps that forward's graph, and records each module call's output (the forward
goes on with a clone, so later in-place operations cannot change what is kept). At each step the
randomised copy's forward *replays* the outermost such calls -- their patched ``forward`` returns a clone
of the kept output, still connected to the kept graph -- and computes only the rest. Every backward pass
then runs through the step's new top part and on through the kept bottom graph to the input: input-space
maps need the backward through the unchanged layers (their ReLU rules included), only their forward is
saved. The kept graph's ReLUs and the step's share one :class:`~guided_backprop.rules.RuleState`, so one
``state.method`` sets the rule in both.

Exactness: the replayed outputs are the very tensors the trained forward computed, the top part runs the
same operations on the same values, and a clone's backward passes its gradient unchanged, so on CPU the
maps equal recomputing's bit for bit (``tests/test_evaluate_cascade.py``). In general the sums where a
tensor feeds several consumers could be added in another order (float rounding), which has not been seen.

Calls are replayed only when their tensor output is known and no parameter of theirs is re-initialised;
a call that contains the Grad-CAM layer is not replayed as a whole (its inner calls are), so that the
layer's hook still sees its output. Smooth MPRT (noisy inputs) does not reuse anything.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..attribution import Capture, Explainer, assemble_maps, backward_plan, check_relus, class_logits, score_targets
from ..errors import InputError
from ..hooks import exact_cuda_math, forward_hooks, model_state
from ..rules import ReLURouting, RuleState

__all__ = ["BottomReuse"]


@dataclass
class _Call:
    """One module call of the trained forward: its module, which call of it, its span and its output."""

    name: str
    index: int  # the index-th call of this module in the forward
    start: int
    parent: int | None  # position of the enclosing call in the list (None: the root's call)
    end: int = -1
    out: torch.Tensor | None = None  # the module's own output (the forward went on with a clone)
    inner: list[int] = field(default_factory=list)  # positions of every call nested inside, at any depth


@contextlib.contextmanager
def _call_hooks(model: nn.Module, calls: list[_Call]) -> Iterator[None]:
    """Record every module call of ``model``'s forward into ``calls``; the hooks come off on exit."""
    stack: list[int] = []
    counts: dict[str, int] = {}
    clock = [0]

    def pre(name: str) -> Any:
        def hook(_m: nn.Module, _args: Any) -> None:
            calls.append(_Call(name, counts.get(name, 0), clock[0], stack[-1] if stack else None))
            counts[name] = counts.get(name, 0) + 1
            for outer in stack:
                calls[outer].inner.append(len(calls) - 1)
            stack.append(len(calls) - 1)
            clock[0] += 1
        return hook

    def post(_m: nn.Module, _args: Any, out: Any) -> Any:
        call = calls[stack.pop()]
        call.end = clock[0]
        clock[0] += 1
        if isinstance(out, torch.Tensor):
            call.out = out
            return out.clone()  # later in-place ops (ReLU(inplace=True), +=) act on the clone
        return None

    modules = list(model.named_modules())
    with forward_hooks([(module, post) for _name, module in modules],
                       pre=[(module, pre(name)) for name, module in modules]):
        yield


@contextlib.contextmanager
def _replaying(model: nn.Module, calls: list[_Call], replay: Sequence[int]) -> Iterator[None]:
    """Patch the ``forward`` of the modules of the ``replay`` calls: that call returns a clone of its kept
    output (the module's other calls run as usual). Every patch is removed on exit."""
    modules = dict(model.named_modules())
    outputs = {(calls[i].name, calls[i].index): calls[i] for i in replay}
    counts: dict[str, int] = {}
    patched: list[tuple[nn.Module, Any]] = []

    def make(name: str, original: Any) -> Any:
        def forward(*args: Any, **kwargs: Any) -> Any:
            k = counts.get(name, 0)
            counts[name] = k + 1
            call = outputs.get((name, k))
            if call is None:
                return original(*args, **kwargs)
            for i in call.inner:  # the calls it would have made are skipped: count them as made
                counts[calls[i].name] = counts.get(calls[i].name, 0) + 1
            assert call.out is not None
            return call.out.clone()
        return forward

    try:
        for name in dict.fromkeys(calls[i].name for i in replay):
            module = modules[name]
            own = vars(module).get("forward")  # an instance attribute of its own, if any: restored after
            patched.append((module, own))
            module.forward = make(name, module.forward)  # type: ignore[method-assign]
        yield
    finally:
        for module, own in patched:
            if own is None:
                del module.forward
            else:
                module.forward = own  # type: ignore[method-assign]


class BottomReuse:
    """Explain the randomised copies of one trained model on one batch, replaying the unchanged bottom.

    Args:
        model: the trained model (never modified; its graph for ``x`` is kept until this object is dropped).
        x: the batch ``(N, C, H, W)``.
        classes: the class explained for each sample ``(N,)``.
        methods: parsed method names.
        gradcam_layer: the Grad-CAM layer's name (required when a method needs Grad-CAM: the trained
            model's choice, so that every step uses the same layer).
    """

    def __init__(self, model: nn.Module, x: torch.Tensor, classes: torch.Tensor, methods: tuple[str, ...],
                 gradcam_layer: str | None) -> None:
        self.methods = methods
        self.plan = backward_plan(methods)
        self.want_cam = any(p.with_cam for p in self.plan)
        self.cam_layer = gradcam_layer
        self.classes = classes
        self.x = x
        self.state = RuleState()
        self.calls: list[_Call] = []
        self.leaf = x.detach().clone().requires_grad_(True)
        try:
            with model_state(model), exact_cuda_math(x.device), _call_hooks(model, self.calls), \
                    ReLURouting(self.state), torch.enable_grad():
                model(self.leaf.clone())
        except RuntimeError as err:
            raise InputError(f"the model's forward pass failed on an input of shape {tuple(x.shape)}: {err}") from err
        self._first: dict[str, int] = {}
        for c in self.calls:
            self._first.setdefault(c.name, c.start)
        self._params: tuple[nn.Module, dict[str, set[int]]] | None = None  # (net, parameter ids per called module)
        self._inner = [set(c.inner) for c in self.calls]

    def replayed(self, net: nn.Module, randomized: Sequence[str], *, recurse: bool = True) -> list[int]:
        """The outermost calls whose output is the trained one while the modules ``randomized`` of ``net``
        are re-initialised (positions in the recorded calls)."""
        modules = dict(net.named_modules())
        starts = [self._first[r] for r in randomized if r in self._first]
        boundary = min(starts) if starts else float("inf")  # a block the forward never calls changes nothing
        if self._params is None or self._params[0] is not net:  # shared parameters are one object: ids
            self._params = (net, {n: {id(p) for p in modules[n].parameters()} for n in self._first})
        params = self._params[1]
        changed = {id(p) for r in randomized for p in modules[r].parameters(recurse=recurse)}
        cams = [i for i, c in enumerate(self.calls) if self.want_cam and c.name == self.cam_layer]
        # Grad-CAM's gradient must reach the layer's output through the step's graph: no call after the
        # layer's first call is replayed (its kept output would lead back into the kept graph, around the
        # layer's output), nor a call containing it (its hook must see its output); the calls inside it
        # and the layer's own may be.
        cam_end = min((self.calls[i].end for i in cams), default=float("inf"))

        def replayable(i: int) -> bool:
            c = self.calls[i]
            return (c.end < boundary and c.out is not None
                    and c.start < cam_end
                    and not any(j in self._inner[i] for j in cams)
                    and not params[c.name] & changed)

        ok = [replayable(i) for i in range(len(self.calls))]
        return [i for i, c in enumerate(self.calls) if ok[i] and (c.parent is None or not ok[c.parent])]

    def explain(self, net: nn.Module, randomized: Sequence[str], *, recurse: bool = True) -> dict[str, torch.Tensor]:
        """Maps ``{method: (N, C, H, W)}`` (on the CPU) of ``net``, a copy of the trained model with the
        modules ``randomized`` re-initialised (``recurse=False``: their own parameters only)."""
        replay = self.replayed(net, randomized, recurse=recurse)
        n = self.x.shape[0]
        capture = Capture(net, None, self.cam_layer, self.want_cam, n)
        with model_state(net), exact_cuda_math(self.x.device), _replaying(net, self.calls, replay), \
                forward_hooks(capture.hooks()), ReLURouting(self.state), torch.enable_grad():
            output = net(self.leaf.clone())
        scores, _classes, _logit, _pos = score_targets(class_logits(output, n), self.classes, None, None)
        _cam_name, cam_act = capture.gradcam_activation(scores)
        check_relus(self.state, self.plan, True)
        # keep_graph: the kept bottom graph serves every later step
        per_rule, cams = Explainer._backward(scores, self.leaf, cam_act, self.plan, self.state, self.x.shape[2:],
                                             keep_graph=True)
        maps = assemble_maps(self.methods, per_rule, cams, self.x.dtype)
        return {m: v[:, 0].cpu() for m, v in maps.items()}
