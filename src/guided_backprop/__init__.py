"""guided-backprop: guided backpropagation, deconvnet, saliency and Guided Grad-CAM for any ReLU CNN.

>>> import guided_backprop as gbp
>>> maps = gbp.attribute(model, x, target=None, method="guided_backprop")  # same shape as x
"""

from importlib.metadata import PackageNotFoundError, version

from .attribution import Explainer, Explanation, attribute, find_layer
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
from .methods import METHODS, MethodSpec, get_method, parse_methods
from .rules import Rule
from .targets import Box, Channel, MaxNeuron, Neuron, Output, Region, Score, Similarity, TopK

# Heavier parts (models pull in timm and torchvision weights metadata, render pulls in Pillow
# fonts and colour maps) load on first use, so that `import guided_backprop` stays light.
_LAZY = {
    "load_model": "models", "LoadedModel": "models", "available_models": "models", "DEFAULT_MODEL": "models",
    "Preprocessing": "preprocessing",
    "load_image": "images", "find_images": "images",
    "map_to_image": "render", "heatmap_overlay": "render", "save_image": "render", "to_pil": "render",
    "panel": "panels", "class_panel": "panels", "explanation_panel": "panels",
    "show": "plot",
    "receptive_field": "receptive", "ReceptiveField": "receptive", "layer_table": "receptive",
    "unit_grids": "units", "save_unit_grids": "units",
    "write_report": "report",
    # sanity checks and faithfulness (issue 13): scipy and scikit-image load with them
    "evaluate": "evaluate", "run_checks": "evaluate", "model_randomization": "evaluate",
    "class_sensitivity": "evaluate", "deletion_insertion": "evaluate", "similarities": "evaluate",
    "evaluate_folder": "evaluate", "Evaluation": "evaluate",
}


def __getattr__(name: str) -> object:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'guided_backprop' has no attribute {name!r}")
    import importlib

    imported = importlib.import_module(f".{module}", __name__)
    value = imported if name == module else getattr(imported, name)
    globals()[name] = value
    return value


try:
    __version__ = version("guided-backprop")
except PackageNotFoundError:  # pragma: no cover - running from a source tree without install
    __version__ = "0+unknown"

__all__ = [
    *_LAZY,
    "METHODS",
    "Channel",
    "CheckpointError",
    "Explainer",
    "Explanation",
    "GuidedBackpropError",
    "ImageError",
    "InputError",
    "MaxNeuron",
    "MethodSpec",
    "ModelError",
    "Neuron",
    "NoReLUError",
    "Rule",
    "TargetError",
    "TopK",
    "Score",
    "Region",
    "Box",
    "Similarity",
    "Output",
    "UnknownNameError",
    "__version__",
    "attribute",
    "find_layer",
    "get_method",
    "parse_methods",
]
