"""Class sensitivity: does the map change when another class is explained?

Nie et al. 2018 (arXiv:1805.07039) showed that guided backprop and deconvnet largely reconstruct the
image, so that their maps of different classes are nearly the same; Sixt et al. 2020 ("When
Explanations Lie", the random-logit test) measure it as the similarity of the map of the predicted
class with the map of a random other class. Both comparisons are made here, against a random other
class (seeded) and against the second-ranked class, from one forward pass per batch (the three
classes are the three targets of one :meth:`~guided_backprop.Explainer.explain` call); which classes
those are comes from the model's logits (a forward without gradients, or the ``logits`` given).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from ..attribution import Explainer
from ..errors import InputError, TargetError
from ..methods import parse_methods
from .randomization import model_logits
from .results import ClassSensitivityResult
from .similarity import METRICS, Reference, parse_metrics

__all__ = ["class_sensitivity", "image_rng", "random_other_classes"]


def random_other_classes(predicted: Sequence[int], num_classes: int, *, seed: int = 0,
                         image_ids: Sequence[int] | None = None) -> list[int]:
    """One class per sample drawn uniformly from the classes other than its ``predicted`` one.

    Each sample's draw is seeded by ``seed`` and its id (``image_ids``, default ``0..N-1``, e.g. its
    index among a folder's images), so it does not depend on the batch the sample came in.
    """
    if num_classes < 2:
        raise TargetError(f"class sensitivity needs a model with 2 classes or more, this one has {num_classes}")
    ids = range(len(predicted)) if image_ids is None else image_ids
    draws = [int(image_rng(seed, i).integers(0, num_classes - 1)) for i in ids]
    return [int(d + (d >= p)) for d, p in zip(draws, predicted)]  # skip the predicted class


def image_rng(seed: int, image_id: int) -> np.random.Generator:
    """The random generator of one image's draws: seeded by ``seed`` and the image's id."""
    return np.random.default_rng([int(seed) % 2**63, int(image_id) % 2**63])


def class_sensitivity(
    model: nn.Module,
    x: torch.Tensor,
    *,
    methods: str | Sequence[str] = ("guided_backprop", "saliency", "gradcam"),
    metrics: Sequence[str] = METRICS,
    seed: int = 0,
    random_classes: Sequence[int] | None = None,
    logits: torch.Tensor | None = None,
    batch_size: int = 16,
    gradcam_layer: str | None = None,
    image_ids: Sequence[int] | None = None,
    classes: torch.Tensor | Sequence[int] | None = None,
) -> ClassSensitivityResult:
    """Similarity of each image's map for its predicted class (or ``classes``) with its maps for two other
    classes.

    Args:
        model: the network (never modified).
        x: input batch ``(N, C, H, W)``, preprocessed.
        methods: names from :data:`guided_backprop.METHODS`.
        metrics: names from :data:`.similarity.METRICS`.
        seed: seed of the random other classes.
        random_classes: the other class of each sample, instead of random ones (e.g. to match
            another tool's draw).
        logits: the model's ``(N, classes)`` logits for ``x``, when already known (saves a forward).
        image_ids: each image's id for its random draw (:func:`random_other_classes`).
        classes: the class whose map is compared, one per image, when it is not the predicted one (e.g. a
            class index given as the evaluation's target); the random class is drawn from the others and
            the "second" is then the highest-ranked class other than it.
    """
    names = parse_methods(methods)
    wanted = parse_metrics(metrics)
    if not isinstance(x, torch.Tensor) or x.ndim < 2 or x.shape[0] == 0:
        raise InputError("x must be a non-empty (N, C, H, W) tensor")
    if logits is None:
        logits = model_logits(model, x, batch_size=batch_size)
    if logits.ndim != 2 or logits.shape[1] < 2:
        raise TargetError(f"class sensitivity needs (N, classes) logits with 2 classes or more, "
                          f"got shape {tuple(logits.shape)}")
    top2 = logits.topk(2, dim=1).indices.cpu()
    predicted = [int(c) for c in top2[:, 0]]
    if classes is None:
        explained, second = predicted, [int(c) for c in top2[:, 1]]
    else:
        explained = [int(c) for c in torch.as_tensor(classes).reshape(-1).tolist()]
        if len(explained) != x.shape[0] or not all(0 <= c < logits.shape[1] for c in explained):
            raise TargetError(f"classes must hold one class index in [0, {logits.shape[1]}) per image "
                              f"({x.shape[0]}), got {explained[:5]}")
        rest = logits.detach().cpu().clone()  # its own dtype: a cast could tie two close scores
        rest[torch.arange(len(explained)), torch.tensor(explained)] = -float("inf")
        second = [int(c) for c in rest.argmax(dim=1)]  # the highest-ranked class other than the explained one
    if random_classes is None:
        others = random_other_classes(explained, logits.shape[1], seed=seed, image_ids=image_ids)
    else:
        others = [int(c) for c in random_classes]
        if len(others) != x.shape[0]:
            raise TargetError(f"got {len(others)} random_classes for {x.shape[0]} images; give one per image")
    targets = torch.tensor([explained, others, second], dtype=torch.long).T.to(x.device)  # (N, 3)

    explainer = Explainer(model)
    values = {kind: {m: {k: np.full(x.shape[0], np.nan) for k in wanted} for m in names}
              for kind in ("random", "second")}
    for s in range(0, x.shape[0], batch_size):
        maps = explainer.explain(x[s:s + batch_size], targets[s:s + batch_size], methods=names,
                                 gradcam_layer=gradcam_layer).maps
        for m in names:
            for i in range(maps[m].shape[0]):
                ref = Reference(maps[m][i, 0], wanted)
                for kind, col in (("random", 1), ("second", 2)):
                    for k, v in ref.compare(maps[m][i, col]).items():
                        values[kind][m][k][s + i] = v
    return ClassSensitivityResult(methods=names, metrics=wanted, predicted=predicted, random_classes=others,
                                  second_classes=second, values=values, seed=seed,
                                  explained=None if classes is None else explained)
