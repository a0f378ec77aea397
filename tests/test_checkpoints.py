"""Checkpoint reading: wrappers, the unsafe-file refusal, key reports, order conversion, .npy dicts."""

from __future__ import annotations

import argparse
import pickle
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from guided_backprop.cli.commands import cli_message
from guided_backprop.errors import CheckpointError
from guided_backprop.models.checkpoints import (
    convert_by_order,
    extract_state_dict,
    load_into,
    read_npy_dict,
    read_state_dict,
)

from .nets import conv_gap


def _net(classes: int = 3) -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.LazyLinear(classes))


def _small() -> nn.Sequential:
    return conv_gap(classes=3, batchnorm=True)


@pytest.mark.parametrize("wrap", [
    lambda sd: sd,
    lambda sd: {"state_dict": sd, "epoch": 3},
    lambda sd: {"model": sd, "optimizer": {"lr": 0.1}},
    lambda sd: {"module." + k: v for k, v in sd.items()},
    lambda sd: {"state_dict": {"_orig_mod." + k: v for k, v in sd.items()}},
])
def test_common_wrappers_are_unwrapped(tmp_path: Path, wrap) -> None:
    sd = _small().state_dict()
    path = tmp_path / "ckpt.pth"
    torch.save(wrap(sd), path)
    got = read_state_dict(path)
    assert list(got) == list(sd)
    for key in sd:
        torch.testing.assert_close(got[key], sd[key])


def test_file_needing_full_unpickling_is_refused_unless_trusted(tmp_path: Path) -> None:
    sd = _small().state_dict()
    path = tmp_path / "unsafe.pth"
    torch.save({"state_dict": sd, "args": argparse.Namespace(lr=0.1)}, path)
    with pytest.raises(CheckpointError) as info:
        read_state_dict(path)
    msg = str(info.value)
    assert "argparse.Namespace" in msg and "arbitrary code" in msg and "trust_checkpoint=True" in msg
    assert str(path) in msg and "--trust-checkpoint" in cli_message(msg)  # the CLI names the flag
    assert list(read_state_dict(path, trust=True)) == list(sd)


def test_unreadable_and_missing_files(tmp_path: Path) -> None:
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match="cannot read checkpoint .*junk.pth"):
        read_state_dict(junk)
    text = tmp_path / "notes.txt"
    text.write_text("hi\n")  # torch.load's own error is "KeyError: 105"
    with pytest.raises(CheckpointError, match=r"notes.txt': it is not a file written by torch.save \(neither"):
        read_state_dict(text)
    with pytest.raises(CheckpointError, match="not found: .*nope.pth"):
        read_state_dict(tmp_path / "nope.pth")
    torch.save({"epoch": 3, "note": "hello"}, tmp_path / "empty.pth")
    with pytest.raises(CheckpointError, match="no tensors.*'epoch'"):
        read_state_dict(tmp_path / "empty.pth")


def test_safetensors_files_load(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    sd = {k: v.contiguous() for k, v in _small().state_dict().items()}
    save_file(sd, str(tmp_path / "w.safetensors"))
    got = read_state_dict(tmp_path / "w.safetensors")
    assert set(got) == set(sd)
    torch.testing.assert_close(got["5.weight"], sd["5.weight"])


def test_load_into_names_missing_unexpected_and_misshaped_keys() -> None:
    model = _small()
    sd = dict(model.state_dict())
    del sd["0.bias"]
    sd["extra.weight"] = torch.zeros(1)
    sd["5.weight"] = torch.zeros(10, 4)
    with pytest.raises(CheckpointError) as info:
        load_into(model, sd, source="checkpoint 'x.pth'", hint="pass num_classes=N")
    msg = str(info.value)
    assert "checkpoint 'x.pth' does not fit the model" in msg
    assert "1 missing key(s): 0.bias" in msg
    assert "1 unexpected key(s): extra.weight" in msg
    assert "1 mis-shaped key(s): 5.weight: checkpoint (10, 4) vs model (3, 4)" in msg
    assert msg.endswith("(pass num_classes=N)")


def test_long_key_lists_are_cut_with_a_count() -> None:
    model = nn.Sequential(*[nn.Linear(2, 2) for _ in range(8)])
    with pytest.raises(CheckpointError, match=r"16 missing key\(s\): 0.weight, .*\(11 more\)"):
        load_into(model, {})


def test_load_into_drops_a_model_prefix_and_missing_bn_counters() -> None:
    src, dst = _small(), _small()
    with torch.no_grad():
        for p in src.parameters():
            p.add_(1.0)
    sd = {"model." + k: v for k, v in src.state_dict().items() if not k.endswith("num_batches_tracked")}
    load_into(dst, sd)
    torch.testing.assert_close(dst[5].weight, src[5].weight)


def test_convert_by_order_maps_and_checks_every_pair() -> None:
    model = _small()
    target = model.state_dict()
    renamed = OrderedDict(("_" + k.replace(".", "_x."), v + 1) for k, v in target.items())
    out = convert_by_order(renamed, target)
    assert list(out) == [k for k in target if not k.endswith("num_batches_tracked")]
    torch.testing.assert_close(out["0.weight"], target["0.weight"] + 1)

    wrong = OrderedDict(renamed)
    wrong["_0_x.weight"] = torch.zeros(4, 3, 5, 5)
    with pytest.raises(CheckpointError, match=r"tensor #0 _0_x.weight \(4, 3, 5, 5\) would become 0.weight"):
        convert_by_order(wrong, target)
    fewer = OrderedDict(list(renamed.items())[1:])
    with pytest.raises(CheckpointError, match="has 7 tensors but the model has 8"):
        convert_by_order(fewer, target)


def _npy_dict() -> dict:
    rng = np.random.default_rng(0)
    return {"conv1_1": [rng.standard_normal((3, 3, 3, 4)).astype(np.float32), np.zeros(4, np.float32)],
            "fc8": [rng.standard_normal((4, 2)).astype(np.float32), np.ones(2, np.float32)]}


def test_npy_dict_is_read_without_allow_pickle(tmp_path: Path) -> None:
    data = _npy_dict()
    np.save(tmp_path / "w.npy", data, allow_pickle=True)
    got = read_npy_dict(tmp_path / "w.npy")
    assert set(got) == {"conv1_1", "fc8"}
    np.testing.assert_array_equal(got["conv1_1"][0], data["conv1_1"][0])


def test_npy_dict_python2_style_pickle_protocol_2(tmp_path: Path) -> None:
    data = _npy_dict()
    path = tmp_path / "old.npy"
    with path.open("wb") as fh:  # the layout np.save writes, with the pickle protocol of the 2016 file
        np.lib.format.write_array_header_1_0(fh, {"descr": "|O", "fortran_order": False, "shape": ()})
        pickle.dump(np.array(data, dtype=object), fh, protocol=2)
    got = read_npy_dict(path)
    np.testing.assert_array_equal(got["fc8"][1], data["fc8"][1])


def test_npy_with_foreign_objects_is_refused_unless_trusted(tmp_path: Path) -> None:
    data = _npy_dict()
    data["meta"] = argparse.Namespace(note="runs code on load in a malicious file")
    np.save(tmp_path / "evil.npy", data, allow_pickle=True)
    with pytest.raises(CheckpointError, match="argparse.Namespace.*trust_checkpoint=True"):
        read_npy_dict(tmp_path / "evil.npy")
    assert "meta" in read_npy_dict(tmp_path / "evil.npy", trust=True)
    np.save(tmp_path / "plain.npy", np.zeros((2, 2), np.float32))
    with pytest.raises(CheckpointError, match="plain float32 array"):
        read_npy_dict(tmp_path / "plain.npy")


def test_extract_from_module_object() -> None:
    model = _small()
    assert list(extract_state_dict(model)) == list(model.state_dict())
    with pytest.raises(CheckpointError, match="holds a list"):
        extract_state_dict([1, 2])
