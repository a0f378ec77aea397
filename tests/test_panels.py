"""Panels for K classes: a class x method grid with the right cells, titles never cut, crisp colour bars."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from guided_backprop.errors import InputError
from guided_backprop.pictures import panels
from guided_backprop.pictures.fonts import load_font
from guided_backprop.pictures.grid import panel_note
from guided_backprop.pictures.panels import class_panel, colorbar, explanation_panel
from guided_backprop.pictures.render import method_picture

BACKGROUND = np.array([255, 255, 255])
LONG = "American Staffordshire terrier, Staffordshire terrier, American pit bull terrier, pit bull"


def _find(canvas: np.ndarray, tile: np.ndarray, x: int) -> list[int]:
    """Every y where ``tile`` sits in ``canvas`` with its left edge at ``x``."""
    h, w = tile.shape[:2]
    return [y for y in range(canvas.shape[0] - h + 1)
            if np.array_equal(canvas[y, x : x + w], tile[0]) and np.array_equal(canvas[y : y + h, x : x + w], tile)]


def _big(picture: np.ndarray, size: int) -> np.ndarray:
    return np.asarray(Image.fromarray(picture).resize((size, size), Image.Resampling.NEAREST))


def test_k_classes_make_a_grid_one_row_per_class_one_column_per_method() -> None:
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
    maps = {"guided_backprop": torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(1)),
            "gradcam": torch.rand(3, 1, 32, 32, generator=torch.Generator().manual_seed(2))}
    pic = class_panel(image, maps, classes=["cat", "dog", "fox"], probabilities=[0.5, 0.3, 0.1], gap=8)
    a = np.asarray(pic)
    tile, label_w, gap = 128, 128, 8  # 32 px enlarged x4; the label column is as wide as a tile here
    x0 = gap + label_w + gap
    assert pic.width == x0 + 3 * (tile + gap)
    ys = _find(a, _big(image, tile), x0)
    assert len(ys) == 3  # the input first in every row
    for r, y in enumerate(ys):  # each row holds that class's maps, in method order
        for c, method in enumerate(maps, start=1):
            expected = _big(method_picture(method, maps[method][r], image=image), tile)
            assert np.array_equal(a[y : y + tile, x0 + c * (tile + gap) : x0 + c * (tile + gap) + tile], expected)
    assert ys[1] - ys[0] == ys[2] - ys[1] > tile  # equal rows, room for the Grad-CAM colour bar


def test_single_class_call_is_a_one_row_grid() -> None:
    rng = np.random.default_rng(3)
    image = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
    maps = {"guided_backprop": rng.normal(size=(3, 32, 32)), "saliency": rng.normal(size=(3, 32, 32))}
    one = explanation_panel(image, maps, class_name="cat", probability=0.5)
    grid = class_panel(image, {m: [v] for m, v in maps.items()}, classes=["cat"], probabilities=[0.5])
    assert np.array_equal(np.asarray(one), np.asarray(grid))
    assert len(_find(np.asarray(one), _big(image, 128), 8 + 128 + 8)) == 1


def _ink(a: np.ndarray) -> np.ndarray:
    return (np.abs(a.astype(int) - BACKGROUND).sum(axis=-1) > 60)


@pytest.mark.parametrize("size", [16, 32, 224])
def test_long_class_names_are_wrapped_and_the_probability_always_shows(size: int) -> None:
    rng = np.random.default_rng(4)
    image = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
    maps = {"guided_backprop": [rng.normal(size=(3, size, size))]}
    pics = [np.asarray(class_panel(image, maps, classes=[LONG], probabilities=[p], min_tile=64)) for p in (0.11, 0.97)]
    tile = max(64, size)
    label_w = max(96, min(tile, 160))
    for a in pics:
        ink = _ink(a)
        assert not ink[:, :8].any() and not ink[:, -8:].any()  # nothing runs off the sides...
        assert not ink[-8:].any() and not ink[:8].any()
        assert not ink[:, 8 + label_w : 8 + label_w + 8].any()  # ...or from the label column into the tiles
        assert ink[:, 8 : 8 + label_w].sum() > 100  # the label is drawn
    # The probability line is in the label column: two probabilities give two different labels.
    assert not np.array_equal(pics[0][:, : 8 + label_w], pics[1][:, : 8 + label_w])


def test_wrapped_lines_fit_and_shortened_text_ends_in_an_ellipsis() -> None:
    draw = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    font = load_font(11)
    lines = panels._wrap(draw, LONG + " " + "x" * 80, font, 90)
    assert len(lines) > 4 and all(draw.textlength(t, font=font) <= 90 for t in lines)
    assert "".join(lines).replace(" ", "") == (LONG + "x" * 80).replace(" ", "")  # nothing lost
    capped = panels._wrap(draw, LONG, font, 90, max_lines=2)
    assert len(capped) == 2 and capped[-1].endswith("…") and draw.textlength(capped[-1], font=font) <= 90


def test_colour_bars_are_drawn_at_the_tiles_final_width() -> None:
    """A 32 px input becomes 128 px tiles: the bar is drawn at 128 px (crisp), not drawn at 32 and scaled up."""
    image = np.zeros((32, 32, 3), dtype=np.uint8)
    heat = np.linspace(0, 2, 32 * 32).reshape(1, 32, 32)
    a = np.asarray(explanation_panel(image, {"gradcam": heat}))
    bar = np.asarray(colorbar("inferno", 0.0, 2.0, width=128, height=8))
    x = 8 + 128 + 8 + 128 + 8
    assert len(_find(a, bar, x)) == 1


def test_colour_bar_figures_never_overlap_on_narrow_bars() -> None:
    for width in (56, 80, 128):
        a = np.asarray(colorbar("RdBu_r", -0.000123, 0.000456, width=width, height=6, label="0", diverging=True))
        labels = _ink(a[7:])
        cols = labels.any(axis=0)
        assert cols[:3].any() and cols[-3:].any()  # both ends labelled
        assert not cols.all()  # a blank column between them: they do not run into each other


def test_titles_carry_smoothgrad_and_the_neuron_position() -> None:
    assert panel_note() is None
    note = panel_note(smooth=25, noise=0.15)
    assert note is not None and "25" in note and "0.15" in note
    image = np.zeros((32, 32, 3), dtype=np.uint8)
    maps = {"guided_backprop": np.ones((3, 32, 32))}
    plain = explanation_panel(image, maps, class_name="blocks.3 channel 12")
    smooth = explanation_panel(image, maps, class_name="blocks.3 channel 12", smooth=25, noise=0.15)
    placed = explanation_panel(image, maps, class_name="blocks.3 channel 12", position=(3, 5))
    assert smooth.height > plain.height  # the SmoothGrad headline
    assert _ink(np.asarray(placed)[:, :8 + 128]).sum() > _ink(np.asarray(plain)[:, :8 + 128]).sum()


def test_grid_arguments_are_checked() -> None:
    image = np.zeros((8, 8, 3), dtype=np.uint8)
    with pytest.raises(InputError, match="same number of class maps"):
        class_panel(image, {"saliency": np.zeros((2, 3, 8, 8)), "guided_backprop": np.zeros((3, 3, 8, 8))})
    with pytest.raises(InputError, match="2 class names"):
        class_panel(image, {"saliency": np.zeros((3, 3, 8, 8))}, classes=["a", "b"])
    with pytest.raises(InputError, match=r"\(K, C, H, W\)"):
        class_panel(image, {"saliency": np.zeros((3, 8, 8))})


def test_panels_for_stacking_can_leave_the_column_headers_out() -> None:
    image = np.zeros((32, 32, 3), dtype=np.uint8)
    maps = {"saliency": [np.ones((3, 32, 32))]}
    with_heads = np.asarray(class_panel(image, maps, classes=["cat"]))
    without = np.asarray(class_panel(image, maps, classes=["cat"], headers=False))
    assert with_heads.shape[0] > without.shape[0] and with_heads.shape[1] == without.shape[1]
    assert len(_find(without, _big(image, 128), 8 + 128 + 8)) == 1
