"""attribute() and Explainer: one forward pass, one backward pass per (method, target).

Gradient methods (all exact on any ReLU network, see :mod:`.rules`):

* ``saliency`` -- the plain input gradient (Simonyan et al. 2013, arXiv:1312.6034);
* ``deconvnet`` -- Zeiler & Fergus 2013 (arXiv:1311.2901);
* ``guided_backprop`` -- Springenberg et al. 2014 (arXiv:1412.6806);
* ``gradcam`` -- Selvaraju et al. 2017 (arXiv:1610.02391): ``relu(sum_c mean_hw(dS/dA_c) * A_c)``
  at a layer ``A``, upsampled bilinearly to the input size, one channel;
* ``guided_gradcam`` -- the guided-backprop map times the *same target's* Grad-CAM.

SmoothGrad (Smilkov et al. 2017, arXiv:1706.03825) averages any of them over noisy copies.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .errors import GuidedBackpropError, InputError, ModelError, NoReLUError, TargetError, UnknownNameError
from .methods import METHODS, REGISTRY, get_method, parse_methods
from .rules import ReLURouting, Rule, RuleState
from .targets import Channel, LayerTarget, MaxNeuron, Neuron, Target, TopK, layer_scores, resolve_classes

__all__ = ["METHODS", "Explanation", "Explainer", "attribute", "find_layer", "forward_hooks", "layer_output",
           "model_state", "parse_methods"]

def find_layer(model: nn.Module, name: str) -> nn.Module:
    """The submodule called ``name`` in ``model.named_modules()``; unknown names list close matches."""
    modules = dict(model.named_modules())
    if name not in modules or name == "":
        raise UnknownNameError("layer", name, [n for n in modules if n],
                               hint="layer names are those of model.named_modules()")
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
def forward_hooks(hooks: Sequence[tuple[nn.Module, Any]]) -> Iterator[None]:
    """Register ``(module, hook)`` forward hooks for the block; all removed on exit, also on errors."""
    handles = []
    try:
        for module, fn in hooks:
            handles.append(module.register_forward_hook(fn))
        yield
    finally:
        for h in handles:
            h.remove()


@contextlib.contextmanager
def _exact_cuda_math(device: torch.device) -> Iterator[None]:
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


class _StopForward(Exception):
    """Raised from a hook once a layer target's activation is known: the rest is not needed."""


def layer_output(model: nn.Module, x: torch.Tensor, layer: str, *, eval_mode: bool = True) -> torch.Tensor:
    """The output of ``layer`` for batch ``x``, without gradients; the forward stops at the layer.

    Used to find where units fire (no ReLU routing: the forward values do not depend on the rule).
    """
    module = find_layer(model, layer)
    store: dict[str, Any] = {}

    def stop(_m: nn.Module, _i: Any, out: Any) -> None:
        store["out"] = out
        raise _StopForward

    try:
        with model_state(model, eval_mode=eval_mode), torch.no_grad(), forward_hooks([(module, stop)]):
            model(x)
    except _StopForward:
        pass
    except RuntimeError as err:
        raise InputError(f"the model's forward pass failed on an input of shape {tuple(x.shape)}: {err}") from err
    out = store.get("out")
    if out is None:
        raise TargetError(f"layer {layer!r} was not called during the forward pass")
    if not isinstance(out, torch.Tensor):
        raise TargetError(f"layer {layer!r} returns {type(out).__name__}, not a tensor")
    return out


@dataclass
class Explanation:
    """The result of :meth:`Explainer.explain`.

    ``maps[method]`` has shape ``(N, K, *x.shape[1:])`` (``gradcam``: ``(N, K, 1, H, W)``), detached,
    on the input's device and dtype. ``targets`` are the class indices ``(N, K)`` (``None`` for layer
    targets), ``scores`` the explained values ``(N, K)`` (logits, or layer activations).
    """

    maps: dict[str, torch.Tensor]
    scores: torch.Tensor
    targets: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    positions: torch.Tensor | None = None  # (N, 2) (y, x) of Neuron / MaxNeuron targets
    gradcam_layer: str | None = None
    relu_calls: int = 0  # ReLU applications routed through the rules in the forward pass
    extra: dict[str, Any] = field(default_factory=dict)

    def __getitem__(self, method: str) -> torch.Tensor:
        key = get_method(method).name
        if key not in self.maps:
            raise UnknownNameError("method", method, list(self.maps), hint="not computed in this explanation")
        return self.maps[key]

    @property
    def probabilities(self) -> torch.Tensor | None:
        """Softmax probabilities ``(N, K)`` of the explained classes (class targets only)."""
        if self.logits is None or self.targets is None:
            return None
        logits = self.logits.to(torch.promote_types(self.logits.dtype, torch.float32))  # half -> float
        return logits.softmax(dim=1).gather(1, self.targets)


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

    # -- public -----------------------------------------------------------------------------
    def explain(
        self,
        x: torch.Tensor,
        target: Target = None,
        *,
        methods: str | Sequence[str] = ("guided_backprop",),
        gradcam_layer: str | None = None,
        smooth: int = 0,
        noise: float = 0.15,
        smooth_batch: int = 16,
        generator: torch.Generator | None = None,
        strict: bool = True,
    ) -> Explanation:
        """Maps of every method in ``methods`` for every target, from one forward pass.

        Args:
            x: input batch ``(N, C, H, W)`` (or whatever the model takes), float.
            target: ``None`` (top-1 class), an int, N ints, an ``(N, K)`` tensor, ``TopK(k)``,
                or a layer target (``Channel``, ``Neuron``, ``MaxNeuron``).
            methods: names from :data:`METHODS`.
            gradcam_layer: layer for Grad-CAM; default: the last module with a spatial
                ``(N, C, h, w)`` output (h or w > 1), found during the forward pass.
            smooth: SmoothGrad samples per input (0: off).
            noise: SmoothGrad noise std as a fraction of each input's value range (max - min).
            smooth_batch: noisy copies per forward pass.
            generator: random generator for the SmoothGrad noise (reproducible maps).
            strict: a forward pass that applies no ReLU is an error for the ReLU rules (their maps
                would silently equal the plain gradient). ``False`` accepts it: every rule is then
                exactly the plain gradient (e.g. a unit of the first layer, before any ReLU).
        """
        names = parse_methods(methods)
        x = self._check_input(x)
        with self._lock, _exact_cuda_math(x.device):
            if smooth and smooth > 0:
                return self._smooth(x, target, names, gradcam_layer, int(smooth), float(noise),
                                    int(smooth_batch), generator, strict)
            return self._explain(x, target, names, gradcam_layer, strict=strict)

    # -- internals --------------------------------------------------------------------------
    def _check_input(self, x: Any) -> torch.Tensor:
        if not isinstance(x, torch.Tensor):
            raise InputError(f"x must be a torch.Tensor, got {type(x).__name__}")
        if not x.is_floating_point():
            raise InputError(f"x must be a floating-point tensor, got dtype {x.dtype}; convert with x.float()")
        if x.ndim < 2 or x.shape[0] == 0:
            raise InputError(f"x must be a non-empty batch (N, ...), got shape {tuple(x.shape)}")
        conv_dims = {nn.Conv1d: 3, nn.Conv2d: 4, nn.Conv3d: 5}
        first = next((m for m in self.model.modules() if type(m) in conv_dims), None)
        if first is not None:
            want = conv_dims[type(first)]
            if x.ndim == want - 1 and x.shape[0] == first.in_channels:
                raise InputError(
                    f"x has shape {tuple(x.shape)}: no batch dimension; use x.unsqueeze(0) for a single sample"
                )
        return x

    def _forward(
        self, x: torch.Tensor, layer_target: LayerTarget | None, cam_layer: str | None, want_cam: bool
    ) -> tuple[torch.Tensor, Any, torch.Tensor | None, str | None, RuleState]:
        """One forward under the routing mode. Returns (leaf, output-or-activation, cam activation, cam name, state)."""
        state = RuleState()
        leaf = x.detach().clone().requires_grad_(True)
        hooks: list[tuple[nn.Module, Any]] = []
        captured: dict[str, Any] = {}

        if layer_target is not None:
            def stop_hook(_m: nn.Module, _i: Any, out: Any) -> None:
                captured["target"] = out
                raise _StopForward

            hooks.append((find_layer(self.model, layer_target.layer), stop_hook))

        cam_name = cam_layer
        if want_cam and cam_layer is not None:
            def cam_hook(_m: nn.Module, _i: Any, out: Any) -> Any:
                if isinstance(out, torch.Tensor):
                    # Keep the layer's own output: later in-place ops then act on the clone.
                    captured["cam"] = out
                    return out.clone()
                return None

            hooks.append((find_layer(self.model, cam_layer), cam_hook))
        elif want_cam:
            candidates: list[tuple[str, torch.Tensor]] = []

            def make(name: str) -> Any:
                def auto_hook(_m: nn.Module, _i: Any, out: Any) -> None:
                    # Adaptive pools only resample the last feature map (VGG's avgpool): skip them.
                    if isinstance(out, torch.Tensor) and out.ndim == 4 and out.shape[-1] * out.shape[-2] > 1 \
                            and not isinstance(_m, (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)):
                        candidates.append((name, out))
                return auto_hook

            hooks.extend((m, make(n)) for n, m in self.model.named_modules() if n)

        output: Any = None
        try:
            with model_state(self.model, eval_mode=self.eval_mode), forward_hooks(hooks), \
                    ReLURouting(state), torch.enable_grad():
                output = self.model(leaf.clone())
        except _StopForward:
            output = None
        except GuidedBackpropError:
            raise
        except RuntimeError as err:
            raise InputError(f"the model's forward pass failed on an input of shape {tuple(x.shape)}: {err}") from err

        if want_cam and cam_layer is None:
            if not candidates:
                raise TargetError("Grad-CAM found no layer with a spatial (N, C, h, w) output; "
                                  "name one with gradcam_layer")
            cam_name, captured["cam"] = candidates[-1]
        if layer_target is not None:
            if "target" not in captured:
                raise TargetError(f"layer {layer_target.layer!r} was not called during the forward pass")
            act = captured["target"]
            if not isinstance(act, torch.Tensor):
                raise TargetError(f"layer {layer_target.layer!r} returns {type(act).__name__}, not a tensor")
            return leaf, act, captured.get("cam"), cam_name, state
        if want_cam and "cam" not in captured:
            raise TargetError(f"Grad-CAM layer {cam_layer!r} was not called during the forward pass")
        return leaf, _logits_of(output), captured.get("cam"), cam_name, state

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
        want_cam = any(REGISTRY[m].gradcam for m in methods)
        layer_target = target if isinstance(target, (Channel, Neuron, MaxNeuron)) else None
        leaf, out, cam_act, cam_name, state = self._forward(x, layer_target, cam_layer, want_cam)

        logits = classes = None
        if layer_target is not None:
            if positions is not None:  # SmoothGrad: positions fixed on the clean input
                act = out[:, layer_target.channel]
                scores = act[torch.arange(act.shape[0], device=act.device), positions[:, 0], positions[:, 1]][:, None]
            else:
                scores, positions = layer_scores(layer_target, out)
        else:
            logits = out
            classes = resolve_classes(target, logits)
            scores = logits.gather(1, classes)

        rules = list(dict.fromkeys(r for m in methods if (r := REGISTRY[m].rule) is not None))
        ruled = [r for r in rules if r is not Rule.SALIENCY]
        if state.calls == 0 and ruled and strict:
            raise NoReLUError(
                f"the model applied no ReLU or ReLU6 in its forward pass, so {ruled[0].value} would equal the "
                f"plain gradient; use method='saliency', or a model with ReLU activations"
            )
        if not scores.requires_grad:
            raise ModelError("the explained score does not depend on the input through autograd "
                             "(is the model wrapped in torch.no_grad or built from detached tensors?)")

        n, k = scores.shape
        per_rule: dict[Rule, list[torch.Tensor]] = {r: [] for r in rules}
        cams: list[torch.Tensor] = []
        jobs: list[tuple[Rule | None, bool]] = [(r, want_cam and r is Rule.SALIENCY) for r in rules]
        if want_cam and Rule.SALIENCY not in rules:
            jobs.append((None, True))  # the Grad-CAM gradient only: stops at the layer, cheap
        for j in range(k):
            grad_out = torch.zeros_like(scores)
            grad_out[:, j] = 1
            for i, (rule, with_cam) in enumerate(jobs):
                state.method = rule if rule is not None else Rule.SALIENCY
                wrt = ([leaf] if rule is not None else []) + ([cam_act] if with_cam else [])
                last = j == k - 1 and i == len(jobs) - 1
                try:
                    grads = torch.autograd.grad(scores, wrt, grad_outputs=grad_out, retain_graph=not last,
                                                allow_unused=True)
                except RuntimeError as err:
                    raise ModelError(f"the backward pass failed: {err}") from err
                if rule is not None:
                    per_rule[rule].append(_zeros_if_none(grads[0], leaf))
                if with_cam:
                    cams.append(_gradcam(cam_act, _zeros_if_none(grads[-1], cam_act), x.shape[2:]))

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
        maps = {m: v.detach().to(dtype=x.dtype).contiguous() for m, v in maps.items()}
        return Explanation(
            maps=maps,
            scores=scores.detach(),
            targets=classes,
            logits=None if logits is None else logits.detach(),
            positions=positions,
            gradcam_layer=cam_name if want_cam else None,
            relu_calls=state.calls,
        )

    def _smooth(
        self,
        x: torch.Tensor,
        target: Target,
        methods: tuple[str, ...],
        cam_layer: str | None,
        samples: int,
        noise: float,
        batch: int,
        generator: torch.Generator | None,
        strict: bool,
    ) -> Explanation:
        # Fix the targets on the clean input, so that every noisy copy explains the same score.
        clean = self._explain(x, target, methods, cam_layer, strict=strict)
        n = x.shape[0]
        layer_target = target if isinstance(target, (Channel, Neuron, MaxNeuron)) else None
        span = (x.reshape(n, -1).amax(1) - x.reshape(n, -1).amin(1)).reshape(n, *([1] * (x.ndim - 1)))
        sigma = noise * span
        sums = {m: torch.zeros_like(v) for m, v in clean.maps.items()}
        per = max(1, batch // n) if batch >= n else 1
        done = 0
        while done < samples:
            reps = min(per, samples - done)
            if batch < n:
                chunks = [(s, min(s + batch, n)) for s in range(0, n, batch)]
            else:
                chunks = [(0, n)]
            for s, e in chunks:
                xs = x[s:e]
                noisy = xs.unsqueeze(0).expand(reps, *xs.shape).reshape(reps * (e - s), *xs.shape[1:])
                eps = torch.randn(noisy.shape, generator=generator, dtype=x.dtype,
                                  device="cpu" if generator is None or generator.device.type == "cpu" else x.device)
                noisy = noisy + eps.to(x.device) * sigma[s:e].repeat(reps, *([1] * (x.ndim - 1)))
                if layer_target is not None:
                    pos = clean.positions[s:e].repeat(reps, 1) if clean.positions is not None else None
                    tgt: Target = layer_target
                else:
                    pos = None
                    tgt = clean.targets[s:e].repeat(reps, 1)
                part = self._explain(noisy, tgt, methods, clean.gradcam_layer or cam_layer, positions=pos,
                                     strict=strict)
                for m, v in part.maps.items():
                    sums[m][s:e] += v.reshape(reps, e - s, *v.shape[1:]).sum(0)
            done += reps
        clean.maps = {m: v / samples for m, v in sums.items()}
        clean.extra.update(smooth=samples, noise=noise)
        return clean


def _zeros_if_none(g: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor:
    return torch.zeros_like(like) if g is None else g


def _gradcam(act: torch.Tensor, grad: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """``relu(sum_c mean_hw(grad_c) * act_c)`` upsampled to ``size``: ``(N, 1, *size)``."""
    weights = grad.mean(dim=(2, 3), keepdim=True)
    cam = torch.relu((weights * act.detach()).sum(dim=1, keepdim=True))
    if tuple(cam.shape[2:]) != tuple(size):
        cam = F.interpolate(cam, size=tuple(size), mode="bilinear", align_corners=False)
    return cam


def _logits_of(output: Any) -> torch.Tensor:
    if isinstance(output, torch.Tensor):
        return output
    logits = getattr(output, "logits", None)
    if isinstance(logits, torch.Tensor):
        return logits
    raise ModelError(
        f"the model returned {type(output).__name__}, not a logits tensor; wrap it in a module whose "
        f"forward returns the (N, classes) logits"
    )


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
    explains each sample's top-1 class; an int or N ints give class indices. With ``TopK(k)``
    or an ``(N, K)`` target the result is ``(N, K, *x.shape[1:])``. ``options`` go to
    :meth:`Explainer.explain` (``smooth``, ``noise``, ``gradcam_layer``...) or, for
    ``eval_mode``, to :class:`Explainer`.
    """
    eval_mode = options.pop("eval_mode", True)
    if not isinstance(method, str):
        raise UnknownNameError("method", str(method), METHODS,
                               hint="attribute() takes one method; use Explainer for several")
    name = get_method(method).name
    result = Explainer(model, eval_mode=eval_mode).explain(x, target, methods=(name,), **options)
    maps = result.maps[name]
    if maps.shape[1] == 1 and not isinstance(target, TopK) and not (
        isinstance(target, torch.Tensor) and target.ndim == 2
    ):
        return maps[:, 0]
    return maps
