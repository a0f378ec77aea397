"""The seed's network: VGG19 from machrisaa's ``vgg19.npy``, fully convolutional.

The seed (a TensorFlow 1 tool) read ``vgg19.npy`` from https://github.com/machrisaa/tensorflow-vgg:
a pickled dict from ``conv1_1`` ... ``conv5_4``, ``fc6``, ``fc7``, ``fc8`` to ``[W, b]``, with
convolution kernels in TensorFlow's ``(kh, kw, in, out)`` (HWIO) layout and the fully connected
weights as ``(in, out)`` matrices, ``fc6``'s rows in NHWC flatten order of the ``7 x 7 x 512`` pool5
map. Inputs are Caffe-style: BGR, pixel range 0-255, means B 103.939, G 116.779, R 123.68
subtracted. Its ``VGG19_FCN`` ran ``fc6`` as a 7x7 valid convolution and ``fc7`` / ``fc8`` as 1x1
ones, and took the logits as the spatial mean of ``fc8``'s map, so any picture whose shorter side
is at least 193 pixels works (the seed resized the shorter side to 224).

At 224x224 this network computes exactly what torchvision's ``vgg19`` computes with the same
weights (the 7x7 pool5 map makes fc6's map 1x1). Max pooling uses ``ceil_mode=True``, which is
TensorFlow's ``SAME`` 2x2/2 pooling for odd sizes too.
"""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..errors import CheckpointError, InputError
from .checkpoints import read_npy_dict

__all__ = ["CONV_LAYERS", "LAYERS", "CaffeVGG19", "caffe_vgg19_from_dict", "load_caffe_vgg19"]

#: The seed's convolution names, block by block (a 2x2 max pool follows each block).
CONV_BLOCKS: tuple[tuple[str, ...], ...] = (
    ("conv1_1", "conv1_2"),
    ("conv2_1", "conv2_2"),
    ("conv3_1", "conv3_2", "conv3_3", "conv3_4"),
    ("conv4_1", "conv4_2", "conv4_3", "conv4_4"),
    ("conv5_1", "conv5_2", "conv5_3", "conv5_4"),
)
CONV_LAYERS: tuple[str, ...] = tuple(name for block in CONV_BLOCKS for name in block)
#: Every weight entry of ``vgg19.npy``, in network order.
LAYERS: tuple[str, ...] = CONV_LAYERS + ("fc6", "fc7", "fc8")


class CaffeVGG19(nn.Module):
    """VGG19 with the seed's layer names, fc6-fc8 as convolutions and spatially averaged logits.

    Children in order: ``conv1_1, relu1_1, ..., pool1, ..., conv5_4, relu5_4, pool5, fc6, relu6,
    fc7, relu7, fc8``. Takes ``(N, 3, H, W)`` BGR inputs (0-255, means subtracted) with ``H, W >=
    193``; returns ``(N, classes)``. ``widths`` (conv channels) and the class count follow the
    weights file.
    """

    def __init__(self, widths: dict[str, int] | None = None, fc_width: int = 4096, num_classes: int = 1000,
                 fc6_kernel: int = 7) -> None:
        super().__init__()
        widths = widths or {name: 64 * 2 ** min(i, 3) for i, block in enumerate(CONV_BLOCKS) for name in block}
        channels = 3
        for b, block in enumerate(CONV_BLOCKS, start=1):
            for name in block:
                self.add_module(name, nn.Conv2d(channels, widths[name], kernel_size=3, padding=1))
                self.add_module(name.replace("conv", "relu"), nn.ReLU())
                channels = widths[name]
            self.add_module(f"pool{b}", nn.MaxPool2d(kernel_size=2, stride=2, ceil_mode=True))
        self.fc6_kernel = fc6_kernel
        self.fc6 = nn.Conv2d(channels, fc_width, kernel_size=fc6_kernel)
        self.relu6 = nn.ReLU()
        self.fc7 = nn.Conv2d(fc_width, fc_width, kernel_size=1)
        self.relu7 = nn.ReLU()
        self.fc8 = nn.Conv2d(fc_width, num_classes, kernel_size=1)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """fc8's class map ``(N, classes, h, w)`` (``h = ceil(H / 32) - 6``)."""
        for module in self.children():
            if module is self.fc6 and min(x.shape[-2:]) < self.fc6_kernel:
                raise InputError(
                    f"vgg19-caffe needs inputs of at least {32 * (self.fc6_kernel - 1) + 1} pixels per side "
                    f"(pool5 must be {self.fc6_kernel}x{self.fc6_kernel} or larger); pool5 is "
                    f"{tuple(x.shape[-2:])} here; resize the shorter side to 224 as the seed did"
                )
            x = module(x)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x).mean(dim=(2, 3))


def _pair(weights: dict[str, Any], name: str, file: str) -> tuple[np.ndarray, np.ndarray]:
    entry = weights.get(name)
    if not isinstance(entry, (list, tuple)) or len(entry) < 2:
        raise CheckpointError(f"'{file}': entry {name!r} must be [W, b], got {type(entry).__name__}")
    w, b = np.asarray(entry[0], dtype=np.float32), np.asarray(entry[1], dtype=np.float32)
    if b.ndim != 1:
        raise CheckpointError(f"'{file}': {name} bias must be 1-D, got shape {b.shape}")
    return w, b


def caffe_vgg19_from_dict(weights: dict[str, Any], *, source: str = "vgg19.npy") -> CaffeVGG19:
    """Build :class:`CaffeVGG19` from a machrisaa-format dict (shapes are checked layer by layer)."""
    missing = [name for name in LAYERS if name not in weights]
    if missing:
        extra = sorted(str(k) for k in weights if k not in LAYERS)
        raise CheckpointError(
            f"'{source}' is not a VGG19 weights file in machrisaa's format: missing {', '.join(missing)}"
            + (f"; it has {', '.join(extra[:8])}" if extra else "")
        )
    state: dict[str, torch.Tensor] = OrderedDict()
    widths: dict[str, int] = {}
    channels = 3
    for name in CONV_LAYERS:
        w, b = _pair(weights, name, source)
        if w.ndim != 4 or w.shape[:3] != (3, 3, channels) or b.shape != (w.shape[3],):
            raise CheckpointError(
                f"'{source}': {name} must be W (3, 3, {channels}, out) in HWIO layout and b (out,), "
                f"got W {w.shape} and b {b.shape}"
            )
        state[f"{name}.weight"] = torch.from_numpy(np.ascontiguousarray(w.transpose(3, 2, 0, 1)))
        state[f"{name}.bias"] = torch.from_numpy(b.copy())
        widths[name] = channels = int(w.shape[3])

    w6, b6 = _pair(weights, "fc6", source)
    kernel = int(round((w6.shape[0] / channels) ** 0.5)) if w6.ndim == 2 else 0
    if w6.ndim != 2 or kernel * kernel * channels != w6.shape[0] or b6.shape != (w6.shape[1],):
        raise CheckpointError(
            f"'{source}': fc6 must be W (k*k*{channels}, out) (k=7 for VGG19: 25088 rows) and b (out,), "
            f"got W {w6.shape} and b {b6.shape}"
        )
    fc_width = int(w6.shape[1])
    # rows are NHWC-flattened (h, w, c); a conv kernel is (out, c, h, w)
    state["fc6.weight"] = torch.from_numpy(
        np.ascontiguousarray(w6.reshape(kernel, kernel, channels, fc_width).transpose(3, 2, 0, 1)))
    state["fc6.bias"] = torch.from_numpy(b6.copy())
    w7, b7 = _pair(weights, "fc7", source)
    if w7.shape != (fc_width, fc_width) or b7.shape != (fc_width,):
        raise CheckpointError(f"'{source}': fc7 must be W ({fc_width}, {fc_width}) and b ({fc_width},), "
                              f"got W {w7.shape} and b {b7.shape}")
    state["fc7.weight"] = torch.from_numpy(np.ascontiguousarray(w7.T)).reshape(fc_width, fc_width, 1, 1)
    state["fc7.bias"] = torch.from_numpy(b7.copy())
    w8, b8 = _pair(weights, "fc8", source)
    if w8.ndim != 2 or w8.shape[0] != fc_width or b8.shape != (w8.shape[1],):
        raise CheckpointError(f"'{source}': fc8 must be W ({fc_width}, classes) and b (classes,), "
                              f"got W {w8.shape} and b {b8.shape}")
    num_classes = int(w8.shape[1])
    state["fc8.weight"] = torch.from_numpy(np.ascontiguousarray(w8.T)).reshape(num_classes, fc_width, 1, 1)
    state["fc8.bias"] = torch.from_numpy(b8.copy())

    with torch.device("meta"):
        model = CaffeVGG19(widths, fc_width=fc_width, num_classes=num_classes, fc6_kernel=kernel)
    model.load_state_dict(state, strict=True, assign=True)
    return model


def load_caffe_vgg19(path: str | Path, *, trust: bool = False) -> CaffeVGG19:
    """:class:`CaffeVGG19` with the weights of a ``vgg19.npy`` file (read without running code)."""
    return caffe_vgg19_from_dict(read_npy_dict(path, trust=trust), source=str(path))
