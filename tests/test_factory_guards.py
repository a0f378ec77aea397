"""A factory module is run as a library call (issue 18.14): an exit, or a command-line parser on import,
is one clear error of ours quoting what it printed, never exit 0 with nothing written or an argparse
message that looks like ours."""

from __future__ import annotations

import textwrap
from pathlib import Path

from guided_backprop.errors import ExitCode
from tests.fixtures.cli_images import write_plain
from tests.fixtures.runs import invoke

FAST = ("--input-size", "32", "--workers", "0")
NET = "nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 10))"


def _factory(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "factory.py"
    path.write_text(textwrap.dedent(body))
    write_plain(tmp_path / "in", 1)
    return path


def test_a_factory_that_exits_0_is_an_error_not_a_success(tmp_path: Path) -> None:
    path = _factory(tmp_path, """
        import sys
        def make():
            sys.exit(0)
    """)
    result = invoke(tmp_path / "in", "-o", tmp_path / "out", "--model", f"{path}:make", *FAST)
    assert result.exit_code == ExitCode.USAGE, result.output
    assert "called sys.exit(0) instead of returning" in result.stderr and not (tmp_path / "out").exists()


def test_a_module_parsing_the_command_line_on_import_is_reported_as_its_own(tmp_path: Path) -> None:
    path = _factory(tmp_path, """
        import argparse
        parser = argparse.ArgumentParser()
        parser.add_argument("--data", required=True)
        args = parser.parse_args()
        def make():
            pass
    """)
    result = invoke(tmp_path / "in", "-o", tmp_path / "out", "--model", f"{path}:make", *FAST)
    assert result.exit_code == ExitCode.USAGE
    (line,) = result.stderr.strip().splitlines()  # argparse's own lines are quoted in ours, not printed
    assert line.startswith(f"error: --model: importing '{path}' called sys.exit(2)")
    assert "the following arguments are required: --data" in line and "__main__" in line


def test_a_module_reading_argv_on_import_sees_no_arguments_of_ours(tmp_path: Path) -> None:
    path = _factory(tmp_path, f"""
        import argparse, sys
        from torch import nn
        parser = argparse.ArgumentParser()
        parser.add_argument("--lr", type=float, default=0.1)
        args = parser.parse_args()  # our -o, --model... would be an error here
        print("factory module argv:", sys.argv[1:])
        def make():
            return {NET}
    """)
    result = invoke(tmp_path / "in", "-o", tmp_path / "out", "--model", f"{path}:make", *FAST)
    assert result.exit_code == 0, result.output
    assert "factory module argv: []" in result.stdout  # what it printed is passed on
