"""write_atomic: the old content or the new, never a torn file; nothing left aside."""

import os

import pytest

from a3_jax import atomic_file
from a3_jax.atomic_file import write_atomic


def test_a_failed_write_keeps_the_old_content_and_leaves_nothing_aside(tmp_path, monkeypatch):
  path = tmp_path / "config.json"
  write_atomic(path, "old")
  def disk_full(fd):
    raise OSError(28, "No space left on device")
  monkeypatch.setattr(atomic_file.os, "fsync", disk_full)
  with pytest.raises(OSError, match="No space"):
    write_atomic(path, "new" * 1000)
  assert path.read_text() == "old" and os.listdir(tmp_path) == ["config.json"]
  monkeypatch.undo()
  write_atomic(path, b"new")
  assert path.read_bytes() == b"new" and os.listdir(tmp_path) == ["config.json"]


def test_exclusive_creates_whole_or_refuses(tmp_path):
  path = tmp_path / "LOCK"
  write_atomic(path, '{"pid": 1}', exclusive=True)
  with pytest.raises(FileExistsError):
    write_atomic(path, '{"pid": 2}', exclusive=True)
  assert path.read_text() == '{"pid": 1}' and os.listdir(tmp_path) == ["LOCK"]
