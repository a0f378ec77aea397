"""Backward rules for ReLU-like functions, and the mode that routes every ReLU through them.

The three methods differ only in how the backward signal ``g`` passes a ReLU whose
input is ``x`` (Springenberg et al. 2014, arXiv:1412.6806, fig. 1):

=================  ===============================
saliency           ``g * [x > 0]`` (the gradient)
deconvnet          ``max(g, 0)``
guided_backprop    ``max(g, 0) * [x > 0]``
=================  ===============================

ReLU6 (``hardtanh(x, 0, 6)``) gates by ``0 < x < 6`` instead of ``x > 0``.

Module hooks cannot see ``F.relu`` called inside ``forward``, so the routing is done at the
function level with a :class:`torch.overrides.TorchFunctionMode`: it sees ``nn.ReLU``
(which calls ``F.relu``), ``F.relu``, ``torch.relu``, ``Tensor.relu`` and their in-place
forms, ``nn.ReLU6``/``F.relu6`` and ``nn.Hardtanh(0, 6)``/``F.hardtanh``, whether a module
is reused or not, and it leaves the model untouched.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

from .methods import Rule

__all__ = ["Rule", "RuleState", "ReLURouting", "unrouted_activations"]


class RuleState:
    """Which rule the routed ReLUs apply on the next backward pass.

    One forward pass under :class:`ReLURouting` can be followed by several backward passes
    with different rules (``retain_graph=True``): the backward reads ``state.method`` when it
    runs, not when the forward ran.
    """

    def __init__(self, method: Rule = Rule.SALIENCY) -> None:
        self.method = method
        self.calls = 0  # how many ReLU applications were routed during the forward


class _RoutedReLU(torch.autograd.Function):
    """relu / relu6 whose backward follows ``state.method``."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, state: RuleState, upper: float | None,  # type: ignore[override]
                inplace: bool) -> torch.Tensor:
        if inplace:
            out = x.clamp_(0, upper) if upper is not None else x.clamp_(min=0)
            ctx.mark_dirty(out)
        else:
            out = x.clamp(0, upper) if upper is not None else torch.relu(x)
        # Save what PyTorch's own backward saves, so that the same later in-place ops are allowed:
        # relu and the in-place forms keep the result, out-of-place relu6/hardtanh the input.
        ctx.save_for_backward(x if upper is not None and not inplace else out)
        ctx.state = state
        ctx.upper = upper
        return out

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor) -> tuple[torch.Tensor | None, None, None, None]:  # type: ignore[override]
        # The input or the output: the gate is the same (relu(x) > 0 iff x > 0, 0 < relu6(x) < 6 iff 0 < x < 6).
        (out,) = ctx.saved_tensors
        method = ctx.state.method
        if method is Rule.DECONVNET:
            return g.clamp(min=0), None, None, None
        # PyTorch's own fused backward kernels (g where the gate is open, else 0): one pass, no mask
        # tensor. relu: open where out > 0; relu6: where 0 < out < 6 (hardtanh_backward's gate).
        if ctx.upper is None:
            grad = torch.ops.aten.threshold_backward(g, out, 0)
        else:
            grad = torch.ops.aten.hardtanh_backward(g, out, 0.0, ctx.upper)
        if method is Rule.GUIDED_BACKPROP:
            # The result is a new tensor, so it is clamped in place: one allocation fewer per ReLU
            # than clamping g first, and the same numbers (the gate and the clamp commute).
            grad.clamp_(min=0)
        return grad, None, None, None


def call_arg(args: Sequence[Any], kwargs: dict[str, Any], pos: int, name: str, default: Any) -> Any:
    """Argument ``name`` of an intercepted torch call, given by position ``pos`` or by keyword."""
    if len(args) > pos:
        return args[pos]
    return kwargs.get(name, default)


# func -> (upper bound or None, in-place?) where in-place may depend on the arguments.
_RELU_FUNCS: dict[Callable, Callable[[tuple, dict], tuple[float | None, bool] | None]] = {
    F.relu: lambda a, k: (None, bool(call_arg(a, k, 1, "inplace", False))),
    torch.relu: lambda a, k: (None, False),
    torch.relu_: lambda a, k: (None, True),
    torch.Tensor.relu: lambda a, k: (None, False),
    torch.Tensor.relu_: lambda a, k: (None, True),
    F.relu6: lambda a, k: (6.0, bool(call_arg(a, k, 1, "inplace", False))),
}
if hasattr(F, "relu_") and F.relu_ is not torch.relu_:
    _RELU_FUNCS[F.relu_] = lambda a, k: (None, True)


def _hardtanh_spec(args: tuple, kwargs: dict, inplace: bool) -> tuple[float | None, bool] | None:
    lo = float(call_arg(args, kwargs, 1, "min_val", -1.0))
    hi = float(call_arg(args, kwargs, 2, "max_val", 1.0))
    if lo != 0.0 or hi != 6.0:
        return None  # an ordinary hardtanh: not a ReLU, keep its ordinary gradient
    return 6.0, inplace or bool(call_arg(args, kwargs, 3, "inplace", False))


_RELU_FUNCS[F.hardtanh] = lambda a, k: _hardtanh_spec(a, k, False)
_RELU_FUNCS[F.hardtanh_] = lambda a, k: _hardtanh_spec(a, k, True)


class ReLURouting(TorchFunctionMode):
    """Route every ReLU / ReLU6 applied inside the ``with`` block through the rule of ``state``.

    Only tensors that take part in autograd are routed; everything else runs as usual.
    The mode is thread-local and is popped on exit, also when the forward raises.
    """

    def __init__(self, state: RuleState) -> None:
        super().__init__()
        self.state = state

    def __torch_function__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        kwargs = kwargs or {}
        spec_of = _RELU_FUNCS.get(func)
        if spec_of is not None and args and isinstance(args[0], torch.Tensor):
            x = args[0]
            spec = spec_of(args, kwargs)
            if spec is not None and torch.is_grad_enabled() and x.requires_grad:
                upper, inplace = spec
                self.state.calls += 1
                return _RoutedReLU.apply(x, self.state, upper, inplace)
        return func(*args, **kwargs)


#: Activation modules the rules do not change: their backward stays the plain gradient.
_OTHER_ACTIVATIONS = ("Hardswish", "Hardsigmoid", "GELU", "SiLU", "Mish", "ELU", "SELU", "CELU", "LeakyReLU",
                      "PReLU", "RReLU", "Softplus", "Sigmoid", "Tanh")


def unrouted_activations(model: torch.nn.Module) -> list[str]:
    """The kinds of activation module in ``model`` that guided backprop and deconvnet leave plain (e.g.
    MobileNetV3's Hardswish and Hardsigmoid), by class name; empty when only ReLUs are used. With a
    ReLU too, guidance is partial: only the ReLUs are guided."""
    found = {type(m).__name__ for m in model.modules()}
    return [name for name in _OTHER_ACTIVATIONS if name in found]
