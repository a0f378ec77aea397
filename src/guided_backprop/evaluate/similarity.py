"""How alike two attribution maps are: the similarity metrics of Adebayo et al. 2018 (arXiv:1810.03292).

Every metric takes two maps of one image, ``(C, H, W)`` (or ``(H, W)``), as tensors or arrays, and
returns a float, 1 for identical maps:

* ``spearman_abs`` -- Spearman rank correlation of ``|map|`` summed over channels (the paper's
  main measure: the sign of a gradient map is hard to read, its magnitude is what is shown);
* ``spearman`` -- Spearman rank correlation of the signed map summed over channels;
* ``ssim`` -- structural similarity (``skimage.metrics.structural_similarity``) of ``|map|``
  summed over channels, each scaled to [0, 1] by its own minimum and maximum (the paper compares
  the normalised pictures of the maps), ``data_range=1``;
* ``hog`` -- Spearman rank correlation of the HOG features (``skimage.feature.hog``) of those same
  [0, 1] pictures.

A map that is constant (every value equal, e.g. all zeros after the classifier is cut off) has no
ranking, so a Spearman correlation with it is undefined: it is ``nan`` (never a warning), and the
averages over images (:mod:`.results`) skip ``nan``. SSIM of two constant maps is defined (1 if
equal); HOG features of a constant map are all zero, so ``hog`` is ``nan`` there too.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from ..errors import InputError, UnknownNameError

__all__ = ["METRICS", "hog", "is_constant", "parse_metrics", "rank_of", "similarities", "spearman", "spearman_abs",
           "spearman_of_ranks", "ssim"]

#: Every similarity metric, in the paper's order.
METRICS: tuple[str, ...] = ("spearman_abs", "spearman", "ssim", "hog")


def parse_metrics(metrics: str | Sequence[str]) -> tuple[str, ...]:
    """Normalise metric names (``"spearman-abs"``, ``"SSIM"``), keep order, drop repeats."""
    if isinstance(metrics, str):
        metrics = [metrics]
    out: list[str] = []
    for m in metrics:
        key = str(m).strip().lower().replace("-", "_")
        if key not in METRICS:
            raise UnknownNameError("similarity metric", str(m), METRICS)
        if key not in out:
            out.append(key)
    if not out:
        raise UnknownNameError("similarity metric", "", METRICS, hint="give at least one metric")
    return tuple(out)


def _plane(m: Any, *, signed: bool) -> np.ndarray:
    """A map as one float64 ``(H, W)`` plane: summed over channels, of ``|map|`` unless ``signed``."""
    a = m.detach().cpu().double().numpy() if isinstance(m, torch.Tensor) else np.asarray(m, dtype=np.float64)
    if a.ndim == 2:
        a = a[None]
    if a.ndim != 3:
        raise InputError(f"a map must be (C, H, W) or (H, W), got shape {a.shape}")
    if not signed:
        a = np.abs(a)
    return a.sum(axis=0)


def _unit(plane: np.ndarray) -> np.ndarray:
    """``plane`` scaled to [0, 1] by its own range (a constant plane becomes zeros)."""
    lo, hi = float(plane.min()), float(plane.max())
    return (plane - lo) / (hi - lo) if hi > lo else np.zeros_like(plane)


def is_constant(m: torch.Tensor | np.ndarray) -> bool:
    """True when every value of the map (a tensor or an array) is the same (e.g. all zero): it ranks nothing."""
    flat = m.reshape(-1)
    return bool(flat.shape[0] == 0 or (flat == flat[0]).all())


def rank_of(values: np.ndarray) -> np.ndarray:
    """Average ranks (ties share their mean rank, as ``scipy.stats.rankdata``: the same values, bit for bit)
    along the last axis; a row holding a NaN is all NaN (scipy's ``nan_policy="propagate"``).

    Written out because it is the cost of every similarity: SciPy sorts with a stable sort, which ties
    do not need (they are averaged), and NumPy's quicksort takes a third of the time on a map.
    """
    a = np.asarray(values, dtype=np.float64)
    if a.ndim == 0:
        return np.ones_like(a)
    if a.size == 0:
        return np.empty_like(a)
    rows = a.reshape(-1, a.shape[-1])
    out = np.empty(rows.shape, dtype=np.float64)
    n = rows.shape[1]
    new = np.empty(n, dtype=bool)
    for r, row in enumerate(rows):
        order = np.argsort(row)  # the order inside a run of ties does not matter: they share one rank
        ordered = row[order]
        if np.isnan(ordered[-1]):  # NaN sorts last
            out[r] = np.nan
            continue
        new[0] = True
        np.not_equal(ordered[1:], ordered[:-1], out=new[1:])
        starts = np.flatnonzero(new)
        ends = np.append(starts[1:], n)
        # the run at sorted positions start..end-1 holds ranks start+1..end: their mean
        out[r, order] = np.repeat((starts + ends + 1) / 2.0, ends - starts)
    return out.reshape(a.shape)


def spearman_of_ranks(ra: np.ndarray, rb: np.ndarray) -> np.ndarray | float:
    """Pearson correlation of two rank vectors (last axis): Spearman's rho. ``nan`` where one is constant.

    Same value as ``scipy.stats.spearmanr`` on the raw values; ranking once and correlating ranks
    lets the original map's ranks serve every step.
    """
    da = ra - ra.mean(axis=-1, keepdims=True)
    db = rb - rb.mean(axis=-1, keepdims=True)
    den = np.sqrt((da * da).sum(axis=-1) * (db * db).sum(axis=-1))
    num = (da * db).sum(axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        rho = np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)
    rho = np.clip(rho, -1.0, 1.0)
    return float(rho) if np.ndim(rho) == 0 else rho


def spearman_abs(a: Any, b: Any) -> float:
    """Spearman rank correlation of ``|a|`` and ``|b|`` summed over channels (``nan`` if one is constant)."""
    return float(spearman_of_ranks(rank_of(_plane(a, signed=False).ravel()), rank_of(_plane(b, signed=False).ravel())))


def spearman(a: Any, b: Any) -> float:
    """Spearman rank correlation of the signed maps summed over channels (``nan`` if one is constant)."""
    return float(spearman_of_ranks(rank_of(_plane(a, signed=True).ravel()), rank_of(_plane(b, signed=True).ravel())))


def _ssim_planes(pa: np.ndarray, pb: np.ndarray) -> float:
    from skimage.metrics import structural_similarity

    side = min(pa.shape)
    win = min(7, side if side % 2 else side - 1)
    if win < 3:
        raise InputError(f"SSIM needs maps of at least 3x3 pixels, got {pa.shape[0]}x{pa.shape[1]}")
    return float(structural_similarity(pa, pb, data_range=1.0, win_size=win))


def ssim(a: Any, b: Any) -> float:
    """SSIM of ``|a|`` and ``|b|`` summed over channels, each scaled to [0, 1] (1 for identical maps)."""
    return _ssim_planes(_unit(_plane(a, signed=False)), _unit(_plane(b, signed=False)))


def _hog_features(unit_plane: np.ndarray) -> np.ndarray:
    from skimage.feature import hog as skimage_hog

    # skimage's defaults (9 orientations, 8x8-pixel cells, 3x3-cell blocks) on maps of 24 pixels or more;
    # smaller cells on smaller maps, so that at least one block fits.
    cell = max(1, min(8, min(unit_plane.shape) // 3))
    return np.asarray(skimage_hog(unit_plane, orientations=9, pixels_per_cell=(cell, cell), cells_per_block=(3, 3),
                                  feature_vector=True), dtype=np.float64)


def hog(a: Any, b: Any) -> float:
    """Spearman rank correlation of the HOG features of ``|a|`` and ``|b|`` (each scaled to [0, 1])."""
    fa = _hog_features(_unit(_plane(a, signed=False)))
    fb = _hog_features(_unit(_plane(b, signed=False)))
    return float(spearman_of_ranks(rank_of(fa), rank_of(fb)))


_FUNCTIONS: dict[str, Callable[[Any, Any], float]] = {
    "spearman_abs": spearman_abs, "spearman": spearman, "ssim": ssim, "hog": hog,
}


class Reference:
    """One image's reference map, prepared once (ranks, [0, 1] picture, HOG features) for many comparisons."""

    def __init__(self, m: Any, metrics: Sequence[str] = METRICS) -> None:
        self.metrics = parse_metrics(metrics)
        self._prepared = _prepare(m, self.metrics)

    def compare(self, other: Any) -> dict[str, float]:
        """Every metric between the reference and ``other`` (same shape)."""
        theirs = _prepare(other, self.metrics)
        ours = self._prepared
        out: dict[str, float] = {}
        for metric in self.metrics:
            if metric in ("spearman_abs", "spearman", "hog"):
                out[metric] = float(spearman_of_ranks(ours[metric], theirs[metric]))
            else:
                out[metric] = _ssim_planes(ours["unit"], theirs["unit"])
        return out


def _prepare(m: Any, metrics: Sequence[str]) -> dict[str, np.ndarray]:
    prepared: dict[str, np.ndarray] = {}
    if "spearman_abs" in metrics or "ssim" in metrics or "hog" in metrics:
        absolute = _plane(m, signed=False)
        if "spearman_abs" in metrics:
            prepared["spearman_abs"] = rank_of(absolute.ravel())
        if "ssim" in metrics or "hog" in metrics:
            prepared["unit"] = _unit(absolute)
        if "hog" in metrics:
            prepared["hog"] = rank_of(_hog_features(prepared["unit"]))
    if "spearman" in metrics:
        prepared["spearman"] = rank_of(_plane(m, signed=True).ravel())
    return prepared


def similarities(a: Any, b: Any, metrics: Sequence[str] = METRICS) -> dict[str, float]:
    """Every metric in ``metrics`` between maps ``a`` and ``b`` of one image: ``{metric: value}``."""
    return Reference(a, metrics).compare(b)


def is_defined(value: float) -> bool:
    """False for the ``nan`` of an undefined correlation."""
    return not math.isnan(value)
