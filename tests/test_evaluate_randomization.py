"""Model-parameter randomisation: the right blocks change at each step, the caller's model never does."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from guided_backprop.errors import ModelError, UnknownNameError
from guided_backprop.evaluate import (
    class_sensitivity,
    model_randomization,
    random_other_classes,
    randomization_steps,
    randomized_models,
    reinitialize,
    similarities,
)
from guided_backprop.evaluate.randomization import is_constant


class Net(nn.Module):
    """Definition order differs from forward order (head defined first), with a BatchNorm and a Sequential."""

    def __init__(self) -> None:
        super().__init__()
        self.head = nn.Linear(6, 5)
        self.stem = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU())
        self.body = nn.Sequential(nn.Sequential(nn.Conv2d(4, 6, 3, padding=1), nn.ReLU()),
                                  nn.Sequential(nn.Conv2d(6, 6, 1), nn.ReLU()))  # two stages
        self.pool = nn.AdaptiveAvgPool2d(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.pool(self.body(self.stem(x))).flatten(1))


def _net() -> Net:
    torch.manual_seed(0)
    net = Net().eval()
    with torch.no_grad():  # "trained" BatchNorm: affine parameters and running statistics off their defaults
        net.stem[1].running_mean.uniform_(-1, 1)
        net.stem[1].running_var.uniform_(0.5, 2)
        net.stem[1].weight.uniform_(0.5, 2)
        net.stem[1].bias.uniform_(-1, 1)
    return net


def _x(n: int = 2) -> torch.Tensor:
    return torch.randn(n, 3, 12, 12, generator=torch.Generator().manual_seed(1))


def _snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict(keep_vars=True).items()}


def _changed(before: dict[str, torch.Tensor], model: nn.Module) -> set[str]:
    return {k for k, v in model.state_dict().items() if not torch.equal(before[k], v)}


def test_steps_are_blocks_in_reverse_forward_order() -> None:
    net = _net()
    assert randomization_steps(net, _x(), "blocks") == ["head", "body.1", "body.0", "stem"]
    assert randomization_steps(net, _x(), "modules") == ["head", "body.1.0", "body.0.0", "stem.1", "stem.0"]
    assert randomization_steps(net, _x(), ["stem", "head"]) == ["head", "stem"]


@pytest.mark.parametrize("granularity", ["blocks", "modules"])
@pytest.mark.parametrize("order", ["cascading", "independent"])
def test_each_step_touches_exactly_its_blocks_and_keeps_running_stats(order: str, granularity: str) -> None:
    net = _net()
    steps = randomization_steps(net, _x(), granularity)
    before = _snapshot(net)
    done: list[str] = []
    for name, work in randomized_models(net, steps, order=order, seed=3, recurse=granularity == "blocks"):
        assert work is not net
        done.append(name)
        expected_blocks = done if order == "cascading" else [name]
        expected = {k for k in before if any(k.startswith(b + ".") for b in expected_blocks)
                    and "running" not in k and "num_batches" not in k}
        assert _changed(before, work) == expected, name
    assert _changed(before, net) == set()


def test_keep_running_stats_false_resets_them_and_seeding_is_reproducible() -> None:
    net = _net()
    a = next(randomized_models(net, ["stem"], seed=5, keep_running_stats=False))[1]
    assert torch.equal(a.stem[1].running_mean, torch.zeros(4))
    state = torch.random.get_rng_state()
    b = next(randomized_models(net, ["stem"], seed=5, keep_running_stats=False))[1]
    assert torch.equal(torch.random.get_rng_state(), state)  # the caller's RNG is untouched
    assert torch.equal(a.stem[0].weight, b.stem[0].weight)
    c = next(randomized_models(net, ["stem"], seed=6))[1]
    assert not torch.equal(a.stem[0].weight, c.stem[0].weight)


def test_model_randomization_leaves_the_model_bit_identical_and_step0_is_one() -> None:
    net = _net()
    net.stem[1].train()  # a module in train mode: its flag must come back too
    before = _snapshot(net)
    flags = [m.training for m in net.modules()]
    res = model_randomization(net, _x(3), methods=["guided_backprop", "saliency", "gradcam"], seed=11,
                              metrics=["spearman_abs", "ssim"])
    assert _changed(before, net) == set()
    assert all(torch.equal(p, before[k]) for k, p in net.state_dict().items())
    assert [m.training for m in net.modules()] == flags
    assert not net._forward_hooks and all(not m._forward_hooks for m in net.modules())
    assert res.steps == ["original", "head", "body.1", "body.0", "stem"]
    for m in res.methods:
        v = res.values[m]["spearman_abs"]
        assert v.shape == (3, 5)
        np.testing.assert_allclose(v[:, 0], 1.0)
        assert res.maps[m].shape[0] == 5
    # re-initialising the classifier changes the plain gradient's map
    assert res.values["saliency"]["spearman_abs"][:, 1].mean() < 0.99
    js = res.to_json()
    assert js["order"] == "cascading" and len(js["methods"]["gradcam"]["ssim"]["mean"]) == 5


def test_independent_step_maps_differ_from_cascading() -> None:
    net = _net()
    casc = model_randomization(net, _x(), methods=["saliency"], metrics=["spearman"], order="cascading", seed=2)
    ind = model_randomization(net, _x(), methods=["saliency"], metrics=["spearman"], order="independent", seed=2)
    # step 1 (head only) is the same in both orders; later steps differ
    np.testing.assert_allclose(casc.values["saliency"]["spearman"][:, 1], ind.values["saliency"]["spearman"][:, 1])
    assert not np.allclose(casc.values["saliency"]["spearman"][:, 3], ind.values["saliency"]["spearman"][:, 3])


def test_unknown_block_and_granularity_name_close_matches() -> None:
    with pytest.raises(UnknownNameError, match="'body.1'"):
        randomization_steps(_net(), _x(), ["body.11"])
    with pytest.raises(UnknownNameError, match="'modules'"):
        randomization_steps(_net(), _x(), "module")


def test_model_without_parameters_is_a_clear_error() -> None:
    with pytest.raises(ModelError, match="no parameters"):
        model_randomization(nn.Sequential(nn.ReLU(), nn.Flatten()), _x(), methods=["saliency"])
    with pytest.raises(ModelError, match="no parameters to randomise"):
        randomization_steps(_net(), _x(), ["pool"])


def test_module_without_reset_parameters_is_named() -> None:
    class Scale(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.gain = nn.Parameter(torch.ones(1))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x * self.gain

    with pytest.raises(ModelError, match="Scale.*reset_parameters"):
        reinitialize(nn.Sequential(Scale()))


def test_class_sensitivity_on_one_image_and_the_random_class_is_another() -> None:
    net = _net()
    res = class_sensitivity(net, _x(1), methods=["guided_backprop", "saliency"], metrics=["spearman_abs"], seed=4)
    assert len(res.predicted) == 1 and res.random_classes[0] != res.predicted[0]
    assert res.second_classes[0] != res.predicted[0]
    v = res.values["random"]["saliency"]["spearman_abs"]
    assert v.shape == (1,) and math.isfinite(float(v[0])) and float(v[0]) < 1.0
    js = res.to_json()
    assert js["methods"]["saliency"]["spearman_abs"]["std"] == 0.0
    assert js["methods"]["saliency"]["spearman_abs"]["n"] == 1
    draws = random_other_classes([0, 1, 2, 3] * 50, 4, seed=0)
    assert all(d != p for d, p in zip(draws, [0, 1, 2, 3] * 50)) and set(draws) == {0, 1, 2, 3}


def test_a_net_built_under_the_same_seed_still_changes_at_every_step() -> None:
    """Step j is drawn from seed + j: a net built right after manual_seed(0) is not redrawn as it was."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 10)).eval()
    res = model_randomization(net, _x(), methods=["saliency"], metrics=["spearman_abs"], seed=0, order="independent")
    assert res.steps == ["original", "4", "0"]
    assert (res.values["saliency"]["spearman_abs"][:, 1:] < 0.99).all()
    # Quantus's scheme reseeds every module with the seed: the conv built first comes back unchanged
    same = next(randomized_models(net, ["0"], seed=0, reseed_each_module=True))[1]
    assert torch.equal(same[0].weight, net[0].weight)


def test_class_sensitivity_of_a_given_class_compares_that_class_map() -> None:
    """classes= (a class index as the target): the map compared is that class's, checked against plain
    autograd saliency; the random class avoids it and "second" is the highest-ranked class other than it."""
    from guided_backprop.evaluate.similarity import spearman_abs

    net, x = _net(), _x(2)
    logits = net(x).detach()
    low = [int(c) for c in logits.argmin(dim=1)]  # never the predicted class
    res = class_sensitivity(net, x, methods=["saliency"], metrics=["spearman_abs"], seed=3, classes=low)
    assert res.explained == low and res.predicted == [int(c) for c in logits.argmax(dim=1)]
    assert res.second_classes == res.predicted  # the top class is the highest-ranked one other than the lowest
    assert all(r != c for r, c in zip(res.random_classes, low))

    def grad(i: int, c: int) -> torch.Tensor:
        xi = x[i:i + 1].clone().requires_grad_()
        net(xi)[0, c].backward()
        return xi.grad[0]

    for i in range(2):
        want = spearman_abs(grad(i, low[i]), grad(i, res.random_classes[i]))
        assert res.values["random"]["saliency"]["spearman_abs"][i] == pytest.approx(want, abs=1e-9)
    assert res.to_record().classes["explained"] == low
    with pytest.raises(Exception, match="one class index"):
        class_sensitivity(net, x, methods=["saliency"], classes=[0])


def test_comparisons_on_threads_land_where_one_by_one_would_put_them() -> None:
    """With two torch threads a step's comparisons run on a thread pool: each image's and method's values must
    be those of :func:`similarities` on that image's maps, at that step (kept with ``maps_image``), in its own
    row; two batches of images."""
    net, x = _net(), _x(3)
    metrics = ["spearman_abs", "ssim", "hog"]
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        runs = [model_randomization(net, x, methods=["guided_backprop", "saliency", "gradcam"], metrics=metrics,
                                    seed=5, batch_size=2, maps_image=i) for i in range(x.shape[0])]
    finally:
        torch.set_num_threads(threads)
    for i, res in enumerate(runs):
        for m in res.methods:
            maps = res.maps[m]
            for j in range(len(res.steps)):
                assert res.constant[m][i, j] == is_constant(maps[j])
                expected = similarities(maps[0], maps[j], metrics)
                for k in metrics:
                    np.testing.assert_array_equal(res.values[m][k][i, j], expected[k])
    assert not np.isnan(runs[0].values["saliency"]["spearman_abs"]).all()
