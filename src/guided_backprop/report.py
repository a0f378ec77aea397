"""The HTML gallery of a run: ``index.html`` beside the maps of an output folder.

:func:`write_report` reads the folder's ``run.json`` (settings) and ``index.jsonl`` (one JSON object per
input) as the records of :mod:`.batch.records` (the output folder contract, ``docs/output-folder.md``)
and writes one self-contained page:

* one row per input: the input the network saw, the top-5 classes with probabilities and every map of
  its ``files``; click a picture to enlarge it;
* filters by predicted class, file name and status; sort by confidence; pagination, so thousands of
  rows stay fast (small thumbnails in ``thumbs/``, ``loading="lazy"``, only one page in the DOM);
* the failed inputs with their reasons, and the run's settings.

The page works offline from ``file://``: CSS and JS are inline, there is no external URL, and a
Content-Security-Policy forbids every network request. Names from the user's files never become
markup: they travel as escaped JSON and are rendered with ``textContent``.
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
from collections.abc import Callable, Mapping, Sequence
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
from .batch.records import ClassScore, IndexRecord, RecordError, RunRecord
from .errors import GuidedBackpropError
from .images import to_rgb
from .methods import REGISTRY, method_title

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
_HIDDEN_SETTINGS = frozenset({"tool"})
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
    ones are kept). ``title`` defaults to the model and folder name; ``page_size`` rows are shown per page.
    The page and every thumbnail are written atomically (temporary file, then ``os.replace``).
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
    pictures = _pictures(folder, rows)
    described = [_column(key) for key in columns]

    names = _display_names([r.input for r in rows])
    data = {
        "columns": described,
        "ranks": max((c["rank"] or 1 for c in described), default=1),  # > 1: a class x method grid per input
        "pageSize": page_size,
        "rows": [_row_data(row, name, columns, pictures) for row, name in zip(rows, names)],
    }
    n_failed = sum(1 for r in rows if r.status != "ok")
    model = run.model if run else settings.get("model")
    main_settings, more_settings = _settings_table(settings)
    script = "\n" + _asset("report.js") + "\n"  # exactly the text between <script> and </script>
    script_hash = "sha256-" + base64.b64encode(hashlib.sha256(script.encode("utf-8")).digest()).decode("ascii")
    page = _template().render(
        title=title or f"guided-backprop: {model or 'run'} on {folder.resolve().name}",
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
    )
    out = folder / REPORT_NAME
    write_bytes(out, page.encode("utf-8", errors="replace"))
    return out


# ----------------------------------------------------------------------------------------------- reading


def _evaluation(folder: Path) -> dict[str, Any] | None:
    """The "Evaluation" section from ``evaluation.json`` (``guided-backprop evaluate``), or None without one."""
    path = folder / "evaluation.json"
    if not path.is_file():
        return None
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {"summary": "evaluation.json could not be read", "heads": [], "rows": [], "figures": []}

    def num(stat: Any) -> str:
        mean = stat.get("mean") if isinstance(stat, dict) else None
        if isinstance(mean, list):
            mean = mean[-1] if mean else None
        return "–" if not isinstance(mean, (int, float)) else f"{mean:.3f}"

    heads: list[str] = []
    cells: dict[str, list[str]] = {}
    rnd, cls = doc.get("randomization") or {}, doc.get("class_sensitivity") or {}
    checks: list[tuple[str, str, Callable[[str], str]]] = [
              ("randomization", "Spearman |map| after the last randomisation step",
               lambda m: num(rnd.get("methods", {}).get(m, {}).get("spearman_abs"))),
              ("class_sensitivity", "Spearman |map|, predicted vs random class",
               lambda m: num(cls.get("methods", {}).get(m, {}).get("spearman_abs")))]
    emprt, smprt = doc.get("efficient_mprt") or {}, doc.get("smooth_mprt") or {}
    checks += [("efficient_mprt", "Efficient MPRT: rise in map entropy, trained to random (high is good)",
                lambda m: num(emprt.get("methods", {}).get(m, {}).get("complexity_rise"))),
               ("smooth_mprt", "Smooth MPRT: Spearman |map| after the last step",
                lambda m: num(smprt.get("methods", {}).get(m, {}).get("spearman_abs")))]
    for mode in ("deletion", "insertion"):
        block = doc.get(mode) or {}
        def auc(m: str, b: dict[str, Any] = block) -> str:
            return num(b.get("methods", {}).get(m, {}).get("auc"))

        checks.append((mode, f"{mode} AUC (random order: {num((block.get('random') or {}).get('auc'))})", auc))
    methods: list[str] = []
    for key in ("randomization", "efficient_mprt", "smooth_mprt", "class_sensitivity", "deletion", "insertion"):
        for m in (doc.get(key) or {}).get("methods", {}):
            if m not in methods:
                methods.append(m)
    for key, head, cell in checks:
        if doc.get(key):
            heads.append(head)
            for m in methods:
                cells.setdefault(m, []).append(cell(m))
    figures = [{"src": str(name), "alt": f"evaluation: {key}"} for key, name in (doc.get("figures") or {}).items()
               if isinstance(name, str) and (folder / name).is_file()]
    return {"summary": f"{doc.get('images', '?')} images, model {doc.get('model', '?')}, seed {doc.get('seed', '?')}",
            "heads": heads, "rows": [{"method": m, "cells": cells.get(m, [])} for m in methods], "figures": figures}


def _read_run(path: Path) -> tuple[RunRecord | None, dict[str, Any]]:
    """The run's record, and the settings to show: the record's, or (a run.json of another version, or
    written by hand: no record) the object as written."""
    if not path.is_file():
        raise GuidedBackpropError(
            f"no run.json in {str(path.parent)!r}: not a guided-backprop output folder; "
            f"run `guided-backprop IMAGES -o {path.parent}` first"
        )
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


def _read_index(path: Path) -> list[IndexRecord]:
    """Rows of ``index.jsonl`` in file order; a later row with the same ``idx`` replaces an earlier one.

    An unreadable *last* line without a final newline (a run killed mid-write) is skipped with a warning;
    any other unreadable line is an error naming the line. A row that is not a record of the contract
    (hand-edited, another version's) is read leniently (:meth:`.IndexRecord.from_json`): what is odd in it
    is left out, and a row without a valid ``idx`` gets its place in the file.
    """
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


def _pictures(folder: Path, rows: Sequence[IndexRecord]) -> dict[str, _Picture | None]:
    """Every file the rows name, mapped to its page URLs (``None`` where the file is missing or unreadable)."""
    rels: list[str] = []
    for row in rows:
        rels.extend(v for k, v in row.files.items() if v and k != _PANEL)
    unique = list(dict.fromkeys(rels))
    if not unique:
        return {}
    (folder / THUMB_DIR).mkdir(exist_ok=True)
    workers = max(1, min(8, os.cpu_count() or 1, len(unique) // 16 + 1))
    if workers == 1:
        found = [_picture(folder, rel) for rel in unique]
    else:  # Pillow decodes, resizes and encodes without the GIL
        with ThreadPoolExecutor(max_workers=workers) as pool:
            found = list(pool.map(lambda rel: _picture(folder, rel), unique))
    missing = [rel for rel, pic in zip(unique, found) if pic is None]
    if missing:
        log.warning("%d picture(s) missing or unreadable in %s, e.g. %r", len(missing), folder, missing[0])
    return dict(zip(unique, found))


def _picture(folder: Path, rel: str) -> _Picture | None:
    src = Path(rel) if os.path.isabs(rel) else folder / rel
    url = _link(rel)
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
        write_bytes(thumb, buf.getvalue())
    except (OSError, ValueError, Image.DecompressionBombError) as err:
        log.debug("no picture for %r: %s", rel, err)
        return None
    return _Picture(url, thumb_url)


def _link(rel: str) -> str:
    """The page's URL of a file named in ``files`` (relative to the folder, or absolute)."""
    return Path(rel).as_uri() if os.path.isabs(rel) else quote(rel.replace(os.sep, "/"), safe="/")


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
) -> dict[str, Any]:
    """One row as the page's script reads it (short, flat, JSON-safe: odd values become ``None``)."""
    ok = row.status == "ok"
    out: dict[str, Any] = {"idx": row.idx, "name": name, "path": row.input or None, "ok": ok}
    if not ok:
        out["error"] = row.error or "failed (no reason given)"
        return out
    cells: list[list[str] | None] = []
    for key in columns:
        rel = row.files.get(key)
        pic = pictures.get(rel) if rel is not None else None
        cells.append([pic.src, pic.thumb] if pic else None)
    targets = row.targets or []
    panel = row.files.get(_PANEL)
    out.update(
        explains=_explains(row, targets),
        targets=[_class_text(t) for t in targets] or None,
        targetProbs=[_prob(t.probability) for t in targets] or None,
        panel=_link(panel) if panel else None,
        cls=row.class_index,
        label=row.class_name,
        prob=_prob(row.probability),
        top5=[[c.class_index, c.class_name, _prob(c.probability)] for c in row.top5],
        img=cells,
    )
    return out


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


def _settings_table(settings: Mapping[str, Any]) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """(label, text) rows of the settings: the main ones, then the others."""
    keys = [k for k in _SETTING_LABELS if k in settings]
    keys += [k for k in settings if k not in _SETTING_LABELS and k not in _HIDDEN_SETTINGS]
    main: list[tuple[str, str]] = []
    more: list[tuple[str, str]] = []
    for key in keys:
        text = _words(settings[key])
        if len(text) > _MAX_TEXT:
            text = text[: _MAX_TEXT - 1] + "…"
        label = _SETTING_LABELS.get(key, key.replace("_", " ").capitalize())
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


