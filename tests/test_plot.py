"""gbp.show: a matplotlib Figure for a notebook, straight from an Explanation and the input tensor."""

from __future__ import annotations

import io
import pickle
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

import guided_backprop as gbp
from guided_backprop.models import Preprocessing


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3)).eval()


LABELS = ["cat", "dog", "a fox with a name far too long for one line of a row label"]
METHODS = ["guided_backprop", "gradcam", "guided_gradcam"]


def _explain(k: int = 2, **options: object) -> tuple[torch.Tensor, gbp.Explanation]:
    x = torch.randn(2, 3, 20, 24, generator=torch.Generator().manual_seed(1))
    e = gbp.Explainer(_model()).explain(x, gbp.TopK(k), methods=METHODS, gradcam_layer="2", **options)
    return x, e


def _pixels(fig: object) -> np.ndarray:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=50)  # type: ignore[attr-defined]
    return np.asarray(Image.open(buf).convert("RGB"))


def test_a_grid_of_classes_by_methods_with_labels_and_colour_bars() -> None:
    x, e = _explain(k=3)
    fig = gbp.show(e, x, index=1, labels=LABELS)
    grid = [ax for ax in fig.axes if ax.get_label() != "<colorbar>"]
    bars = [ax for ax in fig.axes if ax.get_label() == "<colorbar>"]
    assert len(grid) == 3 * 4 and len(bars) == 1  # 3 classes x (input + 3 methods); Grad-CAM has a colour bar
    assert [ax.get_title() for ax in grid[:4]] == ["input", "Guided backprop", "Grad-CAM", "Guided Grad-CAM"]
    rows = [grid[r * 4].get_ylabel() for r in range(3)]
    for r, text in enumerate(rows):
        cls = int(e.targets[1, r])
        assert LABELS[cls][:20] in text and f"p = {float(e.probabilities[1, r]):.2f}" in text
    # the input shown is x[1] itself, channels first in, scaled from its min to its max
    shown = grid[0].get_images()[0].get_array()
    assert shown.shape == (20, 24, 3)
    assert np.array_equal(shown, gbp.map_to_image(x[1], norm="minmax"))
    assert _pixels(fig).std() > 0


def _extents(fig: object) -> tuple[list[list[object]], list[object]]:
    """The drawn boxes (display pixels) of the grid's axes, by row, and of the colour bars."""
    fig.draw_without_rendering()  # type: ignore[attr-defined]  # constrained layout and aspect applied
    grid = [ax for ax in fig.axes if ax.get_label() != "<colorbar>"]  # type: ignore[attr-defined]
    bars = [ax.get_window_extent() for ax in fig.axes if ax.get_label() == "<colorbar>"]  # type: ignore[attr-defined]
    columns = len(grid[0].get_gridspec().get_grid_positions(fig)[2])  # type: ignore[attr-defined]
    boxes = [ax.get_window_extent() for ax in grid]
    return [boxes[r:r + columns] for r in range(0, len(boxes), columns)], bars


@pytest.mark.parametrize("height, width", [(20, 30), (30, 20), (24, 24)])
def test_rows_follow_the_picture_and_grad_cam_bar_sits_under_its_column(height: int, width: int) -> None:
    x = torch.randn(1, 3, height, width, generator=torch.Generator().manual_seed(1))
    e = gbp.Explainer(_model()).explain(x, gbp.TopK(3), methods=METHODS, gradcam_layer="2")
    rows, bars = _extents(gbp.show(e, x))
    image_height = rows[0][0].height
    for upper, lower in zip(rows, rows[1:]):  # no large gaps between rows: they are as tall as the picture
        for a, b in zip(upper, lower):
            assert a.y0 - b.y1 < 0.25 * image_height
    for row in rows:  # every column's picture at the same height, Grad-CAM's included
        assert max(box.y0 for box in row) - min(box.y0 for box in row) < 1.0
    (bar,) = bars
    gradcam = [row[2] for row in rows]
    assert bar.y1 <= gradcam[-1].y0  # under the column, inside its width: not between two columns
    assert gradcam[0].x0 - 1 <= bar.x0 and bar.x1 <= gradcam[0].x1 + 1


def test_the_figure_shows_itself_in_a_notebook() -> None:
    x, e = _explain(k=1)
    fig = gbp.show(e, x)
    png = fig._repr_png_()  # type: ignore[attr-defined]  # what IPython displays
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and Image.open(io.BytesIO(png)).size[0] > 100
    again = pickle.loads(pickle.dumps(fig))  # a Figure pickles; this one too, by its module's name
    assert type(again) is type(fig) and len(again.axes) == len(fig.axes)


def test_the_picture_the_network_saw_and_a_preprocessing_are_accepted() -> None:
    x, e = _explain(k=1)
    pre = Preprocessing(resize=None, crop=None, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    seen = pre.invert(x[0])
    for image, options in ((seen, {}), (x[0], {"preprocessing": pre}), (Image.fromarray(seen), {})):
        fig = gbp.show(e, image, methods=["gradcam"], colorbar=False, **options)
        assert len(fig.axes) == 2
        assert np.array_equal(fig.axes[0].get_images()[0].get_array(), seen)


def test_smoothgrad_and_neuron_positions_are_in_the_titles() -> None:
    x, e = _explain(k=1, smooth=3, noise=0.2)
    fig = gbp.show(e, x)
    assert "3" in fig.get_suptitle() and "0.2" in fig.get_suptitle()
    x = torch.randn(1, 3, 12, 12, generator=torch.Generator().manual_seed(2))
    e = gbp.Explainer(_model()).explain(x, gbp.MaxNeuron("2", 1), methods=["guided_backprop"])
    label = gbp.show(e, x).axes[0].get_ylabel()
    y, xx = e.positions[0].tolist()
    assert f"({y}, {xx})" in label


def test_abs_and_signed_maps_get_value_colour_bars_and_errors_say_what_to_do() -> None:
    x, e = _explain(k=1)
    fig = gbp.show(e, x, methods=["guided_backprop"], norm="signed")
    assert [ax.get_label() for ax in fig.axes].count("<colorbar>") == 1
    fig = gbp.show(e, x, methods=["guided_backprop"], norm="signed", colorbar=False)
    assert [ax.get_label() for ax in fig.axes].count("<colorbar>") == 0 and len(fig.axes) == 2
    with pytest.raises(gbp.UnknownNameError, match="saliency"):
        gbp.show(e, x, methods=["saliency"])
    with pytest.raises(gbp.InputError, match="index 5"):
        gbp.show(e, x, index=5)


def test_show_is_exported_lazily() -> None:
    code = "import sys, guided_backprop as g; print('matplotlib' in sys.modules, callable(g.show))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.split() == ["False", "True"]


def test_explanation_plot_is_show() -> None:
    x, e = _explain(k=2)
    a, b = e.plot(x, index=1, labels=LABELS), gbp.show(e, x, index=1, labels=LABELS)
    assert [ax.get_ylabel() for ax in a.axes] == [ax.get_ylabel() for ax in b.axes]
    assert np.array_equal(_pixels(a), _pixels(b))


def test_show_draws_each_rows_box_and_region_outline() -> None:
    """gbp.show marks what each row explains, on the input and on every map: a detection's box (with its
    label and score) in the row's colour, a region's outline along its mask."""
    from matplotlib.patches import Rectangle

    from guided_backprop.render import BOX_COLOURS

    from .test_targets_output import BoxDetector, PixelSegmenter

    x = torch.randn(1, 3, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    torch.manual_seed(1)
    det = BoxDetector().double().eval()
    e = gbp.Explainer(det).explain(x, [gbp.Box(rank=0), gbp.Box(rank=1)], methods=["saliency", "gradcam"])
    fig = gbp.show(e, x, labels=["bg", "person", "dog", "cat"])
    for r in range(2):
        x0, y0, x1, y1 = e.details[0][r]["box"]
        colour = tuple(c / 255 for c in BOX_COLOURS[r]) + (1.0,)
        for ax in fig.axes[r * 3:r * 3 + 3]:  # the row's input and its two maps
            (rect,) = [p for p in ax.patches if isinstance(p, Rectangle)]
            assert rect.get_xy() == (x0, y0) and (rect.get_width(), rect.get_height()) == (x1 - x0, y1 - y0)
            assert rect.get_edgecolor() == pytest.approx(colour)
            name = {1: "person", 2: "dog", 3: "cat"}[e.details[0][r]["label"]]
            assert [t.get_text() for t in ax.texts] == [f"{name} {e.details[0][r]['detection_score']:.2f}"]

    torch.manual_seed(5)
    seg = PixelSegmenter().double().eval()
    e = gbp.Explainer(seg).explain(x, [gbp.Region(1)], methods=["saliency"])
    fig = gbp.show(e, x, labels=["bg", "cat", "dog"])
    mask = e.regions[0][0].numpy()
    assert 0 < mask.sum() < mask.size
    for ax in fig.axes[:2]:
        (contour,) = [c for c in ax.collections if hasattr(c, "get_paths")]
        points = np.concatenate([p.vertices for p in contour.get_paths()])
        # every outline point lies between a region pixel and a pixel outside it
        for px, py in points:
            near = mask[max(0, int(np.floor(py))):int(np.ceil(py)) + 1, max(0, int(np.floor(px))):int(np.ceil(px)) + 1]
            assert near.any() and not near.all()
        assert [t.get_text() for t in ax.texts] == ["cat"]
