"""One forward per input for every class and method: :class:`guided_backprop.attribution.Recorded`.

The maps of a recorded forward must equal those of a fresh call bit for bit: the forward is the same
computation on the same input, and each backward pass is the same graph walked with the same rule, so
not even float rounding may differ (CPU, deterministic kernels).
"""

from __future__ import annotations

import gc
import weakref

import pytest
import torch
import torchvision
from torch import nn

from guided_backprop import attribute
from guided_backprop.attribution import Explainer, Recorded
from guided_backprop.errors import GuidedBackpropError, NoReLUError
from guided_backprop.methods import METHODS

from .nets import SmallCNN, TinyVGG


def counted(model: nn.Module) -> list[int]:
    """A list that grows by one at each forward pass of ``model`` (a hook the test removes itself)."""
    calls: list[int] = []
    model.register_forward_pre_hook(lambda *_: calls.append(1))
    return calls


def models() -> list[tuple[str, nn.Module, tuple[int, ...]]]:
    torch.manual_seed(0)
    resnet = torchvision.models.resnet18(weights=None, num_classes=7).eval()  # one ReLU module reused, in place
    return [("SmallCNN", SmallCNN().eval(), (2, 3, 16, 16)), ("TinyVGG", TinyVGG().eval(), (1, 3, 32, 32)),
            ("resnet18", resnet, (1, 3, 64, 64))]


@pytest.mark.parametrize("name,model,shape", models(), ids=lambda v: v if isinstance(v, str) else "")
def test_every_class_and_method_from_one_forward_equals_fresh_calls(name: str, model: nn.Module,
                                                                     shape: tuple[int, ...]) -> None:
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(1))
    calls = counted(model)
    recorded = Recorded(Explainer(model), x)
    classes = recorded.logits.shape[1]
    # several classes, the methods in turn and in another order, one method asked twice
    asks = [(2, ("deconvnet",)), (0, METHODS), (2, ("guided_backprop", "saliency")), (classes - 1, ("gradcam",)),
            (0, ("guided_gradcam", "deconvnet")), (2, ("deconvnet",))]
    got = [(cls, recorded.explain(cls, methods=ms)) for cls, ms in asks]
    assert len(calls) == 1  # one forward for all of them
    model._forward_pre_hooks.clear()
    for cls, found in got:
        for m, value in found.maps.items():
            want = attribute(model, x, cls, m)
            assert torch.equal(value[:, 0], want), f"{name}: {m} of class {cls}"
    assert got[1][1].gradcam_layer == Explainer(model).explain(x, 0, methods=("gradcam",)).gradcam_layer


def test_top_k_and_per_sample_classes_equal_explain() -> None:
    torch.manual_seed(0)
    model = SmallCNN().eval()
    x = torch.randn(3, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    recorded = Recorded(Explainer(model), x)
    fresh = Explainer(model)
    for target in (None, [1, 0, 2], torch.tensor([[0, 1], [2, 3], [4, 5]])):
        a = recorded.explain(target, methods=METHODS)
        b = fresh.explain(x, target, methods=METHODS)
        assert torch.equal(a.targets, b.targets) and torch.equal(a.scores, b.scores)
        for m in METHODS:
            assert torch.equal(a.maps[m], b.maps[m]), m


def test_close_frees_the_graph() -> None:
    torch.manual_seed(0)
    model = SmallCNN().eval()
    recorded = Recorded(Explainer(model), torch.randn(1, 3, 16, 16))
    recorded.explain(0, methods=("guided_backprop",))
    held = weakref.ref(recorded._logits)  # the graph's output: alive while the graph is kept
    gc.collect()
    assert held() is not None and not recorded.closed
    recorded.close()
    gc.collect()
    assert held() is None and recorded.closed
    with pytest.raises(GuidedBackpropError, match="closed"):
        recorded.explain(0)
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())


def test_a_model_without_relu_is_the_same_error_as_explain() -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Tanh(), nn.Flatten(), nn.LazyLinear(5)).eval()
    x = torch.randn(1, 3, 8, 8)
    model(x)
    recorded = Recorded(Explainer(model), x)
    with pytest.raises(NoReLUError):
        recorded.explain(1, methods=("guided_backprop",))
    assert torch.equal(recorded.explain(1, methods=("saliency",)).maps["saliency"][:, 0],
                       attribute(model, x, 1, "saliency"))


def test_other_targets_are_refused() -> None:
    from guided_backprop.targets import Channel

    torch.manual_seed(0)
    recorded = Recorded(Explainer(SmallCNN().eval()), torch.randn(1, 3, 16, 16))
    with pytest.raises(GuidedBackpropError, match="classes only"):
        recorded.explain(Channel("features.0", 1))
