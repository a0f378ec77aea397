"""Folder in -> maps, index and errors out: the batch job behind the ``guided-backprop`` command.

One process (or each ``torchrun`` rank, which takes every ``WORLD_SIZE``-th input) runs a pipeline
whose stages overlap:

1. **decode** in ``DataLoader`` worker processes (:func:`images.load_image` + the model's
   :class:`~guided_backprop.preprocessing.Preprocessing`); a file that cannot be read becomes an
   error record, never an exception;
2. **compute** on the device in batches of same-size tensors (inputs of varying size, i.e. a
   preprocessing without a crop, are grouped by size), one forward pass for every method and target;
3. **write** in background threads: rendering (:mod:`.render`), PNG encoding and atomic saves;
   then one line in the rank's journal.

Queues are bounded (prefetch, pending batch, writer backlog), so memory stays flat for any number of
images. Every file is written to a temporary name and renamed; the journal
(``OUT/.guided-backprop/journal-RANK.jsonl``, one line per finished input, written after its files)
lets a rerun of the same command skip the inputs that are complete. The final ``index.jsonl``,
``predictions.csv`` and ``run.json`` are written (atomically) by rank 0 once every rank is done.

Output folder contract (read by :mod:`.report`):

* ``run.json``: the settings (model, weights, preprocessing in words, methods, normalization, target,
  version, started / finished, counts);
* ``index.jsonl``: one JSON object per input, in input order::

    {"idx": 0, "input": "/abs/path.jpg", "status": "ok" | "error", "error": null | "reason",
     "class_index": 285, "class_name": "Egyptian cat", "probability": 0.76,        # the prediction
     "top5": [[285, "Egyptian cat", 0.76], ...],
     "targets": [[285, "Egyptian cat", 0.76], ...] | null,  # the explained classes, one per rank
     "layer_target": null | {"layer": ..., "channel": ..., "neuron": ..., "positions": [[y, x]], "scores": [..]},
     "files": {"input": "im_0.png", "guided_backprop": "map_0_class_285.png", ...},
     "raw": {"guided_backprop": "map_0_class_285.npy", ...}}           # with save_raw only

  ``files`` keys are ``"input"`` and the method names; with several target classes (top-k) the
  maps of rank r >= 2 are under ``"<method>_top<r>"``. File names are relative to the folder.
* ``predictions.csv``: the same, flattened (``top<r>_class_index`` ..., ``file_<key>``, ``raw_<key>``).
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import hashlib
import io
import json
import os
import re
import signal
import string
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path, PurePosixPath
from typing import Any, NamedTuple

import numpy as np
import torch

from . import __version__, images, render
from .atomic import safe_name, write_bytes, write_text
from .attribution import Explainer, find_layer, model_state
from .methods import parse_methods
from .errors import ExitCode, GuidedBackpropError, ImageError, InputError, ModelError, TargetError, UnknownNameError
from .targets import Channel, MaxNeuron, Neuron, Target, TopK

__all__ = [
    "DEFAULT_INPUT_NAME",
    "EXIT_FAILED",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_SOME_FAILED",
    "EXIT_USAGE",
    "PeerFailed",
    "MAP_NAME_FIELDS",
    "STATE_DIR",
    "BatchConfig",
    "BatchResult",
    "default_map_name",
    "run",
]

# Kept as module names for code written against them; the one table is errors.ExitCode.
EXIT_OK = ExitCode.OK
EXIT_SOME_FAILED = ExitCode.SOME_FAILED
EXIT_USAGE = ExitCode.USAGE
EXIT_FAILED = ExitCode.FAILED
EXIT_INTERRUPTED = ExitCode.INTERRUPTED

#: Hidden folder inside the output folder: resume journal, job settings, lock.
STATE_DIR = ".guided-backprop"
DEFAULT_INPUT_NAME = "im_{idx}.png"
PANEL_NAME = "panel_{idx}.png"  # with --panel
#: Fields a ``--name`` template may use.
MAP_NAME_FIELDS = ("idx", "stem", "label", "class_index", "method", "rank", "layer", "channel")
INPUT_NAME_FIELDS = ("idx", "stem")
_TOP5 = 5


# ----------------------------------------------------------------------------------------------- config


@dataclass
class BatchConfig:
    """Everything a batch run needs besides its inputs and output folder (the CLI's options).

    ``target``: ``None``/``"top1"`` (each image's predicted class), ``"top<k>"``, a class index or a
    class name; or a layer target with ``layer`` + ``channel`` (``neuron``: ``None`` for the whole
    channel, ``"max"`` for its most active unit, ``"y,x"`` for one unit). ``name``: template of the
    map file names (fields :data:`MAP_NAME_FIELDS`; default :func:`default_map_name`).
    ``input_size`` sets the crop to N and scales the resize like the model's (e.g. 256/224);
    ``resize``/``crop`` (an int, or ``None`` for none) override the model's preprocessing.
    """

    model: str | None = None  # None: models.DEFAULT_MODEL
    weights: str | None = None
    labels: str | None = None
    num_classes: int | None = None
    trust_checkpoint: bool = False
    input_size: int | None = None
    resize: int | None | str = "model"
    crop: int | None | str = "model"
    methods: Sequence[str] = ("guided_backprop",)
    target: str | int | None = None
    layer: str | None = None
    channel: int | None = None
    neuron: str | None = None
    gradcam_layer: str | None = None
    smooth: int = 0
    noise: float = 0.15
    seed: int = 0
    norm: str = "percentile"
    name: str | None = None
    input_name: str = DEFAULT_INPUT_NAME
    save_raw: bool = False
    panel: bool = False  # also write panel_{idx}.png: the input then every method's map, titled
    device: str = "auto"
    batch_size: int = 8
    workers: int = 2
    overwrite: bool = False


@dataclass
class BatchResult:
    """What a run did. ``images``/``ok``/``failed``/``maps`` describe the whole output folder (all ranks)."""

    output: Path
    images: int = 0  # inputs of this run
    ok: int = 0
    failed: int = 0
    maps: int = 0  # map files listed in the index
    computed: int = 0  # inputs processed by this invocation (the others were complete already)
    resumed: int = 0  # inputs skipped because a previous run finished them
    seconds: float = 0.0
    interrupted: bool = False
    rank: int = 0
    world_size: int = 1
    errors: list[str] = field(default_factory=list)  # this rank's error lines
    index: Path | None = None

    @property
    def rate(self) -> float:
        """Inputs per second processed by this invocation."""
        return self.computed / self.seconds if self.seconds > 0 else 0.0

    @property
    def exit_code(self) -> int:
        """0, 1 (some inputs failed) or 130 (interrupted).

        Under torchrun only rank 0 returns 1: torchrun stops the other processes as soon as one
        exits non-zero, which must not happen while rank 0 is still writing the index.
        """
        if self.interrupted:
            return EXIT_INTERRUPTED
        return EXIT_SOME_FAILED if self.failed and self.rank == 0 else EXIT_OK

    def summary(self) -> str:
        """One line: ``N images, M maps, F failed in S s (X img/s) -> OUT``."""
        done = f" ({self.resumed} already done)" if self.resumed else ""
        return (f"{self.images} images{done}, {self.maps} maps, {self.failed} failed in {self.seconds:.1f} s "
                f"({self.rate:.1f} img/s) -> {self.output}")


# ------------------------------------------------------------------------------------------ file names


def default_map_name(methods: Sequence[str], k: int = 1, *, layer_target: bool = False) -> str:
    """The seed's ``map_{idx}_class_{class_index}.png``, kept unique when more is asked.

    ``_{method}`` is added only when several methods are computed, ``_top{rank}`` only when several
    classes per image are explained (``--target top5``). A layer target gives
    ``map_{idx}_{layer}_ch{channel}.png``.
    """
    stem = "map_{idx}_{layer}_ch{channel}" if layer_target else "map_{idx}_class_{class_index}"
    if len(methods) > 1:
        stem += "_{method}"
    if k > 1 and not layer_target:
        stem += "_top{rank}"
    return stem + ".png"


def _template_fields(template: str, allowed: Sequence[str], what: str) -> set[str]:
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as err:
        raise GuidedBackpropError(
            f"{what} template {template!r} is malformed ({err}); write fields as {{idx}}"
        ) from err
    used = set()
    for _text, name, _spec, _conv in parsed:
        if name is None:
            continue
        if name not in allowed:
            raise UnknownNameError(f"{what} field", name, allowed,
                                   hint="write fields in braces, e.g. 'map_{idx}_{label}.png'")
        used.add(name)
    parts = PurePosixPath(template.replace("\\", "/")).parts
    if template.startswith(("/", "\\")) or ".." in parts or not template.strip():
        raise GuidedBackpropError(f"{what} template {template!r} must be a relative path inside the output folder")
    return used


def _fill(template: str, **fields: Any) -> str:
    name = template.format(**fields)
    return name if Path(name).suffix else name + ".png"


# ----------------------------------------------------------------------------------------------- decode


class _Decoded(NamedTuple):
    idx: int
    path: str
    tensor: torch.Tensor | None
    error: str | None


class _DecodeDataset(torch.utils.data.Dataset):
    """(global idx, path) -> decoded, preprocessed tensor, or an error record (never raises)."""

    def __init__(self, items: Sequence[tuple[int, str]], preprocessing: Any) -> None:
        self.items = list(items)
        self.preprocessing = preprocessing

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> _Decoded:
        idx, path = self.items[i]
        try:
            tensor = self.preprocessing(images.load_image(path))
        except ImageError as err:
            return _Decoded(idx, path, None, _one_line(str(err)))
        except Exception as err:  # preprocessing of a strange picture; report it, keep going
            return _Decoded(idx, path, None, _one_line(f"cannot read image {path!r}: {type(err).__name__}: {err}"))
        return _Decoded(idx, path, tensor, None)


def _pass_through(item: _Decoded) -> _Decoded:
    """The DataLoader's collate: items travel one by one, errors included (batched after decoding)."""
    return item


def _map_count(rec: dict[str, Any]) -> int:
    """Maps written for one input (its files but the input picture and the panel)."""
    return sum(1 for key in rec["files"] if key not in ("input", "panel"))


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


# ----------------------------------------------------------------------------------------- distributed


class PeerFailed(GuidedBackpropError):
    """Another ``torchrun`` process of the run failed and printed why; this one stops quietly."""

    quiet = True

    def __init__(self, message: str, exit_code: int = EXIT_USAGE) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def _exit_code_of(error: BaseException) -> int:
    if isinstance(error, KeyboardInterrupt):
        return EXIT_INTERRUPTED
    if isinstance(error, PeerFailed):
        return error.exit_code
    return EXIT_USAGE if isinstance(error, GuidedBackpropError) else EXIT_FAILED


class _Dist:
    """RANK / WORLD_SIZE from the environment (torchrun); collectives are no-ops for one process."""

    def __init__(self, device: torch.device) -> None:
        self.world = int(os.environ.get("WORLD_SIZE", "1") or 1)
        self.rank = int(os.environ.get("RANK", "0") or 0)
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0") or 0)
        self.owned = False
        self.device = torch.device("cpu")
        if self.world > 1:
            import torch.distributed as dist

            if not dist.is_available():
                raise GuidedBackpropError("WORLD_SIZE > 1 but this PyTorch build has no torch.distributed")
            if not dist.is_initialized():
                # NCCL needs one GPU per process; more processes than GPUs on a node fall back to gloo.
                per_node = int(os.environ.get("LOCAL_WORLD_SIZE", self.world) or self.world)
                gpus = torch.cuda.device_count() if device.type == "cuda" else 0
                backend = "nccl" if gpus >= per_node and dist.is_nccl_available() else "gloo"
                dist.init_process_group(backend=backend)
                self.owned = True
            if dist.get_backend() == "nccl":
                self.device = device
            self.rank, self.world = dist.get_rank(), dist.get_world_size()

    def sum(self, values: Sequence[float]) -> list[float]:
        if self.world == 1:
            return [float(v) for v in values]
        import torch.distributed as dist

        t = torch.tensor([float(v) for v in values], dtype=torch.float64, device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return t.tolist()

    def agree(self, error: BaseException | None) -> None:
        """Every rank calls this; if any rank had an error, every rank raises.

        The lowest failing rank raises its own error (the CLI prints it); the others raise a quiet
        :class:`PeerFailed`, so a message is printed once, not once per process.
        """
        if self.world == 1:
            if error is not None:
                raise error
            return
        import torch.distributed as dist

        flags = torch.zeros(self.world, dtype=torch.int64, device=self.device)
        flags[self.rank] = 0 if error is None else _exit_code_of(error)
        dist.all_reduce(flags, op=dist.ReduceOp.SUM)
        failed = [(r, int(c)) for r, c in enumerate(flags.tolist()) if c]
        if not failed:
            return
        first, code = failed[0]
        if first == self.rank and error is not None:
            raise error
        raise PeerFailed(f"process {first} of this run failed (see its message)", code)

    def close(self) -> None:
        if self.owned:
            import torch.distributed as dist

            with contextlib.suppress(Exception):
                dist.destroy_process_group()


def _resolve_device(name: str, local_rank: int, world: int) -> torch.device:
    key = str(name).strip().lower()
    if key == "auto":
        key = "cuda" if torch.cuda.is_available() else "cpu"
    if key.startswith("cuda"):
        if not torch.cuda.is_available():
            raise GuidedBackpropError(f"device {name!r}: CUDA is not available on this machine; use --device cpu")
        if key == "cuda":
            return torch.device("cuda", local_rank % torch.cuda.device_count() if world > 1 else 0)
        return torch.device(key)
    if key == "cpu":
        return torch.device("cpu")
    raise UnknownNameError("device", name, ("auto", "cpu", "cuda", "cuda:N"))


# --------------------------------------------------------------------------------------------- atomics


def _npy_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(array), allow_pickle=False)
    return buf.getvalue()


def _sweep_temp_files(folder: Path) -> int:
    """Remove ``.*.tmp`` files left by a run killed mid-write (ours and :func:`render.save_image`'s)."""
    removed = 0
    for dirpath, _dirnames, filenames in os.walk(folder):
        for f in filenames:
            if f.startswith(".") and f.endswith(".tmp"):
                with contextlib.suppress(OSError):
                    os.unlink(os.path.join(dirpath, f))
                    removed += 1
    return removed


class _Journal:
    """Append-only JSON lines, one per finished input; a line is written after the input's files."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._lock = threading.Lock()
        self._fh = open(path, "ab")  # noqa: SIM115 - closed in close()
        if self._fh.tell() > 0:  # a line cut by a kill: end it, so the next one starts clean
            with open(path, "rb") as fh:
                fh.seek(-1, os.SEEK_END)
                if fh.read(1) != b"\n":
                    self._fh.write(b"\n")
                    self._fh.flush()

    def write(self, record: dict[str, Any]) -> None:
        line = (json.dumps(record, ensure_ascii=False) + "\n").encode("utf-8")
        with self._lock:
            self._fh.write(line)
            self._fh.flush()

    def close(self) -> None:
        with self._lock:
            if not self._fh.closed:
                self._fh.flush()
                with contextlib.suppress(OSError):
                    os.fsync(self._fh.fileno())
                self._fh.close()


def _read_journals(state: Path, fingerprint: str) -> dict[int, dict[str, Any]]:
    """The newest record of each idx over every journal in ``state`` that matches ``fingerprint``."""
    best: dict[int, dict[str, Any]] = {}
    for path in sorted(state.glob("journal-*.jsonl")):
        try:
            data = path.read_bytes()
        except OSError:
            continue
        for line in data.split(b"\n"):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except ValueError:
                continue  # a line cut by a kill
            if not isinstance(rec, dict) or rec.get("_fp") != fingerprint or not isinstance(rec.get("idx"), int):
                continue
            old = best.get(rec["idx"])
            if old is None or float(rec.get("_t", 0)) >= float(old.get("_t", 0)):
                best[rec["idx"]] = rec
    return best


def _complete(rec: dict[str, Any] | None, path: str, out: Path) -> bool:
    """A journal record that says this input is done and whose files all exist."""
    if not rec or rec.get("status") != "ok" or rec.get("input") != path:
        return False
    names = list((rec.get("files") or {}).values()) + list((rec.get("raw") or {}).values())
    return bool(names) and all((out / n).is_file() for n in names)


# ------------------------------------------------------------------------------------------------- plan


@dataclass
class _Plan:
    """Everything resolved from the config before any image is read."""

    loaded: Any
    device: torch.device
    preprocessing: Any
    methods: tuple[str, ...]
    target: Target
    k: int
    layer_target: Channel | Neuron | MaxNeuron | None
    target_text: str
    map_template: str
    input_template: str
    settings: dict[str, Any]
    fingerprint: str
    file_keys: list[str]
    gradcam_layer: str | None


def _apply_preprocessing(pre: Any, cfg: BatchConfig) -> Any:
    """The model's preprocessing with ``--input-size`` / ``--resize`` / ``--crop`` applied."""
    changes: dict[str, Any] = {}
    if cfg.input_size is not None:  # the size the network sees, in the model's own convention
        n = int(cfg.input_size)
        if n < 1:
            raise GuidedBackpropError(f"input size must be >= 1, got {n}")
        if pre.crop is not None:  # resize then crop: keep the model's ratio (e.g. 256/224)
            crop = pre.crop if isinstance(pre.crop, int) else min(pre.crop)
            resize = pre.resize if isinstance(pre.resize, int) else None
            changes["crop"] = n
            changes["resize"] = max(n, round(n * resize / crop)) if resize else None
        elif isinstance(pre.resize, tuple):  # a direct resize to a fixed size
            changes["resize"] = (n, n)
        else:  # shorter side to n, whole picture (variable sizes)
            changes["resize"] = n
    for what in ("resize", "crop"):
        value = getattr(cfg, what)
        if value != "model":
            changes[what] = None if value in (None, "none", 0) else int(value)
    return dataclasses.replace(pre, **changes) if changes else pre


def _parse_target(cfg: BatchConfig, loaded: Any) -> tuple[Target, int, Any, str]:
    """(engine target, classes per image, layer target or None, description)."""
    model = loaded.model
    if cfg.layer is not None or cfg.channel is not None or cfg.neuron is not None:
        if cfg.target not in (None, "top1"):
            raise TargetError(f"--target {cfg.target!r} and --layer are exclusive: a map explains a class or a unit")
        if cfg.layer is None or cfg.channel is None:
            raise TargetError("a layer target needs both --layer NAME and --channel C")
        find_layer(model, cfg.layer)
        channel = int(cfg.channel)
        if channel < 0:
            raise TargetError(f"--channel must be >= 0, got {channel}")
        neuron = None if cfg.neuron is None else str(cfg.neuron).strip().lower()
        lt: Channel | Neuron | MaxNeuron
        if neuron in (None, "", "all", "sum"):
            lt, desc = Channel(cfg.layer, channel), f"layer {cfg.layer} channel {channel} (summed)"
        elif neuron == "max":
            lt, desc = MaxNeuron(cfg.layer, channel), f"layer {cfg.layer} channel {channel} (most active unit)"
        else:
            m = re.fullmatch(r"\s*(\d+)\s*,\s*(\d+)\s*", neuron)
            if not m:
                raise TargetError(f"--neuron {cfg.neuron!r}: give 'max' or 'Y,X' (a unit's position)")
            y, x = int(m.group(1)), int(m.group(2))
            lt, desc = Neuron(cfg.layer, channel, y, x), f"layer {cfg.layer} channel {channel} unit (y={y}, x={x})"
        return lt, 1, lt, desc
    spec = cfg.target
    if spec is None or (isinstance(spec, str) and spec.strip().lower() in ("", "top1", "top-1", "top")):
        return None, 1, None, "top1 (each image's predicted class)"
    if isinstance(spec, str):
        m = re.fullmatch(r"\s*top-?(\d+)\s*", spec.lower())
        if m:
            k = int(m.group(1))
            n_classes = len(loaded.labels)
            if k < 1 or (n_classes and k > n_classes):
                raise TargetError(f"--target {spec!r}: k must be 1..{n_classes} for a model with {n_classes} classes")
            if k == 1:
                return None, 1, None, "top1 (each image's predicted class)"
            return TopK(k), k, None, f"top{k} (each image's {k} best classes)"
    index = int(loaded.class_index(spec if not isinstance(spec, str) else spec.strip()))
    return index, 1, None, f"class {index} ({loaded.label(index)})"


def _input_paths(inputs: Sequence[str], out: Path) -> list[Path]:
    """:func:`images.find_images`, minus what lies in the output folder (our own maps, on a rerun)."""
    found = images.find_images(inputs)
    home = out.resolve()
    paths = [p for p in found if not p.resolve().is_relative_to(home)]
    if not paths:
        raise InputError(f"every image found is inside the output folder {str(out)!r} (earlier outputs are not "
                         f"inputs); give other inputs or another --output")
    return paths


def _plan(paths: list[Path], cfg: BatchConfig, device: torch.device) -> _Plan:
    from . import models

    if cfg.batch_size < 1:
        raise GuidedBackpropError(f"batch size must be >= 1, got {cfg.batch_size}")
    if cfg.workers < 0:
        raise GuidedBackpropError(f"workers must be >= 0, got {cfg.workers}")
    if cfg.smooth < 0 or cfg.noise < 0:
        raise GuidedBackpropError(f"--smooth and --noise must be >= 0, got {cfg.smooth} and {cfg.noise}")
    if cfg.norm not in render.NORMALIZATIONS:
        raise UnknownNameError("normalization", cfg.norm, render.NORMALIZATIONS)
    methods = parse_methods(list(cfg.methods))
    model_name = cfg.model or models.DEFAULT_MODEL
    loaded = models.load_model(
        model_name, weights=cfg.weights, labels=cfg.labels, num_classes=cfg.num_classes,
        trust_checkpoint=cfg.trust_checkpoint, device=device,
    )
    pre = _apply_preprocessing(loaded.preprocessing, cfg)
    gradcam_layer = cfg.gradcam_layer or getattr(loaded, "gradcam_layer", None)
    if gradcam_layer is not None:
        find_layer(loaded.model, gradcam_layer)
    target, k, layer_target, target_text = _parse_target(cfg, loaded)

    map_template = cfg.name or default_map_name(methods, k, layer_target=layer_target is not None)
    used = _template_fields(map_template, MAP_NAME_FIELDS, "--name")
    in_used = _template_fields(cfg.input_name, INPUT_NAME_FIELDS, "--input-name")
    if not used & {"idx", "stem"}:
        raise GuidedBackpropError(f"--name {map_template!r} must contain {{idx}} or {{stem}}, or every image "
                                  f"would write the same file")
    if len(methods) > 1 and "method" not in used:
        raise GuidedBackpropError(f"--name {map_template!r} needs {{method}}: several methods are computed")
    if k > 1 and not used & {"rank", "class_index", "label"}:
        raise GuidedBackpropError(f"--name {map_template!r} needs {{rank}}: {k} classes are explained per image")
    if not in_used & {"idx", "stem"}:
        raise GuidedBackpropError(f"--input-name {cfg.input_name!r} must contain {{idx}} or {{stem}}")
    for template, fields in ((map_template, used), (cfg.input_name, in_used)):
        if "stem" in fields and "idx" not in fields:
            seen: dict[str, Path] = {}
            for p in paths:
                key = safe_name(p.stem).lower()
                if key in seen:
                    raise InputError(f"inputs {str(seen[key])!r} and {str(p)!r} give the same {{stem}}, so "
                                     f"{template!r} would write one file for both; add {{idx}} to the template")
                seen[key] = p
    sample = dict(idx=0, stem="s", label="l", class_index=0, rank=1, layer="x", channel=0)
    names = [_fill(map_template, method=m, **sample) for m in methods] + [_fill(cfg.input_name, **sample)]
    if cfg.panel:
        names.append(_fill(PANEL_NAME, **sample))
    if len(set(names)) != len(names):
        raise GuidedBackpropError(f"--name {map_template!r} and --input-name {cfg.input_name!r} give the same "
                                  f"file name; make them differ")

    file_keys = ["input"] + [m if r == 1 else f"{m}_top{r}" for m in methods for r in range(1, k + 1)]
    if cfg.panel:
        file_keys.append("panel")
    weights_text = getattr(loaded, "weights", None)
    settings = {
        "model": model_name,
        "weights": None if cfg.weights is None else str(Path(cfg.weights).expanduser().resolve()),
        "labels": None if cfg.labels is None else str(Path(cfg.labels).expanduser().resolve()),
        "num_classes": cfg.num_classes,
        "preprocessing": repr(pre),
        "methods": list(methods),
        "target": target_text,
        "gradcam_layer": gradcam_layer,
        "smooth": int(cfg.smooth),
        "noise": float(cfg.noise) if cfg.smooth else None,
        "seed": int(cfg.seed) if cfg.smooth else None,
        "norm": cfg.norm,
        "name": map_template,
        "input_name": cfg.input_name,
        "save_raw": bool(cfg.save_raw),
        "panel": bool(cfg.panel),
        "weights_description": weights_text,
    }
    fingerprint = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]
    return _Plan(loaded, device, pre, methods, target, k, layer_target, target_text, map_template,
                 cfg.input_name, settings, fingerprint, file_keys, gradcam_layer)


# ---------------------------------------------------------------------------------------------- writer


class _Writer:
    """Background threads that render, encode and save; at most ``backlog`` jobs wait."""

    def __init__(self, threads: int, backlog: int) -> None:
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="gbp-writer")
        self._slots = threading.BoundedSemaphore(backlog)

    def submit(self, fn: Callable[[], None]) -> None:
        """Queue ``fn``; blocks while ``backlog`` jobs are waiting or running (back-pressure)."""
        self._slots.acquire()
        try:
            fut = self._pool.submit(fn)
        except BaseException:
            self._slots.release()
            raise
        fut.add_done_callback(self._done)

    def _done(self, _fut: Future[None]) -> None:
        self._slots.release()

    def close(self, *, cancel: bool = False) -> None:
        """Wait for the running jobs; drop the waiting ones when ``cancel`` (Ctrl-C)."""
        self._pool.shutdown(wait=True, cancel_futures=cancel)


# --------------------------------------------------------------------------------------------- the job


class _Job:
    def __init__(self, plan: _Plan, out: Path, cfg: BatchConfig, dist: _Dist, log: Callable[[str], None]) -> None:
        self.plan = plan
        self.out = out
        self.cfg = cfg
        self.dist = dist
        self.log = log
        self.explainer = Explainer(plan.loaded.model)
        self.labels = list(plan.loaded.labels)
        self._lock = threading.Lock()
        self.ok = 0
        self.failed = 0
        self.maps = 0
        self.errors: list[str] = []
        self.journal: _Journal | None = None
        self.fatal: BaseException | None = None

    # -- records -------------------------------------------------------------------------------
    def _record(self, idx: int, path: str, **fields: Any) -> dict[str, Any]:
        rec: dict[str, Any] = {"idx": idx, "input": path, "status": "ok", "error": None, "class_index": None,
                               "class_name": None, "probability": None, "top5": [], "targets": None,
                               "layer_target": None, "files": {}}
        if self.cfg.save_raw:
            rec["raw"] = {}
        rec.update(fields)
        rec["_fp"] = self.plan.fingerprint
        rec["_t"] = time.time()
        rec["_rank"] = self.dist.rank
        return rec

    def fail(self, idx: int, path: str, reason: str) -> None:
        reason = _one_line(reason)
        assert self.journal is not None
        self.journal.write(self._record(idx, path, status="error", error=reason))
        with self._lock:
            self.failed += 1
            self.errors.append(reason)
        self.log(f"error: {reason}")

    # -- compute -------------------------------------------------------------------------------
    def _predict(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad(), model_state(self.plan.loaded.model):
            out = self.plan.loaded.model(x)
        if not isinstance(out, torch.Tensor):
            out = getattr(out, "logits", None)
        if not isinstance(out, torch.Tensor) or out.ndim != 2:
            raise ModelError("the model does not return (N, classes) logits, so its predictions cannot be listed")
        return out

    def _explain(self, items: list[_Decoded]) -> Any:
        x = torch.stack([it.tensor for it in items]).to(self.plan.device, non_blocking=True)  # type: ignore[misc]
        cfg, plan = self.cfg, self.plan
        if cfg.smooth > 0:  # one generator per image: maps do not depend on how images were batched
            parts = []
            for i, it in enumerate(items):
                gen = torch.Generator().manual_seed((int(cfg.seed) * 1_000_003 + it.idx) % (2**63))
                parts.append(self.explainer.explain(x[i:i + 1], plan.target, methods=plan.methods,
                                                    gradcam_layer=plan.gradcam_layer, smooth=cfg.smooth,
                                                    noise=cfg.noise, generator=gen))
            e = parts[0]
            if len(parts) > 1:
                e.maps = {m: torch.cat([p.maps[m] for p in parts]) for m in e.maps}
                e.scores = torch.cat([p.scores for p in parts])
                e.targets = None if e.targets is None else torch.cat([p.targets for p in parts])
                e.logits = None if e.logits is None else torch.cat([p.logits for p in parts])
                e.positions = None if e.positions is None else torch.cat([p.positions for p in parts])
        else:
            e = self.explainer.explain(x, plan.target, methods=plan.methods, gradcam_layer=plan.gradcam_layer)
        logits = e.logits if e.logits is not None else self._predict(x)
        return e, logits

    def compute(self, items: list[_Decoded], writer: _Writer) -> None:
        try:
            e, logits = self._explain(items)
        except InputError as err:  # the forward failed: find out which input it was
            if len(items) > 1:
                for it in items:
                    self.compute([it], writer)
                return
            self.fail(items[0].idx, items[0].path, f"cannot process {items[0].path!r}: {err}")
            return
        probs = logits.detach().float().softmax(dim=1).cpu()
        top_p, top_i = probs.topk(min(_TOP5, probs.shape[1]), dim=1)
        maps = {m: v.detach().float().cpu().numpy() for m, v in e.maps.items()}  # (N, K, C, H, W)
        targets = None if e.targets is None else e.targets.cpu()
        scores = e.scores.detach().float().cpu()
        positions = None if e.positions is None else e.positions.cpu()
        for i, it in enumerate(items):
            job = {
                "maps": {m: v[i] for m, v in maps.items()},
                "top5": [(int(c), float(p)) for c, p in zip(top_i[i].tolist(), top_p[i].tolist())],
                "targets": None if targets is None else [(int(c), float(probs[i, c])) for c in targets[i].tolist()],
                "scores": scores[i].tolist(),
                "position": None if positions is None else [int(v) for v in positions[i].tolist()],
            }
            writer.submit(self._writer_job(it, job))

    # -- write ---------------------------------------------------------------------------------
    def _writer_job(self, item: _Decoded, job: dict[str, Any]) -> Callable[[], None]:
        def write() -> None:
            try:
                rec = self._write(item, job)
            except Exception as err:  # disk full, a name too long...: this input failed, the run goes on
                reason = f"cannot write the outputs of {item.path!r}: {type(err).__name__}: {err}"
                self.fail(item.idx, item.path, reason)
                return
            assert self.journal is not None
            self.journal.write(rec)
            with self._lock:
                self.ok += 1
                self.maps += _map_count(rec)
        return write

    def _write(self, item: _Decoded, job: dict[str, Any]) -> dict[str, Any]:
        plan, cfg, out = self.plan, self.cfg, self.out
        top5 = [[c, plan.loaded.label(c), round(p, 6)] for c, p in job["top5"]]
        pred = top5[0][0] if top5 else None
        stem = safe_name(Path(item.path).stem)
        picture = plan.preprocessing.invert(item.tensor)
        files: dict[str, str] = {}
        raw: dict[str, str] = {}
        input_name = _fill(plan.input_template, idx=item.idx, stem=stem)
        render.save_image(picture, out / input_name)
        files["input"] = input_name
        if job["targets"] is not None:
            classes = [c for c, _p in job["targets"]]
        else:
            classes = [pred]
        bgr = bool(getattr(plan.preprocessing, "bgr", False))
        first: dict[str, np.ndarray] = {}  # rank-1 maps, RGB, for the panel
        for method in plan.methods:
            stack = job["maps"][method]  # (K, C, H, W)
            for r in range(stack.shape[0]):
                cls = classes[r] if r < len(classes) else pred
                fields = dict(idx=item.idx, stem=stem, method=method, rank=r + 1,
                              class_index=cls, label=safe_name(plan.loaded.label(cls)) if cls is not None else "none",
                              layer=safe_name(plan.layer_target.layer) if plan.layer_target else "none",
                              channel=plan.layer_target.channel if plan.layer_target else "none")
                name = _fill(plan.map_template, **fields)
                m = stack[r]
                if bgr and m.shape[0] == 3:
                    m = m[::-1]  # the network's BGR channels back to RGB
                if r == 0:
                    first[method] = m
                pic = render.method_picture(method, m, image=picture, norm=cfg.norm)
                render.save_image(pic, out / name)
                key = method if r == 0 else f"{method}_top{r + 1}"
                files[key] = name
                if cfg.save_raw:
                    raw_name = str(Path(name).with_suffix(".npy"))
                    write_bytes(out / raw_name, _npy_bytes(m.astype(np.float32)))
                    raw[key] = raw_name
        if cfg.panel:
            if plan.layer_target is not None:
                what, prob = f"{plan.layer_target.layer} channel {plan.layer_target.channel}", None
            elif job["targets"] is not None:
                what, prob = plan.loaded.label(job["targets"][0][0]), job["targets"][0][1]
            else:
                what, prob = (top5[0][1], top5[0][2]) if top5 else (None, None)
            pic = render.explanation_panel(picture, first, class_name=what, probability=prob, norm=cfg.norm)
            panel_name = _fill(PANEL_NAME, idx=item.idx, stem=stem)
            render.save_image(pic, out / panel_name)
            files["panel"] = panel_name
        fields: dict[str, Any] = {
            "class_index": pred,
            "class_name": top5[0][1] if top5 else None,
            "probability": top5[0][2] if top5 else None,
            "top5": top5,
            "files": files,
        }
        if job["targets"] is not None:
            fields["targets"] = [[c, plan.loaded.label(c), round(p, 6)] for c, p in job["targets"]]
        if plan.layer_target is not None:
            lt = plan.layer_target
            neuron = "max" if isinstance(lt, MaxNeuron) else [lt.y, lt.x] if isinstance(lt, Neuron) else None
            fields["layer_target"] = {"layer": lt.layer, "channel": lt.channel, "neuron": neuron,
                                      "position": job["position"], "score": job["scores"][0]}
        if cfg.save_raw:
            fields["raw"] = raw
        return self._record(item.idx, item.path, **fields)


# ---------------------------------------------------------------------------------------------- run


def _default_log(line: str) -> None:
    from tqdm import tqdm

    tqdm.write(line, file=sys.stderr)


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM (sent by torchrun or a scheduler) stops the run like Ctrl-C: cleanly."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(_signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def _folder_lock(state: Path) -> Iterator[None]:
    """Refuse a second run writing into the same output folder at the same time (POSIX only)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    state.mkdir(parents=True, exist_ok=True)
    fh = open(state / "lock", "a+")  # noqa: SIM115
    try:
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            raise GuidedBackpropError(f"another guided-backprop run is writing to {str(state.parent)!r}; wait for "
                                      f"it to finish or choose another --output") from err
        yield
    finally:
        fh.close()


def _now() -> str:
    return datetime.now().astimezone().isoformat(timespec="seconds")


def _prepare_folder(out: Path, plan: _Plan, cfg: BatchConfig) -> None:
    """Rank 0, before any image: check the folder holds no other job, write job.json and run.json."""
    state = out / STATE_DIR
    job_path = state / "job.json"
    if cfg.overwrite:
        for p in state.glob("journal-*.jsonl"):
            p.unlink()
    elif job_path.is_file():
        try:
            old = json.loads(job_path.read_text(encoding="utf-8")).get("settings", {})
        except (OSError, ValueError, AttributeError):
            old = None
        if old is not None and old != plan.settings:
            diff = [k for k in sorted(set(old) | set(plan.settings)) if old.get(k) != plan.settings.get(k)]
            shown = "; ".join(f"{k}: {old.get(k)!r} -> {plan.settings.get(k)!r}" for k in diff[:3])
            raise GuidedBackpropError(
                f"{str(out)!r} holds the output of a run with other settings ({shown}); rerun with --overwrite "
                f"to replace it, or choose another --output"
            )
    _sweep_temp_files(out)
    write_text(job_path, json.dumps({"fingerprint": plan.fingerprint, "settings": plan.settings}, indent=1))


def _run_json(plan: _Plan, cfg: BatchConfig, inputs: Sequence[str], dist: _Dist, started: str,
              finished: str | None, counts: dict[str, int]) -> str:
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
        "gradcam_layer": plan.gradcam_layer,
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
    return json.dumps(data, indent=1, ensure_ascii=False) + "\n"


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
    write_text(out / "index.jsonl", "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    write_text(out / "predictions.csv", _csv_text(rows, plan.file_keys, plan.settings["save_raw"]))
    # Compact: one journal with the newest record of each input.
    write_text(state / "journal-0.jsonl", "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in kept))
    for p in state.glob("journal-*.jsonl"):
        if p.name != "journal-0.jsonl":
            with contextlib.suppress(OSError):
                p.unlink()
    ok = [r for r in rows if r["status"] == "ok"]
    counts = {"images": len(rows), "ok": len(ok), "failed": len(rows) - len(ok),
              "maps": sum(_map_count(r) for r in ok)}
    return rows, counts


def run(
    inputs: Sequence[str | Path],
    output: str | Path,
    config: BatchConfig | None = None,
    *,
    progress: bool = False,
    log: Callable[[str], None] | None = None,
) -> BatchResult:
    """Compute and save the maps of every image in ``inputs`` (files, folders, globs) into ``output``.

    Returns a :class:`BatchResult` (exit code 0 or 1, or 130 when interrupted). Raises
    :class:`~guided_backprop.errors.GuidedBackpropError` for usage errors (unknown model, layer or
    class, bad template, a folder that holds another run): nothing has been computed then.
    Run under ``torchrun``, each rank takes the inputs ``idx % WORLD_SIZE == RANK``; rank 0 writes
    the index of all of them.
    """
    cfg = config or BatchConfig()
    log = log or _default_log
    out = Path(output).expanduser()
    t0 = time.perf_counter()
    started = _now()
    inputs_text = [os.fspath(i) for i in inputs]

    world_env = int(os.environ.get("WORLD_SIZE", "1") or 1)
    local_rank = int(os.environ.get("LOCAL_RANK", "0") or 0)
    device = _resolve_device(cfg.device, local_rank, world_env)
    dist = _Dist(device)
    try:
        # Setup errors on any rank stop every rank (the collectives below always run).
        error: BaseException | None = None
        plan = paths = None
        try:
            if out.exists() and not out.is_dir():
                raise GuidedBackpropError(f"--output {str(out)!r} is a file, not a folder; give a folder")
            paths = _input_paths(inputs_text, out)
            plan = _plan(paths, cfg, device)
        except BaseException as err:  # noqa: BLE001 - re-raised after the ranks agree
            error = err
        dist.agree(error)
        assert plan is not None and paths is not None
        return _run_planned(plan, paths, out, cfg, dist, inputs_text, started, t0, progress, log)
    finally:
        dist.close()


def _run_planned(plan: _Plan, paths: list[Path], out: Path, cfg: BatchConfig, dist: _Dist,
                 inputs_text: list[str], started: str, t0: float, progress: bool,
                 log: Callable[[str], None]) -> BatchResult:
    state = out / STATE_DIR
    with contextlib.ExitStack() as stack:
        error: BaseException | None = None
        if dist.rank == 0:
            try:
                out.mkdir(parents=True, exist_ok=True)
                stack.enter_context(_folder_lock(state))
                _prepare_folder(out, plan, cfg)
                write_text(out / "run.json", _run_json(plan, cfg, inputs_text, dist, started, None, {}))
            except BaseException as err:  # noqa: BLE001
                error = err
        dist.agree(error)

        mine = [(i, str(p)) for i, p in enumerate(paths) if i % dist.world == dist.rank]
        done = _read_journals(state, plan.fingerprint) if not cfg.overwrite else {}
        todo = [(i, p) for i, p in mine if not _complete(done.get(i), p, out)]
        result = BatchResult(output=out, rank=dist.rank, world_size=dist.world)
        result.resumed = len(mine) - len(todo)

        job = _Job(plan, out, cfg, dist, log)
        job.journal = _Journal(state / f"journal-{dist.rank}.jsonl")
        try:
            with _sigterm_as_interrupt():
                _pipeline(job, todo, progress and dist.rank == 0)
        except KeyboardInterrupt:
            result.interrupted = True
        except Exception as err:  # noqa: BLE001 - raised on every rank by dist.agree below
            job.fatal = err
        finally:
            job.journal.close()

        result.computed = job.ok + job.failed
        result.errors = job.errors
        if result.interrupted:  # no collective: the other ranks are being stopped as well
            result.seconds = time.perf_counter() - t0
            result.failed = job.failed
            result.ok = job.ok
            result.images = len(paths)
            result.maps = job.maps
            return result
        dist.agree(job.fatal)
        computed, resumed = dist.sum([result.computed, result.resumed])
        result.computed, result.resumed = int(computed), int(resumed)
        counts = {"images": 0, "ok": 0, "failed": 0, "maps": 0}
        error = None
        if dist.rank == 0:
            try:
                _rows, counts = _merge(out, plan, paths)
                write_text(out / "run.json", _run_json(plan, cfg, inputs_text, dist, started, _now(), counts))
                result.index = out / "index.jsonl"
            except BaseException as err:  # noqa: BLE001 - after the ranks agree
                error = err
        dist.agree(error)
        totals = dist.sum([counts["images"], counts["ok"], counts["failed"], counts["maps"]])
        result.images, result.ok, result.failed, result.maps = (int(v) for v in totals)
        result.seconds = time.perf_counter() - t0
        return result


def _pipeline(job: _Job, todo: list[tuple[int, str]], progress: bool) -> None:
    from tqdm import tqdm

    cfg = job.cfg
    batch_size = int(cfg.batch_size)
    dataset = _DecodeDataset(todo, job.plan.preprocessing)
    workers = min(int(cfg.workers), max(1, len(todo))) if todo else 0
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=None, shuffle=False, num_workers=workers, collate_fn=_pass_through,
        pin_memory=job.plan.device.type == "cuda", prefetch_factor=max(2, batch_size) if workers else None,
    )
    threads = max(1, min(4, os.cpu_count() or 1))
    writer = _Writer(threads, backlog=2 * batch_size + threads)
    bar = tqdm(total=len(todo), unit="img", disable=not progress, file=sys.stderr, dynamic_ncols=True,
               smoothing=0.05)
    pending: dict[tuple[int, ...], list[_Decoded]] = {}
    n_pending = 0
    cancel = False
    it = iter(loader) if todo else iter(())
    try:
        for item in it:
            if item.error is not None:
                job.fail(item.idx, item.path, item.error)
                bar.update(1)
                continue
            key = tuple(item.tensor.shape)  # type: ignore[union-attr]
            group = pending.setdefault(key, [])
            group.append(item)
            n_pending += 1
            if len(group) >= batch_size:
                job.compute(pending.pop(key), writer)
                n_pending -= len(group)
                bar.update(len(group))
            elif n_pending >= 2 * batch_size:  # many sizes: run what is waiting, keep memory bounded
                for key2 in list(pending):
                    g = pending.pop(key2)
                    job.compute(g, writer)
                    bar.update(len(g))
                n_pending = 0
        for key2 in list(pending):
            g = pending.pop(key2)
            job.compute(g, writer)
            bar.update(len(g))
    except KeyboardInterrupt:
        cancel = True  # Ctrl-C: drop the queued writes (their inputs are redone by a rerun), finish the running ones
        raise
    finally:
        shutdown = getattr(it, "_shutdown_workers", None)
        if shutdown is not None:  # stop the decode workers now, not when garbage is collected
            shutdown()
        del it
        writer.close(cancel=cancel)
        bar.close()
