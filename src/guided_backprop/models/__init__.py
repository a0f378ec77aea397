"""Models: which network, with its weights, preprocessing and class names.

:mod:`.spec` (:class:`ModelSpec`, the one home of a model's options), :mod:`.registry` (the names
:func:`load_model` knows), :mod:`.zoo` (the named models' builders), :mod:`.factories` (your own model),
:mod:`.builder` (what a builder is asked and returns), :mod:`.preprocessing`, :mod:`.checkpoints`,
:mod:`.labels` and :mod:`.caffe_vgg` (the seed's VGG19). Names load on first use: importing this package
(or :mod:`.spec`) loads no torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .preprocessing import IMAGENET_MEAN, IMAGENET_STD, Preprocessing
    from .registry import DEFAULT_MODEL, MODEL_NAMES, LoadedModel, ModelInfo, available_models, relu_support
    from .spec import ModelSpec, load_model

_HOMES = {"ModelSpec": "spec", "Preprocessing": "preprocessing", "IMAGENET_MEAN": "preprocessing",
          "IMAGENET_STD": "preprocessing", "DEFAULT_MODEL": "registry", "MODEL_NAMES": "registry",
          "LoadedModel": "registry", "ModelInfo": "registry", "available_models": "registry",
          "load_model": "spec", "relu_support": "registry"}

__all__ = ["DEFAULT_MODEL", "IMAGENET_MEAN", "IMAGENET_STD", "MODEL_NAMES", "LoadedModel", "ModelInfo", "ModelSpec",
           "Preprocessing", "available_models", "load_model", "relu_support"]


def __getattr__(name: str) -> object:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'guided_backprop.models' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{home}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_HOMES))
