"""The final outputs written by rank 0: ``index.jsonl``, ``predictions.csv`` (merged journals), ``run.json``."""

from __future__ import annotations

import contextlib
import csv
import io
import json
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from .. import __version__
from ..atomic import write_bytes, write_text
from ..records import IndexRecord, RunRecord, json_text
from .config import STATE_DIR, TOP5
from .dist import Dist
from .journal import read_journals
from .numbering import earlier_outputs, remove_stale
from .plan import Plan


def local_time() -> str:
    return datetime.now().astimezone().isoformat(timespec="seconds")


def run_json(plan: Plan, inputs: Sequence[str], dist: Dist, started: str,
              finished: str | None, counts: dict[str, int], gradcam_layer: str | None) -> str:
    """run.json: the settings in words, the counts, and the Grad-CAM layer the engine used."""
    pre, settings = plan.preprocessing, plan.settings
    size = getattr(pre, "fixed_size", None)
    record = RunRecord(
        tool="guided-backprop",
        version=__version__,
        model=settings.model,
        weights=settings.weights_description,
        labels=settings.labels,
        preprocessing=pre.describe() if hasattr(pre, "describe") else repr(pre),
        input_size=(size[0], size[1]) if size else None,
        methods=list(settings.methods),
        normalization=settings.normalization,
        target=settings.target,
        gradcam_layer=gradcam_layer or settings.gradcam_layer,
        smooth=settings.smooth,
        noise=settings.noise,
        name=settings.name,
        input_name=settings.input_name,
        save_raw=settings.save_raw,
        device=str(plan.device),
        processes=dist.world,
        inputs=[str(i) for i in inputs],
        started=started,
        finished=finished,
        **counts,
        output_kind=getattr(plan.loaded, "kind", "classifier"),
        guidance=plan.guidance,
        notes=list(plan.notes),
    )
    return json_text(record.to_json(), indent=1) + "\n"


def csv_columns(file_keys: Sequence[str], *, save_raw: bool) -> tuple[list[str], list[str]]:
    """``predictions.csv``'s header, and the ``raw`` keys it has columns for (files but input and panel)."""
    header = ["idx", "input", "status", "error", "class_index", "class_name", "probability"]
    for r in range(1, TOP5 + 1):
        header += [f"top{r}_class_index", f"top{r}_class_name", f"top{r}_probability"]
    # What the first map explains, apart from the prediction above (--target person, detections:K...)
    header += ["explained_target", "explained_class_index", "explained_class_name", "explained_value",
               "explained_value_kind", "explained_zero_maps"]
    header += [f"file_{k}" for k in file_keys]
    raw_keys = [k for k in file_keys if k not in ("input", "panel")] if save_raw else []
    return header + [f"raw_{k}" for k in raw_keys], raw_keys


def _csv_text(rows: list[IndexRecord], file_keys: list[str], save_raw: bool) -> str:
    """The index flattened, a row per record."""
    header, raw_keys = csv_columns(file_keys, save_raw=save_raw)
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    for row in rows:
        line = [row.idx, row.input, row.status, row.error or "", _blank(row.class_index), _blank(row.class_name),
                _blank(row.probability)]
        for r in range(TOP5):
            line += [_blank(v) for v in row.top5[r].to_json()] if r < len(row.top5) else ["", "", ""]
        first = (row.explained or [{}])[0]
        line += [_blank(first.get(k)) for k in ("target", "class_index", "class_name", "value", "value_kind")]
        line += [",".join(first.get("zero_maps") or [])]
        line += [row.files.get(k, "") for k in file_keys]
        line += [(row.raw or {}).get(k, "") for k in raw_keys]
        w.writerow(line)
    return buf.getvalue()


def _blank(value: Any) -> Any:
    return "" if value is None else value


def previous_gradcam_layer(path: Path) -> str | None:
    """The Grad-CAM layer of an earlier run.json (``None`` when there is none): what a resumed run keeps."""
    try:
        return RunRecord.from_json(json.loads(path.read_text(encoding="utf-8"))).gradcam_layer
    except (OSError, ValueError):  # none, unreadable, or not a run.json of this version (RecordError)
        return None


def merge_outputs(out: Path, plan: Plan, paths: list[Path], *, sweep: bool = True
           ) -> tuple[list[IndexRecord], dict[str, int], list[str]]:
    """Rank 0, after every rank is done: index.jsonl + predictions.csv from the journals; compact them.

    With ``sweep`` (a finished run), the files of earlier outputs that no row lists any more are removed
    (:func:`.numbering.remove_stale`); their names are returned.
    """
    state = out / STATE_DIR
    earlier = earlier_outputs(out, state) if sweep else set()
    entries = read_journals(state, plan.fingerprint)
    save_raw = plan.settings.save_raw
    rows: list[IndexRecord] = []
    kept = []
    for idx, path in zip(plan.numbers, paths, strict=True):
        entry = entries.get(idx)
        if entry is None or entry.record.input != str(path):
            rows.append(IndexRecord.failed(idx, str(path), f"{str(path)!r} was not processed", save_raw=save_raw))
        else:
            kept.append(entry)
            rows.append(entry.record)
    write_text(out / "index.jsonl", "".join(json_text(r.to_json()) + "\n" for r in rows))
    removed = remove_stale(out, earlier, rows) if sweep else []
    # A file name that is not UTF-8 is written as its own bytes (surrogateescape): CSV has no escapes.
    csv_text = _csv_text(rows, plan.file_keys, save_raw)
    write_bytes(out / "predictions.csv", csv_text.encode("utf-8", "surrogateescape"))
    # Compact: one journal with the newest entry of each input.
    write_text(state / "journal-0.jsonl", "".join(json_text(e.to_json()) + "\n" for e in kept))
    for p in state.glob("journal-*.jsonl"):
        if p.name != "journal-0.jsonl":
            with contextlib.suppress(OSError):
                p.unlink()
    ok = [r for r in rows if r.status == "ok"]
    counts = {"images": len(rows), "ok": len(ok), "failed": len(rows) - len(ok), "maps": sum(r.maps for r in ok)}
    return rows, counts, removed
