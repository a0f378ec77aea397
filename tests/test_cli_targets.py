"""The command on segmenters, detectors and raw scores: --target's grammar, --mask, --score-threshold,
what index.jsonl / predictions.csv / run.json say was explained (apart from the prediction), no map where
nothing was found, all-zero maps and partial guidance said."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from .fixtures.cli_images import write_plain
from .fixtures.runs import invoke

MODELS = Path(__file__).parent / "fixtures" / "cli_models.py"


def _index(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "index.jsonl").read_text().splitlines()]


def _csv(out: Path) -> list[dict[str, str]]:
    return list(csv.DictReader((out / "predictions.csv").open()))


@pytest.mark.slow
def test_detections_are_explained_with_their_box_label_and_raw_score(tmp_path: Path) -> None:
    write_plain(tmp_path / "in", 2)
    out = tmp_path / "out"
    result = invoke("run", tmp_path / "in", "-o", out, "--model", f"{MODELS}:detector", "--target", "detections:2",
                    "--score-threshold", "0", "--methods", "gbp,gradcam", "--panel", "--workers", "0")
    assert result.exit_code == 0, result.output
    line = _index(out)[0]
    assert line["top5"] == [] and line["class_index"] is None  # a detector has no class prediction
    first, second = line["explained"]
    assert first["target"] == "detection 0" and first["value_kind"] == "score" and first["found"]
    assert first["value"] == round(first["detection_score"], 6) and first["value"] >= second["value"]
    assert first["class_name"] == {1: "person", 2: "dog"}[first["label"]] and len(first["box"]) == 4
    assert set(line["files"]) == {"input", "guided_backprop", "guided_backprop_top2", "gradcam", "gradcam_top2",
                                  "panel"}
    run = json.loads((out / "run.json").read_text())
    assert run["output_kind"] == "detector" and run["guidance"] == "yes"
    row = _csv(out)[0]
    assert row["explained_target"] == "detection 0" and row["explained_value_kind"] == "score"
    assert row["probability"] == "" and float(row["explained_value"]) == first["value"]


def test_an_image_without_a_detection_gets_no_map_and_one_line(tmp_path: Path) -> None:
    write_plain(tmp_path / "in", 1)
    out = tmp_path / "out"
    result = invoke("run", tmp_path / "in", "-o", out, "--model", f"{MODELS}:detector", "--target", "box:0,0,5,5",
                    "--workers", "0")
    assert result.exit_code == 0, result.output
    assert "no map: " in result.stderr and "no detection overlaps the box with IoU >= 0.5" in result.stderr
    (line,) = _index(out)
    assert line["status"] == "ok" and set(line["files"]) == {"input"} and not line["explained"][0]["found"]
    assert sorted(p.name for p in out.glob("map_*")) == []  # never a zero map


def test_a_segmenters_region_by_class_name_and_by_mask(tmp_path: Path) -> None:
    write_plain(tmp_path / "in", 1)
    out = tmp_path / "out"
    result = invoke("run", tmp_path / "in", "-o", out, "--model", f"{MODELS}:segmenter", "--target", "dog",
                    "--workers", "0")
    assert result.exit_code == 0, result.output
    # MobileNetV3-like partial guidance is said first, and in run.json
    assert result.stderr.startswith("note: guidance is partial: guided_backprop change only the ReLUs; Hardswish")
    run = json.loads((out / "run.json").read_text())
    assert run["output_kind"] == "segmenter" and run["guidance"] == "partly" and run["target"] == "region 2"
    (line,) = _index(out)
    explained = line["explained"][0]
    assert explained["class_name"] == "dog" and explained["value_kind"] == "score" and explained["pixels"] >= 0

    mask = np.zeros((40, 48), np.uint8)
    mask[5:15, 10:30] = 255
    Image.fromarray(mask).save(tmp_path / "mask.png")
    masked = tmp_path / "masked"
    result = invoke("run", tmp_path / "in", "-o", masked, "--model", f"{MODELS}:segmenter", "--target", "dog",
                    "--mask", tmp_path / "mask.png", "--workers", "0")
    assert result.exit_code == 0, result.output
    pixels = _index(masked)[0]["explained"][0]["pixels"]
    assert 0 < pixels < 40 * 48 * 25  # the mask's share of the network's input, not every pixel

    result = invoke("run", tmp_path / "in", "-o", tmp_path / "bad", "--model", f"{MODELS}:segmenter", "--target",
                    "dgo", "--workers", "0")
    assert result.exit_code == 2 and "did you mean 'dog'" in result.stderr
    result = invoke("run", tmp_path / "in", "-o", tmp_path / "bad2", "--model", f"{MODELS}:segmenter", "--target",
                    "detections:3", "--workers", "0")
    assert result.exit_code == 2 and "--target" in result.stderr and "explains a detector's boxes" in result.stderr


def test_predictions_csv_keeps_the_explained_class_apart_from_the_prediction(tmp_path: Path) -> None:
    write_plain(tmp_path / "in", 2)
    out = tmp_path / "out"
    result = invoke("run", tmp_path / "in", "-o", out, "--model", f"{MODELS}:tiny", "--target", "3", "--workers", "0")
    assert result.exit_code == 0, result.output
    for row, line in zip(_csv(out), _index(out)):
        assert row["explained_class_index"] == "3" and row["explained_class_name"] == line["explained"][0][
            "class_name"]
        assert row["class_index"] == str(line["top5"][0][0])  # the prediction, kept in its own columns
        assert row["explained_value_kind"] == "probability"


def test_an_all_zero_map_is_written_and_flagged(tmp_path: Path) -> None:
    write_plain(tmp_path / "in", 1)
    out = tmp_path / "out"
    result = invoke("run", tmp_path / "in", "-o", out, "--model", f"{MODELS}:dead", "--workers", "0")
    assert result.exit_code == 0, result.output
    assert "warning: " in result.stderr and "the guided_backprop map of class is all zeros" in result.stderr
    (line,) = _index(out)
    assert line["explained"][0]["zero_maps"] == ["guided_backprop"] and "guided_backprop" in line["files"]
    assert _csv(out)[0]["explained_zero_maps"] == "guided_backprop"


@pytest.mark.slow
def test_models_lists_segmenters_and_detectors_with_their_output_kind() -> None:
    result = invoke("models", "--all")
    assert result.exit_code == 0
    lines = {line.split()[0]: line for line in result.output.splitlines() if line.strip()}
    assert " segmenter " in lines["fcn_resnet50"] and " detector " in lines["fasterrcnn_resnet50_fpn_v2"]
    assert " partly " in lines["lraspp_mobilenet_v3_large"] and " classifier " in lines["resnet18"]


def test_a_detection_map_has_its_box_drawn(tmp_path: Path) -> None:
    from guided_backprop.pictures.render import BOX_COLOURS, outline_box

    picture = np.zeros((10, 12, 3), np.uint8)
    drawn = outline_box(picture, (2, 3, 8, 7), width=1)
    assert (drawn[3, 2:9] == BOX_COLOURS[0]).all() and (drawn[3:8, 8] == BOX_COLOURS[0]).all()
    assert not drawn[5, 5].any() and not picture.any()  # inside untouched, the caller's picture too
    write_plain(tmp_path / "in", 1)
    out = tmp_path / "out"
    result = invoke("run", tmp_path / "in", "-o", out, "--model", f"{MODELS}:detector", "--target", "detections:1",
                    "--score-threshold", "0", "--methods", "saliency", "--norm", "abs", "--workers", "0")
    assert result.exit_code == 0, result.output
    (line,) = _index(out)
    x0, y0, x1, y1 = (int(round(v)) for v in line["explained"][0]["box"])
    saved = np.asarray(Image.open(out / line["files"]["saliency"]).convert("RGB"))
    assert (saved[y0, x0:x1] == BOX_COLOURS[0]).all()


def test_the_name_template_takes_what_the_map_explains(tmp_path: Path) -> None:
    write_plain(tmp_path / "in", 1)
    out = tmp_path / "out"
    result = invoke("run", tmp_path / "in", "-o", out, "--model", f"{MODELS}:detector", "--target", "detections:2",
                    "--score-threshold", "0", "--name", "map_{idx}_{target}.png", "--workers", "0")
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.glob("map_*")) == ["map_0_detection_0.png", "map_0_detection_1.png"]


def test_partial_guidance_and_random_timm_weights_are_said() -> None:
    from types import SimpleNamespace

    from torch import nn

    from guided_backprop.batch.plan import _notes

    mobile = SimpleNamespace(model=nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Hardswish()),
                             weights="random initialisation")
    notes, guidance = _notes(mobile, "timm:mobilenetv3_small_100", ("guided_backprop", "saliency"))
    assert guidance == "partly" and notes[0].startswith("guidance is partial: guided_backprop change only the ReLUs;")
    assert "Hardswish keeps plain gradients" in notes[0]
    assert notes[1] == "timm:mobilenetv3_small_100 runs on random weights (give --weights pretrained or --weights FILE)"
    plain = SimpleNamespace(model=nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU()), weights="checkpoint w.pt")
    assert _notes(plain, "timm:resnet18", ("guided_backprop",)) == ([], "yes")
    trained = SimpleNamespace(model=mobile.model, weights="checkpoint w.pt")
    assert _notes(trained, "mobilenet_v3_small", ("saliency",)) == ([], "partly")  # saliency is not guided


def test_random_torchvision_task_models_are_seeded_scaled_and_said() -> None:
    """--weights random on torchvision's segmenters and detectors: the same model twice (seeded), scores that
    differ (layers scaled to unit spread: unscaled, MobileNetV3's activations vanish and every class scores
    alike, so a detector finds nothing), and the run's first lines say the weights are random."""
    import torch

    from guided_backprop.batch.plan import _notes
    from guided_backprop.models import load_model

    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    first = load_model("fasterrcnn_mobilenet_v3_large_320_fpn", weights="random")
    assert torch.equal(torch.rand(1), before)  # the caller's random state is left as it was
    again = load_model("fasterrcnn_mobilenet_v3_large_320_fpn", weights="random")
    assert all(torch.equal(a, b) for a, b in zip(first.model.state_dict().values(), again.model.state_dict().values()))
    from skimage import data

    x = torch.tensor(data.astronaut()[::4, ::4].copy()).permute(2, 0, 1)[None].float() / 255  # a photo, 128 x 128
    with torch.no_grad():
        det = first.model.eval()(x)[0]
    assert len(det["scores"]) >= 3 and float(det["scores"][0] - det["scores"][2]) > 1e-3  # detections, ranked
    seg = load_model("lraspp_mobilenet_v3_large", weights="random").model.eval()
    with torch.no_grad():
        out = seg(x)["out"]
    assert len(out.argmax(1).unique()) > 1 and float(out.std()) > 0.1  # classes differ from pixel to pixel
    notes, _ = _notes(first, "fasterrcnn_mobilenet_v3_large_320_fpn", ("saliency",))
    assert notes == ["fasterrcnn_mobilenet_v3_large_320_fpn runs on random weights (random initialisation (seed 0, "
                     "layers scaled to unit spread; no download)): the maps show no learned features"]


def _coloured(path: Path, colour: tuple[int, int, int]) -> np.ndarray:
    """Where a written picture has exactly ``colour``."""
    return (np.asarray(Image.open(path).convert("RGB")) == np.asarray(colour)).all(axis=2)


def test_pictures_show_the_explained_box_and_the_regions_outline(tmp_path: Path) -> None:
    """A detection map has its box drawn where the box is (with a label and score tag); a region map has
    the region's outline, following the mask; the panel's row shows them on the input too."""
    from guided_backprop.pictures.render import BOX_COLOURS

    write_plain(tmp_path / "in", 1)
    out = tmp_path / "det"
    result = invoke("run", tmp_path / "in", "-o", out, "--model", f"{MODELS}:detector", "--target", "detections:1",
                    "--score-threshold", "0", "--methods", "saliency", "--panel", "--workers", "0")
    assert result.exit_code == 0, result.output
    (line,) = _index(out)
    x0, y0, x1, y1 = (round(v) for v in line["explained"][0]["box"])
    red = _coloured(out / line["files"]["saliency"], BOX_COLOURS[0])
    h, w = red.shape
    x1, y1 = min(x1, w - 1), min(y1, h - 1)
    ym, xm = (y0 + y1) // 2, (x0 + x1) // 2
    assert red[ym, x0] and red[ym, x1] and red[y1, xm]  # left, right and bottom edges, where the box is
    assert not red[y0 + 4:y1 - 1, x0 + 2:x1 - 1][-(y1 - y0) // 2:].any()  # not inside (below the tag)
    outside = red.copy()
    outside[max(0, y0 - 20):y1 + 1, x0:x1 + 1] = False  # the box and its tag
    assert not outside.any()
    columns = np.nonzero(_coloured(out / line["files"]["panel"], BOX_COLOURS[0]).any(axis=0))[0]
    assert columns.max() - columns.min() > w  # the panel's row: on the input and on the map beside it

    mask = np.zeros((40, 48), np.uint8)
    mask[5:15, 10:30] = 255
    Image.fromarray(mask).save(tmp_path / "mask.png")
    out = tmp_path / "seg"
    result = invoke("run", tmp_path / "in", "-o", out, "--model", f"{MODELS}:segmenter", "--target", "dog",
                    "--mask", tmp_path / "mask.png", "--methods", "saliency", "--workers", "0")
    assert result.exit_code == 0, result.output
    (line,) = _index(out)
    drawn = _coloured(out / line["files"]["saliency"], BOX_COLOURS[0])
    region = np.asarray(Image.fromarray(mask).resize(drawn.shape[::-1], Image.Resampling.NEAREST)) > 0
    ys, xs = np.nonzero(region)
    inner = np.zeros_like(region)
    inner[ys.min() + 2:ys.max() - 1, xs.min() + 2:xs.max() - 1] = True
    assert drawn[region & ~inner].all() and not drawn[inner].any()  # the outline follows the mask
    assert not (drawn & ~region)[ys.min():].any()  # nothing else drawn (the class's tag is above the region)


def test_the_report_says_partial_guidance_the_explained_targets_and_all_zero_maps(tmp_path: Path) -> None:
    from .test_report import _parse

    write_plain(tmp_path / "in", 1)
    seg = tmp_path / "seg"
    result = invoke("run", tmp_path / "in", "-o", seg, "--model", f"{MODELS}:segmenter", "--target", "dog",
                    "--workers", "0")
    assert result.exit_code == 0, result.output
    notes = json.loads((seg / "run.json").read_text())["notes"]
    assert len(notes) == 1 and notes[0].startswith("guidance is partial: guided_backprop change only the ReLUs;")
    assert invoke("report", seg).exit_code == 0
    html, _page, data = _parse(seg / "index.html")
    assert f"<li>{notes[0]}</li>" in html  # said above the gallery
    assert "no input explained yet" not in html  # the class names row reads the region's class
    (row,) = data["rows"]
    (explained,) = _index(seg)[0]["explained"]
    said = f"region 2: dog, score {explained['value']:.4g}, {explained['pixels']:g} px"
    assert row["explains"] == said and row["targets"] == [said] and row["top5"] == []

    dead = tmp_path / "dead"
    result = invoke("run", tmp_path / "in", "-o", dead, "--model", f"{MODELS}:dead", "--methods", "gbp,saliency",
                    "--workers", "0")
    assert result.exit_code == 0, result.output
    assert invoke("report", dead).exit_code == 0
    html, _page, data = _parse(dead / "index.html")
    assert data["rows"][0]["zero"] == [["guided_backprop", "saliency"]]  # the page marks them "all zeros"
    assert "<ul class=\"notes\">" not in html
