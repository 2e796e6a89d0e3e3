"""Small files written and read whole. Files a run rewrites are replaced whole: a
reader, or a crash, sees the old content or the new, never a torn file; a JSON file
that still does not parse is named in one line (`read_json_object`).

`write_atomic` writes a sibling aside (`.NAME.PID.tmp`), fsyncs it and renames it
over the target (or links it, for a file that must not exist yet: the workdir lock
is created with its content in one step). Object stores (gs://) replace an object
atomically themselves and are written directly.
"""

from __future__ import annotations

import contextlib
import json
import os

from etils import epath

from a3_jax.errors import UserError

ASIDE_SUFFIX = ".tmp"


def aside_name(name: str) -> str:
  return f".{name}.{os.getpid()}{ASIDE_SUFFIX}"


def is_aside(name: str) -> bool:
  """Whether a directory entry is a file write_atomic left aside (a crash mid-write)."""
  return name.startswith(".") and name.endswith(ASIDE_SUFFIX)


def write_atomic(path, data: str | bytes, exclusive: bool = False) -> None:
  """Replaces `path` with `data` atomically; with `exclusive`, creates it and raises
  FileExistsError if it exists (the content is complete the moment it appears)."""
  path = str(path)
  payload = data.encode("utf-8") if isinstance(data, str) else data
  if "://" in path:
    epath.Path(path).write_bytes(payload)
    return
  directory, name = os.path.split(os.path.abspath(path))
  aside = os.path.join(directory, aside_name(name))
  try:
    with open(aside, "wb") as f:
      f.write(payload)
      f.flush()
      os.fsync(f.fileno())
    if exclusive:
      os.link(aside, path)
    else:
      os.replace(aside, path)
  finally:
    with contextlib.suppress(FileNotFoundError):
      os.remove(aside)
  _fsync_directory(directory)


def _fsync_directory(directory: str) -> None:
  """Makes the rename itself durable (a no-op where directories cannot be opened)."""
  with contextlib.suppress(OSError):
    fd = os.open(directory, os.O_RDONLY)
    try:
      os.fsync(fd)
    finally:
      os.close(fd)


def read_json_object(path: str) -> dict:
  """The JSON object in file `path`; anything else (torn, not UTF-8, not an object) is a
  UserError naming the file."""
  try:
    with open(path, encoding="utf-8") as f:
      value = json.load(f)
  except (UnicodeDecodeError, ValueError) as e:  # JSONDecodeError is a ValueError
    raise UserError(f"{path} is damaged or not JSON ({e})") from None
  if not isinstance(value, dict):
    raise UserError(f"{path} is damaged: not a JSON object")
  return value
