"""Region and box maps of torchvision's segmenters and detectors (random seeded weights, no downloads) equal an
independent float64 implementation of the rules (tests/reference.py), every ReLU the forward applies included:
backbone, FPN, heads. The architectures are torchvision's own classes; the backbones are small ones (ResNet-18,
MobileNetV3, a two-stage conv net for SSD) so that the suite stays quick on two cores."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import nn
from torchvision.models import detection as det
from torchvision.models import resnet18
from torchvision.models import segmentation as seg
from torchvision.models._utils import IntermediateLayerGetter
from torchvision.models.detection.anchor_utils import DefaultBoxGenerator
from torchvision.models.detection.backbone_utils import _resnet_fpn_extractor
from torchvision.ops.feature_pyramid_network import LastLevelP6P7

import guided_backprop as gbp

from .reference import reference_score_map

RULES = ["deconvnet", "guided_backprop"]
SMALL = {"min_size": 64, "max_size": 64}


def _fcn() -> nn.Module:
    return seg.FCN(IntermediateLayerGetter(resnet18(), {"layer4": "out"}), seg.fcn.FCNHead(512, 3))


def _deeplabv3() -> nn.Module:
    return seg.DeepLabV3(IntermediateLayerGetter(resnet18(), {"layer4": "out"}), seg.deeplabv3.DeepLabHead(512, 3))


def _lraspp() -> nn.Module:
    return seg.lraspp_mobilenet_v3_large(weights=None, weights_backbone=None, num_classes=3)


def _fpn(extra: bool) -> nn.Module:
    if extra:  # RetinaNet and FCOS: P3-P7
        return _resnet_fpn_extractor(resnet18(), 5, returned_layers=[2, 3, 4], extra_blocks=LastLevelP6P7(256, 256))
    return _resnet_fpn_extractor(resnet18(), 5)


def _faster_rcnn() -> nn.Module:
    return det.FasterRCNN(_fpn(False), num_classes=3, box_score_thresh=0.0, rpn_pre_nms_top_n_test=30,
                          rpn_post_nms_top_n_test=10, box_detections_per_img=3, **SMALL)


def _retinanet() -> nn.Module:
    return det.RetinaNet(_fpn(True), num_classes=3, score_thresh=0.0, topk_candidates=20, detections_per_img=3,
                         **SMALL)


def _fcos() -> nn.Module:
    return det.FCOS(_fpn(True), num_classes=3, score_thresh=0.0, topk_candidates=20, detections_per_img=3, **SMALL)


class _TwoStage(nn.Module):
    """A two-level feature extractor for SSD (conv/ReLU stacks; SSD wants an OrderedDict of maps)."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.ReLU(inplace=True),
                               nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.ReLU())
        self.b = nn.Sequential(nn.Conv2d(16, 16, 3, stride=2, padding=1), nn.ReLU(inplace=True))

    def forward(self, x: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        a = self.a(x)
        return OrderedDict([("0", a), ("1", self.b(a))])


def _ssd() -> nn.Module:
    return det.ssd.SSD(_TwoStage(), DefaultBoxGenerator([[2], [2]]), (64, 64), num_classes=3, score_thresh=0.0,
                   topk_candidates=20, detections_per_img=3)


def _region_score(cls: int) -> Callable[[Any], torch.Tensor]:
    return lambda o: (o["out"][:, cls] * (o["out"].argmax(1) == cls)).sum((1, 2))


def _box_score(o: list[dict[str, torch.Tensor]]) -> torch.Tensor:
    return torch.stack([d["scores"].max() for d in o])


SEGMENTERS = {"FCN": _fcn, "DeepLabV3": _deeplabv3, "LRASPP": _lraspp}
DETECTORS = {"Faster R-CNN": _faster_rcnn, "RetinaNet": _retinanet, "FCOS": _fcos, "SSD": _ssd}


def _built(build: Callable[[], nn.Module]) -> nn.Module:
    torch.manual_seed(0)
    return build().double().eval()


@pytest.mark.slow
@pytest.mark.parametrize("name", list(SEGMENTERS))
def test_segmenters_region_maps_equal_the_float64_reference(name: str) -> None:
    model = _built(SEGMENTERS[name])
    x = torch.rand(1, 3, 64, 64, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        cls = int(model(x)["out"].argmax(1).flatten().mode().values)  # the class with most pixels
    e = gbp.Explainer(model).explain(x, gbp.Region(cls), methods=RULES)
    assert e.relu_calls > 0 and e.details[0][0]["pixels"] > 0
    for rule in RULES:
        expected = reference_score_map(model, x, _region_score(cls), rule)
        torch.testing.assert_close(e.maps[rule][:, 0], expected, rtol=1e-9, atol=1e-12)
        assert e.maps[rule].abs().sum() > 0


@pytest.mark.slow
@pytest.mark.parametrize("name", list(DETECTORS))
def test_detectors_box_maps_equal_the_float64_reference(name: str) -> None:
    model = _built(DETECTORS[name])
    x = torch.rand(1, 3, 64, 64, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    e = gbp.Explainer(model).explain(x, gbp.Box(rank=0), methods=[*RULES, "gradcam"])
    assert e.found is None and e.relu_calls > 0 and e.details[0][0]["box"] is not None
    for rule in RULES:
        expected = reference_score_map(model, x, _box_score, rule)
        torch.testing.assert_close(e.maps[rule][:, 0], expected, rtol=1e-9, atol=1e-12)
        assert e.maps[rule].abs().sum() > 0
    # Grad-CAM's default layer is one with the input's batch dimension (never the RoI pooling's proposals)
    assert e.maps["gradcam"].shape == (1, 1, 1, 64, 64)
    assert "roi" not in str(e.gradcam_layer)
