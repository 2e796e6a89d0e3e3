"""Decoding speed: cached group decoding vs the authors' recompute form vs AR.

Random weights of a preset (default `small`), sequences of --length positions
whose first --prompt are known; every other position is generated left to
right in groups of k. Reports generated tokens/s (median of --repeats timed
runs after one untimed compile-and-run) for cached group decoding at each k,
for the recompute form at k = --recompute_group_size, and for plain AR decoding
with the cache (k = 1). The recompute form costs the same for every step (a
full re-run over all positions), so it is timed on the first
--recompute_new_tokens blanks of the same layout, the rest held as padding.

Last line: one JSON object with every figure, per batch size the ratios
"b{B}_cached_vs_recompute_k4" and "b{B}_group4_vs_ar", and the headline
"cached_vs_recompute_k4" and "group4_vs_ar": the smaller over the batch sizes.

  python benchmarks/decode_speed.py [--quick]
"""

from __future__ import annotations

import json
import os
import statistics
import time

import jax
import numpy as np
from absl import app, flags
from flax.linen import meta

from a3_jax.decoding import group as decode
from a3_jax.config import get_preset
from a3_jax.model import init_params

FLAGS = flags.FLAGS
flags.DEFINE_string("preset", "small", "model preset (random weights)")
flags.DEFINE_integer("length", 512, "positions per sequence (T)")
flags.DEFINE_integer("prompt", 64, "known prompt positions")
flags.DEFINE_list("batch_sizes", ["1", "8"], "batch sizes")
flags.DEFINE_list("group_sizes", ["1", "2", "4", "8"], "group sizes k of cached decoding")
flags.DEFINE_integer("recompute_group_size", 4, "k of the recompute form")
flags.DEFINE_integer("recompute_new_tokens", 64, "blanks timed for the recompute form")
flags.DEFINE_integer("repeats", 3, "timed runs per figure (median reported)")
flags.DEFINE_bool("quick", False, "2 timed runs and 32 recompute tokens")
flags.DEFINE_string("compile_cache", os.path.join(os.path.dirname(__file__), "..", ".jax_cache"),
                    "persistent XLA compilation cache (compile time is not measured)")


def _tokens_per_s(params, cfg, tokens, groups, form, repeats):
  k = decode.largest_group(groups)

  def once(groups):
    start = time.perf_counter()
    jax.block_until_ready(decode.decode_groups(params, cfg, tokens, groups, form=form,
                                               max_group_size=k))
    return time.perf_counter() - start

  once(np.where(groups > 1, -1, groups))  # compiles the same program; decodes one group
  seconds = statistics.median(once(groups) for _ in range(repeats))
  return int((groups > 0).sum()) / seconds


def main(argv):
  del argv
  jax.config.update("jax_compilation_cache_dir", FLAGS.compile_cache)
  repeats = 2 if FLAGS.quick else FLAGS.repeats
  recompute_tokens = 32 if FLAGS.quick else FLAGS.recompute_new_tokens
  cfg = get_preset(FLAGS.preset)
  if FLAGS.prompt >= FLAGS.length:
    raise ValueError(f"--prompt ({FLAGS.prompt}) must be shorter than --length ({FLAGS.length})")
  params = meta.unbox(init_params(cfg, jax.random.key(0)))
  results = {"preset": FLAGS.preset, "length": FLAGS.length, "prompt": FLAGS.prompt,
             "device": jax.devices()[0].device_kind, "repeats": repeats,
             "recompute_new_tokens": recompute_tokens}
  for b in [int(x) for x in FLAGS.batch_sizes]:
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, cfg.vocab_size, (b, FLAGS.length)).astype(np.int32)
    known = np.zeros((b, FLAGS.length), bool)
    known[:, :FLAGS.prompt] = True
    for k in [int(x) for x in FLAGS.group_sizes]:
      groups = decode.schedule(known, order="l2r", group_size=k)
      rate = _tokens_per_s(params, cfg, tokens, groups, "cached", repeats)
      results[f"b{b}_cached_k{k}"] = round(rate, 1)
      print(f"batch {b}  cached     k={k}: {rate:9.1f} tokens/s", flush=True)
    k = FLAGS.recompute_group_size
    groups = decode.schedule(known, order="l2r", group_size=k)
    groups[:, FLAGS.prompt + recompute_tokens:] = -1
    rate = _tokens_per_s(params, cfg, tokens, groups, "recompute", repeats)
    results[f"b{b}_recompute_k{k}"] = round(rate, 1)
    print(f"batch {b}  recompute  k={k}: {rate:9.1f} tokens/s", flush=True)
  # Headline ratios: the smaller over the batch sizes.
  k = FLAGS.recompute_group_size
  for b in [int(x) for x in FLAGS.batch_sizes]:
    if f"b{b}_cached_k{k}" in results:
      results[f"b{b}_cached_vs_recompute_k{k}"] = round(
          results[f"b{b}_cached_k{k}"] / results[f"b{b}_recompute_k{k}"], 2)
    if f"b{b}_cached_k4" in results and f"b{b}_cached_k1" in results:
      results[f"b{b}_group4_vs_ar"] = round(
          results[f"b{b}_cached_k4"] / results[f"b{b}_cached_k1"], 2)
  for name in (f"cached_vs_recompute_k{k}", "group4_vs_ar"):
    values = [v for key, v in results.items() if key.endswith("_" + name)]
    if values:
      results[name] = min(values)
  print(json.dumps(results))


if __name__ == "__main__":
  app.run(main)
