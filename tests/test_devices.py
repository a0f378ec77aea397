"""One device resolver for the library, the batch job and the CLI."""

from __future__ import annotations

import pytest
import torch

from guided_backprop.devices import resolve_device
from guided_backprop.errors import ModelError, UnknownNameError


def test_cpu_and_auto_resolve_here() -> None:
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(" CPU ") == torch.device("cpu")
    assert resolve_device(torch.device("cpu")) == torch.device("cpu")
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == expected


def test_unknown_names_list_what_is_valid() -> None:
    with pytest.raises(UnknownNameError, match=r"unknown device 'gpu'; did you mean 'cpu'") as err:
        resolve_device("gpu")
    assert err.value.field == "device"


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here")
def test_cuda_without_cuda_says_so() -> None:
    with pytest.raises(ModelError, match="CUDA is not available") as err:
        resolve_device("cuda:0")
    assert err.value.field == "device"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_plain_cuda_under_torchrun_takes_the_local_rank() -> None:
    n = torch.cuda.device_count()
    assert resolve_device("cuda", local_rank=n + 1, world=2) == torch.device("cuda", (n + 1) % n)
    assert resolve_device("cuda") == torch.device("cuda", 0)
    with pytest.raises(ModelError, match="CUDA device"):
        resolve_device(f"cuda:{n}")


def test_a_name_with_no_close_match_lists_every_valid_one() -> None:
    with pytest.raises(UnknownNameError, match=r"valid: 'auto', 'cpu', 'cuda', 'cuda:N', 'mps'"):
        resolve_device("xla:7")
