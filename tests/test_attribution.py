"""attribute() / Explainer: targets, several maps from one forward, Grad-CAM, SmoothGrad, guarantees."""

from __future__ import annotations

import threading

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import guided_backprop as gbp

from .nets import SmallCNN
from .reference import reference_map


@pytest.fixture
def model() -> SmallCNN:
    torch.manual_seed(0)
    m = SmallCNN().double()
    with torch.no_grad():  # non-trivial BatchNorm statistics
        m.features[1].running_mean.uniform_(-0.5, 0.5)
        m.features[1].running_var.uniform_(0.5, 2.0)
    return m.eval()


@pytest.fixture
def x() -> torch.Tensor:
    return torch.randn(4, 3, 16, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(3))


# -- targets ---------------------------------------------------------------------------------------
def test_default_target_is_each_samples_top1(model: SmallCNN, x: torch.Tensor) -> None:
    e = gbp.Explainer(model).explain(x)
    logits = model(x)
    assert torch.equal(e.targets[:, 0], logits.argmax(1))
    torch.testing.assert_close(e.scores[:, 0], logits.max(1).values)
    torch.testing.assert_close(e.probabilities[:, 0], logits.softmax(1).max(1).values)


def test_int_list_and_tensor_targets(model: SmallCNN, x: torch.Tensor) -> None:
    one = gbp.attribute(model, x, target=3)
    torch.testing.assert_close(one, reference_map(model, x, torch.full((4,), 3), "guided_backprop"))
    per = [1, 5, 0, 9]
    got = gbp.attribute(model, x, target=per, method="deconvnet")
    torch.testing.assert_close(got, reference_map(model, x, torch.tensor(per), "deconvnet"))
    torch.testing.assert_close(gbp.attribute(model, x, target=torch.tensor(per), method="deconvnet"), got)
    assert got.shape == x.shape


def test_samples_in_a_batch_are_independent(model: SmallCNN, x: torch.Tensor) -> None:
    batch = gbp.attribute(model, x)
    for i in range(len(x)):
        torch.testing.assert_close(batch[i : i + 1], gbp.attribute(model, x[i : i + 1]))


def test_topk_equals_separate_calls_and_is_one_forward(model: SmallCNN, x: torch.Tensor) -> None:
    calls = []
    handle = model.register_forward_hook(lambda *a: calls.append(1))
    try:
        e = gbp.Explainer(model).explain(x, gbp.TopK(3), methods=["guided_backprop", "saliency"])
    finally:
        handle.remove()
    assert len(calls) == 1
    assert e.maps["guided_backprop"].shape == (4, 3, 3, 16, 16)
    assert torch.equal(e.targets, model(x).topk(3, dim=1).indices)
    for k in range(3):
        for m in ("guided_backprop", "saliency"):
            torch.testing.assert_close(e.maps[m][:, k], gbp.attribute(model, x, target=e.targets[:, k], method=m))
    assert gbp.attribute(model, x, target=gbp.TopK(2)).shape == (4, 2, 3, 16, 16)


def test_several_methods_from_one_forward_equal_separate_calls(model: SmallCNN, x: torch.Tensor) -> None:
    e = gbp.Explainer(model).explain(x, methods=gbp.METHODS)
    for m in gbp.METHODS:
        torch.testing.assert_close(e.maps[m][:, 0], gbp.attribute(model, x, method=m), rtol=1e-12, atol=1e-12)


def test_layer_channel_neuron_and_max_neuron(model: SmallCNN, x: torch.Tensor) -> None:
    xx = x.clone().requires_grad_(True)
    act = model.features[:5](xx)  # conv2's output
    (g_channel,) = torch.autograd.grad(act[:, 7].sum(), xx, retain_graph=True)
    (g_neuron,) = torch.autograd.grad(act[:, 7, 2, 5].sum(), xx, retain_graph=True)
    best = act[:, 7].reshape(4, -1).argmax(1)
    (g_max,) = torch.autograd.grad(act[:, 7].reshape(4, -1).gather(1, best[:, None]).sum(), xx)

    torch.testing.assert_close(gbp.attribute(model, x, gbp.Channel("features.4", 7), "saliency"), g_channel)
    torch.testing.assert_close(gbp.attribute(model, x, gbp.Neuron("features.4", 7, 2, 5), "saliency"), g_neuron)
    e = gbp.Explainer(model).explain(x, gbp.MaxNeuron("features.4", 7), methods=["saliency", "guided_backprop"])
    torch.testing.assert_close(e.maps["saliency"][:, 0], g_max)
    assert torch.equal(e.positions, torch.stack([best // 8, best % 8], 1))
    assert e.targets is None and e.logits is None


def test_layer_target_with_guided_rule_matches_reference(model: SmallCNN, x: torch.Tensor) -> None:
    from .reference import patched_relus

    xx = x.clone().requires_grad_(True)
    with patched_relus("guided_backprop"):
        act = model.features[:6](xx)  # after the ReLU features.5
    (expected,) = torch.autograd.grad(act[:, 3].sum(), xx)
    torch.testing.assert_close(gbp.attribute(model, x, gbp.Channel("features.5", 3)), expected)


# -- Grad-CAM, Guided Grad-CAM, SmoothGrad ------------------------------------------------------
def test_gradcam_against_its_definition(model: SmallCNN, x: torch.Tensor) -> None:
    e = gbp.Explainer(model).explain(x, 2, methods=["gradcam", "guided_gradcam", "guided_backprop"],
                                     gradcam_layer="features.4")
    xx = x.clone()
    a = model.features[:5](xx).detach().requires_grad_(True)
    out = model.head(F.relu(model.features[5:](a)).mean(dim=(2, 3)))
    (grad,) = torch.autograd.grad(out[:, 2].sum(), a)
    alpha = grad.mean(dim=(2, 3))  # (N, C)
    cam = torch.relu(torch.einsum("nc,nchw->nhw", alpha, a.detach()))[:, None]
    cam = F.interpolate(cam, size=(16, 16), mode="bilinear", align_corners=False)
    torch.testing.assert_close(e.maps["gradcam"][:, 0], cam)
    torch.testing.assert_close(e.maps["guided_gradcam"], e.maps["guided_backprop"] * e.maps["gradcam"])
    assert e.gradcam_layer == "features.4"


def test_gradcam_uses_the_requested_class_not_the_top1(model: SmallCNN, x: torch.Tensor) -> None:
    e = gbp.Explainer(model).explain(x, gbp.TopK(2), methods=["gradcam"], gradcam_layer="features.4")
    assert not torch.allclose(e.maps["gradcam"][:, 0], e.maps["gradcam"][:, 1])
    second = gbp.attribute(model, x, target=e.targets[:, 1], method="gradcam", gradcam_layer="features.4")
    torch.testing.assert_close(e.maps["gradcam"][:, 1], second)


def test_gradcam_layer_found_automatically(model: SmallCNN, x: torch.Tensor) -> None:
    e = gbp.Explainer(model).explain(x, methods=["gradcam"])
    assert e.gradcam_layer == "features"  # the last module with an (N, C, h, w) output
    named = gbp.Explainer(model).explain(x, methods=["gradcam"], gradcam_layer="features")
    torch.testing.assert_close(e.maps["gradcam"], named.maps["gradcam"])


def test_smoothgrad_with_zero_noise_equals_the_plain_method(model: SmallCNN, x: torch.Tensor) -> None:
    ex = gbp.Explainer(model)
    plain = ex.explain(x, methods=["guided_backprop", "saliency"])
    smooth = ex.explain(x, methods=["guided_backprop", "saliency"], smooth=5, noise=0.0, smooth_batch=8)
    for m in plain.maps:
        torch.testing.assert_close(smooth.maps[m], plain.maps[m])


def test_smoothgrad_is_the_mean_over_noisy_copies(model: SmallCNN, x: torch.Tensor) -> None:
    ex = gbp.Explainer(model)
    gen = torch.Generator().manual_seed(7)
    smooth = ex.explain(x, methods=["saliency"], smooth=3, noise=0.2, smooth_batch=4, generator=gen)
    targets = ex.explain(x).targets
    gen = torch.Generator().manual_seed(7)
    span = (x.amax(dim=(1, 2, 3)) - x.amin(dim=(1, 2, 3))).view(-1, 1, 1, 1)
    total = torch.zeros_like(x)
    for _ in range(3):  # one noisy copy of each sample per pass (smooth_batch=4 = batch size)
        noisy = x + torch.randn(x.shape, generator=gen, dtype=x.dtype) * 0.2 * span
        total += reference_map(model, noisy, targets[:, 0], "saliency")
    torch.testing.assert_close(smooth.maps["saliency"][:, 0], total / 3)
    assert torch.equal(smooth.targets, targets)


# -- guarantees --------------------------------------------------------------------------------
def _snapshot(model: nn.Module) -> dict:
    return {
        "training": [m.training for m in model.modules()],
        "requires_grad": [p.requires_grad for p in model.parameters()],
        "params": [p.detach().clone() for p in model.state_dict().values()],
        "grads": [None if p.grad is None else p.grad.clone() for p in model.parameters()],
        "hooks": sum(len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks)
                     for m in model.modules()),
    }


def _assert_same(before: dict, model: nn.Module) -> None:
    after = _snapshot(model)
    assert after["training"] == before["training"]
    assert after["requires_grad"] == before["requires_grad"]
    assert after["hooks"] == before["hooks"]
    for a, b in zip(after["params"], before["params"]):
        assert torch.equal(a, b)
    for a, b in zip(after["grads"], before["grads"]):
        assert (a is None and b is None) or torch.equal(a, b)
    assert torch._C._len_torch_function_stack() == 0


def test_model_comes_back_exactly_as_it_was(model: SmallCNN, x: torch.Tensor) -> None:
    model.train()
    model.features[1].eval()  # a mixed state must come back mixed
    model.head.weight.requires_grad_(False)
    model.features[0].weight.grad = torch.ones_like(model.features[0].weight)
    before = _snapshot(model)
    x_before = x.clone()
    gbp.Explainer(model).explain(x, gbp.TopK(2), methods=gbp.METHODS, smooth=2)
    gbp.attribute(model, x, gbp.MaxNeuron("features.4", 1))
    _assert_same(before, model)
    assert torch.equal(x, x_before)


def test_model_restored_when_forward_raises(model: SmallCNN, x: torch.Tensor) -> None:
    class Boom(nn.Module):
        def forward(self, t: torch.Tensor) -> torch.Tensor:
            raise RuntimeError("boom")

    model.train()
    model.features.append(Boom())
    before = _snapshot(model)
    with pytest.raises(gbp.InputError, match="boom"):
        gbp.Explainer(model).explain(x, methods=gbp.METHODS)
    _assert_same(before, model)
    # and the routing mode is gone: F.relu runs as usual afterwards
    t = torch.randn(3, requires_grad=True)
    assert F.relu(t).grad_fn.name() != "_RoutedReLUBackward"


def test_eval_mode_is_used_so_batchnorm_statistics_stay(model: SmallCNN, x: torch.Tensor) -> None:
    model.train()
    stats = model.features[1].running_mean.clone()
    gbp.attribute(model, x)
    assert torch.equal(model.features[1].running_mean, stats)
    torch.testing.assert_close(gbp.attribute(model, x[:1]), gbp.attribute(model, x)[:1])


def test_float32_and_inference_tensors(model: SmallCNN, x: torch.Tensor) -> None:
    m32 = model.float()
    with torch.inference_mode():
        x32 = x.float() * 1
    out = gbp.attribute(m32, x32)
    assert out.dtype == torch.float32 and out.shape == x32.shape and torch.isfinite(out).all()
    assert not out.requires_grad


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_cuda_matches_cpu(model: SmallCNN, x: torch.Tensor, dtype: torch.dtype) -> None:
    model, x = model.to(dtype), x.to(dtype)
    cpu = gbp.Explainer(model).explain(x, methods=gbp.METHODS)
    tf32 = torch.backends.cudnn.allow_tf32
    gpu = gbp.Explainer(model.to("cuda")).explain(x.cuda(), methods=gbp.METHODS)
    assert torch.backends.cudnn.allow_tf32 == tf32  # the global switch is restored
    for m in gbp.METHODS:
        assert gpu.maps[m].device.type == "cuda"
        scale = cpu.maps[m].abs().max().item()
        torch.testing.assert_close(gpu.maps[m].cpu(), cpu.maps[m], rtol=1e-4, atol=1e-5 * scale)


def test_two_models_in_two_threads_do_not_interfere(x: torch.Tensor) -> None:
    torch.manual_seed(1)
    relu_net = SmallCNN().double().eval()
    linear_net = nn.Sequential(nn.Flatten(), nn.Linear(3 * 16 * 16, 4)).double()
    expected = gbp.attribute(relu_net, x)
    results: dict[str, object] = {}

    def run_relu() -> None:
        results["relu"] = [gbp.attribute(relu_net, x) for _ in range(5)]

    def run_linear() -> None:
        results["linear"] = [gbp.attribute(linear_net, x, method="saliency") for _ in range(5)]

    threads = [threading.Thread(target=run_relu), threading.Thread(target=run_linear)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for got in results["relu"]:  # type: ignore[union-attr]
        torch.testing.assert_close(got, expected)
    with pytest.raises(gbp.NoReLUError):  # the ReLU net's mode never leaked into this thread
        gbp.attribute(linear_net, x)


# -- errors ------------------------------------------------------------------------------------
def test_no_relu_is_an_error_for_relu_rules_but_not_for_saliency(x: torch.Tensor) -> None:
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Tanh(), nn.Flatten(), nn.LazyLinear(3)).double()
    for method in ("guided_backprop", "deconvnet", "guided_gradcam"):
        with pytest.raises(gbp.NoReLUError, match="no ReLU"):
            gbp.attribute(net, x, method=method)
    assert gbp.attribute(net, x, method="saliency").shape == x.shape


def test_unknown_layer_lists_close_matches(model: SmallCNN, x: torch.Tensor) -> None:
    with pytest.raises(gbp.UnknownNameError, match=r"features\.4"):
        gbp.attribute(model, x, gbp.Channel("feature.4", 0))
    with pytest.raises(gbp.UnknownNameError, match="did you mean"):
        gbp.attribute(model, x, method="gradcam", gradcam_layer="featurs")


def test_class_out_of_range_names_the_valid_range(model: SmallCNN, x: torch.Tensor) -> None:
    with pytest.raises(gbp.TargetError, match=r"10 is out of range .* 10 classes \(valid: 0\.\.9\)"):
        gbp.attribute(model, x, target=10)
    with pytest.raises(gbp.TargetError, match="-1"):
        gbp.attribute(model, x, target=[0, 1, -1, 2])
    with pytest.raises(gbp.TargetError, match="3 class indices for a batch of 4"):
        gbp.attribute(model, x, target=[0, 1, 2])
    with pytest.raises(gbp.TargetError, match="channel 99 is out of range"):
        gbp.attribute(model, x, gbp.Channel("features.4", 99))
    with pytest.raises(gbp.TargetError, match="outside"):
        gbp.attribute(model, x, gbp.Neuron("features.4", 0, 8, 0))
    with pytest.raises(gbp.TargetError, match="integers"):
        gbp.attribute(model, x, target=[0.5, 1, 2, 3])


def test_wrong_input_shape(model: SmallCNN, x: torch.Tensor) -> None:
    with pytest.raises(gbp.InputError, match=r"unsqueeze\(0\)"):
        gbp.attribute(model, x[0])
    with pytest.raises(gbp.InputError, match=r"shape \(4, 5, 16, 16\)"):
        gbp.attribute(model, torch.randn(4, 5, 16, 16, dtype=torch.float64))
    with pytest.raises(gbp.InputError, match="floating-point"):
        gbp.attribute(model, torch.zeros(1, 3, 16, 16, dtype=torch.uint8))
    with pytest.raises(gbp.UnknownNameError, match="method"):
        gbp.attribute(model, x, method="guided_backprob")


def test_non_tensor_output_is_explained(x: torch.Tensor) -> None:
    net = nn.Sequential(nn.Flatten(), nn.Linear(3 * 16 * 16, 4), nn.ReLU())

    class TupleOut(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = net.double()

        def forward(self, t: torch.Tensor) -> tuple:
            return self.net(t), None

    with pytest.raises(gbp.ModelError, match="returned a tuple"):
        gbp.attribute(TupleOut(), x)


def test_layer_output_stops_the_forward_at_the_layer(model: SmallCNN, x: torch.Tensor) -> None:
    from guided_backprop.hooks import layer_output

    reached = []
    handle = model.head.register_forward_hook(lambda *a: reached.append(1))
    try:
        out = layer_output(model, x, "features.4")
    finally:
        handle.remove()
    torch.testing.assert_close(out, model.features[:5](x))
    assert not reached and not out.requires_grad
    with pytest.raises(gbp.UnknownNameError, match="features.4"):
        layer_output(model, x, "features.44")


# -- batches, per-sample SmoothGrad seeds, Grad-CAM layer checks -------------------------------------
def test_explanations_of_batches_concatenate_to_the_explanation_of_the_whole(model: SmallCNN,
                                                                            x: torch.Tensor) -> None:
    ex = gbp.Explainer(model)
    methods = ["guided_backprop", "gradcam"]
    whole = ex.explain(x, gbp.TopK(2), methods=methods)
    parts = gbp.Explanation.concat([ex.explain(x[:1], gbp.TopK(2), methods=methods),
                                    ex.explain(x[1:], gbp.TopK(2), methods=methods)])
    assert len(parts) == 4 and parts.gradcam_layer == whole.gradcam_layer
    for m in methods:
        torch.testing.assert_close(parts.maps[m], whole.maps[m])
    assert torch.equal(parts.targets, whole.targets)
    torch.testing.assert_close(parts.logits, whole.logits)
    with pytest.raises(ValueError, match="different methods"):
        gbp.Explanation.concat([whole, ex.explain(x, methods=["saliency"])])


def test_smoothgrad_seeded_per_sample_does_not_depend_on_the_batch(model: SmallCNN, x: torch.Tensor) -> None:
    ex = gbp.Explainer(model)
    opts = dict(methods=["guided_backprop"], smooth=3, noise=0.2, seed=7)
    batch = ex.explain(x, [1, 2, 3, 4], sample_ids=[10, 11, 12, 13], **opts)
    alone = ex.explain(x[2:3], [3], sample_ids=[12], **opts)
    torch.testing.assert_close(batch.maps["guided_backprop"][2:3], alone.maps["guided_backprop"], rtol=0, atol=0)
    # the noise really is the sample's own: another id gives another map, the same id the same
    other = ex.explain(x[2:3], [3], sample_ids=[99], **opts)
    assert not torch.equal(other.maps["guided_backprop"], alone.maps["guided_backprop"])
    gen = torch.Generator().manual_seed(gbp.attribution.smoothgrad_seed(7, 12))
    manual = ex.explain(x[2:3], [3], methods=["guided_backprop"], smooth=3, noise=0.2, generator=gen)
    torch.testing.assert_close(manual.maps["guided_backprop"], alone.maps["guided_backprop"], rtol=0, atol=0)
    with pytest.raises(gbp.InputError, match="sample ids"):
        ex.explain(x, sample_ids=[1], **opts)


def test_a_gradcam_layer_without_spatial_output_is_a_usage_error_naming_its_shape(model: SmallCNN,
                                                                                 x: torch.Tensor) -> None:
    with pytest.raises(gbp.TargetError, match=r"'head' outputs \(4, 10\), not a spatial.*e\.g\. 'features\.4'") as err:
        gbp.Explainer(model).explain(x, methods=["gradcam"], gradcam_layer="head")
    assert err.value.field == "gradcam_layer"
    assert not model.head._forward_hooks  # the hooks came off on the error path
