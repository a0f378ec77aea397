"""Names shown safely: one function (visible.visible) for the page and every command's terminal lines."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from guided_backprop.visible import passed_over_line, visible

from .fixtures.cli_images import write_plain
from .fixtures.runs import TINY, invoke

RLO = "\u202e"


@pytest.mark.parametrize(("text", "shown"), [
    (f"holiday{RLO}gnp.exe", "holiday\\u202egnp.exe"),
    ("two\nlines\r", "two\\nlines\\r"),
    ("clear\x1b[2J", "clear\\x1b[2J"),
    ("zero\u200bwidth\ufeff", "zero\\u200bwidth\\ufeff"),
    ("undecodable \udcff.png", "undecodable \\udcff.png"),
    ("café 猫 שלום.png", "café 猫 שלום.png"),  # letters of every script stay as they are
    ("tab\there", "tab\\there"),
])
def test_visible_spells_out_what_would_not_be_seen(text: str, shown: str) -> None:
    assert visible(text) == shown and visible(shown) == shown


def test_passed_over_line_names_the_path_safely() -> None:
    assert passed_over_line(Path(f"/in/a{RLO}gnp.png"), "a FIFO\n") == "skipped: '/in/a\\u202egnp.png': a FIFO\\n"


def _hidden(text: str) -> list[str]:
    return [c for c in text if not c.isprintable() and c != "\n"]


def test_every_command_names_an_odd_output_folder_visibly(tmp_path: Path) -> None:
    write_plain(tmp_path / "in", 2)
    os.mkfifo(tmp_path / "in" / f"pipe{RLO}.png")
    out = tmp_path / f"out{RLO}"
    run: Any = invoke(tmp_path / "in", "-o", out, "--model", TINY, "--input-size", "32", "--workers", "0", "--report")
    assert run.exit_code == 0, run.output
    units: Any = invoke("units", tmp_path / "in", "-o", tmp_path / f"units{RLO}", "--model", TINY, "--input-size",
                        "32", "--layer", "0", "--channel", "0")
    assert units.exit_code == 0, units.output
    for result in (run, units):
        text = result.stdout + result.stderr
        assert "out\\u202e" in text or "units\\u202e" in text
        assert "pipe\\u202e.png" in result.stderr and _hidden(text) == []
