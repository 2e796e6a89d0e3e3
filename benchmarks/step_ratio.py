"""Two-stream vs causal train step: median time and XLA FLOPs, side by side.

Both steps use the same preset, batch and mesh; they are timed alternately so
that machine noise hits both alike. Last line: one JSON object.

  python benchmarks/step_ratio.py [--preset=small] [--batch=8] [--seq_len=256] [--iters=10]
"""

from __future__ import annotations

import json
import statistics
import time

import jax
import numpy as np
from absl import app, flags

from a3_jax import sharding as shd
from a3_jax.config import get_preset
from a3_jax.grouping import parse_curriculum
from a3_jax.train_step import TrainConfig, init_state, make_train_step, state_shardings

_PRESET = flags.DEFINE_string("preset", "small", "model preset")
_BATCH = flags.DEFINE_integer("batch", 8, "rows per step")
_SEQ = flags.DEFINE_integer("seq_len", 256, "tokens per row")
_ITERS = flags.DEFINE_integer("iters", 10, "timed steps per objective")


def _setup(cfg, objective, batch, mesh):
  tc = TrainConfig(objective=objective, total_steps=1000)
  shardings = state_shardings(cfg, tc, mesh)
  state = init_state(cfg, tc, jax.random.key(0), mesh)
  step = make_train_step(cfg, tc, parse_curriculum("perm:4:1000"), mesh, shardings)
  with shd.axis_rules():
    compiled = step.jitted.lower(state, batch, jax.random.key(1)).compile()
  flops = compiled.cost_analysis()["flops"]
  return state, step, flops


def _time_one(step, state, batch):
  t0 = time.perf_counter()
  state, metrics = step(state, batch, jax.random.key(1))
  jax.block_until_ready(metrics["loss"])
  return state, time.perf_counter() - t0


def main(_):
  # Unrolled layers: XLA's cost analysis counts a while-loop body once.
  cfg = get_preset(_PRESET.value, scan_layers=False)
  mesh = shd.make_mesh("data:-1")
  b, t = _BATCH.value, _SEQ.value
  rng = np.random.default_rng(0)
  host = {"tokens": rng.integers(0, cfg.vocab_size, (b, t)).astype(np.int32),
          "segment_ids": np.ones((b, t), np.int32),
          "positions": np.tile(np.arange(t, dtype=np.int32), (b, 1))}
  with jax.set_mesh(mesh):
    batch = shd.shard_batch(host, mesh)
    runs = {name: _setup(cfg, name, batch, mesh) for name in ("a3", "ar")}
    states = {name: r[0] for name, r in runs.items()}
    times = {name: [] for name in runs}
    for name in runs:  # warm-up (compile) outside the timed loop
      states[name], _ = _time_one(runs[name][1], states[name], batch)
    for _ in range(_ITERS.value):
      for name in runs:
        states[name], dt = _time_one(runs[name][1], states[name], batch)
        times[name].append(dt)
  two_ms = 1e3 * statistics.median(times["a3"])
  causal_ms = 1e3 * statistics.median(times["ar"])
  flop_ratio = runs["a3"][2] / runs["ar"][2]
  result = {"preset": _PRESET.value, "batch": b, "seq_len": t, "devices": len(jax.devices()),
            "two_stream_ms": round(two_ms, 2), "causal_ms": round(causal_ms, 2),
            "time_ratio": round(two_ms / causal_ms, 4), "flop_ratio": round(flop_ratio, 4),
            "two_stream_gflops": round(runs["a3"][2] / 1e9, 3),
            "causal_gflops": round(runs["ar"][2] / 1e9, 3)}
  print(f"two-stream {two_ms:.1f} ms, causal {causal_ms:.1f} ms (medians of {_ITERS.value}); "
        f"time ratio {result['time_ratio']}, FLOP ratio {result['flop_ratio']}, "
        f"target time_ratio <= {1.05 * flop_ratio:.3f}")
  print(json.dumps(result))


if __name__ == "__main__":
  app.run(main)
