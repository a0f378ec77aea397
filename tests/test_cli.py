"""End-to-end runs of the real ``guided-backprop`` command on generated images.

In-process runs use click's ``CliRunner``; the kill-and-resume, Ctrl-C and torchrun cases run real
processes. The network is a tiny seeded CNN loaded through the factory path, at 32 px.
"""

from __future__ import annotations

import json
import os
import platform
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import click
import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

import guided_backprop as gbp
from guided_backprop import images
from guided_backprop.cli.commands import main
from guided_backprop.models.preprocessing import Preprocessing
from guided_backprop.pictures import render
from tests.fixtures.cli_images import BAD, BLUE, RED, write_plain, write_zoo
from tests.fixtures.cli_models import tiny
from tests.fixtures.runs import cli_process, invoke, rerun_to_the_end

REPO = Path(__file__).resolve().parents[1]
MODELS = REPO / "tests" / "fixtures" / "cli_models.py"
TINY = f"{MODELS}:tiny"
SLOW = f"{MODELS}:slow"
FAST = ["--model", TINY, "--input-size", "32"]
# What --input-size 32 makes of a factory model's default preprocessing (resize 256 / crop 224).
PRE = Preprocessing(resize=37, crop=32)
SUMMARY = re.compile(r"^(\d+) images?: (?:(\d+) skipped \(already done\), )?(\d+) computed, (\d+) failed"
                     r"(?:, (\d+) passed over \(not read\))? in [\d.]+ s(?: \([\d.]+ img/s\))? -> (.+)$")


def read_index(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "index.jsonl").read_text(encoding="utf-8").splitlines()]


def pixels(path: Path) -> np.ndarray:
    with Image.open(path) as im:
        im.load()
        return np.asarray(im)


def _strip_probabilities(row: dict) -> tuple[dict, list[float]]:
    probs = [row["probability"]] + [p for _c, _n, p in row["top5"]] + [p for _c, _n, p in row["targets"] or []]
    plain = {**row, "probability": None, "top5": [[c, n] for c, n, _p in row["top5"]],
             "targets": None if row["targets"] is None else [[c, n] for c, n, _p in row["targets"]]}
    return plain, [p for p in probs if p is not None]


def assert_same_outputs(out: Path, ref: Path) -> None:
    """Same index (probabilities to 1e-5: batches of another size may round differently), same files,
    same pictures (to one grey level, for the same reason)."""
    rows, ref_rows = read_index(out), read_index(ref)
    assert len(rows) == len(ref_rows)
    for row, ref_row in zip(rows, ref_rows, strict=True):
        (a, pa), (b, pb) = _strip_probabilities(row), _strip_probabilities(ref_row)
        assert a == b
        assert np.allclose(pa, pb, atol=1e-5)
    assert visible_files(out) == visible_files(ref)
    for name in visible_files(ref):
        if name.endswith(".png"):
            diff = np.abs(pixels(out / name).astype(int) - pixels(ref / name).astype(int))
            assert diff.max() <= 1 and (diff > 0).mean() < 0.01, name


def visible_files(out: Path) -> set[str]:
    return {str(p.relative_to(out)) for p in out.rglob("*") if p.is_file() and not any(
        part.startswith(".") for part in p.relative_to(out).parts)}


def temp_files(out: Path) -> list[Path]:
    return [p for p in out.rglob("*.tmp")]


@pytest.fixture(scope="module")
def zoo(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Path], list[Path]]:
    folder = tmp_path_factory.mktemp("zoo") / "inputs with space"
    good, bad = write_zoo(folder)
    return folder, good, bad


# ------------------------------------------------------------------------------------ bad input


def test_every_input_kind_end_to_end(zoo: tuple[Path, list[Path], list[Path]], tmp_path: Path) -> None:
    folder, good, bad = zoo
    out = tmp_path / "out"
    result = invoke(folder, "-o", out, *FAST, "--workers", "2", "--batch-size", "4")

    assert result.exit_code == 1, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == len(BAD), lines  # one line per bad file, nothing else
    for path in bad:
        (line,) = [ln for ln in lines if repr(str(path)) in ln]
        assert line.startswith("error: cannot read image")
    reasons = " ".join(lines)
    for word in ("empty file", "truncated", "not an image", "decompression bomb"):
        assert word in reasons

    order = images.find_images([folder])
    rows = read_index(out)
    assert [r["idx"] for r in rows] == list(range(len(order)))
    assert [r["input"] for r in rows] == [str(p) for p in order]
    by_name = {Path(r["input"]).name: r for r in rows}
    for path in bad:
        row = by_name[path.name]
        assert row["status"] == "error" and path.name in row["error"] and row["files"] == {}
    for path in good:
        row = by_name[path.name]
        assert row["status"] == "ok", row
        assert row["files"] == {"input": f"im_{row['idx']}.png",
                                "guided_backprop": f"map_{row['idx']}_class_{row['class_index']}.png"}
        assert row["class_name"] == f"class {row['class_index']}"
        assert len(row["top5"]) == 5 and row["top5"][0][0] == row["class_index"]
        assert abs(sum(p for _c, _n, p in row["top5"]) - 1) < 1  # probabilities, best first
        assert [p for _c, _n, p in row["top5"]] == sorted((p for _c, _n, p in row["top5"]), reverse=True)
        for name in row["files"].values():
            assert pixels(out / name).shape == (32, 32, 3)

    # EXIF orientation applied: stored left red / right blue, shown top red / bottom blue.
    seen = pixels(out / by_name["exif rotated.jpg"]["files"]["input"]).astype(int)
    assert np.abs(seen[2, 16] - RED).max() < 40 and np.abs(seen[-3, 16] - BLUE).max() < 40
    # Animated GIF: the first (red) frame.
    assert np.abs(pixels(out / by_name["animated.gif"]["files"]["input"]).astype(int) - RED).max() < 40

    csv_lines = (out / "predictions.csv").read_text(encoding="utf-8").splitlines()
    assert len(csv_lines) == len(order) + 1
    assert csv_lines[0].startswith("idx,input,status,error,class_index,class_name,probability,top1_class_index")
    run = json.loads((out / "run.json").read_text(encoding="utf-8"))
    assert run["methods"] == ["guided_backprop"] and run["normalization"] == "percentile"
    assert run["model"] == TINY and run["version"] == gbp.__version__
    assert run["images"] == len(order) and run["failed"] == len(bad) and run["maps"] == len(good)
    assert run["finished"] and "centre-cropped to 32x32" in run["preprocessing"]
    (summary,) = result.stdout.strip().splitlines()
    m = SUMMARY.match(summary)
    # computed: the inputs explained; the failed ones are counted apart
    assert m and m.group(1) == str(len(order)) and m.group(3) == str(len(order) - len(bad)) \
        and m.group(4) == str(len(bad))
    assert not temp_files(out)


def test_one_pixel_image_is_reported_when_the_network_cannot_take_it(zoo, tmp_path: Path) -> None:
    """Without resize the 1x1 picture is too small for a 3x3 conv: that input fails, the others do not."""
    folder, _good, _bad = zoo
    out = tmp_path / "out"
    result = invoke(folder / "one pixel.png", folder / "plain.png", "-o", out, "--model", TINY,
                    "--resize", "none", "--crop", "none", "--workers", "0", "--batch-size", "2")
    assert result.exit_code == 1
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("error: cannot process") and "one pixel.png" in line
    rows = read_index(out)
    assert [r["status"] for r in rows] == ["error", "ok"]
    assert pixels(out / rows[1]["files"]["guided_backprop"]).shape == (40, 48, 3)  # the picture's own size


# --------------------------------------------------------------------------------- seed's look


def test_seed_names_and_minmax_look(tmp_path: Path) -> None:
    paths = write_plain(tmp_path / "in", 3)
    out = tmp_path / "out"
    result = invoke(tmp_path / "in", "-o", out, *FAST, "--norm", "minmax", "--batch-size", "1", "--workers", "0")
    assert result.exit_code == 0, result.output

    model = tiny().eval()
    expected_files = {"index.jsonl", "predictions.csv", "run.json"}
    for idx, path in enumerate(paths):
        x = PRE(images.load_image(path))[None]
        with torch.no_grad():
            cls = int(model(x).argmax())
        gbp_map = gbp.attribute(model, x, method="guided_backprop")[0].numpy()
        name = f"map_{idx}_class_{cls}.png"
        expected_files |= {name, f"im_{idx}.png"}
        # The seed's look: scipy.misc.imsave's bytescale over all pixels and channels.
        assert np.array_equal(pixels(out / name), render.bytescale(gbp_map.transpose(1, 2, 0)))
        assert np.array_equal(pixels(out / f"im_{idx}.png"), PRE.invert(x[0]))
    assert visible_files(out) == expected_files

    seed = tmp_path / "seed"
    seed_run = invoke(tmp_path / "in", "-o", seed, *FAST, "--seed-look", "--batch-size", "1", "--workers", "0")
    assert seed_run.exit_code == 0
    for name in expected_files - {"run.json"}:
        if name.endswith(".png"):
            assert np.array_equal(pixels(seed / name), pixels(out / name))
    # The default look differs: percentile clipping around mid grey.
    default = tmp_path / "default"
    assert invoke(tmp_path / "in", "-o", default, *FAST, "--batch-size", "1", "--workers", "0").exit_code == 0
    name = read_index(default)[0]["files"]["guided_backprop"]
    assert not np.array_equal(pixels(default / name), pixels(out / name))


def test_several_methods_and_top_k_keep_names_unique(tmp_path: Path) -> None:
    write_plain(tmp_path / "in", 2)
    out = tmp_path / "out"
    result = invoke(tmp_path / "in", "-o", out, *FAST, "--methods", "gbp,deconvnet,gradcam,guided_gradcam",
                    "--target", "top3", "--save-raw", "--workers", "0")
    assert result.exit_code == 0, result.output
    rows = read_index(out)
    for row in rows:
        files = row["files"]
        assert len(files) == 1 + 4 * 3 and len(set(files.values())) == len(files)
        top3 = [c for c, _n, _p in row["targets"]]
        assert top3 == [c for c, _n, _p in row["top5"][:3]]
        for r, cls in enumerate(top3, start=1):
            key = "deconvnet" if r == 1 else f"deconvnet_top{r}"
            assert files[key] == f"map_{row['idx']}_class_{cls}_deconvnet_top{r}.png"
        raw = np.load(out / row["raw"]["guided_backprop_top2"])
        assert raw.shape == (3, 32, 32) and raw.dtype == np.float32
        assert np.load(out / row["raw"]["gradcam"]).shape == (1, 32, 32)
    header = (out / "predictions.csv").read_text().splitlines()[0].split(",")
    assert "file_guided_gradcam_top3" in header and "raw_deconvnet_top2" in header


def test_name_template_fields(tmp_path: Path) -> None:
    write_plain(tmp_path / "in", 2, prefix="photo ")
    out = tmp_path / "out"
    result = invoke(tmp_path / "in", "-o", out, *FAST, "--name", "{method}/{stem}_{label}.png",
                    "--input-name", "inputs/{stem}.png", "--workers", "0")
    assert result.exit_code == 0, result.output
    row = read_index(out)[1]
    assert row["files"] == {"input": "inputs/photo_001.png",
                            "guided_backprop": f"guided_backprop/photo_001_class_{row['class_index']}.png"}
    assert (out / row["files"]["guided_backprop"]).is_file()


def test_layer_target(tmp_path: Path) -> None:
    write_plain(tmp_path / "in", 2)
    out = tmp_path / "out"
    result = invoke(tmp_path / "in", "-o", out, *FAST, "--layer", "1", "--channel", "1", "--neuron", "max",
                    "--workers", "0")
    assert result.exit_code == 0, result.output
    row = read_index(out)[0]
    assert row["files"]["guided_backprop"] == "map_0_1_ch1.png"
    assert row["layer_target"]["layer"] == "1" and row["layer_target"]["neuron"] == "max"
    assert len(row["layer_target"]["position"]) == 2 and row["class_index"] is not None


# ------------------------------------------------------------------------------- usage errors


@pytest.mark.parametrize(
    ("extra", "words"),
    [
        (["--model", "efficientnet_lite00"], ["unknown model", "efficientnet_lite0"]),
        (["--model", f"{MODELS}:tinny"], ["unknown factory function", "'tiny'"]),
        ([*FAST, "--methods", "guided,deconvnett"], ["unknown method", "deconvnet"]),
        ([*FAST, "--methods", "gbp,smoothgrad"], ["unknown method 'smoothgrad'", "--smooth 25 with --methods"]),
        ([*FAST, "--target", "dog"], ["unknown class", "dog"]),
        ([*FAST, "--target", "12"], ["class index 12 is out of range"]),
        ([*FAST, "--layer", "9", "--channel", "0"], ["--layer: unknown layer", "'9'"]),
        ([*FAST, "--gradcam-layer", "9", "--methods", "gradcam"], ["--gradcam-layer: unknown layer", "'9'"]),
        ([*FAST, "--layer", "0"], ["--channel"]),
        ([*FAST, "--name", "map_{idx}_{clas}.png"], ["--name", "unknown file name field", "class_index"]),
        ([*FAST, "--name", "same.png"], ["{idx}"]),
        ([*FAST, "--norm", "fancy"], ["--norm", "percentile"]),
        ([*FAST, "--bogus"], ["no such option", "--bogus"]),
        ([*FAST, "--batch-size", "0"], ["--batch-size"]),
    ],
)
def test_usage_errors_exit_2_with_one_line(tmp_path: Path, extra: list[str], words: list[str]) -> None:
    write_plain(tmp_path / "in", 1)
    result = invoke(tmp_path / "in", "-o", tmp_path / "out", *extra)
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for word in words:
        assert word.lower() in lines[0].lower()
    assert "Traceback" not in result.output
    assert not (tmp_path / "out" / "index.jsonl").exists()


def test_missing_input_is_a_usage_error(tmp_path: Path) -> None:
    result = invoke(tmp_path / "nope", "-o", tmp_path / "out", *FAST)
    assert result.exit_code == 2
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("error: no such file") and str(tmp_path / "nope") in line


def test_verbose_shows_the_traceback(tmp_path: Path) -> None:
    write_plain(tmp_path / "in", 1)
    result = invoke(tmp_path / "in", "-o", tmp_path / "out", *FAST, "--target", "dog", "--verbose")
    assert result.exit_code == 2
    last = result.stderr.strip().splitlines()[-1]
    assert "Traceback" in result.stderr and last.startswith("error: --target: unknown class")


def test_help_version_and_subcommands() -> None:
    help_text = invoke("--help").output
    for text in ("Exit codes: 0", "1 some inputs failed", "2 usage error", "130 interrupted", "--methods",
                 "--target", "--norm", "models", "report", "run --help"):
        assert text in " ".join(help_text.split()), text
    assert invoke("run", "--help").exit_code == 0 and "--name TEMPLATE" in invoke("run", "--help").output
    version = invoke("--version")
    assert version.exit_code == 0 and version.output.strip() == f"guided-backprop {gbp.__version__}"
    listing = invoke("models")
    assert listing.exit_code == 0 and "efficientnet_lite0" in listing.output


def test_explicit_run_subcommand_and_report(tmp_path: Path) -> None:
    write_plain(tmp_path / "in", 2)
    out = tmp_path / "out"
    result = invoke("run", tmp_path / "in", "-o", out, *FAST, "--workers", "0", "--report", "--quiet")
    assert result.exit_code == 0, result.output
    assert result.stdout == "" and (out / "index.html").is_file()
    (out / "index.html").unlink()
    again = invoke("report", out)
    assert again.exit_code == 0 and (out / "index.html").is_file()


def test_not_a_terminal_means_no_progress_bar(tmp_path: Path) -> None:
    write_plain(tmp_path / "in", 2)
    result = invoke(tmp_path / "in", "-o", tmp_path / "out", *FAST, "--workers", "0")
    assert result.exit_code == 0 and result.stderr == ""
    assert SUMMARY.match(result.stdout.strip())


# ------------------------------------------------------------------------------------ resume


def test_rerun_skips_complete_work_and_overwrite_redoes_it(tmp_path: Path) -> None:
    write_plain(tmp_path / "in", 4)
    out = tmp_path / "out"
    args = [tmp_path / "in", "-o", out, *FAST, "--workers", "0", "--batch-size", "1"]
    assert invoke(*args).exit_code == 0
    before = read_index(out)
    stamps = {n: (out / n).stat().st_mtime_ns for n in visible_files(out) if n.endswith(".png")}
    victim = before[2]["files"]["guided_backprop"]
    (out / victim).unlink()
    (out / ".map_0_class_0.png.gbp.123.abcd0123.tmp").write_bytes(b"half")  # left by a killed run

    again = invoke(*args)
    assert again.exit_code == 0
    assert SUMMARY.match(again.stdout.strip()).group(2) == "3"
    assert read_index(out) == before and (out / victim).is_file() and not temp_files(out)
    for name, stamp in stamps.items():
        if name not in (victim, before[2]["files"]["input"]):
            assert (out / name).stat().st_mtime_ns == stamp, name  # untouched

    redo = invoke(*args, "--overwrite")
    assert redo.exit_code == 0 and SUMMARY.match(redo.stdout.strip()).group(2) is None
    assert read_index(out) == before

    other = invoke(*args, "--methods", "saliency")
    assert other.exit_code == 2 and "other settings" in other.stderr and "--overwrite" in other.stderr


def test_outputs_inside_the_input_folder_are_not_inputs(tmp_path: Path) -> None:
    write_plain(tmp_path / "in", 2)
    args = [tmp_path / "in", "-o", tmp_path / "in" / "out", *FAST, "--workers", "0"]
    assert invoke(*args).exit_code == 0
    again = invoke(*args)
    assert again.exit_code == 0 and SUMMARY.match(again.stdout.strip()).group(1) == "2"


@pytest.mark.slow
def test_kill_9_then_resume_matches_a_clean_run(tmp_path: Path) -> None:
    write_plain(tmp_path / "in", 14)
    common = ["--input-size", "32", "--batch-size", "1", "--workers", "1", "--quiet"]
    clean = tmp_path / "clean"
    assert invoke(tmp_path / "in", "-o", clean, "--model", TINY, *common).exit_code == 0

    out = tmp_path / "out"
    args = [tmp_path / "in", "-o", out, "--model", SLOW, *common]
    proc = cli_process(*args, env={"GBP_TEST_DELAY": "0.3"})
    journal = out / ".guided-backprop" / "journal-0.jsonl"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if journal.is_file() and journal.read_bytes().count(b"\n") >= 3:
            break
        time.sleep(0.02)
    assert proc.poll() is None, "the run ended before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL

    # Killed at an arbitrary moment: every visible file is whole.
    for name in visible_files(out):
        if name.endswith(".png"):
            pixels(out / name)
        else:
            json.loads((out / name).read_text(encoding="utf-8"))
    assert not (out / "index.jsonl").exists()

    rerun_to_the_end(*args)
    assert not temp_files(out)
    assert_same_outputs(out, clean)
    resumed = json.loads((out / "run.json").read_text())
    assert resumed["images"] == 14 and resumed["failed"] == 0


@pytest.mark.slow
def test_ctrl_c_stops_cleanly_with_exit_130(tmp_path: Path) -> None:
    write_plain(tmp_path / "in", 12)
    out = tmp_path / "out"
    args = [tmp_path / "in", "-o", out, "--model", SLOW, "--input-size", "32", "--batch-size", "1",
            "--workers", "1"]
    proc = cli_process(*args, env={"GBP_TEST_DELAY": "0.3"})
    journal = out / ".guided-backprop" / "journal-0.jsonl"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not (journal.is_file() and journal.read_bytes().count(b"\n") >= 2):
        time.sleep(0.02)
    assert proc.poll() is None
    start = time.monotonic()
    proc.send_signal(signal.SIGINT)
    _stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    assert time.monotonic() - start < 20
    assert "interrupted" in stderr and "Traceback" not in stderr
    assert not temp_files(out)
    done = [json.loads(line) for line in journal.read_text().splitlines()]
    assert 2 <= len(done) < 12 and all(r["status"] == "ok" for r in done)

    rerun_to_the_end(*args, "--quiet")
    assert len(read_index(out)) == 12


@pytest.mark.slow
def test_torchrun_two_processes_equal_one(tmp_path: Path) -> None:
    write_plain(tmp_path / "in", 7)
    (tmp_path / "in" / "broken.png").write_text("not a png")
    common = ["--input-size", "32", "--batch-size", "2", "--workers", "1", "--model", TINY, "--device", "cpu"]
    single = tmp_path / "single"
    assert invoke(tmp_path / "in", "-o", single, *common, "--quiet").exit_code == 1

    out = tmp_path / "multi"
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
         "-m", "guided_backprop", tmp_path / "in", "-o", out, *common],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 1, proc.stderr  # torchrun: some input failed
    assert proc.stderr.count("error: cannot read image") == 1
    assert proc.stdout.count(" images: ") == 1  # one summary, from rank 0
    assert [r["idx"] for r in read_index(out)] == list(range(8))  # complete: no gap, no repeat
    assert_same_outputs(out, single)
    # Each input was computed by the rank it belongs to: idx % 2.
    journal = [json.loads(line) for line in (out / ".guided-backprop" / "journal-0.jsonl").read_text().splitlines()]
    assert sorted(r["idx"] for r in journal) == list(range(8))
    assert all(r["_rank"] == r["idx"] % 2 for r in journal)
    assert json.loads((out / "run.json").read_text())["processes"] == 2


def test_units_subcommand_writes_one_grid_per_channel(tmp_path: Path) -> None:
    src = tmp_path / "in"
    write_plain(src, 5)
    (src / "broken.png").write_text("not an image")
    out = tmp_path / "units"
    result = invoke("units", src, "-o", out, "--model", TINY, "--layer", "0", "--channel", "1", "--channel", "3",
                    "--top", "4", "--device", "cpu", "--quiet")
    assert result.exit_code == 1, result.output  # the broken file is reported, the others used
    assert [line for line in result.output.splitlines() if "broken.png" in line][0].startswith("error: ")
    grids = sorted(p.name for p in out.glob("*.png"))
    assert grids == ["unit_0_c1.png", "unit_0_c3.png"]
    manifest = json.loads((out / "units.json").read_text())
    assert [u["channel"] for u in manifest["units"]] == [1, 3]
    assert len(manifest["units"][0]["top"]) == 4
    picture = np.asarray(Image.open(out / "unit_0_c1.png"))
    assert picture.std() > 0


def test_units_subcommand_unknown_layer_is_one_line_usage_error(tmp_path: Path) -> None:
    src = tmp_path / "in"
    write_plain(src, 2)
    result = invoke("units", src, "-o", tmp_path / "u", "--model", TINY, "--layer", "5x", "--quiet")
    assert result.exit_code == 2
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: unknown layer '5x'"), result.output


def test_panel_shows_the_input_then_each_method_titled(tmp_path: Path) -> None:
    src = tmp_path / "in"
    write_plain(src, 2)
    out = tmp_path / "out"
    result = invoke(src, "-o", out, *FAST, "--methods", "gbp,saliency,gradcam", "--panel", "--quiet")
    assert result.exit_code == 0, result.output
    rows = read_index(out)
    assert [r["files"]["panel"] for r in rows] == ["panel_0.png", "panel_1.png"]
    assert json.loads((out / "run.json").read_text())["maps"] == 6  # panels are not counted as maps
    panel = pixels(out / "panel_0.png")
    tile = pixels(out / "im_0.png")
    assert panel.shape[1] > 4 * tile.shape[1] * (128 // tile.shape[1])  # input + 3 maps, enlarged to >= 128 px
    assert panel.std() > 0


def test_a_top_k_panel_is_a_grid_with_one_row_per_class(tmp_path: Path) -> None:
    src = tmp_path / "in"
    write_plain(src, 1)
    heights = {}
    for k in (1, 3):
        out = tmp_path / f"out{k}"
        result = invoke(src, "-o", out, *FAST, "--methods", "gbp,gradcam", "--target", f"top{k}", "--panel",
                        "--quiet")
        assert result.exit_code == 0, result.output
        assert read_index(out)[0]["files"]["panel"] == "panel_0.png"
        heights[k] = pixels(out / "panel_0.png").shape[0]
    # three rows of (tile + label + colour bar) under one header: more than twice one row's panel
    assert heights[3] > 2.5 * heights[1] - 100, heights
    tile = pixels(tmp_path / "out3" / "im_0.png").shape[0] * (128 // 32)
    assert heights[3] > 3 * tile, heights


# ------------------------------------------------------------ custom models, model options, layers

GRAY_NET = '''
from torch import nn


def gray():
    """A 1-channel network (conv -> ReLU -> pool -> 3 classes)."""
    import torch
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3))


def gray_with_preprocessing():
    from guided_backprop import Preprocessing
    return {"model": gray(), "preprocessing": Preprocessing(resize=None, crop=32, mean=(0.5,), std=(0.5,),
                                                           channels=1), "labels": ["zero", "one", "two"]}
'''


@pytest.fixture
def gray_model(tmp_path: Path) -> str:
    path = tmp_path / "gray_net.py"
    path.write_text(GRAY_NET)
    return str(path)


def test_grayscale_model_on_the_command_line(tmp_path: Path, gray_model: str) -> None:
    src = tmp_path / "in"
    write_plain(src, 2)
    bad = invoke(src, "-o", tmp_path / "bad", "--model", f"{gray_model}:gray", "--input-size", "32")
    assert bad.exit_code == 2
    (line,) = bad.stderr.strip().splitlines()  # one line, not one per image
    assert "shape (1, 3, 32, 37)" in line or "shape (1, 3, 32, 32)" in line
    assert "--channels 1" in line and "channels=1" not in line
    out = tmp_path / "out"
    result = invoke(src, "-o", out, "--model", f"{gray_model}:gray", "--input-size", "32", "--channels", "1",
                    "--mean", "0.5", "--std", "0.25", "--workers", "0")
    assert result.exit_code == 0, result.output
    run = json.loads((out / "run.json").read_text())
    assert "grayscale" in run["preprocessing"] and "(0.5)" in run["preprocessing"]
    assert pixels(out / "im_0.png").shape[2] == 3  # shown in grey, as RGB


def test_factory_preprocessing_and_labels_are_used(tmp_path: Path, gray_model: str) -> None:
    src = tmp_path / "in"
    write_plain(src, 1)
    out = tmp_path / "out"
    result = invoke(src, "-o", out, "--model", f"{gray_model}:gray_with_preprocessing", "--target", "one",
                    "--workers", "0", "--quiet")
    assert result.exit_code == 0, result.output
    (row,) = read_index(out)
    assert row["targets"][0][1] == "one" if row["targets"] else row["class_name"] in ("zero", "one", "two")
    assert pixels(out / "im_0.png").shape[:2] == (32, 32)


def test_factory_file_imports_its_neighbours(tmp_path: Path) -> None:
    proj = tmp_path / "proj"
    proj.mkdir()
    (proj / "cli_blocks_for_test.py").write_text("from torch import nn\n"
                                                 "def block():\n    return nn.Sequential(nn.Conv2d(3, 4, 3), "
                                                 "nn.ReLU())\n")
    (proj / "net.py").write_text("from torch import nn\nfrom cli_blocks_for_test import block\n"
                                 "def make_model():\n    return nn.Sequential(block(), nn.AdaptiveAvgPool2d(1), "
                                 "nn.Flatten(), nn.Linear(4, 3))\n")
    result = invoke("layers", "--model", f"{proj / 'net.py'}:make_model", "--input-size", "32")
    assert result.exit_code == 0, result.output
    assert str(proj) not in sys.path


def test_labels_of_the_wrong_count_are_a_usage_error(tmp_path: Path) -> None:
    write_plain(tmp_path / "in", 1)
    (tmp_path / "two.txt").write_text("cat\ndog\n")
    result = invoke(tmp_path / "in", "-o", tmp_path / "out", *FAST, "--labels", tmp_path / "two.txt")
    assert result.exit_code == 2
    (line,) = result.stderr.strip().splitlines()
    assert "has 2 names but model" in line and "10 classes" in line and line.startswith("error: --labels")


def test_layers_lists_names_types_shapes_and_receptive_fields() -> None:
    result = invoke("layers", "--model", TINY, "--input-size", "32")
    assert result.exit_code == 0, result.output
    rows = {line.split()[0]: line for line in result.output.splitlines()[1:-1]}
    assert list(rows) == ["0", "1", "2", "3", "4"]
    assert "Conv2d" in rows["0"] and "1x4x30x30" in rows["0"] and "3x3 px, stride 1" in rows["0"]
    assert "Linear" in rows["4"] and "1x10" in rows["4"] and rows["4"].rstrip().endswith("-")
    assert "32x32 input" in result.output.splitlines()[-1]
    spatial = invoke("layers", "--model", TINY, "--input-size", "32", "--spatial")
    # the 1x1 pool (2) is no spatial map: Grad-CAM and units cannot use it
    assert [line.split()[0] for line in spatial.output.splitlines()[1:-1]] == ["0", "1"]
    assert spatial.output.splitlines()[-1].endswith("default Grad-CAM layer: 1")


@pytest.mark.slow
def test_layers_of_the_default_model_show_where_patches_are_real() -> None:
    result = invoke("layers", "--spatial")
    assert result.exit_code == 0, result.output
    rows = {line.split()[0]: line for line in result.output.splitlines()[1:-1]}
    assert "147x147 px" in rows["blocks.3"] and "whole input" not in rows["blocks.3"]
    assert "787x787 px" in rows["blocks.5"] and "whole input" in rows["blocks.5"]


@pytest.mark.slow
def test_layers_fit_a_screen_by_default_and_all_lists_everything() -> None:
    result = invoke("layers")
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert len(lines) <= 55 and max(map(len, lines)) <= 100
    rows = {line.split()[0]: line.split()[1] for line in lines[1:-2]}
    assert not {"Identity", "Dropout", "DropPath"} & set(rows.values())
    assert {"conv_stem", "blocks.3", "blocks.3.0", "conv_head", "classifier"} <= set(rows)
    assert "stride 224x0" not in result.output and "x0 " not in result.output
    assert "global_pool" in rows and "whole input (no positions)" in result.output
    assert lines[-1].startswith("(Identity and dropout layers left out") and "--all" in lines[-1]
    every = invoke("layers", "--all")
    assert every.exit_code == 0, every.output
    listed = every.output.splitlines()[1:-1]
    assert len(listed) > 200 and any(" Identity " in line for line in listed)
    assert every.output.splitlines()[-1].startswith(f"{len(listed)} layers of efficientnet_lite0")


def test_units_takes_every_model_option_and_points_to_its_own_help(tmp_path: Path, gray_model: str) -> None:
    src = tmp_path / "in"
    write_plain(src, 3)
    (tmp_path / "labels.txt").write_text("a\nb\nc\n")
    out = tmp_path / "u"
    result = invoke("units", src, "-o", out, "--model", f"{gray_model}:gray", "--layer", "0", "--channel", "1",
                    "--top", "2", "--input-size", "24", "--crop", "none", "--resize", "24", "--channels", "1",
                    "--mean", "0.5", "--std", "0.5", "--labels", tmp_path / "labels.txt", "--device", "cpu",
                    "--quiet")
    assert result.exit_code == 0, result.output
    assert (out / "unit_0_c1.png").is_file()
    bad = invoke("units", src, "-o", out, "--model", TINY, "--layer", "0", "--crop", "huge")
    assert bad.exit_code == 2 and "(see 'guided-backprop units --help')" in bad.stderr


def test_gradcam_layer_without_a_gradcam_method_warns(tmp_path: Path) -> None:
    write_plain(tmp_path / "in", 1)
    result = invoke(tmp_path / "in", "-o", tmp_path / "out", *FAST, "--gradcam-layer", "0", "--workers", "0")
    assert result.exit_code == 0, result.output
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("warning: --gradcam-layer 0 is not used")


def test_help_fits_a_screen_and_command_summaries_are_whole() -> None:
    text = invoke("--help").output  # CliRunner: an 80-column terminal
    lines = text.splitlines()
    assert len(lines) <= 70 and max(map(len, lines)) <= 80
    commands = lines[lines.index("Commands:") + 1:]
    summaries = {line.split()[0]: line.split(None, 1)[1] for line in commands[:commands.index("")]}
    assert set(summaries) == set(main.commands) >= {"run", "evaluate", "layers", "models", "report", "units"}
    for name, summary in summaries.items():  # click's default cut them mid-parenthesis with "..."
        assert not summary.endswith("...") and summary.count("(") == summary.count(")"), (name, summary)
    n_options = sum(isinstance(p, click.Option) for p in main.commands["run"].params)
    assert f"Main options ({n_options} in all, with defaults: guided-backprop run --help)" in text


def test_import_help_version_and_option_errors_answer_without_torch() -> None:
    code = (
        "import sys\n"
        "import guided_backprop as gbp\n"
        "light = 'torch' not in sys.modules and gbp.parse_methods('gbp') == ('guided_backprop',)\n"
        "from guided_backprop.cli.commands import main\n"
        "calls = [['--help'], ['--version'], ['run', '--help'], ['layers', '--help'], ['evaluate', '--help'],\n"
        "         ['photos', '-o', 'out', '--bogus'], ['photos', '-o', 'out', '--methods', 'smoothgrad'],\n"
        "         ['photos', '-o', 'out', '--batch-size', '0']]\n"
        "codes = [int(main(args, standalone_mode=False)) for args in calls]\n"
        "print(light, codes, sorted(m for m in ('torch', 'torchvision', 'timm') if m in sys.modules))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split("\n")[-2] == "True [0, 0, 0, 0, 0, 2, 2, 2] []", done.stdout[-500:]


def test_help_is_grouped_shows_defaults_and_documents_random_weights() -> None:
    text = invoke("run", "--help").output
    flat = " ".join(text.split())
    sections = ["Inputs (how pictures become the network's input):", "Model:", "Methods and targets:",
                "Output:", "Performance:", "Resume:"]
    positions = [text.index(s) for s in sections]
    assert positions == sorted(positions)
    for default in ("[default: guided_backprop]", "[default: top1]", "[default: percentile]", "[default: 8;",
                    "[default: 0.15;", "[default: im_{idx}.png]", "[default: auto]"):
        assert default in flat, default
    assert "'random' (random initialisation" in flat
    units_help = " ".join(invoke("units", "--help").output.split())
    for flag in ("--input-size", "--resize", "--crop", "--labels", "--mean", "--std", "--channels", "--weights"):
        assert flag in units_help, flag


def _listed(output: str) -> dict[str, list[str]]:
    """The rows of a listing by name (a row's wrapped description continues on indented lines)."""
    return {line.split()[0]: line.split() for line in output.splitlines()[1:] if line[:1].strip()}


def test_models_marks_where_guided_backprop_applies() -> None:
    result = invoke("models", "--all")
    rows = _listed(result.output)
    assert rows["efficientnet_lite0"][2] == "yes" and rows["resnet50"][2] == "yes"
    for arch in ("vit_b_16", "swin_t", "convnext_tiny", "maxvit_t"):
        assert rows[arch][2] == "no", arch
    assert "weights=PATH" not in result.output and "--weights PATH" in result.output


def test_models_fit_a_screen_and_all_names_every_torchvision_model() -> None:
    result = invoke("models")
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert len(lines) <= 24 and max(map(len, lines)) <= 100
    rows = _listed(result.output)
    assert {"efficientnet_lite0", "vgg19", "vgg19-caffe", "<torchvision", "timm:<name>"} <= set(rows)
    assert "resnet50" not in rows and "--all lists each" in " ".join(result.output.split())
    every = invoke("models", "--all")
    assert every.exit_code == 0 and max(map(len, every.output.splitlines())) <= 100
    assert {"resnet50", "vit_b_16", "alexnet"} <= set(_listed(every.output))


def test_messages_name_flags_not_python() -> None:
    from guided_backprop.cli.commands import cli_message

    assert cli_message("pass num_classes=N if it was trained for N classes") == \
        "pass --num-classes N if it was trained for N classes"
    assert cli_message("the plain gradient; use method='saliency', or a model with ReLUs") == \
        "the plain gradient; use --methods saliency, or a model with ReLUs"
    assert cli_message("pass trust_checkpoint=True only if you trust it") == \
        "pass --trust-checkpoint only if you trust it"
    assert cli_message("unknown class 'dog'", "target") == "--target: unknown class 'dog'"
    assert cli_message("mean must be one number", "mean") == "--mean: mean must be one number"


def test_target_by_name_suggests_names_that_contain_it(tmp_path: Path) -> None:
    write_plain(tmp_path / "in", 1)
    result = invoke(tmp_path / "in", "-o", tmp_path / "out", "--target", "cat")
    assert result.exit_code == 2
    (line,) = result.stderr.strip().splitlines()
    suggested = re.findall(r"'([^']+)'", line.split("did you mean", 1)[1])
    assert suggested[:4] and all("cat" in s.lower() for s in suggested[:4]), line
    assert "Egyptian cat" in suggested and "crate" not in suggested


def test_summary_plurals(tmp_path: Path) -> None:
    write_plain(tmp_path / "in", 1)
    result = invoke(tmp_path / "in", "-o", tmp_path / "out", *FAST, "--workers", "0")
    assert result.exit_code == 0
    assert result.stdout.startswith("1 image: 1 computed, 0 failed")  # a fresh run skipped nothing: not said


def test_seed_look_refuses_another_explicit_norm(tmp_path: Path) -> None:
    write_plain(tmp_path / "in", 1)
    result = invoke(tmp_path / "in", "-o", tmp_path / "out", *FAST, "--seed-look", "--norm", "percentile")
    assert result.exit_code == 2 and "--seed-look means --norm minmax" in result.stderr


def test_unknown_layer_lists_close_names_in_python_too() -> None:
    with pytest.raises(gbp.UnknownNameError, match=r"unknown layer '0x'; did you mean '0'"):
        gbp.find_layer(tiny(), "0x")


def test_help_lists_options_in_sections_with_no_bare_arguments() -> None:
    result = CliRunner().invoke(main, ["run", "--help"])
    assert result.exit_code == 0
    text = result.output
    sections = ["Inputs", "Model:", "Methods and targets:", "Output:", "Performance:", "Resume:"]
    assert all(s in text for s in sections), text
    assert not any(line.strip() == "INPUTS..." for line in text.splitlines()), "an argument listed as an option"
    for code in ("0 every input done", "4 the disk is full", "130", "143"):
        assert code in " ".join(text.split())


_ALLOCATOR_PROBE = """
import importlib.util, os, sys, tempfile
import torch
argv0, main_module = sys.argv[1], sys.argv[2]
if main_module:  # as python -m MODULE would have it
    sys.modules["__main__"].__spec__ = importlib.util.find_spec(main_module)
folder = tempfile.mkdtemp()
sys.argv = [argv0, "run", folder, "-o", os.path.join(folder, "out")]  # no image: it stops at once
from guided_backprop.cli import main
try:
    main()
except SystemExit:
    pass

def resident():
    with open("/proc/self/statm", encoding="ascii") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

before = resident()
block = torch.ones(16 << 20)  # 64 MiB: above glibc's largest mmap threshold (32 MiB); torch allocates with malloc
del block
print((resident() - before) >> 20)
"""


@pytest.mark.slow
@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's allocator settings")
@pytest.mark.parametrize(("argv0", "main_module", "env", "kept"), [
    ("guided-backprop", "", {}, True),  # the command's own process: freed memory is kept for reuse
    ("/x/guided_backprop/__main__.py", "guided_backprop.__main__", {}, True),  # python -m guided_backprop, torchrun
    ("guided-backprop", "", {"GUIDED_BACKPROP_MALLOC": "default"}, False),  # the user kept glibc's defaults
    ("notebook.py", "", {}, False),  # main() called from a Python program: its process is left as it was
    ("/x/pytest/__main__.py", "pytest.__main__", {}, False),  # python -m pytest calling main()
])
def test_batch_command_process_keeps_freed_memory(argv0: str, main_module: str, env: dict[str, str],
                                                  kept: bool) -> None:
    """A 64 MiB buffer allocated and freed after the command ran: with glibc's defaults it is mapped and
    unmapped, so the process's resident memory is back where it was; in the command's own process the heap
    keeps it (64 MiB more resident, ready for the next batch). Resident memory, not page faults: huge pages
    and the kernel's reclaim change the faults, not this."""
    run_env = {k: v for k, v in os.environ.items() if not k.startswith(("MALLOC_", "GLIBC_TUNABLES"))}
    proc = subprocess.run([sys.executable, "-c", _ALLOCATOR_PROBE, argv0, main_module], capture_output=True,
                          text=True, env={**run_env, **env}, timeout=120, check=True)
    grown_mib = int(proc.stdout.split()[-1])
    if kept:
        assert grown_mib >= 48, (grown_mib, proc.stderr)
    else:
        assert grown_mib <= 16, (grown_mib, proc.stderr)
