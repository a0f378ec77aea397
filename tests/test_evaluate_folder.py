"""``evaluate`` on real folders: mixed sizes, batches, non-finite models, the output set, writes, own outputs."""

from __future__ import annotations

import csv
import json
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from guided_backprop.cli.commands import main
from guided_backprop.errors import ExitCode
from tests.fixtures.cli_images import write_plain

REPO = Path(__file__).resolve().parents[1]
FACTORY = f"{REPO / 'tests' / 'fixtures' / 'cli_models.py'}:tiny"
ASPECT = ["--model", FACTORY, "--resize", "32", "--crop", "none"]  # whole pictures, aspect kept
FAST = ["--methods", "saliency,gradcam", "--checks", "class,emprt,deletion", "--steps", "4"]


def invoke(*args: object) -> Any:
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def strict_json(path: Path) -> Any:
    """json.loads that refuses NaN and Infinity, as JSON.parse does."""
    def refuse(name: str) -> None:
        raise ValueError(f"{path.name} holds {name}, which is not JSON")
    return json.loads(path.read_text(encoding="utf-8"), parse_constant=refuse)


def per_image(out: Path) -> dict[tuple[str, ...], float]:
    """evaluation.csv as {(image name, check, method, step, metric): value}."""
    with (out / "evaluation.csv").open(encoding="utf-8") as f:
        return {(Path(r["image"]).name, r["check"], r["method"], r["step"], r["metric"]):
                float(r["value"]) if r["value"] else float("nan") for r in csv.DictReader(f)}


def _mixed(folder: Path) -> list[Path]:
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    paths = []
    for name, (h, w) in {"a_wide.png": (32, 48), "b_square.png": (32, 32), "c_wide.png": (32, 48),
                         "d_tall.png": (48, 32)}.items():
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(folder / name)
        paths.append(folder / name)
    return paths


@pytest.mark.slow
def test_a_folder_of_mixed_sizes_is_evaluated_and_each_image_gets_its_numbers_alone(tmp_path: Path) -> None:
    paths = _mixed(tmp_path / "in")
    out = tmp_path / "out"
    result = invoke("evaluate", tmp_path / "in", "-o", out, *ASPECT, *FAST, "--batch-size", "2", "-q")
    assert result.exit_code == 0, result.output
    doc = strict_json(out / "evaluation.json")
    assert doc["images"] == 4 and [Path(p).name for p in doc["inputs"]] == [p.name for p in paths]  # input order
    together = per_image(out)
    for p in (paths[0], paths[3]):  # evaluated alone, in a batch of one
        alone_out = tmp_path / f"alone_{p.stem}"
        assert invoke("evaluate", p, "-o", alone_out, *ASPECT, *FAST, "-q").exit_code == 0
        alone = per_image(alone_out)
        mine = {k: v for k, v in together.items() if k[0] == p.name}
        assert mine.keys() == alone.keys()
        # the same seeded draws (random classes and pixel orders are per image); batched convolutions
        # differ from single ones by float rounding only
        np.testing.assert_allclose([mine[k] for k in alone], [alone[k] for k in alone], atol=1e-5, equal_nan=True)


def test_batches_hold_one_size_each_and_memory_stays_bounded() -> None:
    from guided_backprop.evaluate.run import _batches

    shapes = [(3, 8, 8 + (i % 3)) for i in range(23)]  # three sizes, interleaved
    alive = {"made": 0, "most": 0}
    yielded = 0

    def preprocess(path: Path) -> torch.Tensor:
        alive["made"] += 1
        alive["most"] = max(alive["most"], alive["made"] - yielded)
        return torch.zeros(shapes[int(path.stem)])

    import guided_backprop.images as images
    original, images.load_image = images.load_image, lambda p: p  # type: ignore[assignment]
    try:
        seen: list[int] = []
        skipped: dict[str, str] = {}
        for batch in _batches([Path(f"{i}") for i in range(23)], preprocess, 4, skipped):
            assert 1 <= batch.x.shape[0] <= 4 and len({shapes[i] for i in batch.ids}) == 1
            yielded += batch.x.shape[0]
            seen += batch.ids
    finally:
        images.load_image = original
    assert sorted(seen) == list(range(23)) and not skipped
    assert alive["most"] <= 4  # images read but not yet evaluated: never more than one batch's worth


def _nan_factory(tmp_path: Path, value: str) -> str:
    """Finite weights (non-finite ones are refused at load) whose scores are not finite: a NaN or inf scale."""
    path = tmp_path / "nan_model.py"
    path.write_text(
        "import torch\nfrom torch import nn\n\n"
        "class Scaled(nn.Module):\n"
        "    def __init__(self):\n"
        "        super().__init__()\n"
        "        torch.manual_seed(0)\n"
        "        self.net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),\n"
        "                                 nn.Linear(4, 10))\n\n"
        "    def forward(self, x):\n"
        f"        return self.net(x) * float({value!r})\n\n"
        "def net():\n"
        "    return Scaled()\n")
    return f"{path}:net"


@pytest.mark.parametrize("value", ["nan", "inf"])
def test_a_model_with_non_finite_scores_fails_each_image_with_its_reason(tmp_path: Path, value: str) -> None:
    write_plain(tmp_path / "in", 2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no RuntimeWarning may leak
        result = invoke("evaluate", tmp_path / "in", "-o", tmp_path / "out", "--model", _nan_factory(tmp_path, value),
                        "--input-size", "32", *FAST)
    assert result.exit_code == ExitCode.USAGE, result.output
    assert "not finite" in result.output and "img000.png" in result.output, result.output
    assert not (tmp_path / "out" / "evaluation.json").exists()  # no metrics null with n: 0


def test_a_map_that_is_not_finite_fails_that_image_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import guided_backprop.evaluate.randomization as rnd

    real = rnd.explain_all

    def poisoned(explainer: Any, x: torch.Tensor, *args: Any, **kwargs: Any) -> dict[str, torch.Tensor]:
        maps = real(explainer, x, *args, **kwargs)
        for v in maps.values():  # the all-white image: a NaN map
            v[x.flatten(1).min(dim=1).values > 900] = float("nan")
        return maps

    monkeypatch.setattr(rnd, "explain_all", poisoned)
    write_plain(tmp_path / "in", 2)
    x_bad = tmp_path / "in" / "zz_bad.png"
    Image.new("RGB", (48, 40), (255, 255, 255)).save(x_bad)
    out = tmp_path / "out"
    result = invoke("evaluate", tmp_path / "in", "-o", out, "--model", FACTORY, "--input-size", "32",
                    "--mean", "0,0,0", "--std", "0.001,0.001,0.001", "--methods", "saliency", "--checks", "class")
    assert result.exit_code == ExitCode.SOME_FAILED, result.output
    doc = strict_json(out / "evaluation.json")
    assert doc["images"] == 2 and "not finite" in doc["failed"][str(x_bad)]


@pytest.mark.slow
def test_a_kill_while_writing_keeps_the_previous_set_and_a_rerun_sweeps_the_leftover(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import guided_backprop.evaluate.run as run

    write_plain(tmp_path / "in", 1)
    out = tmp_path / "out"
    common = ["evaluate", tmp_path / "in", "-o", out, "--model", FACTORY, "--input-size", "32", "-q",
              "--methods", "saliency"]
    assert invoke(*common, "--checks", "randomization,deletion", "--steps", "2", "--seed", "0").exit_code == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    assert {"evaluation_randomization.png", "evaluation_faithfulness.png"} <= before.keys()

    real, calls = run.write_bytes, {"n": 0}

    def killed_after_two(path: Any, payload: bytes) -> None:
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt  # SIGTERM while the new set is being written
        real(path, payload)

    monkeypatch.setattr(run, "write_bytes", killed_after_two)
    result = invoke(*common, "--checks", "randomization,deletion", "--steps", "3", "--seed", "5")
    assert result.exit_code == ExitCode.INTERRUPTED
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # the previous set, nothing else
    monkeypatch.setattr(run, "write_bytes", real)

    (out / ".evaluate-99-0123abcd.tmp").mkdir()  # what kill -9 leaves
    (out / ".evaluate-99-0123abcd.tmp" / "evaluation.json").write_text("{}")
    assert invoke(*common, "--checks", "class").exit_code == 0  # fewer checks
    names = {p.name for p in out.iterdir()}
    assert names == {"evaluation.json", "evaluation.csv"}, names  # old figures gone, leftover swept
    assert "figures" in strict_json(out / "evaluation.json")


def test_an_output_folder_that_cannot_be_written_is_exit_4_before_computing(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import errno

    import guided_backprop.evaluate.run as run

    write_plain(tmp_path / "in", 1)
    out = tmp_path / "ro"
    out.mkdir()
    out.chmod(0o555)
    if os.geteuid() == 0:  # root writes into read-only folders: a read-only file system says no to it too
        real_mkdir = Path.mkdir

        def read_only(self: Path, *args: Any, **kwargs: Any) -> None:
            if self != out and str(self).startswith(str(out)):
                raise OSError(errno.EROFS, "Read-only file system", str(self))
            real_mkdir(self, *args, **kwargs)

        monkeypatch.setattr(Path, "mkdir", read_only)
    monkeypatch.setattr(run, "run_checks", lambda *a, **k: pytest.fail("computed before checking the folder"))
    try:
        result = invoke("evaluate", tmp_path / "in", "-o", out, "--model", FACTORY, "--input-size", "32")
    finally:
        out.chmod(0o755)
    assert result.exit_code == ExitCode.DISK_FULL, result.output
    assert str(out) in result.output and "--output" in result.output


def test_an_output_folder_on_a_full_disk_is_exit_4_with_the_path(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    import errno

    import guided_backprop.evaluate.run as run

    write_plain(tmp_path / "in", 1)

    def full(path: Any, payload: bytes) -> None:
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(run, "write_bytes", full)
    result = invoke("evaluate", tmp_path / "in", "-o", tmp_path / "out", "--model", FACTORY, "--input-size", "32",
                    "--methods", "saliency", "--checks", "class")
    assert result.exit_code == ExitCode.DISK_FULL, result.output
    assert "No space left on device" in result.output and str(tmp_path / "out") in result.output


def test_evaluating_a_folder_into_itself_says_why_nothing_was_evaluated(tmp_path: Path) -> None:
    write_plain(tmp_path / "in", 3)
    result = invoke("evaluate", tmp_path / "in", "-o", tmp_path / "in", "--model", FACTORY, "--input-size", "32")
    assert result.exit_code == ExitCode.USAGE
    assert "3 images found lie in the output folder" in result.output, result.output
    (tmp_path / "bad").mkdir()
    for name in ("one.png", "two.png"):
        (tmp_path / "bad" / name).write_text("nope")
    result = invoke("evaluate", tmp_path / "bad", "-o", tmp_path / "out", "--model", FACTORY, "--input-size", "32")
    assert result.exit_code == ExitCode.USAGE and "one.png" in result.output and "two.png" in result.output


def test_figure_image_and_figure_steps(tmp_path: Path) -> None:
    write_plain(tmp_path / "in", 3)
    common = ["evaluate", tmp_path / "in", "--model", FACTORY, "--input-size", "32", "--methods", "saliency",
              "--checks", "randomization", "--granularity", "modules", "-q"]
    bad = invoke(*common, "-o", tmp_path / "bad", "--figure-image", "img009")
    assert bad.exit_code == ExitCode.USAGE and "--figure-image" in bad.output and "img009" in bad.output
    good = invoke(*common, "-o", tmp_path / "good", "--figure-image", "img002", "--figure-steps", "1")
    assert good.exit_code == 0, good.output
    doc = strict_json(tmp_path / "good" / "evaluation.json")
    assert Path(doc["settings"]["figure_image"]).name == "img002.png" and doc["settings"]["figure_steps"] == 1


def test_deletion_steps_that_cannot_fit_are_a_usage_error(tmp_path: Path) -> None:
    write_plain(tmp_path / "in", 1)
    result = invoke("evaluate", tmp_path / "in", "-o", tmp_path / "out", "--model", FACTORY, "--steps", "5000")
    assert result.exit_code == ExitCode.USAGE and "--steps" in result.output


def test_deletion_makes_its_step_images_one_batch_at_a_time(monkeypatch: pytest.MonkeyPatch) -> None:
    """--steps 1000 once built every step image of an image at once (GBs); now one batch's worth."""
    import guided_backprop.evaluate.faithfulness as faith
    from tests.fixtures.cli_models import tiny

    real, sizes = faith._step_images, []

    def counted(image: torch.Tensor, start: torch.Tensor, order: torch.Tensor, counts: Any, *, mode: str
                ) -> torch.Tensor:
        sizes.append(len(counts))
        return real(image, start, order, counts, mode=mode)

    monkeypatch.setattr(faith, "_step_images", counted)
    x = torch.randn(1, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    res = faith.deletion_insertion(tiny(), x, {"m": x.clone()}, steps=20, batch_size=4)
    assert max(sizes) <= 4 and sum(sizes) == 2 * 21  # the map's order and the random one, 21 points each
    assert res.curves["m"].shape == (1, 21)
