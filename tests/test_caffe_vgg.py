"""The seed's VGG19 from a machrisaa-format vgg19.npy reproduces torchvision's VGG19.

The ``.npy`` files here are written by this test's own converter (TF HWIO kernels, BGR first
layer, fc6 rows in NHWC flatten order), independent of the loader under test.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn
from torchvision.models import vgg19
from torchvision.models.vgg import make_layers

from guided_backprop import attribute, find_layer
from guided_backprop.errors import CheckpointError, InputError, ModelError
from guided_backprop.models import load_model
from guided_backprop.models.caffe_vgg import load_caffe_vgg19
from guided_backprop.models.preprocessing import CAFFE_MEAN, Preprocessing

SEED_CONVS = [f"conv{block}_{i}" for block, n in enumerate([2, 2, 4, 4, 4], start=1) for i in range(1, n + 1)]
# What torchvision's VGG19 would see for the same picture: RGB, 0-255, Caffe means, no resize.
RGB_CAFFE = Preprocessing(resize=None, crop=None, mean=CAFFE_MEAN, std=(1, 1, 1), scale=255, bgr=False)


def write_machrisaa_npy(features: nn.Sequential, classifier: list[nn.Linear], path: Path) -> None:
    """Save a torchvision-layout VGG (RGB input, NCHW flatten) in machrisaa's vgg19.npy format."""
    convs = [m for m in features if isinstance(m, nn.Conv2d)]
    assert len(convs) == 16 and len(classifier) == 3
    data: dict[str, list[np.ndarray]] = {}
    for name, conv in zip(SEED_CONVS, convs, strict=True):
        w = conv.weight.detach().numpy()  # (out, in, kh, kw)
        if name == "conv1_1":
            w = w[:, ::-1]  # the npy's first layer takes BGR
        data[name] = [np.ascontiguousarray(w.transpose(2, 3, 1, 0)), conv.bias.detach().numpy().copy()]
    channels = convs[-1].out_channels
    fc6, fc7, fc8 = classifier
    w6 = fc6.weight.detach().numpy().reshape(fc6.out_features, channels, 7, 7)  # rows of NCHW (c, h, w)
    data["fc6"] = [np.ascontiguousarray(w6.transpose(2, 3, 1, 0).reshape(-1, fc6.out_features)),
                   fc6.bias.detach().numpy().copy()]
    for name, fc in (("fc7", fc7), ("fc8", fc8)):
        data[name] = [np.ascontiguousarray(fc.weight.detach().numpy().T), fc.bias.detach().numpy().copy()]
    np.save(path, data, allow_pickle=True)


class TinyTorchvisionVGG(nn.Module):
    """torchvision's VGG forward (features, adaptive 7x7 pool, flatten, classifier), narrow."""

    def __init__(self) -> None:
        super().__init__()
        cfg = [4, 4, "M", 8, 8, "M", 8, 8, 8, 8, "M", 16, 16, 16, 16, "M", 16, 16, 16, 16, "M"]
        self.features = make_layers(cfg)
        self.avgpool = nn.AdaptiveAvgPool2d((7, 7))
        self.fcs = [nn.Linear(16 * 49, 32), nn.Linear(32, 32), nn.Linear(32, 10)]
        self.classifier = nn.Sequential(self.fcs[0], nn.ReLU(), self.fcs[1], nn.ReLU(), self.fcs[2])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> tuple[TinyTorchvisionVGG, Path]:
    torch.manual_seed(0)
    ref = TinyTorchvisionVGG().eval()
    with torch.no_grad():  # non-trivial biases, so a bias in the wrong place shows
        for m in ref.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                m.bias.uniform_(-0.1, 0.1)
    path = tmp_path_factory.mktemp("tiny") / "vgg19_tiny.npy"
    write_machrisaa_npy(ref.features, ref.fcs, path)
    return ref, path


def test_tiny_npy_equals_torchvision_layout_at_224(tiny: tuple[TinyTorchvisionVGG, Path]) -> None:
    ref, path = tiny
    model = load_caffe_vgg19(path).eval()
    x = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(1)) * 50
    with torch.no_grad():
        torch.testing.assert_close(model(x.flip(1)), ref(x), rtol=1e-4, atol=1e-5)


def test_tiny_npy_through_load_model_and_preprocessing(tiny: tuple[TinyTorchvisionVGG, Path]) -> None:
    ref, path = tiny
    loaded = load_model("vgg19-caffe", weights=path)
    assert loaded.name == "vgg19-caffe" and str(path) in loaded.weights
    assert loaded.labels == [f"class {i}" for i in range(10)]
    assert not any(m.training for m in loaded.model.modules())
    prep = loaded.preprocessing
    assert prep.resize == 224 and prep.crop is None and prep.bgr and prep.scale == 255
    picture = Image.fromarray(np.random.default_rng(2).integers(0, 256, (224, 224, 3), dtype=np.uint8))
    with torch.no_grad():
        ours = loaded.model(loaded.prepare(picture))
        theirs = ref(RGB_CAFFE(picture).unsqueeze(0))
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-5)
    assert isinstance(find_layer(loaded.model, loaded.gradcam_layer or ""), nn.ReLU)


def test_any_size_above_the_fc6_window_works(tiny: tuple[TinyTorchvisionVGG, Path]) -> None:
    _, path = tiny
    model = load_caffe_vgg19(path).eval()
    x = torch.randn(1, 3, 224, 301, generator=torch.Generator().manual_seed(3))  # odd width: SAME pooling
    with torch.no_grad():
        fmap = model.features(x)
        assert fmap.shape == (1, 10, 1, 4)  # pool5 7x10 (ceil), 7x7 window
        torch.testing.assert_close(model(x), fmap.mean(dim=(2, 3)))
    maps = attribute(model, x, target=3)
    assert maps.shape == x.shape and torch.isfinite(maps).all() and maps.abs().sum() > 0
    with pytest.raises(InputError, match="at least 193 pixels"):
        model(torch.zeros(1, 3, 150, 300))


def test_malformed_npy_files_are_named(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    np.save(tmp_path / "partial.npy", {"conv1_1": [np.zeros((3, 3, 3, 4), np.float32), np.zeros(4, np.float32)],
                                       "fc1": [np.zeros(1), np.zeros(1)]}, allow_pickle=True)
    with pytest.raises(CheckpointError, match=r"missing conv1_2, .*fc8; it has fc1"):
        load_caffe_vgg19(tmp_path / "partial.npy")
    data = {name: [rng.standard_normal((3, 3, 3 if i == 0 else 4, 4)).astype(np.float32), np.zeros(4, np.float32)]
            for i, name in enumerate(SEED_CONVS)}
    data["conv2_1"][0] = np.zeros((4, 4, 3, 3), np.float32)  # OIHW instead of HWIO
    data.update(fc6=[np.zeros((196, 8), np.float32), np.zeros(8, np.float32)],
                fc7=[np.zeros((8, 8), np.float32), np.zeros(8, np.float32)],
                fc8=[np.zeros((8, 5), np.float32), np.zeros(5, np.float32)])
    np.save(tmp_path / "oihw.npy", data, allow_pickle=True)
    with pytest.raises(CheckpointError, match=r"conv2_1 must be W \(3, 3, 4, out\) in HWIO layout"):
        load_caffe_vgg19(tmp_path / "oihw.npy")


def test_vgg19_caffe_without_weights_says_where_to_get_them() -> None:
    with pytest.raises(ModelError, match=r"vgg19\.npy.*machrisaa/tensorflow-vgg.*weights=PATH"):
        load_model("vgg19-caffe")


@pytest.fixture(scope="module")
def full_vgg19(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """A random torchvision VGG19, written as vgg19.npy and loaded back (once: ~550 MB each)."""
    torch.manual_seed(0)
    ref = vgg19().eval()
    path = tmp_path_factory.mktemp("vgg19") / "vgg19.npy"
    write_machrisaa_npy(ref.features, [ref.classifier[0], ref.classifier[3], ref.classifier[6]], path)
    picture = Image.fromarray(np.random.default_rng(4).integers(0, 256, (224, 224, 3), dtype=np.uint8))
    with torch.no_grad():
        logits = ref(RGB_CAFFE(picture).unsqueeze(0))
    del ref
    loaded = load_model("vgg19-caffe", weights=path)
    path.unlink()
    return {"picture": picture, "ref": logits, "loaded": loaded}


@pytest.mark.slow
def test_seed_npy_of_torchvision_vgg19_gives_the_same_logits(full_vgg19: dict) -> None:
    """The decisive test: at 224x224 the seed's network equals torchvision's VGG19 to float precision."""
    loaded = full_vgg19["loaded"]
    assert loaded.model.fc6.weight.shape == (4096, 512, 7, 7)
    assert loaded.labels[285] == "Egyptian cat"
    ref = full_vgg19["ref"]
    with torch.no_grad():
        ours = loaded.model(loaded.prepare(full_vgg19["picture"]))
    assert ours.shape == (1, 1000)
    torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-5 * ref.abs().max().item())
    assert ours.argmax().item() == ref.argmax().item()
