"""Every check on one model and input batch, in one call: what ``guided-backprop evaluate`` computes."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Literal

import torch
from torch import nn

from ..errors import UnknownNameError
from ..methods import parse_methods
from ..targets import select_output
from .class_sensitivity import class_sensitivity
from .complexity import efficient_mprt
from .faithfulness import deletion_insertion
from .randomization import Smoothing, _explain_all, model_logits, model_randomization
from .results import Evaluation
from .similarity import METRICS, parse_metrics

__all__ = ["CHECKS", "DEFAULT_CHECKS", "OutputOf", "parse_checks", "run_checks", "with_output"]

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
    ``model`` is never modified.
    """
    model = with_output(model, output)
    names = parse_methods(methods)
    wanted = parse_checks(checks)
    kept_metrics = parse_metrics(metrics)
    logits = model_logits(model, x, batch_size=batch_size)
    classes = logits.argmax(dim=1)
    result = Evaluation(model=model_name, images=list(image_names or [f"image {i}" for i in range(x.shape[0])]),
                        seed=seed)

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
                                                     gradcam_layer=gradcam_layer, image_ids=ids)
        if progress is not None:
            progress("class", 1, 1)
    faithfulness = [c for c in wanted if c in ("deletion", "insertion")]
    if faithfulness:
        assert trained_maps is not None  # computed above for these checks
        maps = {m: v.to(x.device) for m, v in trained_maps.items()}
        for mode in faithfulness:
            curve = deletion_insertion(model, x, maps, mode=mode, steps=steps, seed=seed,  # type: ignore[arg-type]
                                       classes=classes, batch_size=max(batch_size, 32), image_ids=ids)
            setattr(result, mode, curve)
            if progress is not None:
                progress(mode, 1, 1)
    return result


def _explain_all_from(model: nn.Module, x: torch.Tensor, classes: torch.Tensor, methods: tuple[str, ...],
                      batch_size: int, gradcam_layer: str | None) -> dict[str, torch.Tensor]:
    from ..attribution import Explainer

    maps = _explain_all(Explainer(model), x, classes.to(x.device), methods, batch_size, gradcam_layer)
    return {m: v.to(x.device) for m, v in maps.items()}
