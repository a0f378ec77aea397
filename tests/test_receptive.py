"""Receptive fields: known values, hand-computed nets, and the gradient-support definition."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

import guided_backprop as gbp
from guided_backprop.units.receptive import ReceptiveField, receptive_field, receptive_fields


def _meta(builder, **kwargs) -> nn.Module:  # type: ignore[no-untyped-def]
    """A torchvision architecture with random (meta) weights: built and traced in milliseconds."""
    with torch.device("meta"):
        return builder(weights=None, **kwargs)


# -- known values -------------------------------------------------------------------------------------
def test_vgg19_conv5_4_is_252() -> None:
    rf = receptive_field(_meta(torchvision.models.vgg19), "features.34")
    assert rf.size == (252, 252)
    assert rf.jump == (16, 16)
    # 16 convolutions with padding 1: 2 at jump 1, 2 at 2, 4 at 4, 4 at 8, 4 at 16.
    assert rf.start == (-118, -118)
    assert rf.output_size == (14, 14) and rf.exact and rf.notes == ()


def test_vgg16_pool5_is_212() -> None:
    rf = receptive_field(_meta(torchvision.models.vgg16), "features.30", input_size=224)
    assert rf.size == (212, 212)
    assert rf.jump == (32, 32)
    assert rf.output_size == (7, 7)


def test_vgg_field_does_not_depend_on_input_size() -> None:
    model = _meta(torchvision.models.vgg16)
    small = receptive_field(model, "features.30", input_size=(64, 96))
    assert (small.size, small.jump, small.start) == ((212, 212), (32, 32), (-90, -90))
    assert small.output_size == (2, 3)


def test_branching_torchvision_nets() -> None:
    # ResNet-18 (stride in the first 3x3 of each stage): 7 -> 11 (pool) -> 43 -> 99 -> 211 -> 435.
    assert receptive_field(_meta(torchvision.models.resnet18), "layer4").size == (435, 435)
    # Inception v3's last block: 1311 (Araujo et al., "Computing receptive fields of CNNs", Distill 2019).
    inception = _meta(torchvision.models.inception_v3, aux_logits=False, init_weights=False)
    rf = receptive_field(inception, "Mixed_7c", input_size=299)
    assert rf.size == (1311, 1311) and rf.jump == (32, 32) and rf.exact


# -- a net computed by hand ---------------------------------------------------------------------------
class HandNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(1, 2, 5, stride=2, padding=2)
        self.b = nn.Conv2d(2, 2, 3, dilation=2, padding=2)
        self.c = nn.Conv2d(2, 2, (3, 1), stride=(1, 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.a(x))
        x = F.max_pool2d(x, 3, stride=2, padding=1)  # functional: invisible to module hooks
        x = torch.relu(self.b(x))
        return self.c(x)


def test_hand_computed_net() -> None:
    fields = receptive_fields(HandNet(), (40, 40))
    # a: k5 s2 p2: size 5, jump 2, start -2.
    assert (fields["a"].size, fields["a"].jump, fields["a"].start) == ((5, 5), (2, 2), (-2, -2))
    # pool k3 s2 p1: size 5 + 2*2 = 9, jump 4, start -2 - 1*2 = -4.
    # b: k3 dilation 2 (span 5) p2: size 9 + 4*4 = 25, jump 4, start -4 - 2*4 = -12.
    b = fields["b"]
    assert (b.size, b.jump, b.start, b.output_size) == ((25, 25), (4, 4), (-12, -12), (10, 10))
    # c: (3, 1) kernel, stride (1, 2): rows 25 + 2*4 = 33, jump 4; columns unchanged, jump 8.
    c = fields["c"]
    assert (c.size, c.jump, c.start, c.output_size) == ((33, 25), (4, 8), (-12, -12), (8, 5))
    assert c.box(0, 0) == (0, 0, 21, 13)
    assert c.unclipped_box(7, 4) == (16, 20, 49, 45)
    assert c.box(7, 4) == (16, 20, 40, 40)
    assert c.box(7, 4, image_size=(60, 44)) == (16, 20, 49, 44)
    assert c.center(1, 1) == (-12 + 4 + 16, -12 + 8 + 12)
    assert c.stride == c.jump


def test_box_rejects_units_outside_the_map() -> None:
    rf = receptive_field(HandNet(), "b", (40, 40))
    with pytest.raises(gbp.InputError, match=r"outside layer 'b'.*y 0\.\.9"):
        rf.box(10, 0)
    with pytest.raises(gbp.InputError, match="start at 0"):
        rf.box(-1, 0)
    assert rf.box(12, 0, image_size=(56, 56))[2] <= 56  # another image size: bigger maps are fine


# -- the definition: the field is exactly where the gradient of the unit can be non-zero --------------
class Branchy(nn.Module):
    """Strides, padding, dilation, average pooling, a residual sum and an inception-like concat."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(2, 3, 3, stride=2, padding=1)
        self.left = nn.Conv2d(3, 2, 5, padding=2)
        self.right = nn.Conv2d(3, 2, 3, padding=1)
        self.res = nn.Conv2d(4, 4, 3, padding=2, dilation=2)
        self.head = nn.Conv2d(4, 3, 2, stride=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.avg_pool2d(torch.relu(self.stem(x)), 3, stride=1, padding=1)
        x = torch.cat([self.left(x), F.avg_pool2d(self.right(x), 3, stride=1, padding=1)], dim=1)
        x = x + self.res(x)
        return self.head(x)


def _positive(model: nn.Module) -> nn.Module:
    torch.manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.rand_like(p) + 0.1)
    return model.double()


@pytest.mark.parametrize("layer", ["stem", "left", "res", "head"])
def test_field_equals_gradient_support(layer: str) -> None:
    model = _positive(Branchy())
    size = (23, 26)
    rf = receptive_field(model, layer, size)
    assert rf.exact
    h, w = rf.output_size
    # One copy of the input per unit, each copy backpropagating only its own unit: one backward pass.
    x = (torch.rand(1, 2, *size, dtype=torch.float64) + 0.1).expand(h * w, 2, *size).clone().requires_grad_(True)
    store = {}
    handle = gbp.find_layer(model, layer).register_forward_hook(lambda _m, _i, out: store.setdefault("out", out))
    try:
        model(x)
    finally:
        handle.remove()
    out = store["out"]
    assert tuple(out.shape[-2:]) == (h, w)
    units = torch.arange(h * w)
    (grad,) = torch.autograd.grad(out[units, 0, units // w, units % w].sum(), x)
    for n in range(h * w):
        support = grad[n].abs().sum(0) > 0
        expected = torch.zeros(size, dtype=torch.bool)
        top, left, bottom, right = rf.box(n // w, n % w)
        expected[top:bottom, left:right] = True
        assert torch.equal(support, expected), (layer, n // w, n % w)


def test_max_pool_support_is_inside_the_field() -> None:
    torch.manual_seed(1)
    model = _positive(nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.MaxPool2d(2), nn.Conv2d(2, 2, 3, stride=2)))
    rf = receptive_field(model, "2", (17, 17))
    assert (rf.size, rf.jump) == ((8, 8), (4, 4))  # 3 -> 3 + 1 = 4 (pool, jump 2) -> 4 + 2 * 2 = 8
    x = torch.rand(64, 1, 17, 17, dtype=torch.float64, requires_grad=True)
    (grad,) = torch.autograd.grad(model(x)[:, 0, 1, 2].sum(), x)  # samples are independent: one backward
    support = grad[:, 0] != 0
    top, left, bottom, right = rf.box(1, 2)
    assert not support[:, :top].any() and not support[:, bottom:].any()
    assert not support[:, :, :left].any() and not support[:, :, right:].any()
    union = support.any(0)
    expected = torch.zeros(17, 17, dtype=torch.bool)
    expected[top:bottom, left:right] = True
    assert torch.equal(union, expected)  # over a few inputs the maxima land all over the field


# -- what the tracer follows --------------------------------------------------------------------------
class Gated(nn.Module):
    """Squeeze-excitation gate, then a reshape into tokens."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.fc = nn.Conv2d(4, 4, 1)
        self.after = nn.Conv2d(4, 4, 3, padding=1)
        self.tokens = nn.Identity()
        self.flipped = nn.Identity()
        self.up = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        gate = torch.sigmoid(self.fc(x.mean((2, 3), keepdim=True)))
        x = self.after(x * gate)
        self.flipped(torch.flip(x, dims=(3,)))
        self.up(F.interpolate(x, scale_factor=2))
        return self.tokens(x.flatten(2).transpose(1, 2))


def test_broadcast_gates_are_left_out_unless_asked() -> None:
    model = Gated()
    local = receptive_field(model, "after", (16, 16))
    assert local.size == (5, 5) and local.start == (-2, -2)
    assert any("broadcast" in n for n in local.notes)
    whole = receptive_field(model, "after", (16, 16), include_global=True)
    assert whole.box(0, 0) == (0, 0, 16, 16) and whole.box(15, 15) == (0, 0, 16, 16)


def test_operations_that_cannot_be_followed_give_the_whole_input() -> None:
    fields = receptive_fields(Gated(), (16, 12), layers=["flipped", "up", "tokens"])
    for name, why in (("flipped", "flip"), ("up", "interpolate"), ("tokens", "")):
        rf = fields[name]
        assert not rf.exact and any(why in n for n in rf.notes), rf
        assert rf.box(0, 0, (16, 12)) == (0, 0, 16, 12)


def test_real_forward_when_meta_is_not_enough() -> None:
    class NeedsValues(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Conv2d(3, 3, 3)
            self.b = nn.Conv2d(3, 3, 3, stride=2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = self.a(x)
            if float(y.sum()) > -1e30:  # .item() on a meta tensor fails: the tracer retries on zeros
                y = self.b(y)
            return y

    assert receptive_field(NeedsValues(), "b", 20).size == (5, 5)


def test_layers_listing_is_in_call_order_and_skips_non_spatial() -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 3), nn.Flatten(), nn.Linear(4 * 12 * 12, 2))
    fields = receptive_fields(model, 16)
    assert list(fields) == ["0", "1", "2"]
    assert [f.size for f in fields.values()] == [(3, 3), (3, 3), (5, 5)]
    linear = receptive_field(model, "4", 16)
    assert linear.output_size is None and linear.jump == (0, 0) and linear.box(0, 0) == (0, 0, 16, 16)
    assert isinstance(linear, ReceptiveField)


# -- errors and guarantees ----------------------------------------------------------------------------
def test_unknown_layer_lists_close_matches() -> None:
    with pytest.raises(gbp.UnknownNameError, match=r"features\.34"):
        receptive_field(_meta(torchvision.models.vgg19), "feature.34")


def test_layer_without_a_tensor_output_or_not_called() -> None:
    class Odd(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 3, 3)
            self.unused = nn.Conv2d(3, 3, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.conv(x)

    with pytest.raises(gbp.ModelError, match="'unused'.*not called"):
        receptive_field(Odd(), "unused", 8)


def test_bad_input_size_and_failing_forward() -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 5), nn.Conv2d(4, 4, 5))
    with pytest.raises(gbp.InputError, match="input_size"):
        receptive_field(model, "1", (0, 8))
    with pytest.raises(gbp.InputError, match=r"dummy input of shape \(1, 3, 6, 6\)"):
        receptive_field(model, "1", 6)  # too small for two 5x5 convolutions
    assert not model[0]._forward_hooks and not model[1]._forward_hooks


def test_model_is_left_untouched() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(inplace=True), nn.Conv2d(4, 4, 3))
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    receptive_fields(model, 12)
    assert model.training and all(m.training for m in model.modules())
    assert all(not m._forward_hooks for m in model.modules())
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]) and v.device.type == "cpu"
    assert not torch.overrides._get_current_function_mode_stack()


def test_branches_of_different_strides_get_a_covering_field() -> None:
    class TwoStrides(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fast = nn.Conv2d(1, 1, 1, stride=4)  # 16 -> 4, jump 4
            self.slow = nn.Sequential(nn.Conv2d(1, 1, 2, stride=2), nn.Conv2d(1, 1, 5))  # 16 -> 8 -> 4, jump 2
            self.join = nn.Identity()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.join(self.fast(x) + self.slow(x))

    model = _positive(TwoStrides())
    rf = receptive_field(model, "join", 16)
    assert not rf.exact and any("different strides" in n for n in rf.notes)
    x = (torch.rand(16, 1, 16, 16, dtype=torch.float64) + 0.1).requires_grad_(True)
    units = torch.arange(16)
    (grad,) = torch.autograd.grad(model(x)[units, 0, units // 4, units % 4].sum(), x)
    for n in range(16):
        support = grad[n, 0] != 0
        top, left, bottom, right = rf.box(n // 4, n % 4)
        inside = torch.zeros_like(support)
        inside[top:bottom, left:right] = True
        assert support.any() and not (support & ~inside).any()  # a superset of the true support
