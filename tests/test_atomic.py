"""atomic_path: the old file survives a failed write, the new one appears whole, no temp is left."""
import os

import pytest

from hmr_fast.atomic import atomic_path


def test_success_replaces_the_file_and_leaves_no_temp(tmp_path):
    target = tmp_path / "model.bin"
    target.write_bytes(b"old")
    with atomic_path(target) as tmp:
        assert tmp.parent == tmp_path and tmp != target
        tmp.write_bytes(b"new contents")
        assert target.read_bytes() == b"old"  # nothing visible until the block ends
    assert target.read_bytes() == b"new contents"
    assert os.listdir(tmp_path) == ["model.bin"]


def test_failure_keeps_the_old_file_and_removes_the_temp(tmp_path):
    target = tmp_path / "last.pt"
    target.write_bytes(b"good checkpoint")
    with pytest.raises(KeyboardInterrupt):
        with atomic_path(target) as tmp:
            tmp.write_bytes(b"half of a new")
            raise KeyboardInterrupt
    assert target.read_bytes() == b"good checkpoint"
    assert os.listdir(tmp_path) == ["last.pt"]


def test_creates_the_folder_and_keeps_a_required_suffix(tmp_path):
    target = tmp_path / "sub" / "pkg.pt2"
    with atomic_path(target, suffix=".pt2") as tmp:
        assert tmp.name.endswith(".pt2")
        tmp.write_text("x")
    assert target.read_text() == "x"
