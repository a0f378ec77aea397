"""The repository's scripts keep working: the README figure and the quick start's sample photos."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

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
