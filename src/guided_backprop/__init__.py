"""guided-backprop: guided backpropagation, deconvnet, saliency and Guided Grad-CAM for any ReLU CNN.

>>> import guided_backprop as gbp
>>> maps = gbp.attribute(model, x, target=None, method="guided_backprop")  # same shape as x
"""

from importlib.metadata import PackageNotFoundError, version

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
from .methods import METHODS, MethodSpec, Rule, get_method, parse_methods

# Everything that needs torch (the engine, targets, models with timm and torchvision, pictures)
# loads on first use, so that `import guided_backprop` and `guided-backprop --help` stay light.
_LAZY = {
    "Explainer": "attribution", "Explanation": "attribution", "SmoothGrad": "attribution", "attribute": "attribution",
    "find_layer": "attribution",
    "Channel": "targets", "MaxNeuron": "targets", "Neuron": "targets", "TopK": "targets",
    "Score": "targets", "Region": "targets", "Box": "targets", "Similarity": "targets", "Output": "targets",
    "load_model": "models", "LoadedModel": "models", "available_models": "models", "DEFAULT_MODEL": "models",
    "ModelSpec": "models.spec",
    "Preprocessing": "models.preprocessing",
    "load_image": "images", "find_images": "images",
    "map_to_image": "pictures.render", "heatmap_overlay": "pictures.render", "save_image": "pictures.render",
    "to_pil": "pictures.render",
    "panel": "pictures.panels", "class_panel": "pictures.panels", "explanation_panel": "pictures.panels",
    "show": "pictures.plot",
    "receptive_field": "units.receptive", "ReceptiveField": "units.receptive", "layer_table": "units.receptive",
    "unit_grids": "units.grids", "iter_unit_grids": "units.grids", "save_unit_grids": "units.grids",
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


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))  # lazy names too, for tab completion


try:
    __version__ = version("guided-backprop")
except PackageNotFoundError:  # pragma: no cover - running from a source tree without install
    __version__ = "0+unknown"

__all__ = [
    *_LAZY,
    "METHODS",
    "CheckpointError",
    "GuidedBackpropError",
    "ImageError",
    "InputError",
    "MethodSpec",
    "ModelError",
    "NoReLUError",
    "Rule",
    "TargetError",
    "UnknownNameError",
    "__version__",
    "get_method",
    "parse_methods",
]
