"""The decode stage: ``DataLoader`` workers read and preprocess images; a bad file becomes an error record."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import torch

from .. import images
from ..errors import ImageError


class _Decoded(NamedTuple):
    idx: int
    path: str
    tensor: torch.Tensor | None
    error: str | None


class _DecodeDataset(torch.utils.data.Dataset):
    """(global idx, path) -> decoded, preprocessed tensor, or an error record (never raises)."""

    def __init__(self, items: Sequence[tuple[int, str]], preprocessing: Any) -> None:
        self.items = list(items)
        self.preprocessing = preprocessing

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> _Decoded:
        idx, path = self.items[i]
        try:
            tensor = self.preprocessing(images.load_image(path))
        except ImageError as err:
            return _Decoded(idx, path, None, _one_line(str(err)))
        except Exception as err:  # preprocessing of a strange picture; report it, keep going
            return _Decoded(idx, path, None, _one_line(f"cannot read image {path!r}: {type(err).__name__}: {err}"))
        return _Decoded(idx, path, tensor, None)


def _pass_through(item: _Decoded) -> _Decoded:
    """The DataLoader's collate: items travel one by one, errors included (batched after decoding)."""
    return item


def _one_line(text: str) -> str:
    return " ".join(str(text).split())
