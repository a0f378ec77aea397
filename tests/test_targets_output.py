"""Targets on any output (gbp.Score, Region, Box, Similarity, Output; output=): exact maps on tiny hand-made
segmenters, detectors and embedding nets whose answers are written out by hand, and one clear error for each
bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import guided_backprop as gbp

from .nets import SmallCNN
from .reference import reference_score_map

RULES = ["saliency", "deconvnet", "guided_backprop"]


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


class PixelSegmenter(nn.Module):
    """1x1 conv -> ReLU -> 1x1 conv: every pixel's class logits depend on that pixel only, so the maps of a
    region are written out by hand: ``out[c, p] = sum_k W2[c, k] relu(W1[k] . x[:, p] + b1[k]) + b2[c]``."""

    def __init__(self, classes: int = 3, width: int = 5) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, width, 1)
        self.conv2 = nn.Conv2d(width, classes, 1)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"out": self.conv2(F.relu(self.conv1(x))), "aux": self.conv1(x)}


def hand_region_map(seg: PixelSegmenter, x: torch.Tensor, cls: int, mask: torch.Tensor, rule: str) -> torch.Tensor:
    """The map of ``sum_p mask[p] out[cls, p]`` under ``rule``, from the formula (no autograd)."""
    w1 = seg.conv1.weight[:, :, 0, 0]  # (K, 3)
    w2 = seg.conv2.weight[cls, :, 0, 0]  # (K,)
    pre = torch.einsum("kj,njhw->nkhw", w1, x) + seg.conv1.bias[None, :, None, None]
    gate = (pre > 0).to(x.dtype)
    g = mask[:, None] * w2[None, :, None, None]  # signal reaching the ReLU output: (N, K, H, W)
    if rule == "saliency":
        g = g * gate
    elif rule == "deconvnet":
        g = g.clamp(min=0)
    else:
        g = g.clamp(min=0) * gate
    return torch.einsum("nkhw,kj->njhw", g, w1)


class BoxDetector(nn.Module):
    """A detector shaped like torchvision's: a list of dicts (boxes, labels, scores) sorted by score. Two fixed
    boxes; a box's score is the mean over its pixels of ``v . relu(W x + b)`` plus a bias."""

    BOXES = ((0.0, 0.0, 4.0, 4.0), (2.0, 3.0, 8.0, 8.0), (5.0, 0.0, 8.0, 2.0))
    LABELS = (1, 2, 1)

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 1)
        self.v = nn.Parameter(torch.randn(4, generator=_gen(5)))
        self.bias = nn.Parameter(torch.tensor([0.5, 0.0, -0.2]))

    def masks(self, h: int, w: int) -> torch.Tensor:
        m = torch.zeros(len(self.BOXES), h, w)
        for b, (x0, y0, x1, y1) in enumerate(self.BOXES):
            m[b, int(y0):int(y1), int(x0):int(x1)] = 1
        return m

    def forward(self, x: torch.Tensor) -> list[dict[str, torch.Tensor]]:
        feat = torch.einsum("k,nkhw->nhw", self.v, F.relu(self.conv(x)))
        masks = self.masks(*x.shape[2:]).to(x.dtype)
        raw = torch.einsum("nhw,bhw->nb", feat, masks) / masks.sum((1, 2)) + self.bias
        out = []
        for s in raw:
            order = s.detach().argsort(descending=True)
            out.append({"boxes": torch.tensor(self.BOXES, dtype=x.dtype)[order],
                        "labels": torch.tensor(self.LABELS)[order], "scores": s[order]})
        return out


def hand_box_map(det: BoxDetector, x: torch.Tensor, boxes: list[int], rule: str) -> torch.Tensor:
    """The map of box ``boxes[i]``'s score of sample ``i`` under ``rule``, from the formula."""
    w1 = det.conv.weight[:, :, 0, 0]
    pre = torch.einsum("kj,njhw->nkhw", w1, x) + det.conv.bias[None, :, None, None]
    gate = (pre > 0).to(x.dtype)
    masks = det.masks(*x.shape[2:]).to(x.dtype)
    area = masks[boxes] / masks[boxes].sum((1, 2), keepdim=True)  # (N, H, W)
    g = area[:, None] * det.v[None, :, None, None]
    g = g * gate if rule == "saliency" else g.clamp(min=0) if rule == "deconvnet" else g.clamp(min=0) * gate
    return torch.einsum("nkhw,kj->njhw", g, w1)


@pytest.fixture
def seg() -> PixelSegmenter:
    torch.manual_seed(5)  # classes 0 and 1 both predicted on x
    return PixelSegmenter().double().eval()


@pytest.fixture
def det() -> BoxDetector:
    torch.manual_seed(1)
    return BoxDetector().double().eval()


@pytest.fixture
def x() -> torch.Tensor:
    return torch.randn(2, 3, 8, 8, dtype=torch.float64, generator=_gen(3))


# -- exact maps, by hand --------------------------------------------------------------------------------
@pytest.mark.parametrize("rule", RULES)
def test_region_maps_equal_the_hand_formula(seg: PixelSegmenter, x: torch.Tensor, rule: str) -> None:
    with torch.no_grad():
        predicted = seg(x)["out"].argmax(1) == 1
    mask = torch.zeros(8, 8, dtype=torch.float64)
    mask[2:6, 1:7] = 0.5
    e = gbp.Explainer(seg).explain(x, [gbp.Region(1), gbp.Region(2, mask=mask)], methods=[rule])
    assert predicted.any() and e.maps[rule].shape == (2, 2, 3, 8, 8)
    torch.testing.assert_close(e.maps[rule][:, 0], hand_region_map(seg, x, 1, predicted.double(), rule))
    torch.testing.assert_close(e.maps[rule][:, 1], hand_region_map(seg, x, 2, mask.expand(2, 8, 8), rule))
    out = seg(x)["out"]
    torch.testing.assert_close(e.scores[:, 1], (out[:, 2] * mask).sum((1, 2)))
    assert e.details[0][0] == {"class": 1, "pixels": float(predicted[0].sum())}
    assert e.value_kind == "score" and e.probabilities is None and e.titles == ["region 1", "region 2"]
    torch.testing.assert_close(e.values, e.scores)


@pytest.mark.parametrize("rule", RULES)
def test_box_maps_equal_the_hand_formula(det: BoxDetector, x: torch.Tensor, rule: str) -> None:
    out = det(x)
    e = gbp.Explainer(det).explain(x, [gbp.Box(rank=0), gbp.Box(rank=1), gbp.Box(box=(2, 3, 8, 8))],
                                   methods=[rule])
    best = [BoxDetector.BOXES.index(tuple(o["boxes"][0].tolist())) for o in out]
    second = [BoxDetector.BOXES.index(tuple(o["boxes"][1].tolist())) for o in out]
    torch.testing.assert_close(e.maps[rule][:, 0], hand_box_map(det, x, best, rule))
    torch.testing.assert_close(e.maps[rule][:, 1], hand_box_map(det, x, second, rule))
    torch.testing.assert_close(e.maps[rule][:, 2], hand_box_map(det, x, [1, 1], rule))
    assert e.details[0][2]["box"] == [2.0, 3.0, 8.0, 8.0] and e.details[0][2]["label"] == 2
    torch.testing.assert_close(e.scores[:, 0], torch.stack([o["scores"][0] for o in out]).detach())
    assert e.value_kind == "score" and e.found is None


def test_a_box_without_a_matching_detection_gets_no_map(det: BoxDetector, x: torch.Tensor) -> None:
    e = gbp.Explainer(det).explain(x, [gbp.Box(rank=0), gbp.Box(label=2, rank=1), gbp.Box(box=(20, 20, 30, 30))],
                                   methods=["guided_backprop", "gradcam"])
    assert e.found is not None and e.found.tolist() == [[True, False, False]] * 2
    for m in ("guided_backprop", "gradcam"):
        assert e.maps[m][:, 0].isfinite().all() and e.maps[m][:, 1:].isnan().all()  # never a zero map
    assert "only 1 detection(s) of class 2; rank 1 asked" in e.details[0][1]["reason"]
    assert "IoU >= 0.5" in e.details[0][2]["reason"]
    # a box found for no sample at all: still an explanation, every map NaN
    none = gbp.Explainer(det).explain(x, gbp.Box(box=(20, 20, 30, 30)))
    assert none.found is not None and not none.found.any() and none.maps["guided_backprop"].isnan().all()


@pytest.mark.parametrize("rule", RULES)
def test_every_target_against_autograd_and_the_float64_reference(seg: PixelSegmenter, det: BoxDetector,
                                                                   x: torch.Tensor, rule: str) -> None:
    """For every kind of target: saliency == autograd.grad(score.sum(), x) bit for bit (float32), and each
    rule equal to the independent reference in float64."""
    ref = torch.randn(3 * 8 * 8, dtype=torch.float64, generator=_gen(9))
    cases = [  # (model, target, options, the score written independently on the raw output)
        (seg, gbp.Region(0), {}, lambda o, r: (o["out"][:, 0] * (o["out"].argmax(1) == 0)).sum((1, 2))),
        (seg, gbp.Score(lambda o: o["out"][:, 1, 2:4, 3].sum(1), name="corner"), {},
         lambda o, r: o["out"][:, 1, 2:4, 3].sum(1)),
        (seg, gbp.Output((1, 3, 4)), {"output": "out"}, lambda o, r: o["out"][:, 1, 3, 4]),
        (seg, gbp.Similarity(ref), {"output": "out"},
         lambda o, r: F.cosine_similarity(o["out"].flatten(1), r[None], dim=1)),
        (det, gbp.Box(rank=0), {}, lambda o, r: torch.stack([d["scores"][0] for d in o])),
    ]
    for model, target, opts, score in cases:
        got = gbp.Explainer(model).explain(x, target, methods=[rule], **opts).maps[rule][:, 0]
        expected = reference_score_map(model, x, lambda o, s=score: s(o, ref), rule)
        torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-12)
        if rule != "saliency":
            continue
        model32 = type(model)().eval()
        model32.load_state_dict({k: v.float() for k, v in model.state_dict().items()})
        x32, ref32 = x.float(), ref.float()
        t32 = gbp.Similarity(ref32) if isinstance(target, gbp.Similarity) else target
        got32 = gbp.Explainer(model32).explain(x32, t32, methods=["saliency"], **opts).maps["saliency"][:, 0]
        xx = x32.clone().requires_grad_(True)
        (want32,) = torch.autograd.grad(score(model32(xx), ref32).sum(), xx)
        assert torch.equal(got32, want32), type(target).__name__


def test_several_targets_from_one_forward_equal_separate_calls(det: BoxDetector, x: torch.Tensor) -> None:
    calls = []
    handle = det.register_forward_hook(lambda *a: calls.append(1))
    try:
        many = gbp.Explainer(det).explain(x, [gbp.Box(rank=0), gbp.Box(rank=1), lambda o: o[0]["scores"].sum() *
                                              torch.ones(2, dtype=torch.float64) + 0 * o[1]["scores"].sum()],
                                          methods=["guided_backprop", "saliency"])
    finally:
        handle.remove()
    assert len(calls) == 1 and many.maps["guided_backprop"].shape == (2, 3, 3, 8, 8)
    for k, t in enumerate([gbp.Box(rank=0), gbp.Box(rank=1)]):
        alone = gbp.attribute(det, x, t)
        torch.testing.assert_close(many.maps["guided_backprop"][:, k], alone, rtol=0, atol=0)


def test_classes_of_a_dict_output_with_output_key_are_as_today() -> None:
    torch.manual_seed(0)
    base = SmallCNN().double().eval()

    class DictNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = base

        def forward(self, t: torch.Tensor) -> dict[str, torch.Tensor]:
            return {"logits": self.net(t), "features": t.mean((2, 3))}

    x = torch.randn(3, 3, 16, 16, dtype=torch.float64, generator=_gen(2))
    want = gbp.Explainer(base).explain(x, gbp.TopK(2), methods=["guided_backprop", "gradcam"])
    for key in ("logits", lambda o: o["logits"]):
        got = gbp.Explainer(DictNet()).explain(x, gbp.TopK(2), methods=["guided_backprop", "gradcam"], output=key)
        assert torch.equal(got.targets, want.targets) and got.value_kind == "probability"
        torch.testing.assert_close(got.maps["guided_backprop"], want.maps["guided_backprop"], rtol=0, atol=0)
        torch.testing.assert_close(got.probabilities, want.probabilities)
    with pytest.raises(gbp.ModelError, match=r"dict with keys \['logits', 'features'\].*output=KEY"):
        gbp.attribute(DictNet(), x)
    with pytest.raises(gbp.TargetError, match=r"output='logit'.*valid: \['logits', 'features'\]") as err:
        gbp.attribute(DictNet(), x, output="logit")
    assert err.value.field == "output_key"


def test_a_regression_output_is_explained_raw_never_softmaxed() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 1), nn.Flatten(0)).double()
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64, generator=_gen(1))
    with pytest.raises(gbp.TargetError, match=r"shape \(2,\).*gbp\.Output"):
        gbp.attribute(net, x)
    e = gbp.Explainer(net).explain(x, gbp.Output())
    torch.testing.assert_close(e.scores[:, 0], net(x).detach())
    assert e.value_kind == "score" and e.probabilities is None


def test_similarity_to_a_reference_input_runs_it_through_the_model(seg: PixelSegmenter, x: torch.Tensor) -> None:
    ref_input = torch.randn(3, 8, 8, dtype=torch.float64, generator=_gen(4))
    e = gbp.Explainer(seg).explain(x, gbp.Similarity(ref_input, layer="conv1"), methods=["saliency"])
    emb = seg.conv1(ref_input[None]).detach().flatten(1)
    want = F.cosine_similarity(seg.conv1(x).flatten(1), emb, dim=1).detach()
    torch.testing.assert_close(e.scores[:, 0], want.detach())
    assert e.details[1][0]["similarity"] == pytest.approx(float(want[1]))
    same = gbp.Explainer(seg).explain(ref_input[None], gbp.Similarity(ref_input, layer="conv1"))
    assert same.scores[0, 0] == pytest.approx(1.0)


def test_smoothgrad_of_a_region_keeps_the_clean_inputs_pixels(seg: PixelSegmenter, x: torch.Tensor) -> None:
    with torch.no_grad():
        mask = (seg(x)["out"].argmax(1) == 1).double()
    a = gbp.Explainer(seg).explain(x, gbp.Region(1), smooth=3, noise=0.3, generator=_gen(0))
    b = gbp.Explainer(seg).explain(x, gbp.Region(1, mask=mask), smooth=3, noise=0.3, generator=_gen(0))
    torch.testing.assert_close(a.maps["guided_backprop"], b.maps["guided_backprop"], rtol=0, atol=0)
    per = gbp.Explainer(seg).explain(x, gbp.Region(1, mask=mask), smooth=3, noise=0.3, seed=1)
    alone = gbp.Explainer(seg).explain(x[1:], gbp.Region(1, mask=mask[1:]), smooth=3, noise=0.3, seed=1,
                                       sample_ids=[1])
    torch.testing.assert_close(per.maps["guided_backprop"][1:], alone.maps["guided_backprop"], rtol=0, atol=0)


def test_an_empty_region_gives_an_all_zero_map_that_is_reported(seg: PixelSegmenter, x: torch.Tensor) -> None:
    e = gbp.Explainer(seg).explain(x, gbp.Region(0, mask=torch.zeros(8, 8)))
    assert e.zero_maps("guided_backprop").all() and e.details[0][0]["pixels"] == 0.0


# -- the batch dimension -----------------------------------------------------------------------------------
def test_an_output_with_another_batch_dimension_is_an_error_naming_the_shapes(x: torch.Tensor) -> None:
    class Drops(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(3 * 8 * 8, 4)

        def forward(self, t: torch.Tensor) -> torch.Tensor:
            return F.relu(self.fc(t.flatten(1)))[:1]  # one row for two inputs

    net = Drops().double()
    with pytest.raises(gbp.ModelError, match=r"shape \(1, 4\) for an input batch of 2"):
        gbp.attribute(net, x)
    with pytest.raises(gbp.TargetError, match=r"shape \(1, 4\) for an input batch of 2"):
        gbp.attribute(net, x, gbp.Output(0))

    class OneResult(BoxDetector):
        def forward(self, t: torch.Tensor) -> list[dict[str, torch.Tensor]]:
            return super().forward(t)[:1]

    with pytest.raises(gbp.TargetError, match="1 results for an input batch of 2"):
        gbp.attribute(OneResult().double(), x, gbp.Box(rank=0))


class ProposalNet(nn.Module):
    """A backbone, then per-proposal features with another batch dimension (as a detector's RoI pooling)."""

    def __init__(self) -> None:
        super().__init__()
        self.backbone = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU())
        self.side = nn.Conv2d(4, 2, 1)  # spatial, batch N, but the score does not use it
        self.pool = nn.Conv2d(4, 4, 1)
        self.head = nn.Linear(4, 1)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        f = self.backbone(t)
        self.side(f.detach())
        crops = torch.cat([f[:, :, :4, :4], f[:, :, 4:, 4:]])  # (2N, C, 4, 4): one row per proposal
        pooled = F.relu(self.pool(crops)).mean((2, 3))
        return self.head(pooled).reshape(2, -1).sum(0)


def test_gradcam_default_layer_has_the_inputs_batch_dimension(x: torch.Tensor) -> None:
    torch.manual_seed(0)
    net = ProposalNet().double()
    e = gbp.Explainer(net).explain(x, gbp.Output(), methods=["gradcam"])
    assert e.gradcam_layer == "backbone" and e.maps["gradcam"].shape == (2, 1, 1, 8, 8)
    with pytest.raises(gbp.TargetError, match=r"'pool' outputs \(4, 4, 4, 4\): its batch dimension is 4, not the "
                                              r"input's 2") as err:
        gbp.Explainer(net).explain(x, gbp.Output(), methods=["gradcam"], gradcam_layer="pool")
    assert err.value.field == "gradcam_layer"


# -- bad input: one clear error each ----------------------------------------------------------------------
def test_a_callable_returning_the_wrong_shape_nan_or_no_gradient(seg: PixelSegmenter, x: torch.Tensor) -> None:
    ex = gbp.Explainer(seg)
    with pytest.raises(gbp.TargetError, match=r"Score 'total' returned \(2, 3\).*shape \(2,\)"):
        ex.explain(x, gbp.Score(lambda o: o["out"].sum((2, 3)), name="total"))
    with pytest.raises(gbp.TargetError, match=r"returned float.*shape \(2,\)"):
        ex.explain(x, lambda o: float(o["out"].detach().sum()))
    with pytest.raises(gbp.TargetError, match="the score of sample 0 is nan"):
        ex.explain(x, lambda o: o["out"].sum((1, 2, 3)) * float("nan"))
    with pytest.raises(gbp.TargetError, match="does not depend on the input"):
        ex.explain(x, lambda o: o["out"].detach().sum((1, 2, 3)))
    with pytest.raises(gbp.TargetError, match=r"failed on the model's output.*KeyError"):
        ex.explain(x, gbp.Score(lambda o: o["logits"][:, 0], name="logit 0"))


def test_a_mask_of_the_wrong_size_and_unknown_label_names(seg: PixelSegmenter, det: BoxDetector,
                                                          x: torch.Tensor) -> None:
    with pytest.raises(gbp.TargetError, match="mask is 5x5; it must be the output's size 8x8 or the input's") as err:
        gbp.attribute(seg, x, gbp.Region(1, mask=torch.ones(5, 5)))
    assert err.value.field == "mask"
    with pytest.raises(gbp.TargetError, match=r"mask has shape \(3, 8, 8\)"):
        gbp.attribute(seg, x, gbp.Region(1, mask=torch.ones(3, 8, 8)))
    labels = ["background", "cat", "dog"]
    torch.testing.assert_close(gbp.attribute(seg, x, gbp.Region("dog"), labels=labels),
                               gbp.attribute(seg, x, gbp.Region(2)))
    with pytest.raises(gbp.UnknownNameError, match="unknown class 'dgo'; did you mean 'dog'"):
        gbp.attribute(seg, x, gbp.Region("dgo"), labels=labels)
    with pytest.raises(gbp.UnknownNameError, match="unknown class 'person'"):
        gbp.attribute(det, x, gbp.Box(label="person"), labels=labels)
    with pytest.raises(gbp.TargetError, match="needs the model's class names"):
        gbp.attribute(seg, x, gbp.Region("dog"))
    with pytest.raises(gbp.TargetError, match="class 7 is out of range for an output with 3 classes"):
        gbp.attribute(seg, x, gbp.Region(7))
    with pytest.raises(gbp.TargetError, match="Box needs a detector's output"):
        gbp.attribute(seg, x, gbp.Box(rank=0))


def test_a_detector_in_training_mode_is_a_clear_error(x: torch.Tensor) -> None:
    class Trains(BoxDetector):
        def forward(self, t: torch.Tensor) -> list[dict[str, torch.Tensor]]:
            torch._assert(not self.training, "targets should not be none when in training mode")
            return super().forward(t)

    net = Trains().double().train()
    with pytest.raises(gbp.ModelError, match="training mode.*eval_mode=True") as err:
        gbp.Explainer(net, eval_mode=False).explain(x, gbp.Box(rank=0))
    assert err.value.field == "model" and net.training
    assert gbp.Explainer(net).explain(x, gbp.Box(rank=0)).found is None and net.training


def test_show_titles_output_targets_with_their_raw_score_never_a_probability(det: BoxDetector,
                                                                            x: torch.Tensor) -> None:
    from guided_backprop.plot import _row_label

    e = gbp.Explainer(det).explain(x, [gbp.Box(rank=0), gbp.Box(box=(20, 20, 30, 30))])
    label = _row_label(e, 0, 0, ["background", "cat", "dog"])
    assert label.startswith("detection 0 (") and f"score = {float(e.scores[0, 0]):.3g}" in label
    assert "p = " not in label and _row_label(e, 0, 1, None).endswith("nothing found")


def test_deletion_follows_the_explained_raw_score_not_a_softmax(seg: PixelSegmenter, x: torch.Tensor) -> None:
    from guided_backprop.evaluate import deletion_insertion

    mask = torch.zeros(8, 8, dtype=torch.float64)
    mask[1:5, 2:7] = 1
    target = gbp.Region(1, mask=mask)
    maps = {"guided_backprop": gbp.attribute(seg, x, target)}
    got = deletion_insertion(seg, x, maps, mode="deletion", steps=4, target=target)
    with torch.no_grad():
        intact = (seg(x)["out"][:, 1] * mask).sum((1, 2))
        deleted = (seg(torch.zeros_like(x))["out"][:, 1] * mask).sum((1, 2))
    curve = got.curves["guided_backprop"]
    np.testing.assert_allclose(curve[:, 0], intact.numpy())  # the raw region score, not a probability in [0, 1]
    np.testing.assert_allclose(curve[:, -1], deleted.numpy())
    assert (np.abs(curve) > 1).any()


def test_run_checks_takes_output_for_a_dict_output() -> None:
    """run_checks(output=...) evaluates a classifier returning {"logits": ...} as the same classifier returning
    the tensor: the same numbers, and the same layer names in the randomisation steps."""
    from guided_backprop.evaluate import run_checks

    from .fixtures.cli_models import dict_logits, tiny

    x = torch.rand(2, 3, 16, 16, generator=_gen(0))
    options = {"methods": ("saliency",), "checks": ("randomization", "class", "deletion"), "steps": 3}
    plain = run_checks(tiny().eval(), x, **options)  # type: ignore[arg-type]
    keyed = run_checks(dict_logits().eval(), x, output="logits", **options)  # type: ignore[arg-type]
    assert keyed.to_json() == plain.to_json()
    with pytest.raises(gbp.GuidedBackpropError, match=r"output='logits'"):
        run_checks(dict_logits().eval(), x, **options)  # type: ignore[arg-type]
