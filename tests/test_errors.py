"""The base error and the close-match suggestions every unknown name gets."""

from __future__ import annotations

import pytest

from guided_backprop.errors import GuidedBackpropError, UnknownNameError, close_matches


def test_close_matches_are_unique_and_ordered_by_likeness() -> None:
    assert close_matches("vgg91", ["vgg19", "resnet50", "vgg19", "vgg16"]) == ["vgg19", "vgg16"]
    assert close_matches("cat", ["Egyptian cat", "dog"]) == ["Egyptian cat"]  # substring fallback
    assert close_matches("zzz", ["a", "b"]) == []


def test_unknown_name_message_names_value_and_suggestions() -> None:
    err = UnknownNameError("layer", "features.3x", ["features.3", "features.30", "classifier"], hint="see x")
    assert isinstance(err, GuidedBackpropError) and isinstance(err, LookupError)
    assert str(err).startswith("unknown layer 'features.3x'; did you mean 'features.3'")
    assert str(err).endswith("(see x)")
    few = UnknownNameError("method", "nope", ["a", "b"])
    assert "valid: 'a', 'b'" in str(few)
    with pytest.raises(UnknownNameError):
        raise few
