"""Maps -> pictures: each normalisation on tiny hand-computed maps, the seed's exact look, overlays, panels, saving."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import matplotlib
import numpy as np
import pytest
import torch
from PIL import Image

from guided_backprop.errors import InputError, UnknownNameError
from guided_backprop.pictures import panels
from guided_backprop.pictures.panels import colorbar, panel
from guided_backprop.pictures.render import (
    NORMALIZATIONS,
    bytescale,
    heatmap,
    heatmap_overlay,
    map_to_image,
    method_picture,
    save_image,
    to_pil,
    value_range,
)

RNG = np.random.default_rng(0)


def row(*values: float, dtype: type = np.float64) -> np.ndarray:
    """A (1, 1, W) map."""
    return np.array(values, dtype=dtype)[None, None, :]


def grey(picture: np.ndarray) -> list[int]:
    """The single row of a grey (1, W, 3) picture, after checking it is grey."""
    assert picture.dtype == np.uint8 and picture.shape[0] == 1 and picture.shape[2] == 3
    assert (picture == picture[..., :1]).all()
    return picture[0, :, 0].tolist()


def cmap_rgb(name: str, t: float) -> np.ndarray:
    return np.round(np.asarray(matplotlib.colormaps[name](t))[:3] * 255).astype(int)


# ----------------------------------------------------------------------------- percentile (default)


def test_percentile_maps_symmetric_range_to_bytes_zero_mid_grey() -> None:
    m = row(-2.0, -1.0, 0.0, 1.0, 2.0)
    # p = 2 -> (v / 2 + 1) * 127.5 = 0, 63.75, 127.5, 191.25, 255 -> rounded half up
    assert grey(map_to_image(m, percentile=100)) == [0, 64, 128, 191, 255]
    assert grey(map_to_image(m)) == grey(map_to_image(m, norm="percentile", percentile=99.5))


def test_percentile_clips_the_few_dominant_pixels() -> None:
    m = row(-1, 0.5, 1, 1, 1, 1, 1, 1, 1, 50)
    # 80th percentile of |m| = 1 (sorted 0.5, 1 x 8, 50): 50 is clipped to 1
    assert grey(map_to_image(m, percentile=80)) == [0, 191, 255, 255, 255, 255, 255, 255, 255, 255]
    # without clipping the 1s would sit near mid grey: the structure is washed out
    assert grey(map_to_image(m, percentile=100))[2] == 130


def test_percentile_is_per_pixel_and_channel_in_rgb_order() -> None:
    m = np.array([2.0, -2.0, 0.0]).reshape(3, 1, 1)
    assert map_to_image(m, percentile=100)[0, 0].tolist() == [255, 0, 128]


def test_percentile_falls_back_to_the_maximum_for_sparse_maps() -> None:
    m = np.zeros((1, 10, 10))
    m[0, 0, 0] = -4.0  # the 99.5th percentile of |m| is 0: the maximum is used instead
    pic = map_to_image(m)
    assert pic[0, 0].tolist() == [0, 0, 0] and (pic[1:] == 128).all()


def test_single_channel_percentile_through_a_colour_map() -> None:
    m = row(-1.0, 0.0, 1.0)
    pic = map_to_image(m, percentile=100, cmap="viridis")
    assert np.abs(pic[0, 0].astype(int) - cmap_rgb("viridis", 0.0)).max() <= 1
    assert np.abs(pic[0, 2].astype(int) - cmap_rgb("viridis", 1.0)).max() <= 1


# ----------------------------------------------------------------------------- minmax: the seed's look


def scipy_bytescale(data: np.ndarray) -> np.ndarray:
    """scipy.misc.bytescale (scipy < 1.2) with its defaults, written out."""
    cmin, cmax = data.min(), data.max()
    cscale = cmax - cmin
    if cscale == 0:
        cscale = 1
    scale = np.float64(255.0) / np.float64(cscale)  # numpy < 2: python float / float32 scalar -> float64
    bytedata = (data - cmin) * data.dtype.type(scale) + 0  # ...then cast to the array's type in the product
    return (bytedata.clip(0, 255) + data.dtype.type(0.5)).astype(np.uint8)


def test_minmax_hand_computed_like_scipy_imsave() -> None:
    m = row(-1.0, 0.0, 0.5, 1.0, 2.0, 3.0, dtype=np.float32)
    # min -1, max 3: scale 63.75; (v + 1) * 63.75 + 0.5, truncated
    assert grey(map_to_image(m, norm="minmax")) == [0, 64, 96, 128, 191, 255]


def test_minmax_rounds_half_up_like_bytescale_not_half_to_even() -> None:
    m = row(0.0, 2.5, 126.5, 254.5, 255.0, dtype=np.float32)  # range 0..255: scale 1
    assert grey(map_to_image(m, norm="minmax")) == [0, 3, 127, 255, 255]
    assert np.round(126.5) == 126  # what a naive np.round would have given


def test_minmax_stretches_all_channels_together() -> None:
    m = np.zeros((3, 1, 2), dtype=np.float32)
    m[0, 0, 1] = 1.0
    m[1, 0, 1] = 10.0
    pic = map_to_image(m, norm="minmax")
    assert pic[0, 1].tolist() == [26, 255, 0]  # 1 * 25.5 + 0.5 -> 26, not 255: one range for the whole map
    assert pic[0, 0].tolist() == [0, 0, 0]


def test_minmax_equals_seed_formula_on_random_float32_maps() -> None:
    for seed in range(3):
        m = torch.from_numpy(np.random.default_rng(seed).normal(0, 1e-3, (3, 16, 20)).astype(np.float32))
        expected = scipy_bytescale(m.numpy().transpose(1, 2, 0))
        assert np.array_equal(map_to_image(m, norm="minmax"), expected)
        assert np.array_equal(bytescale(m.numpy()), scipy_bytescale(m.numpy()))


def test_bytescale_passes_uint8_through_and_integers_work() -> None:
    u = np.array([[3, 7]], dtype=np.uint8)
    assert bytescale(u) is u
    assert bytescale(np.array([[0, 1, 2]], dtype=np.int64)).tolist() == [[0, 128, 255]]


# ----------------------------------------------------------------------------- abs and signed


def test_abs_is_max_magnitude_over_channels_clipped_grey() -> None:
    m = np.array([[[1.0, -3.0, 0.0]], [[-2.0, 1.0, 0.0]]])  # (2, 1, 3): any channel count
    # max |.| over channels: 2, 3, 0; p = 3 -> 170, 255, 0
    assert grey(map_to_image(m, norm="abs", percentile=100)) == [170, 255, 0]
    assert np.array_equal(
        map_to_image(m, norm="abs", percentile=100, cmap="gray"), map_to_image(m, norm="abs", percentile=100)
    )
    hot = map_to_image(m, norm="abs", percentile=100, cmap="inferno")
    assert np.abs(hot[0, 1].astype(int) - cmap_rgb("inferno", 1.0)).max() <= 1


def test_signed_sums_channels_through_a_diverging_map() -> None:
    m = np.array([[[1.0, -1.0, 0.0, 0.5]], [[2.0, -2.0, 0.0, 1.0]]])  # sums: 3, -3, 0, 1.5
    pic = map_to_image(m, norm="signed", percentile=100).astype(int)
    assert np.abs(pic[0, 0] - cmap_rgb("RdBu_r", 1.0)).max() <= 1  # positive: red end
    assert np.abs(pic[0, 1] - cmap_rgb("RdBu_r", 0.0)).max() <= 1  # negative: blue end
    assert pic[0, 0, 0] > pic[0, 0, 2] and pic[0, 1, 2] > pic[0, 1, 0]
    centre = pic[0, 2]
    assert centre.tolist() == [247, 247, 247]  # 0: the exact centre of RdBu_r, ColorBrewer's #f7f7f7
    assert np.abs(pic[0, 3] - cmap_rgb("RdBu_r", 0.75)).max() <= 2
    assert map_to_image(m, norm="signed", cmap="bwr")[0, 2].tolist() == [255, 255, 255]  # 0: exactly white


# ----------------------------------------------------------------------------- degenerate maps and checks


@pytest.mark.parametrize("norm", NORMALIZATIONS)
@pytest.mark.parametrize("value", [0.0, 5.0, -2.0])
def test_constant_maps_give_documented_colours_without_division_by_zero(norm: str, value: float) -> None:
    m = np.full((3, 4, 5), value)
    with np.errstate(all="raise"):
        pic = map_to_image(m, norm=norm)
    assert pic.shape == (4, 5, 3) and pic.dtype == np.uint8
    assert (pic == pic[0, 0]).all()
    expected = {
        "percentile": {0.0: 128, 5.0: 255, -2.0: 0},
        "minmax": {0.0: 0, 5.0: 0, -2.0: 0},
        "abs": {0.0: 0, 5.0: 255, -2.0: 255},
    }
    if norm in expected:
        assert (pic == expected[norm][value]).all()
    elif value == 0.0:
        assert pic[0, 0].tolist() == [247, 247, 247]  # RdBu_r's neutral centre


@pytest.mark.parametrize("norm", NORMALIZATIONS)
def test_nan_and_inf_count_as_zero(norm: str) -> None:
    m = RNG.normal(size=(3, 6, 6))
    m[0, 0, 0], m[1, 2, 3], m[2, 5, 5] = np.nan, np.inf, -np.inf
    with np.errstate(invalid="raise"):
        pic = map_to_image(m, norm=norm)
    clean = m.copy()
    clean[~np.isfinite(clean)] = 0
    assert np.array_equal(pic, map_to_image(clean, norm=norm))


@pytest.mark.parametrize("norm", NORMALIZATIONS)
def test_tensor_array_and_2d_inputs_agree(norm: str) -> None:
    m = torch.randn(1, 8, 9, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    a = map_to_image(m, norm=norm)
    assert np.array_equal(a, map_to_image(m.numpy(), norm=norm))
    assert np.array_equal(a, map_to_image(m[0], norm=norm))
    assert a.std() > 0
    half = map_to_image(m.to(torch.bfloat16), norm=norm)
    assert half.shape == (8, 9, 3)


def test_map_is_not_modified() -> None:
    m = torch.randn(3, 5, 5)
    m[0, 0, 0] = float("nan")
    before = m.clone()
    for norm in NORMALIZATIONS:
        map_to_image(m, norm=norm)
    assert torch.equal(m.isnan(), before.isnan()) and torch.equal(m.nan_to_num(), before.nan_to_num())


def test_bad_arguments_raise_typed_errors_with_fixes() -> None:
    m = np.ones((3, 4, 4))
    with pytest.raises(UnknownNameError, match="did you mean 'minmax'"):
        map_to_image(m, norm="minmx")
    with pytest.raises(UnknownNameError, match="colour map 'infernoo'.*'inferno'"):
        map_to_image(m, norm="abs", cmap="infernoo")
    for bad in (0, -1, 100.5):
        with pytest.raises(InputError, match="percentile"):
            map_to_image(m, percentile=bad)
    with pytest.raises(InputError, match=r"pick one map"):
        map_to_image(np.ones((1, 3, 4, 4)))
    with pytest.raises(InputError, match="channels first"):
        map_to_image(np.ones((4, 4, 3)))
    with pytest.raises(InputError, match="1 or 3 channels"):
        map_to_image(np.ones((2, 4, 4)), norm="minmax")
    with pytest.raises(InputError, match="single-channel"):
        map_to_image(m, cmap="viridis")


def test_value_range_matches_the_scale_ends() -> None:
    m = np.array([[[1.0, -3.0, 0.0]], [[-2.0, 1.0, 0.0]]])
    assert value_range(m, norm="percentile", percentile=100) == (-3.0, 3.0)
    assert value_range(m, norm="abs", percentile=100) == (0.0, 3.0)
    assert value_range(m, norm="signed", percentile=100) == (-2.0, 2.0)  # sums -1, -2, 0
    assert value_range(m, norm="minmax") == (-3.0, 1.0)


def test_to_pil_and_method_picture() -> None:
    m = torch.randn(3, 10, 12, generator=torch.Generator().manual_seed(1))
    img = to_pil(m, norm="abs")
    assert isinstance(img, Image.Image) and img.size == (12, 10)
    assert np.array_equal(np.asarray(img), map_to_image(m, norm="abs"))
    assert np.array_equal(method_picture("guided_backprop", m, norm="signed"), map_to_image(m, norm="signed"))
    base = RNG.integers(0, 256, (10, 12, 3), dtype=np.uint8)
    cam = torch.rand(1, 5, 6, generator=torch.Generator().manual_seed(2))
    assert np.array_equal(method_picture("gradcam", cam, image=base), heatmap_overlay(base, cam))
    assert method_picture("gradcam", cam).shape == (5, 6, 3)


# ----------------------------------------------------------------------------- heat maps and overlays


def test_heatmap_normalised_by_its_maximum() -> None:
    h = np.array([[0.0, 1.0, 2.0, 4.0]])
    pic = heatmap(h)
    assert np.array_equal(pic, heatmap(h * 10)) and np.array_equal(pic, heatmap(h[None]))
    assert np.abs(pic[0, 3].astype(int) - cmap_rgb("inferno", 1.0)).max() <= 1
    assert np.abs(pic[0, 0].astype(int) - cmap_rgb("inferno", 0.0)).max() <= 1
    assert np.abs(pic[0, 2].astype(int) - cmap_rgb("inferno", 0.5)).max() <= 3
    assert np.array_equal(heatmap(np.array([[-5.0, 4.0]])), heatmap(np.array([[0.0, 4.0]])))  # negatives: 0
    with np.errstate(all="raise"):
        assert (heatmap(np.zeros((3, 3))) == heatmap(np.zeros((3, 3)))[0, 0]).all()


def test_overlay_size_blend_and_resize() -> None:
    image = RNG.integers(0, 256, (48, 64, 3), dtype=np.uint8)
    heat = torch.rand(1, 7, 7, generator=torch.Generator().manual_seed(0))
    out = heatmap_overlay(image, heat)
    assert out.shape == (48, 64, 3) and out.dtype == np.uint8 and out.std() > 0
    assert np.array_equal(heatmap_overlay(image, heat, alpha=0.0), image)
    assert np.array_equal(heatmap_overlay(image, heat, alpha=1.0), heatmap(heat, size=(64, 48)))
    expected = np.floor(0.5 * image + 0.5 * heatmap(heat, size=(64, 48)) + 0.5)
    assert np.array_equal(out, expected.astype(np.uint8))
    same = np.linspace(0, 1, 48 * 64).reshape(48, 64)
    assert np.array_equal(heatmap_overlay(Image.fromarray(image), same, alpha=1.0), heatmap(same))
    with pytest.raises(InputError, match="alpha"):
        heatmap_overlay(image, heat, alpha=1.5)
    with pytest.raises(InputError, match="uint8"):
        heatmap_overlay(image.astype(np.float32), heat)


# ----------------------------------------------------------------------------- colour bars and panels


def test_colorbar_strip_and_labels() -> None:
    bar = colorbar("RdBu_r", -0.25, 0.25, width=200, height=10, label="0", diverging=True)
    a = np.asarray(bar).astype(int)
    assert bar.size[0] == 200 and bar.size[1] > 10 and bar.mode == "RGB"
    assert (
        np.abs(a[5, 0] - cmap_rgb("RdBu_r", 0.0)).max() <= 1 and np.abs(a[5, 199] - cmap_rgb("RdBu_r", 1.0)).max() <= 1
    )
    labels = a[11:]
    assert (labels < 128).any()  # the min / max labels are drawn
    assert (labels[:, :30] < 128).any() and (labels[:, -30:] < 128).any()


def test_panel_layout_without_titles_is_exact() -> None:
    image = RNG.integers(0, 256, (32, 32, 3), dtype=np.uint8)
    maps = {"a": map_to_image(torch.randn(3, 32, 32)), "b": heatmap(np.random.default_rng(1).random((32, 32)))}
    pic = panel(image, maps, titles={"a": "", "b": ""}, input_title=None, min_tile=128, gap=8)
    assert isinstance(pic, Image.Image) and pic.size == (8 + 3 * (128 + 8), 8 + 128 + 8)
    a = np.asarray(pic)
    big = np.asarray(Image.fromarray(image).resize((128, 128), Image.Resampling.NEAREST))
    assert np.array_equal(a[8:136, 8:136], big)  # tiny inputs are enlarged x4, nearest neighbour
    second = np.asarray(Image.fromarray(maps["a"]).resize((128, 128), Image.Resampling.NEAREST))
    assert np.array_equal(a[8:136, 144:272], second)


def test_panel_with_titles_headline_and_colour_bar() -> None:
    image = RNG.integers(0, 256, (64, 48, 3), dtype=np.uint8)
    m = torch.randn(3, 64, 48, generator=torch.Generator().manual_seed(3))
    lo, hi = value_range(m, norm="signed")
    maps = {
        "guided backprop · Egyptian cat 0.76": map_to_image(m),
        "signed": map_to_image(m, norm="signed"),
        "grad-cam": heatmap_overlay(image, torch.rand(7, 5, generator=torch.Generator().manual_seed(4))),
        "small": map_to_image(torch.randn(3, 16, 12)),  # another size: resized to the tile
    }
    bars = {"signed": colorbar("RdBu_r", lo, hi, label="0", diverging=True)}
    pic = panel(image, maps, title="chat égyptien.jpg — top-1", colorbars=bars, min_tile=96)
    plain = panel(image, maps, titles={k: "" for k in maps}, input_title=None, min_tile=96)
    assert pic.width == plain.width == 8 + 5 * (96 + 8)  # 48 px wide -> x2
    assert pic.height > plain.height + 20  # headline, titles, colour bar
    a = np.asarray(pic)
    assert a.std() > 0 and (a[: 8 + 12, :] < 100).any()  # dark headline text at the top


def test_panel_shortens_long_titles_and_rejects_bad_pictures() -> None:
    image = np.zeros((40, 40, 3), dtype=np.uint8)
    long = {"x" * 300: np.full((40, 40, 3), 200, dtype=np.uint8)}
    assert panel(image, long, min_tile=40).width == 8 + 2 * 48
    with pytest.raises(InputError, match="picture 'bad'"):
        panel(image, {"bad": np.zeros((40, 40), dtype=np.float32)})


# ----------------------------------------------------------------------------- saving


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


def test_saved_png_round_trips_exactly(tmp_path: Path) -> None:
    pic = map_to_image(torch.randn(3, 20, 30), norm="signed")
    out = save_image(pic, tmp_path / "deep" / "map_0_class_285.png")
    assert out == tmp_path / "deep" / "map_0_class_285.png"
    with Image.open(out) as saved:
        assert saved.format == "PNG" and np.array_equal(np.asarray(saved), pic)
    assert leftovers(out.parent) == []
    umask = os.umask(0)
    os.umask(umask)
    assert out.stat().st_mode & 0o777 == 0o666 & ~umask  # a normal file, not mkstemp's 0600


def test_format_follows_extension(tmp_path: Path) -> None:
    pic = np.full((8, 8, 3), 90, dtype=np.uint8)
    for name, fmt in [("a.JPG", "JPEG"), ("b.webp", "WEBP"), ("c", "PNG"), ("d.PNG", "PNG")]:
        with Image.open(save_image(pic, tmp_path / name)) as saved:
            assert saved.format == fmt and saved.size == (8, 8)
    save_image(Image.fromarray(np.zeros((4, 4, 4), dtype=np.uint8)), tmp_path / "rgba.jpg")  # alpha dropped
    with pytest.raises(UnknownNameError, match="image file extension '.pnj'.*'.png'"):
        save_image(pic, tmp_path / "x.pnj")
    with pytest.raises(InputError, match="uint8"):
        save_image(pic.astype(np.float64), tmp_path / "f.png")
    assert leftovers(tmp_path) == []


def test_failed_write_leaves_no_temp_file_and_keeps_the_old_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "im_0.png"
    old = np.full((4, 4, 3), 7, dtype=np.uint8)
    save_image(old, target)

    def broken_save(self: Image.Image, fp: object, *args: object, **kwargs: object) -> None:
        fp.write(b"\x89PNG half a file")  # type: ignore[attr-defined]
        raise OSError("disk full")

    monkeypatch.setattr(Image.Image, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        save_image(np.zeros((4, 4, 3), dtype=np.uint8), target)
    with pytest.raises(OSError, match="disk full"):
        save_image(np.zeros((4, 4, 3), dtype=np.uint8), tmp_path / "new.png")
    monkeypatch.undo()
    assert leftovers(tmp_path) == [] and sorted(p.name for p in tmp_path.iterdir()) == ["im_0.png"]
    with Image.open(target) as saved:
        assert np.array_equal(np.asarray(saved), old)


def test_interrupted_rename_and_keyboard_interrupt_clean_up(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_replace(src: object, dst: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "replace", no_replace)
    with pytest.raises(KeyboardInterrupt):
        save_image(np.zeros((4, 4, 3), dtype=np.uint8), tmp_path / "x.png")
    monkeypatch.undo()
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_import_does_not_load_matplotlib(tmp_path: Path) -> None:
    code = ("import sys, guided_backprop.pictures.render, guided_backprop.pictures.panels, guided_backprop.images; "
            "print('matplotlib' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert result.stdout.strip() == "False"


def test_explanation_panel_has_a_tile_per_method_and_colour_bars() -> None:
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)
    maps = {"guided_backprop": rng.normal(size=(3, 64, 64)), "gradcam": rng.random((1, 64, 64))}
    with_bars = panels.explanation_panel(image, maps, class_name="cat", probability=0.5)
    plain = panels.explanation_panel(image, maps, class_name="cat", probability=0.5, colorbars=False)
    assert with_bars.width == plain.width and with_bars.width >= 3 * 128  # input + 2 maps, enlarged to 128
    assert with_bars.height > plain.height  # the Grad-CAM tile got its colour bar
    assert np.asarray(plain).std() > 0
