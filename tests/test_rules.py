"""Each rule against its definition, for every form a ReLU can take in a forward pass."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

import guided_backprop as gbp

from .reference import reference_map

RULES = ["saliency", "deconvnet", "guided_backprop"]


def hand_rule(rule: str, g: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
    """The table of the issue, written out: g is the signal from above, gate the forward's [x>0]."""
    if rule == "saliency":
        return g * gate
    if rule == "deconvnet":
        return torch.clamp(g, min=0)
    return torch.clamp(g, min=0) * gate


# Every way a forward pass can apply a ReLU (or ReLU6) to a hidden vector h.
def _module(m: nn.Module):  # type: ignore[no-untyped-def]
    return lambda h: m(h)


FORMS = {
    "nn.ReLU": (_module(nn.ReLU()), None),
    "nn.ReLU(inplace)": (_module(nn.ReLU(inplace=True)), None),
    "F.relu": (lambda h: F.relu(h), None),
    "F.relu(inplace)": (lambda h: F.relu(h, inplace=True), None),
    "F.relu_": (lambda h: F.relu_(h), None),
    "torch.relu": (lambda h: torch.relu(h), None),
    "torch.relu_": (lambda h: torch.relu_(h), None),
    "Tensor.relu": (lambda h: h.relu(), None),
    "Tensor.relu_": (lambda h: h.relu_(), None),
    "Tensor.relu_ (result unused)": (lambda h: (h.relu_(), h)[1], None),
    "nn.ReLU6": (_module(nn.ReLU6()), 6.0),
    "nn.ReLU6(inplace)": (_module(nn.ReLU6(inplace=True)), 6.0),
    "F.relu6": (lambda h: F.relu6(h), 6.0),
    "F.relu6(inplace)": (lambda h: F.relu6(h, inplace=True), 6.0),
    "nn.Hardtanh(0, 6)": (_module(nn.Hardtanh(0.0, 6.0)), 6.0),
    "F.hardtanh(0, 6)": (lambda h: F.hardtanh(h, 0.0, 6.0), 6.0),
    "F.hardtanh_(0, 6)": (lambda h: F.hardtanh_(h, 0.0, 6.0), 6.0),
}


class TwoLayer(nn.Module):
    """score = W2 act(W1 x): the map is W1^T rule(W2 row, gate) and can be written by hand."""

    def __init__(self, act, d_in: int = 6, d_hidden: int = 16, classes: int = 3) -> None:  # type: ignore[no-untyped-def]
        super().__init__()
        self.fc1 = nn.Linear(d_in, d_hidden)
        self.fc2 = nn.Linear(d_hidden, classes)
        self.act = act

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


def _twolayer(form: str) -> TwoLayer:
    torch.manual_seed(0)
    act, _ = FORMS[form]
    model = TwoLayer(act).double()
    with torch.no_grad():  # spread pre-activations over (-10, 10) so ReLU6 clips above 6 too
        model.fc1.weight.mul_(8)
    return model


@pytest.mark.parametrize("rule", RULES)
@pytest.mark.parametrize("form", list(FORMS))
def test_each_relu_form_follows_its_rule_by_hand(form: str, rule: str) -> None:
    model = _twolayer(form)
    upper = FORMS[form][1]
    x = torch.randn(5, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    classes = torch.tensor([0, 1, 2, 0, 1])
    maps = gbp.attribute(model, x, target=classes, method=rule)

    h = model.fc1(x).detach()
    gate = (h > 0) if upper is None else ((h > 0) & (h < upper))
    assert gate.any() and (~gate).any()
    if upper is not None:
        assert (h > upper).any(), "the test must exercise the upper clip of ReLU6"
    g = model.fc2.weight.detach()[classes]  # signal arriving at the ReLU's output
    expected = hand_rule(rule, g, gate.double()) @ model.fc1.weight.detach()
    torch.testing.assert_close(maps, expected, rtol=0, atol=1e-12)


@pytest.mark.parametrize("form", list(FORMS))
def test_saliency_is_exactly_the_autograd_gradient(form: str) -> None:
    model = _twolayer(form)
    x = torch.randn(4, 6, dtype=torch.float64)
    maps = gbp.attribute(model, x, target=1, method="saliency")
    xx = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(model(xx)[:, 1].sum(), xx)
    assert torch.equal(maps, g)


@pytest.mark.parametrize("rule", RULES)
@pytest.mark.parametrize("form", list(FORMS))
def test_gate_is_closed_exactly_at_0_and_6(form: str, rule: str) -> None:
    # Pre-activations exactly on the kinks: the gate is x > 0 (and x < 6), closed at both ends,
    # like PyTorch's own relu/relu6 gradients; deconvnet ignores the gate.
    act, upper = FORMS[form]
    h0 = torch.tensor([[-1.0, 0.0, 3.0, 6.0, 7.0]], dtype=torch.float64)
    model = nn.Sequential(nn.Identity(), _Act(act), nn.Linear(5, 1, bias=False)).double()
    with torch.no_grad():
        model[2].weight.copy_(torch.tensor([[1.0, -2.0, 3.0, 4.0, 5.0]]))
    maps = gbp.attribute(model, h0, target=0, method=rule)
    g = model[2].weight.detach()
    gate = (h0 > 0) if upper is None else ((h0 > 0) & (h0 < upper))
    torch.testing.assert_close(maps, hand_rule(rule, g, gate.double()), rtol=0, atol=0)


class _Act(nn.Module):
    def __init__(self, act) -> None:  # type: ignore[no-untyped-def]
        super().__init__()
        self.act = act

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.act(h * 1.0)  # a non-leaf, so in-place forms may run on it


class Mixed(nn.Module):
    """Every form in one network, with one nn.ReLU module reused three times."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.conv3 = nn.Conv2d(8, 8, 3, padding=1)
        self.conv4 = nn.Conv2d(8, 8, 3, padding=1)
        self.conv5 = nn.Conv2d(8, 8, 3, padding=1)
        self.relu = nn.ReLU(inplace=True)
        self.relu6 = nn.ReLU6()
        self.fc = nn.Linear(8, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.conv1(x))
        x = F.relu(self.conv2(x), inplace=True) + self.relu(x - 0.5)  # reused module, second use
        x = self.relu6(self.conv3(x) * 20)
        x = torch.relu(self.conv4(x).relu_())
        x = F.relu6(self.conv5(x) * 20, inplace=True)
        x = self.relu(F.hardtanh(x * 2 - 1, 0.0, 6.0))  # reused module, third use
        return self.fc(x.mean(dim=(2, 3)))


@pytest.mark.parametrize("rule", RULES)
def test_mixed_network_matches_independent_reference(rule: str) -> None:
    torch.manual_seed(0)
    model = Mixed().double()
    x = torch.randn(3, 3, 12, 12, dtype=torch.float64)
    explained = gbp.Explainer(model).explain(x, methods=[rule])
    expected = reference_map(model, x, explained.targets[:, 0], rule)
    torch.testing.assert_close(explained.maps[rule][:, 0], expected, rtol=1e-10, atol=1e-12)
    assert explained.relu_calls == 9


def test_rules_really_differ_on_a_deep_network() -> None:
    torch.manual_seed(0)
    model = Mixed().double()
    x = torch.randn(2, 3, 12, 12, dtype=torch.float64)
    e = gbp.Explainer(model).explain(x, methods=RULES)
    s, d, g = (e.maps[m] for m in RULES)
    assert not torch.allclose(s, g) and not torch.allclose(d, g) and not torch.allclose(s, d)


TORCHVISION = {
    "vgg11 (in-place nn.ReLU)": lambda: torchvision.models.vgg11(num_classes=7),
    "resnet18 (one nn.ReLU reused per block)": lambda: torchvision.models.resnet18(num_classes=7),
    "densenet121 (F.relu in forward)": lambda: torchvision.models.densenet121(num_classes=7),
    "mobilenet_v2 (ReLU6)": lambda: torchvision.models.mobilenet_v2(num_classes=7),
}


@pytest.mark.slow
@pytest.mark.parametrize("name", list(TORCHVISION))
def test_torchvision_models_match_independent_reference(name: str) -> None:
    torch.manual_seed(0)
    model = TORCHVISION[name]().double()
    size = 64 if "vgg" not in name else 32
    x = torch.randn(2, 3, size, size, dtype=torch.float64)
    e = gbp.Explainer(model).explain(x, methods=RULES)
    assert e.relu_calls > 0
    for rule in RULES:
        expected = reference_map(model, x, e.targets[:, 0], rule)
        torch.testing.assert_close(e.maps[rule][:, 0], expected, rtol=1e-9, atol=1e-12)
        assert e.maps[rule].abs().sum() > 0


def test_ordinary_hardtanh_keeps_its_ordinary_gradient() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.Hardtanh(-1.0, 1.0), nn.ReLU(), nn.Linear(8, 2)).double()
    x = torch.randn(3, 4, dtype=torch.float64)
    e = gbp.Explainer(model).explain(x, methods=["guided_backprop"])
    assert e.relu_calls == 1  # the ReLU, not the Hardtanh(-1, 1)
    expected = reference_map(model, x, e.targets[:, 0], "guided_backprop")
    torch.testing.assert_close(e.maps["guided_backprop"][:, 0], expected)


def test_relus_outside_autograd_are_left_alone() -> None:
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(4, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            with torch.no_grad():
                scale = torch.relu(x.detach()).mean() + 1  # not part of the graph
            return self.fc(torch.relu(x)) * scale

    model = Net().double()
    x = torch.randn(2, 4, dtype=torch.float64)
    assert gbp.Explainer(model).explain(x).relu_calls == 1
