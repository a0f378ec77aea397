"""Every check on one model and input batch, in one call: what ``guided-backprop evaluate`` computes."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Literal

import torch
from torch import nn

from ..errors import TargetError, UnknownNameError
from ..hooks import model_state
from ..methods import parse_methods
from ..targets import OUTPUT_TARGETS, Box, Context, Region, Score, Scored, Similarity, TopK, select_output
from .class_sensitivity import class_sensitivity
from .complexity import efficient_mprt
from .faithfulness import deletion_insertion
from .randomization import Smoothing, explain_all, model_logits, model_randomization
from .results import Evaluation
from .similarity import METRICS, parse_metrics

__all__ = ["CHECKS", "DEFAULT_CHECKS", "OutputOf", "ScoreOf", "explained_scores", "is_output_target", "parse_checks",
           "run_checks", "with_output"]

#: The checks :func:`run_checks` can run, in the order they run.
CHECKS: tuple[str, ...] = ("randomization", "emprt", "smprt", "class", "deletion", "insertion")
#: What runs when no check is named (Smooth MPRT costs SmoothGrad's samples at every step: asked for).
DEFAULT_CHECKS: tuple[str, ...] = ("randomization", "emprt", "class", "deletion", "insertion")
_ALIASES = {"randomisation": "randomization", "random": "randomization", "mprt": "randomization",
            "efficient_mprt": "emprt", "smooth_mprt": "smprt",
            "class_sensitivity": "class", "classes": "class", "random_logit": "class"}
#: Smooth MPRT's SmoothGrad (Hedström et al. 2023 and Quantus's SmoothMPRT: 50 samples, noise 0.1 of the range).
SMOOTH_SAMPLES, SMOOTH_NOISE = 50, 0.1

#: ``progress(check, done, total)``: called as each check advances.
CheckProgress = Callable[[str, int, int], None]


def parse_checks(checks: str | Sequence[str]) -> tuple[str, ...]:
    """Normalise check names (``"randomisation"``, ``"class-sensitivity"``...), in :data:`CHECKS` order."""
    if isinstance(checks, str):
        checks = [c for c in checks.split(",") if c.strip()]
    keys = []
    for c in checks:
        key = str(c).strip().lower().replace("-", "_")
        key = _ALIASES.get(key, key)
        if key not in CHECKS:
            raise UnknownNameError("check", str(c), CHECKS)
        keys.append(key)
    if not keys:
        raise UnknownNameError("check", "", CHECKS, hint="give at least one check")
    return tuple(c for c in CHECKS if c in keys)


class OutputOf(nn.Module):
    """``model`` whose forward returns ``select_output(model(x), output)``: the class logits of a model
    that returns a dict, a tuple or an object (``output="logits"``, an index, or a callable).

    Its submodules, parameters and buffers are ``model``'s own under the same names, so that the checks
    re-initialise, hook and name layers as they would on ``model`` (a deep copy keeps them shared).
    """

    inner: nn.Module

    def __init__(self, model: nn.Module, output: Any) -> None:
        super().__init__()
        object.__setattr__(self, "inner", model)  # not a submodule: its children are registered as ours
        self.output = output
        for name, child in model.named_children():
            self.add_module(name, child)
        for name, p in model.named_parameters(recurse=False):
            self.register_parameter(name, p)
        for name, b in model.named_buffers(recurse=False):
            self.register_buffer(name, b)
        self.training = model.training

    def train(self, mode: bool = True) -> OutputOf:
        self.inner.train(mode)
        return super().train(mode)

    def forward(self, x: torch.Tensor) -> Any:
        return select_output(self.inner(x), self.output)


def with_output(model: nn.Module, output: Any) -> nn.Module:
    """``model`` itself, or (``output`` given) :class:`OutputOf` it."""
    return model if output is None else OutputOf(model, output)


def is_output_target(target: Any) -> bool:
    """True for a target that is a function of the output (``gbp.Region``, ``gbp.Box``, ``gbp.Output``,
    ``gbp.Similarity``, ``gbp.Score`` or a callable); False for a class (``None``, an index, a name, top-k)."""
    return isinstance(target, OUTPUT_TARGETS) or (callable(target) and not isinstance(target, (TopK, str, int)))


def _resolved(target: Any, model: Callable[[torch.Tensor], Any], x: torch.Tensor) -> Any:
    """``target`` as an output target, a Similarity's reference input replaced by its embedding under ``model``
    (whose forward gives the output the targets read)."""
    t = target if isinstance(target, OUTPUT_TARGETS) else Score(target)
    if not isinstance(t, Similarity):
        return t
    ref = t.reference
    if isinstance(ref, torch.Tensor) and ref.is_floating_point() and (t.is_input or (
            t.is_input is None and tuple(ref.shape[-3:]) == tuple(x.shape[1:]) and ref.ndim in (3, 4))):
        if t.layer is not None:
            raise TargetError("evaluate explains a Similarity of the model's output, not of a layer's: give "
                              "Similarity(reference) without layer=", field="target")
        with torch.no_grad():
            emb = model((ref if ref.ndim == x.ndim else ref[None]).to(x.device, x.dtype))
        if not isinstance(emb, torch.Tensor):
            raise TargetError(f"Similarity: the reference's output is {type(emb).__name__}, not a tensor; choose "
                              f"one with output=", field="target")
        t = Similarity(emb.detach())
    return t


class ScoreOf(OutputOf):
    """``model`` whose forward returns the explained score of an output ``target`` as ``(N, 1)`` "logits"
    (class 0 is the target): the randomisation checks explain it as a class, with the rules of every method
    applied to ``model``'s own layers (same names, as :class:`OutputOf`). ``target`` is meant to be frozen
    (:func:`explained_scores`: a region's pixels, a detection's box fixed on the trained model), so that every
    randomised network explains the same score; a Similarity's reference input is embedded by the network
    at hand."""

    def __init__(self, model: nn.Module, output: Any, target: Any) -> None:
        super().__init__(model, output)
        self.target = target

    def forward(self, x: torch.Tensor) -> Any:
        def selected(v: torch.Tensor) -> Any:
            return select_output(self.inner(v), self.output)

        t = _resolved(_first(self.target, x.shape[0]), selected, x)
        got = t.evaluate(selected(x), Context(n=x.shape[0], input_size=tuple(x.shape[2:]), layers={}))
        return got.scores[:, None]


def explained_scores(model: nn.Module, x: torch.Tensor, target: Any, *, output: Any = None) -> Scored:
    """The output ``target``'s scores on ``x`` (eval mode, no gradients), with ``frozen`` the target whose
    choices on this output are fixed (never ``None``): the target :func:`run_checks` explains at every step.
    ``found`` is False (and ``details[i]["reason"]`` says why) where an image has nothing to explain: no
    matching detection, or an empty region."""
    base = with_output(model, output)
    with model_state(base), torch.no_grad():
        t = _resolved(target, base, x)
        got = t.evaluate(base(x), Context(n=x.shape[0], input_size=tuple(x.shape[2:]), layers={}))
    got.frozen = got.frozen if got.frozen is not None else t
    if isinstance(t, Region):  # an empty region explains nothing: its map would be all zeros
        empty = torch.tensor([d.get("pixels") == 0 for d in got.details], device=got.found.device)
        got.found = got.found & ~empty
        for d, e in zip(got.details, empty.tolist()):
            if e:
                d["reason"] = f"no pixel of class {d.get('class')} in the region"
    return got


def _first(frozen: Any, m: int) -> Any:
    """A frozen target for the first ``m`` of its samples (a probe of the model runs on a prefix of the batch)."""
    if isinstance(frozen, Region) and isinstance(frozen.mask, torch.Tensor) and frozen.mask.ndim == 3:
        return Region(frozen.cls, frozen.mask[:m])
    if isinstance(frozen, Box) and frozen.box is not None and torch.as_tensor(frozen.box).ndim == 2:
        label = list(frozen.label)[:m] if isinstance(frozen.label, (list, tuple)) else frozen.label
        return Box(box=torch.as_tensor(frozen.box)[:m], label=label, iou=frozen.iou)
    return frozen


def _image_target(frozen: Any, i: int) -> Any:
    """The part of a frozen target (one mask or box per sample) that belongs to sample ``i``."""
    if isinstance(frozen, Region) and isinstance(frozen.mask, torch.Tensor) and frozen.mask.ndim == 3:
        return Region(frozen.cls, frozen.mask[i])
    if isinstance(frozen, Box) and frozen.box is not None and torch.as_tensor(frozen.box).ndim == 2:
        label = frozen.label[i] if isinstance(frozen.label, (list, tuple)) else frozen.label
        return Box(box=torch.as_tensor(frozen.box)[i], label=label, iou=frozen.iou)
    if isinstance(frozen, Similarity) and isinstance(frozen.reference, torch.Tensor) and \
            frozen.reference.ndim > 1 and frozen.reference.shape[0] > 1:
        return Similarity(frozen.reference[i:i + 1])
    return frozen


def _title(target: Any) -> str:
    t = target if isinstance(target, OUTPUT_TARGETS) else Score(target)
    return str(t.title)


def run_checks(
    model: nn.Module,
    x: torch.Tensor,
    *,
    methods: str | Sequence[str] = ("guided_backprop", "saliency", "gradcam"),
    checks: str | Sequence[str] = DEFAULT_CHECKS,
    order: Literal["cascading", "independent"] = "cascading",
    granularity: str | Sequence[str] = "blocks",
    metrics: Sequence[str] = METRICS,
    seed: int = 0,
    steps: int = 32,
    batch_size: int = 16,
    gradcam_layer: str | None = None,
    model_name: str = "model",
    image_names: Sequence[str] | None = None,
    maps_image: int | None = 0,
    image_ids: Sequence[int] | None = None,
    smooth_samples: int = SMOOTH_SAMPLES,
    smooth_noise: float = SMOOTH_NOISE,
    trained_maps: dict[str, torch.Tensor] | None = None,
    progress: CheckProgress | None = None,
    output: str | int | Callable[[Any], Any] | None = None,
    target: Any = None,
) -> Evaluation:
    """Run ``checks`` on ``model`` and the preprocessed batch ``x`` ``(N, C, H, W)``.

    Randomisation: :func:`.randomization.model_randomization`; ``"emprt"``:
    :func:`.complexity.efficient_mprt`; ``"smprt"``: model randomisation of SmoothGrad maps
    (``smooth_samples``, ``smooth_noise``); ``"class"``: :func:`.class_sensitivity.class_sensitivity`;
    ``"deletion"`` / ``"insertion"``: :func:`.faithfulness.deletion_insertion` of the trained model's
    maps (``steps`` equal steps). Every check explains the class the trained model predicts.
    ``image_ids`` (default ``0..N-1``) seed each image's random draws, so that an image gets the same
    numbers whichever batch it is evaluated in. ``maps_image``: the image whose maps the figure
    shows (``None``: none). The trained model's maps are computed once for every check
    (``trained_maps``: given, of the predicted classes). ``output``: the entry of a dict / tuple output
    (or an object's attribute, or a callable) that holds the class logits, as ``attribute(output=...)``.
    ``target``: ``None`` (each image's predicted class), a class index, or an output target
    (``gbp.Region``, ``gbp.Box``, ``gbp.Output``, ``gbp.Similarity``, ``gbp.Score`` or a callable; ``output``
    then picks what it reads): every check explains that score, fixed on the trained model (a region's pixels,
    a detection's box), deletion / insertion follow it raw (never a softmax), and the maps are computed for
    the whole batch at once. Class sensitivity compares classes: asked with an output target, it is a
    :class:`~guided_backprop.errors.TargetError` (``field="checks"``), as is an image with nothing to
    explain (no matching detection). ``model`` is never modified.
    """
    names = parse_methods(methods)
    wanted = parse_checks(checks)
    kept_metrics = parse_metrics(metrics)
    base = with_output(model, output)
    scored: Scored | None = None
    if is_output_target(target):
        if "class" in wanted:
            raise TargetError(f"class sensitivity compares the maps of classes; the target {_title(target)!r} is "
                              f"not a class: leave 'class' out of the checks", field="checks")
        scored = explained_scores(model, x, target, output=output)
        missing = [i for i, found in enumerate(scored.found.tolist()) if not found]
        if missing:
            shown = "; ".join(f"image {i}: {scored.details[i].get('reason', 'nothing to explain')}"
                              for i in missing[:3])
            raise TargetError(f"the target {_title(target)!r} has nothing to explain on {len(missing)} image(s) "
                              f"({shown}): leave them out", field="target")
        model = ScoreOf(model, output, scored.frozen)
        batch_size = max(int(batch_size), x.shape[0])  # the frozen target holds one mask / box per sample
    else:
        if isinstance(target, (TopK, str)) or isinstance(target, bool):
            raise TargetError(f"run_checks explains one class per image, given by its index; got {target!r}",
                              field="target")
        model = base
    logits = model_logits(model, x, batch_size=batch_size)
    classes = logits.argmax(dim=1) if target is None or scored is not None else \
        torch.full((x.shape[0],), int(target), dtype=torch.long, device=logits.device)
    result = Evaluation(model=model_name, images=list(image_names or [f"image {i}" for i in range(x.shape[0])]),
                        seed=seed)
    if scored is not None:
        result.target = {"explained": _title(target), "score": "raw (never a softmax probability)",
                         "details": [dict(d) for d in scored.details]}

    def tick(check: str) -> Callable[[int, int], None] | None:
        if progress is None:
            return None
        return lambda done, total: progress(check, done, total)

    ids = list(range(x.shape[0])) if image_ids is None else [int(i) for i in image_ids]
    if trained_maps is None and any(c in wanted for c in ("randomization", "emprt", "deletion", "insertion")):
        trained_maps = _explain_all_from(model, x, classes, names, batch_size, gradcam_layer)
    common: dict[str, Any] = {"methods": names, "granularity": granularity, "seed": seed, "classes": classes,
              "batch_size": batch_size, "gradcam_layer": gradcam_layer}
    if "randomization" in wanted:
        result.randomization = model_randomization(
            model, x, order=order, metrics=kept_metrics, maps_image=maps_image, progress=tick("randomization"),
            trained_maps=trained_maps, **common)
    if "emprt" in wanted:
        result.efficient_mprt = efficient_mprt(model, x, trained_maps=trained_maps, **common)
        if progress is not None:
            progress("emprt", 1, 1)
    if "smprt" in wanted:
        result.smooth_mprt = model_randomization(
            model, x, order=order, metrics=kept_metrics, maps_image=None, progress=tick("smprt"),
            smoothing=Smoothing(samples=int(smooth_samples), noise=float(smooth_noise), seed=seed, ids=tuple(ids)),
            **common)
    if "class" in wanted:
        result.class_sensitivity = class_sensitivity(model, x, methods=names, metrics=kept_metrics, seed=seed,
                                                     logits=logits, batch_size=batch_size,
                                                     gradcam_layer=gradcam_layer, image_ids=ids,
                                                     classes=classes if scored is None and target is not None else None)
        if progress is not None:
            progress("class", 1, 1)
    faithfulness = [c for c in wanted if c in ("deletion", "insertion")]
    if faithfulness:
        assert trained_maps is not None  # computed above for these checks
        maps = {m: v.to(x.device) for m, v in trained_maps.items()}
        per_image = None if scored is None else [_image_target(scored.frozen, i) for i in range(x.shape[0])]
        for mode in faithfulness:
            curve = deletion_insertion(base if per_image else model, x, maps, mode=mode,  # type: ignore[arg-type]
                                       steps=steps, seed=seed, classes=None if per_image else classes,
                                       batch_size=max(batch_size, 32), image_ids=ids, target=per_image)
            setattr(result, mode, curve)
            if progress is not None:
                progress(mode, 1, 1)
    return result


def _explain_all_from(model: nn.Module, x: torch.Tensor, classes: torch.Tensor, methods: tuple[str, ...],
                      batch_size: int, gradcam_layer: str | None) -> dict[str, torch.Tensor]:
    from ..attribution import Explainer

    maps = explain_all(Explainer(model), x, classes.to(x.device), methods, batch_size, gradcam_layer)
    return {m: v.to(x.device) for m, v in maps.items()}
