"""The registry of attribution methods: one home for a method's name, aliases, title, rule and drawing.

Every module that needs to know something about a method (the engine, the renderer, the unit
grids, the report, the CLI) asks this registry, the way timm's model registry is the one place
that knows its models. Names are parsed once, at the edge, by :func:`parse_methods`.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass

from .errors import UnknownNameError

__all__ = ["METHODS", "REGISTRY", "Drawing", "MethodSpec", "Rule", "get_method", "method_title", "parse_methods"]


class Rule(str, enum.Enum):
    """The ReLU backward rule of a gradient method (:mod:`.rules` implements them).

    Named here, beside the methods that use them, so that the registry (and the command line's
    ``--help``, which lists the methods) loads without torch.
    """

    SALIENCY = "saliency"
    DECONVNET = "deconvnet"
    GUIDED_BACKPROP = "guided_backprop"


class Drawing(str, enum.Enum):
    """How a method's map is turned into a picture."""

    MAP = "map"  # a (C, H, W) map drawn with the chosen normalisation (render.map_to_image)
    HEATMAP = "heatmap"  # a one-channel, non-negative map drawn as a heat map over the input


@dataclass(frozen=True)
class MethodSpec:
    """One attribution method.

    ``rule``: the ReLU backward rule its backward pass uses (``None``: Grad-CAM, which only needs
    the plain gradient at its layer). ``gradcam``: whether it needs the Grad-CAM of its target.
    """

    name: str
    title: str
    paper: str
    rule: Rule | None
    gradcam: bool
    drawing: Drawing
    aliases: tuple[str, ...] = ()


REGISTRY: dict[str, MethodSpec] = {
    spec.name: spec
    for spec in (
        MethodSpec("guided_backprop", "Guided backprop", "Springenberg et al. 2014, arXiv:1412.6806",
                   Rule.GUIDED_BACKPROP, False, Drawing.MAP, ("gbp", "guided", "guided_backpropagation")),
        MethodSpec("deconvnet", "Deconvnet", "Zeiler & Fergus 2013, arXiv:1311.2901",
                   Rule.DECONVNET, False, Drawing.MAP, ("deconv",)),
        MethodSpec("saliency", "Saliency", "Simonyan et al. 2013, arXiv:1312.6034",
                   Rule.SALIENCY, False, Drawing.MAP, ("gradient", "vanilla")),
        MethodSpec("gradcam", "Grad-CAM", "Selvaraju et al. 2017, arXiv:1610.02391",
                   None, True, Drawing.HEATMAP, ("grad_cam",)),
        MethodSpec("guided_gradcam", "Guided Grad-CAM", "Selvaraju et al. 2017, arXiv:1610.02391",
                   Rule.GUIDED_BACKPROP, True, Drawing.MAP, ("guided_grad_cam", "ggcam")),
    )
}

#: Every method name, in display order.
METHODS: tuple[str, ...] = tuple(REGISTRY)

_LOOKUP: dict[str, str] = {
    key: spec.name for spec in REGISTRY.values() for key in (spec.name, *spec.aliases)
}


def _key(name: str) -> str:
    return str(name).strip().lower().replace("-", "_").replace(" ", "_")


def get_method(name: str | MethodSpec) -> MethodSpec:
    """A method by name or alias (``"guided-backprop"``, ``"gbp"``, ``"Grad-CAM"``...)."""
    if isinstance(name, MethodSpec):
        return name
    if isinstance(name, Rule):
        return REGISTRY[name.value]
    found = _LOOKUP.get(_key(name))
    if found is None:
        hint = ""
        if "smooth" in _key(name):  # SmoothGrad averages any method's maps: an option, not a method
            hint = ("SmoothGrad is an option of every method, not a method: smooth=N noisy copies, "
                    "e.g. smooth=25 with method='guided_backprop'")
        raise UnknownNameError("method", str(name), METHODS, hint=hint)
    return REGISTRY[found]


def parse_methods(methods: str | Rule | MethodSpec | Sequence[str | Rule | MethodSpec]) -> tuple[str, ...]:
    """Normalise method names, keep their order, drop repeats. At least one is needed."""
    if isinstance(methods, (str, Rule, MethodSpec)):
        methods = [methods]
    out: list[str] = []
    for m in methods:
        name = get_method(m).name
        if name not in out:
            out.append(name)
    if not out:
        raise UnknownNameError("method", "", METHODS, hint="give at least one method")
    return tuple(out)


def method_title(name: str) -> str:
    """The display title of a method (``"Guided backprop"``); an unknown key is returned as it is."""
    found = _LOOKUP.get(_key(name))
    return REGISTRY[found].title if found else name
