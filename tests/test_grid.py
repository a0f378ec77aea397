"""The class x method grid, laid out once (guided_backprop.pictures.grid): columns, row labels, headline."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import nn

import guided_backprop as gbp
from guided_backprop.methods import REGISTRY
from guided_backprop.pictures.grid import Grid, explanation_grid, panel_note, row_label, target_name


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3)).eval()


X = torch.randn(2, 3, 12, 12, generator=torch.Generator().manual_seed(1))


def test_a_row_label_says_what_the_row_explains_and_its_value() -> None:
    assert row_label("cat", probability=0.934).text == "cat\np = 0.93"
    assert row_label("cat", probability=0.004).lines == ("p = 0.004",)  # small, never "p = 0.00"
    assert row_label(target_name("detection 0", "dog"), score=12.345).text == "detection 0 (dog)\nscore = 12.3"
    assert row_label("region 1", score=3.0, found=False).lines == ("nothing found",)
    assert row_label("blocks.3 channel 12", position=(3, 5)).text == "blocks.3 channel 12\nat (y, x) = (3, 5)"
    assert row_label(None).text == ""


def test_the_columns_are_the_input_and_the_registrys_titles(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(REGISTRY, "gradcam", dataclasses.replace(REGISTRY["gradcam"], title="Class activation"))
    assert Grid(methods=("guided_backprop", "gradcam"), rows=()).columns == ["input", "Guided backprop",
                                                                             "Class activation"]


def test_the_grid_of_an_explanation() -> None:
    ex = gbp.Explainer(_model())
    e = ex.explain(X, gbp.TopK(2), methods=["guided_backprop", "gradcam"])
    grid = explanation_grid(e, 1, ["gradcam"], ["cat", "dog", "fox"])
    assert grid.methods == ("gradcam",) and grid.note is None
    assert [r.text for r in grid.rows] == [
        f"{['cat', 'dog', 'fox'][int(e.targets[1, r])]}\np = {float(e.probabilities[1, r]):.2f}" for r in range(2)]
    unit = explanation_grid(ex.explain(X, gbp.MaxNeuron("2", 1)), 0, ["guided_backprop"])
    assert unit.rows[0].name == "unit" and unit.rows[0].lines[0].startswith("at (y, x) = (")
    score = explanation_grid(ex.explain(X, [gbp.Score(lambda o: o[:, 2])], methods=["saliency"]), 0, ["saliency"])
    assert score.rows[0].lines == (f"score = {float(_model()(X)[0, 2].detach()):.3g}",)
    smooth = gbp.SmoothGrad(ex, samples=2, noise=0.1).explain(X, methods=["saliency"])
    assert explanation_grid(smooth, 0, ["saliency"]).note == panel_note(smooth=2, noise=0.1)


def test_the_panel_and_the_notebook_figure_lay_out_the_same_grid() -> None:
    """``class_panel`` (files) and ``gbp.show`` (notebooks) draw one layout: the same columns, the same row
    labels, whether the panel is given the words or the grid of the explanation."""
    import numpy as np

    labels = ["cat", "dog", "fox"]
    methods = ["guided_backprop", "gradcam"]
    e = gbp.Explainer(_model()).explain(X, gbp.TopK(2), methods=methods)
    layout = explanation_grid(e, 0, methods, labels)
    fig = gbp.show(e, X, labels=labels, colorbar=False)
    axes = fig.axes
    assert [ax.get_title() for ax in axes[:3]] == layout.columns
    assert [axes[r * 3].get_ylabel() for r in range(2)] == [row.text for row in layout.rows]
    seen = gbp.map_to_image(X[0], norm="minmax")
    maps = {m: e.maps[m][0] for m in methods}
    words = gbp.class_panel(seen, maps, classes=[labels[int(c)] for c in e.targets[0]],
                            probabilities=e.probabilities[0].tolist())
    assert np.array_equal(np.asarray(words), np.asarray(gbp.class_panel(seen, maps, rows=layout.rows)))
