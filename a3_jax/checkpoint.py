"""Orbax checkpoints of a training run: state, data-iterator state and run metadata.

One CheckpointManager per workdir (`WORKDIR/checkpoints`), Composite items:
  state  StandardSave of the TrainState (params, optimizer state, step), sharded
  data   grain.checkpoint.CheckpointSave of the data iterator
  meta   JsonSave of the model config and the settings a resume must agree on
Saves are asynchronous; a resumed run restores straight into the mesh shardings.

Every step directory carries `CHECKSUMS.json` (sha256 of each file), written by
orbax's own commit (`_ChecksummedPath.finalize`, after every item is written and
before the directory is renamed into place), so a committed step always has it.
`intact_step` verifies it before loading: a flipped byte is damage, like truncation.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import sys
from typing import Any

import grain
import jax
import orbax.checkpoint as ocp
from etils import epath
from orbax.checkpoint.path import atomicity

from a3_jax.config import ModelConfig, architecture_diff
from a3_jax.errors import UserError, is_disk_full
from a3_jax.rundir import check_remote


def checkpoint_dir(workdir: str) -> epath.Path:
  """WORKDIR/checkpoints: gs:// and other URIs as given, local paths made absolute."""
  return epath.Path(workdir if "://" in workdir else os.path.abspath(workdir)) / "checkpoints"


CHECKSUMS_FILE = "CHECKSUMS.json"
# Written by orbax's commit after the checksums (the commit marker, the commit time).
_UNCHECKED = frozenset({CHECKSUMS_FILE, atomicity.COMMIT_SUCCESS_FILE, "_CHECKPOINT_METADATA"})


def _file_digests(step_dir) -> dict[str, list]:
  """{path relative to step_dir: [size, sha256]} of every file a save wrote."""
  step_dir = str(step_dir)
  digests = {}
  for root, dirs, names in os.walk(step_dir):
    dirs.sort()
    for name in sorted(names):
      path = os.path.join(root, name)
      rel = os.path.relpath(path, step_dir)
      if rel in _UNCHECKED:
        continue
      with open(path, "rb") as f:
        digests[rel] = [os.fstat(f.fileno()).st_size, hashlib.file_digest(f, "sha256").hexdigest()]
  return digests


def write_checksums(step_dir) -> None:
  with open(os.path.join(str(step_dir), CHECKSUMS_FILE), "w", encoding="utf-8") as f:
    json.dump(_file_digests(step_dir), f, indent=0, sort_keys=True)
    f.flush()
    os.fsync(f.fileno())


class ChecksumMismatch(Exception):
  """A step's files differ from the checksums written when it was saved (damage)."""


def verify_checksums(step_dir) -> None:
  """Raises ChecksumMismatch naming the first file that is missing, unexpected, or
  whose bytes changed; a step saved before checksums existed is not checked."""
  path = os.path.join(str(step_dir), CHECKSUMS_FILE)
  if not os.path.exists(path):
    return
  try:
    with open(path, encoding="utf-8") as f:
      saved = json.load(f)
  except (OSError, ValueError) as e:
    raise ChecksumMismatch(f"file {CHECKSUMS_FILE} is unreadable ({e})") from None
  found = _file_digests(step_dir)
  for rel in sorted(set(saved) | set(found)):
    if rel not in found:
      raise ChecksumMismatch(f"file {rel} is missing")
    if rel not in saved:
      raise ChecksumMismatch(f"file {rel} was not part of the save")
    (size, digest), (now_size, now_digest) = saved[rel], found[rel]
    if now_size != size:
      raise ChecksumMismatch(f"file {rel} " + ("is empty" if now_size == 0 else "is truncated"
                                               if now_size < size else "has grown"))
    if now_digest != digest:
      raise ChecksumMismatch(f"file {rel} does not match its checksum (bytes changed)")


class _ChecksummedPath(atomicity.AtomicRenameTemporaryPath):
  """orbax's atomic-rename commit, with CHECKSUMS.json written into the finished
  temporary directory first: the rename publishes the step and its checksums at once."""

  async def finalize(self):
    write_checksums(self.get())
    await super().finalize()


def make_manager(workdir: str, max_to_keep: int = 3) -> ocp.CheckpointManager:
  """The run's manager; it saves whenever asked (the loop decides when: --save_every)."""
  directory = checkpoint_dir(workdir)
  options = ocp.CheckpointManagerOptions(
      max_to_keep=max_to_keep, create=True, enable_async_checkpointing=True,
      save_interval_steps=1,
      # gs:// commits by a marker file (orbax's default there), unchecked
      temporary_path_class=None if "://" in str(directory) else _ChecksummedPath)
  return ocp.CheckpointManager(directory, options=options, item_names=("state", "data", "meta"))


def has_checkpoint(workdir: str) -> bool:
  """Whether workdir holds a finished checkpoint (creates nothing)."""
  directory = checkpoint_dir(workdir)
  return directory.is_dir() and open_manager(workdir).latest_step() is not None


def open_manager(workdir: str) -> ocp.CheckpointManager:
  """A manager of an existing run's checkpoints, for reading: creates nothing."""
  directory = checkpoint_dir(workdir)
  if "://" in workdir:
    check_remote(workdir, "--workdir")
  if not directory.is_dir():
    raise UserError(f"--workdir={workdir} holds no checkpoints/ (not a training run?)")
  options = ocp.CheckpointManagerOptions(create=False)  # read_only=True only adds a warning
  return ocp.CheckpointManager(directory, options=options, item_names=("state", "data", "meta"))


def describe_damage(step_dir, error: BaseException) -> str:
  """Which file of a step directory is damaged: an empty or unparsable JSON file,
  the file of the byte size a read error names, else the error's first line."""
  step_dir = str(step_dir)
  files = [os.path.join(root, n) for root, _, names in os.walk(step_dir) for n in sorted(names)]
  for path in sorted(files):
    rel = os.path.relpath(path, step_dir)
    if os.path.getsize(path) == 0 and not rel.endswith("_CHECKPOINT_METADATA"):
      return f"file {rel} is empty"
    if "/d/" in f"/{rel}" or rel.endswith(".ocdbt"):
      continue
    try:
      with open(path, "rb") as f:
        json.loads(f.read().decode("utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
      if rel.endswith((".json", "metadata", "_METADATA", "_sharding", "process_0")):
        return f"file {rel} is not valid JSON ({e})"
  text = _error_text(error)
  size = re.search(r"not valid for value of size (\d+)", text)
  if size:
    matches = [p for p in files if os.path.getsize(p) == int(size.group(1))]
    if len(matches) == 1:
      return f"file {os.path.relpath(matches[0], step_dir)} is truncated"
  line = next((l.strip() for l in text.splitlines() if re.search(r"[A-Z_]{6,}:|rror", l)), "")
  return (line or text.strip().splitlines()[0] if text.strip() else type(error).__name__)[:300]


def _error_text(error: BaseException) -> str:
  parts, seen = [], set()
  while error is not None and id(error) not in seen:
    seen.add(id(error))
    parts.append(f"{type(error).__name__}: {error}")
    error = error.__cause__ or error.__context__
  return "\n".join(reversed(parts))


def intact_step(manager: ocp.CheckpointManager, load, newest: int | None = None):
  """(step, load(step)) of the newest step at or below `newest` that `load` reads
  without error, and [(step, what is damaged)] of the newer ones that failed.

  A UserError from `load` (e.g. another model config) is not damage: it propagates.
  """
  damaged = []
  for step in sorted(manager.all_steps(), reverse=True):
    if newest is not None and step > newest:
      continue
    try:
      verify_checksums(manager.directory / str(step))
      return step, load(step), damaged
    except UserError:
      raise
    except ChecksumMismatch as e:
      damaged.append((step, str(e)))
    except Exception as e:  # orbax, tensorstore and json errors of a damaged file
      what = describe_damage(manager.directory / str(step), e)
      damaged.append((step, what))
  return None, None, damaged


def set_aside(workdir: str, steps: list[int]) -> None:
  """Moves damaged step directories to WORKDIR/damaged_checkpoints/ (kept, not loaded)."""
  target = epath.Path(checkpoint_dir(workdir)).parent / "damaged_checkpoints"
  for step in steps:
    target.mkdir(parents=True, exist_ok=True)
    destination = target / str(step)
    n = 1
    while destination.exists():
      destination, n = target / f"{step}.{n}", n + 1
    shutil.move(str(checkpoint_dir(workdir) / str(step)), str(destination))
    print(f"warning: moved damaged checkpoint step {step} to {destination}", file=sys.stderr,
          flush=True)


@contextlib.contextmanager
def _disk_full_is_user_error(manager: ocp.CheckpointManager):
  """A full disk while a save is written (here or in orbax's thread, surfacing at the
  next save or wait) is one line; the committed steps are intact (saves are atomic)."""
  try:
    yield
  except Exception as e:
    if not is_disk_full(e):
      raise
    raise UserError(f"{manager.directory}: no space left on device while saving a "
                    f"checkpoint; the last complete one (step {manager.latest_step()}) is "
                    "intact: free space and run again to resume") from None


def save(manager: ocp.CheckpointManager, step: int, state, data_iterator, meta: dict,
         force: bool = False) -> bool:
  """Starts an async save of everything a resume needs; returns whether it saved."""
  args = ocp.args.Composite(
      state=ocp.args.StandardSave(state),
      data=grain.checkpoint.CheckpointSave(data_iterator),
      meta=ocp.args.JsonSave(meta))
  with _disk_full_is_user_error(manager):
    return manager.save(step, args=args, force=force)


def finish(manager: ocp.CheckpointManager) -> None:
  """Waits for the pending save and closes the manager (a full disk: one line)."""
  try:
    with _disk_full_is_user_error(manager):
      manager.wait_until_finished()
  finally:
    manager.close()


def read_meta(manager: ocp.CheckpointManager, step: int | None = None) -> dict | None:
  step = manager.latest_step() if step is None else step
  if step is None:
    return None
  restored = manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
  return restored["meta"]


def check_compatible(meta: dict, model_config: ModelConfig, workdir: str) -> None:
  """Refuses to resume a checkpoint of another architecture (one clear message);
  runtime settings (config.RUNTIME_FIELDS: attention, remat, compute dtype...) may change."""
  saved = ModelConfig.from_dict(meta["model_config"])
  diff = architecture_diff(saved, model_config)
  if diff:
    details = ", ".join(f"{k}: checkpoint {a!r} vs requested {b!r}" for k, (a, b) in diff.items())
    raise UserError(f"workdir {workdir} holds a checkpoint of a different model config "
                     f"({details}); use another --workdir or the same settings")


# Run settings a resume must agree on with its checkpoint (beyond the architecture):
# meta key -> the a3-train flag that sets it. CHANGEABLE ones a run may change on
# purpose (--allow_change=NAME): the data stream then starts afresh from the new
# settings (the saved iterator position belongs to the old ones); a tokenizer never.
RESUME_FLAGS = {"tokenizer": "--tokenizer", "data": "--data", "seq_len": "--seq_len",
                "batch_size": "--batch_size"}
CHANGEABLE = ("data", "seq_len", "batch_size")


def check_settings(meta: dict, settings: dict, allowed=(), workdir: str = "") -> list[str]:
  """Refuses a resume whose `settings` ({RESUME_FLAGS key: value}) differ from the
  checkpoint's `meta` in one line naming the flag and both values, unless the key is
  in `allowed` (a subset of CHANGEABLE); returns the keys changed on purpose. Keys an
  older checkpoint did not record are not compared."""
  changed = []
  for key, flag in RESUME_FLAGS.items():
    if key not in meta or key not in settings or meta[key] == settings[key]:
      continue
    if key in allowed:
      changed.append(key)
      continue
    saved, now = meta[key], settings[key]
    if key == "tokenizer":
      saved, now = f"sha256 {saved[:12]}", f"sha256 {now[:12]}"
    hint = (f"pass --allow_change={key} to change it on purpose (the data stream then starts "
            f"afresh)" if key in CHANGEABLE else "pass the tokenizer the run started with")
    raise UserError(f"{flag}: the checkpoint in {workdir} was trained with {saved!r}, this run "
                    f"asks for {now!r}; {hint}")
  return changed


def restore(manager: ocp.CheckpointManager, step: int, abstract_state, data_iterator):
  """Restores the state into the shardings of `abstract_state` (ShapeDtypeStructs
  with .sharding) and the data iterator in place (None: the iterator starts afresh);
  returns the state."""
  items = {"state": ocp.args.StandardRestore(abstract_state)}
  if data_iterator is not None:
    items["data"] = grain.checkpoint.CheckpointRestore(data_iterator)
  return manager.restore(step, args=ocp.args.Composite(**items))["state"]


def abstract_like(state_shapes: Any, shardings: Any):
  """ShapeDtypeStructs carrying shardings, the restore target orbax wants."""
  return jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
                      state_shapes, shardings)


def _read_params(manager: ocp.CheckpointManager, step: int, dtype: str | None = None):
  """The params subtree of a step's state, read alone (orbax partial restore) and cast to
  `dtype` (None: as saved) as it is read, so the optimizer state is never in memory."""
  meta = read_meta(manager, step)
  state_dir = manager.directory / str(step) / "state"
  # At most 1 GB of arrays in flight: each is read at its saved dtype, then cast.
  with ocp.Checkpointer(ocp.PyTreeCheckpointHandler(restore_concurrent_gb=1)) as checkpointer:
    saved = checkpointer.metadata(state_dir).item_metadata
    saved = getattr(saved, "tree", saved)  # orbax >= 0.12 wraps it in TreeMetadata
    # The saved shardings name the devices of the run that wrote them (on a pod,
    # other hosts' too): read every array onto this process's first device.
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    target = {"params": jax.tree.map(
        lambda m: jax.ShapeDtypeStruct(m.shape, dtype or m.dtype, sharding=device),
        saved["params"], is_leaf=lambda m: hasattr(m, "shape"))}
    restored = checkpointer.restore(state_dir, args=ocp.args.PyTreeRestore(
        item=target, restore_args=ocp.checkpoint_utils.construct_restore_args(target),
        partial_restore=True))
  return restored["params"], meta


def restore_params(workdir: str, step: int | None = None, dtype: str | None = None):
  """Params (cast to `dtype`, None: as trained) and meta of a run's latest (or given)
  checkpoint; the optimizer state is not read.

  A damaged checkpoint is a UserError naming the step and file, and the newest
  intact step to pass as --step instead.
  """
  manager = open_manager(workdir)
  steps = manager.all_steps()
  if not steps:
    raise UserError(f"no checkpoint found under {checkpoint_dir(workdir)}")
  if step is not None and step not in steps:
    raise UserError(f"--step={step}: no such checkpoint under {checkpoint_dir(workdir)} "
                    f"(steps: {sorted(steps)})")
  wanted = max(steps) if step is None else step
  found, loaded, damaged = intact_step(manager, lambda s: _read_params(manager, s, dtype), wanted)
  if damaged:
    hint = (f"the newest intact step is {found}: pass --step={found}" if found is not None
            else "no older step is intact")
    raise UserError(f"checkpoint step {damaged[0][0]} in {checkpoint_dir(workdir)} is damaged "
                    f"({damaged[0][1]}); {hint}")
  return (*loaded, found)
