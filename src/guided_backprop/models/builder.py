"""What :func:`~guided_backprop.models.load_model` asks a model builder and what a builder returns.

A builder (one per kind of model: :mod:`.zoo` for the named ones, :mod:`.factories` for the user's
own) gets a :class:`Request` and returns a :class:`Built`. The helpers here are the ones every
builder shares: how a ``weights=`` argument reads (:func:`weights_kind`), reading a checkpoint,
inferring a class count from it, and the class names that go with a class count.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import CheckpointError, ModelError
from .checkpoints import read_state_dict
from .labels import generic_labels, imagenet_labels
from .preprocessing import Preprocessing

__all__ = [
    "DEFAULT_MODEL",
    "WEIGHTS_FLAG",
    "Built",
    "Request",
    "bad_weights",
    "classes_in_checkpoint",
    "labels_for",
    "read_checkpoint",
    "weights_kind",
]

#: The model :func:`~guided_backprop.models.load_model` loads when given no name (offline, packaged weights).
DEFAULT_MODEL = "efficientnet_lite0"

WEIGHTS_FLAG = "weights=PATH"
_RANDOM_WORDS = {"random", "none", "scratch"}
_PRETRAINED_WORDS = {"pretrained", "default"}
_CHECKPOINT_SUFFIXES = {".pt", ".pth", ".bin", ".ckpt", ".safetensors", ".tar", ".npy", ".pkl", ".pickle"}


@dataclass
class Built:
    """What a builder returns: the network, its preprocessing and class names, and where its weights came from."""

    model: nn.Module
    preprocessing: Preprocessing
    num_classes: int | None
    labels: list[str] | None
    weights: str
    source: str
    gradcam_layer: str | None = None
    kind: str = "classifier"  # what its output is: targets.OUTPUT_KINDS


@dataclass(frozen=True)
class Request:
    """What :func:`~guided_backprop.models.load_model` asks a builder for."""

    weights: str | Path | None
    num_classes: int | None
    trust: bool


def weights_kind(weights: str | Path | None) -> tuple[str, Any]:
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


def classes_in_checkpoint(model_state: dict[str, torch.Tensor], state: dict[str, torch.Tensor],
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


def labels_for(num_classes: int | None, categories: Sequence[str] | None = None) -> list[str] | None:
    if num_classes is None:
        return None
    if categories is not None and len(categories) == num_classes:
        return list(categories)
    if num_classes == 1000:
        return imagenet_labels()
    return generic_labels(num_classes)


def read_checkpoint(path: Path, trust: bool) -> dict[str, torch.Tensor]:
    if path.suffix.lower() == ".npy":
        raise CheckpointError(f"'{path}' is a numpy file, not a torch checkpoint; the seed's vgg19.npy loads "
                              f"with the model 'vgg19-caffe'")
    return read_state_dict(path, trust=trust)


def bad_weights(name: str, value: str, valid: str) -> ModelError:
    return ModelError(f"weights {value!r} for model {name!r} are neither a checkpoint file nor {valid}; "
                      f"check the path")
