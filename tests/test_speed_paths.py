"""Speed work must not change the maps, nor the caller's model and tensors.

The benchmark (``benchmarks/bench_attribution.py``) compares the engine against PyTorch's floor and
the peers; these tests pin down what any speed path has to preserve: float32 and float64 maps equal
to a plain re-implementation on a VGG-like net (in-place ReLUs, max-pool switches, BatchNorm, a
reused ReLU module), saliency equal to autograd's own input gradient bit for bit, maps returned as
contiguous NCHW, and the caller's model and input left in their memory format, untouched.
(A channels_last fast path was measured and dropped: it changed maps, see docs/benchmarks.md.)
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import guided_backprop as gbp

from .nets import TinyVGG
from .reference import reference_map


def _model(dtype: torch.dtype) -> TinyVGG:
    torch.manual_seed(0)
    m = TinyVGG().to(dtype)
    with torch.no_grad():  # non-trivial BatchNorm statistics
        bn = m.features[4]
        bn.running_mean.uniform_(-0.3, 0.3)
        bn.running_var.uniform_(0.5, 2.0)
    return m.eval()


def _x(dtype: torch.dtype, n: int = 3, size: int = 16) -> torch.Tensor:
    return torch.randn(n, 3, size, size, dtype=dtype, generator=torch.Generator().manual_seed(5))


def _memory_state(model: nn.Module, x: torch.Tensor) -> list[tuple]:
    return [(x.stride(), x.data_ptr(), x._version, x.requires_grad)] + [
        (name, t.stride(), t.data_ptr(), t._version, t.requires_grad, t.grad)
        for name, t in list(model.named_parameters()) + list(model.named_buffers())
    ]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_maps_equal_a_plain_reimplementation(dtype: torch.dtype) -> None:
    model, x = _model(dtype), _x(dtype)
    e = gbp.Explainer(model).explain(x, gbp.TopK(2), methods=("guided_backprop", "deconvnet", "saliency"))
    rtol, atol = (1e-12, 1e-14) if dtype == torch.float64 else (1e-5, 1e-7)
    for rule in ("guided_backprop", "deconvnet", "saliency"):
        for j in range(2):
            expected = reference_map(model, x, e.targets[:, j], rule)
            got = e.maps[rule][:, j]
            assert expected.abs().max() > 0
            torch.testing.assert_close(got, expected, rtol=rtol, atol=atol * expected.abs().max().item())


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_saliency_is_autograds_input_gradient_bit_for_bit(dtype: torch.dtype) -> None:
    """The floor the benchmark divides by: forward + input-only backward, plain autograd."""
    model, x = _model(dtype), _x(dtype)
    classes = torch.tensor([0, 3, 6])
    maps = gbp.attribute(model, x, target=classes, method="saliency")
    leaf = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(model(leaf).gather(1, classes[:, None]).sum(), leaf)
    assert torch.equal(maps, g)


@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
def test_callers_model_and_tensor_keep_their_memory_format(layout: torch.memory_format) -> None:
    model = _model(torch.float32).to(memory_format=layout)
    x = _x(torch.float32).contiguous(memory_format=layout)
    before = _memory_state(model, x)
    x_copy = x.clone()
    e = gbp.Explainer(model).explain(x, gbp.TopK(2), methods=("guided_backprop", "gradcam", "guided_gradcam"))
    assert _memory_state(model, x) == before
    assert x.is_contiguous(memory_format=layout) and torch.equal(x, x_copy)
    for name, m in e.maps.items():
        assert m.is_contiguous(), f"{name} maps are not contiguous NCHW"
    assert gbp.attribute(model, x).is_contiguous()


def test_channels_last_input_gives_the_same_maps() -> None:
    model, x = _model(torch.float64), _x(torch.float64)
    nchw = gbp.attribute(model, x, method="guided_backprop")
    cl_model = _model(torch.float64).to(memory_format=torch.channels_last)
    cl = gbp.attribute(cl_model, x.contiguous(memory_format=torch.channels_last), method="guided_backprop")
    torch.testing.assert_close(cl, nchw, rtol=1e-12, atol=1e-14 * nchw.abs().max().item())
    assert cl.is_contiguous()
