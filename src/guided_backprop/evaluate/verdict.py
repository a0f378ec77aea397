"""What an evaluation found, in a table and one line of words per method (the command prints both).

The readings use fixed thresholds on the mean over images (docs/evaluation.md states them):

* randomisation -- mean Spearman rank correlation of ``|map|`` with the trained model's map at or
  above :data:`SIMILAR` (0.5) after the top block, or after full randomisation: the map "changes
  little" there, so it fails the check at that depth (Adebayo et al. 2018);
* class sensitivity -- at or above :data:`SAME_CLASS` (0.8) with a random other class's map: the map
  barely depends on the class (Nie et al. 2018);
* Efficient MPRT -- a complexity rise at or below :data:`NO_RISE` (0.05, i.e. 5 %): randomising the
  whole network leaves the map as orderly as it was (Hedström et al. 2023);
* deletion / insertion -- an area on the wrong side of the random pixel order's by more than
  :data:`~.figures.WORSE_MARGIN` (0.01) and two standard errors of the per-image differences: the
  ranking is worse than chance (Petsiuk et al. 2018).
"""

from __future__ import annotations

import math

from .figures import worse_than_random
from .results import Evaluation, summarize

__all__ = ["NO_RISE", "SAME_CLASS", "SIMILAR", "readings", "summary_table"]

#: Spearman |map| with the trained map at or above which a randomised model's map "changes little".
SIMILAR = 0.5
#: Spearman |map| with another class's map at or above which a method is not class-sensitive.
SAME_CLASS = 0.8
#: Efficient MPRT relative complexity rise at or below which there is "no rise".
NO_RISE = 0.05

_METRIC = "spearman_abs"


def _fmt(value: float, spec: str = ".2f") -> str:
    return "-" if value is None or not math.isfinite(value) else format(value, spec)


def _columns(ev: Evaluation, method: str) -> dict[str, float]:
    out: dict[str, float] = {}
    rnd = ev.randomization
    if rnd is not None and _METRIC in rnd.metrics and len(rnd.steps) > 1:
        out["top"] = summarize(rnd.values[method][_METRIC][:, 1]).mean
        out["full"] = summarize(rnd.values[method][_METRIC][:, -1]).mean
        if rnd.constant:
            out["constant"] = float(rnd.constant[method][:, -1].sum())
    if ev.class_sensitivity is not None and _METRIC in ev.class_sensitivity.metrics:
        out["class"] = summarize(ev.class_sensitivity.values["random"][method][_METRIC]).mean
    if ev.efficient_mprt is not None:
        out["rise"] = summarize(ev.efficient_mprt.rise[method]).mean
    for curve in (ev.deletion, ev.insertion):
        if curve is not None:
            out[curve.mode] = summarize(curve.auc[method]).mean
            out[f"{curve.mode}_random"] = summarize(curve.random_auc).mean
    return out


def _article(number: str) -> str:
    """"a" or "an" before a number read aloud: an 8%, an 11%, an 18%, an 80-89% (eight..., eleven, eighteen)."""
    digits = number.rstrip("%")
    return "an" if digits.startswith("8") or digits in ("11", "18") else "a"


def readings(ev: Evaluation, method: str) -> list[str]:
    """What the checks say of ``method``, in words (empty when nothing was found wrong)."""
    c = _columns(ev, method)
    said = []
    top, full = c.get("top", math.nan), c.get("full", math.nan)
    if math.isfinite(top) and top >= SIMILAR:
        said.append("map changes little when the top layers are randomised: fails the randomisation check at the top")
    if math.isfinite(full) and full >= SIMILAR:
        said.append("map still resembles the trained one after full randomisation: it reflects the input, "
                    "not the weights")
    if c.get("constant"):
        said.append(f"map became constant after full randomisation on {int(c['constant'])} image(s)")
    if math.isfinite(c.get("class", math.nan)) and c["class"] >= SAME_CLASS:
        said.append("maps of another class look the same: not class-sensitive")
    if math.isfinite(c.get("rise", math.nan)) and c["rise"] <= NO_RISE:
        # a fall is worded as a fall: "no rise" would undersell a map that got much simpler
        fall = f"{-c['rise']:.0%}"
        change = "no rise" if c["rise"] >= 0 else f"{_article(fall)} {fall} fall"
        said.append(f"{change} in complexity when the network is randomised (Efficient MPRT fails)")
    for curve in (ev.deletion, ev.insertion):
        if curve is not None and worse_than_random(curve, method):
            said.append(f"worse than a random pixel order on {curve.mode}")
    return said


def summary_table(ev: Evaluation) -> list[str]:
    """The console summary: one row per method, then one reading per method."""
    curve = ev.deletion or ev.insertion
    methods = next((r.methods for r in (ev.randomization, ev.efficient_mprt, ev.smooth_mprt, ev.class_sensitivity)
                    if r is not None), tuple(curve.curves) if curve is not None else ())
    heads = ["method", "top block", "full rand.", "other class", "EMPRT rise", "deletion (rand.)",
             "insertion (rand.)"]
    rows = []
    for m in methods:
        c = _columns(ev, m)
        rows.append([m, _fmt(c.get("top", math.nan)), _fmt(c.get("full", math.nan)),
                     _fmt(c.get("class", math.nan)), _fmt(c.get("rise", math.nan), "+.0%"),
                     f"{_fmt(c.get('deletion', math.nan), '.3f')} ({_fmt(c.get('deletion_random', math.nan), '.3f')})",
                     f"{_fmt(c.get('insertion', math.nan), '.3f')} "
                     f"({_fmt(c.get('insertion_random', math.nan), '.3f')})"])
    widths = [max(len(r[i]) for r in [heads, *rows]) for i in range(len(heads))]
    lines = ["  ".join(h.ljust(w) for h, w in zip(heads, widths))]
    lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths)) for r in rows]
    lines.append("(Spearman |map| with the trained map after the top block / full randomisation, and with another "
                 "class's map; deletion: lower is better, insertion: higher; '-': not run)")
    for m in methods:
        said = readings(ev, m)
        lines.append(f"{m}: " + ("; ".join(said) if said else "passes every check run"))
    return lines
