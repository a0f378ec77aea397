"""report.write_report: the HTML gallery of an output folder, checked as HTML and as embedded JSON."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
from html.parser import HTMLParser
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from guided_backprop import GuidedBackpropError
from guided_backprop.report import THUMB_DIR, THUMB_SIZE, write_report

HOSTILE = "<img src=x onerror=alert(1)>.png"
SCRIPT_BREAK = "evil</script><script>alert(2)</script>.jpg"
HOSTILE_LABEL = '<b onmouseover=alert(3)>tabby</b> & "cat"'
HOSTILE_WEIGHTS = "mine.pt <script>alert(4)</script>"
METHODS = ["guided_backprop", "deconvnet", "saliency", "guided_gradcam"]
PREPROCESSING = "resize the shorter side to 256 px (bilinear), centre crop 224 x 224, divide by 255, normalise"


def _png(path: Path, size: int, seed: int) -> str:
    """A seeded random-gradient RGB picture of ``size`` x ``size``; returns its name."""
    rng = np.random.default_rng(seed)
    ramp = np.linspace(0, 255, size, dtype=np.float64)
    noise = rng.uniform(0, 255, (size, size))
    pic = np.stack([ramp[None, :].repeat(size, 0), ramp[:, None].repeat(size, 1), noise], -1)
    Image.fromarray(pic.astype(np.uint8)).save(path)
    return path.name


def make_run(
    folder: Path, *, n_ok: int = 4, size: int = 48, big: int = 200, settings: dict[str, Any] | None = None
) -> list[dict[str, Any]]:
    """An output folder that follows the contract: run.json, index.jsonl, predictions.csv and the maps.

    Rows, in order: ``n_ok`` explained photos (the first one with ``big`` px pictures, the others ``size`` px,
    alternating between two classes), one with the hostile file name and hostile class label, a failed input,
    one whose map files were deleted, and a failed input whose path tries to close the script block.
    """
    folder.mkdir(parents=True, exist_ok=True)
    classes = [(281, "tabby"), (207, "golden retriever")]
    names = [f"cat_{i}.jpg" if i % 2 == 0 else f"dog_{i}.jpg" for i in range(n_ok)]
    rows: list[dict[str, Any]] = []

    def ok_row(idx: int, name: str, cls: tuple[int, str], side: int) -> dict[str, Any]:
        files = {"input": _png(folder / f"im_{idx}.png", side, idx)}
        for j, method in enumerate(METHODS):
            files[method] = _png(folder / f"{method}_{idx}_class_{cls[0]}.png", side, 100 * idx + j)
        p = round(0.9 - 0.1 * (idx % 7), 3)
        top5 = [[cls[0], cls[1], p]] + [[k, f"class {k}", round((1 - p) / 8, 4)] for k in range(4)]
        return {"idx": idx, "input": f"/photos/{name}", "status": "ok", "error": None, "class_index": cls[0],
                "class_name": cls[1], "probability": p, "top5": top5, "files": files}

    for i, name in enumerate(names):
        rows.append(ok_row(i, name, classes[i % 2], big if i == 0 else size))
    hostile = ok_row(len(rows), HOSTILE, (282, HOSTILE_LABEL), size)
    (folder / HOSTILE).write_bytes((folder / hostile["files"]["input"]).read_bytes())
    hostile["files"]["input"] = HOSTILE  # the map file itself carries the hostile name
    rows.append(hostile)
    rows.append({"idx": len(rows), "input": "/photos/broken.jpg", "status": "error",
                 "error": "cannot identify image file '/photos/broken.jpg'", "class_index": None, "class_name": None,
                 "probability": None, "top5": [], "files": {}})
    gone = ok_row(len(rows), "gone.jpg", classes[0], size)
    for method in METHODS:
        (folder / gone["files"][method]).unlink()
    rows.append(gone)
    rows.append({"idx": len(rows), "input": f"/photos/{SCRIPT_BREAK}", "status": "error",
                 "error": "truncated file <!-- </script>", "class_index": None, "class_name": None,
                 "probability": None, "top5": [], "files": {}})

    run = {"model": "efficientnet_lite0", "weights": HOSTILE_WEIGHTS, "preprocessing": PREPROCESSING,
           "methods": METHODS, "normalization": "percentile", "target": "top1", "version": "0.1.0",
           "started": "2024-05-01T10:00:00", "finished": "2024-05-01T10:00:09"}
    run.update(settings or {})
    (folder / "run.json").write_text(json.dumps(run, indent=2), encoding="utf-8")
    with open(folder / "index.jsonl", "w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row) + "\n")
    with open(folder / "predictions.csv", "w", encoding="utf-8") as fh:
        fh.write("idx,input,status,error,class_index,class_name,probability\n")
        for row in rows:
            fh.write(f"{row['idx']},{json.dumps(row['input'])},{row['status']},,,,\n")
    return rows


class _Page(HTMLParser):
    """Elements with their attributes, the text of every <script>, and the text of the settings table."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.scripts: list[tuple[dict[str, str | None], str]] = []
        self.cells: list[str] = []
        self._in: str | None = None
        self._buf: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))
        if tag in ("script", "th", "td"):
            self._in, self._buf = tag, []
            self._attrs = dict(attrs)

    def handle_endtag(self, tag: str) -> None:
        if tag == self._in == "script":
            self.scripts.append((self._attrs, "".join(self._buf)))
        elif tag == self._in:
            self.cells.append("".join(self._buf))
        if tag == self._in:
            self._in = None

    def handle_data(self, data: str) -> None:
        if self._in:
            self._buf.append(data)


def _parse(path: Path) -> tuple[str, _Page, dict[str, Any]]:
    html = path.read_text(encoding="utf-8")
    page = _Page()
    page.feed(html)
    page.close()
    blocks = [text for attrs, text in page.scripts if attrs.get("type") == "application/json"]
    assert len(blocks) == 1
    return html, page, json.loads(blocks[0])


@pytest.fixture()
def run_dir(tmp_path: Path) -> Path:
    make_run(tmp_path / "out")
    return tmp_path / "out"


def test_writes_index_html_beside_the_maps(run_dir: Path) -> None:
    out = write_report(run_dir)
    assert out == run_dir / "index.html" and out.is_file()
    assert not [p.name for p in run_dir.rglob("*.tmp")], "temporary files left behind"
    html, page, _ = _parse(out)
    assert html.startswith("<!doctype html>")
    csp = next(a["content"] for t, a in page.tags if t == "meta" and a.get("http-equiv") == "Content-Security-Policy")
    assert csp is not None and csp.startswith("default-src 'none'; img-src 'self' data: file:;")
    assert "connect-src" not in csp and "http" not in csp  # nothing may be fetched
    # only the page's own script may run: its hash is in the policy
    (script,) = [text for attrs, text in page.scripts if "type" not in attrs]
    digest = base64.b64encode(hashlib.sha256(script.encode()).digest()).decode()
    assert f"script-src 'sha256-{digest}' 'unsafe-inline';" in csp


def test_no_external_url_or_network_api(run_dir: Path) -> None:
    html, page, _ = _parse(write_report(run_dir))
    for tag, attrs in page.tags:
        for name in ("src", "href", "action", "srcset", "poster", "data"):
            value = attrs.get(name)
            if value is not None:
                assert value.startswith("data:") or "://" not in value, (tag, name, value)
        if tag == "link":
            assert attrs.get("rel") == "icon" and attrs.get("href") == "data:,"
        if tag == "script":
            assert "src" not in attrs, "scripts must be inline"
    code = "\n".join(text for _, text in page.scripts)
    style = html[html.index("<style>"): html.index("</style>")]
    for needle in ("http:", "https:", "//cdn", "fetch(", "XMLHttpRequest", "WebSocket", "import(", "innerHTML",
                   "outerHTML", "insertAdjacentHTML", "document.write", "eval("):
        assert needle not in code, needle
    assert "@import" not in style and "http" not in style
    assert not re.search(r"url\((?!\s*['\"]?data:)", style)


def test_hostile_names_stay_text(run_dir: Path) -> None:
    html, page, data = _parse(write_report(run_dir))
    for raw in (HOSTILE[:-4], "</script><script>alert(2)", "onmouseover=alert(3)>", "<script>alert(4)"):
        assert raw not in html, raw
    assert sum(1 for tag, _ in page.tags if tag == "script") == 2  # the JSON block and the page's script
    assert not [a for tag, a in page.tags if tag == "img" and a.get("src") == "x"]
    assert not [a for _, a in page.tags if any(k.startswith("on") for k in a)], "no inline event handler"
    # the JSON block keeps the exact names, escaped so that no "<" reaches the HTML parser
    block = html[html.index('id="report-data">'):]
    assert "\\u003cimg src=x onerror=alert(1)\\u003e.png" in block[: block.index("</script>")]
    by_name = {r["name"]: r for r in data["rows"]}
    assert by_name[HOSTILE]["label"] == HOSTILE_LABEL
    assert by_name[HOSTILE]["img"][0] == ["%3Cimg%20src%3Dx%20onerror%3Dalert%281%29%3E.png"] * 2
    assert by_name[SCRIPT_BREAK]["error"] == "truncated file <!-- </script>"
    # the settings table went through Jinja's autoescape
    assert "mine.pt &lt;script&gt;alert(4)&lt;/script&gt;" in html
    assert HOSTILE_WEIGHTS in page.cells


def test_settings_are_shown(run_dir: Path) -> None:
    _, page, _ = _parse(write_report(run_dir, title="My <run>"))
    pairs = dict(zip(page.cells[0::2], page.cells[1::2]))
    assert pairs["Model"] == "efficientnet_lite0"
    assert pairs["Weights"] == HOSTILE_WEIGHTS
    assert pairs["Preprocessing"] == PREPROCESSING
    assert pairs["Methods"] == "guided_backprop, deconvnet, saliency, guided_gradcam"
    assert pairs["Normalisation"] == "percentile"
    assert pairs["guided-backprop version"] == "0.1.0"
    assert pairs["Target"] == "top1" and pairs["Started"] == "2024-05-01T10:00:00"
    assert list(pairs)[:5] == ["Model", "Weights", "Preprocessing", "Methods", "Normalisation"]
    assert "<title>My &lt;run&gt;</title>" in (run_dir / "index.html").read_text(encoding="utf-8")


def test_nested_and_unknown_settings_become_words(tmp_path: Path) -> None:
    make_run(tmp_path, settings={"preprocessing": {"resize": 256, "crop": None}, "batch_size": 8})
    _, page, _ = _parse(write_report(tmp_path))
    pairs = dict(zip(page.cells[0::2], page.cells[1::2]))
    assert pairs["Preprocessing"] == "resize: 256; crop: —"
    assert pairs["Batch size"] == "8"


def test_long_settings_are_shortened_and_secondary_ones_folded(tmp_path: Path) -> None:
    inputs = [f"/photos/{i}.jpg" for i in range(1000)]
    make_run(tmp_path, settings={"tool": "guided-backprop", "inputs": inputs, "device": "cpu", "ok": 3,
                                 "preprocessing": "x" * 5000})
    html, page, _ = _parse(write_report(tmp_path))
    pairs = dict(zip(page.cells[0::2], page.cells[1::2]))
    assert pairs["Input paths"] == "/photos/0.jpg, /photos/1.jpg, /photos/2.jpg, … (1000 in all)"
    assert len(pairs["Preprocessing"]) == 600 and pairs["Preprocessing"].endswith("…")
    assert "Tool" not in pairs and pairs["Explained"] == "3" and pairs["Device"] == "cpu"
    more = html[html.index('id="more-settings"'):]
    assert "Device" in more and "Input paths" in more and "Model" not in more
    assert len(html) < 60_000


def test_top_k_columns_and_what_the_maps_explain(tmp_path: Path) -> None:
    make_run(tmp_path, n_ok=2, big=48)
    lines = (tmp_path / "index.jsonl").read_text().splitlines()
    row = json.loads(lines[0])
    row["targets"] = [[281, "tabby", 0.9], [285, "Egyptian cat", 0.05]]
    for method in ("guided_backprop", "saliency"):
        row["files"][f"{method}_top2"] = row["files"][method]
    lines[0] = json.dumps(row)
    layer = json.loads(lines[1])
    layer.update(targets=None, layer_target={"layer": "features.3", "channel": 7, "neuron": "max",
                                             "position": [4, 5], "score": 2.5})
    lines[1] = json.dumps(layer)
    same = json.loads(lines[2])
    same["targets"] = [[same["class_index"], same["class_name"], same["probability"]]]
    lines[2] = json.dumps(same)
    (tmp_path / "index.jsonl").write_text("\n".join(lines) + "\n")
    _, _, data = _parse(write_report(tmp_path))
    columns = {c["key"]: c for c in data["columns"]}
    assert list(columns) == ["input", *METHODS, "guided_backprop_top2", "saliency_top2"]
    # the header names the method; the grid's rows name the class (targets, with their probabilities)
    assert columns["guided_backprop_top2"] == {"key": "guided_backprop_top2", "label": "Guided backprop",
                                               "rank": 2, "method": "guided_backprop"}
    assert columns["input"]["rank"] is None and columns["deconvnet"]["rank"] == 1
    assert data["ranks"] == 2
    rows = data["rows"]
    assert rows[0]["targets"] == ["tabby", "Egyptian cat"] and rows[0]["targetProbs"] == [0.9, 0.05]
    assert rows[0]["explains"] == "tabby 90.0%, Egyptian cat 5.0%"
    assert rows[0]["img"][-1] == rows[0]["img"][3]  # saliency_top2 points at the saliency file
    assert rows[1]["explains"] == "layer features.3, channel 7, its most active unit at (y=4, x=5); activation 2.5"
    assert rows[1]["targets"] is None
    assert rows[2]["explains"] is None  # the predicted class: nothing to add


def test_rows_columns_and_failures(run_dir: Path) -> None:
    rows = [json.loads(line) for line in (run_dir / "index.jsonl").read_text().splitlines()]
    _, _, data = _parse(write_report(run_dir, page_size=3))
    assert data["pageSize"] == 3
    assert [c["key"] for c in data["columns"]] == ["input", *METHODS]
    assert [c["label"] for c in data["columns"]][0].startswith("Input")
    assert [r["idx"] for r in data["rows"]] == [r["idx"] for r in rows]
    assert data["rows"][1]["name"] == "dog_1.jpg" and data["rows"][1]["path"] == "/photos/dog_1.jpg"
    failed = [r for r in data["rows"] if not r["ok"]]
    assert [r["error"] for r in failed] == ["cannot identify image file '/photos/broken.jpg'",
                                          "truncated file <!-- </script>"]
    assert all("img" not in r for r in failed)
    first = data["rows"][0]
    assert first["label"] == "tabby" and first["cls"] == 281 and first["prob"] == pytest.approx(0.9)
    assert first["top5"][0] == [281, "tabby", 0.9] and len(first["top5"]) == 5
    gone = next(r for r in data["rows"] if r["name"] == "gone.jpg")
    assert gone["img"][0] is not None and gone["img"][1:] == [None] * len(METHODS)


def test_thumbnails_small_jpegs_kept_when_fresh(run_dir: Path) -> None:
    _, _, data = _parse(write_report(run_dir))
    big_src, big_thumb = data["rows"][0]["img"][0]
    assert big_src == "im_0.png" and big_thumb.startswith(f"{THUMB_DIR}/") and big_thumb.endswith(".jpg")
    with Image.open(run_dir / big_thumb) as im:
        assert im.format == "JPEG" and max(im.size) == THUMB_SIZE
    small_src, small_thumb = data["rows"][1]["img"][0]
    assert small_src == small_thumb == "im_1.png"  # small pictures are shown as they are
    thumbs = sorted((run_dir / THUMB_DIR).iterdir())
    assert len(thumbs) == 1 + len(METHODS)  # only the big row needed thumbnails
    stamps = {p: p.stat().st_mtime_ns for p in thumbs}
    write_report(run_dir)
    assert {p: p.stat().st_mtime_ns for p in thumbs} == stamps, "fresh thumbnails must be kept"
    # a re-computed map gets a new thumbnail
    source = run_dir / "im_0.png"
    Image.new("RGB", (300, 150), (255, 0, 0)).save(source)
    future = max(stamps.values()) + 10**9
    os.utime(source, ns=(future, future))
    write_report(run_dir)
    with Image.open(run_dir / big_thumb) as im:
        assert im.size == (THUMB_SIZE, THUMB_SIZE // 2)
        r, g, b = im.convert("RGB").getpixel((10, 10))
        assert r > 200 and g < 60 and b < 60


def test_file_names_are_url_quoted(tmp_path: Path) -> None:
    make_run(tmp_path, n_ok=2, big=48)
    row = json.loads((tmp_path / "index.jsonl").read_text().splitlines()[0])
    odd = "100% sure #1?.png"
    (tmp_path / row["files"]["input"]).rename(tmp_path / odd)
    row["files"]["input"] = odd
    lines = (tmp_path / "index.jsonl").read_text().splitlines()
    lines[0] = json.dumps(row)
    (tmp_path / "index.jsonl").write_text("\n".join(lines) + "\n")
    _, _, data = _parse(write_report(tmp_path))
    assert data["rows"][0]["img"][0] == ["100%25%20sure%20%231%3F.png"] * 2


def test_a_rerun_row_replaces_the_old_one_and_a_torn_last_line_is_skipped(run_dir: Path) -> None:
    index = run_dir / "index.jsonl"
    first = json.loads(index.read_text().splitlines()[0])
    first["probability"] = 0.5
    index.write_text(index.read_text() + json.dumps(first) + "\n" + '{"idx": 99, "input": "/ph')
    _, _, data = _parse(write_report(run_dir))
    idxs = [r["idx"] for r in data["rows"]]
    assert sorted(idxs) == sorted(set(idxs)) and 99 not in idxs
    assert idxs[-1] == 0 and data["rows"][-1]["prob"] == 0.5


def test_odd_values_in_a_row_do_not_break_the_page(tmp_path: Path) -> None:
    """Hand-edited or foreign rows: NaN probability, no idx, odd top-5 entries, a missing status."""
    make_run(tmp_path, n_ok=2)
    lines = (tmp_path / "index.jsonl").read_text().splitlines()
    row = json.loads(lines[1])
    del row["idx"]
    row.update(probability=float("nan"), class_index="207", top5=[[1.5, None, "high"], "junk", [3]])
    lines[1] = json.dumps(row)  # json writes NaN, as Python's json module does by default
    lines.append(json.dumps({"input": "/photos/x.jpg"}))  # no status at all: counted as failed
    (tmp_path / "index.jsonl").write_text("\n".join(lines) + "\n")
    _, _, data = _parse(write_report(tmp_path))
    odd = data["rows"][1]
    assert odd["idx"] == 1 and odd["prob"] is None and odd["cls"] is None
    assert odd["top5"] == [[None, None, None]]
    assert data["rows"][-1] == {"idx": len(lines) - 1, "name": "x.jpg", "path": "/photos/x.jpg", "ok": False,
                                "error": "failed (no reason given)"}


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda d: (d / "run.json").unlink(), "no run.json in"),
        (lambda d: (d / "run.json").write_text("[1, 2]"), "expected an object of settings"),
        (lambda d: (d / "run.json").write_text("{oops"), "cannot read"),
        (lambda d: (d / "index.jsonl").unlink(), "no index.jsonl in"),
        (lambda d: (d / "index.jsonl").write_text('{"idx": 0}\nnot json\n{"idx": 1}\n'), "index.jsonl:2: not a JSON"),
    ],
)
def test_broken_folders_raise_typed_errors(run_dir: Path, damage: Any, message: str) -> None:
    damage(run_dir)
    with pytest.raises(GuidedBackpropError, match=re.escape(message)):
        write_report(run_dir)
    assert not (run_dir / "index.html").exists()


def test_bad_arguments(tmp_path: Path) -> None:
    with pytest.raises(GuidedBackpropError, match="does not exist"):
        write_report(tmp_path / "nowhere")
    make_run(tmp_path, n_ok=1)
    for bad in (0, -3, 2.5, True):
        with pytest.raises(GuidedBackpropError, match=f"page_size must be .* got {re.escape(repr(bad))}"):
            write_report(tmp_path, page_size=bad)  # type: ignore[arg-type]


def test_templates_ship_as_package_data() -> None:
    folder = resources.files("guided_backprop").joinpath("templates")
    assert {"report.html.j2", "report.css", "report.js"} <= {p.name for p in folder.iterdir()}


def test_thousands_of_rows_stay_small_and_paginated(tmp_path: Path) -> None:
    """2,000 rows over a few shared pictures: the page grows by a bounded amount per row and only the
    JSON block holds the rows (the script renders one page at a time)."""
    rows = make_run(tmp_path, n_ok=4)
    template = [r for r in rows if r["status"] == "ok" and r["input"] != "/photos/gone.jpg"]
    n = 2000
    rng = np.random.default_rng(0)
    with open(tmp_path / "index.jsonl", "w", encoding="utf-8") as fh:
        for i in range(n):
            row = dict(template[i % len(template)], idx=i, input=f"/photos/batch_{i // 500}/img_{i:05d}.jpg")
            if i % 97 == 0:
                row.update(status="error", error=f"broken file number {i}", files={}, top5=[])
            else:
                row["probability"] = float(rng.uniform(0.2, 1.0))
            fh.write(json.dumps(row) + "\n")
    small = write_report(tmp_path, page_size=50).stat().st_size
    html, page, data = _parse(tmp_path / "index.html")
    assert len(data["rows"]) == n and data["pageSize"] == 50
    assert sum(1 for r in data["rows"] if not r["ok"]) == len(range(0, n, 97))
    assert data["rows"][1]["name"] == "batch_0/img_00001.jpg"  # relative to the common folder
    assert html.count("<img") == 1 and html.count("<article") == 0  # rows are not rendered server-side
    fixed = len(page.scripts[1][1]) + html.index("<script type=")
    assert (small - fixed) / n < 1200, f"{(small - fixed) / n:.0f} bytes per row"


def make_topk_run(folder: Path, *, n_ok: int = 2) -> None:
    """:func:`make_run` as a ``--target top3 --panel`` run: three classes per input (the third without a
    name), ``<method>_top2`` / ``_top3`` files (their own pictures) and a panel per explained input."""
    make_run(folder, n_ok=n_ok, big=48)
    lines = (folder / "index.jsonl").read_text().splitlines()
    for n, line in enumerate(lines):
        row = json.loads(line)
        if row["status"] != "ok":
            continue
        row["targets"] = [[281, "tabby", 0.9], [285, "Egyptian cat", 0.05], [282, None, 0.01]]
        for j, method in enumerate(METHODS):
            for r in (2, 3):
                row["files"][f"{method}_top{r}"] = _png(folder / f"{method}_{n}_top{r}.png", 48, 1000 * r + 10 * n + j)
        row["files"]["panel"] = _png(folder / f"panel {n}.png", 400, n)
        lines[n] = json.dumps(row)
    (folder / "index.jsonl").write_text("\n".join(lines) + "\n")


def test_the_panel_is_a_link_not_a_map_column_and_the_header_counts_maps(tmp_path: Path) -> None:
    """A top-3 run of 4 methods with --panel: 12 maps each (the panel is not one), a link to the panel."""
    make_topk_run(tmp_path)
    html, _, data = _parse(write_report(tmp_path))
    assert "panel" not in [c["key"] for c in data["columns"]]
    assert len(data["columns"]) == 1 + 4 * 3 and data["ranks"] == 3
    assert "12 maps each" in html
    first = data["rows"][0]
    assert first["panel"] == "panel%200.png"  # a link to the full picture, URL-quoted
    assert first["targets"] == ["tabby", "Egyptian cat", "class 282"]
    assert not list((tmp_path / THUMB_DIR).glob("panel*"))  # no unreadable thumbnail of it


def test_sections_are_templates_named_in_order(run_dir: Path) -> None:
    from guided_backprop import report

    assert report.SECTIONS == ["settings.html.j2", "evaluation.html.j2"]
    html, _, _ = _parse(write_report(run_dir))
    assert html.index('id="settings"') < html.index('id="gallery"')
