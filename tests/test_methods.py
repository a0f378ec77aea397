"""The method registry: one home for names, aliases, titles, rules and drawing."""

from __future__ import annotations

import pytest
import torch

import guided_backprop as gbp
from guided_backprop.methods import METHODS, REGISTRY, Drawing, get_method, method_title, parse_methods
from guided_backprop.rules import Rule


def test_every_method_is_registered_once_with_a_title_and_a_paper() -> None:
    assert METHODS == ("guided_backprop", "deconvnet", "saliency", "gradcam", "guided_gradcam")
    assert set(REGISTRY) == set(METHODS)
    for spec in REGISTRY.values():
        assert spec.title and "arXiv:" in spec.paper
    aliases = [a for spec in REGISTRY.values() for a in (spec.name, *spec.aliases)]
    assert len(aliases) == len(set(aliases)), "an alias names two methods"


def test_rules_and_gradcam_needs_describe_what_each_method_computes() -> None:
    assert REGISTRY["gradcam"].rule is None and REGISTRY["gradcam"].drawing is Drawing.HEATMAP
    assert REGISTRY["guided_gradcam"].rule is Rule.GUIDED_BACKPROP and REGISTRY["guided_gradcam"].gradcam
    for name in ("guided_backprop", "deconvnet", "saliency"):
        assert REGISTRY[name].rule is Rule(name) and not REGISTRY[name].gradcam


@pytest.mark.parametrize(("given", "name"), [
    ("guided-backprop", "guided_backprop"), ("GBP", "guided_backprop"), ("Grad-CAM", "gradcam"),
    ("ggcam", "guided_gradcam"), ("gradient", "saliency"), ("deconv", "deconvnet"), (Rule.DECONVNET, "deconvnet"),
])
def test_names_and_aliases_parse_to_one_method(given: object, name: str) -> None:
    assert get_method(given).name == name  # type: ignore[arg-type]


def test_parse_methods_keeps_order_drops_repeats_and_rejects_unknown_names() -> None:
    assert parse_methods(["saliency", "gbp", "guided_backprop"]) == ("saliency", "guided_backprop")
    with pytest.raises(gbp.UnknownNameError, match="did you mean 'guided_backprop'"):
        parse_methods("guided_backprob")
    with pytest.raises(gbp.UnknownNameError, match="at least one"):
        parse_methods([])
    for smoothgrad in ("smoothgrad", "Smooth-Grad", "smoothgrad_gbp"):  # an option of every method
        with pytest.raises(gbp.UnknownNameError, match=r"SmoothGrad is an option .* smooth=25"):
            parse_methods(["saliency", smoothgrad])
    assert method_title("gbp") == "Guided backprop" and method_title("input") == "input"


def test_a_model_without_relu_is_accepted_when_not_strict_and_every_rule_is_the_gradient() -> None:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.Flatten(), torch.nn.Linear(2 * 4 * 4, 3)).double()
    x = torch.randn(2, 1, 6, 6, dtype=torch.float64)
    ex = gbp.Explainer(model)
    with pytest.raises(gbp.NoReLUError):
        ex.explain(x, 0, methods=["guided_backprop"])
    e = ex.explain(x, 0, methods=["guided_backprop", "deconvnet", "saliency"], strict=False)
    for name in ("guided_backprop", "deconvnet"):
        torch.testing.assert_close(e.maps[name], e.maps["saliency"], rtol=0, atol=0)


def test_the_evaluation_figures_take_the_titles_from_the_registry(monkeypatch: pytest.MonkeyPatch) -> None:
    """A method's title has one home: a new title in the registry is the one its figures show."""
    import dataclasses

    import numpy as np

    from guided_backprop.evaluate import figures
    from guided_backprop.evaluate.results import CurveResult

    monkeypatch.setitem(REGISTRY, "saliency", dataclasses.replace(REGISTRY["saliency"], title="Plain gradient"))
    shown: list[str] = []
    monkeypatch.setattr(figures, "_png", lambda fig: shown.extend(
        t.get_text() for ax in fig.axes for t in ax.get_legend().get_texts()) or b"")
    curve = CurveResult(mode="deletion", fractions=np.linspace(0, 1, 3), curves={"saliency": np.ones((2, 3)),
                        "gradcam": np.zeros((2, 3))}, random=np.full((2, 3), 0.5), classes=[0, 0])
    figures.faithfulness_figure([curve])
    assert [t.split(" (")[0] for t in shown] == ["Plain gradient", "Grad-CAM", "random order"]
