"""Output file name templates: the defaults, the fields a template may use, their checks and filling."""

from __future__ import annotations

import string
from collections.abc import Sequence
from pathlib import PurePosixPath
from typing import Any

from ..errors import GuidedBackpropError, UnknownNameError

DEFAULT_INPUT_NAME = "im_{idx}.png"
PANEL_NAME = "panel_{idx}.png"  # with panel=True
#: Fields a map name template may use.
MAP_NAME_FIELDS = ("idx", "stem", "label", "class_index", "method", "rank", "layer", "channel", "target")
INPUT_NAME_FIELDS = ("idx", "stem")



def default_map_name(methods: Sequence[str], k: int = 1, *, layer_target: bool = False) -> str:
    """The seed's ``map_{idx}_class_{class_index}.png``, kept unique when more is asked.

    ``_{method}`` is added only when several methods are computed, ``_top{rank}`` only when several
    classes per image are explained (``--target top5``). A layer target gives
    ``map_{idx}_{layer}_ch{channel}.png``.
    """
    stem = "map_{idx}_{layer}_ch{channel}" if layer_target else "map_{idx}_class_{class_index}"
    if len(methods) > 1:
        stem += "_{method}"
    if k > 1 and not layer_target:
        stem += "_top{rank}"
    return stem + ".png"


def template_fields(template: str, allowed: Sequence[str], what: str) -> set[str]:
    """The fields a file-name template uses, checked. ``what`` is the setting's field name
    (``"name"`` or ``"input_name"``), which errors carry."""
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as err:
        raise GuidedBackpropError(
            f"{what}={template!r} is malformed ({err}); write fields as {{idx}}", field=what
        ) from err
    used = set()
    for _text, name, _spec, _conv in parsed:
        if name is None:
            continue
        if name not in allowed:
            raise UnknownNameError("file name field", name, allowed,
                                   hint="write fields in braces, e.g. 'map_{idx}_{label}.png'", field=what)
        used.add(name)
    parts = PurePosixPath(template.replace("\\", "/")).parts
    if template.startswith(("/", "\\")) or ".." in parts or not template.strip():
        raise GuidedBackpropError(f"{what}={template!r} must be a relative path inside the output folder",
                                  field=what)
    return used


def fill_template(template: str, **fields: Any) -> str:
    """The template filled in; ``.png`` is added unless the template itself ends in an extension
    (a dotted ``{stem}`` such as ``holiday.2024`` is not one)."""
    name = template.format(**fields)
    return name if _has_extension(template) else name + ".png"


def _has_extension(template: str) -> bool:
    suffix = PurePosixPath(template.replace("\\", "/")).suffix
    return bool(suffix) and "{" not in suffix and "}" not in suffix
