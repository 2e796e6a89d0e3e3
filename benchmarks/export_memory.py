"""Peak resident memory of exporting a training checkpoint: params only vs the whole state.

Writes the checkpoint of a model whose Adam state (two fp32 moments) is twice
its params, then exports it in a fresh process per reading and reports the
growth of that process's peak RSS over its peak after imports (VmHWM of
/proc/self/status: `resource.getrusage`'s ru_maxrss would do, but Linux carries
it over from the parent through fork and exec, so a child of a big process,
such as pytest, would start at its parent's size):
  params  a3-export as it is: orbax restores only the params subtree, cast to
          --dtype as it reads (checkpoint.restore_params)
  state   the reading a3-export had before: the whole train state restored onto
          one device, then its params kept (the baseline)

  python benchmarks/export_memory.py [--d_model 512 --num_layers 6] [--dtype bfloat16]

Last line: one JSON object (MiB) with params, state and export sizes beside the peaks.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile

MIB = 2.0 ** 20


def write_checkpoint(workdir: str, d_model: int, num_layers: int) -> dict:
  """A one-step checkpoint (all ones: memory does not depend on the values,
  and a zero chunk might not be stored) of a
  tiny-shaped model; returns the bytes of its params and of its whole state."""
  import jax
  import jax.numpy as jnp
  from flax.linen import meta

  from a3_jax import checkpoint as ckpt
  from a3_jax.config import PRESETS
  from a3_jax.data.pipeline import make_train_iterator
  from a3_jax.tokenizer import load_tokenizer, save_tokenizer
  from a3_jax.train.config import TrainConfig
  from a3_jax.train.state import boxed_state

  config = PRESETS["tiny"].replace(vocab_size=8192, d_model=d_model, num_layers=num_layers,
                                   num_heads=8, num_kv_heads=8, head_dim=d_model // 8,
                                   mlp_dim=3 * d_model)
  abstract = jax.eval_shape(lambda: meta.unbox(boxed_state(config, TrainConfig(),
                                                              jax.random.key(0))))
  state = jax.tree.map(lambda s: jnp.ones(s.shape, s.dtype), abstract)
  tokenizer = load_tokenizer(None)
  data = make_train_iterator("shakespeare", tokenizer, seq_len=32, batch_size=1, seed=0,
                             shard_index=0, shard_count=1)
  manager = ckpt.make_manager(workdir)
  ckpt.save(manager, 1, state, data, {"model_config": config.to_dict(), "seq_len": 32},
            force=True)
  manager.wait_until_finished()
  manager.close()
  save_tokenizer(tokenizer, workdir)

  def size(tree):
    return sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(tree))
  return {"params_bytes": size(state.params), "state_bytes": size(state)}


def _read_whole_state(workdir: str, step: int, dtype: str | None):
  """The baseline: every array of the state onto the first device, params kept."""
  import jax
  import orbax.checkpoint as ocp

  from a3_jax import checkpoint as ckpt
  manager = ckpt.open_manager(workdir)
  with ocp.StandardCheckpointer() as checkpointer:
    saved = checkpointer.metadata(manager.directory / str(step) / "state").item_metadata
  device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device), saved)
  restored = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(target)))
  params = restored["state"]["params"]
  return params, ckpt.read_meta(manager, step), step


def peak_rss_mib() -> float:
  """This process's peak resident memory (VmHWM), MiB."""
  with open("/proc/self/status") as f:
    line = next(l for l in f if l.startswith("VmHWM:"))
  return int(line.split()[1]) / 1024


def _child(workdir: str, out: str, dtype: str | None, read: str) -> None:
  """Exports in this process and prints the growth of its peak RSS (MiB) as JSON."""
  import jax

  from a3_jax import checkpoint, run_export
  from a3_jax.cli import export as export_cli  # noqa: F401 (its imports count in the baseline)
  jax.numpy.zeros(1).block_until_ready()
  if read == "state":
    run_export.restore_params = lambda w, s, d: _read_whole_state(w, 1, d)
  before = peak_rss_mib()
  run_export.export_run(workdir, out, dtype=dtype)
  del checkpoint
  print(json.dumps({"peak_growth_mib": peak_rss_mib() - before, "baseline_mib": before}))


def peak_growth(workdir: str, dtype: str | None, read: str = "params") -> float:
  """MiB by which one export's process grows its peak RSS past its imports."""
  out = tempfile.mkdtemp() + "/export"
  env = {**os.environ, "JAX_PLATFORMS": "cpu"}
  env.pop("XLA_FLAGS", None)
  proc = subprocess.run([sys.executable, os.path.abspath(__file__), "--child", workdir, out,
                         dtype or "", read], capture_output=True, text=True, env=env,
                        timeout=600)
  shutil.rmtree(os.path.dirname(out), ignore_errors=True)
  if proc.returncode:
    raise RuntimeError(proc.stderr[-3000:])
  return json.loads(proc.stdout.strip().splitlines()[-1])["peak_growth_mib"]


def main() -> None:
  if sys.argv[1:2] == ["--child"]:
    workdir, out, dtype, read = sys.argv[2:6]
    return _child(workdir, out, dtype or None, read)
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--d_model", type=int, default=512)
  parser.add_argument("--num_layers", type=int, default=6)
  parser.add_argument("--dtype", default="bfloat16", choices=["float32", "bfloat16"])
  args = parser.parse_args()
  with tempfile.TemporaryDirectory() as workdir:
    sizes = write_checkpoint(workdir, args.d_model, args.num_layers)
    result = {"params_mib": sizes["params_bytes"] / MIB, "state_mib": sizes["state_bytes"] / MIB,
              "export_mib": sizes["params_bytes"] / MIB / (2 if args.dtype == "bfloat16" else 1),
              "dtype": args.dtype}
    for read in ("state", "params"):
      result[f"peak_growth_{read}_mib"] = peak_growth(workdir, args.dtype, read)
    result["ratio_state_over_params"] = (result["peak_growth_state_mib"]
                                         / result["peak_growth_params_mib"])
  for key, value in result.items():
    print(f"{key:28s} {value:.1f}" if isinstance(value, float) else f"{key:28s} {value}")
  print(json.dumps(result))


if __name__ == "__main__":
  main()
