"""evaluate explains any output: run_checks(target=...) and 'evaluate --target' on segmenters, detectors and raw
outputs; deletion / insertion follow the explained score, never a softmax (issue 20)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

import guided_backprop as gbp
from guided_backprop.cli import main
from guided_backprop.errors import ExitCode, TargetError
from guided_backprop.evaluate import run_checks
from guided_backprop.evaluate.faithfulness import _step_counts, pixel_order

from .fixtures.cli_models import _Detector, _Segmenter

FIXTURE = str(Path(__file__).parent / "fixtures" / "cli_models.py")


def _segmenter() -> torch.nn.Module:
    torch.manual_seed(0)
    return _Segmenter().double().eval()


def test_region_deletion_follows_the_region_score_by_hand() -> None:
    net = _segmenter()
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    region = torch.zeros(8, 8)
    region[:4, 2:7] = 1  # the user's region: class 1's logits summed over these pixels
    ev = run_checks(net, x, methods=["saliency"], checks="deletion", steps=16, target=gbp.Region(1, region))
    mask = region.bool()[None].expand(2, 8, 8)
    leaves = [x[i:i + 1].clone().requires_grad_() for i in range(2)]
    grads = [torch.autograd.grad((net(xi)["out"][0, 1] * mask[i]).sum(), xi)[0] for i, xi in enumerate(leaves)]
    # the map's own pixel order, then the region score of each deleted input, computed here
    for i in range(2):
        order = pixel_order(grads[i][0].abs())  # saliency's map is |gradient|
        expected = []
        for k in _step_counts(64, 16):
            deleted = x[i].clone().reshape(3, -1)
            deleted[:, order[:k]] = 0
            with torch.no_grad():
                score = (net(deleted.reshape(1, 3, 8, 8))["out"][0, 1] * mask[i]).sum()
            expected.append(float(score))
        np.testing.assert_allclose(ev.deletion.curves["saliency"][i], expected, rtol=1e-12, atol=1e-12)
        assert len(set(np.round(expected, 9))) > 2  # the curve moves: the test can fail
    # a raw score (region sums are not in [0, 1]), not a probability; the target is said
    assert ev.target is not None and ev.target["explained"] == "region 1"
    assert ev.deletion.classes == [-1, -1]
    assert [d["pixels"] for d in ev.target["details"]] == [20.0, 20.0]
    with pytest.raises(TargetError, match="no pixel of class 0"):  # an empty region: nothing to explain
        run_checks(net, x, methods=["saliency"], checks="deletion", target=gbp.Region(0))


def test_randomisation_compares_maps_of_the_target() -> None:
    net = _segmenter()
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    target = gbp.Region(2)
    ev = run_checks(net, x, methods=["saliency"], checks="randomization,emprt", target=target, maps_image=0)
    e = gbp.Explainer(net).explain(x, target, methods=["saliency"])
    torch.testing.assert_close(ev.randomization.maps["saliency"][0], e.maps["saliency"][0, 0].cpu())
    assert ev.efficient_mprt is not None
    for p, q in zip(net.parameters(), _segmenter().parameters()):
        assert torch.equal(p, q)  # the caller's model is untouched


def test_randomised_steps_explain_the_same_region_by_hand() -> None:
    """Each step's similarity is that of the region's map on the randomised network, computed independently:
    the region's pixels fixed on the trained model, the randomised copies explained with plain Explainer calls."""
    from guided_backprop.evaluate import randomized_models
    from guided_backprop.evaluate.similarity import spearman_abs

    net = _segmenter()
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    ev = run_checks(net, x, methods=["guided_backprop"], checks="randomization", target=gbp.Region(2))
    with torch.no_grad():
        frozen = gbp.Region(2, (net(x)["out"].argmax(dim=1) == 2).double())  # (N, H, W): the trained pixels
    trained = gbp.Explainer(net).explain(x, frozen, methods=["guided_backprop"]).maps["guided_backprop"][:, 0]
    assert ev.randomization.steps == ["original", "head", "body"]
    for j, (_name, randomized) in enumerate(randomized_models(net, ["head", "body"], seed=0), start=1):
        m = gbp.Explainer(randomized).explain(x, frozen, methods=["guided_backprop"]).maps["guided_backprop"][:, 0]
        for i in range(2):
            expected = spearman_abs(trained[i], m[i])
            assert ev.randomization.values["guided_backprop"]["spearman_abs"][i, j] == pytest.approx(expected)
    assert not np.allclose(ev.randomization.values["guided_backprop"]["spearman_abs"][:, 1:], 1.0)


def test_class_sensitivity_needs_a_class() -> None:
    with pytest.raises(TargetError, match="class sensitivity") as err:
        run_checks(_segmenter(), torch.randn(1, 3, 8, 8, dtype=torch.float64), checks="class,deletion",
                   target=gbp.Region(1))
    assert err.value.field == "checks"


def test_a_class_index_target_is_the_class_sensitivity_compares() -> None:
    """run_checks(target=K): class sensitivity compares class K's map (not the predicted class's)."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
                              torch.nn.Flatten(), torch.nn.Linear(4, 6)).double().eval()
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    predicted = net(x).argmax(dim=1).tolist()
    k = next(c for c in range(6) if c not in predicted)
    ev = run_checks(net, x, checks="class", methods="saliency", target=k)
    cs = ev.class_sensitivity
    assert cs.explained == [k, k] and cs.predicted == predicted and k not in cs.random_classes
    assert ev.to_json()["class_sensitivity"]["classes"]["explained"] == [k, k]  # evaluation.json says so
    assert run_checks(net, x, checks="class", methods="saliency").class_sensitivity.explained is None


def test_detector_without_a_matching_detection_is_an_error() -> None:
    torch.manual_seed(0)
    det = _Detector().eval()
    x = torch.randn(1, 3, 16, 16)
    with pytest.raises(TargetError, match="nothing to explain"):
        run_checks(det, x, methods=["saliency"], checks="deletion", target=gbp.Box(box=(0, 12, 4, 16)))
    ev = run_checks(det, x, methods=["saliency"], checks="deletion", steps=2, target=gbp.Box(rank=0))
    with torch.no_grad():
        top = float(det(x)[0]["scores"][0])
    assert ev.deletion.curves["saliency"][0, 0] == pytest.approx(top)  # the detection's own score, intact


def test_output_target_follows_the_raw_entry() -> None:
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
                              torch.nn.Flatten(), torch.nn.Linear(4, 3)).double()
    x = torch.randn(1, 3, 8, 8, dtype=torch.float64)
    ev = run_checks(net, x, methods=["saliency"], checks="insertion", steps=2, target=gbp.Output(2))
    with torch.no_grad():
        assert ev.insertion.curves["saliency"][0, -1] == pytest.approx(float(net(x)[0, 2]))


def test_wrong_mask_size_is_one_error() -> None:
    with pytest.raises(TargetError, match="mask") as err:
        run_checks(_segmenter(), torch.randn(1, 3, 8, 8, dtype=torch.float64), checks="deletion",
                   target=gbp.Region(1, torch.ones(5, 5)))
    assert err.value.field == "mask"


def _photos(folder: Path, n: int = 2) -> Path:
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(n):
        Image.fromarray(rng.integers(0, 255, (20, 24, 3), dtype=np.uint8)).save(folder / f"p{i}.png")
    return folder


def test_cli_evaluate_a_segmenter_region(tmp_path: Path) -> None:
    photos = _photos(tmp_path / "in")
    out = tmp_path / "eval"
    r = CliRunner().invoke(main, ["evaluate", str(photos), "-o", str(out), "--model", f"{FIXTURE}:segmenter",
                                  "--target", "cat", "--methods", "saliency,gbp", "--steps", "4", "--input-size", "16"])
    assert r.exit_code == 0, r.output
    assert "class sensitivity skipped" in r.output
    assert "region 1" in r.output  # the summary says what was explained
    doc = json.loads((out / "evaluation.json").read_text())
    assert doc["target"]["explained"] == "region 1" and set(doc["target"]["details"]) == set(doc["inputs"])
    assert "class_sensitivity" not in doc and doc["deletion"]["methods"]["saliency"]["auc"]["n"] == 2
    assert doc["settings"]["target"] == "cat" and doc["deletion"]["follows"] == "score"
    rows = (out / "evaluation.csv").read_text().splitlines()
    assert any(",deletion,saliency,0,score," in row for row in rows)


def test_cli_evaluate_bad_targets(tmp_path: Path) -> None:
    photos = _photos(tmp_path / "in", 1)
    base = ["evaluate", str(photos), "-o", str(tmp_path / "eval"), "--model", f"{FIXTURE}:segmenter",
            "--methods", "saliency", "--steps", "2"]
    r = CliRunner().invoke(main, [*base, "--target", "horse"])
    assert r.exit_code == ExitCode.USAGE and "horse" in r.output and "Traceback" not in r.output
    r = CliRunner().invoke(main, [*base, "--target", "cat", "--checks", "class,deletion"])
    assert r.exit_code == ExitCode.USAGE and "class sensitivity" in r.output
    r = CliRunner().invoke(main, [*base, "--target", "box:0,0,4,4"])
    assert r.exit_code == ExitCode.USAGE and "detector" in r.output
    assert not (tmp_path / "eval" / "evaluation.json").exists()


def test_cli_evaluate_detector_without_match(tmp_path: Path) -> None:
    photos = _photos(tmp_path / "in")
    out = tmp_path / "eval"
    base = ["evaluate", str(photos), "-o", str(out), "--model", f"{FIXTURE}:detector", "--methods", "saliency",
            "--steps", "2", "--checks", "deletion,insertion"]
    r = CliRunner().invoke(main, [*base, "--target", "detections:1", "--score-threshold", "0.0"])
    assert r.exit_code == 0, r.output
    # no detection above 0.99: no numbers, one line per image, and nothing evaluated is a usage error
    r = CliRunner().invoke(main, [*base, "--target", "detections:1", "--score-threshold", "0.99"])
    assert r.exit_code == ExitCode.USAGE, r.output
    assert r.output.count("nothing to explain") >= 2
    r = CliRunner().invoke(main, [*base, "--target", "detections:2"])
    assert r.exit_code == ExitCode.USAGE and "one target" in r.output


@pytest.mark.slow
def test_torchvision_segmenter_region_deletion_starts_at_the_region_score() -> None:
    from torchvision.models.segmentation import lraspp_mobilenet_v3_large

    torch.manual_seed(0)
    net = lraspp_mobilenet_v3_large(weights=None, weights_backbone=None, num_classes=4).eval()
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        out = net(x)["out"]
    cls = int(out.argmax(dim=1).flatten().mode().values)  # a class with predicted pixels
    mask = out.argmax(dim=1) == cls
    ev = run_checks(net, x, methods=["saliency"], checks="deletion,insertion", steps=4, target=gbp.Region(cls))
    intact = float((out[:, cls] * mask).sum())
    assert ev.deletion.curves["saliency"][0, 0] == pytest.approx(intact, rel=1e-5)
    assert ev.insertion.curves["saliency"][0, -1] == pytest.approx(intact, rel=1e-5)
    assert ev.deletion.follows == "score"


@pytest.mark.slow
def test_torchvision_detector_box_follows_the_detection_score() -> None:
    loaded = gbp.load_model("fasterrcnn_mobilenet_v3_large_320_fpn", weights="random")
    from skimage import data

    x = loaded.prepare(data.astronaut()[::4, ::4].copy())
    with torch.no_grad():
        top = loaded.model.eval()(x)[0]
    assert len(top["scores"]) > 0
    ev = run_checks(loaded.model, x, methods=["saliency"], checks="deletion", steps=2, target=gbp.Box(rank=0))
    assert ev.deletion.curves["saliency"][0, 0] == pytest.approx(float(top["scores"][0]), rel=1e-4)
    assert ev.target is not None and ev.target["details"][0]["label"] == int(top["labels"][0])


def test_cli_evaluate_an_image_without_match_gets_no_numbers(tmp_path: Path) -> None:
    photos = tmp_path / "in"
    photos.mkdir()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (20, 24, 3), dtype=np.uint8)).save(photos / "wide.png")  # 16x19
    Image.fromarray(rng.integers(0, 255, (40, 20, 3), dtype=np.uint8)).save(photos / "tall.png")  # 32x16
    out = tmp_path / "eval"
    r = CliRunner().invoke(main, ["evaluate", str(photos), "-o", str(out), "--model", f"{FIXTURE}:detector",
                                  "--target", "box:0,0,8,7", "--resize", "16", "--crop", "none",
                                  "--methods", "saliency", "--steps", "2", "--checks", "deletion"])
    assert r.exit_code == 0, r.output
    assert r.output.count("nothing to explain") == 1 and "tall.png" in r.output
    doc = json.loads((out / "evaluation.json").read_text())
    assert doc["images"] == 1 and [Path(p).name for p in doc["inputs"]] == ["wide.png"]
    assert [Path(p).name for p in doc["not_explained"]] == ["tall.png"]
    assert doc["deletion"]["methods"]["saliency"]["auc"]["n"] == 1


def test_cli_evaluate_a_region_of_a_mask(tmp_path: Path) -> None:
    photos = _photos(tmp_path / "in", 1)
    picture = np.zeros((8, 8), dtype=np.uint8)
    picture[:4, :4] = 255  # the top-left quarter, at any input size
    Image.fromarray(picture).save(tmp_path / "mask.png")
    out = tmp_path / "eval"
    r = CliRunner().invoke(main, ["evaluate", str(photos), "-o", str(out), "--model", f"{FIXTURE}:segmenter",
                                  "--target", "dog", "--mask", str(tmp_path / "mask.png"), "--input-size", "16",
                                  "--methods", "saliency", "--steps", "2", "--checks", "deletion"])
    assert r.exit_code == 0, r.output
    doc = json.loads((out / "evaluation.json").read_text())
    assert [d["pixels"] for d in doc["target"]["details"].values()] == [64.0]  # a quarter of 16x16
    assert doc["target"]["explained"] == "region 2" and "--mask" in doc["settings"]["target"]
