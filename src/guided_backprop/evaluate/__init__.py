"""Can these maps be trusted? Sanity checks and faithfulness metrics for attribution maps.

* :func:`model_randomization` -- Adebayo et al. 2018 (arXiv:1810.03292): maps of a network whose
  weights are re-initialised block by block, compared with the trained network's;
* :func:`efficient_mprt` -- Hedström et al. 2023 (arXiv:2401.06465): the rise in a map's complexity
  (entropy) from the trained to the fully randomised network, two explanations per image; Smooth
  MPRT is :func:`model_randomization` with ``smoothing``;
* :func:`class_sensitivity` -- Nie et al. 2018 (arXiv:1805.07039), the random-logit test of Sixt et
  al. 2020: maps of the predicted class against another class's;
* :func:`deletion_insertion` -- Petsiuk et al. 2018 (arXiv:1806.07421): does removing (inserting)
  the pixels a map ranks first destroy (restore) the prediction faster than a random order?
* :mod:`.similarity` -- the paper's similarity metrics (Spearman of |map| and of the signed map,
  SSIM, HOG);
* :func:`run_checks` -- all of them at once; :func:`evaluate_folder` -- on a folder of images,
  writing ``evaluation.json``, ``evaluation.csv`` and the figures.

The engine (everything but :mod:`.run` and :mod:`.figures`) takes tensors and models and reads no files.
"""

from .checks import CHECKS, DEFAULT_CHECKS, parse_checks, run_checks
from .class_sensitivity import class_sensitivity, random_other_classes
from .complexity import discrete_entropy, efficient_mprt
from .faithfulness import blurred, deletion_insertion, pixel_order
from .randomization import (
    GRANULARITIES,
    ORDERS,
    Smoothing,
    model_logits,
    model_randomization,
    predicted_classes,
    randomization_steps,
    randomized_models,
    reinitialize,
)
from .results import (
    ClassSensitivityResult,
    ComplexityResult,
    CurveResult,
    Evaluation,
    RandomizationResult,
    Summary,
    merge,
    summarize,
)
from .similarity import METRICS, hog, similarities, spearman, spearman_abs, ssim

__all__ = [
    "CHECKS", "DEFAULT_CHECKS", "GRANULARITIES", "METRICS", "ORDERS",
    "ClassSensitivityResult", "ComplexityResult", "CurveResult", "Evaluation", "RandomizationResult", "Smoothing",
    "Summary",
    "blurred", "class_sensitivity", "deletion_insertion", "discrete_entropy", "efficient_mprt", "evaluate_folder",
    "hog", "merge", "model_logits",
    "model_randomization",
    "parse_checks", "pixel_order", "predicted_classes", "random_other_classes", "randomization_steps",
    "randomized_models", "reinitialize", "run_checks", "similarities", "spearman", "spearman_abs", "ssim",
    "summarize",
]


def __getattr__(name: str) -> object:
    if name == "evaluate_folder":  # reads files and draws figures: loaded on first use
        from .run import evaluate_folder

        return evaluate_folder
    raise AttributeError(f"module 'guided_backprop.evaluate' has no attribute {name!r}")
