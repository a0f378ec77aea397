"""The class x method grid, laid out once: its columns, its rows' labels and its headline.

Every picture of several explained targets is this grid, one row per target, one column per method
after the input: the per-image panel of the command (:func:`~.panels.class_panel`, drawn with Pillow)
and the notebook figure (:func:`~.plot.show`, drawn with matplotlib). What the grid says -- the column
titles (from the method registry), each row's label, the SmoothGrad headline -- is decided here; the
two drawers only place it in pixels or inches.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ..methods import method_title

if TYPE_CHECKING:
    from ..attribution import Explanation

__all__ = ["Grid", "Row", "class_name", "explanation_grid", "panel_note", "row_label", "target_name"]


@dataclass(frozen=True)
class Row:
    """One row's label: ``name`` (what the row explains: a class, a target, a unit; a drawer may wrap or
    shorten it) and ``lines`` that stay whole (a probability, a raw score, a unit's position)."""

    name: str
    lines: tuple[str, ...] = ()

    @property
    def text(self) -> str:
        """The label as one text, a line each."""
        return "\n".join(t for t in (self.name, *self.lines) if t)


@dataclass(frozen=True)
class Grid:
    """A class x method grid: ``methods`` in column order (after the input), ``rows`` top to bottom,
    ``note`` the headline's words about how the maps were computed (``None``: none)."""

    methods: tuple[str, ...]
    rows: tuple[Row, ...]
    note: str | None = None

    @property
    def columns(self) -> list[str]:
        """The column titles: ``"input"``, then each method's title from the method registry."""
        return ["input", *(method_title(m) for m in self.methods)]


def panel_note(*, smooth: int = 0, noise: float | None = None) -> str | None:
    """The words a grid's headline adds about how its maps were computed (SmoothGrad), or None."""
    if not smooth:
        return None
    text = f"SmoothGrad: mean of {int(smooth)} noisy copies"
    return text + (f", noise σ = {noise:g} × the input's range" if noise is not None else "")


def row_label(name: str | None, *, probability: float | None = None, score: float | None = None,
              found: bool = True, position: Sequence[int] | None = None) -> Row:
    """The one label of a grid row: what it explains (``name``), then its softmax ``probability`` (class
    targets), or its raw ``score`` (other targets; never a probability) or that nothing was ``found`` (no
    matching detection), and a unit's ``position`` (y, x)."""
    lines = []
    if not found:
        lines.append("nothing found")
    elif probability is not None:
        lines.append(f"p = {probability:.2f}" if probability >= 0.01 else f"p = {probability:.1g}")
    elif score is not None:
        lines.append(f"score = {score:.3g}")
    if position is not None:
        lines.append(f"at (y, x) = ({int(position[0])}, {int(position[1])})")
    return Row(name or "", tuple(lines))


def target_name(title: str, class_name: str | None) -> str:
    """A target's name in a row label: its title, with the class it reads when there is one."""
    return f"{title} ({class_name})" if class_name else title


def class_name(labels: Any, cls: int) -> str:
    """Class ``cls``'s name from ``labels``: a sequence of names, a function ``index -> name`` or anything
    with ``.label(index)`` (a ``LoadedModel``); ``"class N"`` without one."""
    if labels is None:
        return f"class {cls}"
    if hasattr(labels, "label"):
        return str(labels.label(cls))
    if callable(labels):
        return str(labels(cls))
    return str(labels[cls]) if 0 <= cls < len(labels) else f"class {cls}"


def explanation_grid(explanation: Explanation, index: int, methods: Sequence[str], labels: Any = None) -> Grid:
    """The grid of image ``index`` of an explanation: a row per explained target, a column per method."""
    k = explanation.maps[methods[0]].shape[1] if methods else 1
    probs = explanation.probabilities
    rows = []
    for r in range(k):
        if explanation.titles and explanation.targets is None and r < len(explanation.titles):
            facts = explanation.details[index][r] if explanation.details else {}
            cls = facts.get("label", facts.get("class"))
            name = target_name(explanation.titles[r],
                               class_name(labels, int(cls)) if labels is not None and cls is not None else None)
            found = explanation.found is None or bool(explanation.found[index, r])
            rows.append(row_label(name, score=float(explanation.scores[index, r]), found=found))
        elif explanation.targets is None:  # a layer target: the unit, at its position
            position = explanation.positions[index].tolist() if explanation.positions is not None else None
            rows.append(row_label("unit", position=position))
        else:
            rows.append(row_label(class_name(labels, int(explanation.targets[index, r])),
                                  probability=float(probs[index, r]) if probs is not None else None))
    note = panel_note(smooth=int(explanation.extra.get("smooth", 0) or 0), noise=explanation.extra.get("noise"))
    return Grid(methods=tuple(methods), rows=tuple(rows), note=note)
