"""`guided-backprop units` on hostile folders and disks, and its promises: its own grids are no inputs,
FIFOs are passed over aloud, settings that cannot fit are usage errors, grids are written one at a time
and atomically, a full or read-only disk is exit 4 before computing, SIGTERM is one line and 143 (issue 18)."""

from __future__ import annotations

import errno
import json
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from guided_backprop.errors import ExitCode
from guided_backprop.pictures import render
from guided_backprop.units import grids as units
from guided_backprop.units.grids import UnitGrid, save_unit_grids, unit_grids

from .fixtures.cli_images import write_plain
from .fixtures.disks import refuse_writes_under
from .fixtures.runs import SLOW, TINY, cli_process, invoke
from .nets import UnitNet

FAST = ["--model", TINY, "--input-size", "32", "--layer", "0", "--device", "cpu", "--quiet"]


def _manifest(out: Path) -> dict[str, Any]:
    def no_nan(name: str) -> None:
        raise ValueError(f"{name} is not JSON")

    return json.loads((out / "units.json").read_text(encoding="utf-8"), parse_constant=no_nan)


def test_units_run_twice_into_its_input_folder_never_reads_its_own_grids(tmp_path: Path) -> None:
    src = tmp_path / "in"
    write_plain(src, 3)
    out = src / "units"
    for _ in range(2):
        result: Any = invoke("units", src, "-o", out, *FAST, "--channel", "1")
        assert result.exit_code == 0, result.output
    sources = {t["source"] for u in _manifest(out)["units"] for t in u["top"]}
    assert sources == {str(p) for p in sorted(src.glob("*.png"))}  # the 3 photos, never a grid of units/


def test_a_fifo_among_the_inputs_is_a_passed_over_line_and_its_name_is_shown_safely(tmp_path: Path) -> None:
    src = tmp_path / "in"
    write_plain(src, 2)
    os.mkfifo(src / "pipe\u202egnp.png")
    result: Any = invoke("units", src, "-o", tmp_path / "out", *FAST, "--channel", "0")
    assert result.exit_code == 0, result.output
    (line,) = [ln for ln in result.stderr.splitlines() if ln.startswith("skipped:")]
    assert "pipe\\u202egnp.png" in line and "FIFO" in line and "\u202e" not in result.stderr


def test_a_top_that_cannot_be_drawn_is_a_usage_error_before_anything(tmp_path: Path) -> None:
    write_plain(tmp_path / "in", 2)
    result: Any = invoke("units", tmp_path / "in", "-o", tmp_path / "out", *FAST, "--top", "1000")
    assert result.exit_code == ExitCode.USAGE
    (line,) = result.stderr.strip().splitlines()
    assert "--top 1000" in line and f"at most {units.MAX_TOP}" in line
    assert not (tmp_path / "out").exists()
    with pytest.raises(units.InputError, match="at most 100"):
        unit_grids(UnitNet().double(), torch.zeros(1, 3, 16, 16, dtype=torch.float64), "features.conv2", k=101)


@pytest.mark.parametrize("bad", [["--layer", "nope"], ["--channel", "99"]])
def test_a_usage_error_leaves_no_folder_behind(tmp_path: Path, bad: list[str]) -> None:
    write_plain(tmp_path / "in", 2)
    result: Any = invoke("units", tmp_path / "in", "-o", tmp_path / "out", *FAST, *bad)
    assert result.exit_code == ExitCode.USAGE and len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_grids_are_made_and_written_one_at_a_time(tmp_path: Path) -> None:
    """Memory does not grow with the number of channels: each grid is saved before the next is made."""
    torch.manual_seed(0)
    model = UnitNet().double().eval()
    images = torch.randn(6, 3, 16, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    out = tmp_path / "out"
    on_disk_when_asked: list[int] = []

    def watched() -> Iterator[UnitGrid]:
        for grid in units.iter_unit_grids(model, images, "features.conv2", top_channels=3, k=4):
            on_disk_when_asked.append(len(list(out.glob("unit_*.png"))) if out.exists() else 0)
            yield grid

    save_unit_grids(watched(), out)
    assert on_disk_when_asked == [0, 1, 2]


def test_a_rerun_with_other_channels_removes_the_grids_it_no_longer_lists(tmp_path: Path) -> None:
    write_plain(tmp_path / "in", 2)
    out = tmp_path / "out"
    assert invoke("units", tmp_path / "in", "-o", out, *FAST, "--channel", "1", "--channel", "2").exit_code == 0
    (out / "unit_mine.png").write_bytes(b"the user's own file")
    assert invoke("units", tmp_path / "in", "-o", out, *FAST, "--channel", "2").exit_code == 0
    shown = sorted(p.name for p in out.iterdir() if not p.name.startswith("."))  # .unit-cache: the explorer's
    assert shown == ["unit_0_c2.png", "unit_mine.png", "units.json"]


def test_the_manifest_is_json_even_with_non_finite_numbers(tmp_path: Path) -> None:
    torch.manual_seed(0)
    grids = unit_grids(UnitNet().double().eval(), torch.randn(3, 3, 16, 16, dtype=torch.float64), "features.conv2",
                       top_channels=1, k=2)
    grids[0].score = float("nan")
    grids[0].top[0].activation = float("inf")
    save_unit_grids(grids, tmp_path)
    unit = _manifest(tmp_path)["units"][0]
    assert unit["score"] is None and unit["top"][0]["activation"] is None


@pytest.mark.parametrize("code", [errno.EROFS, errno.ENOSPC, errno.EACCES])
def test_an_output_folder_that_cannot_be_written_is_exit_4_before_computing(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, code: int) -> None:
    write_plain(tmp_path / "in", 2)
    out = tmp_path / "out"
    out.mkdir()
    refuse_writes_under(monkeypatch, out, code)

    def never(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("computed before learning that the folder cannot be written")

    monkeypatch.setattr(units, "top_activations", never)
    result: Any = invoke("units", tmp_path / "in", "-o", out, *FAST, "--channel", "0")
    assert result.exit_code == ExitCode.DISK_FULL == 4, result.output
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith(f"error: cannot write {str(out)!r}: {os.strerror(code).lower()}")
    assert "Traceback" not in result.output


def test_a_disk_that_fills_up_while_saving_is_exit_4_naming_the_grid(tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    write_plain(tmp_path / "in", 2)
    out = tmp_path / "out"

    def full(picture: Any, path: Any) -> Any:
        raise OSError(errno.ENOSPC, "No space left on device", str(path) + ".tmp")

    monkeypatch.setattr(render, "save_image", full)
    result: Any = invoke("units", tmp_path / "in", "-o", out, *FAST, "--channel", "0")
    assert result.exit_code == 4
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith(f"error: cannot write {str(out / 'unit_0_c0.png')!r}: no space left on device")


def test_help_promises_only_what_units_does() -> None:
    text = " ".join(invoke("units", "--help").output.split())  # type: ignore[attr-defined]
    assert "complete outputs are kept" not in text
    assert "written atomically" in text and "a rerun starts over" in text and "143 terminated" in text


@pytest.mark.slow
def test_sigterm_stops_units_with_one_line_and_143(tmp_path: Path) -> None:
    write_plain(tmp_path / "in", 12)
    out = tmp_path / "out"
    proc = cli_process("units", tmp_path / "in", "-o", out, "--model", SLOW, "--input-size", "32", "--layer",
                       "net.0", "--batch-size", "1", "--channel", "0", env={"GBP_TEST_DELAY": "0.5"})
    deadline = time.monotonic() + 120
    while not out.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)  # the folder is made (its write check) once the model is loaded, before computing
    assert proc.poll() is None, proc.communicate()
    time.sleep(1.0)
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == ExitCode.TERMINATED == 143, stderr
    (line,) = stderr.strip().splitlines()
    assert line.startswith("terminated (SIGTERM): the unit grids did not finish") and "rerun" in line
    assert not (out / "units.json").exists()
