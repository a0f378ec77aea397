"""A run stops within seconds whatever its writer threads hold, and a huge class name costs no more than a
short one (issue 18.7)."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest

from guided_backprop.errors import ExitCode
from tests.fixtures.cli_images import write_plain
from tests.fixtures.runs import MODELS, TINY, cli_process, index

FAST = ("--input-size", "32", "--workers", "0")


@pytest.mark.slow
def test_sigterm_stops_the_run_within_seconds_while_a_writer_hangs(tmp_path: Path) -> None:
    write_plain(tmp_path / "in", 3)
    marker = tmp_path / "writing"
    proc = cli_process(tmp_path / "in", "-o", tmp_path / "out", "--model", f"{MODELS}:slow_writes", *FAST,
                       env={"GBP_TEST_WRITING": str(marker)})
    deadline = time.monotonic() + 120
    while not marker.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert marker.exists(), proc.communicate()[1]
    proc.send_signal(signal.SIGTERM)
    t0 = time.monotonic()
    _stdout, stderr = proc.communicate(timeout=30)  # the writer sleeps 60 s: a wait for it times out here
    assert time.monotonic() - t0 < 15
    assert proc.returncode == ExitCode.TERMINATED, stderr
    assert "terminated (SIGTERM)" in stderr and "Traceback" not in stderr


@pytest.mark.slow
def test_a_one_megabyte_class_name_with_panel_finishes(tmp_path: Path) -> None:
    write_plain(tmp_path / "in", 1)
    labels = tmp_path / "labels.txt"
    labels.write_text("\n".join(f"{i}" + "w" * 1_000_000 for i in range(10)) + "\n")
    out = tmp_path / "out"
    proc = cli_process(tmp_path / "in", "-o", out, "--model", TINY, "--labels", labels, "--panel", *FAST)
    _stdout, stderr = proc.communicate(timeout=240)  # the cubic wrap took hours for this
    assert proc.returncode == 0, stderr
    (row,) = index(out)
    assert (out / row["files"]["panel"]).stat().st_size > 0
