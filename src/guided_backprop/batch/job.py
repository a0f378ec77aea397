"""Compute (one forward/backward per batch) and write (pictures, maps, the input's journal line)."""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..atomic import safe_name, write_bytes
from ..attribution import Explainer, SmoothGrad, model_state
from ..errors import InputError, ModelError
from ..pictures import panels, render
from ..pictures.grid import Row, row_label, target_name
from ..records import ClassScore, IndexRecord, LayerTargetRecord, NeuronValue
from ..reporting import Reporter
from ..targets import MaxNeuron, Neuron, Region, select_output
from .config import DISK_ERRNOS, TOP5, DiskFull, RunStopped
from .decode import Decoded, one_line, worker_died
from .dist import Dist
from .journal import Journal, JournalEntry
from .names import PANEL_NAME, fill_template
from .plan import Plan
from .writer import Writer, npy_bytes


@dataclass
class InputMaps:
    """One input's results, from the compute step to its writer: the maps and what they explain."""

    maps: dict[str, np.ndarray]  # per method, (K, C, H, W): one map per explained target
    top5: list[tuple[int, float]]  # the best classes (index, probability); empty without class logits
    targets: list[tuple[int, float]] | None  # the explained classes (index, probability), None for other targets
    explained: list[dict[str, Any]]  # per explained target: what it is, its value, found, zero maps (index.jsonl)
    scores: list[float]  # the explained scores
    position: tuple[int, int] | None  # the unit a MaxNeuron target took, (y, x)
    regions: dict[int, np.ndarray]  # per explained target (rank), the region a segmenter's map explains


class RankJob:
    """One rank's work: compute batches, hand each input's writing to the pool, journal the results."""

    def __init__(self, plan: Plan, out: Path, dist: Dist, reporter: Reporter) -> None:
        self.plan = plan
        self.settings = plan.settings
        self.out = out
        self.dist = dist
        self.reporter = reporter
        self.explainer = Explainer(plan.loaded.model)
        self.labels = list(plan.loaded.labels)
        self._lock = threading.Lock()
        self.ok = 0
        self.failed = 0
        self.maps = 0
        self.errors: list[str] = []
        self.journal: Journal | None = None
        self.fatal: BaseException | None = None
        self.stop: RunStopped | None = None  # set by a writer thread (disk full); raised by the pipeline
        self.gradcam_layer: str | None = None  # the layer Grad-CAM used (the engine's choice when not given)
        self.computed_once = False  # a batch went through the model: a later forward failure is the input's
        self.abandoned = 0  # writes still running when a stop gave up waiting for them (writer.close)
        self.decoding: tuple[Any, list[Any]] | None = None  # (the decode dataset, its worker processes)

    # -- records -------------------------------------------------------------------------------
    def _entry(self, record: IndexRecord, ident: list[int] | None, poison: bool = False) -> JournalEntry:
        """``record`` as this rank's journal line."""
        return JournalEntry(record, self.plan.fingerprint, ident, time.time(), self.dist.rank, poison)

    def fail(self, idx: int, path: str, reason: str, ident: list[int] | None = None, *, poison: bool = False) -> None:
        """Journal one input as failed, and say why in one line; ``poison``: a rerun does not retry it
        (reading it killed a decode worker), unless the file changes or ``overwrite`` is given."""
        reason = one_line(reason)
        assert self.journal is not None
        try:
            record = IndexRecord.failed(idx, path, reason, save_raw=self.settings.save_raw)
            self.journal.write(self._entry(record, ident, poison))
        except OSError as err:
            if self._stop_if_disk(err, self.journal.path):
                return
            raise
        with self._lock:
            self.failed += 1
            self.errors.append(reason)
        if not poison:  # the stop that follows names it
            self.reporter.failed(reason)

    def _stop_if_disk(self, err: OSError, where: str | os.PathLike[str] | None) -> bool:
        """A write failure that will hit every input (disk full, over quota, read-only): stop the run.

        The first such failure is kept in :attr:`stop` (the pipeline raises it); True when it was one.
        """
        if err.errno not in DISK_ERRNOS:
            return False
        with self._lock:
            if self.stop is None:
                what = os.strerror(err.errno or 0).lower()
                self.stop = DiskFull(f"{what} at {os.fspath(where or err.filename or self.out)!r}: the run stopped; "
                                     f"free some space, then rerun the same command to resume")
        return True

    # -- compute -------------------------------------------------------------------------------
    def _predict(self, x: torch.Tensor) -> torch.Tensor | None:
        """The class logits of a classifier; ``None`` for another kind of model (no top-5 to list)."""
        with torch.no_grad(), model_state(self.plan.loaded.model):
            out = select_output(self.plan.loaded.model(x), self.settings.output_key)
        if not isinstance(out, torch.Tensor):
            out = getattr(out, "logits", None)
        if not isinstance(out, torch.Tensor) or out.ndim != 2:
            if getattr(self.plan.loaded, "kind", "classifier") != "classifier" or isinstance(self.plan.target, list):
                return None
            raise ModelError("the model does not return (N, classes) logits, so its predictions cannot be listed")
        return out

    def _explain(self, items: list[Decoded]) -> Any:
        x = torch.stack([it.tensor for it in items]).to(self.plan.device, non_blocking=True)  # type: ignore[misc]
        s, plan = self.settings, self.plan
        # SmoothGrad noise is seeded per input (its index), so maps do not depend on the batching.
        e = SmoothGrad(self.explainer, samples=s.smooth, noise=s.noise or 0.0).explain(  # noise: None without smoothing
            x, fit_masks(plan.target, x), methods=plan.methods, gradcam_layer=s.gradcam_layer,
            output=s.output_key, labels=self.labels or None, seed=s.seed, sample_ids=[it.idx for it in items])
        logits = e.logits if e.logits is not None else self._predict(x)
        return e, logits

    def compute(self, items: list[Decoded], writer: Writer) -> None:
        """One forward/backward for ``items`` (same-size tensors); each input's writing goes to ``writer``.

        A failing forward is split to find the input at fault, unless the fault is the model's
        (:meth:`_model_fault`): then the run stops with one usage error.
        """
        try:
            e, logits = self._explain(items)
        except InputError as err:  # the forward failed: find out which input it was
            died = worker_died(err, self.ok + self.failed)
            if died is not None:
                raise died from err
            fault = self._model_fault(items[0], err)
            if fault is not None:
                raise fault from err
            if len(items) > 1:
                for it in items:
                    self.compute([it], writer)
                return
            self.fail(items[0].idx, items[0].path, f"cannot process {items[0].path!r}: {err}", items[0].ident)
            return
        self.computed_once = True
        if self.gradcam_layer is None:
            self.gradcam_layer = getattr(e, "gradcam_layer", None)
        probs = None if logits is None else logits.detach().float().softmax(dim=1).cpu()
        top_p, top_i = probs.topk(min(TOP5, probs.shape[1]), dim=1) if probs is not None else (None, None)
        maps = {m: v.detach().float().cpu().numpy() for m, v in e.maps.items()}  # (N, K, C, H, W)
        explained = self._explained(e)
        targets = None if e.targets is None else e.targets.cpu()
        scores = e.scores.detach().float().cpu()
        positions = None if e.positions is None else e.positions.cpu()
        # class logits where the output has them; otherwise the explained scores (a box's, a region's)
        # A target not found (an image without a matching detection) has NaN maps and score by design.
        found = torch.ones(scores.shape, dtype=torch.bool) if e.found is None else e.found.cpu()
        if logits is not None:
            finite_logits = torch.isfinite(logits.detach()).all(dim=1).cpu().tolist()
        else:
            finite_logits = (torch.isfinite(e.values.detach().float().cpu()) | ~found).all(dim=1).tolist()
        for i, it in enumerate(items):
            broken = self._not_finite(bool(finite_logits[i]), {m: v[i][found[i].numpy()] for m, v in maps.items()},
                                      scores[i][found[i]])
            if broken is not None:
                self.fail(it.idx, it.path, f"the model's {broken} for {it.path!r} holds NaN or infinity (its "
                                           f"values overflow, or the model divides by zero); no map is written",
                          it.ident)
                continue
            result = InputMaps(
                maps={m: v[i] for m, v in maps.items()},
                top5=[] if top_i is None or top_p is None else [
                    (int(c), float(p)) for c, p in zip(top_i[i].tolist(), top_p[i].tolist())],
                targets=None if targets is None or probs is None else [
                    (int(c), float(probs[i, c])) for c in targets[i].tolist()],
                explained=explained[i],
                scores=scores[i].tolist(),
                position=None if positions is None else (int(positions[i][0]), int(positions[i][1])),
                regions={k: r[i].numpy() for k, r in getattr(e, "regions", {}).items()},
            )
            writer.submit(self._writer_task(it, result))

    @staticmethod
    def _not_finite(logits_ok: bool, maps: dict[str, np.ndarray], scores: torch.Tensor) -> str | None:
        """What of one input's results is not finite (``"output"``, ``"saliency map"``...), or ``None``."""
        if not logits_ok or not bool(torch.isfinite(scores).all()):
            return "output"
        for method, m in maps.items():
            if not np.isfinite(m).all():
                return f"{method} map"
        return None

    def _explained(self, e: Any) -> list[list[dict[str, Any]]]:
        """Per input, per explained target: what it is, its value (a probability for class logits, else the
        raw score), whether it was found (a detection) and which methods' maps are all zeros."""
        values = e.values.detach().float().cpu()
        zero = {m: e.zero_maps(m).cpu() for m in e.maps}
        rows = []
        for i in range(len(e)):
            row = []
            for k in range(values.shape[1]):
                facts = dict(e.details[i][k]) if e.details else {}
                cls = facts.pop("class", None)
                cls = facts.get("label") if cls is None else cls
                if self.plan.layer_target is not None:
                    title = f"{self.plan.layer_target.layer} channel {self.plan.layer_target.channel}"
                elif e.titles:
                    title = e.titles[k]
                else:
                    title = "class"
                    cls = int(e.targets[i, k]) if e.targets is not None else None
                found = e.found is None or bool(e.found[i, k])
                row.append({"target": title, "class_index": cls,
                            "class_name": self.plan.loaded.label(cls) if cls is not None and self.labels else None,
                            "value": round(float(values[i, k]), 6) if found else None, "value_kind": e.value_kind,
                            "found": found, "zero_maps": [m for m in e.maps if found and bool(zero[m][i, k])],
                            **{key: v for key, v in facts.items() if key not in ("layer", "channel")}})
            rows.append(row)
        return rows

    def _model_fault(self, item: Decoded, err: Exception) -> ModelError | None:
        """The model's fault, not the image's, when a forward fails: a first layer that takes another
        number of channels than the pictures have, or (with a fixed input size, where every tensor has
        the same shape) a failure before any batch went through. ``None``: look for the input at fault."""
        tensor = item.tensor
        assert tensor is not None
        model = self.plan.loaded.model
        first = next((m for m in model.modules() if isinstance(m, torch.nn.modules.conv._ConvNd)), None)
        shape = tuple(tensor.shape)
        if first is not None and tensor.ndim >= 1 and first.in_channels != shape[0]:
            return ModelError(
                f"the model's first layer takes {first.in_channels}-channel input but the images are given as "
                f"{shape[0]}-channel (RGB) tensors of shape {shape}; use a model that takes RGB input (e.g. repeat "
                f"its first layer's weights over 3 channels) or one whose factory converts the input", field="model")
        if getattr(self.plan.preprocessing, "fixed_size", None) and not self.computed_once:
            return ModelError(f"the model cannot take the images as preprocessed (tensors of shape {shape}): "
                              f"{one_line(str(err))}; check the preprocessing it needs (input size, resize, crop)",
                              field="model")
        return None

    # -- write ---------------------------------------------------------------------------------
    def _writer_task(self, item: Decoded, result: InputMaps) -> Callable[[], None]:
        def write() -> None:
            if self.stop is not None:  # the disk is full: do not try every remaining input
                return
            written: list[Path] = []
            try:
                rec = self._write(item, result, written)
                assert self.journal is not None
                self.journal.write(self._entry(rec, item.ident))
            except Exception as err:  # a name too long, a bad picture...: this input failed, the run goes on
                for path in written:  # no stray files of an input the index does not list
                    with contextlib.suppress(OSError):
                        path.unlink()
                if isinstance(err, OSError) and self._stop_if_disk(err, written[-1] if written else None):
                    return
                reason = f"cannot write the outputs of {item.path!r}: {type(err).__name__}: {err}"
                self.fail(item.idx, item.path, reason, item.ident)
                return
            with self._lock:
                self.ok += 1
                self.maps += rec.maps
        return write

    def _save(self, picture: Any, name: str, written: list[Path]) -> None:
        path = self.out / name
        render.save_image(picture, path)
        written.append(path)

    def _write(self, item: Decoded, result: InputMaps, written: list[Path]) -> IndexRecord:
        """Save the input picture, every map (and the panel) of one input; return its index record."""
        plan = self.plan
        top5 = [ClassScore(c, plan.loaded.label(c), round(p, 6)) for c, p in result.top5]
        pred = top5[0].class_index if top5 else None
        stem = safe_name(Path(item.path).stem)
        picture = plan.preprocessing.invert(item.tensor)
        input_name = fill_template(plan.settings.input_name, idx=item.idx, stem=stem)
        self._save(picture, input_name, written)
        files: dict[str, str] = {"input": input_name}
        raw: dict[str, str] = {}
        classes: list[int | None] = [c for c, _p in result.targets] if result.targets is not None else [pred]
        if isinstance(plan.target, list):  # output targets: the class each one explains (a box's label...)
            classes = [t["class_index"] for t in result.explained]
        for t in result.explained:
            if not t["found"]:
                self.reporter.info(f"no map: {item.path!r}: {t['target']}: {t.get('reason', 'nothing to explain')}")
            elif t["zero_maps"]:
                self.reporter.warning(f"{item.path!r}: the {', '.join(t['zero_maps'])} map of {t['target']} is all "
                         f"zeros (an empty region, or every ReLU on its path gated off)")
        found = [t["found"] for t in result.explained]
        marks = [_mark(t, r, result.regions.get(r)) for r, t in enumerate(result.explained)]
        ranked = self._save_maps(item.idx, stem, picture, result.maps, classes, files, raw, written, found, marks,
                                 [t["target"] for t in result.explained])
        marks = [m for m, f in zip(marks, found) if f]  # the panel's rows: the targets found
        panel = (self._save_panel(item.idx, stem, picture, ranked, result, top5, written, marks) if self.settings.panel
                 else None)
        if panel is not None:
            files["panel"] = panel
        return self._index_record(item, result, top5, files, raw)

    def _save_maps(self, idx: int, stem: str, picture: np.ndarray, maps: dict[str, np.ndarray],
                   classes: list[int | None], files: dict[str, str], raw: dict[str, str],
                   written: list[Path], found: list[bool] | None = None,
                   marks: list[render.Mark | None] | None = None,
                   titles: list[str] | None = None) -> dict[str, list[np.ndarray]]:
        """Render and save each method's maps (one per explained class); fill ``files``/``raw``.

        Returns every method's maps in rank order (RGB), which the panel shows.
        """
        plan, s = self.plan, self.settings
        lt = plan.layer_target
        bgr = bool(getattr(plan.preprocessing, "bgr", False))
        ranked: dict[str, list[np.ndarray]] = {m: [] for m in plan.methods}
        for method in plan.methods:
            stack = maps[method]  # (K, C, H, W)
            for r in range(stack.shape[0]):
                if found is not None and r < len(found) and not found[r]:
                    continue  # nothing to explain (no matching detection): no map, never a zero map
                cls = classes[r] if r < len(classes) else classes[0]
                name = fill_template(s.name, idx=idx, stem=stem, method=method, rank=r + 1, class_index=cls,
                             label=safe_name(plan.loaded.label(cls)) if cls is not None else "none",
                             layer=safe_name(lt.layer) if lt else "none", channel=lt.channel if lt else "none",
                             target=safe_name(titles[r]) if titles and r < len(titles) else "none")
                m = stack[r]
                if bgr and m.shape[0] == 3:
                    m = m[::-1]  # the network's BGR channels back to RGB
                ranked[method].append(m)
                shown = render.method_picture(method, m, image=picture, norm=s.normalization)
                mark = marks[r] if marks is not None and r < len(marks) else None
                if mark is not None:  # what the map explains: a detection's box, a region's outline
                    shown = mark.draw(shown)
                self._save(shown, name, written)
                key = method if r == 0 else f"{method}_top{r + 1}"
                files[key] = name
                if s.save_raw:
                    raw_name = str(Path(name).with_suffix(".npy"))
                    write_bytes(self.out / raw_name, npy_bytes(m.astype(np.float32)))
                    written.append(self.out / raw_name)
                    raw[key] = raw_name
        return ranked

    def _save_panel(self, idx: int, stem: str, picture: np.ndarray, ranked: dict[str, list[np.ndarray]],
                    result: InputMaps, top5: list[ClassScore], written: list[Path],
                    marks: list[render.Mark | None] | None = None) -> str | None:
        """A class x method grid (one row per explained class, the input first), titled with what is
        explained, SmoothGrad and a neuron's position; returns its file name."""
        plan, s = self.plan, self.settings
        classes: list[str | None]
        probabilities: list[float | None]
        rows: list[Row] | None = None
        if isinstance(plan.target, list):  # output targets: titled with their raw score, never a probability
            shown = [t for t in result.explained if t["found"]]
            rows = [row_label(target_name(t["target"], t["class_name"]), score=t["value"]) for t in shown]
            classes, probabilities = [None] * len(shown), [None] * len(shown)
            if not shown:
                return None  # nothing found to explain in this image: no panel
        elif plan.layer_target is not None:
            classes, probabilities = [f"{plan.layer_target.layer} channel {plan.layer_target.channel}"], [None]
        elif result.targets is not None:
            classes = [plan.loaded.label(c) for c, _p in result.targets]
            probabilities = [p for _c, p in result.targets]
        elif top5:
            classes, probabilities = [top5[0].class_name], [top5[0].probability]
        else:
            classes, probabilities = [None], [None]
        pic = panels.class_panel(picture, ranked, classes=classes, probabilities=probabilities, norm=s.normalization,
                                 smooth=s.smooth, noise=s.noise if s.smooth else None, position=result.position,
                                 marks=marks, rows=rows)  # type: ignore[arg-type]
        panel_name = fill_template(PANEL_NAME, idx=idx, stem=stem)
        self._save(pic, panel_name, written)
        return panel_name

    def _index_record(self, item: Decoded, result: InputMaps, top5: list[ClassScore], files: dict[str, str],
                      raw: dict[str, str]) -> IndexRecord:
        """The index record of one finished input: prediction, explained classes or unit, files."""
        plan = self.plan
        best = top5[0] if top5 else ClassScore(None, None, None)
        targets = None if result.targets is None else [
            ClassScore(c, plan.loaded.label(c), round(p, 6)) for c, p in result.targets]
        layer_target = None
        if plan.layer_target is not None:
            lt = plan.layer_target
            neuron: NeuronValue = ("max" if isinstance(lt, MaxNeuron) else (lt.y, lt.x) if isinstance(lt, Neuron)
                                   else None)
            layer_target = LayerTargetRecord(layer=lt.layer, channel=lt.channel, neuron=neuron,
                                             position=result.position, score=result.scores[0])
        return IndexRecord(idx=item.idx, input=item.path, status="ok", error=None, class_index=best.class_index,
                           class_name=best.class_name, probability=best.probability, top5=top5, targets=targets,
                           layer_target=layer_target, files=files, raw=raw if self.settings.save_raw else None,
                           explained=result.explained)


def _mark(target: dict[str, Any], rank: int, region: np.ndarray | None) -> render.Mark | None:
    """What map ``rank`` explains, to draw on it: a detection's box with its label and score, a region's
    outline with its class; ``None`` for other targets (classes, units, raw scores)."""
    colour = render.BOX_COLOURS[rank % len(render.BOX_COLOURS)]
    name = target.get("class_name") or (f"class {target['class_index']}" if target.get("class_index") is not None
                                          else "")
    if target.get("box") is not None:
        score = target.get("detection_score", target.get("value"))
        text = f"{name} {score:.2f}".strip() if score is not None else name
        return render.Mark(box=target["box"], text=text or None, colour=colour)
    if region is not None:
        return render.Mark(mask=region, text=name or None, colour=colour)
    return None


def fit_masks(target: Any, x: torch.Tensor) -> Any:
    """A --mask picture resized (nearest) to this batch's input size: inputs of several sizes share it."""
    if not isinstance(target, list):
        return target
    size = tuple(x.shape[-2:])
    return [Region(t.cls, torch.nn.functional.interpolate(t.mask[None, None], size=size, mode="nearest")[0, 0])
            if isinstance(t, Region) and isinstance(t.mask, torch.Tensor) and tuple(t.mask.shape) != size else t
            for t in target]
