"""Every check on one model and input batch, in one call: what ``guided-backprop evaluate`` computes."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Literal

import torch
from torch import nn

from ..errors import UnknownNameError
from ..methods import parse_methods
from .class_sensitivity import class_sensitivity
from .faithfulness import deletion_insertion
from .randomization import _explain_all, model_logits, model_randomization
from .results import Evaluation
from .similarity import METRICS, parse_metrics

__all__ = ["CHECKS", "parse_checks", "run_checks"]

#: The checks :func:`run_checks` can run, in the order they run.
CHECKS: tuple[str, ...] = ("randomization", "class", "deletion", "insertion")
_ALIASES = {"randomisation": "randomization", "random": "randomization", "mprt": "randomization",
            "class_sensitivity": "class", "classes": "class", "random_logit": "class"}

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


def run_checks(
    model: nn.Module,
    x: torch.Tensor,
    *,
    methods: str | Sequence[str] = ("guided_backprop", "saliency", "gradcam"),
    checks: str | Sequence[str] = CHECKS,
    order: Literal["cascading", "independent"] = "cascading",
    granularity: str | Sequence[str] = "blocks",
    metrics: Sequence[str] = METRICS,
    seed: int = 0,
    steps: int = 32,
    batch_size: int = 16,
    gradcam_layer: str | None = None,
    model_name: str = "model",
    image_names: Sequence[str] | None = None,
    maps_image: int = 0,
    progress: CheckProgress | None = None,
) -> Evaluation:
    """Run ``checks`` on ``model`` and the preprocessed batch ``x`` ``(N, C, H, W)``.

    Randomisation: :func:`.randomization.model_randomization`; ``"class"``:
    :func:`.class_sensitivity.class_sensitivity`; ``"deletion"`` / ``"insertion"``:
    :func:`.faithfulness.deletion_insertion` of the trained model's maps (``steps`` equal steps).
    Every check explains the class the trained model predicts. ``model`` is never modified.
    """
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

    if "randomization" in wanted:
        result.randomization = model_randomization(
            model, x, methods=names, order=order, granularity=granularity, metrics=kept_metrics, seed=seed,
            classes=classes, batch_size=batch_size, gradcam_layer=gradcam_layer, maps_image=maps_image,
            progress=tick("randomization"))
    if "class" in wanted:
        result.class_sensitivity = class_sensitivity(model, x, methods=names, metrics=kept_metrics, seed=seed,
                                                     logits=logits, batch_size=batch_size,
                                                     gradcam_layer=gradcam_layer)
        if progress is not None:
            progress("class", 1, 1)
    faithfulness = [c for c in wanted if c in ("deletion", "insertion")]
    if faithfulness:
        maps = _explain_all_from(model, x, classes, names, batch_size, gradcam_layer)
        for mode in faithfulness:
            curve = deletion_insertion(model, x, maps, mode=mode, steps=steps, seed=seed,  # type: ignore[arg-type]
                                       classes=classes, batch_size=max(batch_size, 32))
            setattr(result, mode, curve)
            if progress is not None:
                progress(mode, 1, 1)
    return result


def _explain_all_from(model: nn.Module, x: torch.Tensor, classes: torch.Tensor, methods: tuple[str, ...],
                      batch_size: int, gradcam_layer: str | None) -> dict[str, torch.Tensor]:
    from ..attribution import Explainer

    maps = _explain_all(Explainer(model), x, classes.to(x.device), methods, batch_size, gradcam_layer)
    return {m: v.to(x.device) for m, v in maps.items()}
