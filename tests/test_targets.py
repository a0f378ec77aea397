"""The text forms of targets: one grammar, used by the CLI and the batch job."""

from __future__ import annotations

import pytest

from guided_backprop.errors import TargetError
from guided_backprop.targets import TopK, parse_class_target, parse_neuron


@pytest.mark.parametrize(("text", "expected"), [
    (None, None), ("", None), ("top1", None), ("top", None), (" TOP-1 ", None), ("top5", TopK(5)),
    ("top-3", TopK(3)), ("285", 285), (7, 7), (TopK(2), TopK(2)), ("Egyptian cat", "Egyptian cat"),
    (" tabby ", "tabby"),
])
def test_class_targets_parse_to_typed_values(text: object, expected: object) -> None:
    assert parse_class_target(text) == expected  # type: ignore[arg-type]


def test_top0_is_an_error_naming_the_field() -> None:
    with pytest.raises(TargetError, match="top<k> must be 1 or more") as err:
        parse_class_target("top0")
    assert err.value.field == "target"


@pytest.mark.parametrize(("text", "expected"), [
    (None, None), ("", None), ("sum", None), ("all", None), ("max", "max"), (" MAX ", "max"), ("3,4", (3, 4)),
    (" 3 , 14 ", (3, 14)), ((2, 5), (2, 5)),
])
def test_neurons_parse_to_typed_values(text: object, expected: object) -> None:
    assert parse_neuron(text) == expected  # type: ignore[arg-type]


@pytest.mark.parametrize("text", ["3;4", "-1,2", "x", "1,2,3"])
def test_bad_neurons_say_what_is_valid(text: str) -> None:
    with pytest.raises(TargetError, match="give 'max' or 'Y,X'") as err:
        parse_neuron(text)
    assert err.value.field == "neuron"
