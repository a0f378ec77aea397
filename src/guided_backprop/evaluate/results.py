"""Typed results of the checks, and their JSON form (the ``evaluation.json`` contract, docs/evaluation.md).

Every per-image value is kept (``numpy`` arrays, images along the first axis), so that a notebook can
look at one image, and the summaries (mean and spread over images) are computed from them.
Undefined correlations are ``nan`` (see :mod:`.similarity`): summaries skip them, and JSON writes
``null`` for a summary with no defined value. The spread is the population standard deviation
(``ddof=0``), so a single image has spread 0.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch

from ..records import (
    EVALUATION_CHECKS,
    ClassSensitivityRecord,
    ComplexityRecord,
    CurveRecord,
    CurveStats,
    EvaluationRecord,
    EvaluationSettings,
    RandomizationRecord,
    Stat,
    StepStats,
)

__all__ = ["ClassSensitivityResult", "ComplexityResult", "CurveResult", "Evaluation", "RandomizationResult", "Summary",
           "merge", "summarize"]

Order = Literal["cascading", "independent"]


@dataclass(frozen=True)
class Summary:
    """Mean and spread of one value over images; ``n`` counts the images where it is defined."""

    mean: float
    std: float
    n: int

    def to_record(self) -> Stat:
        return Stat(mean=_num(self.mean), std=_num(self.std), n=self.n)

    def to_json(self) -> dict[str, Any]:
        return self.to_record().to_json()


def summarize(values: np.ndarray) -> Summary:
    """Mean and population std of ``values`` along axis 0, skipping ``nan`` (scalars for a 1-D array)."""
    a = np.asarray(values, dtype=np.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-nan slices: nan, said in the docstring
        return Summary(mean=float(np.nanmean(a)) if a.size else math.nan,
                       std=float(np.nanstd(a)) if a.size else math.nan,
                       n=int(np.isfinite(a).sum()))


def _per_step(values: np.ndarray) -> StepStats:
    """The summaries of an ``(images, steps)`` array, one entry per step."""
    stats = [summarize(values[:, j]) for j in range(values.shape[1])]
    return StepStats(mean=[_num(s.mean) for s in stats], std=[_num(s.std) for s in stats], n=[s.n for s in stats])


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
    smooth: dict[str, Any] = field(default_factory=dict)  # Smooth MPRT: {"samples": int, "noise": float}
    #: ``constant[method]``: ``(images, steps)``, True where the map became constant (all values equal,
    #: e.g. all zero): its Spearman and HOG values are undefined, and that is a finding in itself.
    constant: dict[str, np.ndarray] = field(default_factory=dict)

    def summary(self, method: str, metric: str) -> list[Summary]:
        """Mean and spread over images of one method and metric, one per step."""
        a = self.values[method][metric]
        return [summarize(a[:, j]) for j in range(a.shape[1])]

    def to_record(self) -> RandomizationRecord:
        return RandomizationRecord(
            order=self.order, granularity=self.granularity, steps=list(self.steps),
            methods={m: {k: _per_step(v) for k, v in per.items()} for m, per in self.values.items()},
            constant_maps={m: [int(v) for v in c.sum(axis=0)] for m, c in self.constant.items()},
            smoothgrad=dict(self.smooth) if self.smooth else None)

    def to_json(self) -> dict[str, Any]:
        return self.to_record().to_json()


@dataclass
class ClassSensitivityResult:
    """Class sensitivity (Nie et al. 2018, arXiv:1805.07039; the random-logit test of Sixt et al. 2020).

    The similarity of each image's map for its predicted class with its map for another class:
    ``values["random"][method][metric]`` (a random other class, seeded) and
    ``values["second"][method][metric]`` (the second-ranked class), each ``(images,)``. ``explained``: the
    class whose map was compared when it is not the predicted one (a class index as the target), and
    then "second" is the highest-ranked class other than it.
    """

    methods: tuple[str, ...]
    metrics: tuple[str, ...]
    predicted: list[int]
    random_classes: list[int]
    second_classes: list[int]
    values: dict[str, dict[str, dict[str, np.ndarray]]]
    seed: int = 0
    explained: list[int] | None = None

    def to_record(self) -> ClassSensitivityRecord:
        def block(kind: str) -> dict[str, dict[str, Stat]]:
            return {m: {k: summarize(v).to_record() for k, v in per.items()} for m, per in self.values[kind].items()}

        return ClassSensitivityRecord(
            against="random", methods=block("random"), second_ranked=block("second"),
            classes={"predicted": list(self.predicted), "random": list(self.random_classes),
                     "second": list(self.second_classes),
                     **({} if self.explained is None else {"explained": list(self.explained)})})

    def to_json(self) -> dict[str, Any]:
        return self.to_record().to_json()


@dataclass
class CurveResult:
    """Deletion or insertion (Petsiuk et al. 2018, arXiv:1806.07421).

    ``fractions`` are the shares of pixels removed (deletion) or inserted (insertion) at each step,
    0 to 1. ``curves[method]`` is ``(images, steps + 1)``: the softmax probability of the class the
    model predicted on the intact image (or, ``classes`` all -1, an output target's raw score: see
    :attr:`follows`); ``random`` the same for a random pixel order. ``auc``:
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
    def follows(self) -> Literal["probability", "score"]:
        """What the curves follow: a class's softmax ``"probability"`` or an output target's raw ``"score"``."""
        return "score" if self.classes and all(c == -1 for c in self.classes) else "probability"

    @property
    def auc(self) -> dict[str, np.ndarray]:
        """Per method, the ``(images,)`` areas under the curves."""
        return {m: _auc(c, self.fractions) for m, c in self.curves.items()}

    @property
    def random_auc(self) -> np.ndarray:
        """The ``(images,)`` areas under the random-order curves."""
        return _auc(self.random, self.fractions)

    def to_record(self) -> CurveRecord:
        return CurveRecord(
            methods={m: CurveStats(auc=summarize(a).to_record(), curve=_per_step(self.curves[m]))
                     for m, a in self.auc.items()},
            random=CurveStats(auc=summarize(self.random_auc).to_record(), curve=_per_step(self.random)),
            fractions=[float(f) for f in self.fractions], follows=self.follows)

    def to_json(self) -> dict[str, Any]:
        return self.to_record().to_json()


def _auc(curves: np.ndarray, fractions: np.ndarray) -> np.ndarray:
    c = np.asarray(curves, dtype=np.float64)
    widths = np.diff(fractions)
    return ((c[:, 1:] + c[:, :-1]) * 0.5 * widths).sum(axis=1)


@dataclass
class ComplexityResult:
    """Efficient MPRT (Hedström et al. 2023, "Sanity Checks Revisited", arXiv:2401.06465).

    The complexity of a map is the discrete entropy (natural log) of the histogram of ``|map|`` summed
    over channels, in ``bins`` equal bins over its own range (``np.histogram``; Quantus's
    ``discrete_entropy``): 0 for a constant map, ``log(bins)`` at most. ``trained[method]`` and
    ``randomized[method]`` are ``(images,)``: the complexity of each image's map from the trained
    model and from the model with every step of ``steps`` re-initialised (cascading to the end).
    The score, :attr:`rise`, is the relative rise ``(randomized - trained) / trained`` (Quantus's
    ``EfficientMPRT``): a method whose maps depend on the weights turns noisy, so high is good;
    ``nan`` where the trained map is constant.
    """

    methods: tuple[str, ...]
    trained: dict[str, np.ndarray]
    randomized: dict[str, np.ndarray]
    steps: list[str]
    classes: list[int]
    granularity: str = "blocks"
    bins: int = 100
    seed: int = 0

    @property
    def rise(self) -> dict[str, np.ndarray]:
        """Per method, the ``(images,)`` relative rises in complexity (``nan`` where undefined)."""
        out = {}
        for m in self.methods:
            a, b = np.asarray(self.trained[m], np.float64), np.asarray(self.randomized[m], np.float64)
            with np.errstate(divide="ignore", invalid="ignore"):
                out[m] = np.where(a > 0, (b - a) / np.where(a > 0, a, 1.0), np.nan)
        return out

    def to_record(self) -> ComplexityRecord:
        rise = self.rise
        return ComplexityRecord(
            methods={m: {"complexity_rise": summarize(rise[m]).to_record(),
                         "complexity_trained": summarize(self.trained[m]).to_record(),
                         "complexity_randomized": summarize(self.randomized[m]).to_record()}
                     for m in self.methods},
            bins=self.bins, granularity=self.granularity, randomized_blocks=len(self.steps))

    def to_json(self) -> dict[str, Any]:
        return self.to_record().to_json()


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
    efficient_mprt: ComplexityResult | None = None
    smooth_mprt: RandomizationResult | None = None
    failed: dict[str, str] = field(default_factory=dict)
    passed_over: dict[str, str] = field(default_factory=dict)  # inputs never opened, and why
    settings: EvaluationSettings | None = None  # how the run went, in words (evaluate_folder sets it)
    #: what was explained when not a class: ``{"explained", "score", "details": [one dict per image]}``
    target: dict[str, Any] | None = None
    not_explained: dict[str, str] = field(default_factory=dict)  # images with nothing to explain, and why

    def to_record(self, figures: dict[str, str] | None = None) -> EvaluationRecord:
        """The ``evaluation.json`` record (checks not run are ``None``), with the ``figures`` written beside it."""
        checks = {key: getattr(self, key).to_record() for key in EVALUATION_CHECKS if getattr(self, key) is not None}
        return EvaluationRecord(model=self.model, images=len(self.images), seed=self.seed, inputs=list(self.images),
                                **checks, failed=dict(self.failed), passed_over=dict(self.passed_over),
                                settings=self.settings,
                                target=None if self.target is None else {
                                    **self.target, "details": dict(zip(self.images, self.target["details"]))},
                                not_explained=dict(self.not_explained), figures=dict(figures or {}))

    def to_json(self) -> dict[str, Any]:
        """The ``evaluation.json`` contract: checks not run are absent."""
        return self.to_record().to_json()


def _joined(values: list[Any], perm: np.ndarray) -> Any:
    """One value from the same value of every part: arrays (images first) and lists joined, then put in
    ``perm`` order; dictionaries joined key by key; anything else taken from the first part."""
    first = values[0]
    if isinstance(first, dict):
        return {k: _joined([v[k] for v in values], perm) for k in first}
    if isinstance(first, np.ndarray):
        return np.concatenate(values, axis=0)[perm]
    if isinstance(first, list) and all(isinstance(v, list) for v in values) and \
            sum(len(v) for v in values) == len(perm):
        joined = [item for v in values for item in v]
        return [joined[i] for i in perm]
    return first


_PER_IMAGE = {RandomizationResult: ("values", "constant", "classes"),
              ClassSensitivityResult: ("values", "predicted", "random_classes", "second_classes", "explained"),
              CurveResult: ("curves", "random", "classes"),
              ComplexityResult: ("trained", "randomized", "classes")}


def merge(parts: list[tuple[list[int], Evaluation]]) -> Evaluation:
    """One :class:`Evaluation` from evaluations of disjoint groups of images (e.g. batches of one size).

    Each part comes with the positions of its images (any sortable numbers, e.g. their index among
    the inputs); the result lists every image in position order, and keeps the figure maps of the
    part that has them. The parts must have run the same checks on the same model.
    """
    if not parts:
        raise ValueError("merge needs at least one evaluation")
    positions = np.concatenate([np.asarray(pos, dtype=np.int64) for pos, _ev in parts])
    perm = np.argsort(positions, kind="stable")
    evs = [ev for _pos, ev in parts]
    out = Evaluation(model=evs[0].model, images=[evs[0].images[0]], seed=evs[0].seed)
    out.images = _joined([list(ev.images) for ev in evs], perm)
    if evs[0].target is not None:
        out.target = {**evs[0].target, "details": _joined([list(ev.target["details"]) for ev in evs
                                                           if ev.target is not None], perm)}
    for key in EVALUATION_CHECKS:
        results = [getattr(ev, key) for ev in evs]
        if results[0] is None:
            continue
        fields = {f: _joined([getattr(r, f) for r in results], perm) for f in _PER_IMAGE[type(results[0])]}
        merged = dataclasses.replace(results[0], **fields)
        if isinstance(merged, RandomizationResult):
            offsets = np.cumsum([0] + [len(ev.images) for ev in evs])
            holder = [i for i, r in enumerate(results) if r.maps]
            merged.maps = results[holder[0]].maps if holder else {}
            if holder:  # the image's new place among all images
                merged.maps_image = int(np.flatnonzero(perm == offsets[holder[0]] + results[holder[0]].maps_image)[0])
        setattr(out, key, merged)
    for ev in evs:
        out.failed.update(ev.failed)
        out.passed_over.update(ev.passed_over)
    return out
