"""Model helpers every part of the package shares: find a layer, set and restore the model's mode,
register hooks for a block, run a forward that stops at a layer.

Each context manager undoes what it did on exit, also when the forward pass raises, so a model
passed in comes back exactly as it was (training flags, hooks).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch import nn

from .errors import InputError, ModelError, TargetError, UnknownNameError

__all__ = ["StopForward", "exact_cuda_math", "find_layer", "forward_hooks", "layer_output", "logits_of",
           "model_state"]


def find_layer(model: nn.Module, name: str, *, field: str | None = None) -> nn.Module:
    """The submodule called ``name`` in ``model.named_modules()``; unknown names list close matches.

    ``field`` names the option the name came from (``layer``, ``gradcam_layer``), so that the CLI's
    message leads with that flag.
    """
    modules = dict(model.named_modules())
    if name not in modules or name == "":
        raise UnknownNameError("layer", name, [n for n in modules if n],
                               hint="layer names are those of model.named_modules()", field=field)
    return modules[name]


@contextlib.contextmanager
def model_state(model: nn.Module, *, eval_mode: bool = True) -> Iterator[nn.Module]:
    """Put ``model`` in eval mode for the block and restore every submodule's own ``training`` flag."""
    flags = [(m, m.training) for m in model.modules()]
    try:
        # Only touch what changes: nn.Module.__setattr__ and the recursive eval() cost ~1.5 ms per
        # call on a 200-module network, which shows where a whole forward takes a few ms (GPU).
        if eval_mode and any(flag for _m, flag in flags):
            model.eval()
        yield model
    finally:
        for m, flag in flags:
            if m.training != flag:
                m.training = flag


@contextlib.contextmanager
def forward_hooks(hooks: Sequence[tuple[nn.Module, Any]],
                  pre: Sequence[tuple[nn.Module, Any]] = ()) -> Iterator[None]:
    """Register ``(module, hook)`` forward hooks (and ``pre``: forward pre-hooks) for the block; all removed
    on exit, also on errors."""
    handles = []
    try:
        for module, fn in pre:
            handles.append(module.register_forward_pre_hook(fn))
        for module, fn in hooks:
            handles.append(module.register_forward_hook(fn))
        yield
    finally:
        for h in handles:
            h.remove()


@contextlib.contextmanager
def exact_cuda_math(device: torch.device) -> Iterator[None]:
    """Full float32 precision for CUDA convolutions and matmuls during the call.

    cuDNN's default TF32 convolutions round inputs to 10 mantissa bits: guided-backprop maps then
    differ from the CPU's by up to ~10% of their maximum. The switches are global, so they are
    restored on exit.
    """
    if device.type != "cuda":
        yield
        return
    saved = (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
    try:
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cuda.matmul.allow_tf32 = False
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


class StopForward(Exception):
    """Raised from a hook once a layer target's activation is known: the rest is not needed."""


def layer_output(model: nn.Module, x: torch.Tensor, layer: str, *, eval_mode: bool = True) -> torch.Tensor:
    """The output of ``layer`` for batch ``x``, without gradients; the forward stops at the layer.

    Used to find where units fire (no ReLU routing: the forward values do not depend on the rule).
    """
    module = find_layer(model, layer)
    store: dict[str, Any] = {}

    def stop(_m: nn.Module, _i: Any, out: Any) -> None:
        store["out"] = out
        raise StopForward

    try:
        with model_state(model, eval_mode=eval_mode), torch.no_grad(), forward_hooks([(module, stop)]):
            model(x)
    except StopForward:
        pass
    except RuntimeError as err:
        raise InputError(f"the model's forward pass failed on an input of shape {tuple(x.shape)}: {err}") from err
    out = store.get("out")
    if out is None:
        raise TargetError(f"layer {layer!r} was not called during the forward pass")
    if not isinstance(out, torch.Tensor):
        raise TargetError(f"layer {layer!r} returns {type(out).__name__}, not a tensor")
    return out


def logits_of(output: Any) -> torch.Tensor:
    if isinstance(output, torch.Tensor):
        return output
    logits = getattr(output, "logits", None)
    if isinstance(logits, torch.Tensor):
        return logits
    if isinstance(output, dict) or isinstance(output, (tuple, list)) and output:
        tensors = [k for k, v in (output.items() if isinstance(output, dict) else enumerate(output))
                   if isinstance(v, torch.Tensor)]
        if tensors:  # say which entry to pick, as output= (--output-key) takes it
            what = f"a dict with keys {list(output)}" if isinstance(output, dict) else f"a {type(output).__name__}"
            raise ModelError(f"the model returned {what}, not a logits tensor; choose the logits with "
                             f"output={tensors[0]!r}", field="output_key")
    raise ModelError(
        f"the model returned {type(output).__name__}, not a logits tensor; wrap it in a module whose "
        f"forward returns the (N, classes) logits"
    )
