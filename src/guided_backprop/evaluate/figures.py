"""The pictures of an evaluation, drawn with matplotlib (Agg backend) and returned as PNG bytes.

* :func:`randomization_figure` -- Adebayo et al.'s figure 2: rows are methods, columns the input,
  the trained model's map, then the map after each randomisation step (at most ``max_columns``
  steps, evenly spread, the last one always shown); each map is shown as ``|map|`` summed over
  channels, clipped at its 99th percentile, grayscale.
* :func:`similarity_figure` -- one panel per metric, one line per method (the mean over the images
  where the value is defined), the band the mean +- one standard deviation; hollow markers and
  ``n=`` where fewer images count, and a panel counting the maps that became constant;
* :func:`complexity_figure` -- Efficient MPRT: map entropy, trained vs fully randomised model.
* :func:`faithfulness_figure` -- deletion and insertion curves, one line per method and the random
  order dashed, the area under each curve in the legend.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import Any

import numpy as np

from ..methods import method_title
from .results import ComplexityResult, CurveResult, RandomizationResult, summarize
from .similarity import is_constant

__all__ = ["WORSE_MARGIN", "complexity_figure", "emprt_title", "faithfulness_figure", "randomization_figure",
           "similarity_figure", "worse_than_random"]

_METRIC_TITLES = {"spearman_abs": "Spearman rank correlation of |map|",
                  "spearman": "Spearman rank correlation (signed)",
                  "ssim": "SSIM", "hog": "Spearman rank correlation of HOG"}


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def _png(fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    _pyplot().close(fig)
    return buf.getvalue()


def _title(method: str) -> str:
    """A method's title, from the method registry; ``"random"`` is deletion / insertion's random pixel order."""
    return "random order" if method == "random" else method_title(method)


def _shown_steps(n_steps: int, max_columns: int) -> list[int]:
    """Indices of the randomisation steps to draw (1..n_steps-1), evenly spread, the last one included."""
    steps = list(range(1, n_steps))
    if len(steps) <= max_columns:
        return steps
    picks = np.unique(np.round(np.linspace(1, n_steps - 1, max_columns)).astype(int))
    return [int(p) for p in picks]


def _magnitude(m: Any) -> np.ndarray:
    a = np.abs(np.asarray(m.detach().cpu().double().numpy() if hasattr(m, "detach") else m, dtype=np.float64))
    plane = a.sum(axis=0) if a.ndim == 3 else a
    top = float(np.percentile(plane, 99)) or float(plane.max()) or 1.0
    return np.clip(plane / top, 0, 1)


def _short(name: str, limit: int = 16) -> str:
    return name if len(name) <= limit else "…" + name[-(limit - 1):]


def randomization_figure(result: RandomizationResult, image: np.ndarray | None = None, *,
                         max_columns: int = 10) -> bytes:
    """Figure 2 of Adebayo et al. for image ``result.maps_image``: PNG bytes. ``image``: its (H, W, 3) picture."""
    plt = _pyplot()
    methods = [m for m in result.methods if m in result.maps]
    shown = _shown_steps(len(result.steps), max_columns)
    columns = ([("input", None)] if image is not None else []) + [("original", 0)] + \
        [(result.steps[j], j) for j in shown]
    size = 1.35
    fig, axes = plt.subplots(len(methods), len(columns), figsize=(size * len(columns) + 1.2, size * len(methods) + 1),
                             squeeze=False)
    for r, m in enumerate(methods):
        for c, (label, j) in enumerate(columns):
            ax = axes[r][c]
            if j is None:
                ax.imshow(image)
            else:
                ax.imshow(_magnitude(result.maps[m][j]), cmap="gray", vmin=0, vmax=1)
                if is_constant(result.maps[m][j]):  # black would read "no evidence": say what it is
                    ax.text(0.5, 0.5, "constant\nmap", transform=ax.transAxes, ha="center", va="center",
                            fontsize=7, color="#d62728", fontweight="bold")
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(_short(label), fontsize=8, rotation=35, ha="left", va="bottom", loc="left")
            if c == 0:
                ax.set_ylabel(_title(m), fontsize=9)
    order = "cascading randomisation (output first) ->" if result.order == "cascading" else \
        "independent randomisation, one block at a time ->"
    total = len(result.steps) - 1
    which = f"{total} steps" if len(shown) == total else f"{len(shown)} of {total} steps shown, evenly spread"
    fig.suptitle(f"{order}   ({which}, {result.granularity}; |map| per step)", fontsize=10)
    fig.tight_layout()
    return _png(fig)


def _tick_positions(n: int, most: int = 14) -> list[int]:
    if n <= most:
        return list(range(n))
    return sorted(set(np.round(np.linspace(0, n - 1, most)).astype(int).tolist()))


def similarity_figure(result: RandomizationResult, metrics: Sequence[str] | None = None) -> bytes:
    """Similarity to the trained model's maps along the steps: PNG bytes.

    A mean over fewer images than all (a constant map has no Spearman or HOG value) is drawn with a
    hollow marker and its count ``n`` written beside it where it changes; a last panel counts, per
    step, the maps that became constant -- a finding in itself, never averaged away.
    """
    plt = _pyplot()
    shown = [k for k in (metrics or result.metrics) if k in result.metrics]
    panels = len(shown) + (1 if result.constant else 0)
    cols = min(2, panels)
    rows = (panels + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(6.2 * cols, 3.8 * rows), squeeze=False)
    steps = np.arange(len(result.steps))
    ticks = _tick_positions(len(result.steps))
    total = result.values[result.methods[0]][shown[0]].shape[0]

    def axis(ax: Any, title: str) -> None:
        ax.set_title(title, fontsize=10)
        ax.set_xticks(ticks)
        ax.set_xticklabels([_short(result.steps[t], 14) for t in ticks], rotation=60, ha="right", fontsize=7)
        ax.grid(alpha=0.3)

    for idx, metric in enumerate(shown):
        ax = axes[idx // cols][idx % cols]
        for k, m in enumerate(result.methods):  # one colour per method in every panel
            stats = [summarize(result.values[m][metric][:, j]) for j in steps]
            mean = np.array([s.mean for s in stats])
            std = np.array([s.std for s in stats])
            counts = np.array([s.n for s in stats])
            (line,) = ax.plot(steps, mean, marker="o", markersize=3, label=_title(m), color=f"C{k}")
            ax.fill_between(steps, mean - std, mean + std, color=line.get_color(), alpha=0.18, linewidth=0)
            fewer = counts < total
            if fewer.any():  # hollow: a mean over fewer images than all
                ax.plot(steps[fewer], mean[fewer], linestyle="none", marker="o", markersize=6,
                        markerfacecolor="white", markeredgecolor=line.get_color())
                for j in np.flatnonzero(fewer):
                    if (j == 0 or counts[j] != counts[j - 1]) and np.isfinite(mean[j]):
                        ax.annotate(f"n={counts[j]}", (steps[j], mean[j]), textcoords="offset points",
                                    xytext=(2, 5), fontsize=6, color=line.get_color())
        ax.axhline(0, color="0.6", linewidth=0.8)
        ax.set_ylim(-0.5 if metric != "ssim" else -0.1, 1.05)
        axis(ax, _METRIC_TITLES.get(metric, metric))
        if idx == 0:
            ax.legend(fontsize=8, loc="lower left")
    if result.constant:
        ax = axes[len(shown) // cols][len(shown) % cols]
        for k, m in enumerate(result.methods):
            ax.plot(steps, result.constant[m].sum(axis=0), marker="s", markersize=3, label=_title(m), color=f"C{k}")
        ax.set_ylim(-0.2, total + 0.2)
        ax.set_ylabel(f"images (of {total})")
        axis(ax, "Maps that became constant (no ranking: left out of the means)")
    for idx in range(panels, rows * cols):
        axes[idx // cols][idx % cols].axis("off")
    smooth = f", SmoothGrad {result.smooth['samples']} samples" if result.smooth else ""
    fig.suptitle(f"Similarity to the trained model's map, {result.order} randomisation{smooth} (mean over the "
                 f"{total} image{'s' if total != 1 else ''} where defined; hollow: fewer, n shown; band: ±1 std)",
                 fontsize=10)
    fig.tight_layout()
    return _png(fig)


def complexity_figure(result: ComplexityResult) -> bytes:
    """Efficient MPRT: each method's map complexity (entropy) for the trained and the randomised model."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(1.6 * len(result.methods) + 3, 3.6))
    pos = np.arange(len(result.methods))
    rise = result.rise
    for k, (what, values) in enumerate((("trained", result.trained), ("fully randomised", result.randomized))):
        means = [summarize(values[m]).mean for m in result.methods]
        stds = [summarize(values[m]).std for m in result.methods]
        ax.bar(pos + (k - 0.5) * 0.38, means, 0.38, yerr=stds, label=what, capsize=3)
    for i, m in enumerate(result.methods):
        r = summarize(rise[m])
        text = f"rise {r.mean:+.0%}" if np.isfinite(r.mean) else "rise undefined"
        ax.annotate(text, (pos[i], np.log(result.bins)), ha="center", va="bottom", fontsize=8)
    ax.axhline(np.log(result.bins), color="0.6", linewidth=0.8, linestyle=":")
    ax.set_xticks(pos)
    ax.set_xticklabels([_title(m) for m in result.methods], fontsize=8)
    ax.set_ylabel(f"entropy of |map| histogram ({result.bins} bins)")
    ax.set_ylim(0, np.log(result.bins) * 1.15)
    ax.legend(fontsize=8, loc="lower right")
    ax.set_title(emprt_title(result), fontsize=9)
    fig.tight_layout()
    return _png(fig)


#: How far (in area under the curve) a method's mean must be on the wrong side of the random order's before
#: it is called worse than random, at the least; with several images also two standard errors of the mean
#: per-image difference (a difference within the images' spread is not a finding).
WORSE_MARGIN = 0.01


def emprt_title(result: ComplexityResult) -> str:
    """The Efficient MPRT figure's title: how much was randomised and over how many images."""
    k, n = len(result.steps), len(result.classes)
    noun = {"blocks": "block", "modules": "module"}.get(result.granularity, "named block")
    return (f"Efficient MPRT (Hedström et al. 2023): complexity before and after randomising the whole "
            f"network (all {k} {noun}{'s' if k != 1 else ''})\n"
            f"(mean over {n} image{'s' if n != 1 else ''}; a rise is what a "
            f"model-dependent map shows; dotted: the maximum)")


def worse_than_random(result: CurveResult, method: str) -> bool:
    """Whether ``method``'s area is on the wrong side of the random order's (deletion: above) by more than
    :data:`WORSE_MARGIN` and, with two images or more, by more than two standard errors of the mean of the
    per-image differences (sample standard deviation / sqrt(n))."""
    d = np.asarray(result.auc[method], dtype=np.float64) - np.asarray(result.random_auc, dtype=np.float64)
    d = d[np.isfinite(d)]
    if result.mode != "deletion":
        d = -d
    if d.size == 0:
        return False
    margin = WORSE_MARGIN if d.size < 2 else max(WORSE_MARGIN, 2 * float(np.std(d, ddof=1)) / np.sqrt(d.size))
    return float(np.mean(d)) > margin


def faithfulness_figure(curves: Sequence[CurveResult]) -> bytes:
    """Deletion and/or insertion curves (mean over images): PNG bytes."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(curves), figsize=(5.6 * len(curves), 4.0), squeeze=False)
    for ax, res in zip(axes[0], curves):
        aucs = res.auc
        for m, c in res.curves.items():
            worse = ", WORSE than random" if worse_than_random(res, m) else ""
            ax.plot(res.fractions, c.mean(axis=0), label=f"{_title(m)} (AUC {np.mean(aucs[m]):.3f}{worse})",
                    linestyle=":" if worse else "-")
        ax.plot(res.fractions, res.random.mean(axis=0), "k--",
                label=f"random order (AUC {np.mean(res.random_auc):.3f})")
        verb = "removed" if res.mode == "deletion" else "inserted"
        better = "lower is better" if res.mode == "deletion" else "higher is better"
        ax.set_title(f"{res.mode.capitalize()} ({better})", fontsize=10)
        ax.set_xlabel(f"fraction of pixels {verb}, most important first")
        ax.set_xlim(0, 1)
        if res.follows == "score":  # an output target's raw score: any range
            ax.set_ylabel("explained score (raw)")
        else:
            ax.set_ylabel("probability of the explained class")
            ax.set_ylim(0, None)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    n = curves[0].random.shape[0]
    fig.suptitle(f"Petsiuk et al. 2018 protocol, mean over {n} image{'s' if n != 1 else ''}", fontsize=11)
    fig.tight_layout()
    return _png(fig)
