"""Atomic writes (sevila/atomic.py): all or nothing, and what is published honours the umask (issue 24: every file
was 0600 whatever the umask, so shared data and model folders became unreadable to a team)."""
from __future__ import annotations

import os
import stat

import pytest
import torch

from sevila.atomic import atomic_path, atomic_write_json, atomic_write_text, current_umask
from sevila.weights.checkpoint_dir import write_checkpoint_dir


@pytest.fixture
def umask():
    saved = os.umask(0o022)
    os.umask(saved)

    def set_mask(mask: int) -> None:
        os.umask(mask)

    yield set_mask
    os.umask(saved)


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.mark.parametrize("mask, file_mode, dir_mode", [(0o002, 0o664, 0o775), (0o022, 0o644, 0o755),
                                                       (0o077, 0o600, 0o700)])
def test_published_files_and_checkpoints_take_the_umask(tmp_path, umask, mask, file_mode, dir_mode):
    umask(mask)
    assert current_umask() == mask
    assert _mode(atomic_write_text(tmp_path / "a.txt", "x")) == file_mode
    assert _mode(atomic_write_json(tmp_path / "b.json", {"a": 1})) == file_mode
    ckpt = write_checkpoint_dir(tmp_path / "ckpt", {"w": torch.zeros(2)}, {"step": 1})
    assert _mode(ckpt) == dir_mode and {_mode(f) for f in ckpt.iterdir()} == {file_mode}


def test_a_failed_write_leaves_the_old_file_and_no_temp(tmp_path):
    target = atomic_write_text(tmp_path / "out.txt", "old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("crash")
    assert target.read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["out.txt"]
