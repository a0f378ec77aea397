"""The explorer's computing service: the engine behind the pages, with no HTTP in it.

One :class:`ExploreService` holds the loaded model, the list of inputs (served by index only: no
path ever comes from a request) and small per-image caches: the input as the network sees it, its
logits, and the maps of every method for each explained class. One forward pass per image serves
every class and method: it is recorded with its graph (:class:`~guided_backprop.attribution.Recorded`,
the few most recent images' graphs are kept), so a new class or method costs backward passes only
(one per ReLU rule): a click computes the passes of the methods shown (with those they bring for free:
Grad-CAM's short pass, Guided Grad-CAM), and the maps are kept. The background then computes, from the
same graph, the other methods of that class and the other top-5 classes' maps (one backward pass at a
time, only while no request is under way), ready for the next click. Every use of the model holds one
lock, so concurrent requests never mix their maps, and every engine call restores the model as it found
it (hooks, modes, train flags).

Requests of one client are "latest wins": a request whose sequence number is older than the
client's latest is dropped (:class:`Superseded`) before it takes the model.
"""

from __future__ import annotations

import atexit
import contextlib
import copy
import dataclasses
import io
import os
import shlex
import struct
import threading
import time
import weakref
import zlib
from collections import OrderedDict, deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import torch
from PIL import Image, ImageDraw
from torch import nn

from ..attribution import Explainer, Recorded, SmoothGrad
from ..errors import GuidedBackpropError, ImageError, InputError, NoReLUError, TargetError
from ..hooks import find_layer, forward_hooks, layer_output, logits_of, model_state
from ..images import load_image
from ..methods import METHODS, REGISTRY, method_title, parse_methods
from ..pictures import render
from ..pictures.panels import explanation_panel
from ..reporting import Reporter
from ..targets import Channel, Neuron
from ..units.receptive import LayerRow, ReceptiveField, layer_table, receptive_field

__all__ = ["ExploreService", "Superseded", "UnitJob", "command_line", "png_bytes"]

T = TypeVar("T")
THUMB = 96  # thumbnail size (px, longer side)
UNIT_METHODS = ("guided_backprop", "deconvnet")
#: Seconds the background waits after the page's last request, so that the browser fetches and decodes
#: its answer (and asks the next thing) with both cores to itself.
GRACE = 0.15


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
    """A picture as PNG bytes, fast: 8-bit grey or RGB pictures by :func:`_png_sub` (about 2.5x faster than
    Pillow's encoder, whose adaptive filters try five per row, for about the same size), others by Pillow;
    compression at the command's level (fast)."""
    a = np.asarray(picture) if not isinstance(picture, Image.Image) or picture.mode in ("L", "RGB") else None
    if a is not None and a.dtype == np.uint8 and (a.ndim == 2 or (a.ndim == 3 and a.shape[2] == 3)) and a.size:
        return _png_sub(a)
    image = picture if isinstance(picture, Image.Image) else Image.fromarray(picture)
    buf = io.BytesIO()
    image.save(buf, format="PNG", compress_level=render.PNG_COMPRESS_LEVEL)
    return buf.getvalue()


def _png_sub(a: np.ndarray) -> bytes:
    """An 8-bit grey ``(H, W)`` or RGB ``(H, W, 3)`` array as a PNG, every row with the "Sub" filter (each
    byte minus the same channel of the pixel to its left: small numbers where pictures are smooth)."""
    h, w = a.shape[:2]
    channels = 1 if a.ndim == 2 else 3
    pixels = a.reshape(h, w, channels)
    rows = np.empty((h, 1 + w * channels), np.uint8)
    rows[:, 0] = 1  # filter type 1: Sub
    sub = rows[:, 1:].reshape(h, w, channels)
    sub[:, :1] = pixels[:, :1]
    np.subtract(pixels[:, 1:], pixels[:, :-1], out=sub[:, 1:])  # modulo 256, as PNG defines it

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", w, h, 8, 0 if channels == 1 else 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
            + chunk(b"IDAT", zlib.compress(rows.tobytes(), render.PNG_COMPRESS_LEVEL)) + chunk(b"IEND", b""))


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
    recorded: Recorded | None = None  # the forward pass with its graph (None: freed, or not recordable)


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
        graphs: how many images keep their recorded forward graph (memory: the activations of one forward
            each); an image whose graph was dropped is recorded again when a new class or method needs it.
        units_folder: where the top activations of channels over the images are kept on disk
            (``.unit-cache/``, as ``guided-backprop units -o`` the same folder reads them); ``None``: not kept.
        prefetch: once a class of an image is shown, compute its other methods' maps and those of the image's
            other top-5 classes in the background, from the image's recorded forward (one backward pass at a
            time, while no request is under way).
    """

    def __init__(self, loaded: Any, paths: Sequence[str | Path], *, names: Sequence[str] | None = None,
                 gradcam_layer: str | None = None, smooth_samples: int = 16, noise: float = 0.15, seed: int = 0,
                 model_args: Sequence[str] = (), cache_images: int = 8, units_folder: str | Path | None = None,
                 prefetch: bool = True, graphs: int = 3) -> None:
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
        self._graphs: OrderedDict[int, _Prepared] = OrderedDict()  # the images whose graph is kept, oldest first
        self._graph_count = max(1, int(graphs))
        self.forwards = 0  # forward passes recorded (one per image while its graph is kept)
        self._latest: dict[str, int] = {}
        self._latest_lock = threading.Lock()
        self._active = 0  # requests under way (see run)
        self._last_done = 0.0  # when the latest one ended (time.monotonic)
        self._layers: list[LayerRow] | None = None
        self._shapes: dict[tuple[int, ...], dict[str, tuple[int, ...]]] = {}  # input size -> layer -> output shape
        self._fields: dict[tuple[str, tuple[int, int]], ReceptiveField] = {}
        self.units_folder = None if units_folder is None else Path(units_folder)
        self.prefetch = bool(prefetch)
        self._jobs: dict[tuple[str, int], UnitJob] = {}
        self._jobs_lock = threading.Lock()
        self._runner_lock = threading.Lock()
        self._todo: list[tuple[_Prepared, int]] = []  # (image, class) whose maps the background computes
        self._todo_lock = threading.Lock()
        self._worker: threading.Thread | None = None
        self._background_model: nn.Module | None = None
        self._threads: list[threading.Thread] = []
        self._threads_lock = threading.Lock()
        self._closing = False
        self.timings: dict[str, deque[float]] = {}  # stage -> durations (s), the latest 10,000: see timed
        _OPEN.add(self)

    @contextlib.contextmanager
    def timed(self, stage: str) -> Iterator[None]:
        """Note the block's duration under ``stage`` in :attr:`timings` (where a click's time goes:
        ``benchmarks/bench_explore.py`` prints them)."""
        start = time.perf_counter()
        try:
            yield
        finally:
            self.timings.setdefault(stage, deque(maxlen=10_000)).append(time.perf_counter() - start)

    # -- requests ---------------------------------------------------------------------------------
    def run(self, fn: Callable[[], T], *, client: str | None = None, seq: int | None = None) -> T:
        """``fn()`` under the model lock; with ``client``/``seq``, dropped (:class:`Superseded`) when the
        client sent a newer request meanwhile (checked once the lock is ours, before any work)."""
        with self._latest_lock:
            self._active += 1  # background work waits while a request is under way
            if client is not None and seq is not None:
                self._latest[client] = max(self._latest.get(client, seq), seq)
        try:
            with self.timed("waiting for the model"):
                self.lock.acquire()
            try:
                if client is not None and seq is not None and self._latest.get(client, seq) > seq:
                    raise Superseded(f"request {seq} of client {client!r} was superseded")
                return fn()
            finally:
                self.lock.release()
        finally:
            with self._latest_lock:
                self._active -= 1
                self._last_done = time.monotonic()

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
            size = tuple(int(v) for v in x.shape[2:])
            shapes: dict[str, tuple[int, ...]] = {}  # every layer's output shape at this size
            hooks = [] if size in self._shapes else self._shape_hooks(shapes)
            try:
                with forward_hooks(hooks):
                    recorded: Recorded | None = self._record(x)
                logits = recorded.logits  # type: ignore[union-attr]
            except Exception:  # noqa: BLE001 - not recordable (e.g. no gradient): a plain forward says why
                recorded = None
                try:
                    with model_state(self.loaded.model), torch.no_grad(), forward_hooks(hooks):
                        logits = logits_of(self.loaded.model(x))
                except Exception as err:  # noqa: BLE001 - the user's forward: one message, the app goes on
                    raise InputError(f"the model's forward pass failed on {self.names[index]!r} (input shape "
                                     f"{tuple(x.shape)}): {type(err).__name__}: {err}") from err
            if shapes:
                self._shapes.setdefault(size, shapes)
            item = _Prepared(x=x, picture=pre.invert(tensor), logits=logits[0].detach().float().cpu())
            self._cache[index] = item
            while len(self._cache) > self._cache_images:
                self._free(self._cache.popitem(last=False)[1])
            if recorded is not None:
                self._keep_graph(item, recorded)
            return item

    def _shape_hooks(self, shapes: dict[str, tuple[int, ...]]) -> list[tuple[nn.Module, Any]]:
        """Forward hooks noting every layer's (first) output shape into ``shapes``."""
        def keeper(name: str) -> Callable[..., None]:
            def hook(_m: nn.Module, _i: Any, out: Any) -> None:
                if isinstance(out, torch.Tensor):
                    shapes.setdefault(name, tuple(out.shape))
            return hook

        return [(m, keeper(n)) for n, m in self.loaded.model.named_modules() if n]

    def _record(self, x: torch.Tensor) -> Recorded:
        """One forward pass of ``x`` with its graph (counted in :attr:`forwards`)."""
        with self.timed("forward (recorded)"):
            recorded = Recorded(self.explainer, x, gradcam_layer=self.gradcam_layer)
        self.forwards += 1
        return recorded

    def _keep_graph(self, item: _Prepared, recorded: Recorded) -> None:
        """Keep ``item``'s graph, freeing the oldest kept ones beyond ``graphs``."""
        item.recorded = recorded
        self._graphs[id(item)] = item
        self._graphs.move_to_end(id(item))
        while len(self._graphs) > self._graph_count:
            self._free(self._graphs.popitem(last=False)[1])

    def _free(self, item: _Prepared) -> None:
        """Free ``item``'s graph (its maps and logits stay)."""
        self._graphs.pop(id(item), None)
        if item.recorded is not None:
            item.recorded.close()  # waits for a background pass on it to end
            item.recorded = None

    def _graph(self, item: _Prepared) -> Recorded:
        """``item``'s recorded forward: the kept one, or a new one when it was freed."""
        with self.lock:
            if item.recorded is None or item.recorded.closed:
                self._keep_graph(item, self._record(item.x))
            else:
                self._graphs.move_to_end(id(item))
            assert item.recorded is not None
            return item.recorded

    def warm_up(self) -> None:
        """Prepare the first readable image and its top class's maps, so that the page's first answers come
        from the cache (the first pass through a model is slow: lazy initialisations). Errors are left for
        the page to report when that image is chosen."""
        for index in range(len(self.paths)):
            try:
                top = self.top_classes(index, 1)
                self.maps(index, top[0]["index"], METHODS)  # every method: the page opens meanwhile
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

        Without SmoothGrad every method is computed at the first request of a class, by backward
        passes on the image's recorded forward, so the others come from the cache; with SmoothGrad only
        the asked ones (each costs the noisy copies' forward and backward passes).
        """
        names = parse_methods(methods)
        cls = self.class_index(class_index)
        with self.lock:
            item = self.prepared(index)
            samples = self.smooth_samples if smooth else 0
            have = item.maps.setdefault((cls, samples), {})
            missing = [m for m in names if m not in have]
            if missing and samples:
                have.update(self._compute(item.x, cls, missing, samples, fallback=missing))
            elif missing:
                have.update(self._from_graph(item, cls, missing))
            if not samples:
                self._prefetch(item, cls)
            return {m: have[m] for m in names}

    def _from_graph(self, item: _Prepared, cls: int, asked: Sequence[str]) -> dict[str, np.ndarray]:
        """The maps of ``asked`` for class ``cls``, by backward passes on the image's recorded forward, with
        those that come with the same passes (:func:`_riders`); the background computes the others."""
        try:
            recorded = self._graph(item)
        except Exception:  # noqa: BLE001 - not recordable: a fresh explain of the asked ones, or why it fails
            return self._compute(item.x, cls, asked, 0, fallback=asked)
        with self.timed("waiting for a background pass"):
            recorded.lock.acquire()  # a background pass (one at most) finishes first; its maps are reused
        try:
            have = item.maps.get((cls, 0), {})
            if all(m in have for m in asked):
                return {}
            todo = [m for m in _riders(asked, recorded) if m not in have]
            try:
                with self.timed("backward (click)"):
                    found = recorded.explain(cls, methods=tuple(todo))
            except NoReLUError:
                if sorted(todo) == sorted(asked):
                    raise
                found = recorded.explain(cls, methods=tuple(asked))  # the asked ones alone say what is wrong
            return self._first_maps(found.maps)
        finally:
            recorded.lock.release()

    def _prefetch(self, item: _Prepared, cls: int) -> None:
        """Queue, for the background, the maps of ``cls`` not computed yet, then (once per image) those of
        its other top-5 classes, best first; the newest click's work goes first."""
        if not self.prefetch:
            return
        wanted = [(item, cls)]
        if not item.prefetched:
            item.prefetched = True
            top = item.logits.topk(min(5, item.logits.shape[0])).indices.tolist()
            wanted += [(item, int(c)) for c in top if int(c) != cls]
        keys = {(id(it), c) for it, c in wanted}
        with self._todo_lock:
            self._todo = wanted + [(it, c) for it, c in self._todo if (id(it), c) not in keys]
            if self._worker is None and not self._closing:
                self._worker = self._start(self._prefetch_run, name="explore-prefetch")

    def _prefetch_run(self) -> None:
        """The background worker: one backward step at a time (:meth:`_prefetch_step`), only while no
        request of the page is under way, so that a click waits for one pass at most."""
        while not self._closing:
            with self._todo_lock:
                if not self._todo:
                    self._worker = None
                    return
                item, cls = self._todo[0]
            if self._active or time.monotonic() - self._last_done < GRACE:  # the page first: wait until answered
                time.sleep(0.01)
                continue
            if self._prefetch_step(item, cls):
                with self._todo_lock:
                    self._todo = [(it, c) for it, c in self._todo if not (it is item and c == cls)]
        with self._todo_lock:
            self._worker = None

    def _prefetch_step(self, item: _Prepared, cls: int) -> bool:
        """Compute the next missing maps of class ``cls`` (the methods of one backward pass) from the image's
        recorded forward; True when nothing is left to do for this class (or it cannot be done)."""
        recorded = item.recorded
        if recorded is None or recorded.closed:
            return True  # its graph was freed: a click on it records the image again
        with recorded.lock:  # the graph's own lock (not the model's): the page waits for one pass at most
            have = item.maps.get((cls, 0), {})
            missing = [m for m in METHODS if m not in have]
            if not missing:
                return True
            step = [m for m in _riders(missing[:1], recorded) if m in missing]
            try:
                with self.timed("backward (background)"):
                    found = recorded.explain(cls, methods=tuple(step))
            except Exception:  # noqa: BLE001 - the page computes (and reports) them when they are asked for
                return True
            done = item.maps.setdefault((cls, 0), {})
            for m, value in self._first_maps(found.maps).items():
                done.setdefault(m, value)
            return len(step) == len(missing)

    def _start(self, target: Callable[..., None], *args: Any, name: str) -> threading.Thread:
        """Run ``target(*args)`` in a background thread that :meth:`close` waits for."""
        thread = threading.Thread(target=target, args=args, daemon=True, name=name)
        with self._threads_lock:  # not _jobs_lock: top_images holds it when it starts a job
            self._threads = [t for t in self._threads if t.is_alive()] + [thread]
        thread.start()
        return thread

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
        smoothed = SmoothGrad(self.explainer, samples=samples, noise=self.noise)
        try:
            found = smoothed.explain(x, cls, methods=tuple(methods), gradcam_layer=self.gradcam_layer, seed=self.seed)
        except NoReLUError:
            if list(fallback) == list(methods):
                raise
            # a model without ReLU: the asked methods alone say what is wrong (saliency still works)
            found = smoothed.explain(x, cls, methods=tuple(fallback), gradcam_layer=self.gradcam_layer,
                                     seed=self.seed)
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
        with self.timed("panel (colour maps, layout)"):
            return explanation_panel(
                self.prepared(index).picture, maps, class_name=self.loaded.label(cls),
                probability=self.probability(index, cls), smooth=self.smooth_samples if smooth else 0,
                noise=self.noise if smooth else None)

    # -- layers and units -------------------------------------------------------------------------
    def layers(self, index: int | None = None) -> list[LayerRow]:
        """Every layer with its output shape and receptive field, as ``guided-backprop layers`` lists them,
        with the output shapes of image ``index`` (seen during its forward pass; default: those of the
        preprocessing's nominal size)."""
        with self.lock:
            if self._layers is None:
                self._layers = layer_table(self.loaded.model, self.loaded.preprocessing)
            if index is None:
                return self._layers
            size = tuple(int(v) for v in self.prepared(index).x.shape[2:])
            shapes = self._shapes.get(size)
            if not shapes:
                return self._layers
            return [dataclasses.replace(r, shape=shapes.get(r.name, r.shape), input_size=(size[0], size[1]))
                    for r in self._layers]

    def unit_layers(self, index: int | None = None) -> list[LayerRow]:
        """The layers whose units and Grad-CAM make sense: a spatial ``(N, C, h, w)`` output, not an
        identity, dropout or drop-path layer (:attr:`~.LayerRow.pass_through`), with their real output
        shape and field for image ``index``."""
        return [r for r in self.layers(index) if r.spatial and not r.pass_through]

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
        from ..units.cache import cached_tops
        from ..units.grids import ImageFiles, unit_grids

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


def _riders(asked: Sequence[str], recorded: Recorded) -> list[str]:
    """``asked`` and the methods that come with the same backward passes: those of the same ReLU rules, and
    Grad-CAM (its gradient stops at its layer, a few layers from the output: cheap) with Guided Grad-CAM
    where its rule is there, unless the model has no Grad-CAM layer. In the registry's order."""
    rules = {REGISTRY[m].rule for m in asked} - {None}
    cam = recorded.gradcam_layer is not None or any(REGISTRY[m].gradcam for m in asked)
    return [m for m in METHODS if m in asked or ((REGISTRY[m].rule is None or REGISTRY[m].rule in rules)
                                                 and (not REGISTRY[m].gradcam or cam))]


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
