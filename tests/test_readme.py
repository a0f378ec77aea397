"""Every example in the README runs as written on the default model.

The ```python blocks run in order in one namespace; every ``guided-backprop ...`` line of the ```bash
blocks runs through the real command (click's CliRunner), in a folder holding the README's ``samples/``
(written by ``scripts/sample_images.py``; one of its photos, to keep this quick). Lines that cannot run
offline or here are listed in :data:`SKIPPED` with the reason, never left out silently.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from guided_backprop.cli.commands import main

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text(encoding="utf-8")

#: README command lines not run here (a substring of the line -> why).
SKIPPED = {
    "torchrun": "several processes: tests/test_cli.py::test_torchrun_two_processes_equal_one runs torchrun",
    "--model vgg19": "downloads torchvision's 548 MB VGG19 weights",
    "digits/": "the user's own model, weights and pictures (the factory itself runs in the python block)",
    "explore": "serves until Ctrl-C: tests/test_explore.py::test_command_serves_on_localhost_and_stops_on_ctrl_c "
               "runs the command",
}


def _blocks(language: str) -> list[str]:
    return re.findall(rf"^```{language}\n(.*?)^```", README, flags=re.S | re.M)


def _commands() -> list[str]:
    return [line.strip() for block in _blocks("bash") for line in block.splitlines()
            if line.strip().startswith(("guided-backprop ", "torchrun ")) or "-m guided_backprop" in line]


def _skip_reason(line: str) -> str | None:
    return next((why for key, why in SKIPPED.items() if key in line), None)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("readme")
    done = subprocess.run([sys.executable, str(REPO / "scripts" / "sample_images.py"), str(root / "samples")],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    for extra in ("coffee.png", "astronaut.png", "rocket.jpg", "motorcycle_left.png"):
        (root / "samples" / extra).unlink()
    return root


def test_the_readme_has_examples_and_every_skip_is_used() -> None:
    commands = _commands()
    assert len(_blocks("python")) >= 3 and len(commands) >= 8
    for key in SKIPPED:
        assert any(key in line for line in commands), f"SKIPPED entry {key!r} matches no README command"


@pytest.mark.slow
def test_python_examples_run(workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(workdir)
    namespace: dict = {"__name__": "readme"}
    for block in _blocks("python"):
        exec(compile(block, "README.md", "exec"), namespace)  # noqa: S102 - the README's own code
    assert (workdir / "cat_panel.png").is_file()
    assert namespace["maps"].shape == namespace["x"].shape


@pytest.mark.slow
def test_command_examples_run(workdir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(workdir)
    ran = []
    for line in _commands():
        if _skip_reason(line):
            continue
        args = shlex.split(line, comments=True)[1:]
        result = CliRunner().invoke(main, args, catch_exceptions=False)
        assert result.exit_code == 0, f"{line}\n{result.output}"
        ran.append(args[0])
    assert {"layers", "units", "models", "report"} <= set(ran)
    assert (workdir / "out" / "index.html").is_file() and (workdir / "out_top5" / "index.html").is_file()


@pytest.mark.slow
def test_python_examples_in_a_jupyter_kernel(workdir: Path) -> None:
    """The README's Python blocks, one cell each, in a real kernel: the figure shows, nothing warns."""
    import nbformat
    from nbclient import NotebookClient

    blocks = _blocks("python")
    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(block) for block in blocks])
    NotebookClient(notebook, timeout=600, kernel_name="python3",
                   resources={"metadata": {"path": str(workdir)}}).execute()
    figure_cells = [cell for cell in notebook.cells if "gbp.show(" in cell.source]
    assert figure_cells, "the README has no gbp.show example"
    for cell in figure_cells:
        shown = [out for out in cell.outputs if out.output_type in ("execute_result", "display_data")]
        assert any("image/png" in out.get("data", {}) for out in shown), f"no figure shown: {cell.outputs}"
    for cell in notebook.cells:
        printed = "".join(out.get("text", "") for out in cell.outputs if out.output_type == "stream")
        assert "Warning" not in printed, f"{cell.source.splitlines()[0]!r} printed:\n{printed}"
