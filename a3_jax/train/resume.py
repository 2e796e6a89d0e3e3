"""Resuming a run from its own checkpoints, damaged ones set aside."""

from __future__ import annotations

import jax

from a3_jax import checkpoint as ckpt
from a3_jax.errors import UserError
from a3_jax.train.config import Job, TrainConfig
from a3_jax.train.state import init_state
from a3_jax.train.console import warn


def resume(job: Job, tc: TrainConfig, mesh, model_config, shardings, data_iter):
  """(manager, resume step or None, restored state or None).

  The newest intact checkpoint is restored (with the data iterator's position); newer
  damaged ones are named, moved to WORKDIR/damaged_checkpoints/ and the fallback said.
  If every one is damaged the run is refused rather than started over.
  """
  manager = ckpt.make_manager(job.workdir, job.max_to_keep)
  if manager.latest_step() is None:
    return manager, None, None
  shapes = jax.eval_shape(lambda: init_state(model_config, tc, jax.random.key(0), mesh))
  target = ckpt.abstract_like(shapes, shardings)

  def load(step):
    ckpt.check_compatible(ckpt.read_meta(manager, step), model_config, job.workdir)
    return ckpt.restore(manager, step, target, data_iter)

  step, state, damaged = ckpt.intact_step(manager, load)
  if step is None:
    manager.close()
    raise UserError(f"every checkpoint in {ckpt.checkpoint_dir(job.workdir)} is damaged ("
                    + "; ".join(f"step {s}: {w}" for s, w in damaged)
                    + "); move checkpoints/ away to start over")
  if damaged:
    for bad, what in damaged:
      warn(f"checkpoint step {bad} in {manager.directory} is damaged: {what}")
    manager.close()
    ckpt.set_aside(job.workdir, [s for s, _ in damaged])
    manager = ckpt.make_manager(job.workdir, job.max_to_keep)
    warn(f"resuming from step {step}, the newest intact checkpoint")
  return manager, step, state
