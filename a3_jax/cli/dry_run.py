"""`a3-dry-run --flagfile=F`: check a training flag file without hardware or weights.

Builds the model config, the abstract params and optimizer state with
`jax.eval_shape` on a fake CPU mesh of the flag file's size, shards them by the
rules, and prints bytes per device. With --compile it also lowers and compiles
the train step for that mesh and prints XLA's memory analysis (slow for big models).
Last line: one JSON object.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import sys

from absl import flags
from a3_jax.errors import UserError

flags.DEFINE_integer("devices", None, "fake devices (default: the --mesh product, or 8 with -1)")
flags.DEFINE_bool("compile", False, "also compile the train step and report its memory")


def _mesh_devices(spec: str) -> int:
  """Devices a mesh spec names (8 when an axis is -1); malformed specs: UserError."""
  from a3_jax.sharding import parse_mesh_spec
  try:
    sizes = [int(item.partition(":")[2]) for item in spec.split(",") if item.strip()]
  except ValueError:
    parse_mesh_spec(spec, 1)  # raises the malformed-spec message
    raise
  if -1 in sizes:
    return 8
  if any(size < 1 for size in sizes):
    parse_mesh_spec(spec, 1)
  return math.prod(sizes)


def _device_count(argv) -> int:
  """Parses the flags early: the CPU backend must know the device count before it starts,
  and a job that cannot fit its mesh is refused before thousands of fake devices exist."""
  from a3_jax.cli.train import job_from_flags
  from a3_jax.sharding import parse_mesh_spec
  from a3_jax.trainer import check_numbers
  try:
    flags.FLAGS(argv, known_only=True)
  except UnicodeDecodeError as e:
    raise UserError(f"--flagfile is not a text file ({e.reason} at byte {e.start})") from None
  except OSError as e:
    raise UserError(f"--flagfile: {e}") from None
  F = flags.FLAGS
  if F.devices is not None and F.devices < 1:
    raise UserError(f"--devices must be >= 1, got {F.devices}")
  count = F.devices or _mesh_devices(F.mesh)
  sizes = parse_mesh_spec(F.mesh, count)
  job = job_from_flags()
  check_numbers(job)
  rows = sizes["data"] * sizes["fsdp"]
  if job.batch_size % (rows * job.train.grad_accum):
    raise UserError(f"--batch_size={job.batch_size} must be divisible by data*fsdp "
                    f"({rows}) * grad_accum ({job.train.grad_accum})")
  return count


def report(job, compile_step: bool) -> dict:
  import jax
  import numpy as np
  from flax.linen import meta

  from a3_jax import sharding as shd
  from a3_jax.config import get_preset
  from a3_jax.grouping import parse_curriculum
  from a3_jax.train_step import _boxed_state, make_train_step, state_shardings
  from a3_jax.trainer import _validate, model_config_for

  curriculum = parse_curriculum(job.curriculum)
  model_config = model_config_for(job, get_preset(job.preset).vocab_size)
  mesh = shd.make_mesh(job.mesh)
  _validate(job, model_config, mesh)
  tc = dataclasses.replace(job.train, total_steps=job.steps)
  with jax.set_mesh(mesh):
    abstract = jax.eval_shape(lambda k: meta.unbox(_boxed_state(model_config, tc, k)),
                              jax.random.key(0))
    shardings = state_shardings(model_config, tc, mesh)

    def per_device(tree, shard_tree):
      total = 0
      for leaf, sh in zip(jax.tree.leaves(tree), jax.tree.leaves(shard_tree)):
        shape = sh.shard_shape(leaf.shape)
        total += math.prod(shape) * np.dtype(leaf.dtype).itemsize
      return total

    out = {"preset": job.preset, "mesh": dict(mesh.shape), "devices": mesh.size,
           "params": int(sum(math.prod(x.shape) for x in jax.tree.leaves(abstract.params))),
           "param_bytes_per_device": per_device(abstract.params, shardings.params),
           "opt_state_bytes_per_device": per_device(abstract.opt_state, shardings.opt_state),
           "stages": [s.name for s, _ in curriculum.stages],
           "global_batch_tokens": job.batch_size * job.seq_len}
    if compile_step:
      step = make_train_step(model_config, tc, curriculum, mesh, shardings)
      local = job.batch_size
      batch = {k: jax.ShapeDtypeStruct((local, job.seq_len), np.int32,
                                       sharding=shd.batch_sharding(mesh))
               for k in ("tokens", "segment_ids", "positions")}
      state = jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                           abstract, shardings)
      with shd.axis_rules():
        mem = step.jitted.lower(state, batch, jax.random.key(0)).compile().memory_analysis()
      out["compiled_temp_bytes_per_device"] = int(mem.temp_size_in_bytes)
      out["compiled_argument_bytes_per_device"] = int(mem.argument_size_in_bytes)
  return out


def main(argv):
  from a3_jax.cli import common as cli
  from a3_jax.cli.train import job_from_flags
  with cli.user_errors("a3-dry-run"):
    if len(argv) > 1:
      raise UserError(f"unexpected arguments: {argv[1:]}")
    result = report(job_from_flags(), flags.FLAGS.compile)
    gib = 2.0 ** 30
    print(f"{result['preset']}: {result['params'] / 1e9:.2f}B params on {result['devices']} devices "
          f"{result['mesh']}: params {result['param_bytes_per_device'] / gib:.2f} GiB + optimizer "
          f"{result['opt_state_bytes_per_device'] / gib:.2f} GiB per device")
    print(json.dumps(result))


def entry():
  import a3_jax.cli.train  # noqa: F401  (defines the training flags the flag files use)
  from a3_jax.cli import common as cli
  with cli.user_errors("a3-dry-run"):
    try:
      count = _device_count(sys.argv)
    except flags.Error as e:
      raise UserError(str(e).splitlines()[0].replace("ERROR:: ", "")) from None
  os.environ["JAX_PLATFORMS"] = "cpu"
  import jax
  jax.config.update("jax_num_cpu_devices", count)
  cli.run_app(main)


if __name__ == "__main__":
  entry()
