"""What a directory may be before a tool writes to it, and the workdir lock.

`check_workdir` refuses a training workdir that holds something else (an export, a
Hugging Face model, unrelated files), is a regular file or is not writable;
`check_out_dir` does the same for an output directory, which must be new or empty.
Both run before anything is written. `WorkdirLock` keeps two runs off one workdir:
a lock file with the holder's pid and host, created with its content in one step
before the first write and removed on exit; the lock of a dead process on this host
is taken over with a message, a lock that cannot be read is not (a person decides).
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sys

from a3_jax.atomic_file import is_aside, write_atomic
from a3_jax.errors import UserError

LOCK_NAME = "LOCK"
# What a3-train (and a3-plot, and resume's damaged-checkpoint move) put in a workdir.
RUN_ENTRIES = frozenset({
    "checkpoints", "metrics.jsonl", "metrics.jsonl.tmp", "tensorboard", "config.json",
    "tokenizer.model", "tokenizer.json", "tokenizer_config.json", "curves.png", LOCK_NAME,
    "damaged_checkpoints"})
_HF_WEIGHTS = (".safetensors", ".gguf", ".bin", ".pt", ".pth")


def _is_remote(path: str) -> bool:
  return "://" in path


def check_remote(path: str, flag: str) -> None:
  """A gs:// (or other URI) path whose file-system package is missing is refused in
  one line; the package's own error says which to install."""
  from etils import epath
  try:
    epath.Path(path).exists()
  except ImportError as e:
    raise UserError(f"{flag}={path}: {e}") from None


def _check_writable_location(path: str, flag: str) -> None:
  """`path` is absent: the nearest existing ancestor must be a writable directory."""
  parent = os.path.dirname(os.path.abspath(path))
  while not os.path.exists(parent):
    parent = os.path.dirname(parent)
  if not os.path.isdir(parent):
    raise UserError(f"{flag}={path}: cannot create it, {parent} is a file")
  if not os.access(parent, os.W_OK | os.X_OK):
    raise UserError(f"{flag}={path}: cannot create it, {parent} is not writable")


def _check_directory(path: str, flag: str) -> list[str]:
  """Common checks: a writable directory or an absent path; returns its entries."""
  if not os.path.exists(path):
    _check_writable_location(path, flag)
    return []
  if not os.path.isdir(path):
    raise UserError(f"{flag}={path} is a file, not a directory")
  if not os.access(path, os.W_OK | os.X_OK):
    raise UserError(f"{flag}={path} is not writable")
  return sorted(os.listdir(path))


def _foreign_kind(path: str, entries: list[str]) -> str | None:
  """'an a3_jax export', 'a Hugging Face model' or None."""
  if "EXPORT" in entries or "params" in entries:
    return "an a3_jax export"
  if any(e.endswith(_HF_WEIGHTS) for e in entries):
    return "a model checkpoint (weights files)"
  if "config.json" in entries:
    try:
      with open(os.path.join(path, "config.json"), encoding="utf-8") as f:
        config = json.load(f)
    except (OSError, ValueError):
      if "checkpoints" in entries:  # a run's, torn by an older version: rewritten on resume
        return None
      return "a directory whose config.json is not a training run's"
    if not isinstance(config, dict) or "model_type" in config or "architectures" in config:
      return "a Hugging Face model"
  return None


def check_workdir(path: str, flag: str = "--workdir") -> None:
  """A new directory, or a training run's: anything else is refused (before any write)."""
  if _is_remote(path):
    check_remote(path, flag)
    return
  entries = _check_directory(path, flag)
  kind = _foreign_kind(path, entries)
  if kind:
    raise UserError(f"{flag}={path} holds {kind}, not a training run; use another {flag}")
  foreign = [e for e in entries if e not in RUN_ENTRIES and not is_aside(e)]
  is_run = "checkpoints" in entries or "metrics.jsonl" in entries
  if foreign and not is_run:
    raise UserError(f"{flag}={path} is not empty and not a training run directory "
                    f"(it holds {', '.join(foreign[:3])}); use a new or empty directory")


def check_out_dir(path: str, flag: str = "--out") -> None:
  """An output directory must be new or empty, and creatable (before any write)."""
  if _is_remote(path):
    check_remote(path, flag)
    return
  if _check_directory(path, flag):
    raise UserError(f"{flag}={path} exists and is not empty; use a new or empty directory")
  _check_writable_location(path, flag)  # the output is staged in a sibling, then renamed


def check_out_file(path: str, flag: str) -> None:
  """An output file's directory must exist and be writable, and the path must not be a
  directory (before any work is done toward it)."""
  if _is_remote(path):
    check_remote(path, flag)
    return
  if os.path.isdir(path):
    raise UserError(f"{flag}={path} is a directory; name a file")
  parent = os.path.dirname(os.path.abspath(path))
  if not os.path.isdir(parent):
    raise UserError(f"{flag}={path}: directory {parent} does not exist")
  if not os.access(parent, os.W_OK | os.X_OK):
    raise UserError(f"{flag}={path}: directory {parent} is not writable")


def _start_ticks(pid: int) -> int | None:
  """When process `pid` started (clock ticks since boot, Linux), or None if unknown."""
  try:
    with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
      return int(f.read().rpartition(")")[2].split()[19])
  except (OSError, ValueError, IndexError):
    return None


def _holder_alive(holder: dict) -> bool:
  """Whether the process that wrote a lock on this host still runs. A pid reused by
  another process (e.g. after a container restart) differs in its start time."""
  pid = int(holder.get("pid", -1))
  if pid == os.getpid():
    return False  # this process has not taken the lock yet: an old run had our pid
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except (PermissionError, OverflowError, ValueError):
    return True
  started, now = holder.get("started"), _start_ticks(pid)
  return started is None or now is None or started == now


class WorkdirLock:
  """`WORKDIR/LOCK` holding {"pid", "host"} of the one run that writes the workdir."""

  def __init__(self, workdir: str):
    self.workdir = workdir
    self.path = os.path.join(workdir, LOCK_NAME)
    self.owner = {"pid": os.getpid(), "host": socket.gethostname(),
                  "started": _start_ticks(os.getpid())}
    self.created_workdir = False

  def _holder(self) -> dict | None:
    try:
      with open(self.path, encoding="utf-8") as f:
        holder = json.load(f)
      return holder if isinstance(holder, dict) else None
    except (OSError, ValueError):
      return None

  def acquire(self) -> None:
    if not os.path.isdir(self.workdir):
      os.makedirs(self.workdir)
      self.created_workdir = True
    for _ in range(2):
      try:
        write_atomic(self.path, json.dumps(self.owner), exclusive=True)
      except FileExistsError:
        holder = self._holder()
        if holder is None:  # never torn (created whole): foreign, or damaged
          self.release_created()
          raise UserError(f"--workdir={self.workdir}: the lock file {self.path} is unreadable "
                          "(not one a3_jax wrote); delete it if no run uses this workdir") from None
        if holder.get("host") == self.owner["host"] and not _holder_alive(holder):
          print(f"warning: taking over the stale lock {self.path} of pid {holder.get('pid')}, "
                "which is no longer running", file=sys.stderr, flush=True)
        else:
          self.release_created()
          raise UserError(f"--workdir={self.workdir} is in use by pid {holder.get('pid')} on "
                          f"host {holder.get('host')} (lock file {self.path}); wait for that run "
                          "to end, or delete the lock file if it is gone") from None
        with contextlib.suppress(FileNotFoundError):
          os.remove(self.path)
        continue
      return
    raise UserError(f"--workdir={self.workdir}: another run took the lock {self.path} first")

  def release_created(self) -> None:
    """Removes the workdir again if acquire created it and nothing else was written."""
    if self.created_workdir:
      with contextlib.suppress(OSError):
        os.rmdir(self.workdir)
      self.created_workdir = False

  def release(self) -> None:
    if self._holder() == self.owner:
      os.remove(self.path)
    self.release_created()


@contextlib.contextmanager
def locked(workdir: str, enabled: bool = True):
  """Holds the workdir lock for the block (no-op when disabled or for gs:// paths).

  A workdir this call created and the block left empty is removed again, so a
  run refused after taking the lock leaves the file system as it was.
  """
  if not enabled or _is_remote(workdir):
    yield
    return
  lock = WorkdirLock(workdir)
  lock.acquire()
  try:
    yield
  finally:
    lock.release()
