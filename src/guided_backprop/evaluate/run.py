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
import re
import secrets
import shutil
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import torch

from ..atomic import write_bytes
from ..attribution import Explainer
from ..errors import ExitCode, GuidedBackpropError, ImageError, InputError, TargetError, UnknownNameError, exit_code
from ..methods import parse_methods
from ..models.spec import ModelSpec
from ..records import EvaluationSettings, finite_json
from ..reporting import Reporter
from ..targets import TopK
from .checks import (
    DEFAULT_CHECKS,
    SMOOTH_NOISE,
    SMOOTH_SAMPLES,
    ScoreOf,
    explained_scores,
    is_output_target,
    parse_checks,
    run_checks,
    with_output,
)
from .results import Evaluation, merge
from .similarity import METRICS

if TYPE_CHECKING:
    from ..models import LoadedModel

__all__ = ["FIGURES", "EvaluateConfig", "EvaluateRun", "WriteError", "evaluate_folder", "prepare_output",
           "write_outputs"]

JSON_NAME, CSV_NAME = "evaluation.json", "evaluation.csv"
#: The pictures, by what they show.
FIGURES = {"randomization": "evaluation_randomization.png", "similarity": "evaluation_similarity.png",
           "efficient_mprt": "evaluation_efficient_mprt.png", "smooth_mprt": "evaluation_smooth_mprt.png",
           "faithfulness": "evaluation_faithfulness.png"}


@dataclass
class EvaluateConfig:
    """What to evaluate, as :func:`evaluate_folder` takes it (the command's options, typed)."""

    model: ModelSpec = field(default_factory=ModelSpec)  # which network, how pictures become its input
    methods: Sequence[str] = ("guided_backprop", "saliency", "gradcam")
    checks: Sequence[str] | None = DEFAULT_CHECKS  # None: the defaults, class sensitivity only for a class target
    order: Literal["cascading", "independent"] = "cascading"
    granularity: str | Sequence[str] = "blocks"
    metrics: Sequence[str] = METRICS
    seed: int = 0
    steps: int = 32
    batch_size: int = 16
    figure_image: int | str | None = None  # an index or a name among the inputs; None: the first readable
    figure_steps: int = 10  # randomisation steps shown in the figure-2 layout
    smooth_samples: int = SMOOTH_SAMPLES  # Smooth MPRT's SmoothGrad samples
    smooth_noise: float = SMOOTH_NOISE  # ... and noise, a fraction of each input's value range
    gradcam_layer: str | None = None  # None: the model's own choice, else the last spatial layer
    output_key: str | int | None = None  # the entry of a dict / tuple output holding the class logits
    # What is explained: None (each image's predicted class) or ``run``'s --target grammar (targets.parse_target):
    # a class, a segmenter's class (its pixels, or ``mask``'s), detections:1 / box:..., similar:REF.png, output:K.
    target: Any = None
    mask: str | None = None  # a segmenter's region: a picture whose non-zero pixels are the region
    score_threshold: float = 0.5  # detections:1 takes the most confident detection scoring at least this


@dataclass
class EvaluateRun:
    """What :func:`evaluate_folder` did: the results, the files written, the images that could not be
    evaluated (``failed``: unreadable, not finite) and those never opened (``passed_over``), by path."""

    evaluation: Evaluation
    output: Path
    files: list[Path] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    passed_over: dict[str, str] = field(default_factory=dict)  # never opened: FIFOs, link loops, ...

    @property
    def exit_code(self) -> ExitCode:
        """``OK`` when every image was evaluated, ``SOME_FAILED`` when some could not be read."""
        return exit_code(failed=len(self.failed))


class WriteError(GuidedBackpropError):
    """The output folder cannot be written (full disk, read-only folder, ...): ``path`` is where."""

    exit_code = ExitCode.DISK_FULL

    def __init__(self, path: str | os.PathLike[str], err: OSError) -> None:
        self.path = str(path)
        super().__init__(f"cannot write {self.path!r}: {err.strerror or err}", field="output")


#: The staging folders of :func:`write_outputs` (swept by the next run if a kill left one).
_STAGING = re.compile(r"^\.evaluate-\d+-[0-9a-f]{8}\.tmp$")


def prepare_output(output: str | os.PathLike[str]) -> Path:
    """Create ``output``, prove that a file can be written in it, and sweep this command's leftovers
    (staging folders of a killed run): before anything is computed. Raises :class:`WriteError`."""
    folder = Path(output)
    if folder.exists() and not folder.is_dir():
        raise InputError(f"the output {str(folder)!r} is not a folder; give a folder (-o)", field="output")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".evaluate-{os.getpid()}-{secrets.token_hex(4)}.tmp"
        probe.mkdir()
        (probe / "probe").write_bytes(b"0" * 4096)
        shutil.rmtree(probe)
    except OSError as err:
        raise WriteError(err.filename or folder, err) from err
    for entry in folder.iterdir():
        if _STAGING.match(entry.name) and entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
    return folder


def _figure_path(found: Sequence[Path], wanted: int | str | None) -> Path | None:
    """The input of the figure-2 layout: ``wanted`` as an index, a path, a file name or a stem."""
    if wanted is None:
        return None
    if isinstance(wanted, int):
        return found[min(max(wanted, 0), len(found) - 1)] if found else None
    for match in (lambda p: str(p) == wanted or os.path.realpath(p) == os.path.realpath(wanted),
                  lambda p: p.name == wanted, lambda p: p.stem == wanted):
        hits = [p for p in found if match(p)]
        if hits:
            return hits[0]
    raise UnknownNameError("figure image", str(wanted), [p.name for p in found][:50],
                           hint="give one of the inputs' file names", field="figure_image")


@dataclass
class _Batch:
    """Images of one input size, evaluated together: their indices among the inputs, names and tensors."""

    ids: list[int]
    names: list[str]
    x: torch.Tensor


def _batches(paths: Sequence[Path], preprocess: Callable[[Any], torch.Tensor], batch_size: int,
             failed: dict[str, str], reporter: Reporter | None = None) -> Iterator[_Batch]:
    """The readable images of ``paths`` in batches of one input size, at most ``batch_size`` each.

    Pictures are read one at a time and wait in one pending group per size; a group is evaluated
    when it is full, or (the largest group) when the pending images reach ``batch_size`` in all, so
    that memory holds at most about two batches whatever the number of images and sizes. A folder
    of one size gives the batches of a plain cut. Unreadable images go to ``failed`` (and the reporter, at once).
    """
    from ..images import load_image

    pending: dict[tuple[int, ...], list[tuple[int, str, torch.Tensor]]] = {}

    def flush(shape: tuple[int, ...]) -> _Batch:
        group = pending.pop(shape)
        return _Batch([g[0] for g in group], [g[1] for g in group], torch.stack([g[2] for g in group]))

    for index, path in enumerate(paths):
        try:
            tensor = preprocess(load_image(path))
        except (ImageError, InputError) as err:
            failed[str(path)] = str(err)
            if reporter is not None:
                reporter.failed(str(err))
            continue
        shape = tuple(tensor.shape)
        pending.setdefault(shape, []).append((index, str(path), tensor))
        if len(pending[shape]) >= batch_size:
            yield flush(shape)
        elif sum(len(g) for g in pending.values()) >= batch_size:
            yield flush(max(pending, key=lambda k: len(pending[k])))
    while pending:
        yield flush(min(pending, key=lambda k: pending[k][0][0]))


def _non_finite(model: torch.nn.Module, batch: _Batch, methods: tuple[str, ...], batch_size: int,
                gradcam_layer: str | None, cls: int | None = None
                ) -> tuple[dict[int, str], dict[str, torch.Tensor] | None]:
    """Images of ``batch`` (by position) whose scores or trained-model maps are not finite, and why; and the
    trained model's maps of the others (the checks reuse them) for class ``cls`` (default: each one's prediction)."""
    from .randomization import explain_all, model_logits

    logits = model_logits(model, batch.x, batch_size=batch_size)
    bad = {i: f"{batch.names[i]!r}: the model's scores are not finite (NaN or inf): check the weights"
           for i in range(len(batch.ids)) if not bool(torch.isfinite(logits[i]).all())}
    good = [i for i in range(len(batch.ids)) if i not in bad]
    maps: dict[str, torch.Tensor] | None = None
    if good:
        x = batch.x[good]
        classes = logits[good].argmax(dim=1) if cls is None else torch.full((len(good),), cls, dtype=torch.long,
                                                                                device=logits.device)
        maps = explain_all(Explainer(model), x, classes, methods, batch_size, gradcam_layer)
        for m in methods:
            for k, i in enumerate(good):
                if i not in bad and not bool(torch.isfinite(maps[m][k]).all()):
                    bad[i] = f"{batch.names[i]!r}: its {m} map is not finite (NaN or inf): check the weights"
        if maps is not None:  # the maps of the images kept, in order
            kept = [k for k, i in enumerate(good) if i not in bad]
            maps = {m: v[kept] for m, v in maps.items()}
    return bad, maps


def evaluation_target(cfg: EvaluateConfig, loaded: LoadedModel) -> tuple[Any, str | None]:
    """What ``cfg`` asks to explain on ``loaded``'s model, parsed by ``run``'s own code (one grammar): ``None``
    (each image's predicted class), a class index, or one output target; and its description."""
    if cfg.target is None and cfg.mask is None and getattr(loaded, "kind", "classifier") not in ("segmenter",
                                                                                              "detector"):
        return None, None  # the predicted class (of the logits --output-key picks, for a dict output)
    from ..batch.config import BatchConfig
    from ..batch.plan import plan_target

    spec, k, _layer, text = plan_target(BatchConfig(target=cfg.target, mask=cfg.mask, output_key=cfg.output_key,
                                                      score_threshold=float(cfg.score_threshold)), loaded)
    items = spec if isinstance(spec, list) else [spec]
    if k != 1 or len(items) != 1 or not (items[0] is None or isinstance(items[0], int) or is_output_target(items[0])):
        given = f"top{cfg.target.k}" if isinstance(cfg.target, TopK) else cfg.target
        raise TargetError(f"evaluate explains one target per image; target={given!r} gives {k} ({text}): "
                          f"give one class, detections:1 or one box", field="target")
    return items[0], text


def _unexplained(model: torch.nn.Module, batch: _Batch, target: Any, output_key: Any) -> dict[int, str]:
    """Images of ``batch`` (by position) on which ``target`` has nothing to explain, and why."""
    scored = explained_scores(model, batch.x, target, output=output_key)
    return {i: f"{batch.names[i]!r}: nothing to explain for {getattr(target, 'title', 'the target')}: "
               f"{scored.details[i].get('reason', 'not found')}; no numbers for it"
            for i, found in enumerate(scored.found.tolist()) if not found}


def evaluate_folder(
    inputs: Sequence[str | os.PathLike[str]] | str | os.PathLike[str],
    output: str | os.PathLike[str],
    config: EvaluateConfig | None = None,
    *,
    loaded: LoadedModel | None = None,
    reporter: Reporter | None = None,
) -> EvaluateRun:
    """Evaluate every image of ``inputs`` (files, folders, globs) and write the outputs to ``output``.

    ``loaded`` is the model to evaluate, with its preprocessing (:func:`guided_backprop.load_model`);
    without it ``config.model`` (a :class:`~guided_backprop.ModelSpec`) is loaded. Images may have different sizes:
    they are evaluated in batches of one size (at most ``config.batch_size`` images, so memory does
    not grow with their number), and every image gets the numbers it would get alone. Unreadable
    images, and images whose scores or maps are not finite, are left out (``reporter.failed(reason)``
    is told) and listed under ``"failed"`` in ``evaluation.json``; inputs that are never opened (a
    FIFO, a symbolic-link loop, the output folder's own files...) are told to
    ``reporter.passed_over(path, reason)`` and listed under ``"passed_over"``; the reporter is also
    told each check's progress (default: a :class:`~guided_backprop.reporting.Reporter` that keeps
    it all). The output folder is checked for writing before anything is computed (:class:`WriteError`).
    ``config.target`` (``run``'s --target grammar) chooses what every check explains
    (:func:`.checks.run_checks`); an image on which it has nothing to explain (no matching detection, an
    empty region) gets no numbers: ``reporter.note(line)`` is told, and ``evaluation.json`` lists it
    under ``"not_explained"``. Raises
    :class:`~guided_backprop.errors.GuidedBackpropError` subclasses for unusable models, options or inputs.
    """
    from ..images import search_images
    cfg = config or EvaluateConfig()
    reporter = reporter if reporter is not None else Reporter()
    if isinstance(inputs, (str, os.PathLike)):
        inputs = [inputs]
    methods = parse_methods(list(cfg.methods))
    checks = parse_checks(list(DEFAULT_CHECKS if cfg.checks is None else cfg.checks))
    if isinstance(cfg.batch_size, bool) or int(cfg.batch_size) < 1:
        raise InputError(f"batch size must be a whole number >= 1, got {cfg.batch_size!r}", field="batch_size")
    if isinstance(cfg.steps, bool) or not 1 <= int(cfg.steps) <= MAX_STEPS:
        raise InputError(f"deletion / insertion steps must be 1 to {MAX_STEPS} (each step is one forward pass per "
                         f"image and order), got {cfg.steps!r}", field="steps")
    if loaded is None:
        loaded = cfg.model.load()
    target, target_text = evaluation_target(cfg, loaded)
    if is_output_target(target) and "class" in checks:
        if cfg.checks is not None:
            raise TargetError(f"class sensitivity compares the maps of classes; target={cfg.target!r} "
                              f"({target_text}) is not a class: leave 'class' out of the checks", field="checks")
        checks = tuple(c for c in checks if c != "class")
        reporter.note(f"class sensitivity skipped: it compares classes' maps, and {target_text} is not a class")
    pre = loaded.preprocessing
    found = search_images([Path(p) for p in inputs], exclude=output)
    passed_over = {str(s.path): s.reason for s in found.passed_over}
    own = _inside_output([Path(p) for p in inputs], output, found.paths)
    for path in own:
        passed_over[path] = "in the output folder: evaluate's own output is no input"
    for path, reason in passed_over.items():
        reporter.passed_over(path, reason)
    figure_path = _figure_path(found.paths, cfg.figure_image)
    folder = prepare_output(output)

    failed: dict[str, str] = {}
    not_explained: dict[str, str] = {}
    if figure_path is not None:  # read it first: a figure image that cannot be read is a usage error
        from ..images import load_image
        try:
            pre(load_image(figure_path))
        except (ImageError, InputError) as err:
            raise InputError(f"the figure image {str(figure_path)!r} cannot be read: {err}",
                             field="figure_image") from err
    parts: list[tuple[list[int], Evaluation]] = []
    picture: np.ndarray | None = None
    figure_id: int | None = found.paths.index(figure_path) if figure_path is not None else None
    cam_layer = cfg.gradcam_layer or loaded.gradcam_layer
    model = with_output(loaded.model, cfg.output_key)  # the checks read the class logits
    with np.errstate(all="ignore"):
        for batch in _batches(found.paths, pre, int(cfg.batch_size), failed, reporter):
            batch = batch if batch.x.device == loaded.device else _Batch(batch.ids, batch.names,
                                                                          batch.x.to(loaded.device))
            explained, explain_size, fitted = model, int(cfg.batch_size), target
            if is_output_target(target):
                from ..batch.job import fit_masks

                fitted = fit_masks([target], batch.x)[0]  # a --mask picture at this batch's input size
                for i, line in _unexplained(model, batch, fitted, None).items():
                    not_explained[batch.names[i]] = line
                    reporter.note(line)
                keep = [i for i in range(len(batch.ids)) if batch.names[i] not in not_explained]
                if not keep:
                    continue
                batch = _Batch([batch.ids[i] for i in keep], [batch.names[i] for i in keep], batch.x[keep])
                explained = ScoreOf(model, None, explained_scores(model, batch.x, fitted).frozen)
                explain_size = max(explain_size, len(batch.ids))  # one mask / box per image: one batch
            bad, trained_maps = _non_finite(explained, batch, methods, explain_size, cam_layer,
                                            target if isinstance(target, int) else None)
            for i, reason in bad.items():
                failed[batch.names[i]] = reason
                reporter.failed(reason)
            keep = [i for i in range(len(batch.ids)) if i not in bad]
            if not keep:
                continue
            batch = _Batch([batch.ids[i] for i in keep], [batch.names[i] for i in keep], batch.x[keep])
            if figure_id is None:
                figure_id = min(batch.ids)  # the first readable image: every earlier one failed
            local = batch.ids.index(figure_id) if figure_id in batch.ids else None
            part = run_checks(
                model, batch.x, methods=methods, checks=checks, order=cfg.order, granularity=cfg.granularity,
                metrics=cfg.metrics, seed=cfg.seed, steps=cfg.steps, batch_size=cfg.batch_size,
                gradcam_layer=cam_layer, model_name=loaded.name, image_names=batch.names, maps_image=local,
                image_ids=[image_id(n) for n in batch.names], smooth_samples=cfg.smooth_samples,
                smooth_noise=cfg.smooth_noise, trained_maps=trained_maps, target=fitted,
                progress=lambda check, done, total: reporter.progress(done, total, check))
            if local is not None:
                picture = pre.invert(batch.x[local])
            parts.append((batch.ids, part))
    if not parts:
        if not_explained and not failed:
            raise ImageError(f"nothing to evaluate: {target_text} has nothing to explain on any image "
                             f"({_count(len(not_explained), 'image')}, e.g. {next(iter(not_explained.values()))})")
        raise ImageError(_nothing_evaluated(failed, passed_over, own))
    evaluation = merge(parts)
    evaluation.failed = dict(failed)
    evaluation.passed_over = dict(passed_over)
    evaluation.not_explained = dict(not_explained)
    figure_name = str(found.paths[figure_id]) if figure_id is not None else evaluation.images[0]
    output_target = is_output_target(target)  # the checks explained a score, not classes: no class_labels
    evaluation.settings = EvaluationSettings(
        methods=list(methods), checks=list(checks), weights=loaded.weights, preprocessing=pre.describe(),
        deletion_steps=cfg.steps, figure_image=figure_name, figure_steps=cfg.figure_steps, batch_size=cfg.batch_size,
        target=(cfg.target if cfg.mask is None else f"{cfg.target} --mask {cfg.mask}") if output_target
        else target_text if target is not None else None,
        score_threshold=cfg.score_threshold if output_target else None,
        class_labels=None if output_target else {str(c): loaded.label(c) for c in sorted(set(_classes(evaluation)))},
    )
    files = write_outputs(evaluation, folder, image=picture, figure_steps=cfg.figure_steps)
    return EvaluateRun(evaluation=evaluation, output=folder, files=files, failed=failed,
                       passed_over=passed_over)


def image_id(path: str | os.PathLike[str]) -> int:
    """An image's id for its random draws: the CRC-32 of its file name, so that an image gets the same
    numbers whatever folder, batch or company it is evaluated in."""
    return zlib.crc32(os.fsencode(Path(path).name))


#: The most deletion / insertion steps (each is one forward pass per image and pixel order).
MAX_STEPS = 1024


def _inside_output(inputs: Sequence[Path], output: str | os.PathLike[str], kept: Sequence[Path]) -> list[str]:
    """The images among ``inputs`` that were left out for lying in the output folder (to be said so)."""
    from ..images import ImageNotFoundError, search_images

    home = os.path.realpath(output)
    if not any(home == os.path.realpath(p) or home.startswith(os.path.realpath(p).rstrip(os.sep) + os.sep)
               or os.path.realpath(p).startswith(home.rstrip(os.sep) + os.sep) for p in inputs):
        return []  # the output folder is neither an input nor inside or around one
    try:
        every = search_images(list(inputs)).paths
    except (ImageNotFoundError, OSError):
        return []
    kept_set = {str(p) for p in kept}
    return [str(p) for p in every if str(p) not in kept_set]


def _count(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")


def _nothing_evaluated(skipped: dict[str, str], passed_over: dict[str, str], own: Sequence[str]) -> str:
    """Why no image was evaluated, naming the inputs (at most three of each kind)."""
    reasons = []
    if own and len(own) == len(passed_over) and not skipped:
        return (f"nothing to evaluate: the {_count(len(own), 'image')} found lie in the output folder, which "
                f"evaluate never reads (its own figures); give another output folder (-o)")
    if skipped:
        shown = "; ".join(f"{p!r}: {r}" for p, r in list(skipped.items())[:3])
        more = f" (and {len(skipped) - 3} more)" if len(skipped) > 3 else ""
        reasons.append(f"{_count(len(skipped), 'image')} could not be evaluated: {shown}{more}")
    if own:
        reasons.append(f"{_count(len(own), 'image')} passed over for lying in the output folder")
    others = [p for p in passed_over if p not in own]
    if others:
        reasons.append(f"{len(others)} passed over, e.g. {others[0]!r}: {passed_over[others[0]]}")
    return "no readable image among the inputs" + (": " + "; ".join(reasons) if reasons else "")


def _classes(evaluation: Evaluation) -> list[int]:
    out: list[int] = []
    if evaluation.randomization is not None:
        out += evaluation.randomization.classes
    if evaluation.class_sensitivity is not None:
        cs = evaluation.class_sensitivity
        out += cs.predicted + cs.random_classes + cs.second_classes + (cs.explained or [])
    for curve in (evaluation.deletion, evaluation.insertion):
        if curve is not None:
            out += curve.classes
    return out


def csv_rows(evaluation: Evaluation) -> list[dict[str, Any]]:
    """One row per image, check, method, step and metric (``value`` empty where undefined)."""
    rows: list[dict[str, Any]] = []

    def add(image: int, check: str, method: str, step: str, metric: str, value: float) -> None:
        rows.append({"image": evaluation.images[image], "check": check, "method": method, "step": step,
                     "metric": metric, "value": "" if not math.isfinite(value) else repr(float(value))})

    for check, rnd in (("randomization", evaluation.randomization), ("smooth_mprt", evaluation.smooth_mprt)):
        if rnd is None:
            continue
        for m, per in rnd.values.items():
            for metric, a in per.items():
                for i in range(a.shape[0]):
                    for j, step in enumerate(rnd.steps):
                        add(i, f"{check}_{rnd.order}", m, step, metric, a[i, j])
    em = evaluation.efficient_mprt
    if em is not None:
        rise = em.rise
        for m in em.methods:
            for i in range(len(em.classes)):
                add(i, "efficient_mprt", m, "trained", "entropy", em.trained[m][i])
                add(i, "efficient_mprt", m, "randomized", "entropy", em.randomized[m][i])
                add(i, "efficient_mprt", m, "all", "complexity_rise", rise[m][i])
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
        metric = curve.follows  # a class's softmax probability, or an output target's raw score
        aucs = {**curve.auc, "random": curve.random_auc}
        for m, c in series.items():
            for i in range(c.shape[0]):
                for j, f in enumerate(curve.fractions):
                    add(i, curve.mode, m, f"{f:.6g}", metric, c[i, j])
                add(i, curve.mode, m, "all", "auc", aucs[m][i])
    return rows


def write_outputs(evaluation: Evaluation, output: str | os.PathLike[str], *, image: np.ndarray | None = None,
                  figure_steps: int = 10) -> list[Path]:
    """Write ``evaluation.json``, ``evaluation.csv`` and the figures to ``output``; return the paths.

    The new set is written into a hidden staging folder first (a kill leaves the previous set as it
    was, and a staging folder the next run sweeps); then the previous ``evaluation.json`` is removed,
    the figures of checks not run this time too (they would look current), the new figures and CSV
    are moved in, and the new ``evaluation.json`` last: it is the commit point, listing the figures
    that belong to it. Raises :class:`WriteError` naming the path that could not be written.
    """
    from .figures import (
        complexity_figure,
        faithfulness_figure,
        randomization_figure,
        similarity_figure,
    )

    folder = prepare_output(output)
    pictures: dict[str, bytes] = {}
    if evaluation.randomization is not None:
        if evaluation.randomization.maps:
            pictures["randomization"] = randomization_figure(evaluation.randomization, image,
                                                             max_columns=figure_steps)
        pictures["similarity"] = similarity_figure(evaluation.randomization)
    if evaluation.smooth_mprt is not None:
        pictures["smooth_mprt"] = similarity_figure(evaluation.smooth_mprt)
    if evaluation.efficient_mprt is not None:
        pictures["efficient_mprt"] = complexity_figure(evaluation.efficient_mprt)
    curves = [c for c in (evaluation.deletion, evaluation.insertion) if c is not None]
    if curves:
        pictures["faithfulness"] = faithfulness_figure(curves)
    doc = evaluation.to_record(figures={k: FIGURES[k] for k in pictures}).to_json()
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=["image", "check", "method", "step", "metric", "value"],
                            lineterminator="\n")
    writer.writeheader()
    writer.writerows(csv_rows(evaluation))
    staged = {FIGURES[k]: payload for k, payload in pictures.items()}
    # A file name that is not UTF-8 is written as its own bytes (surrogateescape), as predictions.csv;
    # evaluation.json keeps it as \udcXX escapes (json.dumps' ASCII output).
    staged[CSV_NAME] = buf.getvalue().encode("utf-8", "surrogateescape")
    staged[JSON_NAME] = (json.dumps(finite_json(doc), indent=1, allow_nan=False) + "\n").encode("utf-8")
    stage = folder / f".evaluate-{os.getpid()}-{secrets.token_hex(4)}.tmp"
    current = folder / JSON_NAME
    try:
        try:
            stage.mkdir()
            for name, payload in staged.items():
                write_bytes(stage / name, payload)
        except OSError as err:
            raise WriteError(err.filename or stage, err) from err
        try:  # the switch: renames within one folder, no data written
            current.unlink(missing_ok=True)
            for name in FIGURES.values():
                if name not in staged:
                    (folder / name).unlink(missing_ok=True)
            for name in [*staged.keys() - {JSON_NAME}, JSON_NAME]:
                os.replace(stage / name, folder / name)
        except OSError as err:
            raise WriteError(err.filename or folder, err) from err
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return [folder / name for name in staged]
