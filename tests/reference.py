"""An independent implementation of the three ReLU rules, for checking the engine.

The engine routes ReLUs with a TorchFunctionMode. This reference does it another way: it
temporarily replaces ``torch.nn.functional.relu`` / ``relu6`` / ``hardtanh`` and ``torch.relu``
(which ``nn.ReLU``, ``nn.ReLU6`` and torchvision's functional calls all go through) with
functions built on a plain custom autograd Function, then takes ``torch.autograd.grad``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
import torch.nn.functional as F


class _RefReLU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, rule, upper):  # type: ignore[no-untyped-def]
        ctx.save_for_backward(x)
        ctx.rule, ctx.upper = rule, upper
        return x.clamp(0, upper) if upper is not None else x.clamp(min=0)

    @staticmethod
    def backward(ctx, g):  # type: ignore[no-untyped-def]
        (x,) = ctx.saved_tensors
        forward_gate = (x > 0) if ctx.upper is None else ((x > 0) & (x < ctx.upper))
        if ctx.rule == "saliency":
            out = g * forward_gate.to(g.dtype)
        elif ctx.rule == "deconvnet":
            out = g * (g > 0).to(g.dtype)
        elif ctx.rule == "guided_backprop":
            out = g * ((g > 0) & forward_gate).to(g.dtype)
        else:
            raise ValueError(ctx.rule)
        return out, None, None


@contextlib.contextmanager
def patched_relus(rule: str) -> Iterator[None]:
    """Within the block every relu/relu6/hardtanh(0,6) entry point follows ``rule`` (computed out of place;
    callers must use the return value, which every network in these tests does)."""
    patches = {
        (F, "relu"): lambda x, inplace=False: _RefReLU.apply(x, rule, None),
        (F, "relu6"): lambda x, inplace=False: _RefReLU.apply(x, rule, 6.0),
        (torch, "relu"): lambda x: _RefReLU.apply(x, rule, None),
        (torch, "relu_"): lambda x: _RefReLU.apply(x, rule, None),
        (torch.Tensor, "relu"): lambda x: _RefReLU.apply(x, rule, None),
        (torch.Tensor, "relu_"): lambda x: _RefReLU.apply(x, rule, None),
    }
    hardtanh = F.hardtanh

    def ref_hardtanh(x, min_val=-1.0, max_val=1.0, inplace=False):  # type: ignore[no-untyped-def]
        if (min_val, max_val) == (0.0, 6.0):
            return _RefReLU.apply(x, rule, 6.0)
        return hardtanh(x, min_val, max_val, inplace)

    patches[(F, "hardtanh")] = ref_hardtanh
    saved = {key: getattr(*key) for key in patches}
    try:
        for (owner, name), fn in patches.items():
            setattr(owner, name, fn)
        yield
    finally:
        for (owner, name), fn in saved.items():
            setattr(owner, name, fn)


def reference_map(model: torch.nn.Module, x: torch.Tensor, classes: torch.Tensor, rule: str) -> torch.Tensor:
    """Map of ``rule`` for class ``classes[i]`` of sample ``i`` (model in eval mode)."""
    model.eval()
    xx = x.detach().clone().requires_grad_(True)
    with patched_relus(rule):
        out = model(xx)
    score = out.gather(1, classes.view(-1, 1)).sum()
    (g,) = torch.autograd.grad(score, xx)
    return g


def reference_score_map(model: torch.nn.Module, x: torch.Tensor, score, rule: str) -> torch.Tensor:  # type: ignore[no-untyped-def]
    """Map of ``rule`` for ``score(output) -> (N,)``, any output (model in eval mode): the gradient of the
    scores' sum, each sample's score depending on its own input only."""
    model.eval()
    xx = x.detach().clone().requires_grad_(True)
    with patched_relus(rule):
        out = model(xx)
    (g,) = torch.autograd.grad(score(out).sum(), xx)
    return g
