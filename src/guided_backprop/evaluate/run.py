"""Evaluate a folder of images: load the model and pictures, run the checks, write the outputs.

Outputs in the output folder (each written atomically):

* ``evaluation.json`` -- the contract of docs/evaluation.md (:meth:`.results.Evaluation.to_json`);
* ``evaluation.csv`` -- one row per image, check, method, step and metric;
* ``evaluation_randomization.png`` (figure 2 of Adebayo et al., for one image),
  ``evaluation_similarity.png`` (similarity along the steps) and ``evaluation_faithfulness.png``
  (deletion / insertion curves), for the checks that ran.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch

from ..atomic import write_bytes, write_text
from ..errors import ExitCode, GuidedBackpropError, ImageError, InputError
from ..methods import parse_methods
from .checks import CHECKS, parse_checks, run_checks
from .results import Evaluation
from .similarity import METRICS

if TYPE_CHECKING:
    from ..models import LoadedModel

__all__ = ["FIGURES", "EvaluateConfig", "EvaluateRun", "evaluate_folder", "write_outputs"]

JSON_NAME, CSV_NAME = "evaluation.json", "evaluation.csv"
#: The pictures, by what they show.
FIGURES = {"randomization": "evaluation_randomization.png", "similarity": "evaluation_similarity.png",
           "faithfulness": "evaluation_faithfulness.png"}


@dataclass
class EvaluateConfig:
    """What to evaluate, as :func:`evaluate_folder` takes it (the command's options, typed)."""

    model: str | None = None
    weights: str | None = None
    num_classes: int | None = None
    trust_checkpoint: bool = False
    input_size: int | None = None
    methods: Sequence[str] = ("guided_backprop", "saliency", "gradcam")
    checks: Sequence[str] = CHECKS
    order: Literal["cascading", "independent"] = "cascading"
    granularity: str | Sequence[str] = "blocks"
    metrics: Sequence[str] = METRICS
    seed: int = 0
    steps: int = 32
    device: str = "cpu"
    batch_size: int = 16
    figure_image: int = 0
    gradcam_layer: str | None = None  # None: the model's own choice, else the last spatial layer


@dataclass
class EvaluateRun:
    """What :func:`evaluate_folder` did: the results, the files written and the images skipped."""

    evaluation: Evaluation
    output: Path
    files: list[Path] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)
    passed_over: dict[str, str] = field(default_factory=dict)  # never opened: FIFOs, link loops, ...

    @property
    def exit_code(self) -> ExitCode:
        """``OK`` when every image was evaluated, ``SOME_FAILED`` when some could not be read."""
        return ExitCode.SOME_FAILED if self.skipped else ExitCode.OK


def _load_inputs(inputs: Sequence[str | os.PathLike[str]], preprocess: Callable[[Any], torch.Tensor],
                 output: str | os.PathLike[str]
                 ) -> tuple[list[str], list[torch.Tensor], dict[str, str], dict[str, str]]:
    """The images of ``inputs``, minus what lies in ``output`` (our own figures, on a rerun)."""
    from ..images import load_image, search_images

    names, tensors, skipped = [], [], {}
    found = search_images([Path(p) for p in inputs], exclude=output)
    passed_over = {str(s.path): s.reason for s in found.skipped}
    for path in found.paths:
        try:
            tensors.append(preprocess(load_image(path)))
        except (ImageError, InputError) as err:
            skipped[str(path)] = str(err)
            continue
        names.append(str(path))
    if not tensors:
        raise ImageError("no readable image among the inputs" + (
            f" ({len(skipped)} could not be read)" if skipped else "") + (
            f" ({len(passed_over)} passed over, e.g. {next(iter(passed_over))!r}: "
            f"{next(iter(passed_over.values()))})" if passed_over else ""))
    shapes = {tuple(t.shape) for t in tensors}
    if len(shapes) > 1:
        side = min(min(shape[-2:]) for shape in shapes)  # whole pictures keep their aspect: crop them square
        raise InputError(f"the images give inputs of different sizes {sorted(shapes)}; evaluate needs one size: "
                         f"centre-crop them (crop={side}) or use a model with a fixed input size")
    return names, tensors, skipped, passed_over


def evaluate_folder(
    inputs: Sequence[str | os.PathLike[str]] | str | os.PathLike[str],
    output: str | os.PathLike[str],
    config: EvaluateConfig | None = None,
    *,
    loaded: LoadedModel | None = None,
    progress: Callable[[str, int, int], None] | None = None,
    on_skip: Callable[[str, str], None] | None = None,
    on_pass_over: Callable[[str, str], None] | None = None,
) -> EvaluateRun:
    """Evaluate every image of ``inputs`` (files, folders, globs) and write the outputs to ``output``.

    ``loaded`` is the model to evaluate, with its preprocessing (:func:`guided_backprop.load_model`);
    without it the model is loaded from ``config``'s model fields. Unreadable images are skipped
    (``on_skip(path, reason)`` is told) and listed under ``"failed"`` in ``evaluation.json``; inputs
    that are never opened (a FIFO, a symbolic-link loop, an unreadable folder...) are told to
    ``on_pass_over(path, reason)`` and listed under ``"passed_over"``. Raises
    :class:`~guided_backprop.errors.GuidedBackpropError` subclasses for unusable models, options or inputs.
    """
    from ..models import DEFAULT_MODEL, load_model

    cfg = config or EvaluateConfig()
    if isinstance(inputs, (str, os.PathLike)):
        inputs = [inputs]
    methods = parse_methods(list(cfg.methods))
    checks = parse_checks(list(cfg.checks))
    if loaded is None:
        loaded = load_model(cfg.model or DEFAULT_MODEL, weights=cfg.weights, num_classes=cfg.num_classes,
                            trust_checkpoint=cfg.trust_checkpoint, device=cfg.device)
    pre = loaded.preprocessing
    if cfg.input_size is not None:
        pre = pre.adjust(input_size=int(cfg.input_size))
    names, tensors, skipped, passed_over = _load_inputs(list(inputs), pre, output)
    for path, reason in passed_over.items():
        if on_pass_over is not None:
            on_pass_over(path, reason)
    for path, reason in skipped.items():
        if on_skip is not None:
            on_skip(path, reason)
    x = torch.stack(tensors).to(loaded.device)
    figure_image = min(max(int(cfg.figure_image), 0), len(names) - 1)
    evaluation = run_checks(
        loaded.model, x, methods=methods, checks=checks, order=cfg.order, granularity=cfg.granularity,
        metrics=cfg.metrics, seed=cfg.seed, steps=cfg.steps, batch_size=cfg.batch_size,
        gradcam_layer=cfg.gradcam_layer or loaded.gradcam_layer, model_name=loaded.name, image_names=names,
        maps_image=figure_image,
        progress=progress,
    )
    evaluation.failed = dict(skipped)
    evaluation.passed_over = dict(passed_over)
    evaluation.settings = {
        "methods": list(methods), "checks": list(checks), "weights": loaded.weights,
        "preprocessing": pre.describe(), "deletion_steps": cfg.steps, "figure_image": names[figure_image],
        "class_labels": {str(c): loaded.label(c) for c in sorted(set(_classes(evaluation)))},
    }
    picture = pre.invert(x[figure_image])
    files = write_outputs(evaluation, output, image=picture)
    return EvaluateRun(evaluation=evaluation, output=Path(output), files=files, skipped=skipped,
                       passed_over=passed_over)


def _classes(evaluation: Evaluation) -> list[int]:
    out: list[int] = []
    if evaluation.randomization is not None:
        out += evaluation.randomization.classes
    if evaluation.class_sensitivity is not None:
        cs = evaluation.class_sensitivity
        out += cs.predicted + cs.random_classes + cs.second_classes
    for curve in (evaluation.deletion, evaluation.insertion):
        if curve is not None:
            out += curve.classes
    return out


def _json_value(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_value(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_value(v) for v in value]
    return value


def csv_rows(evaluation: Evaluation) -> list[dict[str, Any]]:
    """One row per image, check, method, step and metric (``value`` empty where undefined)."""
    rows: list[dict[str, Any]] = []

    def add(image: int, check: str, method: str, step: str, metric: str, value: float) -> None:
        rows.append({"image": evaluation.images[image], "check": check, "method": method, "step": step,
                     "metric": metric, "value": "" if not math.isfinite(value) else repr(float(value))})

    rnd = evaluation.randomization
    if rnd is not None:
        for m, per in rnd.values.items():
            for metric, a in per.items():
                for i in range(a.shape[0]):
                    for j, step in enumerate(rnd.steps):
                        add(i, f"randomization_{rnd.order}", m, step, metric, a[i, j])
    cs = evaluation.class_sensitivity
    if cs is not None:
        for kind, per_method in cs.values.items():
            for m, per in per_method.items():
                for metric, a in per.items():
                    for i in range(a.shape[0]):
                        add(i, "class_sensitivity", m, kind, metric, a[i])
    for curve in (evaluation.deletion, evaluation.insertion):
        if curve is None:
            continue
        series = {**curve.curves, "random": curve.random}
        aucs = {**curve.auc, "random": curve.random_auc}
        for m, c in series.items():
            for i in range(c.shape[0]):
                for j, f in enumerate(curve.fractions):
                    add(i, curve.mode, m, f"{f:.6g}", "probability", c[i, j])
                add(i, curve.mode, m, "all", "auc", aucs[m][i])
    return rows


def write_outputs(evaluation: Evaluation, output: str | os.PathLike[str], *, image: np.ndarray | None = None
                  ) -> list[Path]:
    """Write ``evaluation.json``, ``evaluation.csv`` and the figures to ``output``; return the paths."""
    from .figures import faithfulness_figure, randomization_figure, similarity_figure

    folder = Path(output)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise GuidedBackpropError(f"cannot create the output folder {str(folder)!r}: {err}") from err
    files = []
    pictures: dict[str, bytes] = {}
    if evaluation.randomization is not None:
        pictures["randomization"] = randomization_figure(evaluation.randomization, image)
        pictures["similarity"] = similarity_figure(evaluation.randomization)
    curves = [c for c in (evaluation.deletion, evaluation.insertion) if c is not None]
    if curves:
        pictures["faithfulness"] = faithfulness_figure(curves)
    for key, payload in pictures.items():
        write_bytes(folder / FIGURES[key], payload)
        files.append(folder / FIGURES[key])
    doc = evaluation.to_json()
    doc["figures"] = {k: FIGURES[k] for k in pictures}
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=["image", "check", "method", "step", "metric", "value"],
                            lineterminator="\n")
    writer.writeheader()
    writer.writerows(csv_rows(evaluation))
    # A file name that is not UTF-8 is written as its own bytes (surrogateescape), as predictions.csv;
    # evaluation.json keeps it as \udcXX escapes (json.dumps' ASCII output).
    write_bytes(folder / CSV_NAME, buf.getvalue().encode("utf-8", "surrogateescape"))
    write_text(folder / JSON_NAME, json.dumps(_json_value(doc), indent=1, allow_nan=False) + "\n")
    files += [folder / CSV_NAME, folder / JSON_NAME]
    return files
