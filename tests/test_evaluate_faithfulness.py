"""Deletion and insertion (Petsiuk et al. 2018) against hand computations on a model linear in its pixels."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from guided_backprop.errors import InputError, UnknownNameError
from guided_backprop.evaluate import blurred, deletion_insertion, pixel_order

C, H, W, K = 3, 5, 6, 3


class Linear(nn.Module):
    """logits = A . x + b: every pixel's contribution is known by hand."""

    def __init__(self) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.a = nn.Parameter(torch.randn(K, C * H * W, generator=g, dtype=torch.float64))
        self.b = nn.Parameter(torch.randn(K, generator=g, dtype=torch.float64))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1) @ self.a.T + self.b


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max())
    return e / e.sum()


def _hand_curve(model: Linear, x: np.ndarray, start: np.ndarray, order: np.ndarray, steps: int, cls: int,
                deletion: bool) -> np.ndarray:
    a = model.a.detach().numpy().reshape(K, C, H * W)
    b = model.b.detach().numpy()
    xs, st = x.reshape(C, H * W), start.reshape(C, H * W)
    out = []
    for k in range(steps + 1):
        count = int(round(k * H * W / steps))
        changed = np.zeros(H * W, bool)
        changed[order[:count]] = True
        if deletion:
            img = np.where(changed[None], st, xs)
        else:
            img = np.where(changed[None], xs, st)
        logits = np.einsum("kcp,cp->k", a, img) + b
        out.append(_softmax(logits)[cls])
    return np.array(out)


def _inputs() -> tuple[Linear, torch.Tensor, dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, C, H, W, generator=g, dtype=torch.float64)
    model = Linear()
    # the map: each pixel's contribution to the predicted logit, as gradient x input would give
    cls = model(x).argmax(1)
    contrib = model.a.detach()[cls].reshape(2, C, H, W) * x
    return model, x, {"contribution": contrib, "gradcam_like": contrib.abs().sum(1, keepdim=True)}


@pytest.mark.parametrize("steps", [6, 30, 7])
def test_deletion_curve_matches_the_hand_computation(steps: int) -> None:
    model, x, maps = _inputs()
    res = deletion_insertion(model, x, maps, mode="deletion", steps=steps, seed=3, batch_size=4)
    cls = model(x).argmax(1).tolist()
    assert res.classes == cls
    assert res.fractions[0] == 0 and res.fractions[-1] == 1 and len(res.fractions) == steps + 1
    for i in range(2):
        order = np.argsort(-maps["contribution"][i].abs().sum(0).numpy().ravel(), kind="stable")
        hand = _hand_curve(model, x[i].numpy(), np.zeros((C, H, W)), order, steps, cls[i], deletion=True)
        np.testing.assert_allclose(res.curves["contribution"][i], hand, rtol=1e-10)
        np.testing.assert_allclose(res.curves["gradcam_like"][i], hand, rtol=1e-10)  # same ranking
        assert res.auc["contribution"][i] == pytest.approx(np.trapezoid(hand, res.fractions))
    # the random order is seeded and different from the map's
    again = deletion_insertion(model, x, maps, mode="deletion", steps=steps, seed=3)
    np.testing.assert_array_equal(again.random, res.random)
    assert not np.allclose(res.random, res.curves["contribution"])


def test_insertion_starts_from_the_blurred_image_and_ends_at_the_image() -> None:
    model, x, maps = _inputs()
    res = deletion_insertion(model, x, maps, mode="insertion", steps=10)
    cls = res.classes
    start = blurred(x)
    for i in range(2):
        order = pixel_order(maps["contribution"][i]).numpy()
        hand = _hand_curve(model, x[i].numpy(), start[i].numpy(), order, 10, cls[i], deletion=False)
        np.testing.assert_allclose(res.curves["contribution"][i], hand, rtol=1e-10)
        full = torch.softmax(model(x[i:i + 1]), 1)[0, cls[i]].item()
        assert res.random[i, -1] == pytest.approx(full)
    js = res.to_json()
    assert set(js["methods"]) == {"contribution", "gradcam_like"} and "auc" in js["random"]


def test_blur_is_gaussian_kernel_11_sigma_5() -> None:
    img = torch.zeros(1, 1, 31, 31, dtype=torch.float64)
    img[0, 0, 15, 15] = 1
    out = blurred(img)[0, 0]
    t = np.arange(-5, 6)
    g = np.exp(-(t**2) / (2 * 5.0**2))
    g /= g.sum()
    np.testing.assert_allclose(out[10:21, 10:21].numpy(), np.outer(g, g), rtol=1e-6)
    const = torch.full((1, 3, 20, 20), 0.7)
    torch.testing.assert_close(blurred(const), const)


def test_bad_arguments_are_named() -> None:
    model, x, maps = _inputs()
    with pytest.raises(UnknownNameError, match="deletion"):
        deletion_insertion(model, x, maps, mode="delete")  # type: ignore[arg-type]
    with pytest.raises(InputError, match="steps"):
        deletion_insertion(model, x, maps, steps=0)
    with pytest.raises(InputError, match="contribution"):
        deletion_insertion(model, x, {"contribution": maps["contribution"][:, :, :2]})
