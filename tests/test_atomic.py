"""atomic.py: a file appears whole or not at all."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from guided_backprop.atomic import atomic_file, write_bytes, write_text


def test_write_creates_parents_replaces_and_leaves_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "a" / "b" / "out.txt"
    write_text(target, "first")
    write_bytes(target, b"second")
    assert target.read_bytes() == b"second"
    assert [p.name for p in target.parent.iterdir()] == ["out.txt"]
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(target.stat().st_mode) == 0o666 & ~umask


def test_an_exception_keeps_the_old_file_and_removes_the_temp(tmp_path: Path) -> None:
    target = tmp_path / "out.bin"
    write_bytes(target, b"old")
    with pytest.raises(RuntimeError, match="disk full"):
        with atomic_file(target) as fh:
            fh.write(b"half of the new cont")
            raise RuntimeError("disk full")
    assert target.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.bin"]


def test_the_temp_name_is_hidden_and_swept_by_the_batch_runner(tmp_path: Path) -> None:
    from guided_backprop.batch.journal import sweep_temp_files

    target = tmp_path / "map.png"
    with atomic_file(target) as fh:
        fh.write(b"x")
        (tmp_name,) = [p.name for p in tmp_path.iterdir()]
        assert tmp_name.startswith(".map.png.gbp.") and tmp_name.endswith(".tmp")
        (tmp_path / ".map.png.gbp.99999999.0123abcd.tmp").write_bytes(b"leftover of a killed run")
    assert sweep_temp_files(tmp_path) == 1
    assert [p.name for p in tmp_path.iterdir()] == ["map.png"]
