"""Class names: torchvision's ImageNet list and user label files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from guided_backprop.errors import ModelError
from guided_backprop.models.labels import generic_labels, imagenet_labels, read_labels


def test_imagenet_labels_are_torchvisions_1000() -> None:
    names = imagenet_labels()
    assert len(names) == 1000
    assert names[0] == "tench" and names[285] == "Egyptian cat" and names[967] == "espresso"
    names.append("mutated")
    assert len(imagenet_labels()) == 1000  # a fresh list each time


@pytest.mark.parametrize("content, suffix", [
    ("cat\ndog\nbird\n\n \n", ".txt"),  # blank lines at the end: ignored
    (json.dumps(["cat", "dog", "bird"]), ".json"),
    (json.dumps({"2": "bird", "0": "cat", "1": "dog"}), ".json"),
    (json.dumps({"0": ["n001", "cat"], "1": ["n002", "dog"], "2": ["n003", "bird"]}), ".json"),
    (json.dumps({"dog": 1, "bird": 2, "cat": 0}), ".labels"),
])
def test_label_file_formats(tmp_path: Path, content: str, suffix: str) -> None:
    path = tmp_path / f"labels{suffix}"
    path.write_text(content, encoding="utf-8")
    assert read_labels(path) == ["cat", "dog", "bird"]


def test_label_file_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="label file not found: .*nope.txt"):
        read_labels(tmp_path / "nope.txt")
    gap = tmp_path / "gap.json"
    gap.write_text(json.dumps({"0": "cat", "2": "bird"}))
    with pytest.raises(ModelError, match=r"gap.json.*without gaps.*missing \[1\]"):
        read_labels(gap)
    bad = tmp_path / "bad.json"
    bad.write_text("[1, 2")
    with pytest.raises(ModelError, match="bad.json' is not valid JSON"):
        read_labels(bad)
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n")
    with pytest.raises(ModelError, match="no class names"):
        read_labels(empty)


def test_a_blank_line_among_the_names_is_an_error_naming_it(tmp_path: Path) -> None:
    """Skipping it would silently give every later class its neighbour's name (issue 18.14)."""
    path = tmp_path / "labels.txt"
    path.write_text("cat\ndog\n\nbird\n")
    with pytest.raises(ModelError, match=r"labels.txt': line 3 is blank; .*'class 2'") as info:
        read_labels(path)
    assert info.value.field == "labels"


def test_generic_labels() -> None:
    assert generic_labels(3) == ["class 0", "class 1", "class 2"]
