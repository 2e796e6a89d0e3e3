"""`a3-dry-run --flagfile=F`: check a training flag file without hardware or weights.

  a3-dry-run --flagfile=experiments/paper/llama3.2-1b_v5p.flags --topology=v5p:2x4x4
  a3-dry-run --preset=tiny --mesh=fsdp:8 --topology=h100:8 --json

Builds the model config, the abstract params and optimizer state (`jax.eval_shape`)
and shards them by the rules: bytes per device. Checks the grammar of --data and
--eval_data (data.spec) without reading any data. The model config and the step are
a3-train's own (train.config.planned_config, train.step.make_train_step); an
--init_from not reachable here is stood in by --preset. Without --topology the
devices are fake CPU ones (as many as --mesh names).

--topology=NAME compiles the real train step ahead of time for a target's devices,
on this host: TPU slices as libtpu names them (v5p:2x2x1, v5p:4x4x4, v5e:2x2, v4:2x2x1,
v6e:16x16; needs the [tpu-aot] extra) or GPUs as MODEL:N (one host of N) or
MODEL:SLICESxHOSTSxDEVICES, MODEL one of a100, h100, h200 (needs [gpu-aot]). It
prints per chip the argument, output, temp and code bytes, the chip's HBM and the
headroom, model FLOPs per step (flops.py), the step time at peak, tokens/s per chip
and the run's wall time at --mfu. A plan that does not fit exits 2 in one line.
--compile compiles for the fake CPU devices instead (memory analysis only).
--json: stdout is one JSON object (the human lines go to stderr).
"""

from __future__ import annotations

import json
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
flags.DEFINE_string("topology", None, "compile for this accelerator target's devices "
                    "(v5p:2x2x1, v5e:16x16, h100:8, h200:1x2x8, a100:8; see --help)",
                    flag_values=F)
flags.DEFINE_float("mfu", 0.4, "model FLOPs utilisation assumed for tokens/s and wall time",
                   flag_values=F)
flags.DEFINE_enum("what", "train", ["train", "decode"], "train: a3-train's step; decode: "
                  "a3-generate's cached group decoder for --batch_size rows of --seq_len",
                  flag_values=F)
flags.DEFINE_integer("group_size", 1, "--what=decode: tokens committed per step", flag_values=F)
flags.DEFINE_integer("prompt_len", None, "--what=decode: known tokens per row (default: half "
                     "of --seq_len)", flag_values=F)
flags.DEFINE_bool("json", False, "stdout: one JSON object (the human lines go to stderr)",
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
    if F.topology:
      return 1  # the target's devices are compile-only; the CPU runtime needs one
    if F.devices is not None and F.devices < 1:
      raise UserError(f"--devices must be >= 1, got {F.devices}")
    count = F.devices or mesh_device_count(F.mesh)
    sizes = parse_mesh_spec(F.mesh, count)
    job = job_from_flags(F)  # refuses out-of-range numbers
    check_batch_rows(job, sizes["data"] * sizes["fsdp"])
    return count
  finally:
    F.unparse_flags()


def _decode_lines(r: dict) -> list[str]:
  gib = 2.0 ** 30
  lines = [f"{r['preset']} decoding {r['batch']} rows of {r['seq_len']} ({r['prompt_len']} "
           f"known, {r['group_size']} per step, {r['steps']} steps) on {r['devices']} "
           f"{r['device_kind']} devices {r['mesh']}: params {r['param_bytes_per_device'] / gib:.2f}"
           f" GiB, KV cache {r['cache_bytes_per_device'] / gib:.2f} GiB per device",
           f"compiled decoder per device: total {r['total_bytes'] / gib:.2f} GiB (temporaries "
           f"{r['temp_bytes'] / gib:.2f})" + (f" of {r['hbm_bytes'] / gib:.1f} GiB HBM, headroom "
                                              f"{r['headroom_bytes'] / gib:.1f} GiB"
                                              if r["hbm_bytes"] else "")]
  if "step_seconds_memory_bound" in r:
    lines.append(f"memory-bound roofline: {r['step_seconds_memory_bound'] * 1e3:.2f} ms per step "
                 f"(weights {r['weights_read_bytes_per_step'] / gib:.2f} GiB + cache read), "
                 f"{r['tokens_per_s_per_chip']:,.0f} tokens/s per chip")
  return lines


def _lines(r: dict) -> list[str]:
  """The human summary of a plan."""
  if r.get("what") == "decode":
    return _decode_lines(r)
  gib = 2.0 ** 30
  lines = [f"{r['preset']}: {r['params'] / 1e9:.2f}B params on {r['devices']} "
           f"{r['device_kind']} devices {r['mesh']}: params "
           f"{r['param_bytes_per_device'] / gib:.2f} GiB + optimizer "
           f"{r['opt_state_bytes_per_device'] / gib:.2f} GiB per device"]
  for name in ("data", "eval_data"):
    if name in r:
      lines.append(f"--{name}: " + ", ".join(f"{c['source']} ({c['weight']:.0%})"
                                             for c in r[name]))
  if "total_bytes" in r:
    hbm = (f" of {r['hbm_bytes'] / gib:.1f} GiB HBM, headroom {r['headroom_bytes'] / gib:.1f} GiB"
           if r["hbm_bytes"] else "")
    lines.append(f"compiled step per device: arguments {r['argument_bytes'] / gib:.2f} GiB, "
                 f"outputs {r['output_bytes'] / gib:.2f} (aliased {r['alias_bytes'] / gib:.2f}), "
                 f"temporaries {r['temp_bytes'] / gib:.2f}, code {r['code_bytes'] / gib:.3f}: "
                 f"total {r['total_bytes'] / gib:.2f} GiB{hbm}")
    calls = ", ".join(f"{k} x{v}" for k, v in sorted(r["custom_calls"].items())) or "none"
    lines.append(f"custom calls: {calls}")
    lines.append(f"model FLOPs per step {r['model_flops_per_step']:.3g} (flops.py, mean over "
                 f"the run's stages)")
    if "step_seconds_at_peak" in r:
      lines.append(f"roofline: {r['step_seconds_at_peak']:.3f} s per step at peak; at "
                   f"{r['mfu_assumed']:.0%} MFU {r['tokens_per_s_per_chip_at_mfu']:,.0f} "
                   f"tokens/s per chip, the run ({sum(s['steps'] for s in r['stage_flops'])} "
                   f"steps) {r['run_seconds_at_mfu'] / 3600:.2f} h")
  return lines


def main(argv: list[str] | None = None) -> int:
  """Without --topology, needs as many devices as the flag file's mesh (`entry` makes
  fake CPU ones)."""
  with cli.user_errors("a3-dry-run"):
    args = cli.parse(F, argv, "a3-dry-run", __doc__)
    if args:
      raise UserError(f"unexpected arguments: {args}")
    if not 0 < F.mfu <= 1:
      raise UserError(f"--mfu must be in (0, 1], got {F.mfu}")
    from a3_jax import aot, targets
    job = job_from_flags(F)
    if F.topology:
      targets.prepare_environment()  # libtpu reads these when it first loads
      devices = targets.target_devices(F.topology)
    else:
      import jax
      devices = jax.devices()
    if F.what == "decode":
      result = aot.decode_plan(job, devices, group_size=F.group_size,
                               prompt_len=F.prompt_len or job.seq_len // 2)
    else:
      result = aot.train_plan(job, devices, compile_step=F.compile or bool(F.topology),
                              mfu=F.mfu)
    human = sys.stderr if F.json else sys.stdout
    if result["init_from_note"]:
      print(f"note: {result['init_from_note']}", file=sys.stderr)
    for line in _lines(result):
      print(line, file=human)
    if F.json:
      print(json.dumps(result))
  return 0


def entry():
  with cli.user_errors("a3-dry-run"):
    count = _device_count(sys.argv)
  from a3_jax import targets
  targets.prepare_environment()
  import jax
  jax.config.update("jax_num_cpu_devices", count)
  sys.exit(main())


if __name__ == "__main__":
  entry()
