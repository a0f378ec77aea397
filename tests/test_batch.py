"""guided_backprop.batch: the pipeline behind the command, driven through its Python API."""

from __future__ import annotations

import dataclasses
import errno
import json
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from guided_backprop import batch
from guided_backprop.batch import job as batch_job
from guided_backprop.batch import journal as batch_journal
from guided_backprop.batch import writer as batch_writer
from guided_backprop.errors import ExitCode, GuidedBackpropError
from guided_backprop.models.preprocessing import Preprocessing
from guided_backprop.pictures import render
from guided_backprop.records import IndexRecord
from guided_backprop.reporting import LineReporter, Reporter
from tests.fixtures.cli_images import write_plain
from tests.fixtures.runs import config, index


def journal(out: Path) -> list[dict]:
    lines = []
    for p in sorted((out / batch.STATE_DIR).glob("journal-*.jsonl")):
        lines += [json.loads(line) for line in p.read_text().splitlines() if line.strip()]
    return lines


# ----------------------------------------------------------------------------------- names


def test_default_map_names_follow_the_seed_and_stay_unique() -> None:
    assert batch.default_map_name(["guided_backprop"]) == "map_{idx}_class_{class_index}.png"
    assert batch.default_map_name(["guided_backprop", "deconvnet"]) == "map_{idx}_class_{class_index}_{method}.png"
    assert batch.default_map_name(["saliency"], 5) == "map_{idx}_class_{class_index}_top{rank}.png"
    assert batch.default_map_name(["saliency", "gradcam"], 2) == "map_{idx}_class_{class_index}_{method}_top{rank}.png"
    assert batch.default_map_name(["guided_backprop"], layer_target=True) == "map_{idx}_{layer}_ch{channel}.png"


def test_duplicate_stems_are_refused_when_the_name_has_no_idx(tmp_path: Path) -> None:
    write_plain(tmp_path / "a", 1)
    write_plain(tmp_path / "b", 1)
    with pytest.raises(GuidedBackpropError, match=r"same \{stem\}.*add \{idx\}"):
        batch.run([tmp_path / "a", tmp_path / "b"], tmp_path / "out", config(name="{stem}.png"))
    with pytest.raises(GuidedBackpropError, match="relative path"):
        batch.run([tmp_path / "a"], tmp_path / "out", config(name="../{idx}.png"))


# ------------------------------------------------------------------------------ preprocessing


@pytest.mark.parametrize(
    ("model_pre", "size", "resize", "crop"),
    [
        (Preprocessing(resize=256, crop=224), 32, 37, 32),  # resize / crop ratio kept
        (Preprocessing(resize=(224, 224), crop=None), 48, (48, 48), None),  # direct resize
        (Preprocessing(resize=224, crop=None), 64, 64, None),  # shorter side, any size (the seed's VGG)
    ],
)
def test_input_size_follows_the_models_convention(model_pre: Preprocessing, size: int, resize: object,
                                                  crop: object) -> None:
    from guided_backprop.cli.options import preprocessing_changes

    pre = model_pre.adjust(**preprocessing_changes(input_size=size))  # the flags, as the spec holds them
    assert (pre.resize, pre.crop) == (resize, crop)
    pre = model_pre.adjust(**preprocessing_changes(resize=None, crop=20))
    assert (pre.resize, pre.crop, pre.mean) == (None, 20, model_pre.mean)


# ---------------------------------------------------------------------------------- the job


def test_run_result_and_error_log(tmp_path: Path) -> None:
    write_plain(tmp_path / "in", 3)
    (tmp_path / "in" / "zz broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    lines: list[str] = []
    result = batch.run([tmp_path / "in"], tmp_path / "out", config(), reporter=LineReporter(lines.append))
    assert (result.images, result.ok, result.failed, result.maps, result.computed) == (4, 3, 1, 3, 4)
    assert result.exit_code == ExitCode.SOME_FAILED and not result.interrupted
    assert len(lines) == 1 and "zz broken.png" in lines[0] and lines[0].startswith("error: ")
    assert result.errors == [lines[0][len("error: "):]]
    assert result.summary().startswith("4 images: 3 computed, 1 failed in ")
    again = batch.run([tmp_path / "in"], tmp_path / "out", config())  # only the failed input is retried
    assert again.summary().startswith("4 images: 3 skipped (already done), 0 computed, 1 failed in "), again.summary()
    rows = index(tmp_path / "out")
    assert set(rows[0]) >= {"idx", "input", "status", "error", "class_index", "class_name", "probability",
                            "top5", "files"}
    assert not any(k.startswith("_") for row in rows for k in row)  # journal bookkeeping stays private


def test_smoothgrad_maps_do_not_depend_on_batching(tmp_path: Path) -> None:
    write_plain(tmp_path / "in", 3)
    one = batch.run([tmp_path / "in"], tmp_path / "one", config(smooth=3, save_raw=True, batch_size=1))
    three = batch.run([tmp_path / "in"], tmp_path / "three", config(smooth=3, save_raw=True, batch_size=3))
    assert one.exit_code == three.exit_code == 0
    for a, b in zip(index(tmp_path / "one"), index(tmp_path / "three"), strict=True):
        x = np.load(tmp_path / "one" / a["raw"]["guided_backprop"])
        assert np.array_equal(x, np.load(tmp_path / "three" / b["raw"]["guided_backprop"]))
        assert np.abs(x).sum() > 0
    plain = batch.run([tmp_path / "in"], tmp_path / "plain", config(save_raw=True))
    assert plain.exit_code == 0
    row = index(tmp_path / "plain")[0]
    assert not np.array_equal(np.load(tmp_path / "plain" / row["raw"]["guided_backprop"]), np.load(
        tmp_path / "one" / index(tmp_path / "one")[0]["raw"]["guided_backprop"]))


def test_images_of_different_sizes_are_batched_by_size(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_plain(tmp_path / "in", 3, size=(36, 40), prefix="a")
    write_plain(tmp_path / "in", 3, size=(44, 32), prefix="b")
    shapes: list[tuple[int, ...]] = []
    explain = batch_job.Explainer.explain

    def spy(self: object, x: object, *args: object, **kw: object) -> object:
        shapes.append(tuple(x.shape))  # type: ignore[attr-defined]
        return explain(self, x, *args, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(batch_job.Explainer, "explain", spy)
    result = batch.run([tmp_path / "in"], tmp_path / "out", config(input_size=None, resize=None, crop=None,
                                                                   batch_size=3))
    assert result.exit_code == 0
    assert sorted(shapes) == [(3, 3, 36, 40), (3, 3, 44, 32)]
    for row in index(tmp_path / "out"):
        with render.Image.open(tmp_path / "out" / row["files"]["guided_backprop"]) as im:
            assert im.size == ((40, 36) if Path(row["input"]).name.startswith("a") else (32, 44))


def test_a_failed_write_fails_that_input_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_plain(tmp_path / "in", 3)
    save = render.save_image

    def flaky(picture: object, path: object) -> object:
        if Path(str(path)).name == "map_1_class_2.png" or Path(str(path)).name.startswith("map_1_"):
            raise OSError(errno.ENAMETOOLONG, "File name too long")
        return save(picture, path)  # type: ignore[arg-type]

    monkeypatch.setattr(render, "save_image", flaky)
    lines: list[str] = []
    result = batch.run([tmp_path / "in"], tmp_path / "out", config(), reporter=LineReporter(lines.append))
    assert result.exit_code == 1 and result.failed == 1 and result.ok == 2
    assert len(lines) == 1 and "cannot write the outputs of" in lines[0] and "img001.png" in lines[0]
    assert [r["status"] for r in index(tmp_path / "out")] == ["ok", "error", "ok"]


# ------------------------------------------------------------------------- interrupt, resume


def test_interrupt_stops_cleanly_and_the_rerun_finishes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_plain(tmp_path / "in", 5)
    calls = {"n": 0}
    compute = batch_job.RankJob.compute

    def interrupted(self: batch_job.RankJob, items: list, writer: batch_writer.Writer) -> None:
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        compute(self, items, writer)

    monkeypatch.setattr(batch_job.RankJob, "compute", interrupted)
    out = tmp_path / "out"
    first = batch.run([tmp_path / "in"], out, config(batch_size=1))
    # Images 0 and 1 were computed; a write still queued when Ctrl-C came is dropped, not half-done.
    assert first.interrupted and first.exit_code == ExitCode.INTERRUPTED and first.ok in (1, 2)
    # Two writer threads finish in either order: the journal holds exactly the first images, in any order.
    assert sorted(r["idx"] for r in journal(out)) == list(range(first.ok))
    assert not list(out.rglob("*.tmp")) and not (out / "index.jsonl").exists()

    monkeypatch.setattr(batch_job.RankJob, "compute", compute)
    second = batch.run([tmp_path / "in"], out, config(batch_size=1))
    assert second.exit_code == 0 and second.resumed == first.ok and second.computed == 5 - first.ok
    assert [r["status"] for r in index(out)] == ["ok"] * 5


def _entry(idx: int, status: str, fp: str, t: float, *, files: dict[str, str] | None = None,
           ident: list[int] | None = None) -> batch_journal.JournalEntry:
    record = IndexRecord.failed(idx, "/a.png", "broken", save_raw=False)
    if status == "ok":
        record = dataclasses.replace(record, status="ok", error=None, files=files or {})
    return batch_journal.JournalEntry(record, fp, ident, t, 0)


def test_journal_survives_a_cut_line_and_keeps_the_newest_record(tmp_path: Path) -> None:
    state = tmp_path / batch.STATE_DIR
    state.mkdir()
    path = state / "journal-0.jsonl"
    old, new = _entry(0, "error", "f", 1.0).to_json(), _entry(0, "ok", "f", 2.0).to_json()
    other = _entry(1, "ok", "not this job", 3.0).to_json()
    foreign = {"idx": 3, "status": "ok", "_fp": "f", "_t": 4.0}  # not an entry of this version: redone
    path.write_text(json.dumps(old) + "\n" + json.dumps(other) + "\n" + json.dumps(foreign) + "\n"
                    + '{"idx": 1, "sta')  # killed mid-line
    (state / "journal-1.jsonl").write_text(json.dumps(new) + "\n")
    j = batch_journal.Journal(path)
    j.write(_entry(2, "ok", "f", 0.5))
    j.close()
    assert path.read_text().splitlines()[3] == '{"idx": 1, "sta'
    records = batch_journal.read_journals(state, "f")
    assert sorted(records) == [0, 2] and records[0].record.status == "ok"
    assert records[2] == _entry(2, "ok", "f", 0.5)  # what is written is read back


def test_a_record_is_complete_only_when_its_files_exist(tmp_path: Path) -> None:
    (tmp_path / "im_0.png").write_bytes(b"x")
    rec = _entry(0, "ok", "f", 1.0, files={"input": "im_0.png", "guided_backprop": "map_0.png"}, ident=[10, 123])
    assert not batch_journal.is_complete(rec, "/a.png", tmp_path, [10, 123])
    (tmp_path / "map_0.png").write_bytes(b"x")
    assert batch_journal.is_complete(rec, "/a.png", tmp_path, [10, 123])
    assert not batch_journal.is_complete(rec, "/b.png", tmp_path, [10, 123])  # another input now has this idx
    failed = dataclasses.replace(rec, record=dataclasses.replace(rec.record, status="error"))
    assert not batch_journal.is_complete(failed, "/a.png", tmp_path, [10, 123])
    assert not batch_journal.is_complete(rec, "/a.png", tmp_path, [10, 124])  # the input file changed
    assert not batch_journal.is_complete(rec, "/a.png", tmp_path, None)  # it cannot be examined


def test_a_second_run_on_the_same_folder_is_refused(tmp_path: Path) -> None:
    write_plain(tmp_path / "in", 1)
    with batch_journal.folder_lock(tmp_path / "out" / batch.STATE_DIR):
        with pytest.raises(GuidedBackpropError, match="another guided-backprop run is writing"):
            batch.run([tmp_path / "in"], tmp_path / "out", config())


# ------------------------------------------------------------------------------- flat memory


def test_writer_backlog_is_bounded() -> None:
    """The compute loop blocks once ``backlog`` jobs wait for the writer: memory cannot grow."""
    writer = batch_writer.Writer(threads=1, backlog=2)
    release = threading.Event()
    third = threading.Thread(target=writer.submit, args=(lambda: None,), daemon=True)
    try:
        writer.submit(lambda: release.wait(10))
        writer.submit(lambda: release.wait(10))
        third.start()
        time.sleep(0.3)
        assert third.is_alive()  # blocked: the backlog is full
    finally:
        release.set()
    third.join(timeout=10)
    assert not third.is_alive()
    writer.close()


def test_outstanding_work_stays_bounded_over_many_images(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_plain(tmp_path / "in", 40, size=(20, 20))
    live = {"now": 0, "max": 0}
    lock = threading.Lock()
    submit = batch_writer.Writer.submit

    def counting(self: batch_writer.Writer, fn: object) -> None:
        def wrapped() -> None:
            time.sleep(0.01)  # a slow disk
            fn()  # type: ignore[operator]
            with lock:
                live["now"] -= 1

        with lock:
            live["now"] += 1
            live["max"] = max(live["max"], live["now"])
        submit(self, wrapped)

    monkeypatch.setattr(batch_writer.Writer, "submit", counting)
    result = batch.run([tmp_path / "in"], tmp_path / "out", config(input_size=16, batch_size=4, workers=1))
    assert result.exit_code == 0 and result.ok == 40
    threads = max(1, min(4, __import__("os").cpu_count() or 1))
    assert live["max"] <= 2 * 4 + threads + 1  # the backlog, plus the one being handed over


def test_progress_bar_only_when_asked_and_only_by_the_command_line(tmp_path: Path,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    from guided_backprop.cli.options import ConsoleReporter

    write_plain(tmp_path / "in", 2)
    reporter = ConsoleReporter(bar=True)
    batch.run([tmp_path / "in"], tmp_path / "a", config(), reporter=reporter)
    reporter.close()
    err = capsys.readouterr().err
    assert "2/2" in err and "img" in err
    batch.run([tmp_path / "in"], tmp_path / "b", config(), reporter=ConsoleReporter(bar=False))
    assert capsys.readouterr().err == ""
    batch.run([tmp_path / "in"], tmp_path / "c", config())  # the library draws no bar, prints nothing itself
    assert capsys.readouterr().err == ""


def test_smoothgrad_maps_of_the_batch_job_are_the_apis_for_the_same_seed_and_index(tmp_path: Path) -> None:
    import guided_backprop as gbp
    from guided_backprop import images

    write_plain(tmp_path / "in", 2)
    result = batch.run([tmp_path / "in"], tmp_path / "out", config(smooth=3, seed=5, save_raw=True))
    assert result.exit_code == 0
    lm = config().model.load()  # the run's model, its preprocessing changed as the run's
    pre = lm.preprocessing
    for row in index(tmp_path / "out"):
        x = pre(images.load_image(row["input"]))[None]
        e = gbp.SmoothGrad(gbp.Explainer(lm.model), samples=3, noise=0.15).explain(
            x, methods=["guided_backprop"], seed=5, sample_ids=[row["idx"]])
        got = np.load(tmp_path / "out" / row["raw"]["guided_backprop"])
        assert np.allclose(got, e.maps["guided_backprop"][0, 0].float().numpy(), rtol=0, atol=1e-6)


@pytest.mark.parametrize(("changes", "field"), [
    ({"target": "top5", "layer": "0", "channel": 0}, "target"),
    ({"layer": "0"}, "layer"),
    ({"layer": "0", "channel": -1}, "channel"),
    ({"layer": "0", "channel": 0, "neuron": "3;4"}, "neuron"),
    ({"target": "top99"}, "target"),
    ({"batch_size": 0}, "batch_size"),
    ({"smooth": -1}, "smooth"),
    ({"norm": "fancy"}, "norm"),
    ({"name": "map_{clas}_{idx}.png"}, "name"),
    ({"name": "same.png"}, "name"),
    ({"input_name": "in.png"}, "input_name"),
    ({"methods": ("gbp", "saliency"), "name": "map_{idx}.png"}, "name"),
])
def test_library_errors_name_the_field_not_a_command_line_flag(tmp_path: Path, changes: dict, field: str) -> None:
    write_plain(tmp_path / "in", 1)
    with pytest.raises(GuidedBackpropError) as err:
        batch.run([tmp_path / "in"], tmp_path / "out", config(**changes))
    assert err.value.field == field, str(err.value)
    assert "--" not in str(err.value), "the library speaks Python; the CLI maps fields to flags"


def test_one_typed_settings_record_feeds_job_json_and_run_json(tmp_path: Path) -> None:
    from guided_backprop.batch.plan import RunSettings

    write_plain(tmp_path / "in", 1)
    batch.run([tmp_path / "in"], tmp_path / "out", config(smooth=2, seed=3, panel=True, norm="signed"),
              reporter=Reporter())
    job = json.loads((tmp_path / "out" / batch.STATE_DIR / "job.json").read_text(encoding="utf-8"))
    settings = RunSettings(**{**job["settings"], "methods": tuple(job["settings"]["methods"])})
    assert settings.to_json() == job["settings"] and job["fingerprint"] == settings.fingerprint
    run = json.loads((tmp_path / "out" / "run.json").read_text(encoding="utf-8"))
    assert (settings.smooth, settings.noise, settings.seed, settings.panel) == (2, 0.15, 3, True)
    for key in ("model", "labels", "target", "smooth", "noise", "name", "input_name", "save_raw", "methods"):
        assert run[key] == job["settings"][key], key
    assert (run["normalization"], run["weights"]) == (settings.normalization, settings.weights_description)


