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


# -- the grammar of targets on any output ------------------------------------------------------------------
def test_output_targets_parse_by_the_models_kind() -> None:
    import torch

    from guided_backprop.targets import Box, Output, Region, Similarity, parse_target

    assert parse_target("top5") == TopK(5) and parse_target("cat") == "cat" and parse_target(None) is None
    assert parse_target("person", kind="segmenter") == Region("person")
    assert parse_target("15", kind="segmenter") == Region(15)
    mask = torch.ones(4, 4)
    assert parse_target("person", kind="segmenter", mask=mask).mask is mask
    assert parse_target("detections:3", kind="detector", score_threshold=0.7) == [
        Box(rank=0, min_score=0.7), Box(rank=1, min_score=0.7), Box(rank=2, min_score=0.7)]
    assert parse_target(None, kind="detector") == [Box(rank=0, min_score=0.5)]
    assert parse_target("box:1,2,30,40:dog", kind="detector") == Box(box=(1.0, 2.0, 30.0, 40.0), label="dog")
    assert parse_target("box:1,2,30,40:3", kind="detector") == Box(box=(1.0, 2.0, 30.0, 40.0), label=3)
    assert parse_target("output:2") == Output(2) and parse_target("output:1,3", kind="other") == Output((1, 3))
    ref = torch.zeros(3, 4, 4)
    sim = parse_target("similar:ref.png", kind="other", read_input=lambda p: ref if p == "ref.png" else None)
    assert isinstance(sim, Similarity) and sim.reference is ref


@pytest.mark.parametrize(("text", "kind", "message"), [
    ("detections:0", "detector", "detections:K with K >= 1"),
    ("box:1,2,3", "detector", "a box is x0,y0,x1,y1"),
    ("box:5,2,3,9", "detector", "x0 < x1"),
    ("box:a,b,c,d", "detector", "not a list of numbers"),
    ("cat", "detector", "for a detector give detections:K or box:"),
    ("detections:2", "segmenter", "explains a detector's boxes"),
    ("top1", "segmenter", "a segmenter's target is a class"),
    ("cat", "other", "has no classes; give output:K"),
])
def test_bad_output_targets_say_what_is_valid(text: str, kind: str, message: str) -> None:
    from guided_backprop.targets import parse_target

    with pytest.raises(TargetError, match=message) as err:
        parse_target(text, kind=kind)
    assert err.value.field == "target"


def test_output_kinds_are_recognised() -> None:
    import torch

    from guided_backprop.targets import output_kind

    assert output_kind(torch.zeros(2, 10)) == "classifier"
    assert output_kind({"out": torch.zeros(2, 3, 4, 4), "aux": None}) == "segmenter"
    assert output_kind([{"boxes": torch.zeros(0, 4), "labels": torch.zeros(0), "scores": torch.zeros(0)}]) == \
        "detector"
    assert output_kind(torch.zeros(2)) == "other" and output_kind((torch.zeros(2, 3), 1)) == "other"
