"""No command reads this tool's outputs as inputs (issue 18.2): folders holding the output of a run,
``evaluate``, ``units`` or a report are passed over, each on a ``skipped:`` line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from guided_backprop import batch, images
from tests.fixtures.cli_images import write_plain
from tests.fixtures.runs import TINY, config, index, invoke


def _tool_folders(root: Path) -> dict[str, Path]:
    """Beside two photos in ``root``: a main run's folder, an evaluate folder, a units folder, a report."""
    photos = write_plain(root, 2)
    batch.run(photos, root / "maps", config())
    (root / "eval").mkdir()
    (root / "eval" / "evaluation.json").write_text(json.dumps({"images": []}))
    write_plain(root / "eval", 2, prefix="evaluation_")
    (root / "units").mkdir()
    (root / "units" / "units.json").write_text(json.dumps({"units": []}))
    write_plain(root / "units", 2, prefix="unit_")
    (root / "gallery" / "thumbs").mkdir(parents=True)
    (root / "gallery" / "index.html").write_text('<meta name="generator" content="guided-backprop 1.0">')
    write_plain(root / "gallery" / "thumbs", 1)
    return {"maps": root / "maps", "eval": root / "eval", "units": root / "units", "gallery": root / "gallery"}


def test_a_folder_walk_passes_over_every_kind_of_output_and_says_so(tmp_path: Path) -> None:
    folders = _tool_folders(tmp_path / "in")
    found = images.search_images([tmp_path / "in"])
    assert [p.name for p in found.paths] == ["img000.png", "img001.png"]
    passed = {s.path: s.reason for s in found.passed_over}
    assert set(passed) == set(folders.values())
    assert "evaluate" in passed[folders["eval"]] and "units" in passed[folders["units"]]
    assert "report" in passed[folders["gallery"]] and "run" in passed[folders["maps"]]


def test_a_glob_passes_over_output_folders(tmp_path: Path) -> None:
    folders = _tool_folders(tmp_path / "in")
    found = images.search_images([str(tmp_path / "in" / "**" / "*.png")])
    assert [p.name for p in found.paths] == ["img000.png", "img001.png"]
    assert {s.path for s in found.passed_over} == set(folders.values())


def test_a_folder_of_our_output_given_by_name_is_one_clear_error(tmp_path: Path) -> None:
    folders = _tool_folders(tmp_path / "in")
    with pytest.raises(images.ImageNotFoundError, match=r"holds the output of guided-backprop evaluate"):
        images.search_images([folders["eval"]])


def test_an_ordinary_folder_is_not_taken_for_ours(tmp_path: Path) -> None:
    write_plain(tmp_path / "in", 1)
    (tmp_path / "in" / "run.json").write_text('{"tool": "something else"}')
    (tmp_path / "in" / "index.html").write_text("<html>my photos</html>")
    assert images.tool_output_reason(tmp_path / "in") is None
    assert len(images.search_images([tmp_path / "in"]).paths) == 1


def test_the_main_command_reads_no_output_of_any_command(tmp_path: Path) -> None:
    folders = _tool_folders(tmp_path / "in")
    result = invoke(tmp_path / "in", "-o", tmp_path / "out", "--model", TINY, "--input-size", "32", "--workers", "0")
    assert result.exit_code == 0, result.output
    assert [Path(r["input"]).name for r in index(tmp_path / "out")] == ["img000.png", "img001.png"]
    skipped = [line for line in result.stderr.splitlines() if line.startswith("skipped: ")]
    assert len(skipped) == len(folders) and all("this tool's outputs are not inputs" in s for s in skipped)
    # a rerun into a folder inside the inputs: its own folder is left out without a word
    inner = invoke(tmp_path / "in", "-o", tmp_path / "in" / "maps", "--model", TINY, "--input-size", "32",
                   "--workers", "0")
    assert inner.exit_code == 0 and "'maps'" not in inner.stderr and str(folders["maps"]) + "'" not in inner.stderr


def test_units_reads_no_output_of_any_command(tmp_path: Path) -> None:
    folders = _tool_folders(tmp_path / "in")
    result = invoke("units", tmp_path / "in", "-o", tmp_path / "units_out", "--model", TINY, "--input-size", "32",
                    "--layer", "1", "--top-channels", "1", "--top", "2")
    assert result.exit_code == 0, result.output
    skipped = [line for line in result.stderr.splitlines() if line.startswith("skipped: ")]
    assert len(skipped) == len(folders), result.stderr
    grid = json.loads((tmp_path / "units_out" / "units.json").read_text())["units"][0]
    assert {Path(t["source"]).name for t in grid["top"]} <= {"img000.png", "img001.png"}
