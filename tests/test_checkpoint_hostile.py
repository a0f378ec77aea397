"""Hostile checkpoints (issues 18.9, 18.14): a zip bomb is refused from its directory before anything is
inflated; a damaged file is called corrupt (never "use --trust-checkpoint"); a legacy .tar file gets its own
message, and --trust-checkpoint loads it."""

from __future__ import annotations

import io
import pickle
import tarfile
import zipfile
from pathlib import Path

import pytest
import torch

from guided_backprop.errors import CheckpointError, ExitCode
from guided_backprop.models import checkpoints
from guided_backprop.models.checkpoints import read_state_dict
from tests.fixtures.cli_images import write_plain
from tests.fixtures.cli_models import tiny
from tests.fixtures.runs import TINY, invoke


def _deflated(src: Path, dst: Path) -> Path:
    """``src`` (a torch.save zip) with every entry compressed: what a zip bomb looks like."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as zout:
        for info in zin.infolist():
            zout.writestr(info.filename, zin.read(info.filename))
    return dst


def _no_load(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*_a: object, **_k: object) -> None:
        raise AssertionError("torch.load was called: the file was inflated")
    monkeypatch.setattr(torch, "load", refuse)


def test_a_zip_bomb_is_refused_before_anything_is_inflated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    plain = tmp_path / "plain.pt"
    torch.save({"big": torch.zeros(6 << 20)}, plain)  # 24 MiB of zeros
    bomb = _deflated(plain, tmp_path / "bomb.pt")
    assert bomb.stat().st_size < 1 << 20
    assert read_state_dict(bomb, trust=True)["big"].shape == (6 << 20,)  # trusted: loaded
    _no_load(monkeypatch)
    with pytest.raises(CheckpointError, match=r"inflates \d+ bytes to 24.0 MiB .*zip bomb; nothing was inflated"):
        read_state_dict(bomb)


def test_a_checkpoint_larger_than_the_cap_is_refused_from_its_directory(tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "w.pt"
    torch.save({"w": torch.zeros(1 << 19)}, path)  # 2 MiB, stored
    monkeypatch.setenv(checkpoints.MAX_CHECKPOINT_ENV, "0.001")
    _no_load(monkeypatch)
    with pytest.raises(CheckpointError, match=rf"would inflate to 2.0 MiB, more than the 1.0 MiB allowed "
                                              rf"\({checkpoints.MAX_CHECKPOINT_ENV}=0.001\)"):
        read_state_dict(path)


def _corruptions(tmp_path: Path) -> dict[str, Path]:
    good = tmp_path / "good.pt"
    torch.save(tiny().state_dict(), good)
    data = good.read_bytes()
    start = data.index(b"data.pkl") + 40  # inside the pickle
    found = {}
    for name, damaged in {
        "truncated": data[: len(data) // 2],
        "pickle bytes": data[:start] + b"\x00\xff\x13\x99\x42\x00\x01\x02" + data[start + 8:],
        "operand": data[:start + 60] + b"\x00" * 8 + data[start + 68:],
    }.items():
        path = tmp_path / f"{name.replace(' ', '_')}.pt"
        path.write_bytes(damaged)
        found[name] = path
    return found


def test_a_damaged_checkpoint_is_called_corrupt_never_told_to_trust(tmp_path: Path) -> None:
    for name, path in _corruptions(tmp_path).items():
        for trust in (False, True):
            with pytest.raises(CheckpointError) as info:
                read_state_dict(path, trust=trust)
            text = str(info.value)
            assert "corrupt" in text and "trust" not in text, (name, trust, text)


def test_the_command_says_corrupt_in_one_line(tmp_path: Path) -> None:
    path = _corruptions(tmp_path)["pickle bytes"]
    write_plain(tmp_path / "in", 1)
    result = invoke(tmp_path / "in", "-o", tmp_path / "out", "--model", TINY, "--weights", path,
                    "--input-size", "32", "--workers", "0")
    assert result.exit_code == ExitCode.USAGE
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("error: --weights: ") and "is corrupt" in line and "--trust-checkpoint" not in line


def _legacy_tar(path: Path) -> Path:
    """A file in PyTorch's legacy .tar layout (members sys_info, pickle, storages, tensors)."""
    with tarfile.open(path, "w") as tf:
        for name, payload in [("sys_info", {"protocol_version": 1001}), ("pickle", {}), ("storages", 0),
                              ("tensors", 0)]:
            data = pickle.dumps(payload, protocol=2)
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return path


def test_a_legacy_tar_checkpoint_says_so_and_trust_loads_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = _legacy_tar(tmp_path / "old.pth")
    with pytest.raises(CheckpointError, match=r"legacy \.tar format .* trust_checkpoint=True") as info:
        read_state_dict(path)
    assert "PyTorch 2.6" not in str(info.value)  # not torch's own advice
    calls = []

    def fake_load(file: object, **kw: object) -> dict:
        calls.append(kw)
        return {"w": torch.ones(2)}

    monkeypatch.setattr(torch, "load", fake_load)
    assert read_state_dict(path, trust=True)["w"].tolist() == [1.0, 1.0]
    assert calls == [{"map_location": "cpu", "weights_only": False}]
