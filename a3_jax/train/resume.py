"""Resuming a run from its own checkpoints, damaged ones set aside."""

from __future__ import annotations

import jax

from a3_jax import checkpoint as ckpt
from a3_jax.errors import UserError
from a3_jax.train.config import Job, TrainConfig
from a3_jax.train.state import init_state
from a3_jax.train.console import warn


def resume(job: Job, tc: TrainConfig, mesh, model_config, shardings, data_iter,
           tokenizer_id: str):
  """(manager, resume step or None, restored state or None).

  The checkpoint's architecture, tokenizer (`tokenizer_id`: its fingerprint), data,
  sequence length and batch size must be this run's (checkpoint.check_settings); the
  ones named by --allow_change may differ, and the data iterator then starts afresh.

  The newest intact checkpoint is restored (with the data iterator's position); newer
  damaged ones are named, moved to WORKDIR/damaged_checkpoints/ and the fallback said.
  If every one is damaged the run is refused rather than started over.
  """
  manager = ckpt.make_manager(job.workdir, job.max_to_keep)
  if manager.latest_step() is None:
    return manager, None, None
  shapes = jax.eval_shape(lambda: init_state(model_config, tc, jax.random.key(0), mesh))
  target = ckpt.abstract_like(shapes, shardings)

  settings = {"tokenizer": tokenizer_id, "data": job.data, "seq_len": job.seq_len,
              "batch_size": job.batch_size}

  def load(step):
    meta = ckpt.read_meta(manager, step)
    ckpt.check_compatible(meta, model_config, job.workdir)
    changed = ckpt.check_settings(meta, settings, job.allowed_changes, job.workdir)
    if changed:
      warn(f"--allow_change: {', '.join(f'{k} {meta[k]!r} -> {settings[k]!r}' for k in changed)}"
           "; the data stream starts afresh")
    return ckpt.restore(manager, step, target, None if changed else data_iter)

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
