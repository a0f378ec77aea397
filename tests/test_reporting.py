"""One vocabulary for what a run tells its user: the batch job, evaluate and the unit grids tell a Reporter."""

from __future__ import annotations

from pathlib import Path

import pytest

from guided_backprop import ModelSpec, batch
from guided_backprop.reporting import LineReporter, Reporter
from guided_backprop.units import grids as units
from tests.fixtures.cli_images import write_plain
from tests.fixtures.runs import TINY, config


class Recorder(Reporter):
    def __init__(self) -> None:
        self.events: list[tuple[str, object]] = []

    def progress(self, done: int, total: int, task: str = "") -> None:
        self.events.append(("progress", (task, done, total)))

    def passed_over(self, path: object, reason: str) -> None:
        self.events.append(("passed_over", Path(str(path)).name))

    def failed(self, reason: str) -> None:
        self.events.append(("failed", reason))

    def kinds(self) -> set[str]:
        return {kind for kind, _ in self.events}


def _inputs(folder: Path) -> Path:
    write_plain(folder, 2)
    (folder / "broken.png").write_bytes(b"not a picture")
    (folder / ".hidden.png").write_bytes(b"")  # passed over: never opened
    return folder


def test_the_batch_job_tells_a_reporter_and_draws_no_bar(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rec = Recorder()
    result = batch.run([_inputs(tmp_path / "in")], tmp_path / "out", config(), reporter=rec)
    assert result.failed == 1 and [p.path.name for p in result.passed_over] == [".hidden.png"]
    assert ("passed_over", ".hidden.png") in rec.events
    assert [r for k, r in rec.events if k == "failed"] == result.errors and "broken.png" in result.errors[0]
    assert ("progress", ("", 3, 3)) in rec.events and capsys.readouterr().err == ""
    lines: list[str] = []  # the same, as the lines a command prints
    batch.run([tmp_path / "in"], tmp_path / "out2", config(), reporter=LineReporter(lines.append))
    assert lines[0] == "skipped: '" + str(tmp_path / "in" / ".hidden.png") + "': hidden file (the name starts with '.')"
    assert lines[1].startswith("error: cannot read image") and "broken.png" in lines[1]


def test_evaluate_and_the_unit_grids_tell_a_reporter(tmp_path: Path) -> None:
    from guided_backprop.evaluate.run import EvaluateConfig, evaluate_folder

    inputs = _inputs(tmp_path / "in")
    rec = Recorder()
    spec = ModelSpec(TINY, preprocessing={"input_size": 32})
    run = evaluate_folder(inputs, tmp_path / "out", EvaluateConfig(model=spec, methods=["saliency"],
                                                                   checks=["class"]), reporter=rec)
    assert list(run.failed) == [str(inputs / "broken.png")] and run.exit_code == 1
    assert {"progress", "passed_over", "failed"} <= rec.kinds()
    assert any(k == "progress" and v[0] == "class" for k, v in rec.events)  # type: ignore[index]

    rec = Recorder()
    loaded = spec.load()
    paths = sorted(p for p in inputs.iterdir() if not p.name.startswith("."))
    grids = list(units.iter_unit_grids(loaded.model, units.ImageFiles(paths, loaded.preprocessing), "1", [0], k=1,
                                       display=loaded.preprocessing, on_error="skip", reporter=rec))
    assert len(grids) == 1
    assert [v for k, v in rec.events if k == "failed"] == [f"skipped: cannot read image {str(inputs / 'broken.png')!r}"
                                                          f": not an image Pillow can read (unknown format or not an "
                                                          f"image at all)"]
    assert ("progress", ("", 3, 3)) in rec.events
