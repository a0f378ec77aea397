"""guided-backprop: guided backpropagation, deconvnet, saliency and Guided Grad-CAM for any ReLU CNN.

>>> import guided_backprop as gbp
>>> maps = gbp.attribute(model, x, target=None, method="guided_backprop")  # same shape as x
"""

from importlib.metadata import PackageNotFoundError, version

from .attribution import METHODS, Explainer, Explanation, attribute, find_layer, parse_methods
from .errors import (
    CheckpointError,
    GuidedBackpropError,
    ImageError,
    InputError,
    ModelError,
    NoReLUError,
    TargetError,
    UnknownNameError,
)
from .rules import Method
from .targets import Channel, MaxNeuron, Neuron, TopK

try:
    __version__ = version("guided-backprop")
except PackageNotFoundError:  # pragma: no cover - running from a source tree without install
    __version__ = "0+unknown"

__all__ = [
    "METHODS",
    "Channel",
    "CheckpointError",
    "Explainer",
    "Explanation",
    "GuidedBackpropError",
    "ImageError",
    "InputError",
    "MaxNeuron",
    "Method",
    "ModelError",
    "Neuron",
    "NoReLUError",
    "TargetError",
    "TopK",
    "UnknownNameError",
    "__version__",
    "attribute",
    "find_layer",
    "parse_methods",
]
