"""`a3-dry-run --flagfile=F`: check a training flag file without hardware or weights.

Builds the model config, the abstract params and optimizer state with
`jax.eval_shape` on a fake CPU mesh of the flag file's size, shards them by the
rules, and prints bytes per device. Checks the grammar of --data and --eval_data
(data.spec) without reading any data. The model config is the one a3-train builds
(train.config.planned_config); an --init_from not reachable here is stood in by --preset.
With --compile it also lowers and compiles the train step for that mesh and prints
XLA's memory analysis (slow for big models).
Stdout: one JSON object; human text on stderr.
"""

from __future__ import annotations

import json
import math
import os
import sys

from absl import flags

from a3_jax.cli import common as cli
from a3_jax.cli import train as train_cli
from a3_jax.errors import UserError
from a3_jax.train.config import job_from_flags

F = flags.FlagValues()
F.append_flag_values(train_cli.F)  # the training flags the flag files use
flags.DEFINE_integer("devices", None, "fake devices (default: the --mesh product, or 8 with -1)",
                     flag_values=F)
flags.DEFINE_bool("compile", False, "also compile the train step and report its memory",
                  flag_values=F)


def _device_count(argv) -> int:
  """Parses the flags early: the CPU backend must know the device count before it starts,
  and a job that cannot fit its mesh is refused before thousands of fake devices exist
  (the CPU backend takes minutes to start 10,000). A malformed flag is main's to report."""
  from a3_jax.sharding import mesh_device_count, parse_mesh_spec
  from a3_jax.train.config import check_batch_rows
  try:
    F(argv, known_only=True)
  except (flags.Error, UnicodeDecodeError, OSError):
    F.unparse_flags()
    return 8  # main reports the malformed flag or flag file
  try:
    if F.devices is not None and F.devices < 1:
      raise UserError(f"--devices must be >= 1, got {F.devices}")
    count = F.devices or mesh_device_count(F.mesh)
    sizes = parse_mesh_spec(F.mesh, count)
    job = job_from_flags(F)  # refuses out-of-range numbers
    check_batch_rows(job, sizes["data"] * sizes["fsdp"])
    return count
  finally:
    F.unparse_flags()


def init_config(job):
  """(config of --init_from or None, note): a checkpoint not reachable from here (the
  paper's flag files name cluster paths) is stood in by --preset, and the note says so."""
  from a3_jax.config import get_preset
  from a3_jax.convert.loader import read_config
  if not job.init_from:
    return None, None
  try:
    return read_config(job.init_from), None
  except UserError as e:
    return get_preset(job.preset), (f"{job.init_from} not readable here ({e}); "
                                    f"--preset={job.preset} stands in for its config")


def report(job, compile_step: bool) -> dict:
  import jax
  import numpy as np
  from flax.linen import meta

  from a3_jax import sharding as shd
  from a3_jax.data.spec import parse as parse_data
  from a3_jax.grouping import parse_curriculum
  from a3_jax.train.config import planned_config, validate_mesh
  from a3_jax.train.state import boxed_state, state_shardings
  from a3_jax.train.step import make_train_step

  curriculum = parse_curriculum(job.curriculum)
  data = {name: [{"source": source.spec, "weight": weight} for source, weight in parse_data(spec)]
          for name, spec in (("data", job.data), ("eval_data", job.eval_data)) if spec}
  stand_in, note = init_config(job)
  model_config = planned_config(job, stand_in)
  mesh = shd.make_mesh(job.mesh)
  validate_mesh(job, mesh)
  tc = job.train_config
  with jax.set_mesh(mesh):
    abstract = jax.eval_shape(lambda k: meta.unbox(boxed_state(model_config, tc, k)),
                              jax.random.key(0))
    shardings = state_shardings(model_config, tc, mesh)

    def per_device(tree, shard_tree):
      total = 0
      for leaf, sh in zip(jax.tree.leaves(tree), jax.tree.leaves(shard_tree)):
        shape = sh.shard_shape(leaf.shape)
        total += math.prod(shape) * np.dtype(leaf.dtype).itemsize
      return total

    out = {"preset": job.preset, "model_config": model_config.to_dict(),
           "init_from_note": note, "mesh": dict(mesh.shape), "devices": mesh.size,
           "params": int(sum(math.prod(x.shape) for x in jax.tree.leaves(abstract.params))),
           "param_bytes_per_device": per_device(abstract.params, shardings.params),
           "opt_state_bytes_per_device": per_device(abstract.opt_state, shardings.opt_state),
           "stages": [s.name for s, _ in curriculum.stages], **data,
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


def main(argv: list[str] | None = None) -> int:
  """Needs as many devices as the flag file's mesh (`entry` makes fake CPU ones)."""
  with cli.user_errors("a3-dry-run"):
    args = cli.parse(F, argv, "a3-dry-run", __doc__)
    if args:
      raise UserError(f"unexpected arguments: {args}")
    result = report(job_from_flags(F), F.compile)
    if result["init_from_note"]:
      print(f"note: {result['init_from_note']}", file=sys.stderr)
    gib = 2.0 ** 30
    print(f"{result['preset']}: {result['params'] / 1e9:.2f}B params on {result['devices']} devices "
          f"{result['mesh']}: params {result['param_bytes_per_device'] / gib:.2f} GiB + optimizer "
          f"{result['opt_state_bytes_per_device'] / gib:.2f} GiB per device", file=sys.stderr)
    for name in ("data", "eval_data"):
      if name in result:
        print(f"--{name}: " + ", ".join(f"{c['source']} ({c['weight']:.0%})" for c in result[name]),
              file=sys.stderr)
    print(json.dumps(result))
  return 0


def entry():
  with cli.user_errors("a3-dry-run"):
    count = _device_count(sys.argv)
  os.environ["JAX_PLATFORMS"] = "cpu"
  import jax
  jax.config.update("jax_num_cpu_devices", count)
  sys.exit(main())


if __name__ == "__main__":
  entry()
