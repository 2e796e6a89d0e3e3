"""Compiled peak memory of one two-stream train step vs sequence length.

For each attention implementation and T, compiles (never runs) the gradient of
a loss over the `small` preset with batch 1, and reads XLA's memory analysis:
  temp   scratch buffers live during the step (activations, attention tiles),
  total  temp + arguments + outputs - aliased (the step's peak footprint).
The growth exponent is the least-squares slope of log(total) over log(T) on the
largest sizes. Loss: mean query-stream log-softmax at the targets; groups: a
random permutation cut into groups of 4 (drawn inside the step, as in training).

  python benchmarks/attention_memory.py [--lengths 512,1024,...] [--fit_points 3]

Last line: one JSON object with "chunked_exponent" and "einsum_exponent".
"""

from __future__ import annotations

import argparse
import json
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from a3_jax.config import get_preset
from a3_jax.model import A3LM, init_params


def perm_groups(key, t: int, k: int):
  """[1, T] group ids: position i is generated in group rank(i) // k."""
  order_T = jax.random.permutation(key, t)
  return (jnp.argsort(order_T) // k)[None, :].astype(jnp.int32)


def train_step_memory(config, t: int) -> dict:
  """Memory analysis (bytes) of value_and_grad of the loss at length t."""
  model = A3LM(config)
  params = nn.meta.unbox(jax.eval_shape(lambda: init_params(config, jax.random.key(0))))

  def loss_fn(params, tokens_BxT, key):
    logits = model.apply(params, tokens_BxT, perm_groups(key, t, 4))["query"]
    logp_BxTxV = jax.nn.log_softmax(logits, axis=-1)
    return -jnp.mean(jnp.take_along_axis(logp_BxTxV, tokens_BxT[..., None], axis=-1))

  step = jax.jit(jax.value_and_grad(loss_fn))
  tokens = jax.ShapeDtypeStruct((1, t), jnp.int32)
  key = jax.eval_shape(lambda: jax.random.key(0))
  mem = step.lower(params, tokens, key).compile().memory_analysis()
  total = (mem.temp_size_in_bytes + mem.argument_size_in_bytes
           + mem.output_size_in_bytes - mem.alias_size_in_bytes)
  return {"temp": mem.temp_size_in_bytes, "total": total}


def growth_exponent(lengths, sizes, points: int) -> float:
  """Slope of log(size) vs log(T) over the `points` largest lengths."""
  x, y = np.log(lengths[-points:]), np.log(sizes[-points:])
  return float(np.polyfit(x, y, 1)[0])


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--preset", default="small")
  parser.add_argument("--lengths", default="512,1024,2048,4096,8192")
  parser.add_argument("--chunk", type=int, default=512)
  parser.add_argument("--fit_points", type=int, default=3)
  args = parser.parse_args()
  lengths = [int(x) for x in args.lengths.split(",")]
  if len(lengths) < 2 or not 2 <= args.fit_points <= len(lengths):
    raise ValueError("need at least 2 lengths and 2 <= --fit_points <= len(lengths)")

  base = get_preset(args.preset).replace(max_seq_len=max(lengths),
                                         attention_chunk=args.chunk)
  result = {}
  print(f"{'impl':8s} {'T':>6s} {'temp MiB':>10s} {'total MiB':>10s} {'compile s':>9s}")
  for impl in ("einsum", "chunked"):
    totals = []
    for t in lengths:
      start = time.perf_counter()
      mem = train_step_memory(base.replace(attention=impl), t)
      totals.append(mem["total"])
      print(f"{impl:8s} {t:6d} {mem['temp'] / 2**20:10.1f} {mem['total'] / 2**20:10.1f} "
            f"{time.perf_counter() - start:9.1f}", flush=True)
    result[f"{impl}_exponent"] = round(growth_exponent(lengths, totals, args.fit_points), 3)
    result[f"{impl}_total_mib"] = {t: round(b / 2**20, 1) for t, b in zip(lengths, totals)}
  result.update(preset=args.preset, batch=1, chunk=args.chunk, fit_points=args.fit_points,
                backend=jax.default_backend())
  print(json.dumps(result))


if __name__ == "__main__":
  main()
