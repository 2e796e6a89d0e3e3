"""The A3 step of a curriculum with a 'causal' stage vs the same curriculum without it:
XLA's compiled temp memory (`memory_analysis()`) and the median step time, timed
alternately so that machine noise hits both alike.

A curriculum with a 'causal' stage once trained it as a `lax.cond` inside the gradient
(both branches' residuals kept); now each objective is its own program. Run the script
against checkouts side by side (each in its own process, alternating, `--checkouts`) to
compare the two forms: a checkout without `a3_jax.train` runs its `train_step.py`.
Last line: one JSON object.

  python benchmarks/causal_stage.py [--preset=small] [--batch=8] [--seq_len=256] [--iters=10]
      [--checkouts=/work/main,.] [--rounds=1]
"""

from __future__ import annotations

import os
import subprocess
import sys

from a3_jax import cpu_tuning

cpu_tuning.apply()  # before JAX starts: the tuning a3-train applies

import json
import statistics
import time

import jax
import jax.numpy as jnp
from absl import app, flags
from batches import one_document_rows

from a3_jax import sharding as shd
from a3_jax.config import get_preset
from a3_jax.grouping import parse_curriculum

try:  # this checkout
  from a3_jax.train.config import Job, TrainConfig
  from a3_jax.train.state import init_state, state_shardings
  from a3_jax.train.step import make_train_step
except ImportError:  # a checkout before a3_jax/train/ (the cond-in-gradient step)
  from a3_jax.train_step import TrainConfig, init_state, make_train_step, state_shardings
  from a3_jax.trainer import Job

_PRESET = flags.DEFINE_string("preset", "small", "model preset")
_BATCH = flags.DEFINE_integer("batch", 8, "rows per step")
_SEQ = flags.DEFINE_integer("seq_len", 256, "tokens per row")
_ITERS = flags.DEFINE_integer("iters", 10, "timed A3 steps per curriculum")
_CHECKOUTS = flags.DEFINE_list("checkouts", [], "repository roots to compare, each run in "
                               "its own process with PYTHONPATH=ROOT (default: this process)")
_ROUNDS = flags.DEFINE_integer("rounds", 1, "with --checkouts: runs of each, alternating")

WITH_CAUSAL = Job().curriculum  # the default run's
WITHOUT_CAUSAL = ",".join(s for s in WITH_CAUSAL.split(",") if not s.startswith("causal:"))
A3_STEP = 600  # inside the last (A3) stage of both


def _setup(cfg, curriculum: str, batch, mesh):
  """(state at A3_STEP, step, temp bytes of the program that step runs)."""
  tc = TrainConfig(total_steps=700)
  shardings = state_shardings(cfg, tc, mesh)
  state = init_state(cfg, tc, jax.random.key(0), mesh)
  state = state.replace(step=jax.device_put(jnp.asarray(A3_STEP, jnp.int32), shardings.step))
  step = make_train_step(cfg, tc, parse_curriculum(curriculum), mesh, shardings)
  with shd.axis_rules():
    memory = step.jitted.lower(state, batch, jax.random.key(1)).compile().memory_analysis()
  return state, step, int(memory.temp_size_in_bytes)


def _measure() -> dict:
  cfg = get_preset(_PRESET.value, scan_layers=False)  # unrolled, as a3-train on CPU
  mesh = shd.make_mesh("data:-1")
  b, t = _BATCH.value, _SEQ.value
  host = one_document_rows(cfg.vocab_size, b, t)
  names = {"with_causal": WITH_CAUSAL, "without_causal": WITHOUT_CAUSAL}
  with jax.set_mesh(mesh):
    batch = shd.shard_batch(host, mesh)
    runs = {name: list(_setup(cfg, spec, batch, mesh)) for name, spec in names.items()}
    times = {name: [] for name in names}
    for i in range(_ITERS.value + 1):  # the first (compiling) step untimed
      for name, run in runs.items():
        t0 = time.perf_counter()
        run[0], metrics = run[1](run[0], batch, jax.random.key(1))
        jax.block_until_ready(metrics["loss"])
        if i:
          times[name].append(time.perf_counter() - t0)
  out = {"a3_jax": os.path.dirname(os.path.dirname(sys.modules["a3_jax"].__file__)),
         "preset": _PRESET.value, "batch": b, "seq_len": t, "iters": _ITERS.value}
  for name, run in runs.items():
    out[f"{name}_ms"] = round(1e3 * statistics.median(times[name]), 1)
    out[f"{name}_temp_mib"] = round(run[2] / 2**20, 1)
  out["time_ratio"] = round(out["with_causal_ms"] / out["without_causal_ms"], 3)
  out["temp_ratio"] = round(out["with_causal_temp_mib"] / out["without_causal_temp_mib"], 3)
  return out


def _compare(checkouts: list[str]) -> dict:
  """Each checkout in its own process (one a3_jax per process), alternating rounds."""
  own = [a for a in sys.argv[1:] if not a.startswith(("--checkouts", "--rounds"))]
  results = {os.path.abspath(c): [] for c in checkouts}
  for _ in range(_ROUNDS.value):
    for c in results:
      env = dict(os.environ, PYTHONPATH=c)
      proc = subprocess.run([sys.executable, os.path.abspath(__file__), *own], env=env,
                            capture_output=True, text=True, check=True)
      results[c].append(json.loads(proc.stdout.strip().splitlines()[-1]))
  keys = ("with_causal_ms", "without_causal_ms", "with_causal_temp_mib",
          "without_causal_temp_mib", "time_ratio", "temp_ratio")
  return {c: {k: statistics.median(r[k] for r in rs) for k in keys}
          for c, rs in results.items()}


def main(_):
  if _CHECKOUTS.value:
    result = _compare(_CHECKOUTS.value)
    for c, r in result.items():
      print(f"{c}: A3 step with a causal stage {r['with_causal_ms']} ms / "
            f"{r['with_causal_temp_mib']} MiB temp, without {r['without_causal_ms']} ms / "
            f"{r['without_causal_temp_mib']} MiB")
  else:
    result = _measure()
  print(json.dumps(result))


if __name__ == "__main__":
  app.run(main)
