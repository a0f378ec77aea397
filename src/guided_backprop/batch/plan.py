"""Planning: everything resolved from the config (model, preprocessing, target, names) before any image."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .. import images
from ..atomic import safe_name
from ..attribution import find_layer
from ..errors import GuidedBackpropError, InputError, TargetError, UnknownNameError
from ..methods import parse_methods
from ..pictures import render
from ..targets import (
    Box,
    Channel,
    MaxNeuron,
    Neuron,
    Region,
    Target,
    TopK,
    parse_class_target,
    parse_neuron,
    parse_target,
)
from .config import STATE_DIR, BatchConfig
from .identity import Digests, model_source_file
from .names import INPUT_NAME_FIELDS, MAP_NAME_FIELDS, PANEL_NAME, default_map_name, fill_template, template_fields
from .numbering import input_numbers


@dataclass(frozen=True)
class RunSettings:
    """What a run's maps depend on, resolved once by planning: ``job.json``'s settings (a rerun whose
    settings differ is refused, their :attr:`fingerprint` keys the journal), and the settings ``run.json``
    states (:func:`.outputs.run_record`). The job reads them here, never from the config."""

    model: str
    weights: str | None  # a checkpoint's resolved path (or a weights name)
    labels: str | None  # the label file's resolved path
    num_classes: int | None
    preprocessing: str  # repr(Preprocessing)
    methods: tuple[str, ...]
    target: str  # what the maps explain, in words
    gradcam_layer: str | None  # as given (or the model's own); None: the engine's choice
    smooth: int
    noise: float | None  # None without SmoothGrad
    seed: int | None  # None without SmoothGrad
    normalization: str
    name: str  # the map file name template
    input_name: str
    save_raw: bool
    panel: bool
    weights_description: str | None
    # What the maps depend on besides the settings: the bytes of the files the model is made of.
    weights_sha256: str | None
    labels_sha256: str | None
    model_source_sha256: str | None
    output_key: str | int | None = None  # in job.json, not in the fingerprint

    def to_json(self) -> dict[str, Any]:
        """job.json's ``settings`` object (keys in this order)."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        out["methods"] = list(self.methods)
        return out

    @property
    def fingerprint(self) -> str:
        """What the journal's lines are keyed by: the settings but ``output_key``, hashed."""
        keyed = {k: v for k, v in self.to_json().items() if k != "output_key"}
        return hashlib.sha256(json.dumps(keyed, sort_keys=True).encode()).hexdigest()[:16]


@dataclass
class Plan:
    """Everything resolved from the config before any image is read: nothing downstream reads the config."""

    loaded: Any
    device: torch.device
    preprocessing: Any
    settings: RunSettings
    target: Target
    k: int
    layer_target: Channel | Neuron | MaxNeuron | None
    file_keys: list[str]
    digests: Digests
    folders: list[Path]  # the subfolders the outputs are written in (swept of temporary files)
    class_folders: list[Path]  # folders below which the subfolders depend on the class (swept recursively)
    numbers: list[int]  # each input's number ({idx}), stable across reruns (numbering.py)
    number_table: dict[str, int]  # every number the folder has given, saved by rank 0
    # how the work is done (not what the maps are): batches, decode processes, the input size limit, redo all
    batch_size: int = 8
    workers: int = 0
    max_pixels: int = 2048 * 2048
    overwrite: bool = False
    notes: list[str] = field(default_factory=list)  # said on the run's first lines (partial guidance, random weights)
    guidance: str = "yes"  # "yes": every activation is a ReLU; "partly"; "no"

    @property
    def methods(self) -> tuple[str, ...]:
        return self.settings.methods

    @property
    def fingerprint(self) -> str:
        return self.settings.fingerprint


def plan_target(cfg: BatchConfig, loaded: Any) -> tuple[Target, int, Any, str]:
    """(engine target, classes per image, layer target or None, description)."""
    model = loaded.model
    if cfg.layer is not None or cfg.channel is not None or cfg.neuron is not None:
        if parse_class_target(cfg.target) is not None:
            given = f"top{cfg.target.k}" if isinstance(cfg.target, TopK) else cfg.target
            raise TargetError(f"target={given!r} and layer={cfg.layer!r} are exclusive: a map explains a class "
                              f"or a unit", field="target")
        if cfg.layer is None or cfg.channel is None:
            raise TargetError("a layer target needs both layer=NAME and channel=C", field="layer")
        find_layer(model, cfg.layer, field="layer")
        channel = int(cfg.channel)
        if channel < 0:
            raise TargetError(f"channel must be >= 0, got {channel}", field="channel")
        neuron = parse_neuron(cfg.neuron)
        lt: Channel | Neuron | MaxNeuron
        if neuron is None:
            lt, desc = Channel(cfg.layer, channel), f"layer {cfg.layer} channel {channel} (summed)"
        elif neuron == "max":
            lt, desc = MaxNeuron(cfg.layer, channel), f"layer {cfg.layer} channel {channel} (most active unit)"
        else:
            y, x = neuron
            lt, desc = Neuron(cfg.layer, channel, y, x), f"layer {cfg.layer} channel {channel} unit (y={y}, x={x})"
        return lt, 1, lt, desc
    kind = getattr(loaded, "kind", "classifier")
    written = isinstance(cfg.target, str) and re.match(r"\s*(output|similar|detections|box):", cfg.target, re.I)
    if kind != "classifier" or written or cfg.mask is not None:
        return _parse_output_target(cfg, loaded, kind)
    spec = parse_class_target(cfg.target)
    if spec is None:
        return None, 1, None, "top1 (each image's predicted class)"
    if isinstance(spec, TopK):
        k, n_classes = spec.k, len(loaded.labels)
        if n_classes and k > n_classes:
            raise TargetError(f"target='top{k}': k must be 1..{n_classes} for a model with {n_classes} classes",
                              field="target")
        return spec, k, None, f"top{k} (each image's {k} best classes)"
    index = int(loaded.class_index(spec))
    return index, 1, None, f"class {index} ({loaded.label(index)})"


def _parse_output_target(cfg: BatchConfig, loaded: Any, kind: str) -> tuple[Target, int, Any, str]:
    """A target on a segmenter's, detector's or any output (:func:`~..targets.parse_target`): a list of
    engine targets, their class names resolved against the model's."""
    mask = _read_mask(cfg.mask) if cfg.mask is not None else None
    spec = parse_target(cfg.target, kind=kind, mask=mask, score_threshold=float(cfg.score_threshold),
                        read_input=lambda path: loaded.prepare(images.load_image(path))[0])
    items = spec if isinstance(spec, list) else [spec]
    resolved = []
    for t in items:
        if isinstance(t, Region) and isinstance(t.cls, str):
            t = Region(loaded.class_index(t.cls), t.mask)
        if isinstance(t, Box) and isinstance(t.label, str):
            t = Box(t.box, loaded.class_index(t.label), t.iou, t.rank, t.min_score)
        resolved.append(t)
    titles = [getattr(t, "title", str(t)) for t in resolved]
    return resolved, len(resolved), None, ", ".join(titles)


def _read_mask(path: str) -> torch.Tensor:
    """A region as a picture: its non-zero pixels, ``(H, W)`` float (resized to each input's size later)."""
    import numpy as np
    from PIL import Image

    try:
        with Image.open(path) as im:
            arr = np.asarray(im.convert("L"))
    except (OSError, ValueError) as err:
        raise InputError(f"cannot read the mask {path!r}: {err}", field="mask") from err
    if not arr.any():
        raise InputError(f"the mask {path!r} has no non-zero pixel: the region would be empty", field="mask")
    return torch.from_numpy(arr > 0).float()


def input_paths(inputs: Sequence[str], out: Path) -> tuple[list[Path], list[images.PassedOver]]:
    """:func:`images.search_images`, minus what lies in the output folder (our own maps, on a rerun).

    Returns the paths and what was passed over (with the reason of each).
    """
    found = images.search_images(inputs, exclude=out)
    paths = found.paths
    if not paths and found.passed_over:
        first = found.passed_over[0]
        raise InputError(f"no image can be read: {len(found.passed_over)} input(s) passed over, e.g. "
                         f"{str(first.path)!r}: {first.reason}", field="inputs")
    if not paths:
        raise InputError(f"every image found is inside the output folder {str(out)!r} (earlier outputs are not "
                         f"inputs); give other inputs or another output folder", field="output")
    return paths, found.passed_over


def _digest(digests: Digests, path: str | os.PathLike[str] | None) -> str | None:
    """The sha256 of a local file the model is made of (shortened), ``None`` when not a file."""
    if path is None or not os.path.isfile(os.path.expanduser(path)):
        return None
    full = digests.of(os.path.expanduser(path))
    return None if full is None else full[:16]


#: A class-dependent field while the classes are not known yet (never in a real file name).
_CLASS_PLACEHOLDER = "\0class{rank}\0"


def _check_unique_outputs(paths: list[Path], numbers: Sequence[int], map_template: str, input_template: str,
                          methods: Sequence[str], k: int, layer_target: Any, panel: bool,
                          save_raw: bool) -> tuple[set[str], set[str]]:
    """Every file the run will write has its own path, across all inputs and kinds; else a usage error
    naming both inputs. Class-dependent fields count as different per rank (the classes are not known
    before the forward pass); names are compared case-insensitively (macOS, Windows).

    Returns the folders (relative) the names lie in, and the folders below which class-dependent
    subfolders lie: the places :func:`.journal.sweep_temp_files` looks in.
    """
    seen: dict[str, tuple[Path, str]] = {}
    folders: set[str] = set()
    class_folders: set[str] = set()
    layer = safe_name(layer_target.layer) if layer_target is not None else "none"
    channel = layer_target.channel if layer_target is not None else "none"
    for idx, path in zip(numbers, paths, strict=True):
        stem = safe_name(path.stem)
        planned = [(fill_template(input_template, idx=idx, stem=stem), "input picture")]
        for method in methods:
            for rank in range(1, k + 1):
                cls = _CLASS_PLACEHOLDER.format(rank=rank)
                name = fill_template(map_template, idx=idx, stem=stem, method=method, rank=rank, class_index=cls,
                             label=cls, layer=layer, channel=channel, target=cls)
                planned.append((name, f"{method} map"))
                if save_raw:
                    planned.append((str(Path(name).with_suffix(".npy")), f"raw {method} map"))
        if panel:
            planned.append((fill_template(PANEL_NAME, idx=idx, stem=stem), "panel"))
        for name, kind in planned:
            parent = os.path.dirname(os.path.normpath(name))
            if "\0" in parent:
                class_folders.add(os.path.dirname(parent.split("\0", 1)[0] + "x"))
            elif parent:
                folders.add(parent)
            key = os.path.normpath(name).lower()
            if key in seen:
                other, other_kind = seen[key]
                shown = name.replace("\0", "").replace("class", "{class}") if "\0" in name else name
                if other == path:
                    raise GuidedBackpropError(
                        f"the {other_kind} and the {kind} of {str(path)!r} would both be written to {shown!r}; "
                        f"make the map name template {map_template!r} and the input name template "
                        f"{input_template!r} differ", field="name")
                why = " (they give the same {stem})" if safe_name(other.stem).lower() == stem.lower() else ""
                raise InputError(
                    f"inputs {str(other)!r} and {str(path)!r} would both write {shown!r}{why}: the {other_kind} of "
                    f"the first and the {kind} of the second; add {{idx}} to the name templates", field="name")
            seen[key] = (path, kind)
    return folders, class_folders


def make_plan(paths: list[Path], cfg: BatchConfig, device: torch.device, out: Path) -> Plan:
    """Resolve the config (model, preprocessing, target, names, fingerprint); nothing is written."""
    digests = Digests(out / STATE_DIR)

    if cfg.batch_size < 1:
        raise GuidedBackpropError(f"batch size must be >= 1, got {cfg.batch_size}", field="batch_size")
    if cfg.workers < 0:
        raise GuidedBackpropError(f"workers must be >= 0, got {cfg.workers}", field="workers")
    if cfg.smooth < 0 or cfg.noise < 0:
        raise GuidedBackpropError(f"SmoothGrad samples and noise must be >= 0, got smooth={cfg.smooth} and "
                                  f"noise={cfg.noise}", field="smooth")
    if cfg.norm not in render.NORMALIZATIONS:
        raise UnknownNameError("normalization", cfg.norm, render.NORMALIZATIONS, field="norm")
    methods = parse_methods(list(cfg.methods))
    spec = cfg.model
    model_name = spec.model_name
    loaded = spec.load(device)
    pre = loaded.preprocessing  # the spec's changes applied by the loader, which tries the model on them
    gradcam_layer = cfg.gradcam_layer or getattr(loaded, "gradcam_layer", None)
    if gradcam_layer is not None:
        find_layer(loaded.model, gradcam_layer, field="gradcam_layer")
    target, k, layer_target, target_text = plan_target(cfg, loaded)
    notes, guidance = _notes(loaded, model_name, methods)

    map_template = cfg.name or default_map_name(methods, k, layer_target=layer_target is not None)
    used = template_fields(map_template, MAP_NAME_FIELDS, "name")
    in_used = template_fields(cfg.input_name, INPUT_NAME_FIELDS, "input_name")
    if not used & {"idx", "stem"}:
        raise GuidedBackpropError(f"name={map_template!r} must contain {{idx}} or {{stem}}, or every image "
                                  f"would write the same file", field="name")
    if len(methods) > 1 and "method" not in used:
        raise GuidedBackpropError(f"name={map_template!r} needs {{method}}: several methods are computed",
                                  field="name")
    if k > 1 and not used & {"rank", "class_index", "label", "target"}:
        raise GuidedBackpropError(f"name={map_template!r} needs {{rank}}: {k} classes are explained per image",
                                  field="name")
    if not in_used & {"idx", "stem"}:
        raise GuidedBackpropError(f"input_name={cfg.input_name!r} must contain {{idx}} or {{stem}}",
                                  field="input_name")
    numbers, number_table = input_numbers(out / STATE_DIR, paths)
    folders, class_folders = _check_unique_outputs(paths, numbers, map_template, cfg.input_name, methods, k,
                                                   layer_target, cfg.panel, cfg.save_raw)

    file_keys = ["input"] + [m if r == 1 else f"{m}_top{r}" for m in methods for r in range(1, k + 1)]
    if cfg.panel:
        file_keys.append("panel")
    settings = RunSettings(
        model=model_name,
        weights=None if spec.weights is None else str(Path(spec.weights).expanduser().resolve()),
        labels=None if spec.labels is None else str(Path(spec.labels).expanduser().resolve()),
        num_classes=spec.num_classes,
        preprocessing=repr(pre),
        methods=tuple(methods),
        target=target_text,
        gradcam_layer=gradcam_layer,
        smooth=int(cfg.smooth),
        noise=float(cfg.noise) if cfg.smooth else None,
        seed=int(cfg.seed) if cfg.smooth else None,
        normalization=cfg.norm,
        name=map_template,
        input_name=cfg.input_name,
        save_raw=bool(cfg.save_raw),
        panel=bool(cfg.panel),
        weights_description=getattr(loaded, "weights", None),
        weights_sha256=_digest(digests, spec.weights),
        labels_sha256=_digest(digests, spec.labels),
        model_source_sha256=_digest(digests, model_source_file(model_name)),
        output_key=cfg.output_key,
    )
    return Plan(loaded=loaded, device=device, preprocessing=pre, settings=settings, target=target, k=k,
                 layer_target=layer_target, file_keys=file_keys, digests=digests,
                 folders=[out / f for f in sorted(folders)], class_folders=[out / f for f in sorted(class_folders)],
                 numbers=numbers, number_table=number_table, batch_size=int(cfg.batch_size),
                 workers=int(cfg.workers), max_pixels=int(cfg.max_pixels), overwrite=bool(cfg.overwrite),
                 notes=notes, guidance=guidance)


def _notes(loaded: Any, model_name: str, methods: Sequence[str]) -> tuple[list[str], str]:
    """What the run says first: guidance that is partial (activations the rules leave plain) and random
    weights (timm models without --weights, and --weights random)."""
    from ..rules import unrouted_activations

    notes = []
    others = unrouted_activations(loaded.model)
    relus = any(type(m).__name__ in ("ReLU", "ReLU6") for m in loaded.model.modules())
    guidance = "yes" if not others else "partly" if relus else "no"
    guided = [m for m in methods if m in ("guided_backprop", "deconvnet", "guided_gradcam")]
    if others and guided:
        notes.append(f"guidance is {'partial' if relus else 'absent'}: {', '.join(guided)} change only the ReLUs; "
                     f"{', '.join(others)} {'keeps' if len(others) == 1 else 'keep'} plain gradients")
    weights = str(getattr(loaded, "weights", ""))
    if model_name.startswith("timm:") and weights.startswith("random"):
        notes.append(f"{model_name} runs on random weights (give --weights pretrained or --weights FILE)")
    elif weights.startswith("random"):  # asked for: said all the same, the maps show no learned features
        notes.append(f"{model_name} runs on random weights ({weights}): the maps show no learned features")
    return notes, guidance
