"""Randomisation steps that replay the trained bottom of the network give recomputing's maps, bit for bit.

Bit for bit, not within a tolerance: the replayed outputs are the tensors the trained forward computed
(the recomputation runs the same kernels on the same values and weights), the top part and every
backward run the same operations, and a clone's backward passes its gradient unchanged.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from guided_backprop import Explainer
from guided_backprop.errors import InputError
from guided_backprop.evaluate import model_randomization
from guided_backprop.evaluate.cascade import BottomReuse
from guided_backprop.evaluate.randomization import predicted_classes, randomization_steps, randomized_models

from .test_evaluate_randomization import _changed, _net, _snapshot, _x

ALL = ["guided_backprop", "deconvnet", "saliency", "gradcam", "guided_gradcam"]


def _same(a: Any, b: Any) -> None:
    """Every metric value and every kept map of two randomisation results identical (nan where both are)."""
    assert a.steps == b.steps
    for m in a.values:
        for k in a.values[m]:
            np.testing.assert_array_equal(a.values[m][k], b.values[m][k], err_msg=f"{m} {k}")
        np.testing.assert_array_equal(a.constant[m], b.constant[m])
    for m in a.maps:
        assert torch.equal(a.maps[m], b.maps[m]), m


@pytest.mark.parametrize("order", ["cascading", "independent"])
@pytest.mark.parametrize("granularity", ["blocks", "modules"])
def test_replaying_the_bottom_equals_recomputing_it_bit_for_bit(order: str, granularity: str) -> None:
    net = _net()
    before = _snapshot(net)
    kw: dict[str, Any] = {"methods": ALL, "seed": 3, "order": order, "granularity": granularity,
                          "batch_size": 2, "maps_image": 2}  # 3 images in batches of 2: the second batch's image
    reused = model_randomization(net, _x(3), reuse_bottom=True, **kw)
    recomputed = model_randomization(net, _x(3), reuse_bottom=False, **kw)
    _same(reused, recomputed)
    assert not _changed(before, net) and net.training is False
    assert not any(m._forward_hooks or m._forward_pre_hooks or "forward" in vars(m) for m in net.modules())


def test_each_step_replays_the_calls_below_the_lowest_randomised_block_and_maps_equal_the_explainers() -> None:
    net = _net()
    x = _x(2)
    classes = predicted_classes(net, x)
    steps = randomization_steps(net, x)  # head, body.1, body.0, stem
    layer = Explainer(net).explain(x, classes, methods=("gradcam",)).gradcam_layer
    bottom = BottomReuse(net, x, classes, tuple(ALL), layer)
    replayed = []
    for j, (_name, work) in enumerate(randomized_models(net, steps, seed=5), start=1):
        maps = bottom.explain(work, steps[:j])
        replayed.append([bottom.calls[i].name for i in bottom.replayed(work, steps[:j])])
        plain = Explainer(work).explain(x, classes, methods=ALL, gradcam_layer=layer)
        for m in ALL:
            assert torch.equal(maps[m], plain.maps[m][:, 0]), (j, m)
        assert not any("forward" in vars(m) for m in work.modules())  # the patches came off
    # Grad-CAM's layer is `body`: nothing after it is replayed (the pool), what is inside it may be
    assert replayed == [["stem", "body"], ["stem", "body.0"], ["stem"], []]


def test_a_relu_module_reused_in_place_and_a_residual_add_are_replayed_correctly() -> None:
    class Block(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv1 = nn.Conv2d(4, 4, 3, padding=1)
            self.conv2 = nn.Conv2d(4, 4, 3, padding=1)
            self.relu = nn.ReLU(inplace=True)  # one module called twice, in place (torchvision's ResNet)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            out = self.relu(self.conv1(x))
            out = self.conv2(out)
            out += x  # in place on a module's output
            return self.relu(out)

    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(inplace=True), Block(), Block(),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3)).eval()
    kw: dict[str, Any] = {"methods": ALL, "seed": 1, "granularity": "modules", "maps_image": 1}
    _same(model_randomization(net, _x(2), reuse_bottom=True, **kw),
          model_randomization(net, _x(2), reuse_bottom=False, **kw))


def test_an_error_mid_forward_is_an_input_error_and_leaves_no_hook_behind() -> None:
    class Boom(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            raise RuntimeError("boom")

    broken = nn.Sequential(nn.Conv2d(3, 2, 1), Boom())
    with pytest.raises(InputError, match="boom"):
        BottomReuse(broken, _x(1), torch.tensor([0]), ("saliency",), None)
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in broken.modules())


@pytest.mark.slow
def test_the_default_model_at_a_small_size_gives_the_same_numbers() -> None:
    import guided_backprop as gbp

    loaded = gbp.load_model()
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    before = _snapshot(loaded.model)
    kw: dict[str, Any] = {"methods": ["guided_backprop", "deconvnet", "saliency", "gradcam"], "seed": 0,
                          "granularity": "blocks", "metrics": ["spearman_abs", "ssim"]}
    _same(model_randomization(loaded.model, x, reuse_bottom=True, **kw),
          model_randomization(loaded.model, x, reuse_bottom=False, **kw))
    assert not _changed(before, loaded.model)
    assert not any(m._forward_hooks or m._forward_pre_hooks or "forward" in vars(m) for m in loaded.model.modules())
