"""`guided-backprop report` on hostile folders: disks that refuse writes, FIFOs, paths and names from the
folder's files, evaluation.json of any shape, other commands' folders (issues 17 and 18)."""

from __future__ import annotations

import errno
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from guided_backprop import report as report_module
from guided_backprop.errors import ExitCode
from guided_backprop.report import THUMB_DIR, write_report

from .fixtures.cli_images import write_plain
from .fixtures.disks import refuse_writes_under
from .fixtures.runs import REPO, TINY, invoke
from .test_report import _parse, make_run

RLO = "\u202e"  # RIGHT-TO-LEFT OVERRIDE: "holiday\u202egnp.exe" shows as "holidayexe.png"


def _hidden_characters(text: str) -> list[str]:
    """Characters of ``text`` that would not be seen on a terminal (newlines between lines allowed)."""
    return [c for c in text if not c.isprintable() and c != "\n"]


# ------------------------------------------------------------------------------ 18.4: disks that refuse


@pytest.mark.parametrize("code", [errno.EROFS, errno.EACCES, errno.ENOSPC])
def test_a_thumbs_folder_that_cannot_be_written_exits_4_naming_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                   code: int) -> None:
    out = tmp_path / "out"
    make_run(out)
    (out / THUMB_DIR).mkdir()
    refuse_writes_under(monkeypatch, out / THUMB_DIR, code)
    result: Any = invoke("report", out)
    assert result.exit_code == ExitCode.DISK_FULL == 4, result.output
    (line,) = result.stderr.strip().splitlines()  # one line: no warning that pictures are "missing"
    assert line.startswith(f"error: cannot write {str(out / THUMB_DIR)!r}: {os.strerror(code).lower()}")
    assert "rerun `guided-backprop report" in line and "Traceback" not in result.output
    assert not (out / "index.html").exists()


def test_a_disk_that_fills_up_mid_way_exits_4_and_never_calls_a_picture_missing(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "out"
    make_run(out, n_ok=4, size=200)  # every picture needs a thumbnail
    (out / "index.html").write_text("the previous page")
    real = report_module.write_bytes
    written: list[Path] = []

    def filling(path: Path, payload: bytes) -> None:
        if len(written) >= 3:
            raise OSError(errno.ENOSPC, "No space left on device", str(path) + ".tmp")
        written.append(Path(path))
        real(path, payload)

    monkeypatch.setattr(report_module, "write_bytes", filling)
    monkeypatch.setattr(os, "cpu_count", lambda: 1)  # one thread: the 4th thumbnail is the one that fails
    result: Any = invoke("report", out)
    assert result.exit_code == 4, result.output
    (line,) = result.stderr.strip().splitlines()
    assert re.match(rf"error: cannot write '{re.escape(str(out / THUMB_DIR))}/[^']+\.jpg': no space left on device",
                    line)
    assert "missing" not in result.output
    assert (out / "index.html").read_text() == "the previous page"  # the old page stays until a new one is whole
    monkeypatch.setattr(report_module, "write_bytes", real)
    assert invoke("report", out).exit_code == 0  # space freed: the same command finishes


def test_an_output_folder_that_cannot_be_written_exits_4_before_any_thumbnail(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "out"
    make_run(out)
    refuse_writes_under(monkeypatch, out, errno.EROFS)
    result: Any = invoke("report", out)
    assert result.exit_code == 4
    assert result.stderr.startswith(f"error: cannot write {str(out)!r}: read-only file system")
    assert not (out / THUMB_DIR).exists()


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_a_read_only_thumbs_folder_on_disk_exits_4(tmp_path: Path) -> None:
    out = tmp_path / "out"
    make_run(out)
    (out / THUMB_DIR).mkdir(mode=0o555)
    result: Any = invoke("report", out)
    assert result.exit_code == 4 and "missing" not in result.output


# ------------------------------------------------------------------------------ 18.10: only regular files


@pytest.mark.slow
def test_a_fifo_where_a_map_should_be_is_never_opened(tmp_path: Path) -> None:
    out = tmp_path / "out"
    rows = make_run(out, n_ok=2, big=200)
    fifo = out / rows[0]["files"]["guided_backprop"]
    fifo.unlink()
    os.mkfifo(fifo)
    (out / "evaluation.json").unlink(missing_ok=True)
    os.mkfifo(out / "evaluation.json")
    proc = subprocess.run([sys.executable, "-m", "guided_backprop", "report", str(out)], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "not regular files" in proc.stderr and "never opened" in proc.stderr
    _html, _page, data = _parse(out / "index.html")
    cols = [c["key"] for c in data["columns"]]
    assert data["rows"][0]["img"][cols.index("guided_backprop")] is None
    assert data["rows"][0]["img"][cols.index("deconvnet")] is not None


@pytest.mark.parametrize("name", ["run.json", "index.jsonl"])
def test_a_fifo_as_the_runs_own_file_is_named_not_opened(tmp_path: Path, name: str) -> None:
    out = tmp_path / "out"
    make_run(out, n_ok=1)
    (out / name).unlink()
    os.mkfifo(out / name)
    result: Any = invoke("report", out)  # in this process: the check comes before any open
    assert result.exit_code == ExitCode.USAGE
    assert result.stderr == f"error: {str(out / name)!r} is a FIFO (named pipe), not a regular file; it is not read " \
                          f"(rerun the batch to rewrite it)\n"


# ------------------------------------------------------------------------------ 18.12: paths from files

HOSTILE_PATHS = ["http://example.com/x.png", "javascript:alert(1)", "../outside.png", "//example.com/y.png",
                 "/etc/hostname", "sub/../../outside.png"]


def _urls(html: str, data: dict[str, Any]) -> list[str]:
    """Every URL the page can load or open: href/src attributes, and the pictures and panels of its rows."""
    urls = [u for u in re.findall(r'(?:href|src)="([^"]*)"', html) if u != "data:,"]  # data:, : the empty icon
    for row in data["rows"]:
        for cell in row.get("img") or []:
            urls.extend(cell or [])
        if row.get("panel"):
            urls.append(row["panel"])
    return urls


def test_paths_from_the_folders_files_are_quoted_and_stay_inside(tmp_path: Path) -> None:
    out = tmp_path / "out"
    rows = make_run(out, n_ok=2)
    (tmp_path / "outside.png").write_bytes((out / rows[0]["files"]["input"]).read_bytes())
    (out / "javascript:alert(1)").write_bytes((out / rows[0]["files"]["input"]).read_bytes())  # exists, inside
    (out / "link.png").symlink_to(tmp_path / "outside.png")
    (out / "evaluation_ok.png").write_bytes((out / rows[0]["files"]["input"]).read_bytes())
    figures = {f"f{i}": p for i, p in enumerate([*HOSTILE_PATHS, "link.png", "evaluation_ok.png"])}
    (out / "evaluation.json").write_text(json.dumps({"model": "m", "images": 1, "seed": 0, "figures": figures}))
    lines = (out / "index.jsonl").read_text().splitlines()
    first = json.loads(lines[0])
    first["files"]["deconvnet"] = "../outside.png"
    first["files"]["saliency"] = "http://example.com/x.png"
    first["files"]["guided_gradcam"] = "javascript:alert(1)"
    first["files"]["panel"] = "//example.com/panel.png"
    second = json.loads(lines[1])
    second["files"]["deconvnet"] = "link.png"
    second["files"]["panel"] = "javascript:alert(1)"
    (out / "index.jsonl").write_text("\n".join([json.dumps(first), json.dumps(second), *lines[2:]]) + "\n")

    html, _page, data = _parse(write_report(out))
    urls = _urls(html, data)
    assert "evaluation_ok.png" in urls and "javascript%3Aalert%281%29" in urls  # the file inside, quoted
    for url in urls:
        assert not re.match(r"^[A-Za-z][A-Za-z0-9+.-]*:", url), url  # no scheme: relative to the page
        assert not url.startswith("/") and ".." not in url.split("/"), url
        assert "outside" not in url and "link.png" not in url and "example.com" not in url, url
    assert data["rows"][1]["panel"] == "javascript%3Aalert%281%29"


# ------------------------------------------------------------------------------ 18.14: evaluation.json shapes


@pytest.mark.parametrize("doc", [[], "text", 3, None, {"randomization": [1, 2]}, {"figures": ["a.png"]},
                                 {"deletion": {"methods": {"gbp": 3}, "random": "x"}, "insertion": 7},
                                 {"class_sensitivity": {"methods": [1]}, "figures": {"a": 5}}])
def test_an_evaluation_json_of_the_wrong_shape_is_a_warning(tmp_path: Path, doc: Any) -> None:
    out = tmp_path / "out"
    make_run(out, n_ok=2)
    (out / "evaluation.json").write_text(json.dumps(doc))
    result: Any = invoke("report", out)
    assert result.exit_code == 0, result.output
    assert "evaluation.json" in result.stderr and "Traceback" not in result.output
    _html, _page, data = _parse(out / "index.html")
    assert len(data["rows"]) == 6  # the rest of the gallery is written


def test_report_flag_keeps_a_finished_run_a_success_whatever_its_evaluation_json(tmp_path: Path) -> None:
    write_plain(tmp_path / "in", 2)
    out = tmp_path / "out"
    out.mkdir()
    (out / "evaluation.json").write_text('{"figures": ["x"], "deletion": [1]}')
    result: Any = invoke(tmp_path / "in", "-o", out, "--model", TINY, "--input-size", "32", "--workers", "0",
                         "--report")
    assert result.exit_code == 0, result.output
    assert (out / "index.html").is_file() and "evaluation.json" in result.stderr


# ------------------------------------------------------------------------------ 18.13: invisible characters


def test_control_characters_in_names_are_shown_in_the_page_and_on_the_terminal(tmp_path: Path) -> None:
    out = tmp_path / f"out{RLO}x"
    rows = make_run(out, n_ok=2)
    lines = (out / "index.jsonl").read_text().splitlines()
    first = json.loads(lines[0])
    first["input"] = f"/photos/holiday{RLO}gnp.exe"
    first["class_name"] = f"tab{RLO}by\x1b[31m"
    bad = json.loads(lines[rows.index(next(r for r in rows if r["status"] == "error"))])
    bad["input"] = f"/photos/bad{RLO}gpj.exe"
    bad["error"] = f"cannot read image '/photos/bad{RLO}gpj.exe': truncated\nsecond line"
    (out / "index.jsonl").write_text("\n".join(json.dumps(r) for r in [first, bad]) + "\n")
    (out / "run.json").write_text(json.dumps({**json.loads((out / "run.json").read_text()),
                                              "weights": f"w{RLO}tp.pkl"}))
    html, _page, data = _parse(write_report(out))
    shown = json.dumps(data, ensure_ascii=False) + html
    assert RLO not in shown and "\x1b" not in shown
    assert data["rows"][0]["name"] == "holiday\\u202egnp.exe" and data["rows"][0]["label"] == "tab\\u202eby\\x1b[31m"
    assert data["rows"][1]["error"] == "cannot read image '/photos/bad\\u202egpj.exe': truncated\\nsecond line"
    assert "w\\u202etp.pkl" in html

    (out / "index.jsonl").write_text("{not json\n{}\n")  # an error naming the folder's path, on the terminal
    result: Any = invoke("report", out)
    assert result.exit_code == 2
    assert "out\\u202ex" in result.stderr and _hidden_characters(result.output + result.stderr) == []


# ------------------------------------------------------------------------------ issue 17: words


def test_the_title_names_the_inputs_and_the_class_names_line_says_which(tmp_path: Path) -> None:
    write_plain(tmp_path / "photos", 2)
    out = tmp_path / "out"
    assert invoke(tmp_path / "photos", "-o", out, "--model", TINY, "--input-size", "32", "--workers", "0",
                  "--report", "--quiet").exit_code == 0
    html, page, _data = _parse(out / "index.html")
    title = re.search(r"<title>(.*)</title>", html)
    assert title is not None and "photos" in title.group(1) and "out" not in title.group(1).split(" on ")[-1]
    cells = page.cells
    names = cells[cells.index("Class names") + 1]
    assert names.startswith("none: the classes are numbered")  # the tiny model has no class names

    imagenet = tmp_path / "imagenet"
    rows = make_run(imagenet, n_ok=2, settings={"inputs": ["/data/a.jpg", "/data/b.jpg", "/data/c.jpg"]})
    settings = json.loads((imagenet / "run.json").read_text())
    settings["labels"] = None
    (imagenet / "run.json").write_text(json.dumps(settings))
    rows = [r for r in rows if r["class_index"] != 282]  # the hostile label is no ImageNet name
    for r in rows:  # ImageNet's own names at their indices
        if r["status"] != "ok":
            continue
        r["top5"] = [[281, "tabby", 0.5], [285, "Egyptian cat", 0.2]] if r["class_index"] == 281 else \
            [[207, "golden retriever", 0.6], [208, "Labrador retriever", 0.1]]
    (imagenet / "index.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    html, page, _data = _parse(write_report(imagenet))
    assert "on a.jpg, b.jpg and 1 more</title>" in html
    assert page.cells[page.cells.index("Class names") + 1].startswith("ImageNet (1000 classes")


def test_report_on_an_evaluate_folder_says_what_it_is_and_what_to_run(tmp_path: Path) -> None:
    out = tmp_path / "eval"
    out.mkdir()
    (out / "evaluation.json").write_text('{"model": "m", "images": 2}')
    result: Any = invoke("report", out)
    assert result.exit_code == 2
    (line,) = result.stderr.strip().splitlines()
    assert "output of `guided-backprop evaluate`" in line and "evaluation.csv" in line
    assert f"-o {out}" not in line  # no suggestion to run the main command into the evaluation's folder


def test_report_help_states_its_exit_codes() -> None:
    text = " ".join(invoke("report", "--help").output.split())  # type: ignore[attr-defined]
    assert "4 OUT or OUT/thumbs cannot be written" in text and "written atomically" in text
