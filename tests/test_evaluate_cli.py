"""``guided-backprop evaluate`` end to end on a tiny factory model: the output folder contract."""

from __future__ import annotations

import csv
import json
import os
import signal
import time
from pathlib import Path

import pytest
from click.testing import CliRunner
from PIL import Image

from guided_backprop import ModelSpec
from guided_backprop.cli.commands import main
from guided_backprop.errors import ExitCode
from tests.fixtures.cli_images import write_plain

REPO = Path(__file__).resolve().parents[1]
TINY = ["--model", f"{REPO / 'tests' / 'fixtures' / 'cli_models.py'}:tiny", "--input-size", "32"]
METRICS = {"spearman_abs", "spearman", "ssim", "hog"}


def invoke(*args: str) -> object:
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def _stat(value: object) -> None:
    assert isinstance(value, dict) and {"mean", "std"} <= set(value)
    assert all(v is None or isinstance(v, float) for v in (value["mean"], value["std"]))


@pytest.mark.slow
def test_evaluate_writes_the_contract_csv_and_pictures(tmp_path: Path) -> None:
    inputs = tmp_path / "in"
    write_plain(inputs, 3)
    (inputs / "broken.png").write_text("not a picture")
    out = tmp_path / "out"
    methods = "guided_backprop,saliency,gradcam,deconvnet,guided_gradcam"
    result = invoke("evaluate", inputs, "-o", out, *TINY, "--methods", methods, "--steps", "6", "--seed", "3")
    assert result.exit_code == 1, result.output  # one unreadable image: reported, skipped
    assert "broken.png" in result.output and "3 images evaluated (1 skipped)" in result.output

    doc = json.loads((out / "evaluation.json").read_text(encoding="utf-8"))
    assert isinstance(doc["model"], str) and doc["images"] == 3 and doc["seed"] == 3
    rnd = doc["randomization"]
    assert rnd["order"] == "cascading" and rnd["steps"] == ["original", "4", "0"]
    assert set(rnd["methods"]) == set(methods.split(","))
    for per in rnd["methods"].values():
        assert set(per) == METRICS
        for stats in per.values():
            assert len(stats["mean"]) == len(stats["std"]) == 3
            assert stats["mean"][0] == pytest.approx(1.0)
    for per in doc["class_sensitivity"]["methods"].values():
        assert set(per) == METRICS
        for stats in per.values():
            _stat(stats)
    for check in ("deletion", "insertion"):
        assert set(doc[check]["methods"]) == set(methods.split(","))
        for per in doc[check]["methods"].values():
            _stat(per["auc"])
            assert 0 <= per["auc"]["mean"] <= 1
        _stat(doc[check]["random"]["auc"])
    assert list(doc["failed"]) == [str(inputs / "broken.png")]

    with (out / "evaluation.csv").open(encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert set(rows[0]) == {"image", "check", "method", "step", "metric", "value"}
    # randomisation: 3 images x 5 methods x 3 steps x 4 metrics
    assert sum(r["check"] == "randomization_cascading" for r in rows) == 3 * 5 * 3 * 4
    assert {r["check"] for r in rows} == {"randomization_cascading", "efficient_mprt", "class_sensitivity",
                                          "deletion", "insertion"}

    for name in doc["figures"].values():
        with Image.open(out / name) as im:
            im.load()
            assert im.width > 200 and im.height > 100
    assert set(doc["figures"]) == {"randomization", "similarity", "efficient_mprt", "faithfulness"}
    for m in methods.split(","):  # the summary table: one reading per method
        assert any(line.startswith(f"{m}: ") for line in result.output.splitlines()), result.output


def test_evaluate_one_image_independent_named_blocks(tmp_path: Path) -> None:
    write_plain(tmp_path / "in", 1)
    out = tmp_path / "out"
    result = invoke("evaluate", tmp_path / "in", "-o", out, *TINY, "--methods", "saliency",
                    "--checks", "randomisation,class", "--randomization", "independent", "--blocks", "0", "-q")
    assert result.exit_code == 0, result.output
    doc = json.loads((out / "evaluation.json").read_text(encoding="utf-8"))
    assert doc["images"] == 1 and "deletion" not in doc
    assert doc["randomization"]["steps"] == ["original", "0"]
    assert doc["class_sensitivity"]["methods"]["saliency"]["spearman_abs"]["std"] == 0.0  # one image: no spread
    assert (out / "evaluation_randomization.png").is_file() and not (out / "evaluation_faithfulness.png").exists()


@pytest.mark.parametrize(("extra", "words"), [
    (["--blocks", "4,9"], ["unknown block '9'"]),
    (["--checks", "deletion,clas"], ["unknown check 'clas'", "'class'"]),
    (["--methods", "gbpp"], ["unknown method"]),
])
def test_evaluate_usage_errors_are_one_line_exit_2(tmp_path: Path, extra: list[str], words: list[str]) -> None:
    write_plain(tmp_path / "in", 1)
    result = invoke("evaluate", tmp_path / "in", "-o", tmp_path / "out", *TINY, *extra)
    assert result.exit_code == 2
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), result.output
    assert all(w in lines[0] for w in words), lines[0]
    assert not (tmp_path / "out" / "evaluation.json").exists()


def test_evaluate_model_without_parameters_and_no_readable_image(tmp_path: Path) -> None:
    factory = tmp_path / "nets.py"
    factory.write_text("import torch.nn as nn\n\ndef bare():\n    return nn.Sequential(nn.AdaptiveAvgPool2d(1), "
                       "nn.Flatten())\n")
    write_plain(tmp_path / "in", 1)
    result = invoke("evaluate", tmp_path / "in", "-o", tmp_path / "out", "--model", f"{factory}:bare",
                    "--input-size", "32", "--methods", "saliency", "--checks", "randomization")
    assert result.exit_code == 2 and "no parameters" in result.output
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "x.png").write_text("nope")
    result = invoke("evaluate", tmp_path / "bad", "-o", tmp_path / "out", *TINY)
    assert result.exit_code == 2 and "no readable image" in result.output


def test_report_shows_an_evaluation_section_when_the_folder_has_one(tmp_path: Path) -> None:
    write_plain(tmp_path / "in", 2)
    out = tmp_path / "out"
    assert invoke(tmp_path / "in", "-o", out, *TINY, "-q").exit_code == 0
    assert invoke("report", out).exit_code == 0
    assert 'id="evaluation"' not in (out / "index.html").read_text(encoding="utf-8")
    assert invoke("evaluate", tmp_path / "in", "-o", out, *TINY, "--methods", "saliency", "--checks",
                  "class,emprt,deletion", "--steps", "4", "-q").exit_code == 0
    assert invoke("report", out).exit_code == 0
    page = (out / "index.html").read_text(encoding="utf-8")
    assert 'id="evaluation"' in page and "deletion AUC" in page and 'src="evaluation_faithfulness.png"' in page
    assert "Efficient MPRT" in page and 'src="evaluation_efficient_mprt.png"' in page
    assert "http://" not in page.split('id="evaluation"')[1].split("</section>")[0]


def test_evaluate_keeps_a_file_name_that_is_not_utf8(tmp_path: Path) -> None:
    write_plain(tmp_path / "in", 1)
    raw = bytes(tmp_path / "in") + b"/bad\xff.png"
    next((tmp_path / "in").iterdir()).rename(raw.decode("utf-8", "surrogateescape"))
    out = tmp_path / "out"
    result = invoke("evaluate", tmp_path / "in", "-o", out, *TINY, "--methods", "saliency", "--checks", "class", "-q")
    assert result.exit_code == 0, result.output
    doc = json.loads((out / "evaluation.json").read_text(encoding="utf-8"))
    assert [os.fsencode(p) for p in doc["inputs"]] == [raw]  # \udcff escapes give back the exact bytes
    rows = (out / "evaluation.csv").read_bytes().splitlines()[1:]
    assert rows and all(row.startswith(raw + b",") for row in rows)  # CSV: the name's own bytes


def test_evaluate_reports_inputs_it_passes_over(tmp_path: Path) -> None:
    write_plain(tmp_path / "in", 1)
    os.mkfifo(tmp_path / "in" / "fifo.png")  # opening it would block forever
    (tmp_path / "in" / "loop1.png").symlink_to(tmp_path / "in" / "loop2.png")
    (tmp_path / "in" / "loop2.png").symlink_to(tmp_path / "in" / "loop1.png")
    out = tmp_path / "out"
    result = invoke("evaluate", tmp_path / "in", "-o", out, *TINY, "--methods", "saliency", "--checks", "class")
    for name, why in (("fifo.png", "FIFO"), ("loop1.png", "loop"), ("loop2.png", "loop")):
        assert any(name in line and why in line and line.startswith("skipped:")
                   for line in result.output.splitlines()), result.output
    assert result.exit_code == 0 and "1 image evaluated (3 skipped)" in result.output  # as run: not failures
    doc = json.loads((out / "evaluation.json").read_text(encoding="utf-8"))
    assert doc["images"] == 1 and len(doc["passed_over"]) == 3


def test_evaluate_help_tells_its_own_exit_codes() -> None:
    text = " ".join(invoke("evaluate", "--help").output.split())
    assert "143 terminated (SIGTERM)" in text and "a rerun starts over" in text and "4 the output folder" in text
    assert "complete outputs are kept" not in text  # evaluate does not resume
    assert "randomization, emprt (Efficient MPRT), smprt (Smooth MPRT), class, deletion, insertion" in text
    main_help = " ".join(invoke("--help").output.split())
    for code in ExitCode:
        assert f" {int(code)} " in main_help.split("Exit codes:")[1], code
    assert "blocks.5" not in main_help  # its units see the whole picture: not a useful example


def test_evaluate_sigterm_is_one_line_and_code_143(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import guided_backprop.evaluate.run as run

    def killed(*_args: object, **_kwargs: object) -> None:
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)  # the handler raises before this ends
        raise AssertionError("SIGTERM did not stop the evaluation")

    monkeypatch.setattr(run, "evaluate_folder", killed)
    write_plain(tmp_path / "in", 1)
    result = CliRunner().invoke(main, ["evaluate", str(tmp_path / "in"), "-o", str(tmp_path / "out"), *TINY])
    assert result.exit_code == 143, result.output
    assert result.output.strip() == "terminated (SIGTERM): the evaluation did not finish; a rerun starts over"


def test_evaluate_does_not_take_its_own_figures_as_inputs(tmp_path: Path) -> None:
    write_plain(tmp_path / "in", 1)
    out = tmp_path / "in" / "ev"  # inside the input folder: its figures are PNGs
    for _ in range(2):
        result = invoke("evaluate", tmp_path / "in", "-o", out, *TINY, "--methods", "saliency",
                        "--checks", "deletion", "--steps", "2")
        assert result.exit_code == 0 and "1 image evaluated" in result.output, result.output


def test_evaluate_takes_a_gradcam_layer_and_refuses_one_without_spatial_output(tmp_path: Path) -> None:
    write_plain(tmp_path / "in", 1)
    common = ["evaluate", tmp_path / "in", *TINY, "--methods", "gradcam", "--checks", "class", "-q"]
    bad = invoke(*common, "-o", tmp_path / "bad", "--gradcam-layer", "4")
    assert bad.exit_code == 2 and "--gradcam-layer" in bad.output and "(1, 10)" in bad.output, bad.output
    good = invoke(*common, "-o", tmp_path / "good", "--gradcam-layer", "0")
    assert good.exit_code == 0, good.output
    assert (tmp_path / "good" / "evaluation.json").is_file()


def test_evaluate_folder_loads_its_own_model_at_the_input_size_it_is_given(tmp_path: Path) -> None:
    from guided_backprop.evaluate.run import EvaluateConfig, evaluate_folder

    write_plain(tmp_path / "in", 2)
    cfg = EvaluateConfig(model=ModelSpec(TINY[1], preprocessing={"input_size": 24}), methods=["saliency"],
                         checks=["class"])
    evaluate_folder(tmp_path / "in", tmp_path / "out", cfg)
    doc = json.loads((tmp_path / "out" / "evaluation.json").read_text(encoding="utf-8"))
    assert doc["images"] == 2
    assert "centre-cropped to 24x24" in doc["settings"]["preprocessing"], doc["settings"]


def test_evaluate_output_key_reads_the_logits_of_a_dict_output(tmp_path: Path) -> None:
    """--output-key: a classifier returning {"logits": ...} is evaluated as the same classifier returning the
    tensor (every check, the same numbers); without it, one line naming the option."""
    write_plain(tmp_path / "in", 2)
    dict_model = ["--model", f"{REPO / 'tests' / 'fixtures' / 'cli_models.py'}:dict_logits", "--input-size", "32"]
    common = ["--methods", "saliency,gbp", "--checks", "randomization,class,deletion", "--steps", "4", "-q"]
    plain = invoke("evaluate", tmp_path / "in", "-o", tmp_path / "plain", *TINY, *common)
    assert plain.exit_code == 0, plain.output
    keyed = invoke("evaluate", tmp_path / "in", "-o", tmp_path / "keyed", *dict_model, *common,
                   "--output-key", "logits")
    assert keyed.exit_code == 0, keyed.output

    def numbers(folder: Path) -> dict:
        doc = json.loads((folder / "evaluation.json").read_text(encoding="utf-8"))
        return {k: doc[k] for k in ("randomization", "class_sensitivity", "deletion")}

    assert numbers(tmp_path / "keyed") == numbers(tmp_path / "plain")
    bad = invoke("evaluate", tmp_path / "in", "-o", tmp_path / "bad", *dict_model, *common)
    assert bad.exit_code != 0 and "--output-key" in bad.output and "logits" in bad.output, bad.output
