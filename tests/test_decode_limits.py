"""Poison pills (issue 18.6): an absurd preprocessed size is refused by name before it is made; a decode
worker that dies names the file it was reading, and the rerun gets past it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from guided_backprop.errors import ExitCode
from tests.fixtures.cli_images import write_plain
from tests.fixtures.runs import MODELS, TINY, cli_process, index, invoke


def _strip(path: Path, width: int, height: int = 10) -> Path:
    Image.fromarray(np.full((height, width, 3), 128, np.uint8)).save(path)
    return path


def test_a_strip_that_preprocessing_would_make_huge_is_refused_by_name(tmp_path: Path) -> None:
    write_plain(tmp_path / "in", 1)
    strip = _strip(tmp_path / "in" / "strip.png", 30000)  # resized by its shorter side: 224 x 672000
    out = tmp_path / "out"
    result = invoke(tmp_path / "in", "-o", out, "--model", TINY, "--resize", "224", "--crop", "none",
                    "--workers", "0")
    assert result.exit_code == ExitCode.SOME_FAILED, result.output
    (line,) = [ln for ln in result.stderr.splitlines() if ln.startswith("error: ")]
    assert repr(str(strip)) in line and "224x672000" in line and "--max-pixels" in line
    rows = {Path(r["input"]).name: r for r in index(out)}
    assert rows["img000.png"]["status"] == "ok" and rows["strip.png"]["status"] == "error"


def test_the_cap_is_stated_and_can_be_raised(tmp_path: Path) -> None:
    (tmp_path / "in").mkdir()
    _strip(tmp_path / "in" / "strip.png", 3000)
    args = (tmp_path / "in", "--model", TINY, "--resize", "32", "--crop", "none", "--workers", "0")
    low = invoke(args[0], "-o", tmp_path / "low", *args[1:], "--max-pixels", "100000")  # 32 x 9600 = 307200
    assert low.exit_code == ExitCode.SOME_FAILED and "0.1 M pixels" in low.stderr
    high = invoke(args[0], "-o", tmp_path / "high", *args[1:], "--max-pixels", "400000")
    assert high.exit_code == 0, high.output


@pytest.mark.slow
def test_a_decode_worker_that_dies_names_the_file_and_the_rerun_gets_past_it(tmp_path: Path) -> None:
    write_plain(tmp_path / "in", 3)
    write_plain(tmp_path / "in", 1, prefix="poison")
    out = tmp_path / "out"
    args = (tmp_path / "in", "-o", out, "--model", f"{MODELS}:kills_decoder", "--input-size", "32",
            "--workers", "1", "--batch-size", "1")
    proc = cli_process(*args)
    _stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == ExitCode.FAILED, stderr
    (line,) = stderr.strip().splitlines()
    assert line.startswith("error: a decode worker process died while reading ") and "poison000.png" in line
    proc = cli_process(*args)
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == ExitCode.SOME_FAILED, stderr  # not the same stop again
    rows = {Path(r["input"]).name: r for r in index(out)}
    assert [rows[f"img00{i}.png"]["status"] for i in range(3)] == ["ok"] * 3
    assert rows["poison000.png"]["status"] == "error" and "decode worker" in rows["poison000.png"]["error"]
    assert "4 images:" in stdout
