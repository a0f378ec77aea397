"""The main command's folder over several runs (issues 17 and 18): a refused run leaves the folder free,
numbers are stable while the folder grows, stale files go, an unwritable folder is exit 4, the summary's
time counts the start-up."""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from guided_backprop import batch
from guided_backprop.errors import ExitCode
from guided_backprop.reporting import LineReporter
from tests.fixtures.cli_images import write_plain
from tests.fixtures.runs import MODELS, REPO, TINY, cli_process, config, index, invoke

FAST = ("--model", TINY, "--input-size", "32", "--workers", "0")


def _maps(out: Path) -> list[str]:
    return sorted(p.name for p in out.glob("map_*"))


# ----------------------------------------------------------------- a refused run locks nothing (17)


@pytest.mark.parametrize(("refused", "corrected"), [
    (("--model", f"{MODELS}:no_relu", "--methods", "guided_backprop"),
     ("--model", f"{MODELS}:no_relu", "--methods", "saliency")),
    (("--model", TINY, "--layer", "1", "--channel", "999"), ("--model", TINY, "--layer", "1", "--channel", "1")),
])
def test_a_refused_run_then_the_corrected_command_in_the_same_folder(tmp_path: Path, refused: tuple[str, ...],
                                                                     corrected: tuple[str, ...]) -> None:
    write_plain(tmp_path / "in", 2)
    out = tmp_path / "out"
    first = invoke(tmp_path / "in", "-o", out, *refused, "--input-size", "32", "--workers", "0")
    assert first.exit_code == ExitCode.USAGE, first.output
    assert not out.exists()  # a run that computed nothing leaves nothing
    second = invoke(tmp_path / "in", "-o", out, *corrected, "--input-size", "32", "--workers", "0")
    assert second.exit_code == 0, second.output
    assert len(index(out)) == 2


def test_a_refused_run_in_a_folder_with_results_leaves_them_as_they_were(tmp_path: Path) -> None:
    write_plain(tmp_path / "in", 2)
    out = tmp_path / "out"
    assert invoke(tmp_path / "in", "-o", out, *FAST).exit_code == 0
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file() and p.name != "lock"}
    refused = invoke(tmp_path / "in", "-o", out, *FAST, "--layer", "1", "--channel", "999", "--overwrite")
    assert refused.exit_code == ExitCode.USAGE
    after = {p: p.read_bytes() for p in out.rglob("*") if p.is_file() and p.name != "lock"}
    assert after == before
    assert invoke(tmp_path / "in", "-o", out, *FAST).stdout.startswith("2 images: 2 skipped (already done)")


def test_a_folder_left_by_a_run_that_computed_nothing_is_taken_over(tmp_path: Path) -> None:
    """A folder an older version left after a failed first batch (job.json of other settings, no journal
    line) is no other job."""
    write_plain(tmp_path / "in", 1)
    out = tmp_path / "out"
    (out / batch.STATE_DIR).mkdir(parents=True)
    (out / batch.STATE_DIR / "job.json").write_text(json.dumps({"fingerprint": "x", "settings": {"model": "y"}}))
    (out / "run.json").write_text("{}")
    assert invoke(tmp_path / "in", "-o", out, *FAST).exit_code == 0


# ------------------------------------------------------------------------- unwritable folder (18.11)


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_a_read_only_output_folder_is_exit_4_with_the_path_before_computing(tmp_path: Path) -> None:
    write_plain(tmp_path / "in", 1)
    out = tmp_path / "out"
    out.mkdir()
    out.chmod(0o555)
    try:
        result = invoke(tmp_path / "in", "-o", out, *FAST)
    finally:
        out.chmod(0o755)
    assert result.exit_code == ExitCode.DISK_FULL, result.output
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("error: ") and str(out) in line and "permission denied" in line
    assert "nothing was computed" in line and list(out.iterdir()) == []


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EROFS, errno.EACCES])
def test_a_full_or_read_only_disk_at_the_first_write_is_exit_4(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                             code: int) -> None:
    from guided_backprop.batch import journal

    write_plain(tmp_path / "in", 1)

    def refused(*_a: object, **_k: object) -> None:
        raise OSError(code, os.strerror(code), str(tmp_path / "out" / ".guided-backprop/job.json"))

    monkeypatch.setattr(journal, "write_text", refused)
    result = invoke(tmp_path / "in", "-o", tmp_path / "out", *FAST)
    assert result.exit_code == ExitCode.DISK_FULL, result.output
    (line,) = result.stderr.strip().splitlines()
    assert os.strerror(code).lower() in line and str(tmp_path / "out") in line and "Traceback" not in line
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------------------- the summary (17)


@pytest.mark.slow
def test_the_summary_time_counts_the_start_up(tmp_path: Path) -> None:
    write_plain(tmp_path / "in", 1)
    code = ("import sys, time; time.sleep(2.5); from guided_backprop.cli.commands import main; "
            "sys.argv = ['guided-backprop', *sys.argv[1:]]; main()")
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, "-c", code, str(tmp_path / "in"), "-o", str(tmp_path / "out"), *FAST],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    wall = time.monotonic() - t0
    assert proc.returncode == 0, proc.stderr
    seconds = float(re.search(r" in ([\d.]+) s", proc.stdout).group(1))  # type: ignore[union-attr]
    assert 2.5 <= seconds <= wall + 0.1, (seconds, wall)
    assert "skipped" not in proc.stdout  # a fresh run skipped nothing


# ---------------------------------------------------------------------- stable numbers (18.1)


def _pictures(out: Path) -> dict[str, np.ndarray]:
    """Each input's picture as the network saw it, by input path."""
    return {row["input"]: np.asarray(Image.open(out / row["files"]["input"])) for row in index(out)}


@pytest.mark.slow
def test_a_new_input_keeps_every_number_and_recomputes_nothing(tmp_path: Path) -> None:
    src = write_plain(tmp_path / "src", 5)
    photos = tmp_path / "photos"
    photos.mkdir()
    for i, p in enumerate(src):
        shutil.copy(p, photos / f"p{i}.png")
    out = tmp_path / "out"
    args = (photos, "-o", out, *FAST)
    proc = cli_process(*args)
    assert proc.wait(timeout=300) == 0, proc.stderr.read()  # type: ignore[union-attr]
    first = {row["input"]: row for row in index(out)}
    pictures = _pictures(out)
    stamps = {p.name: p.stat().st_mtime_ns for p in out.glob("*.png")}

    shutil.copy(src[3], photos / "aaa_copy.png")  # sorts first
    proc = cli_process(*args)
    stdout, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 0, stderr
    assert stdout.startswith("6 images: 5 skipped (already done), 1 computed, 0 failed")
    rows = {row["input"]: row for row in index(out)}
    for path, row in first.items():
        assert rows[path]["idx"] == row["idx"] and rows[path]["files"] == row["files"]
    new = rows[str(photos / "aaa_copy.png")]
    assert new["idx"] == 5
    for name, stamp in stamps.items():
        assert (out / name).stat().st_mtime_ns == stamp, name  # nothing recomputed, nothing overwritten
    # every file names the input it shows: same numbers, same pictures; one map per input
    after = _pictures(out)
    assert all(np.array_equal(after[p], pictures[p]) for p in pictures)
    assert np.array_equal(after[str(photos / "aaa_copy.png")], pictures[str(photos / "p3.png")])
    assert len(_maps(out)) == 6 and {n for r in rows.values() for n in r["files"].values()} | {
        "index.jsonl", "predictions.csv", "run.json"} == {p.name for p in out.iterdir() if not p.name.startswith(".")}


def test_numbers_survive_overwrite_and_a_removed_input(tmp_path: Path) -> None:
    write_plain(tmp_path / "in", 3)
    out = tmp_path / "out"
    batch.run([tmp_path / "in"], out, config())
    numbers = {row["input"]: row["idx"] for row in index(out)}
    write_plain(tmp_path / "in", 1, prefix="aaa")  # sorts first
    batch.run([tmp_path / "in"], out, config(overwrite=True, norm="minmax"))
    again = {row["input"]: row["idx"] for row in index(out)}
    assert {p: again[p] for p in numbers} == numbers and again[str(tmp_path / "in" / "aaa000.png")] == 3


def test_files_no_input_has_any_more_are_removed_and_said(tmp_path: Path) -> None:
    paths = write_plain(tmp_path / "in", 3)
    out = tmp_path / "out"
    batch.run([tmp_path / "in"], out, config(name="map_{idx}_{method}_{class_index}.png"))
    old = set(_maps(out))
    assert len(old) == 3
    gone = index(out)[1]
    paths[1].unlink()  # an input removed from the folder
    (out / "notes.txt").write_text("mine")  # not this tool's: kept
    lines: list[str] = []
    batch.run([tmp_path / "in"], out, config(name="map_{idx}_{method}_{class_index}.png"),
              reporter=LineReporter(lines.append))
    assert not any((out / n).exists() for n in gone["files"].values())
    assert set(_maps(out)) == old - {gone["files"]["guided_backprop"]}
    assert (out / "notes.txt").read_text() == "mine"
    assert any(line.startswith("removed 2 file(s) of earlier outputs") for line in lines), lines
    # another name template: the old names go, the new ones are listed
    batch.run([tmp_path / "in"], out, config(name="gbp_{idx}.png", overwrite=True))
    assert _maps(out) == [] and len(list(out.glob("gbp_*.png"))) == 2


def test_a_replaced_input_leaves_no_map_of_its_old_class(tmp_path: Path) -> None:
    """The class is in the name: a replaced input predicted as another class must not leave the old map."""
    (tmp_path / "in").mkdir()
    Image.new("RGB", (40, 40), (255, 255, 255)).save(tmp_path / "in" / "x.png")  # tiny says class 1
    out = tmp_path / "out"
    first = batch.run([tmp_path / "in"], out, config(name="map_{idx}_{stem}_{class_index}_{rank}.png"))
    assert first.ok == 1
    old_class = index(out)[0]["class_index"]
    Image.new("RGB", (40, 40), (0, 0, 255)).save(tmp_path / "in" / "x.png")  # class 7
    os.utime(tmp_path / "in" / "x.png", ns=(1, 1))
    batch.run([tmp_path / "in"], out, config(name="map_{idx}_{stem}_{class_index}_{rank}.png"))
    (row,) = index(out)
    assert row["class_index"] != old_class  # the test needs another class
    assert _maps(out) == [row["files"]["guided_backprop"]]
