"""The HTML gallery of a run: ``index.html`` beside the maps of an output folder.

:func:`write_report` reads the folder's ``run.json`` (settings) and ``index.jsonl`` (one JSON object per
input) as the records of :mod:`.records` (the output folder contract, ``docs/output-folder.md``)
and writes one self-contained page:

* one row per input: the input the network saw, the top-5 classes with probabilities and every map of
  its ``files``; click a picture to enlarge it;
* filters by predicted class, file name and status; sort by confidence; pagination, so thousands of
  rows stay fast (small thumbnails in ``thumbs/``, ``loading="lazy"``, only one page in the DOM);
* the failed inputs with their reasons, and the run's settings.

The page works offline from ``file://``: CSS and JS are inline, there is no external URL, and a
Content-Security-Policy forbids every network request. Names from the user's files never become
markup: they travel as escaped JSON and are rendered with ``textContent``, isolated (``<bdi>``) and
with their invisible characters spelled out (:func:`.visible.visible`). A path read from the folder's
files becomes a link only when it names a regular file inside the folder, percent-quoted; nothing
but regular files is ever opened. Disk errors raise :class:`.batch.DiskFull` (exit code 4).
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import logging
import math
import os
import re
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import quote

import jinja2
from PIL import Image

from . import __version__
from .atomic import write_bytes
from .batch.config import DiskFull, check_writable, write_failed
from .errors import GuidedBackpropError
from .images import not_a_file_reason, to_rgb
from .methods import REGISTRY, method_title
from .records import ClassScore, CurveRecord, EvaluationRecord, IndexRecord, RecordError, RunRecord
from .visible import visible

__all__ = ["CSP", "REPORT_NAME", "SECTIONS", "THUMB_DIR", "THUMB_SIZE", "write_report"]

log = logging.getLogger(__name__)

#: File name of the page, written in the output folder.
REPORT_NAME = "index.html"
#: Sub-folder of the output folder that holds the thumbnails.
THUMB_DIR = "thumbs"
#: Longest side of a thumbnail, in pixels; pictures no larger than this are shown as they are.
THUMB_SIZE = 160
#: The page's Content-Security-Policy: no network at all, only local pictures and the inline CSS/JS.
#: ``{script_hash}`` is the hash of the page's one script: browsers that know hashes then run that script
#: and nothing else (no injected handler), older ones fall back to ``'unsafe-inline'``.
CSP = (
    "default-src 'none'; img-src 'self' data: file:; style-src 'unsafe-inline'; "
    "script-src '{script_hash}' 'unsafe-inline'; base-uri 'none'; form-action 'none'"
)

_INPUT_LABEL = "Input (as the network saw it)"
_PANEL = "panel"  # the files key of the per-input panel: linked from its row, not a column
#: The page's sections between the header and the gallery, in order: templates beside ``report.html.j2``
#: that see the same variables. A new section (e.g. an evaluation) is one more template named here.
SECTIONS: list[str] = ["settings.html.j2", "evaluation.html.j2"]  # the evaluation shows only with evaluation.json
# Known run.json keys, in the order the settings table shows them; other keys follow in file order.
_SETTING_LABELS = {
    "model": "Model",
    "weights": "Weights",
    "labels": "Class names",
    "preprocessing": "Preprocessing",
    "input_size": "Input size",
    "methods": "Methods",
    "normalization": "Normalisation",
    "target": "Target",
    "gradcam_layer": "Grad-CAM layer",
    "smooth": "SmoothGrad samples",
    "noise": "SmoothGrad noise",
    "version": "guided-backprop version",
    "started": "Started",
    "finished": "Finished",
    "inputs": "Input paths",
    "name": "Map file names",
    "input_name": "Input file names",
    "images": "Inputs",
    "ok": "Explained",
    "failed": "Failed",
    "maps": "Map files",
}
# Shown at once; the other settings sit in a folded "more settings" part of the table.
_MAIN_SETTINGS = frozenset({"model", "weights", "labels", "preprocessing", "methods", "normalization", "target",
                            "gradcam_layer", "version", "started", "finished"})
_HIDDEN_SETTINGS = frozenset({"tool", "notes"})  # the notes are shown above the gallery
_MAX_LIST_ITEMS = 5  # longer lists (e.g. the inputs) are shortened in the settings table
_MAX_TEXT = 600
_TEMPLATE_PACKAGE = "guided_backprop"
_THUMB_QUALITY = 85


@dataclass(frozen=True)
class _Picture:
    """Where the page finds one picture: the full file and its thumbnail (URLs relative to the page)."""

    src: str
    thumb: str


def write_report(output_dir: str | os.PathLike[str], *, title: str | None = None, page_size: int = 100) -> Path:
    """Write ``output_dir/index.html``, the gallery of the run in ``output_dir``; return its path.

    ``output_dir`` must hold ``run.json`` and ``index.jsonl`` (the output folder contract). Thumbnails of
    pictures larger than :data:`THUMB_SIZE` are written to ``output_dir/thumbs/`` (existing, up-to-date
    ones are kept). ``title`` defaults to the model and the run's inputs (``run.json``'s ``inputs``; the folder's
    name without them); ``page_size`` rows are shown per page.
    The page and every thumbnail are written atomically (temporary file, then ``os.replace``).

    Paths read from the folder's files are shown only when they name a regular file inside
    ``output_dir`` (URL-quoted); names are shown with their invisible characters spelled out
    (:func:`.visible.visible`). Raises :class:`.batch.DiskFull` (exit code 4) when the folder or
    ``thumbs/`` cannot be written (checked before any thumbnail is made), naming the path.
    """
    folder = Path(output_dir)
    if isinstance(page_size, bool) or not isinstance(page_size, int) or page_size < 1:
        raise GuidedBackpropError(f"page_size must be a whole number >= 1, got {page_size!r}; the default is 100")
    if not folder.is_dir():
        raise GuidedBackpropError(
            f"output folder {str(folder)!r} does not exist; run `guided-backprop IMAGES -o {folder}` first"
        )
    run, settings = _read_run(folder / "run.json")
    rows = _read_index(folder / "index.jsonl")
    columns = _columns(rows, run.methods if run else settings.get("methods"))
    rerun = f"rerun `guided-backprop report {folder}`"
    check_writable(folder, rerun)
    pictures = _pictures(folder, rows, rerun)
    described = [_column(key) for key in columns]
    if settings.get("labels") is None and "labels" in settings:
        settings = {**settings, "labels": _labels_in_use(rows)}

    names = [visible(n) for n in _display_names([r.input for r in rows])]
    data = {
        "columns": described,
        "ranks": max((c["rank"] or 1 for c in described), default=1),  # > 1: a class x method grid per input
        "pageSize": page_size,
        "rows": [_row_data(row, name, columns, pictures, folder) for row, name in zip(rows, names)],
    }
    n_failed = sum(1 for r in rows if r.status != "ok")
    model = run.model if run else settings.get("model")
    main_settings, more_settings = _settings_table(settings)
    script = "\n" + _asset("report.js") + "\n"  # exactly the text between <script> and </script>
    script_hash = "sha256-" + base64.b64encode(hashlib.sha256(script.encode("utf-8")).digest()).decode("ascii")
    page = _template().render(
        title=visible(title or f"guided-backprop: {model or 'run'} on {_inputs_words(settings.get('inputs'), folder)}"),
        csp=CSP.format(script_hash=script_hash),
        css=_asset("report.css"),
        script=script,
        data_json=_script_json(data),
        settings=main_settings,
        more_settings=more_settings,
        n_rows=len(rows),
        n_ok=len(rows) - n_failed,
        n_failed=n_failed,
        n_maps=sum(1 for c in described if c["rank"] is not None),
        version=__version__,
        sections=SECTIONS,
        evaluation=_evaluation(folder),
        notes=[visible(str(n)) for n in (run.notes if run else settings.get("notes") or []) if n],
    )
    out = folder / REPORT_NAME
    try:
        write_bytes(out, page.encode("utf-8", errors="replace"))
    except OSError as err:
        raise write_failed(err, out, rerun) from err
    return out


# ----------------------------------------------------------------------------------------------- reading


def _evaluation(folder: Path) -> dict[str, Any] | None:
    """The "Evaluation" section from ``evaluation.json`` (``guided-backprop evaluate``), or None without one.

    A file that cannot be read or is not of the shape ``evaluate`` writes is no reason to lose the
    gallery: a warning names it, and the section says so.
    """
    path = folder / "evaluation.json"
    if not path.is_file() or not_a_file_reason(path) is not None:
        return None
    odd: list[str] = []
    try:
        record = EvaluationRecord.from_json(json.loads(path.read_text(encoding="utf-8")), lenient=True, odd=odd)
    except (OSError, ValueError) as err:
        log.warning("%s is not an evaluation this report can show (%s); the gallery is written without it",
                    visible(str(path)), visible(err))
        return {"summary": "evaluation.json could not be read (not the output of `guided-backprop evaluate` "
                           "of this version)", "heads": [], "rows": [], "figures": []}
    if odd:
        log.warning("%s: parts of an unexpected shape are left out of the gallery (%s)", visible(str(path)),
                    visible(", ".join(dict.fromkeys(odd))))
    return _evaluation_section(folder, record)


#: The summary table's columns: a check, its heading, and the value shown per method.
_EVALUATION_COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("randomization", "Spearman |map| after the last randomisation step", "spearman_abs"),
    ("class_sensitivity", "Spearman |map|, predicted vs random class", "spearman_abs"),
    ("efficient_mprt", "Efficient MPRT: rise in map entropy, trained to random (high is good)", "complexity_rise"),
    ("smooth_mprt", "Smooth MPRT: Spearman |map| after the last step", "spearman_abs"),
    ("deletion", "deletion AUC", "auc"),
    ("insertion", "insertion AUC", "auc"))


def _evaluation_section(folder: Path, record: EvaluationRecord) -> dict[str, Any]:
    """The section's words, numbers and figures."""
    def num(mean: float | None) -> str:
        return f"{mean:.3f}" if mean is not None and math.isfinite(mean) else "–"

    checks = record.checks
    methods = list(dict.fromkeys(m for check in checks.values() for m in check.methods))
    heads: list[str] = []
    cells: dict[str, list[str]] = {}
    for key, head, stat in _EVALUATION_COLUMNS:
        check = checks.get(key)
        if check is None:
            continue
        if isinstance(check, CurveRecord):
            head = f"{head} (random order: {num(check.random.auc.mean)})"
        heads.append(head)
        for m in methods:
            cells.setdefault(m, []).append(num(check.value(m, stat)))
    figures = []
    for key, name in record.figures.items():
        local = _local_path(folder, name)
        url = _local_url(folder, name) if local is not None and _is_regular(folder / local) else None
        if url is not None:
            figures.append({"src": url, "alt": visible(f"evaluation: {key}")})
    summary = (f"{_or_unknown(record.images)} images, model {_or_unknown(record.model)}, "
               f"seed {_or_unknown(record.seed)}")
    return {"summary": visible(summary), "heads": heads,
            "rows": [{"method": visible(m), "cells": cells.get(m, [])} for m in methods], "figures": figures}


def _or_unknown(value: object) -> str:
    return "?" if value is None else str(value)


def _read_run(path: Path) -> tuple[RunRecord | None, dict[str, Any]]:
    """The run's record, and the settings to show: the record's, or (a run.json of another version, or
    written by hand: no record) the object as written."""
    _refuse_non_file(path)
    if not path.is_file():
        raise GuidedBackpropError(_not_a_run_folder(path.parent))
    try:
        settings = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise GuidedBackpropError(f"cannot read {str(path)!r}: {err}; rerun the batch to rewrite it") from err
    if not isinstance(settings, dict):
        raise GuidedBackpropError(
            f"{str(path)!r} holds a JSON {type(settings).__name__}, expected an object of settings"
        )
    try:
        run = RunRecord.from_json(settings)
    except RecordError as err:
        log.info("%s: %s; showing its settings as written", path, err)
        return None, settings
    return run, run.to_json()


def _refuse_non_file(path: Path) -> None:
    """A FIFO, socket, device or link loop where one of the run's files should be: named, never opened."""
    reason = not_a_file_reason(path)
    if reason is not None:
        raise GuidedBackpropError(f"{visible(str(path))!r} is {reason}; it is not read (rerun the batch to "
                                  f"rewrite it)")


def _not_a_run_folder(folder: Path) -> str:
    """Why ``folder`` (no ``run.json``) has no gallery, and what to run: it may hold another command's output."""
    shown = visible(str(folder))
    if (folder / "evaluation.json").is_file():
        return (f"{shown!r} holds the output of `guided-backprop evaluate` (evaluation.json, evaluation.csv and its "
                f"figures), which has no gallery of its own: open evaluation.csv, or write maps with a gallery to "
                f"another folder with `guided-backprop IMAGES -o OUT --report`; an evaluation.json placed in "
                f"OUT is shown in OUT's gallery")
    if (folder / "units.json").is_file():
        return (f"{shown!r} holds the output of `guided-backprop units` (its unit_*.png grids are the pictures to "
                f"open), which has no gallery; for maps with a gallery run `guided-backprop IMAGES -o OUT --report`")
    return (f"no run.json in {shown!r}: not a guided-backprop output folder; "
            f"run `guided-backprop IMAGES -o {shown} --report` to make one with its gallery")


def _read_index(path: Path) -> list[IndexRecord]:
    """Rows of ``index.jsonl`` in file order; a later row with the same ``idx`` replaces an earlier one.

    An unreadable *last* line without a final newline (a run killed mid-write) is skipped with a warning;
    any other unreadable line is an error naming the line. A row that is not a record of the contract
    (hand-edited, another version's) is read leniently (:meth:`.IndexRecord.from_json`): what is odd in it
    is left out, and a row without a valid ``idx`` gets its place in the file.
    """
    _refuse_non_file(path)
    if not path.is_file():
        raise GuidedBackpropError(
            f"no index.jsonl in {str(path.parent)!r}: the run has not listed any input yet; "
            f"run `guided-backprop IMAGES -o {path.parent}` first"
        )
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise GuidedBackpropError(f"cannot read {str(path)!r}: {err}") from err
    lines = text.split("\n")
    by_idx: dict[Any, dict[str, Any]] = {}
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            if not isinstance(row, dict):
                raise ValueError(f"a JSON {type(row).__name__}, expected an object")
        except ValueError as err:
            if number == len(lines) and not text.endswith("\n"):
                log.warning("%s:%d: skipping a truncated last line (%s)", path, number, err)
                continue
            raise GuidedBackpropError(f"{path}:{number}: not a JSON object ({err}); rerun the batch") from err
        idx = row.get("idx")
        key = idx if isinstance(idx, (int, str)) else f"line {number}"
        by_idx.pop(key, None)  # a re-run row moves to the end, like the file says
        by_idx[key] = row
    records = []
    for position, row in enumerate(by_idx.values()):
        try:
            records.append(IndexRecord.from_json(row))
        except RecordError as err:
            log.debug("%s: %s; reading the row leniently", path, err)
            records.append(IndexRecord.from_json(row, lenient=True, idx=position))
    return records


def _columns(rows: Sequence[IndexRecord], methods: Any) -> list[str]:
    """Picture columns: ``input`` first, then the run's methods in order, then any other ``files`` key.

    The panel (``files["panel"]``, every map in one picture) is no column: each row links to it.
    """
    seen: list[str] = []
    for row in rows:
        seen.extend(k for k in row.files if k not in seen and k != _PANEL)
    order = ["input"] + [str(m) for m in methods] if isinstance(methods, list) else ["input"]
    return [k for k in order if k in seen] + [k for k in seen if k not in order]


def _column(key: str) -> dict[str, Any]:
    """A column's title (the method), and which explained class (1 = the first) its maps show
    (``None``: the input). Top-k runs show the columns of one method under one header, a row per class."""
    if key == "input":
        return {"key": key, "label": _INPUT_LABEL, "rank": None, "method": None}
    ranked = re.fullmatch(r"(.+)_top(\d+)", key)
    if ranked and ranked.group(1) in REGISTRY:
        method = ranked.group(1)
        return {"key": key, "label": method_title(method), "rank": int(ranked.group(2)), "method": method}
    return {"key": key, "label": method_title(key), "rank": 1, "method": key}


# -------------------------------------------------------------------------------------------- thumbnails


def _pictures(folder: Path, rows: Sequence[IndexRecord], rerun: str) -> dict[str, _Picture | None]:
    """Every file the rows name, mapped to its page URLs (``None`` where it cannot be shown: missing,
    not a regular file, outside the folder or unreadable; a warning counts each kind). A thumbnail
    that cannot be written stops the report (:func:`.batch.config.write_failed`, exit code 4)."""
    rels: list[str] = []
    for row in rows:
        rels.extend(v for k, v in row.files.items() if v and k != _PANEL)
    unique = list(dict.fromkeys(rels))
    if not unique:
        return {}
    thumbs = folder / THUMB_DIR
    if thumbs.is_symlink() or (thumbs.exists() and not thumbs.is_dir()):
        raise DiskFull(f"cannot write thumbnails to {visible(str(thumbs))!r}: it is not a folder; move it away, "
                       f"then {rerun}")
    check_writable(thumbs, rerun)
    workers = max(1, min(8, os.cpu_count() or 1, len(unique) // 16 + 1))
    if workers == 1:
        found = [_picture(folder, rel, rerun) for rel in unique]
    else:  # Pillow decodes, resizes and encodes without the GIL
        with ThreadPoolExecutor(max_workers=workers) as pool:
            found = list(pool.map(lambda rel: _picture(folder, rel, rerun), unique))
    problems: dict[str, list[str]] = {}
    for rel, pic in zip(unique, found):
        if isinstance(pic, str):
            problems.setdefault(pic, []).append(rel)
    for kind, named in problems.items():
        log.warning("%d picture(s) %s in %s, e.g. %r", len(named), kind, visible(str(folder)), visible(named[0]))
    return {rel: pic if isinstance(pic, _Picture) else None for rel, pic in zip(unique, found)}


def _picture(folder: Path, rel: str, rerun: str) -> _Picture | str:
    """The URLs of file ``rel`` and of its thumbnail (written if missing or older than the file), or why
    it cannot be shown, in words (missing, not a regular file, outside the folder, unreadable)."""
    local = _local_path(folder, rel)
    if local is None:
        return "outside the output folder (not shown)"
    url = _local_url(folder, rel)
    assert url is not None
    src = folder / local
    reason = not_a_file_reason(src)
    if reason is not None:  # a FIFO would block the open below forever; a device, a socket: nothing to show
        return "not regular files (FIFOs, sockets, devices, link loops: never opened)"
    thumb = folder / THUMB_DIR / _thumb_name(rel)
    thumb_url = f"{THUMB_DIR}/{thumb.name}"
    try:
        src_mtime = src.stat().st_mtime_ns
        if thumb.is_file() and thumb.stat().st_mtime_ns >= src_mtime:
            return _Picture(url, thumb_url)
        with Image.open(src) as im:
            if max(im.size) <= THUMB_SIZE:
                return _Picture(url, url)
            im.draft("RGB", (THUMB_SIZE, THUMB_SIZE))  # JPEG: decode at a reduced scale
            small = to_rgb(im)
            small.thumbnail((THUMB_SIZE, THUMB_SIZE), Image.Resampling.LANCZOS, reducing_gap=2.0)
        buf = io.BytesIO()
        small.save(buf, format="JPEG", quality=_THUMB_QUALITY)
    except FileNotFoundError:
        return "missing"
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
        log.debug("no picture for %r: %s", rel, err)
        return "unreadable (not a picture Pillow can read)"
    try:  # reading is done: a failure from here on is the output folder's, not the picture's
        write_bytes(thumb, buf.getvalue())
    except OSError as err:
        raise write_failed(err, thumb, rerun) from err
    return _Picture(url, thumb_url)


def _local_path(folder: Path, name: str) -> str | None:
    """The path, relative to ``folder``, of a file named in one of the folder's files (relative to the
    folder, or absolute); ``None`` when the name leads outside the folder (``../``, an absolute path
    elsewhere, a symbolic link out) or cannot be a file name."""
    if not name or "\0" in name:
        return None
    root = os.path.realpath(folder)
    target = os.path.realpath(os.path.join(root, name))
    if not target.startswith(root.rstrip(os.sep) + os.sep):
        return None
    return os.path.relpath(target, root)


def _local_url(folder: Path, name: str) -> str | None:
    """The page's URL of :func:`_local_path` (``None`` outside the folder): always relative and
    percent-quoted, so it never starts with a scheme (``http:``, ``javascript:``: ``:`` becomes
    ``%3A``) or with ``//``; undecodable bytes of a name are quoted as the bytes they are."""
    rel = _local_path(folder, name)
    if rel is None:
        return None
    return quote(rel.replace(os.sep, "/").encode("utf-8", errors="surrogateescape"), safe="/")


def _thumb_name(rel: str) -> str:
    """A safe, unique, stable thumbnail name: the file's stem (ASCII letters only) and a hash of its path."""
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", Path(rel).stem).strip("._")[:40] or "picture"
    digest = hashlib.sha1(rel.encode("utf-8", errors="surrogatepass")).hexdigest()[:12]
    return f"{stem}-{digest}.jpg"


# ------------------------------------------------------------------------------------------------- page


def _row_data(
    row: IndexRecord,
    name: str,
    columns: Sequence[str],
    pictures: Mapping[str, _Picture | None],
    folder: Path,
) -> dict[str, Any]:
    """One row as the page's script reads it (short, flat, JSON-safe: odd values become ``None``; every
    text from the files with its invisible characters spelled out)."""
    ok = row.status == "ok"
    out: dict[str, Any] = {"idx": row.idx, "name": name, "path": _shown(row.input) or None, "ok": ok}
    if not ok:
        out["error"] = visible(row.error or "failed (no reason given)")
        return out
    cells: list[list[str] | None] = []
    for key in columns:
        rel = row.files.get(key)
        pic = pictures.get(rel) if rel is not None else None
        cells.append([pic.src, pic.thumb] if pic else None)
    targets = row.targets or []
    explained = [e for e in row.explained or [] if isinstance(e, Mapping)]
    said = [_explained_text(e) for e in explained] if explained and not targets and row.layer_target is None else []
    panel = row.files.get(_PANEL)
    panel_path = _local_path(folder, panel) if panel else None
    out.update(
        explains=_shown(_explains(row, targets) or "; ".join(said) or None),
        targets=[visible(_class_text(t)) for t in targets] or [visible(t) for t in said] or None,
        zero=[[str(m) for m in e.get("zero_maps") or []] for e in explained] or None,
        targetProbs=[_prob(t.probability) for t in targets] or None,
        panel=_local_url(folder, panel) if panel and panel_path and _is_regular(folder / panel_path) else None,
        cls=row.class_index,
        label=_shown(row.class_name),
        prob=_prob(row.probability),
        top5=[[c.class_index, _shown(c.class_name), _prob(c.probability)] for c in row.top5],
        img=cells,
    )
    return out


def _shown(text: str | None) -> str | None:
    return None if text is None else visible(text)


def _is_regular(path: Path) -> bool:
    return path.is_file() and not_a_file_reason(path) is None


def _class_text(score: ClassScore) -> str:
    return score.class_name if score.class_name is not None else f"class {score.class_index}"


def _explains(row: IndexRecord, targets: Sequence[ClassScore]) -> str | None:
    """What the maps explain, in words, when it is not simply the predicted class."""
    layer = row.layer_target
    if layer is not None:
        text = f"layer {layer.layer}, channel {layer.channel}"
        if layer.neuron == "max":
            text += ", its most active unit"
            if layer.position is not None:
                text += f" at (y={layer.position[0]}, x={layer.position[1]})"
        elif isinstance(layer.neuron, tuple):
            text += f", unit (y={layer.neuron[0]}, x={layer.neuron[1]})"
        score = _prob(layer.score)
        return text + (f"; activation {score:.4g}" if score is not None else "")
    if not targets or (len(targets) == 1 and targets[0].class_index == row.class_index):
        return None
    parts = []
    for t in targets:
        prob = _prob(t.probability)
        parts.append(_class_text(t) + (f" {prob:.1%}" if prob is not None else ""))
    return ", ".join(parts)


def _explained_text(e: Mapping[str, Any]) -> str:
    """One explained target of an index line in words: what it is, its class, raw score and box or size."""
    words = str(e.get("target") or "target")
    if e.get("class_name") is not None:
        words += f": {e['class_name']}"
    if not e.get("found", True):
        return words + f" (no map: {e.get('reason') or 'nothing found'})"
    value = _prob(e.get("value"))
    if value is not None:
        words += f", {'p' if e.get('value_kind') == 'probability' else 'score'} {value:.4g}"
    box = e.get("box")
    if isinstance(box, list) and len(box) == 4 and all(isinstance(v, (int, float)) for v in box):
        words += ", box " + ",".join(f"{v:.0f}" for v in box)
    if isinstance(e.get("pixels"), (int, float)):
        words += f", {e['pixels']:g} px"
    return words


def _display_names(paths: Sequence[str]) -> list[str]:
    """The input paths relative to their common folder (a single input: its file name)."""
    parents = [os.path.dirname(p) for p in paths if p]
    try:
        common = os.path.commonpath(parents) if parents else ""
    except ValueError:  # absolute and relative paths mixed
        common = ""
    names = []
    for p in paths:
        rel = p[len(common):].lstrip("/\\") if common and p.startswith(common) else p
        names.append(rel or p)
    return names


def _labels_in_use(rows: Sequence[IndexRecord]) -> str:
    """The "Class names" setting of a run without ``--labels``, in words: which names the model came with,
    read off the names its rows show (ImageNet's, numbered classes, or the model's own)."""
    from .models.labels import generic_labels, imagenet_labels

    pairs: set[tuple[int, str]] = {(c.class_index, c.class_name) for r in rows for c in r.top5
                                    if isinstance(c.class_index, int) and c.class_name is not None}
    pairs |= {(r.class_index, r.class_name) for r in rows
              if isinstance(r.class_index, int) and r.class_name is not None}
    # a segmenter's region, a detector's box: the class named in what each map explains
    pairs |= {(e["class_index"], e["class_name"]) for r in rows for e in r.explained or []
              if isinstance(e.get("class_index"), int) and isinstance(e.get("class_name"), str)}
    if not pairs:
        if any(r.status == "ok" for r in rows):  # explained, but no class named (an embedding, a raw output)
            return "none used: the maps explain no class"
        return "the model's own (no input explained yet)"
    top = max(i for i, _ in pairs)
    imagenet = imagenet_labels()
    if all(0 <= i < len(imagenet) and imagenet[i] == name for i, name in pairs):
        return f"ImageNet ({len(imagenet)} classes, the model's own; --labels FILE replaces them)"
    numbered = generic_labels(top + 1) if top >= 0 else []
    if all(0 <= i < len(numbered) and numbered[i] == name for i, name in pairs):
        return "none: the classes are numbered (--labels FILE gives them names)"
    return "the model's own (--labels FILE replaces them)"


def _inputs_words(inputs: Any, folder: Path) -> str:
    """What the run explained, for the title: its inputs as given (``photos``, ``a.jpg, b.jpg``,
    ``photos, more and 3 others``), or the folder's name when ``run.json`` does not say."""
    if not isinstance(inputs, list) or not inputs:
        return folder.resolve().name
    names = [os.path.basename(str(p).rstrip("/\\")) or str(p) for p in inputs]
    if len(names) <= 2:
        return " and ".join(names)
    return f"{names[0]}, {names[1]} and {len(names) - 2} more"


def _settings_table(settings: Mapping[str, Any]) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """(label, text) rows of the settings: the main ones, then the others."""
    keys = [k for k in _SETTING_LABELS if k in settings]
    keys += [k for k in settings if k not in _SETTING_LABELS and k not in _HIDDEN_SETTINGS]
    main: list[tuple[str, str]] = []
    more: list[tuple[str, str]] = []
    for key in keys:
        text = visible(_words(settings[key]))
        if len(text) > _MAX_TEXT:
            text = text[: _MAX_TEXT - 1] + "…"
        label = visible(_SETTING_LABELS.get(key, key.replace("_", " ").capitalize()))
        (main if key in _MAIN_SETTINGS else more).append((label, text))
    return main, more


def _words(value: Any) -> str:
    """A setting as a line of text: lists joined by commas (long ones shortened), mappings as ``key: value; ...``."""
    if value is None:
        return "—"
    if isinstance(value, str):
        return value
    if isinstance(value, Mapping):
        return "; ".join(f"{k}: {_words(v)}" for k, v in value.items())
    if isinstance(value, (list, tuple)):
        if len(value) > _MAX_LIST_ITEMS:
            shown = ", ".join(_words(v) for v in value[: _MAX_LIST_ITEMS - 2])
            return f"{shown}, … ({len(value)} in all)"
        return ", ".join(_words(v) for v in value)
    return str(value)


def _prob(value: Any) -> float | None:
    try:
        p = float(value)
    except (TypeError, ValueError):
        return None
    return round(p, 5) if math.isfinite(p) else None


def _script_json(obj: Any) -> str:
    """JSON that is safe inside ``<script type="application/json">``: no ``<``, ``>`` or ``&`` survive,
    so ``</script>`` or ``<!--`` in a file name cannot end the block; non-ASCII is escaped too."""
    text = json.dumps(obj, ensure_ascii=True, separators=(",", ":"), allow_nan=False)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def _template() -> jinja2.Template:
    env = jinja2.Environment(loader=jinja2.FunctionLoader(_asset), autoescape=True,
                             undefined=jinja2.StrictUndefined, keep_trailing_newline=True)
    return env.get_template("report.html.j2")


def _asset(name: str) -> str:
    return resources.files(_TEMPLATE_PACKAGE).joinpath("templates", name).read_text(encoding="utf-8")


