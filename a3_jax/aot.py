"""Ahead-of-time plans: a3-train's step compiled for a mesh's devices, read back per chip.

The devices may be fake CPU ones or the compile-only devices of an accelerator target
(targets.target_devices): the step is built by the train code's own builders from the
job, lowered on abstract arrays under the mesh (nothing is allocated) and compiled;
XLA's memory analysis then says what one chip holds. Model FLOPs come from flops.py
(XLA's cost analysis counts a scanned loop body once), and the roofline from the chip's
peak (flops.PEAK_BF16_FLOPS) and HBM (targets.CHIPS).
"""

from __future__ import annotations

import collections
import math
import os
import re

import jax
import numpy as np
from flax.linen import meta

from a3_jax import flops, targets
from a3_jax import sharding as shd
from a3_jax.errors import UserError

GIB = targets.GIB
_RESOURCE_EXHAUSTED = "RESOURCE_EXHAUSTED"


def init_config(job):
  """(config of --init_from or None, note): a checkpoint not reachable from here (the
  paper's flag files name cluster paths) is stood in by --preset, and the note says so."""
  from a3_jax.config import get_preset
  from a3_jax.convert.loader import parse_spec, read_config
  if not job.init_from:
    return None, None
  if os.path.exists(parse_spec(job.init_from)[1]):  # here, but unreadable: say so
    return read_config(job.init_from), None
  try:
    return read_config(job.init_from), None
  except UserError as e:
    return get_preset(job.preset), (f"{job.init_from} not readable here ({e}); "
                                    f"--preset={job.preset} stands in for its config")


def abstract(tree, shardings):
  """ShapeDtypeStructs of `tree` carrying `shardings` (what lower() needs, no arrays)."""
  return jax.tree.map(lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s),
                      tree, shardings)


def bytes_per_device(tree, shardings) -> int:
  total = 0
  for leaf, sh in zip(jax.tree.leaves(tree), jax.tree.leaves(shardings)):
    total += math.prod(sh.shard_shape(leaf.shape)) * np.dtype(leaf.dtype).itemsize
  return total


def memory(compiled) -> dict:
  """Bytes one device holds while the executable runs (XLA's memory analysis):
  arguments, outputs (less those aliasing donated arguments), temporaries and code."""
  m = compiled.memory_analysis()
  out = {"argument_bytes": int(m.argument_size_in_bytes),
         "output_bytes": int(m.output_size_in_bytes),
         "alias_bytes": int(m.alias_size_in_bytes),
         "temp_bytes": int(m.temp_size_in_bytes),
         "code_bytes": int(m.generated_code_size_in_bytes)}
  out["total_bytes"] = (out["argument_bytes"] + out["output_bytes"] - out["alias_bytes"]
                        + out["temp_bytes"] + out["code_bytes"])
  return out


def custom_calls(compiled) -> dict[str, int]:
  """{custom-call target: count} in the compiled HLO (tpu_custom_call = a Mosaic kernel)."""
  return dict(collections.Counter(
      re.findall(r'custom_call_target="([^"]+)"', compiled.as_text() or "")))


def compile_for(jitted, args, mesh, knobs: str, **static):
  """jitted.lower(*args, **static).compile() for the mesh's devices, traced under
  jax.set_mesh(mesh) as a3-train traces its step: eager array work anywhere in the
  step would fail here (compile-only devices hold no arrays). A plan too big for the
  chip: a UserError that names the `knobs`."""
  with jax.set_mesh(mesh), shd.axis_rules():
    lowered = jitted.lower(*args, **static)
  try:
    return lowered.compile()
  except Exception as e:  # XLA reports an allocation it cannot make as RESOURCE_EXHAUSTED
    if _RESOURCE_EXHAUSTED not in str(e):
      raise
    raise UserError(f"the plan does not fit: XLA: {_first_line(e)}; {knobs}") from None


def knobs(model_config, train: bool = True) -> str:
  """The settings that would lower a step's memory, less those already taken."""
  out = [] if model_config.remat == "full" else ["--model=remat=full"]
  if train:
    out.append("a larger --grad_accum")
  out.append("more fsdp in --mesh" if train else "more chips in --mesh")
  if model_config.attention == "einsum":
    out.append("--model=attention=chunked (or kernel, for one group size)")
  return "try " + ", ".join(out)


def _first_line(e: Exception) -> str:
  text = str(e).strip()
  return text.splitlines()[0][:300] if text else type(e).__name__


def check_fits(report: dict, knobs: str) -> None:
  """A UserError in one line when the per-chip total exceeds the chip's HBM."""
  hbm = report.get("hbm_bytes")
  if hbm and report["total_bytes"] > hbm:
    raise UserError(
        f"the plan does not fit: {report['total_bytes'] / GIB:.1f} GiB per chip "
        f"(arguments {report['argument_bytes'] / GIB:.1f} + temporaries "
        f"{report['temp_bytes'] / GIB:.1f}) > {hbm / GIB:.1f} GiB of HBM on "
        f"{report['device_kind']}; {knobs}")


def check_state_fits(report: dict) -> None:
  """A UserError when the parameters and optimizer state alone exceed the chip's HBM."""
  hbm = report.get("hbm_bytes")
  state = report["param_bytes_per_device"] + report["opt_state_bytes_per_device"]
  if hbm and state > hbm:
    raise UserError(
        f"the plan does not fit: parameters and optimizer state alone are "
        f"{state / GIB:.1f} GiB per chip > {hbm / GIB:.1f} GiB of HBM on "
        f"{report['device_kind']}; shard them over more chips (fsdp in --mesh) or a larger slice")


def stage_flops(model_config, job, curriculum, objective: str) -> list[dict]:
  """Model FLOPs of one step of each curriculum stage and the steps it runs for in a
  run of job.steps."""
  tokens = job.batch_size * job.seq_len
  return [{"stage": strategy.name, "steps": steps,
           "flops_per_step": tokens * flops.flops_per_token(model_config, job.seq_len,
                                                            strategy, objective)}
          for strategy, steps in curriculum.steps_run(job.steps)]


def roofline(report: dict, stages: list[dict], tokens_per_step: int, mfu: float) -> dict:
  """Step time at the chips' peak and, at `mfu`, tokens/s per chip and the run's wall
  time; None where the peak is unknown (a CPU)."""
  peak, chips = report.get("peak_flops"), report["devices"]
  run_steps = sum(s["steps"] for s in stages)
  run_flops = sum(s["steps"] * s["flops_per_step"] for s in stages)
  mean_step_flops = run_flops / max(run_steps, 1)
  out = {"model_flops_per_step": mean_step_flops, "mfu_assumed": mfu}
  if peak:
    out["step_seconds_at_peak"] = mean_step_flops / (peak * chips)
    out["tokens_per_s_per_chip_at_mfu"] = tokens_per_step * mfu * peak / mean_step_flops
    out["run_seconds_at_mfu"] = run_flops / (mfu * peak * chips)
  return out


def device_facts(device) -> dict:
  chip = targets.chip_of(device)
  return {"platform": device.platform, "device_kind": device.device_kind,
          "hbm_bytes": chip.hbm_bytes if chip else None,
          "hbm_bytes_per_s": chip.hbm_bytes_per_s if chip else None,
          "chip_facts_source": chip.source if chip else None,
          "peak_flops": flops.device_peak_flops(device)}


def train_plan(job, devices, *, compile_step: bool, mfu: float = 0.4) -> dict:
  """What a3-train would hold per device for `job` on `devices`: parameter and optimizer
  bytes by the sharding rules; with `compile_step`, XLA's memory analysis of the real
  step, its custom calls, and the roofline. Refuses (UserError) a plan that does not fit."""
  from a3_jax.data.spec import parse as parse_data
  from a3_jax.grouping import parse_curriculum
  from a3_jax.train.config import planned_config, validate_mesh
  from a3_jax.train.state import boxed_state, state_shardings
  from a3_jax.train.step import make_train_step

  curriculum = parse_curriculum(job.curriculum)
  data = {name: [{"source": source.spec, "weight": weight} for source, weight in parse_data(spec)]
          for name, spec in (("data", job.data), ("eval_data", job.eval_data)) if spec}
  stand_in, note = init_config(job)
  mesh = shd.make_mesh(job.mesh, devices)
  model_config = planned_config(job, stand_in, platform=shd.mesh_platform(mesh))
  validate_mesh(job, mesh)
  tc = job.train_config
  key = jax.eval_shape(jax.random.key, 0)
  state = jax.eval_shape(lambda k: meta.unbox(boxed_state(model_config, tc, k)), key)
  shardings = state_shardings(model_config, tc, mesh)
  out = {"preset": job.preset, "model_config": model_config.to_dict(), "init_from_note": note,
         "mesh": dict(mesh.shape), "devices": mesh.size, **device_facts(mesh.devices.flat[0]),
         "params": int(sum(math.prod(x.shape) for x in jax.tree.leaves(state.params))),
         "param_bytes_per_device": bytes_per_device(state.params, shardings.params),
         "opt_state_bytes_per_device": bytes_per_device(state.opt_state, shardings.opt_state),
         "stages": [s.name for s, _ in curriculum.stages], **data,
         "global_batch_tokens": job.batch_size * job.seq_len,
         "grad_accum": tc.grad_accum}
  if not compile_step:
    return out
  check_state_fits(out)  # before a compile of minutes that cannot succeed
  step = make_train_step(model_config, tc, curriculum, mesh, shardings)
  batch = {k: jax.ShapeDtypeStruct((job.batch_size, job.seq_len), np.int32,
                                   sharding=shd.batch_sharding(mesh))
           for k in ("tokens", "segment_ids", "positions")}
  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  args = (abstract(state, shardings), batch,
          jax.ShapeDtypeStruct(key.shape, key.dtype, sharding=replicated))
  compiled = compile_for(step.jitted, args, mesh, knobs(model_config))
  out.update(memory(compiled))
  out["custom_calls"] = custom_calls(compiled)
  out["param_specs"] = {jax.tree_util.keystr(path): str(s.spec) for path, s in
                        jax.tree_util.tree_flatten_with_path(compiled.input_shardings[0][0].params)[0]}
  if out["hbm_bytes"]:
    out["headroom_bytes"] = out["hbm_bytes"] - out["total_bytes"]
  stages = stage_flops(model_config, job, curriculum, tc.objective)
  out["stage_flops"] = stages
  out.update(roofline(out, stages, job.batch_size * job.seq_len, mfu))
  check_fits(out, knobs(model_config))
  return out


def decode_plan(job, devices, *, group_size: int, prompt_len: int, mfu: float = 0.4) -> dict:
  """a3-generate's cached group decoder (decoding.group, form 'cached') compiled for
  `devices`: job.batch_size rows of job.seq_len tokens, the first `prompt_len` known,
  the rest committed `group_size` per step; params sharded by the rules on --mesh.

  The roofline is memory-bound: every step each chip reads the weights it computes
  with (all of them, gathered, unless split over `tensor`) and its share of the KV
  cache. `mfu` is unused (decoding is not FLOP-bound); kept for one call shape."""
  del mfu
  from a3_jax.decoding import group as group_decoding
  from a3_jax.decoding import loop as decode_loop
  from a3_jax.decoding import sampling
  from a3_jax.model import init_params

  b, t = job.batch_size, job.seq_len
  if not 0 < prompt_len < t:
    raise UserError(f"--prompt_len must lie in [1, --seq_len={t}), got {prompt_len}")
  if not 1 <= group_size <= t - prompt_len:
    raise UserError(f"--group_size must lie in [1, {t - prompt_len}] (the blanks), "
                    f"got {group_size}")
  stand_in, note = init_config(job)
  mesh = shd.make_mesh(job.mesh, devices)
  config = _decode_config(job, stand_in, shd.mesh_platform(mesh))
  boxed = jax.eval_shape(lambda k: init_params(config, k), jax.eval_shape(jax.random.key, 0))
  params = meta.unbox(boxed)
  param_shardings = shd.param_shardings(boxed, mesh)
  rows = shd.batch_sharding(mesh)
  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  scalar = lambda dtype: jax.ShapeDtypeStruct((), dtype, sharding=replicated)
  sampler = tuple(scalar(x.dtype) for x in sampling.sampler_arrays(sampling.SamplerConfig()))
  known = np.arange(t) < prompt_len
  args = (abstract(params, param_shardings),
          jax.ShapeDtypeStruct((b, t), np.int32, sharding=rows),
          jax.ShapeDtypeStruct((b, t), np.int32, sharding=rows), scalar(np.int32),
          jax.ShapeDtypeStruct((b,), np.int32, sharding=jax.sharding.NamedSharding(
              mesh, shd.logical_to_spec(("act_batch",), (b,), mesh))),
          sampler, scalar(np.int32), scalar(np.int32))
  compiled = compile_for(group_decoding._decode_groups, args, mesh,
                         knobs(config, train=False), config=config,
                         group_size=group_size, form="cached",
                         num_known=decode_loop.prefill_size(known[None]))
  out = {"what": "decode", "preset": job.preset, "model_config": config.to_dict(),
         "init_from_note": note, "mesh": dict(mesh.shape), "devices": mesh.size,
         **device_facts(mesh.devices.flat[0]), "batch": b, "seq_len": t,
         "prompt_len": prompt_len, "group_size": group_size,
         "steps": -(-(t - prompt_len) // group_size),
         "param_bytes_per_device": bytes_per_device(params, param_shardings),
         **memory(compiled), "custom_calls": custom_calls(compiled)}
  # The cache [L, B, C, K, H] splits as the rows and kv heads do; the weights a chip
  # reads split only as the heads do (fsdp shards are gathered before use).
  rows_split, heads_split = (_ways(entry, mesh) for entry in shd.logical_to_spec(
      ("act_batch", "act_heads"), (b, config.num_kv_heads), mesh))
  weights_read = bytes_per_device(params, jax.tree.map(lambda _: replicated, params)) / heads_split
  cache = (2 * config.num_layers * b * t * config.num_kv_heads * config.head_dim
           * config.compute_dtype.itemsize / (rows_split * heads_split))
  out.update(weights_read_bytes_per_step=weights_read, cache_bytes_per_device=cache)
  if out["hbm_bytes"]:
    out["headroom_bytes"] = out["hbm_bytes"] - out["total_bytes"]
    step = (weights_read + cache) / out["hbm_bytes_per_s"]
    out.update(step_seconds_memory_bound=step,
               tokens_per_s_per_chip=b * group_size / step / mesh.size)
  check_fits(out, knobs(config, train=False))
  return out


def _ways(spec_entry, mesh) -> int:
  """Into how many shards one PartitionSpec entry splits its dimension."""
  axes = spec_entry if isinstance(spec_entry, tuple) else (spec_entry,)
  return math.prod(mesh.shape[a] for a in axes if a is not None)


def _decode_config(job, stand_in, platform: str):
  """The model config a3-generate decodes with: a3-train's for this job, whose runtime
  fields (attention, remat, ...) decoding takes from the export."""
  from a3_jax.train.config import planned_config
  return planned_config(job, stand_in, platform=platform)
