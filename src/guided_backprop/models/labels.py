"""Class names: ImageNet's 1000 (from torchvision's metadata, no download) or a user's label file."""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import ModelError

__all__ = ["generic_labels", "imagenet_labels", "read_labels"]


def imagenet_labels() -> list[str]:
    """The 1000 ImageNet-1k class names in index order (``285`` is ``"Egyptian cat"``)."""
    from torchvision.models._meta import _IMAGENET_CATEGORIES

    return list(_IMAGENET_CATEGORIES)


def generic_labels(num_classes: int) -> list[str]:
    """``["class 0", "class 1", ...]`` for a model without a label file."""
    return [f"class {i}" for i in range(num_classes)]


def read_labels(path: str | Path) -> list[str]:
    """Class names from a label file, in index order.

    Accepted formats: plain text with one name per line (line N is class N-1, so a blank line before the
    last name is an error naming its line: skipping it would shift every later class; blank lines at the
    end are ignored); a JSON list of
    names; a JSON object from index to name (``{"0": "cat", ...}``; a list value such as
    ``["n01440764", "tench"]`` gives its last element, as in Keras' ``imagenet_class_index.json``);
    or a JSON object from name to index. Indices must run 0..N-1 without gaps.
    """
    file = Path(path).expanduser()
    try:
        text = file.read_text(encoding="utf-8-sig")
    except FileNotFoundError as err:
        raise ModelError(f"label file not found: '{file}'") from err
    except (OSError, UnicodeDecodeError) as err:
        raise ModelError(f"cannot read label file '{file}': {err}") from err
    stripped = text.strip()
    if file.suffix.lower() == ".json" or stripped[:1] in ("[", "{"):
        try:
            data = json.loads(stripped)
        except json.JSONDecodeError as err:
            raise ModelError(f"label file '{file}' is not valid JSON: {err}") from err
        labels = _from_json(data, file)
    else:
        lines = text.splitlines()
        while lines and not lines[-1].strip():
            lines.pop()
        blank = [n for n, line in enumerate(lines, 1) if not line.strip()]
        if blank:
            shown = ", ".join(map(str, blank[:5])) + (", ..." if len(blank) > 5 else "")
            raise ModelError(
                f"label file '{file}': line {shown} {'is' if len(blank) == 1 else 'are'} blank; line N names class "
                f"N-1, so a blank line would shift every later class; write the class's name there (or "
                f"'class {blank[0] - 1}')", field="labels")
        labels = [line.strip() for line in lines]
    if not labels:
        raise ModelError(f"label file '{file}' holds no class names; write one name per line or a JSON list")
    return labels


def _from_json(data: object, file: Path) -> list[str]:
    if isinstance(data, list):
        return [_name(v, file) for v in data]
    if not isinstance(data, dict):
        raise ModelError(f"label file '{file}' must hold a JSON list or object, got {type(data).__name__}")
    if all(isinstance(v, int) and not isinstance(v, bool) for v in data.values()):
        by_index = {int(v): str(k) for k, v in data.items()}
    elif all(str(k).strip().lstrip("-").isdigit() for k in data):
        by_index = {int(k): _name(v, file) for k, v in data.items()}
    else:
        raise ModelError(
            f"label file '{file}': a JSON object must map indices to names ({{\"0\": \"cat\"}}) "
            f"or names to indices ({{\"cat\": 0}})"
        )
    missing = sorted(set(range(len(by_index))) - set(by_index))
    if missing or len(by_index) != len(data):
        raise ModelError(
            f"label file '{file}': indices must run 0..{len(data) - 1} without gaps or repeats"
            + (f"; missing {missing[:5]}" if missing else "")
        )
    return [by_index[i] for i in range(len(by_index))]


def _name(value: object, file: Path) -> str:
    if isinstance(value, list) and value:
        value = value[-1]
    if not isinstance(value, (str, int)) or isinstance(value, bool):
        raise ModelError(f"label file '{file}': a class name must be a string, got {value!r}")
    return str(value)
