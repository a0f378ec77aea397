"""The output folder tells the truth (issue 11): resume notices change; hostile inputs, names, signals
and a full disk neither stop, hang nor mislead a run."""

from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from guided_backprop import batch
from guided_backprop.batch import journal as batch_journal
from guided_backprop.errors import ExitCode, GuidedBackpropError
from guided_backprop.images import load_image
from guided_backprop.pictures import render
from guided_backprop.reporting import LineReporter
from tests.fixtures.cli_images import write_plain
from tests.fixtures.cli_models import tiny
from tests.fixtures.runs import MODELS, SLOW, TINY, cli_process, config, index, invoke, rerun_to_the_end

REPO = Path(__file__).resolve().parents[1]


def visible(out: Path) -> set[str]:
    return {str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()
            and not any(part.startswith(".") for part in p.relative_to(out).parts)}


def listed(out: Path) -> set[str]:
    names = {"index.jsonl", "predictions.csv", "run.json"}
    for row in index(out):
        names |= set(row["files"].values()) | set((row.get("raw") or {}).values())
    return names


def our_temp_files(out: Path) -> list[Path]:
    return [p for p in out.rglob("*.tmp")]


def wait_for_lines(path: Path, n: int, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        if path.is_file() and path.read_bytes().count(b"\n") >= n:
            return
        time.sleep(0.02)
    assert proc.poll() is None, "the run ended before the signal could be sent"


def children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(p) for p in text.split()]


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
    except OSError:
        return False
    return state != "Z"


# ------------------------------------------------------------------------ resume notices change


def test_a_replaced_input_is_recomputed(tmp_path: Path) -> None:
    a, b = write_plain(tmp_path / "src", 2)
    (tmp_path / "d").mkdir()
    shutil.copy(a, tmp_path / "d" / "a.png")
    out = tmp_path / "out"
    first = batch.run([tmp_path / "d"], out, config())
    assert first.computed == 1
    before = np.asarray(Image.open(out / index(out)[0]["files"]["input"]))
    shutil.copy(b, tmp_path / "d" / "a.png")  # same path, another picture
    again = batch.run([tmp_path / "d"], out, config())
    assert (again.resumed, again.computed) == (0, 1)
    after = np.asarray(Image.open(out / index(out)[0]["files"]["input"]))
    assert not np.array_equal(before, after)
    assert np.array_equal(after, np.asarray(Image.open(out / index(out)[0]["files"]["input"])))
    assert batch.run([tmp_path / "d"], out, config()).resumed == 1  # unchanged now: skipped


def test_changed_weights_are_refused_and_overwrite_redoes(tmp_path: Path) -> None:
    write_plain(tmp_path / "in", 2)
    weights = tmp_path / "w.pt"
    torch.save(tiny().state_dict(), weights)
    out = tmp_path / "out"
    assert batch.run([tmp_path / "in"], out, config(weights=str(weights))).computed == 2
    cache = json.loads((out / batch.STATE_DIR / "digests.json").read_text())
    assert str(weights) in cache  # hashed once, cached by size and mtime
    assert batch.run([tmp_path / "in"], out, config(weights=str(weights))).resumed == 2

    state = tiny().state_dict()
    state["0.weight"] = state["0.weight"] * 2  # same path, same size, other weights
    torch.save(state, weights)
    with pytest.raises(GuidedBackpropError, match=r"other settings \(weights_sha256: '[0-9a-f]+' -> '[0-9a-f]+'"):
        batch.run([tmp_path / "in"], out, config(weights=str(weights)))
    redo = batch.run([tmp_path / "in"], out, config(weights=str(weights), overwrite=True))
    assert redo.computed == 2


def test_an_edited_factory_file_is_refused(tmp_path: Path) -> None:
    write_plain(tmp_path / "in", 1)
    factory = tmp_path / "models.py"
    shutil.copy(MODELS, factory)
    out = tmp_path / "out"
    batch.run([tmp_path / "in"], out, config(model=f"{factory}:tiny"))
    factory.write_text(factory.read_text() + "\n# edited: the network may differ now\n")
    with pytest.raises(GuidedBackpropError, match="model_source_sha256"):
        batch.run([tmp_path / "in"], out, config(model=f"{factory}:tiny"))


def test_summary_says_skipped_and_computed(tmp_path: Path) -> None:
    write_plain(tmp_path / "in", 3)
    out = tmp_path / "out"
    batch.run([tmp_path / "in"], out, config())
    again = batch.run([tmp_path / "in"], out, config())
    assert again.summary().startswith("3 images: 3 skipped (already done), 0 computed, 0 failed in ")


# ----------------------------------------------------------------------- the lock, kill -9


@pytest.mark.slow
def test_the_folder_lock_is_not_held_by_forked_children(tmp_path: Path) -> None:
    """A forked child (a decode worker) inherits the lock's descriptor but not the lock: once the main
    process is killed the folder is free at once, though the child lives on."""
    state = tmp_path / "out" / batch.STATE_DIR
    script = textwrap.dedent(f"""
        import os, sys, time
        from guided_backprop.batch.journal import folder_lock
        with folder_lock(__import__("pathlib").Path({str(state)!r})):
            if os.fork() == 0:
                time.sleep(30)
                os._exit(0)
            print("locked", flush=True)
            time.sleep(30)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "locked"
        (child,) = children(proc.pid)
        with pytest.raises(GuidedBackpropError, match="another guided-backprop run"):
            with batch_journal.folder_lock(state):
                pass
        proc.kill()
        proc.wait(timeout=10)
        assert alive(child)
        with batch_journal.folder_lock(state):  # free at once
            pass
    finally:
        proc.kill()
        for pid in children(proc.pid):
            os.kill(pid, signal.SIGKILL)
        with pytest.raises(OSError):
            os.kill(child, signal.SIGKILL)
            os.waitpid(child, 0)


@pytest.mark.slow
@pytest.mark.parametrize("moment", [0, 1, 4])
def test_kill_9_of_the_main_process_then_an_immediate_rerun_finishes(tmp_path: Path, moment: int) -> None:
    write_plain(tmp_path / "in", 8)
    out = tmp_path / "out"
    args = [tmp_path / "in", "-o", out, "--model", SLOW, "--input-size", "32", "--batch-size", "1",
            "--workers", "2", "--quiet"]
    proc = cli_process(*args, env={"GBP_TEST_DELAY": "0.2"})
    journal = out / batch.STATE_DIR / "journal-0.jsonl"
    if moment:
        wait_for_lines(journal, moment, proc)
    else:
        deadline = time.monotonic() + 60
        while not children(proc.pid) and time.monotonic() < deadline:  # killed as the workers start
            time.sleep(0.01)
    workers = children(proc.pid)
    proc.kill()
    proc.communicate(timeout=60)
    deadline = time.monotonic() + 5
    while any(alive(w) for w in workers) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(alive(w) for w in workers), "decode workers outlived the killed main process"

    rerun_to_the_end(*args)
    assert not our_temp_files(out)
    rows = index(out)
    assert len(rows) == 8 and all(r["status"] == "ok" for r in rows)
    for name in visible(out):
        if name.endswith(".png"):
            with Image.open(out / name) as im:
                im.load()


# ------------------------------------------------------------------------------ hostile inputs


def test_a_fifo_named_like_an_image_is_skipped_never_opened(tmp_path: Path) -> None:
    write_plain(tmp_path / "in", 2)
    fifo = tmp_path / "in" / "x.png"
    os.mkfifo(fifo)
    lines: list[str] = []
    result = batch.run([tmp_path / "in"], tmp_path / "out", config(workers=1), reporter=LineReporter(lines.append))
    assert (result.images, result.ok, result.exit_code) == (2, 2, 0)
    assert [s.path for s in result.passed_over] == [fifo] and "FIFO" in result.passed_over[0].reason
    assert lines == [f"skipped: {str(fifo)!r}: {result.passed_over[0].reason}"]
    assert "1 passed over (not read)" in result.summary()
    with pytest.raises(GuidedBackpropError, match="FIFO"):  # a named FIFO: an error at once, no hang
        load_image(fifo)
    with pytest.raises(GuidedBackpropError, match="no image can be read"):
        batch.run([fifo], tmp_path / "out2", config())


def test_a_symlink_loop_is_one_skipped_input(tmp_path: Path) -> None:
    write_plain(tmp_path / "in", 2)
    os.symlink("loop.png", tmp_path / "in" / "loop.png")
    result = batch.run([tmp_path / "in"], tmp_path / "out", config())
    assert (result.ok, result.exit_code) == (2, 0)
    assert [s.reason for s in result.passed_over] == ["a symbolic-link loop"]


def test_hidden_unsupported_and_unreadable_are_listed_not_silent(tmp_path: Path) -> None:
    write_plain(tmp_path / "in", 1)
    (tmp_path / "in" / "..png").write_bytes(b"x")
    (tmp_path / "in" / "photo.heic").write_bytes(b"x")
    (tmp_path / "in" / "logo.svg").write_text("<svg/>")
    (tmp_path / "in" / "notes.txt").write_text("not an input")
    locked = tmp_path / "in" / "locked"
    locked.mkdir()
    locked.chmod(0)
    try:
        result = batch.run([tmp_path / "in"], tmp_path / "out", config())
    finally:
        locked.chmod(0o755)
    reasons = {s.path.name: s.reason for s in result.passed_over}
    assert "..png" in reasons and "hidden" in reasons["..png"]
    assert "cannot be read here" in reasons["photo.heic"] and "cannot be read here" in reasons["logo.svg"]
    assert "notes.txt" not in reasons
    if os.geteuid() != 0:  # root reads any folder
        assert "folder cannot be read" in reasons["locked"]


def test_a_name_that_is_not_utf8_is_recorded_losslessly(tmp_path: Path) -> None:
    write_plain(tmp_path / "in", 1)
    raw = os.fsencode(tmp_path / "in") + b"/bad\xff\xfe.png"
    shutil.copy(tmp_path / "in" / "img000.png", raw)
    out = tmp_path / "out"
    result = batch.run([tmp_path / "in"], out, config())
    assert (result.ok, result.exit_code) == (2, 0)
    text = (out / "index.jsonl").read_bytes().decode("utf-8")  # valid UTF-8
    assert "\\udcff\\udcfe" in text
    assert os.fsencode(index(out)[0]["input"]) == raw  # the exact bytes back
    assert os.fsencode(json.loads((out / "run.json").read_text(encoding="utf-8"))["inputs"][0]) == os.fsencode(
        tmp_path / "in")
    assert b"bad\xff\xfe.png" in (out / "predictions.csv").read_bytes()
    assert batch.run([tmp_path / "in"], out, config()).resumed == 2  # and a rerun reads it back


def test_dotted_stems_keep_their_extension(tmp_path: Path) -> None:
    write_plain(tmp_path / "in", 1)
    (tmp_path / "in" / "img000.png").rename(tmp_path / "in" / "holiday.2024.png")
    out = tmp_path / "out"
    result = batch.run([tmp_path / "in"], out, config(name="map_{stem}_{idx}"))
    assert (result.ok, result.failed) == (1, 0)
    assert index(out)[0]["files"]["guided_backprop"] == "map_holiday.2024_0.png"
    assert visible(out) == listed(out)  # no stray file


def test_a_failed_input_leaves_no_stray_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_plain(tmp_path / "in", 2)
    save = render.save_image

    def failing_map(picture: object, path: object) -> object:
        if Path(str(path)).name.startswith("map_1_"):
            raise ValueError("cannot encode this map")
        return save(picture, path)  # type: ignore[arg-type]

    monkeypatch.setattr(render, "save_image", failing_map)
    out = tmp_path / "out"
    result = batch.run([tmp_path / "in"], out, config())
    assert (result.ok, result.failed) == (1, 1)
    assert visible(out) == listed(out) and "im_1.png" not in visible(out)


def test_colliding_output_names_are_a_usage_error_naming_both_inputs(tmp_path: Path) -> None:
    write_plain(tmp_path / "in", 2)
    (tmp_path / "in" / "img000.png").rename(tmp_path / "in" / "a.png")
    (tmp_path / "in" / "img001.png").rename(tmp_path / "in" / "b.png")
    Image.new("RGB", (8, 8)).save(tmp_path / "in" / "im_0.jpg")
    with pytest.raises(GuidedBackpropError) as err:
        batch.run([tmp_path / "in"], tmp_path / "out", config(name="{stem}.png"))
    assert "a.png" in str(err.value) and "im_0.jpg" in str(err.value) and "'im_0.png'" in str(err.value)
    assert err.value.field == "name"
    assert not (tmp_path / "out" / "index.jsonl").exists()


def test_only_our_own_temporary_files_are_swept(tmp_path: Path) -> None:
    write_plain(tmp_path / "in", 1)
    out = tmp_path / "out"
    (out / "notes").mkdir(parents=True)
    theirs = [out / ".editor.swp.tmp", out / ".x.png.123.abcd.tmp", out / "notes" / ".map_0.png.gbp.1.0123abcd.tmp"]
    for p in theirs:
        p.write_bytes(b"not ours to delete")
    ours = out / ".map_0_class_0.png.gbp.4242.0123abcd.tmp"
    ours.write_bytes(b"half a map")
    batch.run([tmp_path / "in"], out, config())
    assert not ours.exists()
    assert all(p.exists() for p in theirs)  # other names, or a folder this run does not write


# ------------------------------------------------------------------- the model's fault, not the image's


def test_a_model_that_takes_one_channel_is_one_usage_error(tmp_path: Path) -> None:
    factory = tmp_path / "gray.py"
    factory.write_text(textwrap.dedent("""
        from torch import nn
        def gray():
            return nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3))
    """))
    write_plain(tmp_path / "in", 3)
    lines: list[str] = []
    with pytest.raises(GuidedBackpropError, match="takes 1-channel input but the images are given as 3-channel"):
        batch.run([tmp_path / "in"], tmp_path / "out", config(model=f"{factory}:gray"),
                  reporter=LineReporter(lines.append))
    assert lines == []  # not one error line per image
    result = invoke(tmp_path / "in", "-o", tmp_path / "out2", "--model", f"{factory}:gray", "--input-size", "32")
    assert result.exit_code == ExitCode.USAGE and len(result.stderr.strip().splitlines()) == 1


# --------------------------------------------------------------------------- disk full, signals


def test_a_full_disk_stops_at_the_first_failure_with_exit_4(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_plain(tmp_path / "in", 6)
    save = render.save_image

    def filling(picture: object, path: object) -> object:
        if int(Path(str(path)).name.split("_")[1].split(".")[0]) >= 2:  # im_{idx}.png, map_{idx}_...: full from 2 on
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return save(picture, path)  # type: ignore[arg-type]

    monkeypatch.setattr(render, "save_image", filling)
    lines: list[str] = []
    out = tmp_path / "out"
    with pytest.raises(batch.DiskFull, match=r"no space left on device at '.*': .*rerun the same command") as err:
        batch.run([tmp_path / "in"], out, config(batch_size=1), reporter=LineReporter(lines.append))
    assert err.value.exit_code == ExitCode.DISK_FULL == 4
    assert lines == []  # no line per remaining input
    rows = index(out)  # the index of what is done could still be written
    assert [r["status"] for r in rows][:2] == ["ok", "ok"]
    monkeypatch.setattr(render, "save_image", save)
    assert batch.run([tmp_path / "in"], out, config(batch_size=1)).ok == 6  # space freed: the rerun finishes
    assert visible(out) == listed(out)

    monkeypatch.setattr(render, "save_image", filling)
    result = invoke(tmp_path / "in", "-o", tmp_path / "cli", "--model", TINY, "--input-size", "32",
                    "--workers", "0", "--batch-size", "1")
    assert result.exit_code == 4
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("error: no space left on device at") and "Traceback" not in result.output


@pytest.mark.slow
def test_sigterm_to_the_process_group_exits_143_and_the_rerun_finishes(tmp_path: Path) -> None:
    write_plain(tmp_path / "in", 10)
    out = tmp_path / "out"
    args = [tmp_path / "in", "-o", out, "--model", SLOW, "--input-size", "32", "--batch-size", "1",
            "--workers", "2"]
    proc = cli_process(*args, env={"GBP_TEST_DELAY": "0.3"}, start_new_session=True)
    wait_for_lines(out / batch.STATE_DIR / "journal-0.jsonl", 2, proc)
    os.killpg(proc.pid, signal.SIGTERM)
    _stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == ExitCode.TERMINATED == 143, stderr
    assert stderr.strip().splitlines()[-1].startswith("terminated (SIGTERM) after") and "Traceback" not in stderr
    assert not our_temp_files(out)
    rerun_to_the_end(*args, "--quiet")
    assert len(index(out)) == 10


@pytest.mark.slow
def test_kill_9_of_a_decode_worker_is_reported_and_the_rerun_finishes(tmp_path: Path) -> None:
    write_plain(tmp_path / "in", 10)
    out = tmp_path / "out"
    args = [tmp_path / "in", "-o", out, "--model", SLOW, "--input-size", "32", "--batch-size", "1",
            "--workers", "2"]
    proc = cli_process(*args, env={"GBP_TEST_DELAY": "0.3"})
    wait_for_lines(out / batch.STATE_DIR / "journal-0.jsonl", 2, proc)
    os.kill(children(proc.pid)[0], signal.SIGKILL)  # what the out-of-memory killer does
    _stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == ExitCode.FAILED, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith("error: a decode worker process died") and "rerun" in lines[0]
    rerun_to_the_end(*args, "--quiet")
    assert len(index(out)) == 10 and not our_temp_files(out)
