"""Atomic outputs: bytes appear under the final name only when complete, with ordinary permissions."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from models.files import PARTIAL_SUFFIX, atomic_output, atomic_path, unwritable_reason


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_atomic_output_never_leaves_partial_files(tmp_path: Path) -> None:
    target = tmp_path / "photo.jpg"
    target.write_bytes(b"the original")
    for error in (RuntimeError("encoder died"), KeyboardInterrupt()):
        with pytest.raises(type(error)), atomic_output(target) as f:
            f.write(b"half of a new image")
            raise error
        assert target.read_bytes() == b"the original"
        assert sorted(p.name for p in tmp_path.iterdir()) == ["photo.jpg"]
    with atomic_output(target) as f:
        f.write(b"new")
    assert target.read_bytes() == b"new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["photo.jpg"]
    assert (target.stat().st_mode & 0o777) == (0o666 & ~_umask())



def test_a_failed_write_names_the_destination_not_the_temp_file(tmp_path: Path) -> None:
    target = tmp_path / ("x" * 240 + ".onnx")  # a legal name whose temp sibling is longer than a name may be
    with pytest.raises(OSError) as exc:
        with atomic_output(target) as f:
            f.write(b"never")
    assert exc.value.filename == str(target) and exc.value.errno is not None
    assert str(exc.value).endswith(f"{PARTIAL_SUFFIX}): '{target}'")
    assert list(tmp_path.iterdir()) == []


def test_unwritable_reason_names_what_is_in_the_way_and_creates_nothing(tmp_path: Path) -> None:
    (tmp_path / "a-file").write_text("not a folder")
    assert unwritable_reason(tmp_path / "new" / "deeper" / "x.json") is None  # folders that can be made
    assert unwritable_reason(tmp_path / "a-file") is None  # an existing file, replaced in a writable folder
    assert unwritable_reason(tmp_path / "a-file" / "x.json") == f"{tmp_path / 'a-file'} is a file, not a folder"
    assert unwritable_reason(tmp_path / "a-file" / "d" / "x") == f"{tmp_path / 'a-file'} is a file, not a folder"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a-file"]


def test_atomic_path_renames_only_on_success(tmp_path: Path) -> None:
    target = tmp_path / "deep" / "model.onnx"
    with pytest.raises(ValueError), atomic_path(target) as tmp:
        tmp.write_bytes(b"half")
        raise ValueError("export failed")
    assert not target.exists() and list(target.parent.iterdir()) == []
    with atomic_path(target) as tmp:
        tmp.write_bytes(b"whole")
    assert target.read_bytes() == b"whole"
