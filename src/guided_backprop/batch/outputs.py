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
from .config import _TOP5, STATE_DIR, BatchConfig
from .dist import _Dist
from .job import _map_count
from .journal import _read_journals
from .plan import _Plan
from .records import json_text


def _now() -> str:
    return datetime.now().astimezone().isoformat(timespec="seconds")


def _run_json(plan: _Plan, cfg: BatchConfig, inputs: Sequence[str], dist: _Dist, started: str,
              finished: str | None, counts: dict[str, int], gradcam_layer: str | None) -> str:
    """run.json: the settings in words, the counts, and the Grad-CAM layer the engine used."""
    pre = plan.preprocessing
    data = {
        "tool": "guided-backprop",
        "version": __version__,
        "model": plan.settings["model"],
        "weights": getattr(plan.loaded, "weights", None),
        "labels": plan.settings["labels"],
        "preprocessing": pre.describe() if hasattr(pre, "describe") else repr(pre),
        "input_size": list(pre.fixed_size) if getattr(pre, "fixed_size", None) else None,
        "methods": list(plan.methods),
        "normalization": cfg.norm,
        "target": plan.target_text,
        "gradcam_layer": gradcam_layer or plan.gradcam_layer,
        "smooth": int(cfg.smooth),
        "noise": float(cfg.noise) if cfg.smooth else None,
        "name": plan.map_template,
        "input_name": plan.input_template,
        "save_raw": bool(cfg.save_raw),
        "device": str(plan.device),
        "processes": dist.world,
        "inputs": [str(i) for i in inputs],
        "started": started,
        "finished": finished,
        **counts,
    }
    return json_text(data, indent=1) + "\n"


_PUBLIC_KEYS = ("idx", "input", "status", "error", "class_index", "class_name", "probability", "top5",
                "targets", "layer_target", "files")


def _public(rec: dict[str, Any]) -> dict[str, Any]:
    out = {k: rec.get(k) for k in _PUBLIC_KEYS}
    if "raw" in rec:
        out["raw"] = rec["raw"]
    return out


def _csv_text(rows: list[dict[str, Any]], file_keys: list[str], save_raw: bool) -> str:
    header = ["idx", "input", "status", "error", "class_index", "class_name", "probability"]
    for r in range(1, _TOP5 + 1):
        header += [f"top{r}_class_index", f"top{r}_class_name", f"top{r}_probability"]
    header += [f"file_{k}" for k in file_keys]
    raw_keys = [k for k in file_keys if k != "input"] if save_raw else []
    header += [f"raw_{k}" for k in raw_keys]
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    for row in rows:
        line = [row["idx"], row["input"], row["status"], row["error"] or "", _blank(row["class_index"]),
                _blank(row["class_name"]), _blank(row["probability"])]
        top5 = row.get("top5") or []
        for r in range(_TOP5):
            line += list(top5[r]) if r < len(top5) else ["", "", ""]
        files = row.get("files") or {}
        line += [files.get(k, "") for k in file_keys]
        raw = row.get("raw") or {}
        line += [raw.get(k, "") for k in raw_keys]
        w.writerow(line)
    return buf.getvalue()


def _blank(value: Any) -> Any:
    return "" if value is None else value


def _previous(path: Path, key: str) -> Any:
    """``key`` of an earlier run.json (``None`` when there is none): what a resumed run keeps."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data.get(key) if isinstance(data, dict) else None


def _merge(out: Path, plan: _Plan, paths: list[Path]) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """Rank 0, after every rank is done: index.jsonl + predictions.csv from the journals; compact them."""
    state = out / STATE_DIR
    records = _read_journals(state, plan.fingerprint)
    rows = []
    kept = []
    for idx, path in enumerate(paths):
        rec = records.get(idx)
        if rec is None or rec.get("input") != str(path):
            rec = {"idx": idx, "input": str(path), "status": "error", "error": f"{str(path)!r} was not processed",
                   "files": {}, "top5": []}
        else:
            kept.append(rec)
        rows.append(_public(rec))
    write_text(out / "index.jsonl", "".join(json_text(r) + "\n" for r in rows))
    # A file name that is not UTF-8 is written as its own bytes (surrogateescape): CSV has no escapes.
    csv_text = _csv_text(rows, plan.file_keys, plan.settings["save_raw"])
    write_bytes(out / "predictions.csv", csv_text.encode("utf-8", "surrogateescape"))
    # Compact: one journal with the newest record of each input.
    write_text(state / "journal-0.jsonl", "".join(json_text(r) + "\n" for r in kept))
    for p in state.glob("journal-*.jsonl"):
        if p.name != "journal-0.jsonl":
            with contextlib.suppress(OSError):
                p.unlink()
    ok = [r for r in rows if r["status"] == "ok"]
    counts = {"images": len(rows), "ok": len(ok), "failed": len(rows) - len(ok),
              "maps": sum(_map_count(r) for r in ok)}
    return rows, counts
