"""What higher layers see: top activations, crops in the receptive field, the 3x3 grids."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

import guided_backprop as gbp
from guided_backprop.images import load_image
from guided_backprop.models import Preprocessing
from guided_backprop.pictures import render
from guided_backprop.units.grids import (
    ImageFiles,
    save_unit_grids,
    top_activations,
    unit_grids,
    unit_grids_from_paths,
)
from guided_backprop.units.receptive import receptive_field

from .nets import UnitNet


@pytest.fixture
def model() -> UnitNet:
    torch.manual_seed(0)
    return UnitNet().double().eval()


def _images(n: int, seed: int = 0, size: tuple[int, int] = (16, 16)) -> torch.Tensor:
    return torch.randn(n, 3, *size, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))


def _layer(model: nn.Module, x: torch.Tensor, layer: str) -> torch.Tensor:
    out = {}
    handle = gbp.find_layer(model, layer).register_forward_hook(lambda _m, _i, o: out.setdefault("a", o.clone()))
    try:
        with torch.no_grad():
            model(x)
    finally:
        handle.remove()
    return out["a"]


def brute_force(model: nn.Module, images: Sequence[torch.Tensor], layer: str, channel: int, k: int) -> list:
    """All (image, position) pairs sorted by (-value, image, y, x); each image's first, then the rest."""
    entries = []
    for i, img in enumerate(images):
        a = _layer(model, img[None], layer)[0, channel]
        for y in range(a.shape[0]):
            for x in range(a.shape[1]):
                entries.append((-float(a[y, x]), i, y, x))
    entries.sort()
    first, used = [], set()
    for e in entries:
        if e[1] not in used:
            used.add(e[1])
            first.append(e)
    chosen = first[:k]
    chosen += [e for e in entries if e not in first][: k - len(chosen)]
    return [(i, y, x, -v) for v, i, y, x in chosen]


def _got(entries) -> list:  # type: ignore[no-untyped-def]
    return [(e.image, e.y, e.x, e.activation) for e in entries]


# -- the top k ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("layer", ["features.conv2", "features.relu3"])
@pytest.mark.slow
def test_top9_equals_brute_force_with_ties_and_mixed_sizes(model: UnitNet, layer: str) -> None:
    images = list(_images(7, seed=1)) + list(_images(4, seed=2, size=(20, 12))) + list(_images(3, seed=3))
    images[5] = images[2].clone()  # exact ties across images: the earlier image wins
    images[12] = images[0].clone()
    units = top_activations(model, images, layer, channels=[0, 2, 4], k=9, batch_size=4)
    assert [u.channel for u in units] == [0, 2, 4] and all(u.score is None for u in units)
    for unit in units:
        assert _got(unit.top) == brute_force(model, images, layer, unit.channel, 9)
        assert len({e.image for e in unit.top}) == 9  # one per image


def test_fewer_images_than_k_fill_with_other_positions(model: UnitNet) -> None:
    images = _images(3, seed=4)
    (unit,) = top_activations(model, images, "features.relu2", channels=[1], k=9, batch_size=2)
    assert _got(unit.top) == brute_force(model, list(images), "features.relu2", 1, 9)
    assert {e.image for e in unit.top[:3]} == {0, 1, 2}  # each image's best first
    assert len({(e.image, e.y, e.x) for e in unit.top}) == 9


@pytest.mark.parametrize("rank_by", ["mean", "max"])
def test_top_channels_by_mean_or_max_activation(model: UnitNet, rank_by: str) -> None:
    images = _images(6, seed=5)
    acts = _layer(model, images, "features.conv3")
    scores = acts.mean(dim=(2, 3)).mean(0) if rank_by == "mean" else acts.amax(dim=(0, 2, 3))
    units = top_activations(model, images, "features.conv3", top_channels=3, k=4, rank_by=rank_by, batch_size=4)
    assert [u.channel for u in units] == scores.argsort(descending=True)[:3].tolist()
    for u in units:
        assert u.score == pytest.approx(float(scores[u.channel]))
        assert _got(u.top) == brute_force(model, list(images), "features.conv3", u.channel, 4)


def test_streams_in_batches_and_rereads_only_the_winners(model: UnitNet) -> None:
    class Counting(Sequence):
        def __init__(self, data: torch.Tensor) -> None:
            self.data, self.reads = data, 0

        def __len__(self) -> int:
            return len(self.data)

        def __getitem__(self, i):  # type: ignore[no-untyped-def]
            self.reads += 1
            return self.data[i]

    images = Counting(_images(10, seed=6))
    batches: list[int] = []
    handle = model.features.conv1.register_forward_hook(
        lambda _m, i, _o: batches.append(i[0].shape[0]) if i[0].device.type != "meta" else None  # not the trace
    )
    try:
        grids = unit_grids(model, images, "features.conv2", top_channels=2, k=3, batch_size=4)
    finally:
        handle.remove()
    assert batches[:3] == [4, 4, 2]  # the scan, then one forward per explained unit
    assert batches[3:] == [1] * 6
    assert images.reads == 10 + 2 * 3
    assert len(grids) == 2


# -- crops, maps and pictures -------------------------------------------------------------------------
@pytest.mark.slow
def test_crops_are_the_receptive_field_and_maps_equal_explainer(model: UnitNet) -> None:
    images = _images(12, seed=7)

    def show(x: torch.Tensor) -> np.ndarray:
        return ((x[0].numpy() > 0) * 200 + 20).astype(np.uint8)  # grey: repeated to RGB

    grids = unit_grids(model, images, "features.conv3", channels=[3, 0], k=9, display=show)
    rf = receptive_field(model, "features.conv3", (16, 16))
    assert rf.size == (12, 12)  # 3, 3 + 1 = 4 (pool, jump 2), 4 + 2 * 2 = 8, 8 + 2 * 2 = 12
    explainer = gbp.Explainer(model)
    clipped = 0
    for g in grids:
        assert g.field == rf and g.methods == ("guided_backprop", "deconvnet")
        for e in g.top:
            x = images[e.image]
            top, left, bottom, right = rf.box(e.y, e.x, (16, 16))
            assert e.box == (top, left, bottom, right)
            assert e.patch.shape == (bottom - top, right - left, 3)
            clipped += e.patch.shape[:2] != rf.size
            assert np.array_equal(e.patch, np.repeat(show(x)[top:bottom, left:right, None], 3, axis=2))
            act = _layer(model, x[None], "features.conv3")[0, g.channel, e.y, e.x]
            assert e.activation == pytest.approx(float(act))
            ex = explainer.explain(x[None], gbp.Neuron("features.conv3", g.channel, e.y, e.x),
                                   methods=("guided_backprop", "deconvnet"))
            for m in ("guided_backprop", "deconvnet"):
                full = ex.maps[m][0, 0]
                assert torch.equal(e.maps[m], full[:, top:bottom, left:right])
                outside = full.clone()
                outside[:, top:bottom, left:right] = 0
                assert not outside.any()  # nothing outside the receptive field
                assert np.array_equal(e.pictures[m], render.map_to_image(e.maps[m]))
                assert e.maps[m].abs().sum() > 0
    assert clipped > 0  # some fields reach outside the 16x16 images


def test_grid_picture_size_and_content(model: UnitNet) -> None:
    images = _images(9, seed=8)
    (g,) = unit_grids(model, images, "features.conv2", channels=[5], k=9, min_cell=24, gap=2)
    rf = g.field
    assert rf.size == (8, 8)
    factor = math.ceil(24 / 8)
    side = 3 * 8 * factor + 2 * 2
    assert set(g.panels) == {"image", "guided_backprop", "deconvnet"}
    assert all(p.size == (side, side) for p in g.panels.values())
    assert g.picture.width > 3 * side and g.picture.height > side
    pic = np.asarray(g.picture)
    assert pic.std() > 20 and len(np.unique(pic.reshape(-1, 3), axis=0)) > 100  # not blank
    # The best patch sits in the first cell, enlarged, where it lies in its field.
    panel = np.asarray(g.panels["image"])
    e = g.top[0]
    utop, uleft = rf.unclipped_box(e.y, e.x)[:2]
    oy, ox = (e.box[0] - utop) * factor, (e.box[1] - uleft) * factor
    big = np.repeat(np.repeat(e.patch, factor, axis=0), factor, axis=1)
    assert np.array_equal(panel[oy : oy + big.shape[0], ox : ox + big.shape[1]], big)
    for m in ("guided_backprop", "deconvnet"):
        cell = np.asarray(g.panels[m])[oy : oy + big.shape[0], ox : ox + big.shape[1]]
        assert np.array_equal(cell, np.repeat(np.repeat(e.pictures[m], factor, axis=0), factor, axis=1))


def test_bgr_preprocessing_shows_patches_and_maps_in_rgb(model: UnitNet) -> None:
    prep = Preprocessing(resize=None, crop=None, mean=(100.0, 110.0, 120.0), std=(1.0, 1.0, 1.0), scale=255.0,
                         bgr=True)
    x = _images(4, seed=14) * 40
    (g,) = unit_grids(model, x, "features.conv2", channels=[1], k=2, display=prep)
    for e in g.top:
        top, left, bottom, right = e.box
        assert np.array_equal(e.patch, prep.invert(x[e.image])[top:bottom, left:right])
        assert np.array_equal(e.pictures["guided_backprop"], render.map_to_image(e.maps["guided_backprop"].flip(0)))


def test_first_layer_units_use_the_plain_gradient(model: UnitNet) -> None:
    x = _images(2, seed=9)
    (g,) = unit_grids(model, x, "features.conv1", channels=[2], k=2)
    e = g.top[0]
    sal = gbp.Explainer(model).explain(x[e.image][None], gbp.Neuron("features.conv1", 2, e.y, e.x),
                                       methods="saliency").maps["saliency"][0, 0]
    top, left, bottom, right = e.box
    for m in ("guided_backprop", "deconvnet"):
        assert torch.equal(e.maps[m], sal[:, top:bottom, left:right])


def test_model_is_left_as_it_was(model: UnitNet) -> None:
    model.train()
    unit_grids(model, _images(4, seed=10), "features.relu2", top_channels=1, k=2)
    assert all(m.training for m in model.modules())
    assert all(not m._forward_hooks for m in model.modules())
    assert all(p.grad is None for p in model.parameters())


# -- files ----------------------------------------------------------------------------------------------
def test_save_unit_grids_writes_pngs_and_a_manifest(model: UnitNet, tmp_path) -> None:  # type: ignore[no-untyped-def]
    grids = unit_grids(model, _images(5, seed=11), "features.conv2", top_channels=2, k=4)
    paths = save_unit_grids(grids, tmp_path / "out")
    assert [p.name for p in paths] == [f"unit_features.conv2_c{g.channel}.png" for g in grids]
    for p, g in zip(paths, grids):
        with Image.open(p) as im:
            assert im.size == g.picture.size
            assert np.array_equal(np.asarray(im.convert("RGB")), np.asarray(g.picture.convert("RGB")))
    manifest = json.loads((tmp_path / "out" / "units.json").read_text())
    assert [u["file"] for u in manifest["units"]] == [p.name for p in paths]
    first = manifest["units"][0]
    assert first["receptive_field"]["size"] == [8, 8] and first["rank_by"] == "mean"
    assert [t["image"] for t in first["top"]] == [e.image for e in grids[0].top]
    assert sorted(f.name for f in (tmp_path / "out").iterdir()) == sorted([p.name for p in paths] + ["units.json"])


def test_from_paths_reads_files_lazily_and_skips_bad_ones(model: UnitNet, tmp_path) -> None:  # type: ignore[no-untyped-def]
    rng = np.random.default_rng(12)
    for i in range(5):
        Image.fromarray(rng.integers(0, 256, (24, 20, 3), dtype=np.uint8)).save(tmp_path / f"im{i}.png")
    (tmp_path / "broken.png").write_bytes(b"not an image")
    prep = Preprocessing(resize=None, crop=16, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    # float32 files into a float64 model: cast on the way in
    with pytest.raises(gbp.ImageError, match="broken.png"):
        unit_grids_from_paths(model, [tmp_path], "features.conv2", prep, channels=[0], k=3)
    with pytest.warns(UserWarning, match="broken.png"):
        (g,) = unit_grids_from_paths(model, [tmp_path], "features.conv2", prep, channels=[0], k=3, on_error="skip")
    files = ImageFiles(sorted(tmp_path.glob("im*.png")), prep)
    assert len(files) == 5 and files[0].shape == (3, 16, 16)
    for e in g.top:
        assert e.source is not None and e.source.endswith(".png") and "broken" not in e.source
        seen = prep.invert(prep(load_image(e.source)))
        top, left, bottom, right = e.box
        assert np.array_equal(e.patch, seen[top:bottom, left:right])


# -- errors ---------------------------------------------------------------------------------------------
def test_errors_name_the_value_and_the_fix(model: UnitNet) -> None:
    x = _images(2, seed=13)
    with pytest.raises(gbp.UnknownNameError, match="features.conv2"):
        unit_grids(model, x, "features.conv", channels=[0])
    with pytest.raises(gbp.TargetError, match=r"channel 6 is out of range.*0\.\.5"):
        unit_grids(model, x, "features.conv2", channels=[6])
    with pytest.raises(gbp.TargetError, match=r"\(N, C, H, W\)"):
        unit_grids(model, x, "head", channels=[0])
    with pytest.raises(gbp.InputError, match="at least one image"):
        unit_grids(model, x[:0], "features.conv2")
    with pytest.raises(gbp.InputError, match=r"image 1 must be a float tensor \(C, H, W\)"):
        unit_grids(model, [x[0], x[1].long()], "features.conv2")
    with pytest.raises(gbp.UnknownNameError, match="ranking"):
        unit_grids(model, x, "features.conv2", rank_by="median")  # type: ignore[arg-type]
    with pytest.raises(gbp.UnknownNameError, match="method"):
        unit_grids(model, x, "features.conv2", methods=("guided",  "nope"))
    with pytest.raises(gbp.InputError, match="k must be >= 1"):
        unit_grids(model, x, "features.conv2", k=0)


@pytest.mark.slow
def test_unreadable_files_leave_no_blank_cells_the_good_images_can_fill(model: UnitNet, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """9 files, 3 unreadable, k = 9: the 6 good images fill all 9 cells (each image's best, then the next
    best positions), exactly as the 6 good images alone do; before, only 6 cells were filled."""
    rng = np.random.default_rng(21)
    good = []
    for i in range(9):
        path = tmp_path / f"im{i}.png"
        if i % 3 == 1:
            path.write_bytes(b"not an image")
        else:
            Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(path)
            good.append(path)
    prep = Preprocessing(resize=None, crop=16, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    with pytest.warns(UserWarning, match="skipped"):
        (g,) = unit_grids_from_paths(model, [tmp_path], "features.conv2", prep, channels=[0], k=9,
                                     on_error="skip", batch_size=2)
    (alone,) = unit_grids_from_paths(model, good, "features.conv2", prep, channels=[0], k=9, batch_size=2)
    assert len(g.top) == 9
    assert [(e.source, e.y, e.x) for e in g.top] == [(e.source, e.y, e.x) for e in alone.top]
    grid = np.asarray(g.panels["image"])
    cell = grid.shape[0] // 3  # 3 x 3 cells with 2-px gaps: sample each cell's centre
    centres = [grid[r * (cell + 1) + cell // 2, c * (cell + 1) + cell // 2] for r in range(3) for c in range(3)]
    assert all(not np.array_equal(px, [225, 225, 225]) for px in centres)
