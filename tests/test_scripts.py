"""The repository's scripts keep working: the README figure and the quick start's sample photos."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from guided_backprop import ModelSpec

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_readme_figure_script_makes_the_figure(tmp_path: Path) -> None:
    out = tmp_path / "figure.png"
    done = subprocess.run([sys.executable, str(REPO / "scripts" / "make_readme_figure.py"), str(out),
                           "--photos", "chelsea"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    picture = np.asarray(Image.open(out).convert("RGB"))
    height, width, _ = picture.shape
    assert width > 4 * height  # one row: the input and five maps side by side
    assert picture.std() > 10 and out.stat().st_size < 1_000_000
    topk = tmp_path / "topk.png"  # the top-3 grid, written beside it
    with Image.open(topk) as im:
        assert im.height > im.width / 2  # three rows of classes
    assert topk.stat().st_size < 1_000_000


def test_sample_images_script_writes_the_photos(tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, str(REPO / "scripts" / "sample_images.py"), str(tmp_path / "s")],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    names = sorted(p.name for p in (tmp_path / "s").iterdir())
    assert names == ["astronaut.png", "chelsea.png", "coffee.png", "motorcycle_left.png", "rocket.jpg"]
    with Image.open(tmp_path / "s" / "chelsea.png") as im:
        assert im.size == (451, 300)


@pytest.mark.slow
def test_evaluation_doc_section_is_written_from_a_run(tmp_path: Path) -> None:
    """docs/evaluation.md's results are generated from an evaluation: every check's table, the summary, counts."""
    import importlib.util

    from guided_backprop.evaluate.run import EvaluateConfig, evaluate_folder
    from tests.fixtures.cli_images import write_plain

    spec = importlib.util.spec_from_file_location("make_evaluation_doc", REPO / "scripts" / "make_evaluation_doc.py")
    assert spec is not None and spec.loader is not None
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    write_plain(tmp_path / "in", 2)
    cfg = EvaluateConfig(model=ModelSpec(f"{REPO / 'tests' / 'fixtures' / 'cli_models.py'}:tiny",
                                         preprocessing={"input_size": 32}),
                         methods=script.METHODS, steps=4, smooth_samples=2,
                         checks=["randomization", "emprt", "smprt", "class", "deletion", "insertion"])
    run = evaluate_folder(tmp_path / "in", tmp_path / "out", cfg)
    text = script.results_section(run.evaluation, command="guided-backprop evaluate ...", seconds=60,
                                  smooth_samples=2, load="1.0")
    assert text.startswith(script.HEADING)
    for words in ("**Efficient MPRT**", "**Smooth MPRT**", "**Class sensitivity**", "random order |",
                  "Worse than the random pixel order", "img000.png, img001.png", "EMPRT rise",
                  "guided_backprop: "):
        assert words in text, words
    assert "nan" not in text
