#!/usr/bin/env python
"""One region map and one detection map, side by side with pytorch-grad-cam's targets and Captum with a wrapper.

On the same model, input and score: torchvision's FCN-ResNet50 (a region: ``SemanticSegmentationTarget`` and
``gbp.Region``) and Faster R-CNN ResNet50-FPN (a detection: pytorch-grad-cam's ``FasterRCNNBoxScoreTarget``, given
to us as a ``gbp.Score``, so the score is the very same function). Grad-CAM is compared with pytorch-grad-cam's
``GradCAM`` at the same layer (both min-max scaled: theirs always is), guided backprop with Captum's
``GuidedBackprop`` on a wrapper module whose forward returns the score. Random weights (speed does not depend on
them), nothing downloaded. Each contender runs after one warm-up, round-robin, ``--repeats`` times; the median
time per map is printed with the largest difference between the maps.

    python benchmarks/bench_targets.py              # ~3-6 min on 2 loaded cores
    python benchmarks/bench_targets.py --quick      # a smoke test (smaller inputs, 1 repeat)
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torchvision
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))  # run from a source tree too
import guided_backprop as gbp  # noqa: E402


class _ScoreModule(nn.Module):
    """Captum takes a module: this one returns the explained score ``(N,)`` of the wrapped model."""

    def __init__(self, model: nn.Module, score: Callable[[Any], torch.Tensor]) -> None:
        super().__init__()
        self.model, self.score = model, score

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.score(self.model(x))


class _Out(nn.Module):
    """pytorch-grad-cam's segmentation tutorial wrapper: the ``"out"`` tensor of torchvision's segmenters."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)["out"]


def _scaled(cam: np.ndarray) -> np.ndarray:
    cam = cam - cam.min()
    return cam / (cam.max() + 1e-7)


def _time(fns: dict[str, Callable[[], Any]], repeats: int) -> tuple[dict[str, float], dict[str, Any]]:
    """Median seconds per call of each function (one warm-up each, then round-robin), and each one's last result."""
    results = {name: fn() for name, fn in fns.items()}
    times: dict[str, list[float]] = {name: [] for name in fns}
    names = list(fns)
    for r in range(repeats):
        for name in names[r % len(names):] + names[:r % len(names)]:
            t0 = time.perf_counter()
            results[name] = fns[name]()
            times[name].append(time.perf_counter() - t0)
    return {n: statistics.median(v) for n, v in times.items()}, results


def region_case(size: int, repeats: int) -> list[str]:
    from captum.attr import GuidedBackprop
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import SemanticSegmentationTarget

    torch.manual_seed(0)
    model = torchvision.models.segmentation.fcn_resnet50(weights=None, weights_backbone=None).eval()
    x = torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        out = model(x)["out"]
    cls = int(out.argmax(1).flatten().mode().values)
    mask = (out.argmax(1)[0] == cls).float()
    layer = "backbone.layer4"
    target = SemanticSegmentationTarget(cls, mask.numpy())
    explainer = gbp.Explainer(model)

    def ours(method: str) -> torch.Tensor:
        return explainer.explain(x, gbp.Region(cls, mask), methods=[method], gradcam_layer=layer).maps[method][:, 0]

    wrapped = _Out(model)
    captum = GuidedBackprop(_ScoreModule(model, lambda o: (o["out"][:, cls] * mask).sum((1, 2))))
    with GradCAM(model=wrapped, target_layers=[model.backbone.layer4]) as cam:
        secs, maps = _time({
            "ours gbp": lambda: ours("guided_backprop"),
            "captum gbp": lambda: captum.attribute(x),
            "ours gradcam": lambda: ours("gradcam"),
            "grad-cam gradcam": lambda: cam(input_tensor=x, targets=[target]),
        }, repeats)
    return _report(f"FCN-ResNet50, region of class {cls} ({int(mask.sum())} px), input {size}x{size}", secs, maps)


def detection_case(size: int, repeats: int) -> list[str]:
    from captum.attr import GuidedBackprop
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import FasterRCNNBoxScoreTarget

    torch.manual_seed(0)
    model = torchvision.models.detection.fasterrcnn_resnet50_fpn(
        weights=None, weights_backbone=None, box_score_thresh=0.0, min_size=size, max_size=size).eval()
    x = torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        det = model(x)[0]
    box, label = det["boxes"][0].numpy(), int(det["labels"][0])
    target = FasterRCNNBoxScoreTarget(labels=[label], bounding_boxes=[box])
    score = gbp.Score(lambda o: torch.stack([target(d).reshape(()) for d in o]), name="FasterRCNNBoxScoreTarget")
    layer = "backbone.fpn.layer_blocks.0"
    explainer = gbp.Explainer(model)

    def ours(method: str) -> torch.Tensor:
        return explainer.explain(x, score, methods=[method], gradcam_layer=layer).maps[method][:, 0]

    captum = GuidedBackprop(_ScoreModule(model, lambda o: torch.stack([target(d).reshape(()) for d in o])))
    with GradCAM(model=model, target_layers=[model.backbone.fpn.layer_blocks[0]]) as cam:
        secs, maps = _time({
            "ours gbp": lambda: ours("guided_backprop"),
            "captum gbp": lambda: captum.attribute(x),
            "ours gradcam": lambda: ours("gradcam"),
            "grad-cam gradcam": lambda: cam(input_tensor=x, targets=[target]),
        }, repeats)
    return _report(f"Faster R-CNN ResNet50-FPN, the top detection (label {label}), input {size}x{size}", secs, maps)


def _report(title: str, secs: dict[str, float], maps: dict[str, Any]) -> list[str]:
    gbp_diff = float((maps["ours gbp"] - maps["captum gbp"]).abs().max() / maps["ours gbp"].abs().max())
    ours_cam = _scaled(maps["ours gradcam"][0, 0].detach().numpy())
    cam_diff = float(np.abs(ours_cam - maps["grad-cam gradcam"][0]).max())
    return [
        f"### {title}",
        "",
        "| map | ours ms | peer ms | ours / peer | max difference of the maps |",
        "|---|---|---|---|---|",
        f"| guided backprop vs Captum | {secs['ours gbp'] * 1e3:.0f} | {secs['captum gbp'] * 1e3:.0f} | "
        f"{secs['ours gbp'] / secs['captum gbp']:.2f} | {gbp_diff:.2g} of the map's largest value |",
        f"| Grad-CAM vs pytorch-grad-cam | {secs['ours gradcam'] * 1e3:.0f} | {secs['grad-cam gradcam'] * 1e3:.0f} | "
        f"{secs['ours gradcam'] / secs['grad-cam gradcam']:.2f} | {cam_diff:.2g} (both scaled to [0, 1]) |",
        "",
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller inputs, one repeat (a smoke test)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--size", type=int, default=224, help="input height and width")
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore")
    size, repeats = (96, 1) if args.quick else (args.size, args.repeats)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    lines = [f"torch {torch.__version__}, {torch.get_num_threads()} threads, load average {load:.1f} at the start", ""]
    lines += region_case(size, repeats) + detection_case(size, repeats)
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
