"""Typed results of the checks, and their JSON form (the ``evaluation.json`` contract, docs/evaluation.md).

Every per-image value is kept (``numpy`` arrays, images along the first axis), so that a notebook can
look at one image, and the summaries (mean and spread over images) are computed from them.
Undefined correlations are ``nan`` (see :mod:`.similarity`): summaries skip them, and JSON writes
``null`` for a summary with no defined value. The spread is the population standard deviation
(``ddof=0``), so a single image has spread 0.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch

__all__ = ["ClassSensitivityResult", "CurveResult", "Evaluation", "RandomizationResult", "Summary", "summarize"]

Order = Literal["cascading", "independent"]


@dataclass(frozen=True)
class Summary:
    """Mean and spread of one value over images; ``n`` counts the images where it is defined."""

    mean: float
    std: float
    n: int

    def to_json(self) -> dict[str, Any]:
        return {"mean": _num(self.mean), "std": _num(self.std), "n": self.n}


def summarize(values: np.ndarray) -> Summary:
    """Mean and population std of ``values`` along axis 0, skipping ``nan`` (scalars for a 1-D array)."""
    a = np.asarray(values, dtype=np.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-nan slices: nan, said in the docstring
        return Summary(mean=float(np.nanmean(a)) if a.size else math.nan,
                       std=float(np.nanstd(a)) if a.size else math.nan,
                       n=int(np.isfinite(a).sum()))


def _per_step(values: np.ndarray) -> dict[str, Any]:
    """``{"mean": [...], "std": [...], "n": [...]}`` of an ``(images, steps)`` array, one entry per step."""
    stats = [summarize(values[:, j]) for j in range(values.shape[1])]
    return {"mean": [_num(s.mean) for s in stats], "std": [_num(s.std) for s in stats], "n": [s.n for s in stats]}


def _num(value: float) -> float | None:
    return None if value is None or not math.isfinite(value) else float(value)


@dataclass
class RandomizationResult:
    """Model-parameter randomisation (Adebayo et al. 2018, arXiv:1810.03292, section 3).

    ``steps[0]`` is ``"original"``; ``steps[j]`` names the block re-initialised at step ``j``
    (cascading: it and every block before it in ``steps``; independent: it alone).
    ``values[method][metric]`` is ``(images, steps)``: the similarity of each image's map at that
    step with its map from the trained model. ``maps[method]`` holds the maps of image
    ``maps_image`` at every step, ``(steps, C, H, W)``, for the figures. ``classes`` are the
    explained classes (the trained model's predictions).
    """

    order: Order
    granularity: str
    steps: list[str]
    methods: tuple[str, ...]
    metrics: tuple[str, ...]
    values: dict[str, dict[str, np.ndarray]]
    classes: list[int]
    maps: dict[str, torch.Tensor] = field(default_factory=dict)
    maps_image: int = 0
    seed: int = 0

    def summary(self, method: str, metric: str) -> list[Summary]:
        """Mean and spread over images of one method and metric, one per step."""
        a = self.values[method][metric]
        return [summarize(a[:, j]) for j in range(a.shape[1])]

    def to_json(self) -> dict[str, Any]:
        return {
            "order": self.order,
            "granularity": self.granularity,
            "steps": list(self.steps),
            "methods": {m: {k: _per_step(v) for k, v in per.items()} for m, per in self.values.items()},
        }


@dataclass
class ClassSensitivityResult:
    """Class sensitivity (Nie et al. 2018, arXiv:1805.07039; the random-logit test of Sixt et al. 2020).

    The similarity of each image's map for its predicted class with its map for another class:
    ``values["random"][method][metric]`` (a random other class, seeded) and
    ``values["second"][method][metric]`` (the second-ranked class), each ``(images,)``.
    """

    methods: tuple[str, ...]
    metrics: tuple[str, ...]
    predicted: list[int]
    random_classes: list[int]
    second_classes: list[int]
    values: dict[str, dict[str, dict[str, np.ndarray]]]
    seed: int = 0

    def to_json(self) -> dict[str, Any]:
        def block(kind: str) -> dict[str, Any]:
            return {m: {k: summarize(v).to_json() for k, v in per.items()} for m, per in self.values[kind].items()}

        return {
            "against": "random",
            "methods": block("random"),
            "second_ranked": {"methods": block("second")},
            "classes": {"predicted": self.predicted, "random": self.random_classes, "second": self.second_classes},
        }


@dataclass
class CurveResult:
    """Deletion or insertion (Petsiuk et al. 2018, arXiv:1806.07421).

    ``fractions`` are the shares of pixels removed (deletion) or inserted (insertion) at each step,
    0 to 1. ``curves[method]`` is ``(images, steps + 1)``: the softmax probability of the class the
    model predicted on the intact image; ``random`` the same for a random pixel order. ``auc``:
    the area under each curve (trapezoid rule over [0, 1]); low is good for deletion, high for
    insertion.
    """

    mode: Literal["deletion", "insertion"]
    fractions: np.ndarray
    curves: dict[str, np.ndarray]
    random: np.ndarray
    classes: list[int]
    seed: int = 0

    @property
    def auc(self) -> dict[str, np.ndarray]:
        """Per method, the ``(images,)`` areas under the curves."""
        return {m: _auc(c, self.fractions) for m, c in self.curves.items()}

    @property
    def random_auc(self) -> np.ndarray:
        """The ``(images,)`` areas under the random-order curves."""
        return _auc(self.random, self.fractions)

    def to_json(self) -> dict[str, Any]:
        return {
            "methods": {m: {"auc": summarize(a).to_json(), "curve": _per_step(self.curves[m])}
                        for m, a in self.auc.items()},
            "random": {"auc": summarize(self.random_auc).to_json(), "curve": _per_step(self.random)},
            "fractions": [float(f) for f in self.fractions],
        }


def _auc(curves: np.ndarray, fractions: np.ndarray) -> np.ndarray:
    c = np.asarray(curves, dtype=np.float64)
    widths = np.diff(fractions)
    return ((c[:, 1:] + c[:, :-1]) * 0.5 * widths).sum(axis=1)


@dataclass
class Evaluation:
    """Every check run on one model and set of images (what ``guided-backprop evaluate`` writes)."""

    model: str
    images: list[str]
    seed: int
    randomization: RandomizationResult | None = None
    class_sensitivity: ClassSensitivityResult | None = None
    deletion: CurveResult | None = None
    insertion: CurveResult | None = None
    failed: dict[str, str] = field(default_factory=dict)
    passed_over: dict[str, str] = field(default_factory=dict)  # inputs never opened, and why
    settings: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """The ``evaluation.json`` contract: checks not run are absent."""
        out: dict[str, Any] = {"model": self.model, "images": len(self.images), "seed": self.seed,
                               "inputs": list(self.images)}
        for key in ("randomization", "class_sensitivity", "deletion", "insertion"):
            result = getattr(self, key)
            if result is not None:
                out[key] = result.to_json()
        if self.failed:
            out["failed"] = dict(self.failed)
        if self.passed_over:
            out["passed_over"] = dict(self.passed_over)
        if self.settings:
            out["settings"] = dict(self.settings)
        return out
