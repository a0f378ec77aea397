"""Faithfulness: deletion and insertion (Petsiuk et al. 2018, "RISE", arXiv:1806.07421, section 4.1).

The pixels are ranked by the map's magnitude (``|map|`` summed over channels), most important first.
*Deletion* removes them in equal steps, setting them to the model's zero input (0 in the
preprocessed tensor space: the mean colour for ImageNet normalisation); *insertion* puts them, in the
same order, into a blurred copy of the image (Gaussian, kernel 11, sigma 5, as RISE). The curve is the
softmax probability of the class the model predicts on the intact image; its area (trapezoid rule
over the fraction of pixels, 0 to 1) is the score: low is good for deletion, high for insertion. A
random pixel order (seeded) is always measured beside it, as the baseline a map has to beat. The
steps of one image are made and go through the model ``batch_size`` at a time, so memory does not grow
with the number of steps.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from ..errors import InputError, UnknownNameError
from ..hooks import logits_of, model_state
from .class_sensitivity import image_rng
from .randomization import predicted_classes
from .results import CurveResult

__all__ = ["BLUR_KERNEL", "BLUR_SIGMA", "MODES", "blurred", "deletion_insertion", "pixel_order"]

#: The Gaussian blur of the insertion start image (Petsiuk et al.'s choice).
BLUR_KERNEL, BLUR_SIGMA = 11, 5.0
#: The two protocols.
MODES: tuple[str, ...] = ("deletion", "insertion")


def pixel_order(m: torch.Tensor) -> torch.Tensor:
    """Pixel indices ``(H * W,)`` of a map ``(C, H, W)``, by ``|map|`` summed over channels, largest first.

    Ties keep the raster order (a stable sort), so the order is deterministic.
    """
    if m.ndim != 3:
        raise InputError(f"a map must be (C, H, W), got shape {tuple(m.shape)}")
    score = m.detach().abs().sum(dim=0).reshape(-1).cpu()
    return torch.sort(score, descending=True, stable=True).indices


def blurred(x: torch.Tensor) -> torch.Tensor:
    """``x`` ``(N, C, H, W)`` blurred with a Gaussian (kernel 11, sigma 5, reflected borders): insertion's start.

    Images under 6 pixels a side get the largest odd kernel their reflected border allows.
    """
    from torchvision.transforms.functional import gaussian_blur

    side = min(x.shape[-2:])
    kernel = min(BLUR_KERNEL, 2 * side - 1 if side > 1 else 1)
    if kernel < 3:
        return x.clone()
    return gaussian_blur(x, kernel_size=[kernel, kernel], sigma=[BLUR_SIGMA, BLUR_SIGMA])


def _step_counts(pixels: int, steps: int) -> np.ndarray:
    return np.round(np.linspace(0, pixels, steps + 1)).astype(np.int64)


def _step_images(image: torch.Tensor, start: torch.Tensor, order: torch.Tensor, counts: np.ndarray,
                 *, mode: str) -> torch.Tensor:
    """``(steps + 1, C, H, W)``: step k has the first ``counts[k]`` pixels of ``order`` changed.

    Deletion: from ``image`` towards ``start`` (zeros); insertion: from ``start`` (blurred) towards ``image``.
    """
    c, h, w = image.shape
    rank = torch.empty(h * w, dtype=torch.long)
    rank[order] = torch.arange(h * w)
    k = torch.as_tensor(counts, dtype=torch.long)
    changed = (rank[None, :] < k[:, None]).reshape(len(counts), 1, h, w).to(image.device)  # (S, 1, H, W)
    src, dst = (image, start) if mode == "deletion" else (start, image)
    return torch.where(changed, dst[None], src[None])


def _probabilities(model: nn.Module, batch: torch.Tensor, cls: int, batch_size: int,
                   target: Any = None) -> np.ndarray:
    """The score deletion and insertion follow, per image of ``batch``: the softmax probability of class ``cls``,
    or with an output target (``gbp.Region``, ``gbp.Box``, ``gbp.Output``, a ``gbp.Score`` or any
    ``fn(output) -> (N,)``) its raw score, as explained (0 where a Box finds no detection)."""
    from ..targets import OUTPUT_TARGETS, Context, Score

    out = []
    for s in range(0, batch.shape[0], batch_size):
        chunk = batch[s:s + batch_size]
        output = model(chunk)
        if target is not None:
            t = target if isinstance(target, OUTPUT_TARGETS) else Score(target)
            ctx = Context(n=chunk.shape[0], input_size=tuple(chunk.shape[2:]), layers={})
            got = t.evaluate(output, ctx)
            scores = got.scores.detach()
            scores = scores.to(torch.promote_types(scores.dtype, torch.float32))  # float64 kept
            out.append(scores.masked_fill(~got.found.to(scores.device), 0).cpu())
            continue
        logits = logits_of(output)
        logits = logits.to(torch.promote_types(logits.dtype, torch.float32))  # half -> float, float64 kept
        out.append(logits.softmax(dim=1)[:, cls].cpu())
    return torch.cat(out).double().numpy()


def deletion_insertion(
    model: nn.Module,
    x: torch.Tensor,
    maps: Mapping[str, torch.Tensor],
    *,
    mode: Literal["deletion", "insertion"] = "deletion",
    steps: int = 32,
    seed: int = 0,
    classes: Sequence[int] | torch.Tensor | None = None,
    batch_size: int = 32,
    image_ids: Sequence[int] | None = None,
    target: Any = None,
) -> CurveResult:
    """Deletion or insertion curves of every map in ``maps``, beside a random pixel order.

    Args:
        model: the network (eval mode during the call, never modified).
        x: input batch ``(N, C, H, W)``, preprocessed.
        maps: ``{method: (N, C', H, W)}`` maps of ``x`` (``C'`` may be 1, as Grad-CAM's).
        mode: ``"deletion"`` or ``"insertion"``.
        steps: equal steps from 0 to every pixel (``steps + 1`` points per curve).
        seed: seed of the random pixel orders: each image's is drawn from ``seed`` and its id.
        classes: the class whose probability is followed (default: the model's prediction on ``x``).
        batch_size: step images per forward pass.
        image_ids: each image's id for its random order (default ``0..N-1``), so that an image's curve
            does not depend on the batch it came in.
        target: an output target (``gbp.Region(cls, mask)`` with an ``(H, W)`` mask, ``gbp.Box(box=..., label=...)``,
            ``gbp.Output(i)``, a ``gbp.Score`` or any ``fn(output) -> (N,)``): the curves then follow its raw
            score, the one the maps explain, instead of a softmax probability. A list gives one target per
            image (as :func:`.checks.run_checks` does with a frozen region's pixels or detection's box).
    """
    if mode not in MODES:
        raise UnknownNameError("faithfulness mode", str(mode), MODES)
    if isinstance(steps, bool) or int(steps) < 1:
        raise InputError(f"steps must be a whole number >= 1, got {steps!r}")
    if not isinstance(x, torch.Tensor) or x.ndim != 4 or x.shape[0] == 0:
        raise InputError("x must be a non-empty (N, C, H, W) tensor")
    n, _c, h, w = x.shape
    for name, m in maps.items():
        if m.ndim != 4 or m.shape[0] != n or tuple(m.shape[2:]) != (h, w):
            raise InputError(f"map {name!r} has shape {tuple(m.shape)}; expected ({n}, C, {h}, {w}) like x")
    counts = _step_counts(h * w, int(steps))
    fractions = counts / float(h * w)
    ids = range(n) if image_ids is None else image_ids
    random_orders = [torch.from_numpy(image_rng(seed, i).permutation(h * w)) for i in ids]
    targets = list(target) if isinstance(target, list) else [target] * n
    if len(targets) != n:
        raise InputError(f"target: {len(targets)} per-image targets for {n} images", field="target")
    curves = {m: np.zeros((n, len(counts))) for m in maps}
    random_curve = np.zeros((n, len(counts)))
    with model_state(model), torch.no_grad():
        if target is not None:
            cls = [-1] * n  # no class: the target's score is followed
        elif classes is None:
            cls = predicted_classes(model, x, batch_size=batch_size).tolist()
        else:
            cls = [int(c) for c in torch.as_tensor(classes).reshape(-1).tolist()]
        starts = torch.zeros_like(x) if mode == "deletion" else blurred(x)
        for i in range(n):
            orders = [pixel_order(v[i]) for v in maps.values()] + [random_orders[i]]
            # the step images are made batch by batch: memory holds one batch whatever the number of steps
            probs = np.stack([
                np.concatenate([_probabilities(model, _step_images(x[i], starts[i], o, counts[s:s + batch_size],
                                                                   mode=mode), cls[i], batch_size, targets[i])
                                for s in range(0, len(counts), batch_size)])
                for o in orders])
            for j, name in enumerate(maps):
                curves[name][i] = probs[j]
            random_curve[i] = probs[-1]
    return CurveResult(mode=mode, fractions=fractions, curves=curves, random=random_curve, classes=cls, seed=seed)
