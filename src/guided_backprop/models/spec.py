"""The one home of a model's options: :class:`ModelSpec` (which network, its weights and class names,
how pictures become its input, where it runs), with the one :meth:`ModelSpec.load`.

The command line parses its model flags into a spec once (``cli.options.model_options``); every
command's config (``BatchConfig.model``, ``EvaluateConfig.model``) and the Python loaders
(:func:`~guided_backprop.models.load_model`) hold one. Importing this module loads no torch.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Union

if TYPE_CHECKING:
    import torch

    from . import LoadedModel
    from .preprocessing import Preprocessing

__all__ = ["DEFAULT_DEVICE", "ModelSpec", "load_model"]

#: Where a model runs unless told: CUDA where available, else the CPU (see :mod:`.devices`).
DEFAULT_DEVICE = "auto"

#: Changes to the model's own preprocessing (the arguments of :meth:`Preprocessing.adjust`:
#: ``input_size``, ``resize``, ``crop``, ``mean``, ``std``, ``channels``), or a whole replacement.
PreprocessingChanges = Union[Mapping[str, Any], "Preprocessing", None]


@dataclass(frozen=True)
class ModelSpec:
    """Which model, and how: what :func:`~guided_backprop.models.load_model` takes, as one value.

    ``name``: a registry name, ``"timm:<name>"`` or a factory ``"pkg.mod:fn"`` / ``"file.py:fn"``
    (``None``: :data:`~guided_backprop.models.DEFAULT_MODEL`). ``weights``: ``None`` (the model's
    own), a checkpoint path, a weights name or ``"random"``. ``labels``: a label file replacing the
    class names. ``num_classes``: the classes of a checkpoint or factory model. ``trust_checkpoint``:
    allow pickled checkpoints (they run code). ``preprocessing``: changes to the model's own
    preprocessing (a dict of :meth:`~guided_backprop.Preprocessing.adjust` arguments, e.g.
    ``{"input_size": 160}``) or a :class:`~guided_backprop.Preprocessing` that replaces it.
    ``device``: ``"auto"``, ``"cpu"``, ``"cuda[:N]"``, ``"mps"`` or a ``torch.device``.
    """

    name: str | None = None
    weights: str | Path | None = None
    labels: str | Path | None = None
    num_classes: int | None = None
    trust_checkpoint: bool = False
    preprocessing: PreprocessingChanges = None
    device: str | torch.device = DEFAULT_DEVICE

    @property
    def model_name(self) -> str:
        """``name``, or the default model's when none was given."""
        from .builder import DEFAULT_MODEL

        return self.name or DEFAULT_MODEL

    def changes(self) -> dict[str, Any]:
        """The preprocessing changes as :meth:`Preprocessing.adjust` arguments (``{}`` for none, or for a
        whole replacement)."""
        from .preprocessing import Preprocessing

        if self.preprocessing is None or isinstance(self.preprocessing, Preprocessing):
            return {}
        return dict(self.preprocessing)

    def load(self, device: torch.device | None = None) -> LoadedModel:
        """The :class:`~guided_backprop.models.LoadedModel`: built, weights loaded, preprocessing changed,
        in eval mode on ``device`` (already resolved, e.g. a torchrun rank's GPU) or on ``self.device``."""
        from .registry import load_spec

        return load_spec(self, device)


def load_model(
    name: str | None = None,
    *,
    weights: str | Path | None = None,
    labels: str | Path | None = None,
    num_classes: int | None = None,
    trust_checkpoint: bool = False,
    device: str | torch.device = DEFAULT_DEVICE,
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
        device: where the model goes (``"auto"``: CUDA where available, else the CPU; ``"cpu"``,
            ``"cuda"``...).
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
    return ModelSpec(name, weights=weights, labels=labels, num_classes=num_classes, trust_checkpoint=trust_checkpoint,
                     preprocessing=preprocessing, device=device).load()
