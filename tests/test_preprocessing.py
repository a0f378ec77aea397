"""Preprocessing: torchvision-equal tensors, the Caffe convention, exact inversion, errors."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms as T

from guided_backprop.errors import ImageError, InputError, UnknownNameError
from guided_backprop.models.preprocessing import CAFFE_MEAN, IMAGENET_MEAN, IMAGENET_STD, Preprocessing


def _picture(height: int, width: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8))


CAFFE = Preprocessing(resize=40, crop=None, mean=CAFFE_MEAN, std=(1, 1, 1), scale=255, bgr=True)


@pytest.mark.parametrize("size", [(50, 70), (70, 50), (45, 45)])
@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic"])
def test_matches_torchvision_resize_crop_normalize(size: tuple[int, int], interpolation: str) -> None:
    img = _picture(*size)
    ours = Preprocessing(resize=40, crop=32, interpolation=interpolation)(img)
    mode = T.InterpolationMode(interpolation)
    ref = T.Compose([T.Resize(40, interpolation=mode), T.CenterCrop(32), T.ToTensor(),
                     T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])(img)
    assert ours.dtype == torch.float32 and ours.shape == (3, 32, 32)
    torch.testing.assert_close(ours, ref, rtol=0, atol=1e-5)


def test_exact_size_resize_matches_torchvision() -> None:
    img = _picture(30, 47)
    ours = Preprocessing(resize=(24, 36), crop=None, interpolation="bicubic")(img)
    ref = T.Compose([T.Resize((24, 36), interpolation=T.InterpolationMode.BICUBIC), T.ToTensor(),
                     T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])(img)
    assert ours.shape == (3, 24, 36)
    torch.testing.assert_close(ours, ref, rtol=0, atol=1e-5)


def test_crop_larger_than_picture_pads_like_torchvision() -> None:
    img = _picture(20, 26)
    ours = Preprocessing(resize=None, crop=32)(img)
    ref = T.Compose([T.CenterCrop(32), T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])(img)
    torch.testing.assert_close(ours, ref, rtol=0, atol=1e-5)


def test_caffe_convention_is_bgr_0_255_minus_means() -> None:
    img = Image.new("RGB", (8, 6), (200, 100, 50))
    x = Preprocessing(resize=None, crop=None, mean=CAFFE_MEAN, std=(1, 1, 1), scale=255, bgr=True)(img)
    assert x.shape == (3, 6, 8)
    torch.testing.assert_close(x[:, 0, 0], torch.tensor([50 - 103.939, 100 - 116.779, 200 - 123.68]))


@pytest.mark.parametrize("prep", [Preprocessing(resize=40, crop=32), CAFFE,
                                  Preprocessing(resize=(30, 20), crop=None, interpolation="bicubic")])
def test_invert_gives_back_what_the_network_saw(prep: Preprocessing) -> None:
    img = _picture(50, 70, seed=3)
    x = prep(img)
    seen = np.asarray(prep.geometric(img))
    back = prep.invert(x)
    assert back.dtype == np.uint8 and back.shape == seen.shape
    np.testing.assert_array_equal(back, seen)
    np.testing.assert_array_equal(prep.invert(x.unsqueeze(0)), seen)


def test_sizes_follow_torchvision_semantics() -> None:
    prep = Preprocessing(resize=224, crop=None)
    # skimage's chelsea is 300x451: torchvision truncates the long side, 451 * 224 / 300 = 336.7 -> 336
    assert prep.resized_size(300, 451) == (224, 336)
    assert prep.resized_size(451, 300) == (336, 224)
    assert prep.output_size(300, 451) == (224, 336)
    assert prep(_picture(30, 45)).shape == (3, 224, 336)
    assert prep.fixed_size is None
    assert Preprocessing().fixed_size == (224, 224)
    assert Preprocessing(resize=(10, 20), crop=None).fixed_size == (10, 20)


def test_arrays_are_accepted_and_grey_becomes_rgb() -> None:
    grey = np.arange(48, dtype=np.uint8).reshape(6, 8)
    x = Preprocessing(resize=None, crop=None, mean=(0, 0, 0), std=(1, 1, 1))(grey)
    assert x.shape == (3, 6, 8)
    torch.testing.assert_close(x[0], x[2])
    torch.testing.assert_close(x[0] * 255, torch.from_numpy(grey).float(), rtol=0, atol=1e-4)


def test_describe_says_what_is_done() -> None:
    text = Preprocessing().describe()
    assert "shorter side resized to 256" in text and "centre-cropped to 224x224" in text
    assert "0.485" in text and "0.229" in text and "BGR" not in text
    caffe = CAFFE.describe()
    assert "BGR" in caffe and "123.68" in caffe and "[0, 255]" in caffe and "not cropped" in caffe
    assert Preprocessing(resize=(224, 224), crop=None).describe().count("224x224") == 1
    assert Preprocessing().to_dict()["description"] == text


def test_batch_of_uneven_sizes_without_crop_is_refused() -> None:
    prep = Preprocessing(resize=None, crop=None)
    assert prep.batch([_picture(10, 12), _picture(10, 12, 1)]).shape == (2, 3, 10, 12)
    with pytest.raises(InputError, match="different sizes"):
        prep.batch([_picture(10, 12), _picture(12, 10)])


def test_bad_options_are_named() -> None:
    with pytest.raises(UnknownNameError, match="bicubic"):
        Preprocessing(interpolation="bicubc")
    with pytest.raises(InputError, match="std"):
        Preprocessing(std=(1, 0, 1))
    with pytest.raises(InputError, match="resize"):
        Preprocessing(resize=0)
    with pytest.raises(InputError, match="mean"):
        Preprocessing(mean=(1, 2))
    with pytest.raises(ImageError, match="uint8"):
        Preprocessing()(np.zeros((4, 4, 3), dtype=np.float32))
    with pytest.raises(InputError, match=r"\(3, H, W\)"):
        Preprocessing().invert(torch.zeros(2, 3, 4, 4))
    with pytest.raises(dataclasses.FrozenInstanceError):
        Preprocessing().crop = 3  # type: ignore[misc]
