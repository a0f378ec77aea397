"""Efficient MPRT: does a map grow noisier when the whole network is randomised?

Hedström et al. 2023 ("Sanity Checks Revisited: An Exploration to Repair the Model Parameter
Randomisation Test", arXiv:2401.06465) replace the layer-by-layer similarity of MPRT (one explanation
per step) by the rise in the explanation's *complexity* from the trained to the fully randomised
model: two explanations per image. A method whose maps depend on what the network learnt gives
structured maps for the trained model and noise for a random one, so its complexity rises; a map
that merely reconstructs the image stays as it was. The complexity is the discrete entropy of the
histogram of ``|map|`` summed over channels (Quantus's ``discrete_entropy``, 100 equal bins over the
map's own range, natural log), and the score the relative rise (Quantus's ``EfficientMPRT``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from ..attribution import Explainer
from ..errors import InputError
from ..methods import parse_methods
from .randomization import explain_all, predicted_classes, randomization_steps, randomized_models
from .results import ComplexityResult

__all__ = ["BINS", "discrete_entropy", "efficient_mprt"]

#: Histogram bins of :func:`discrete_entropy` (Quantus's default).
BINS = 100


def discrete_entropy(m: Any, bins: int = BINS) -> float:
    """Entropy (natural log) of the histogram of ``|m|`` summed over channels, ``bins`` equal bins.

    ``m`` is one map ``(C, H, W)`` or ``(H, W)``. A constant map has entropy 0; a map whose values
    fill every bin equally has the maximum, ``log(bins)``.
    """
    a = m.detach().cpu().double().numpy() if isinstance(m, torch.Tensor) else np.asarray(m, dtype=np.float64)
    if a.ndim == 3:
        a = np.abs(a).sum(axis=0)
    elif a.ndim == 2:
        a = np.abs(a)
    else:
        raise InputError(f"a map must be (C, H, W) or (H, W), got shape {a.shape}")
    if not np.isfinite(a).all():
        return float("nan")
    counts, _edges = np.histogram(a, bins=int(bins))
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log(p)).sum()) + 0.0  # + 0.0: -0.0 of a constant map becomes 0.0


def efficient_mprt(
    model: nn.Module,
    x: torch.Tensor,
    *,
    methods: str | Sequence[str] = ("guided_backprop", "saliency", "gradcam"),
    granularity: str | Sequence[str] = "blocks",
    seed: int = 0,
    classes: torch.Tensor | Sequence[int] | None = None,
    keep_running_stats: bool = True,
    reseed_each_module: bool = False,
    batch_size: int = 16,
    gradcam_layer: str | None = None,
    bins: int = BINS,
    order: Literal["cascading"] = "cascading",
    trained_maps: dict[str, torch.Tensor] | None = None,
) -> ComplexityResult:
    """Efficient MPRT of ``methods`` on ``model`` and the batch ``x`` ``(N, C, H, W)``.

    The randomised model is the last step of the cascading randomisation of
    :func:`.randomization.model_randomization` with the same ``granularity``, ``seed``,
    ``keep_running_stats`` and ``reseed_each_module`` (so it is the very network MPRT ends with);
    ``classes`` (default: the trained model's predictions) are explained for both models. ``model``
    is never modified. ``trained_maps``: the trained model's maps of ``classes`` when already computed
    (then only the randomised model is explained).
    """
    names = parse_methods(methods)
    if not isinstance(x, torch.Tensor) or x.ndim < 2 or x.shape[0] == 0:
        raise InputError("x must be a non-empty (N, C, H, W) tensor")
    steps = randomization_steps(model, x, granularity)
    if classes is None:
        target = predicted_classes(model, x, batch_size=batch_size)
    else:
        target = torch.as_tensor(classes, dtype=torch.long).reshape(-1)
    target = target.to(x.device)
    trained = trained_maps if trained_maps is not None else \
        explain_all(Explainer(model), x, target, names, batch_size, gradcam_layer)
    # re-initialise every step (the same generator as MPRT's); only the end is explained
    *_before, (_name, net) = randomized_models(model, steps, order=order, seed=seed,
                                               keep_running_stats=keep_running_stats,
                                               recurse=granularity != "modules", reseed_each_module=reseed_each_module)
    randomized = explain_all(Explainer(net), x, target, names, batch_size, gradcam_layer)

    def entropies(maps: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
        return {m: np.array([discrete_entropy(v, bins) for v in maps[m]]) for m in names}

    return ComplexityResult(methods=names, trained=entropies(trained), randomized=entropies(randomized),
                            steps=list(steps), classes=[int(c) for c in target.tolist()],
                            granularity=granularity if isinstance(granularity, str) else "named", bins=int(bins),
                            seed=seed)
