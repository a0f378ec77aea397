"""The tiny networks the tests share (each seeded by the caller or by its builder).

Answers on these are known by hand or by an independent reference (tests/reference.py); keeping them
in one place means a test that needs "a small ReLU CNN" takes one of these instead of writing another.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["SmallCNN", "TinyVGG", "UnitNet", "conv_gap"]


def conv_gap(in_channels: int = 3, width: int = 4, classes: int = 10, *, batchnorm: bool = False,
             seed: int | None = 0) -> nn.Sequential:
    """conv 3x3 -> [BatchNorm] -> ReLU -> global average pool -> linear: the smallest classifier that takes
    any input size. ``seed``: ``torch.manual_seed`` before building (``None``: the current random state)."""
    if seed is not None:
        torch.manual_seed(seed)
    layers: list[nn.Module] = [nn.Conv2d(in_channels, width, 3)]
    if batchnorm:
        layers.append(nn.BatchNorm2d(width))
    layers += [nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, classes)]
    return nn.Sequential(*layers)


class SmallCNN(nn.Module):
    def __init__(self, classes: int = 10) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(inplace=True), nn.MaxPool2d(2),
            nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(), nn.Dropout(0.5),
        )
        self.head = nn.Linear(16, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(F.relu(self.features(x)).mean(dim=(2, 3)))


class TinyVGG(nn.Module):
    """Conv/ReLU(in-place)/MaxPool stacks, a reused ReLU module and a functional one, a linear head."""

    def __init__(self, classes: int = 7) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2),
            nn.Conv2d(8, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(inplace=True), nn.MaxPool2d(2),
            nn.Conv2d(16, 16, 3, padding=1),
        )
        self.relu = nn.ReLU()
        self.head = nn.Linear(16 * 4, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.relu(self.features(x))
        h = F.adaptive_avg_pool2d(self.relu(h) + F.relu(h), 2)
        return self.head(torch.flatten(h, 1))


class UnitNet(nn.Module):
    """Named conv/ReLU layers (conv1..relu3) with a pool between, global average pooling, 3 classes."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(OrderedDict([
            ("conv1", nn.Conv2d(3, 4, 3, padding=1)), ("relu1", nn.ReLU()), ("pool", nn.MaxPool2d(2)),
            ("conv2", nn.Conv2d(4, 6, 3, padding=1)), ("relu2", nn.ReLU(inplace=True)),
            ("conv3", nn.Conv2d(6, 5, 3)), ("relu3", nn.ReLU()),
        ]))
        self.head = nn.Linear(5, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).mean(dim=(2, 3)))
