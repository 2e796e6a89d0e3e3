"""Orbax checkpoints of a training run: state, data-iterator state and run metadata.

One CheckpointManager per workdir (`WORKDIR/checkpoints`), Composite items:
  state  StandardSave of the TrainState (params, optimizer state, step), sharded
  data   grain.checkpoint.CheckpointSave of the data iterator
  meta   JsonSave of the model config and the settings a resume must agree on
Saves are asynchronous; a resumed run restores straight into the mesh shardings.
"""

from __future__ import annotations

import os
from typing import Any

import grain
import jax
import orbax.checkpoint as ocp
from etils import epath

from a3_jax.config import ModelConfig, architecture_diff
from a3_jax.errors import UserError


def checkpoint_dir(workdir: str) -> epath.Path:
  """WORKDIR/checkpoints: gs:// and other URIs as given, local paths made absolute."""
  return epath.Path(workdir if "://" in workdir else os.path.abspath(workdir)) / "checkpoints"


def make_manager(workdir: str, max_to_keep: int = 3, save_every: int | None = None
                 ) -> ocp.CheckpointManager:
  options = ocp.CheckpointManagerOptions(
      max_to_keep=max_to_keep, create=True, enable_async_checkpointing=True,
      save_interval_steps=1 if save_every is None else save_every)
  return ocp.CheckpointManager(checkpoint_dir(workdir),
                               options=options, item_names=("state", "data", "meta"))


def has_checkpoint(workdir: str) -> bool:
  """Whether workdir holds a finished checkpoint (creates nothing)."""
  directory = checkpoint_dir(workdir)
  return directory.exists() and make_manager(workdir).latest_step() is not None


def save(manager: ocp.CheckpointManager, step: int, state, data_iterator, meta: dict,
         force: bool = False) -> bool:
  """Starts an async save of everything a resume needs; returns whether it saved."""
  args = ocp.args.Composite(
      state=ocp.args.StandardSave(state),
      data=grain.checkpoint.CheckpointSave(data_iterator),
      meta=ocp.args.JsonSave(meta))
  return manager.save(step, args=args, force=force)


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


def restore(manager: ocp.CheckpointManager, step: int, abstract_state, data_iterator):
  """Restores the state into the shardings of `abstract_state` (ShapeDtypeStructs
  with .sharding) and the data iterator in place; returns the state."""
  restored = manager.restore(step, args=ocp.args.Composite(
      state=ocp.args.StandardRestore(abstract_state),
      data=grain.checkpoint.CheckpointRestore(data_iterator)))
  return restored["state"]


def abstract_like(state_shapes: Any, shardings: Any):
  """ShapeDtypeStructs carrying shardings, the restore target orbax wants."""
  return jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh),
                      state_shapes, shardings)


def restore_params(workdir: str, step: int | None = None):
  """Params and meta of a run's latest (or given) checkpoint, without optimizer state."""
  manager = make_manager(workdir)
  step = manager.latest_step() if step is None else step
  if step is None:
    raise UserError(f"no checkpoint found under {checkpoint_dir(workdir)}")
  meta = read_meta(manager, step)
  # The saved shardings name the devices of the run that wrote them (on a pod,
  # other hosts' too): read every array onto this process's first device.
  with ocp.StandardCheckpointer() as checkpointer:
    saved = checkpointer.metadata(manager.directory / str(step) / "state").item_metadata
  device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device), saved)
  restored = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(target)))
  return restored["state"]["params"], meta, step
