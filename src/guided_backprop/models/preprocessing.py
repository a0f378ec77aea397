"""Preprocessing that travels with a model's weights: image -> input tensor, and back.

:class:`Preprocessing` reproduces torchvision's ``Resize`` / ``CenterCrop`` / ``ToTensor`` /
``Normalize`` chain on PIL images (so torchvision presets give the same tensors), plus the
Caffe convention of the seed's VGG19 (BGR channel order, pixel range 0-255, mean subtraction).
:meth:`Preprocessing.invert` gives back the picture the network saw, for overlays and panels.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final, Literal, Union

import numpy as np
import torch
from PIL import Image

from ..errors import ImageError, InputError, UnknownNameError

__all__ = [
    "CAFFE_MEAN",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "INTERPOLATIONS",
    "KEEP",
    "Preprocessing",
]

#: torchvision's ImageNet statistics (RGB, pixel range 0-1).
IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)
#: The Caffe VGG means in RGB order, pixel range 0-255 (quoted as B 103.939, G 116.779, R 123.68).
CAFFE_MEAN: tuple[float, float, float] = (123.68, 116.779, 103.939)

_RESAMPLE = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
    "box": Image.Resampling.BOX,
    "hamming": Image.Resampling.HAMMING,
}
#: Interpolation names :class:`Preprocessing` accepts (PIL resampling filters).
INTERPOLATIONS: tuple[str, ...] = tuple(_RESAMPLE)


class _Keep(enum.Enum):
    KEEP = "model"

    def __repr__(self) -> str:
        return "KEEP"


#: For :meth:`Preprocessing.adjust`: keep the model's own resize or crop.
KEEP: Final = _Keep.KEEP
Size = Union[int, tuple[int, int], None]


def _size_pair(value: int | Sequence[int], what: str) -> tuple[int, int]:
    if isinstance(value, bool):
        raise InputError(f"{what} must be a positive int or (height, width), got {value!r}")
    if isinstance(value, (int, np.integer)):
        pair = (int(value), int(value))
    else:
        try:
            pair = tuple(int(v) for v in value)  # type: ignore[assignment]
        except (TypeError, ValueError) as err:
            raise InputError(f"{what} must be a positive int or (height, width), got {value!r}") from err
        if len(pair) != 2:
            raise InputError(f"{what} must be a positive int or (height, width), got {value!r}")
    if min(pair) <= 0:
        raise InputError(f"{what} must be positive, got {value!r}")
    return pair


def _fmt(values: Sequence[float]) -> str:
    return "(" + ", ".join(f"{v:g}" for v in values) + ")"


@dataclass(frozen=True)
class Preprocessing:
    """How an RGB picture becomes the network's input tensor.

    Steps, in order (torchvision's semantics for PIL images):

    1. ``resize``: an int resizes the shorter side to that many pixels, aspect ratio kept
       (the longer side is truncated like torchvision's ``Resize(int)``); a ``(height, width)``
       pair resizes to exactly that size; ``None`` keeps the size.
    2. ``crop``: centre crop to ``crop x crop`` (an int) or ``(height, width)``, zero-padded if the
       picture is smaller; ``None`` keeps the whole picture (inputs of varying size).
    3. ``channels=1`` converts the picture to grayscale (Pillow's ``L``: ITU-R 601 luma), for
       networks that take one channel; ``mean`` and ``std`` then hold one number each.
    4. Pixels go to ``[0, scale]`` (divided by 255, times ``scale``), then per channel
       ``(value - mean) / std``. ``mean`` and ``std`` are always given in **RGB order** and in the
       ``scale`` units, whatever order the network takes.
    5. ``bgr=True`` reverses the channels (Caffe models).

    Calling the object maps a PIL image (or an ``(H, W, 3)`` uint8 array) to a ``(channels, H, W)``
    float32 tensor; :meth:`invert` maps such a tensor back to the ``(H, W, 3)`` uint8 RGB picture
    the network saw (grey for one channel); :meth:`describe` says all this in one sentence for reports;
    :meth:`adjust` gives a copy with a command line's changes (input size, mean, std, channels).
    """

    resize: int | tuple[int, int] | None = 256
    crop: int | tuple[int, int] | None = 224
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    scale: float = 1.0
    bgr: bool = False
    interpolation: str = "bilinear"
    channels: Literal[1, 3] = 3

    def __post_init__(self) -> None:
        for what in ("resize", "crop"):
            value = getattr(self, what)
            if value is not None:  # an int stays an int (shorter side / square), a pair becomes a tuple
                pair = _size_pair(value, what)
                object.__setattr__(self, what, int(value) if isinstance(value, (int, np.integer)) else pair)
        if self.channels not in (1, 3) or isinstance(self.channels, bool):
            raise InputError(f"channels must be 1 (grayscale) or 3 (RGB), got {self.channels!r}", field="channels")
        if self.channels == 1 and self.bgr:
            raise InputError("bgr=True reorders three channels; a grayscale (channels=1) input has one",
                             field="channels")
        want = "three numbers (R, G, B)" if self.channels == 3 else "one number (grayscale input)"
        for what in ("mean", "std"):
            values = getattr(self, what)
            try:
                values = tuple(float(v) for v in values)
            except (TypeError, ValueError) as err:
                raise InputError(f"{what} must be {want}, got {values!r}", field=what) from err
            if len(values) != self.channels:
                raise InputError(f"{what} must be {want}, got {values!r}", field=what)
            object.__setattr__(self, what, values)
        if any(s == 0 for s in self.std):
            raise InputError(f"std must be non-zero, got {self.std!r}", field="std")
        if not float(self.scale) > 0:
            raise InputError(f"scale must be positive (1 for 0-1 pixels, 255 for Caffe), got {self.scale!r}")
        object.__setattr__(self, "scale", float(self.scale))
        key = str(self.interpolation).lower()
        if key not in _RESAMPLE:
            raise UnknownNameError("interpolation", str(self.interpolation), INTERPOLATIONS)
        object.__setattr__(self, "interpolation", key)

    # -- changes ----------------------------------------------------------------------------
    def adjust(
        self,
        *,
        input_size: int | None = None,
        resize: Size | _Keep = KEEP,
        crop: Size | _Keep = KEEP,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        channels: Literal[1, 3] | None = None,
    ) -> Preprocessing:
        """A copy with a user's changes on top of the model's own preprocessing.

        ``input_size`` is the size the network sees, in this preprocessing's own convention: with a
        crop, the crop becomes ``input_size`` and the resize is scaled like the model's (256/224);
        with a direct ``(h, w)`` resize, ``(input_size, input_size)``; else the shorter side.
        ``resize``/``crop`` (:data:`KEEP`: unchanged; ``None``: no resize or crop) come after it.
        ``mean``/``std`` take one number per channel, or one number for all. ``channels=1`` without
        a ``mean``/``std`` averages the model's three (a grayscale picture has R = G = B).
        """
        changes: dict[str, Any] = {}
        if input_size is not None:
            n = int(input_size)
            if n < 1 or isinstance(input_size, bool):
                raise InputError(f"input size must be a positive number of pixels, got {input_size!r}",
                                 field="input_size")
            if self.crop is not None:  # resize then crop: keep the model's ratio (e.g. 256/224)
                old_crop = self.crop if isinstance(self.crop, int) else min(self.crop)
                old_resize = self.resize if isinstance(self.resize, int) else None
                changes["crop"] = n
                changes["resize"] = max(n, round(n * old_resize / old_crop)) if old_resize else None
            elif isinstance(self.resize, tuple):  # a direct resize to a fixed size
                changes["resize"] = (n, n)
            else:  # shorter side to n, whole picture (variable sizes)
                changes["resize"] = n
        if resize is not KEEP:
            changes["resize"] = resize
        if crop is not KEEP:
            changes["crop"] = crop
        n_channels = self.channels if channels is None else channels
        if channels is not None and channels != self.channels:
            changes["channels"] = channels
            if channels == 1:
                changes["bgr"] = False
        for what, given in (("mean", mean), ("std", std)):
            old = getattr(self, what)
            if given is not None:
                values = tuple(float(v) for v in given)
                changes[what] = values * n_channels if len(values) == 1 else values
            elif len(old) != n_channels:
                changes[what] = (sum(old) / len(old),) * n_channels
        return dataclasses.replace(self, **changes) if changes else self

    # -- geometry ---------------------------------------------------------------------------
    def resized_size(self, height: int, width: int) -> tuple[int, int]:
        """``(height, width)`` after the resize step, for a picture of ``height x width``."""
        if self.resize is None:
            return height, width
        if isinstance(self.resize, tuple):
            return self.resize
        short, long = (height, width) if height <= width else (width, height)
        new_short, new_long = self.resize, int(self.resize * long / short)
        return (new_short, new_long) if height <= width else (new_long, new_short)

    def output_size(self, height: int, width: int) -> tuple[int, int]:
        """``(height, width)`` of the tensor made from a picture of ``height x width``."""
        if self.crop is not None:
            return _size_pair(self.crop, "crop")
        return self.resized_size(height, width)

    @property
    def fixed_size(self) -> tuple[int, int] | None:
        """The input size if every picture gets the same one, else ``None``."""
        if self.crop is not None:
            return _size_pair(self.crop, "crop")
        if isinstance(self.resize, tuple):
            return self.resize
        return None

    @property
    def nominal_size(self) -> tuple[int, int] | None:
        """:attr:`fixed_size`, or ``(n, n)`` for a shorter-side resize to ``n`` without crop (what a
        square picture gets): the size to try a model or trace its layers with; ``None`` if unknown."""
        if self.fixed_size is not None:
            return self.fixed_size
        return (self.resize, self.resize) if isinstance(self.resize, int) else None

    # -- forward / inverse ------------------------------------------------------------------
    def geometric(self, image: Image.Image | np.ndarray) -> Image.Image:
        """The RGB picture after resize and crop (before scaling and normalisation)."""
        img = _to_pil(image)
        height, width = img.height, img.width
        new_h, new_w = self.resized_size(height, width)
        if (new_h, new_w) != (height, width):
            img = img.resize((new_w, new_h), resample=_RESAMPLE[self.interpolation])
        if self.crop is not None:
            ch, cw = _size_pair(self.crop, "crop")
            if ch > img.height or cw > img.width:  # torchvision pads with zeros, centred
                canvas = Image.new("RGB", (max(cw, img.width), max(ch, img.height)))
                canvas.paste(img, ((canvas.width - img.width) // 2, (canvas.height - img.height) // 2))
                img = canvas
            top = int(round((img.height - ch) / 2.0))
            left = int(round((img.width - cw) / 2.0))
            img = img.crop((left, top, left + cw, top + ch))
        return img

    def __call__(self, image: Image.Image | np.ndarray) -> torch.Tensor:
        """RGB PIL image (or ``(H, W, 3)`` / ``(H, W)`` uint8 array) -> ``(channels, H, W)`` float32 tensor."""
        picture = self.geometric(image)
        if self.channels == 1:
            picture = picture.convert("L")
        pixels: np.ndarray = np.asarray(picture, dtype=np.float32).reshape(picture.height, picture.width, -1)  # 0..255
        pixels = pixels * np.float32(self.scale / 255.0)
        pixels = (pixels - np.asarray(self.mean, dtype=np.float32)) / np.asarray(self.std, dtype=np.float32)
        if self.bgr:
            pixels = pixels[:, :, ::-1]
        return torch.from_numpy(np.ascontiguousarray(pixels.transpose(2, 0, 1)))

    def invert(self, x: torch.Tensor | np.ndarray) -> np.ndarray:
        """``(C, H, W)`` (or ``(1, C, H, W)``) network input -> ``(H, W, 3)`` uint8 RGB picture it shows."""
        arr = x.detach().to("cpu", torch.float64).numpy() if isinstance(x, torch.Tensor) else np.asarray(x, float)
        if arr.ndim == 4 and arr.shape[0] == 1:
            arr = arr[0]
        if arr.ndim != 3 or arr.shape[0] != self.channels:
            raise InputError(f"invert() takes one ({self.channels}, H, W) input, got shape {tuple(arr.shape)}")
        pixels = arr.transpose(1, 2, 0)
        if self.bgr:
            pixels = pixels[:, :, ::-1]
        pixels = pixels * np.asarray(self.std) + np.asarray(self.mean)
        pixels = pixels * (255.0 / self.scale)
        picture = np.clip(np.rint(pixels), 0, 255).astype(np.uint8)
        return np.repeat(picture, 3, axis=2) if self.channels == 1 else picture

    def batch(self, images: Sequence[Image.Image | np.ndarray]) -> torch.Tensor:
        """Several pictures -> one ``(N, 3, H, W)`` tensor; they must come out the same size."""
        tensors = [self(im) for im in images]
        if not tensors:
            raise InputError("batch() needs at least one image")
        shapes = {tuple(t.shape) for t in tensors}
        if len(shapes) > 1:
            raise InputError(
                f"the images give tensors of different sizes {sorted(shapes)} (this preprocessing has no crop); "
                f"pass them one at a time or use a preprocessing with a crop"
            )
        return torch.stack(tensors)

    # -- text -------------------------------------------------------------------------------
    def describe(self) -> str:
        """What is done, in prose (for reports and ``run.json``)."""
        steps: list[str] = ["The image is converted to " + ("RGB" if self.channels == 3 else "grayscale")]
        if self.resize is None:
            steps.append("kept at its size")
        elif isinstance(self.resize, tuple):
            steps.append(f"resized to {self.resize[0]}x{self.resize[1]} pixels (height x width) without keeping "
                         f"its aspect ratio (pictures of another shape are stretched) with {self.interpolation} "
                         f"interpolation")
        else:
            steps.append(f"its shorter side resized to {self.resize} pixels (aspect ratio kept) with "
                         f"{self.interpolation} interpolation")
        if self.crop is None:
            steps.append("not cropped" + ("" if isinstance(self.resize, tuple) else " (any size goes in)"))
        else:
            ch, cw = _size_pair(self.crop, "crop")
            steps.append(f"centre-cropped to {ch}x{cw}")
        steps.append(f"scaled to [0, {self.scale:g}]")
        order = "R, G, B" if self.channels == 3 else "grey"
        if all(s == 1 for s in self.std):
            steps.append(f"the per-channel means {order} = {_fmt(self.mean)} subtracted")
        else:
            steps.append(f"normalised per channel with mean {_fmt(self.mean)} and std {_fmt(self.std)} ({order})")
        text = ", ".join(steps[:-1]) + " and " + steps[-1]
        if self.bgr:
            text += ", and its channels reordered to BGR"
        return text + "."

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields (for ``run.json``)."""
        return {
            "resize": list(self.resize) if isinstance(self.resize, tuple) else self.resize,
            "crop": list(self.crop) if isinstance(self.crop, tuple) else self.crop,
            "mean": list(self.mean),
            "std": list(self.std),
            "scale": self.scale,
            "bgr": self.bgr,
            "interpolation": self.interpolation,
            "channels": self.channels,
            "description": self.describe(),
        }


def _to_pil(image: Image.Image | np.ndarray) -> Image.Image:
    if isinstance(image, Image.Image):
        return image if image.mode == "RGB" else image.convert("RGB")
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8:
            raise ImageError(f"an image array must be uint8 (0-255), got dtype {image.dtype}")
        if image.ndim == 2:
            return Image.fromarray(image).convert("RGB")
        if image.ndim == 3 and image.shape[2] in (3, 4):
            return Image.fromarray(np.ascontiguousarray(image[:, :, :3]))
        raise ImageError(f"an image array must be (H, W), (H, W, 3) or (H, W, 4), got shape {image.shape}")
    raise ImageError(f"expected a PIL image or a uint8 array, got {type(image).__name__}")
