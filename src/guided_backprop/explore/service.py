"""The explorer's computing service: the engine behind the pages, with no HTTP in it.

One :class:`ExploreService` holds the loaded model, the list of inputs (served by index only: no
path ever comes from a request) and small per-image caches: the input as the network sees it, its
logits, and the maps of every method for each explained class, computed together by one
:meth:`Explainer.explain` (one forward pass and one backward pass per rule), so that switching
methods re-uses them. Once a class is shown, the other top-5 classes' maps are computed in the
background (on a copy of the model, while no request is under way), ready for the next click. Every use
of the model holds one lock, so concurrent requests never mix their maps, and every engine call
restores the model as it found it (hooks, modes, train flags).

Requests of one client are "latest wins": a request whose sequence number is older than the
client's latest is dropped (:class:`Superseded`) before it takes the model.
"""

from __future__ import annotations

import atexit
import copy
import io
import os
import shlex
import threading
import time
import weakref
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
from PIL import Image, ImageDraw
from torch import nn

from .. import render
from ..attribution import Explainer
from ..errors import GuidedBackpropError, ImageError, InputError, NoReLUError, TargetError
from ..hooks import find_layer, layer_output, logits_of, model_state
from ..images import load_image
from ..methods import METHODS, REGISTRY, method_title, parse_methods
from ..panels import explanation_panel
from ..receptive import LayerRow, ReceptiveField, layer_table, receptive_field
from ..reporting import Reporter
from ..targets import Channel, Neuron

__all__ = ["ExploreService", "Superseded", "UnitJob", "command_line", "png_bytes"]

T = TypeVar("T")
THUMB = 96  # thumbnail size (px, longer side)
UNIT_METHODS = ("guided_backprop", "deconvnet")


@dataclass
class UnitJob:
    """A background search of the images where one channel fires most (see :meth:`ExploreService.top_images`)."""

    layer: str
    channel: int
    total: int
    k: int = 9
    state: str = "waiting"  # waiting, running, done, failed
    done: int = 0
    error: str | None = None
    reused: bool = False  # read from the disk cache
    top: list[dict[str, Any]] = field(default_factory=list)
    picture: bytes | None = None

    def status(self) -> dict[str, Any]:
        """What the page shows (no pixels)."""
        return {"layer": self.layer, "channel": self.channel, "state": self.state, "done": self.done,
                "total": self.total, "error": self.error, "reused": self.reused, "top": self.top}


_OPEN: weakref.WeakSet[ExploreService] = weakref.WeakSet()


@atexit.register
def _close_all() -> None:
    for service in list(_OPEN):
        service.close(timeout=10.0)


class Superseded(Exception):
    """A request overtaken by a newer one of the same client before it started."""


class _JobProgress(Reporter):
    """A unit job's progress (shown by the page); a stopped explorer stops the job. Unreadable images are
    not told here: the page says so when one is chosen."""

    def __init__(self, job: UnitJob, service: ExploreService) -> None:
        self.job, self.service = job, service

    def progress(self, done: int, total: int, task: str = "") -> None:
        if self.service._closing:
            raise InputError("the explorer was stopped")
        self.job.done, self.job.total = done, total


def png_bytes(picture: np.ndarray | Image.Image) -> bytes:
    """A picture as PNG bytes (fast compression, as the command writes them)."""
    image = picture if isinstance(picture, Image.Image) else Image.fromarray(picture)
    buf = io.BytesIO()
    image.save(buf, format="PNG", compress_level=render.PNG_COMPRESS_LEVEL)
    return buf.getvalue()


@dataclass
class _Prepared:
    """One input, ready: the tensor ``(1, C, H, W)`` on the model's device, the picture the network
    sees (uint8 ``(H, W, 3)``), its logits ``(classes,)`` and the maps computed so far."""

    x: torch.Tensor
    picture: np.ndarray
    logits: torch.Tensor
    maps: dict[tuple[int, int], dict[str, np.ndarray]] = field(default_factory=dict)  # (class, smooth) -> maps
    activations: dict[str, torch.Tensor] = field(default_factory=dict)  # layer -> (C, h, w)
    prefetched: bool = False  # the other top classes' maps were asked for in the background


class ExploreService:
    """What the explorer computes, for one loaded model and a fixed list of image files.

    Args:
        loaded: a :class:`~guided_backprop.models.LoadedModel`.
        paths: the image files; the service reads nothing else.
        names: the display name of each file (default: its path).
        gradcam_layer: the layer of Grad-CAM and Guided Grad-CAM (default: the model's, or the engine's).
        smooth_samples, noise, seed: SmoothGrad when it is switched on.
        model_args: the model options as command-line words, for :meth:`command`.
        cache_images: how many prepared inputs are kept.
        units_folder: where the top activations of channels over the images are kept on disk
            (``.unit-cache/``, as ``guided-backprop units -o`` the same folder reads them); ``None``: not kept.
        prefetch: once a class of an image is shown, compute the maps of its other top-5 classes in the
            background (on a copy of the model, while no request is under way).
    """

    def __init__(self, loaded: Any, paths: Sequence[str | Path], *, names: Sequence[str] | None = None,
                 gradcam_layer: str | None = None, smooth_samples: int = 16, noise: float = 0.15, seed: int = 0,
                 model_args: Sequence[str] = (), cache_images: int = 8, units_folder: str | Path | None = None,
                 prefetch: bool = True) -> None:
        self.loaded = loaded
        self.paths = [Path(p) for p in paths]
        self.names = [str(n) for n in names] if names is not None else [str(p) for p in self.paths]
        if len(self.names) != len(self.paths):
            raise InputError(f"got {len(self.names)} names for {len(self.paths)} images")
        self.gradcam_layer = gradcam_layer or getattr(loaded, "gradcam_layer", None)
        self.smooth_samples = int(smooth_samples)
        self.noise = float(noise)
        self.seed = int(seed)
        self.model_args = list(model_args)
        self.explainer = Explainer(loaded.model)
        self.lock = threading.RLock()  # every use of the model
        self._cache: OrderedDict[int, _Prepared] = OrderedDict()
        self._cache_images = max(1, int(cache_images))
        self._latest: dict[str, int] = {}
        self._latest_lock = threading.Lock()
        self._active = 0  # requests under way (see run)
        self._layers: list[LayerRow] | None = None
        self._fields: dict[tuple[str, tuple[int, int]], ReceptiveField] = {}
        self.units_folder = None if units_folder is None else Path(units_folder)
        self.prefetch = bool(prefetch)
        self._jobs: dict[tuple[str, int], UnitJob] = {}
        self._jobs_lock = threading.Lock()
        self._runner_lock = threading.Lock()
        self._background_model: nn.Module | None = None
        self._threads: list[threading.Thread] = []
        self._threads_lock = threading.Lock()
        self._closing = False
        _OPEN.add(self)

    # -- requests ---------------------------------------------------------------------------------
    def run(self, fn: Callable[[], T], *, client: str | None = None, seq: int | None = None) -> T:
        """``fn()`` under the model lock; with ``client``/``seq``, dropped (:class:`Superseded`) when the
        client sent a newer request meanwhile (checked once the lock is ours, before any work)."""
        with self._latest_lock:
            self._active += 1  # background work waits while a request is under way
            if client is not None and seq is not None:
                self._latest[client] = max(self._latest.get(client, seq), seq)
        try:
            with self.lock:
                if client is not None and seq is not None and self._latest.get(client, seq) > seq:
                    raise Superseded(f"request {seq} of client {client!r} was superseded")
                return fn()
        finally:
            with self._latest_lock:
                self._active -= 1

    # -- images -----------------------------------------------------------------------------------
    def image(self, index: int) -> Path:
        """The file of image ``index`` (an index into the given inputs, never a path from a request)."""
        if not 0 <= int(index) < len(self.paths):
            raise TargetError(f"image {index} does not exist: there are {len(self.paths)} images "
                              f"(0..{len(self.paths) - 1})", field="image")
        return self.paths[int(index)]

    def thumbnail(self, index: int) -> bytes:
        """A small PNG of image ``index`` as it is on disk (no model involved); an unreadable file gets a
        crossed grey square (choosing it says why)."""
        try:
            picture = load_image(self.image(index))
        except ImageError:
            picture = Image.new("RGB", (THUMB, THUMB), (200, 200, 200))
            draw = ImageDraw.Draw(picture)
            draw.line((0, 0, THUMB, THUMB), fill=(160, 40, 40), width=3)
            draw.line((0, THUMB, THUMB, 0), fill=(160, 40, 40), width=3)
        picture.thumbnail((THUMB, THUMB))
        return png_bytes(picture)

    def prepared(self, index: int) -> _Prepared:
        """Image ``index`` read, preprocessed and run through the model once (cached)."""
        with self.lock:
            if index in self._cache:
                self._cache.move_to_end(index)
                return self._cache[index]
            pre = self.loaded.preprocessing
            tensor = pre(load_image(self.image(index)))
            x = tensor.unsqueeze(0).to(self.loaded.device)
            try:
                with model_state(self.loaded.model), torch.no_grad():
                    logits = logits_of(self.loaded.model(x))
            except Exception as err:  # noqa: BLE001 - the user's forward: one message, the app goes on
                raise InputError(f"the model's forward pass failed on {self.names[index]!r} (input shape "
                                 f"{tuple(x.shape)}): {type(err).__name__}: {err}") from err
            item = _Prepared(x=x, picture=pre.invert(tensor), logits=logits[0].detach().float().cpu())
            self._cache[index] = item
            while len(self._cache) > self._cache_images:
                self._cache.popitem(last=False)
            return item

    def warm_up(self) -> None:
        """Prepare the first readable image and its top class's maps, so that the page's first answers come
        from the cache (the first pass through a model is slow: lazy initialisations). Errors are left for
        the page to report when that image is chosen."""
        for index in range(len(self.paths)):
            try:
                top = self.top_classes(index, 1)
                self.maps(index, top[0]["index"], ["guided_backprop"])
                return
            except Exception:  # noqa: BLE001 - said in the page when this image is chosen
                continue

    def picture(self, index: int) -> bytes:
        """PNG of image ``index`` as the network sees it."""
        return png_bytes(self.prepared(index).picture)

    def top_classes(self, index: int, k: int = 5) -> list[dict[str, Any]]:
        """The ``k`` most probable classes ``{"index", "name", "probability"}``, best first."""
        logits = self.prepared(index).logits
        return [{"index": i, "name": name, "probability": p}
                for i, name, p in self.loaded.top_classes(logits[None], k)[0]]

    def class_index(self, key: int | str) -> int:
        """A class index from an index or a class name (the model's own lookup, with close matches)."""
        return int(self.loaded.class_index(key))

    # -- maps -------------------------------------------------------------------------------------
    def maps(self, index: int, class_index: int, methods: Sequence[str], smooth: bool = False
             ) -> dict[str, np.ndarray]:
        """Each method's map ``(C, H, W)`` (Grad-CAM ``(1, H, W)``) for one class of image ``index``.

        Without SmoothGrad every method is computed at the first request of a class (one forward),
        so the others come from the cache; with it only the asked ones (each costs the noisy copies).
        """
        names = parse_methods(methods)
        cls = self.class_index(class_index)
        with self.lock:
            item = self.prepared(index)
            samples = self.smooth_samples if smooth else 0
            have = item.maps.setdefault((cls, samples), {})
            missing = [m for m in names if m not in have]
            if missing:
                wanted = missing if samples else [m for m in METHODS if m not in have]
                have.update(self._compute(item.x, cls, wanted, samples, fallback=missing))
            if not samples:
                self._prefetch(item)
            return {m: have[m] for m in names}

    def _prefetch(self, item: _Prepared) -> None:
        """Start computing, in the background and on the copy of the model, every method's maps for the
        image's other top-5 classes, best first, one class at a time and only while no request of the
        page is under way, so that a later click on one of them finds them ready."""
        if not self.prefetch or item.prefetched:
            return
        item.prefetched = True
        top = item.logits.topk(min(5, item.logits.shape[0])).indices.tolist()
        classes = [int(c) for c in top if (int(c), 0) not in item.maps]
        if classes:
            self._start(self._prefetch_run, item, classes, name="explore-prefetch")

    def _prefetch_run(self, item: _Prepared, classes: list[int]) -> None:
        with self._runner_lock:  # one background computation at a time
            try:
                explainer = Explainer(self._background())
            except Exception:  # noqa: BLE001 - a model that cannot be copied: no prefetch
                return
            for cls in classes:
                while self._active and not self._closing:  # the page's requests first: wait until answered
                    time.sleep(0.01)
                if self._closing:
                    return
                if len(item.maps.get((cls, 0), {})) == len(METHODS):
                    continue
                try:
                    found = explainer.explain(item.x, cls, methods=METHODS, gradcam_layer=self.gradcam_layer)
                except Exception:  # noqa: BLE001 - the page computes (and reports) them when they are asked for
                    return
                with self.lock:
                    have = item.maps.setdefault((cls, 0), {})
                    for m, value in self._first_maps(found.maps).items():
                        have.setdefault(m, value)

    def _start(self, target: Callable[..., None], *args: Any, name: str) -> None:
        """Run ``target(*args)`` in a background thread that :meth:`close` waits for."""
        thread = threading.Thread(target=target, args=args, daemon=True, name=name)
        with self._threads_lock:  # not _jobs_lock: top_images holds it when it starts a job
            self._threads = [t for t in self._threads if t.is_alive()] + [thread]
        thread.start()

    def close(self, timeout: float = 30.0) -> None:
        """Stop the background work (prefetch, top images) and wait for it: a thread killed inside a
        torch operation when the interpreter exits aborts the process. Called when the server stops,
        and at exit for every service still open."""
        self._closing = True
        with self._threads_lock:
            threads = list(self._threads)
        for thread in threads:
            thread.join(timeout)

    def _background(self) -> nn.Module:
        """The copy of the model that background work uses (the page's requests keep the model itself)."""
        if self._background_model is None:
            with self.lock:
                self._background_model = copy.deepcopy(self.loaded.model)
        return self._background_model

    def _compute(self, x: torch.Tensor, cls: int, methods: Sequence[str], samples: int,
                 fallback: Sequence[str]) -> dict[str, np.ndarray]:
        options: dict[str, Any] = {"gradcam_layer": self.gradcam_layer, "smooth": samples, "noise": self.noise,
                                   "seed": self.seed}
        try:
            found = self.explainer.explain(x, cls, methods=tuple(methods), **options)
        except NoReLUError:
            if list(fallback) == list(methods):
                raise
            # a model without ReLU: the asked methods alone say what is wrong (saliency still works)
            found = self.explainer.explain(x, cls, methods=tuple(fallback), **options)
        return self._first_maps(found.maps)

    def _first_maps(self, maps: dict[str, torch.Tensor], target: int = 0) -> dict[str, np.ndarray]:
        """Each method's map of the first sample and of one target, as float32 ``(C, H, W)`` in RGB order."""
        bgr = bool(getattr(self.loaded.preprocessing, "bgr", False))
        out = {}
        for m, value in maps.items():
            a = value[0, target].detach().float().cpu().numpy()
            out[m] = a[::-1].copy() if bgr and a.shape[0] == 3 else a  # the network's BGR back to RGB
        return out

    def probability(self, index: int, class_index: int) -> float:
        """The softmax probability of a class for image ``index``."""
        return float(self.prepared(index).logits.softmax(-1)[int(class_index)])

    def panel(self, index: int, class_index: int, methods: Sequence[str], smooth: bool = False) -> Image.Image:
        """The panel the command draws (``--panel``): the input, then each method's map with its title
        and colour bar, labelled with the class and its probability."""
        names = parse_methods(methods)
        cls = self.class_index(class_index)
        maps = self.maps(index, cls, names, smooth)
        return explanation_panel(
            self.prepared(index).picture, maps, class_name=self.loaded.label(cls),
            probability=self.probability(index, cls), smooth=self.smooth_samples if smooth else 0,
            noise=self.noise if smooth else None)

    # -- layers and units -------------------------------------------------------------------------
    def layers(self) -> list[LayerRow]:
        """Every layer with its output shape and receptive field, as ``guided-backprop layers`` lists them."""
        with self.lock:
            if self._layers is None:
                self._layers = layer_table(self.loaded.model, self.loaded.preprocessing)
            return self._layers

    def activations(self, index: int, layer: str) -> torch.Tensor:
        """The output ``(C, h, w)`` of ``layer`` for image ``index`` (cached per image)."""
        with self.lock:
            find_layer(self.loaded.model, layer)
            item = self.prepared(index)
            if layer not in item.activations:
                out = layer_output(self.loaded.model, item.x, layer)
                if out.ndim != 4:
                    raise TargetError(f"layer {layer!r} outputs shape {tuple(out.shape)}, not a spatial "
                                      f"(N, C, h, w) map; pick a convolutional layer", field="layer")
                item.activations[layer] = out[0].detach().float().cpu()
            return item.activations[layer]

    def _checked(self, index: int, layer: str, channel: int) -> torch.Tensor:
        """:meth:`activations`, with ``channel`` checked against the layer's channels."""
        act = self.activations(index, layer)
        if not 0 <= int(channel) < act.shape[0]:
            raise TargetError(f"channel {channel} is out of range for layer {layer!r} with {act.shape[0]} channels "
                              f"(valid: 0..{act.shape[0] - 1})", field="channel")
        return act

    def channel_ranking(self, index: int, layer: str) -> list[dict[str, float]]:
        """The channels of ``layer`` for image ``index``, strongest (mean activation) first."""
        act = self.activations(index, layer)
        means = act.mean(dim=(1, 2))
        maxes = act.amax(dim=(1, 2))
        order = torch.sort(means, descending=True, stable=True).indices.tolist()
        return [{"channel": int(c), "mean": float(means[c]), "max": float(maxes[c])} for c in order]

    def activation_picture(self, index: int, layer: str, channel: int, *, size: int = 64) -> np.ndarray:
        """Channel ``channel``'s activation map as a grey picture (0 black, the layer's largest value
        for this image white), enlarged to at least ``size`` px (nearest neighbour: one block per unit)."""
        act = self._checked(index, layer, channel)
        top = float(act.max())
        a = (act[int(channel)].clamp(min=0) / top).numpy() if top > 0 else np.zeros(act.shape[1:])
        grey = np.rint(np.clip(a, 0, 1) * 255).astype(np.uint8)
        factor = max(1, -(-size // max(grey.shape)))
        return np.repeat(np.repeat(grey, factor, axis=0), factor, axis=1)

    def field(self, layer: str, image_size: tuple[int, int]) -> ReceptiveField:
        """The receptive field of ``layer``'s units for an input of ``image_size`` (cached)."""
        key = (layer, (int(image_size[0]), int(image_size[1])))
        with self.lock:
            if key not in self._fields:
                channels = int(getattr(self.loaded.preprocessing, "channels", 3) or 3)
                self._fields[key] = receptive_field(self.loaded.model, layer, key[1], in_channels=channels)
            return self._fields[key]

    def unit_maps(self, index: int, layer: str, channel: int, position: tuple[int, int] | None = None
                  ) -> dict[str, np.ndarray]:
        """Guided backprop and deconvnet maps ``(C, H, W)`` of a channel (summed over positions) or of
        the unit at ``position = (y, x)`` of ``layer``, for image ``index``."""
        act = self._checked(index, layer, channel)
        if position is not None and not (0 <= position[0] < act.shape[1] and 0 <= position[1] < act.shape[2]):
            raise TargetError(f"unit (y={position[0]}, x={position[1]}) is outside layer {layer!r}'s "
                              f"{act.shape[1]}x{act.shape[2]} map", field="position")
        target = Channel(layer, int(channel)) if position is None else Neuron(layer, int(channel), *position)
        with self.lock:
            found = self.explainer.explain(self.prepared(index).x, target, methods=UNIT_METHODS, strict=False)
        return self._first_maps(found.maps)

    def unit_panel(self, index: int, layer: str, channel: int, position: tuple[int, int] | None = None
                   ) -> Image.Image:
        """The input (with the unit's receptive field outlined when a position is given), then the
        unit's guided-backprop and deconvnet maps, titled as the panels are."""
        maps = self.unit_maps(index, layer, channel, position)
        picture = self.prepared(index).picture
        if position is not None:
            h, w = picture.shape[:2]
            top, left, bottom, right = self.field(layer, (h, w)).box(position[0], position[1], (h, w))
            image = Image.fromarray(picture)
            ImageDraw.Draw(image).rectangle((left, top, max(left, right - 1), max(top, bottom - 1)),
                                            outline=(255, 215, 0), width=max(1, min(h, w) // 112))
            picture = np.asarray(image)
        return explanation_panel(picture, maps, class_name=f"{layer} channel {channel}", position=position)

    # -- what a unit responds to in the folder ----------------------------------------------------
    def top_images(self, layer: str, channel: int, *, start: bool = True) -> UnitJob:
        """The job finding the ``k = 9`` images and positions where ``channel`` of ``layer`` fires most
        over all the images (the ``units`` grid), started in the background on first request. It runs
        on a copy of the model, so the page stays live; one job runs at a time."""
        self._check_unit(layer, channel)
        key = (layer, int(channel))
        with self._jobs_lock:
            job = self._jobs.get(key)
            if job is None or (job.state == "failed" and start):
                job = UnitJob(layer, int(channel), total=len(self.paths))
                self._jobs[key] = job
                self._start(self._run_job, job, name=f"explore-top9-{layer}-{channel}")
            return job

    def _check_unit(self, layer: str, channel: int) -> None:
        """A known layer with a spatial output, and one of its channels (from the layer table)."""
        find_layer(self.loaded.model, layer)
        row = next((r for r in self.layers() if r.name == layer), None)
        if row is None or not row.spatial or row.shape is None:
            raise TargetError(f"layer {layer!r} has no spatial (N, C, h, w) output; pick a convolutional layer",
                              field="layer")
        if not 0 <= int(channel) < row.shape[1]:
            raise TargetError(f"channel {channel} is out of range for layer {layer!r} with {row.shape[1]} channels "
                              f"(valid: 0..{row.shape[1] - 1})", field="channel")

    def _run_job(self, job: UnitJob) -> None:
        from ..unit_cache import cached_tops
        from ..units import ImageFiles, unit_grids

        with self._runner_lock:  # one job at a time, on the background copy of the model
            job.state = "running"
            try:
                model, pre = self._background(), self.loaded.preprocessing

                progress = _JobProgress(job, self)  # unreadable images: said when they are chosen
                if self.units_folder is not None:
                    tops, reused = cached_tops(self.units_folder, model, self.paths, job.layer, pre, [job.channel],
                                               job.k, reporter=progress)
                    job.reused = bool(reused)
                else:
                    tops = None
                grid = unit_grids(model, ImageFiles(self.paths, pre), job.layer, [job.channel], k=job.k,
                                  display=pre, sources=self.names, on_error="skip", tops=tops,
                                  reporter=progress)[0]
                job.top = [{**t.to_dict(), "name": t.source} for t in grid.top]
                job.picture = png_bytes(grid.picture)
                job.done = job.total
                job.state = "done"
            except Exception as err:  # noqa: BLE001 - shown in the page, the app goes on
                job.error = str(err) if isinstance(err, GuidedBackpropError) else f"{type(err).__name__}: {err}"
                job.state = "failed"

    # -- reproducing ------------------------------------------------------------------------------
    def command(self, index: int, class_index: int, methods: Sequence[str], smooth: bool = False) -> str:
        """The ``guided-backprop`` command line that writes this panel (``--panel``)."""
        return command_line(self.image(index), methods=parse_methods(methods), target=int(class_index),
                            smooth=self.smooth_samples if smooth else 0, noise=self.noise, seed=self.seed,
                            gradcam_layer=self.gradcam_layer, model_args=self.model_args)

    def info(self) -> dict[str, Any]:
        """What the page needs first: the model, the methods with their titles, the images, the labels."""
        return {
            "model": str(self.loaded.name),
            "methods": [{"name": m, "title": method_title(m), "paper": REGISTRY[m].paper} for m in METHODS],
            "images": [{"index": i, "name": n} for i, n in enumerate(self.names)],
            "labels": list(self.loaded.labels),
            "smooth": self.smooth_samples,
        }


def command_line(path: str | os.PathLike[str], *, methods: Sequence[str], target: int, smooth: int = 0,
                 noise: float = 0.15, seed: int = 0, gradcam_layer: str | None = None,
                 model_args: Sequence[str] = ()) -> str:
    """``guided-backprop FILE -o out --methods ... --target N --panel [model options]``, shell-quoted."""
    words = ["guided-backprop", os.fspath(path), "-o", "out", "--methods", ",".join(methods), "--target",
             str(int(target)), "--panel"]
    if gradcam_layer and any(REGISTRY[m].gradcam for m in methods):
        words += ["--gradcam-layer", gradcam_layer]
    if smooth:
        words += ["--smooth", str(int(smooth)), "--noise", f"{noise:g}", "--seed", str(int(seed))]
    return " ".join(shlex.quote(w) for w in [*words, *model_args])
