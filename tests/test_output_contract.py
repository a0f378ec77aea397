"""The output folder is an API: a real run's files checked key by key against the records of
:mod:`guided_backprop.records` and against ``docs/output-folder.md`` (parsed), so that the
document, the writer and the readers cannot drift apart."""

from __future__ import annotations

import csv
import io
import json
import logging
import re
from pathlib import Path
from typing import Any

import pytest

from guided_backprop import batch, report
from guided_backprop.records import (
    EVALUATION_CHECKS,
    ClassScore,
    EvaluationRecord,
    IndexRecord,
    LayerTargetRecord,
    RecordError,
    RunRecord,
    json_text,
)
from guided_backprop.reporting import Reporter
from tests.fixtures.cli_images import write_plain
from tests.fixtures.runs import config

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "output-folder.md"
TINY = f"{ROOT / 'tests' / 'fixtures' / 'cli_models.py'}:tiny"
_NAME = re.compile(r"[a-z_][a-z0-9_]*")
_TOP = 5

#: The runs checked: a top-k target, and layer targets (the most active unit, one unit, the channel summed),
#: with raw maps and panels.
RUNS: dict[str, dict[str, Any]] = {
    "topk": dict(target="top3", methods=("guided_backprop", "gradcam"), save_raw=True, panel=True),
    "layer_max": dict(layer="1", channel=1, neuron="max", save_raw=True, panel=True),
    "layer_unit": dict(layer="1", channel=2, neuron="3,4"),
    "layer_channel": dict(layer="1", channel=0),
}


# ------------------------------------------------------------------------------------ the document


def _section(title: str) -> str:
    """The text of the ``## `title`...`` section of the document."""
    text = DOC.read_text(encoding="utf-8")
    match = re.search(rf"^## `{re.escape(title)}`[^\n]*\n(.*?)(?=^## |\Z)", text, flags=re.S | re.M)
    assert match, f"{DOC} has no section for {title}"
    return match.group(1)


def _spans(text: str) -> list[str]:
    return re.findall(r"`([^`]+)`", text)


def doc_index_keys() -> tuple[list[str], set[str], list[str]]:
    """The index line's keys in the table's order, those written with ``--save-raw`` only, and the keys
    of ``layer_target`` (named in its row: "with a layer target: `layer`, ...")."""
    keys: list[str] = []
    raw_only: set[str] = set()
    nested: list[str] = []
    for line in _section("index.jsonl").splitlines():
        cells = [c.strip() for c in re.split(r"(?<!\\)\|", line.strip().strip("|"))]  # "\|" is no border
        if not line.startswith("|") or len(cells) < 3 or set(cells[0]) <= {"-"} or cells[0] == "key":
            continue
        names = [n for span in _spans(cells[0]) for n in (s.strip() for s in span.split(",")) if _NAME.fullmatch(n)]
        keys += names
        if "`--save-raw` only" in cells[2]:
            raw_only.update(names)
        if names == ["layer_target"]:
            nested = [n for n in _spans(cells[2].split("with a layer target:", 1)[1]) if _NAME.fullmatch(n)]
    return keys, raw_only, nested


def doc_run_keys() -> list[str]:
    """``run.json``'s keys, in the order the document names them."""
    names = [n for n in _spans(_section("run.json")) if _NAME.fullmatch(n)]
    return list(dict.fromkeys(names))


def doc_csv_header(files: list[str], raw: list[str]) -> list[str]:
    """``predictions.csv``'s header as the document spells it, for these files and raw keys."""
    header: list[str] = []
    for span in _spans(_section("predictions.csv")):
        if span.startswith("-"):
            continue  # a flag named in the text
        for name in (n.strip() for n in span.split(",")):
            if "<r>" in name:
                header += [name.replace("<r>", str(r)) for r in range(1, _TOP + 1)]
            elif name == "file_<key>":
                header += [f"file_{k}" for k in files]
            elif name == "raw_<key>":
                header += [f"raw_{k}" for k in raw]
            elif _NAME.fullmatch(name):
                header.append(name)
    # the top-k columns come grouped by rank in the file: top1_class_index, top1_class_name, ...
    tops = [h for h in header if re.fullmatch(r"top\d_.+", h)]
    by_rank = sorted(tops, key=lambda h: int(h[3]))
    start = header.index(tops[0])
    return header[:start] + by_rank + header[start + len(tops):]


def test_the_document_names_the_keys_the_records_define() -> None:
    keys, raw_only, nested = doc_index_keys()
    assert keys == list(IndexRecord.KEYS) and raw_only == {"raw"}
    assert nested == list(LayerTargetRecord.KEYS)
    assert doc_run_keys() == list(RunRecord.KEYS)


# ------------------------------------------------------------------------------------------ a real run


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("contract")
    write_plain(root / "in", 3)
    (root / "in" / "zz broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")  # a failed input: error written
    outs = {}
    for name, changes in RUNS.items():
        cfg = config(**changes)
        result = batch.run([root / "in"], root / name, cfg, reporter=Reporter())
        assert (result.ok, result.failed) == (3, 1), name
        outs[name] = root / name
    return outs


def _lines(out: Path, name: str) -> list[str]:
    return (out / name).read_text(encoding="utf-8").splitlines()


def test_every_index_line_is_a_record_in_the_documented_order(runs: dict[str, Path]) -> None:
    keys, raw_only, nested = doc_index_keys()
    for name, out in runs.items():
        save_raw = bool(RUNS[name].get("save_raw"))
        for text in _lines(out, "index.jsonl"):
            line = json.loads(text)
            expected = [k for k in keys if save_raw or k not in raw_only]
            assert list(line) == expected, (name, text)  # every documented key, in the document's order
            record = IndexRecord.from_json(line)  # strict: raises naming a missing, unknown or mistyped key
            assert json_text(record.to_json()) == text  # byte for byte what the record writes
            if line["layer_target"] is not None:
                assert list(line["layer_target"]) == nested
            if line["status"] == "ok":
                assert record.error is None and record.top5 and all(isinstance(c, ClassScore) for c in record.top5)
            else:
                assert record.error and not record.files


def test_every_documented_key_is_written_by_some_run(runs: dict[str, Path]) -> None:
    """A key in the document that no run ever fills (or that only ever holds null) is a drift too."""
    keys, _raw_only, nested = doc_index_keys()
    filled: set[str] = set()
    filled_nested: set[str] = set()
    neurons = set()
    for out in runs.values():
        for text in _lines(out, "index.jsonl"):
            line = json.loads(text)
            filled |= {k for k, v in line.items() if v not in (None, [], {})}
            lt = line["layer_target"] or {}
            filled_nested |= {k for k, v in lt.items() if v is not None}
            neurons.add(json.dumps(lt.get("neuron")))
    assert filled == set(keys)
    assert filled_nested == set(nested)
    assert neurons >= {'"max"', "[3, 4]", "null"}


def test_run_json_is_a_record_with_the_documented_keys(runs: dict[str, Path]) -> None:
    keys = doc_run_keys()
    for out in runs.values():
        text = (out / "run.json").read_text(encoding="utf-8")
        data = json.loads(text)
        assert list(data) == keys  # a finished run: the counts too
        assert json_text(RunRecord.from_json(data).to_json(), indent=1) + "\n" == text


def test_journal_lines_are_index_records_and_the_documented_private_keys(runs: dict[str, Path]) -> None:
    private = [k for k in _spans(_section(".guided-backprop/")) if k.startswith("_")]
    assert private[-1] == "_poison"  # only on an input that killed a decode worker (test_decode_limits.py)
    private = private[:-1]
    assert private == ["_fp", "_id", "_t", "_rank"]
    out = runs["topk"]
    index = _lines(out, "index.jsonl")
    journal = _lines(out, f"{batch.STATE_DIR}/journal-0.jsonl")
    assert len(journal) == len(index)
    for text, public in zip(journal, index):
        line = json.loads(text)
        assert list(line)[-4:] == private
        assert json_text({k: v for k, v in line.items() if k not in private}) == public


def test_predictions_csv_header_and_rows_follow_the_document(runs: dict[str, Path]) -> None:
    for name, out in runs.items():
        records = [IndexRecord.from_json(json.loads(t)) for t in _lines(out, "index.jsonl")]
        files = list(dict.fromkeys(k for r in records for k in r.files))
        raw = list(dict.fromkeys(k for r in records for k in (r.raw or {})))
        rows = list(csv.reader(io.StringIO((out / "predictions.csv").read_text(encoding="utf-8"))))
        assert rows[0] == doc_csv_header(files, raw), name
        for record, row in zip(records, rows[1:], strict=True):
            cells = dict(zip(rows[0], row, strict=True))
            assert cells["idx"] == str(record.idx) and cells["input"] == record.input
            assert cells["status"] == record.status and cells["error"] == (record.error or "")
            for key in files:
                assert cells[f"file_{key}"] == record.files.get(key, "")
            for key in raw:
                assert cells[f"raw_{key}"] == (record.raw or {}).get(key, "")
            for r, score in enumerate(record.top5, start=1):
                assert cells[f"top{r}_class_index"] == str(score.class_index)


def test_the_report_reads_a_real_run_strictly(runs: dict[str, Path], caplog: pytest.LogCaptureFixture) -> None:
    """The report takes a real run's files as records, without its lenient fallback (which it would log)."""
    from tests.test_report import _parse

    for out in runs.values():
        caplog.clear()
        with caplog.at_level(logging.DEBUG, logger="guided_backprop.report"):
            _html, _page, data = _parse(report.write_report(out))
        assert not caplog.records, [r.getMessage() for r in caplog.records]
        rows = [IndexRecord.from_json(json.loads(line)) for line in _lines(out, "index.jsonl")]
        assert [row["idx"] for row in data["rows"]] == [r.idx for r in rows]


# ------------------------------------------------------------------------------------- reading errors


def _line(runs: dict[str, Path], name: str) -> dict[str, Any]:
    line: dict[str, Any] = json.loads(_lines(runs[name], "index.jsonl")[0])
    return line


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda d: d.pop("files"), "index line: missing key 'files'"),
        (lambda d: d.update(extra=1), "index line: unknown key 'extra'"),
        (lambda d: d.update(idx="0"), "index line: key 'idx' is '0', expected an integer"),
        (lambda d: d.update(status="fine"), "key 'status' is 'fine'"),
        (lambda d: d.update(top5=[[1, "a"]]), "key 'top5': [1, 'a'] is not [class_index, class_name, probability]"),
        (lambda d: d["files"].update(panel=3), "key 'files' is"),
        (lambda d: d["layer_target"].pop("score"), "layer_target: missing key 'score'"),
        (lambda d: d["layer_target"].update(neuron=[1]), "key 'neuron' is [1], expected [y, x]"),
    ],
)
def test_from_json_names_the_key_that_is_wrong(runs: dict[str, Path], change: Any, message: str) -> None:
    line = _line(runs, "layer_max")
    change(line)
    with pytest.raises(RecordError, match=re.escape(message)):
        IndexRecord.from_json(line)


def test_one_spelling_per_key(runs: dict[str, Path]) -> None:
    """A key spelt otherwise (``positions`` for ``position``, ``normalisation`` for ``normalization``) is
    unknown: strict readers refuse it, naming it."""
    line = _line(runs, "layer_max")
    lt = line["layer_target"]
    old = {**line, "layer_target": {"layer": lt["layer"], "channel": lt["channel"], "neuron": lt["neuron"],
                                    "positions": [lt["position"]], "score": lt["score"]}}
    with pytest.raises(RecordError, match="layer_target: unknown key 'positions'"):
        IndexRecord.from_json(old)
    run = json.loads((runs["topk"] / "run.json").read_text(encoding="utf-8"))
    older = {("normalisation" if k == "normalization" else k): v for k, v in run.items()}
    with pytest.raises(RecordError, match="run.json: unknown key 'normalisation'"):
        RunRecord.from_json(older)
    with pytest.raises(RecordError, match="run.json: missing key 'normalization'"):
        RunRecord.from_json({k: v for k, v in run.items() if k != "normalization"})


def test_a_lenient_read_keeps_what_it_can(runs: dict[str, Path]) -> None:
    """A hand-edited row: odd values become empty ones, and the row keeps its place."""
    line = _line(runs, "topk")
    del line["idx"]
    line.update(probability=float("nan"), class_index="2", top5=[[1.5, None, "high"], "junk", [3]], files=[])
    record = IndexRecord.from_json(line, lenient=True, idx=7)
    assert (record.idx, record.class_index, record.probability, record.files) == (7, None, None, {})
    assert record.top5 == [ClassScore(None, None, None)] and record.targets and record.status == "ok"


# ------------------------------------------------------------------------------------ evaluation.json


@pytest.fixture(scope="module")
def evaluation(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Any]:
    """A real batch run, then ``guided-backprop evaluate`` with every check into the same folder, and the
    evaluation it wrote (caught on its way to the writer)."""
    from click.testing import CliRunner

    from guided_backprop.cli import main
    from guided_backprop.evaluate import run as evaluate_run

    root = tmp_path_factory.mktemp("evaluation")
    write_plain(root / "in", 2)
    out = root / "out"
    model = ["--model", TINY, "--input-size", "32", "--methods", "saliency,gradcam"]
    result = CliRunner().invoke(main, [str(root / "in"), "-o", str(out), *model, "--workers", "0", "-q"],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    caught: list[Any] = []
    writer = evaluate_run.write_outputs
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(evaluate_run, "write_outputs", lambda ev, *a, **k: caught.append(ev) or writer(ev, *a, **k))
        result = CliRunner().invoke(main, [
            "evaluate", str(root / "in"), "-o", str(out), *model,
            "--checks", "randomization,emprt,smprt,class,deletion,insertion", "--steps", "3", "--smooth-samples", "2",
            "-q"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return out, caught[0]


def test_evaluation_json_read_back_is_the_record_written(evaluation: tuple[Path, Any]) -> None:
    out, ev = evaluation
    text = (out / "evaluation.json").read_text(encoding="utf-8")
    record = EvaluationRecord.from_json(json.loads(text))  # strict: every key known, every type right
    assert set(record.checks) == set(EVALUATION_CHECKS)
    assert record == ev.to_record(figures=record.figures)
    assert sorted(record.figures.values()) == sorted(p.name for p in out.glob("evaluation_*.png"))
    assert json.dumps(record.to_json(), indent=1) + "\n" == text  # byte for byte what the writer wrote


def test_the_report_shows_the_evaluation_record(evaluation: tuple[Path, Any], caplog: pytest.LogCaptureFixture
                                                ) -> None:
    from tests.test_report import _parse

    out, _ev = evaluation
    r = EvaluationRecord.from_json(json.loads((out / "evaluation.json").read_text(encoding="utf-8")))
    with caplog.at_level(logging.WARNING):
        _html, page, _data = _parse(report.write_report(out))
    assert not caplog.records, [rec.getMessage() for rec in caplog.records]

    def shown(mean: float | None) -> str:
        return "–" if mean is None else f"{mean:.3f}"

    assert r.randomization and r.class_sensitivity and r.efficient_mprt and r.smooth_mprt and r.deletion and r.insertion
    for m in ("saliency", "gradcam"):
        row = [m, shown(r.randomization.methods[m]["spearman_abs"].mean[-1]),
               shown(r.class_sensitivity.methods[m]["spearman_abs"].mean),
               shown(r.efficient_mprt.methods[m]["complexity_rise"].mean),
               shown(r.smooth_mprt.methods[m]["spearman_abs"].mean[-1]),
               shown(r.deletion.methods[m].auc.mean), shown(r.insertion.methods[m].auc.mean)]
        assert any(page.cells[i:i + len(row)] == row for i in range(len(page.cells))), (row, page.cells)
    assert f"deletion AUC (random order: {shown(r.deletion.random.auc.mean)})" in page.cells
    shown_figures = {a["src"] for tag, a in page.tags if tag == "img" and "evaluation_" in (a.get("src") or "")}
    assert shown_figures == set(r.figures.values())


@pytest.mark.parametrize(("change", "message"), [
    (lambda d: d.pop("seed"), "evaluation.json: missing key 'seed'"),
    (lambda d: d.update(extra=1), "unknown key 'extra'"),
    (lambda d: d["deletion"]["random"]["auc"].update(mean="x"), "deletion.random.auc.mean is 'x'"),
    (lambda d: d["randomization"]["methods"]["gradcam"].update(ssim=3), "randomization.methods.gradcam.ssim is 3"),
    (lambda d: d["class_sensitivity"].pop("classes"), "class_sensitivity: missing key 'classes'"),
    (lambda d: d["settings"].update(deletion_steps="32"), "settings.deletion_steps is '32'"),
    (lambda d: d["settings"].update(normalisation="x"), "settings: unknown key 'normalisation'"),
])
def test_evaluation_from_json_names_the_part_that_is_wrong(evaluation: tuple[Path, Any], change: Any,
                                                            message: str) -> None:
    out, _ev = evaluation
    doc = json.loads((out / "evaluation.json").read_text(encoding="utf-8"))
    change(doc)
    with pytest.raises(RecordError, match=re.escape(message)):
        EvaluationRecord.from_json(doc)
    odd: list[str] = []
    EvaluationRecord.from_json(doc, lenient=True, odd=odd)  # a lenient read keeps the rest
