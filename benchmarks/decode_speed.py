"""Decoding speed: cached group decoding vs the authors' recompute form vs AR vs a
plain-JAX KV-cache floor; dynamic resampling cached vs its recompute form.

Random weights of a preset (default `small`), sequences of --length positions
whose first --prompt are known; every other position is generated left to
right in groups of k. Reports generated tokens/s (median of --repeats timed
runs after one untimed compile-and-run) for cached group decoding at each k,
for the recompute form at k = --recompute_group_size, and for plain AR decoding
with the cache (k = 1). The recompute form costs the same for every step (a
full re-run over all positions), so it is timed on the first
--recompute_new_tokens blanks of the same layout, the rest held as padding.

Dynamic resampling (confidence, 4 commits a step) is timed cached over every
blank and in its recompute form over the first --recompute_new_tokens blanks,
once with every blank a candidate and once semi-autoregressively (candidates
from the leftmost unfinished block of --dynamic_block_size blanks). With every
blank a candidate, a cached step still runs a query row per remaining blank
(~(T - prompt) / 2 on average) against the recompute form's T content rows plus
the same query rows, so its FLOP advantage is at most ~(T + Q) / Q (~2.8x at
T=512, prompt 64): only smaller candidate sets (blocks) can give ~10x.
The floor is a minimal decoding loop written here (jax only): per step, 2k rows
(k content rows of the last commits + k query rows, as a cached A3 step) through
the same layers against a preallocated cache written with dynamic_update_slice,
per-layer weights unstacked once outside the loop.

Last line: one JSON object with every figure, per batch size the ratios
"b{B}_cached_vs_recompute_k4", "b{B}_group4_vs_ar", "b{B}_group4_vs_floor" (a3
group-4 step time over the floor's; target <= 1.2) and
"b{B}_dynamic4_cached_vs_recompute", "b{B}_dynamic4_block{N}_cached_vs_recompute",
and the headlines without "b{B}_": the
smaller over the batch sizes (the larger for group4_vs_floor).

  python benchmarks/decode_speed.py [--quick]
"""

from __future__ import annotations

import json
import os
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags
from flax.linen import meta

from a3_jax import cpu_tuning
from a3_jax.decoding import dynamic, group as decode
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
flags.DEFINE_integer("dynamic_block_size", 32, "semi-AR block of the second dynamic timing")
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

  first = np.where(groups > 1, -1, groups)  # the same program, decoding one group
  once(first)
  seconds = statistics.median(once(groups) for _ in range(repeats))
  _tokens_per_s.ms_per_step = 1e3 * max(
      seconds - statistics.median(once(first) for _ in range(repeats)), 0.0) / max(
          int(groups.max()) - 1, 1)  # a step, without the prefill and the call's overhead
  return int((groups > 0).sum()) / seconds


def _dynamic_tokens_per_s(params, cfg, tokens, known, valid, form, repeats, block_size=0):
  def once(valid):
    start = time.perf_counter()
    jax.block_until_ready(dynamic.decode_dynamic(
        params, cfg, tokens, known, valid_BxT=valid, criterion="confidence",
        commit_per_step=4, block_size=block_size, form=form).tokens)
    return time.perf_counter() - start

  once(valid)  # compile
  seconds = statistics.median(once(valid) for _ in range(repeats))
  return int((valid & ~known).sum()) / seconds


def _floor_ms_per_step(cfg, batch, length, prompt, rows, repeats):
  """Median ms per step of the plain-JAX KV-cache loop with `rows` rows a step."""
  d, n, k, h, f = cfg.d_model, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim, cfg.mlp_dim
  keys = iter(jax.random.split(jax.random.key(0), 8 * cfg.num_layers + 2))
  w = lambda *shape: 0.02 * jax.random.normal(next(keys), shape, jnp.float32)
  layers = [dict(n1=jnp.ones(d), wq=w(d, n * h), wk=w(d, k * h), wv=w(d, k * h),
                 wo=w(n * h, d), n2=jnp.ones(d), gate=w(d, f), up=w(d, f), down=w(f, d))
            for _ in range(cfg.num_layers)]
  embed, norm = w(cfg.vocab_size, d), jnp.ones(d)
  inv = 1.0 / cfg.rope_theta ** (jnp.arange(0, h, 2) / h)
  rms = lambda x, s: x * jax.lax.rsqrt(jnp.mean(x * x, -1, keepdims=True) + cfg.rms_eps) * s
  steps = (length - prompt) // (rows // 2)

  def rope(x, pos):
    ang = pos[..., None] * inv
    ang = jnp.concatenate([ang, ang], -1)[:, :, None, :]
    half = h // 2
    return x * jnp.cos(ang) + jnp.concatenate([-x[..., half:], x[..., :half]], -1) * jnp.sin(ang)

  @jax.jit
  def run(layers, embed, norm, tok0):
    def step(i, carry):
      ck, cv, tok = carry
      fill = prompt + i * rows
      pos = fill + jnp.broadcast_to(jnp.arange(rows), (batch, rows))
      x = embed[tok]
      for l, lp in enumerate(layers):
        xn = rms(x, lp["n1"])
        q = rope((xn @ lp["wq"]).reshape(batch, rows, k, n // k, h), pos[..., None])
        kk = rope((xn @ lp["wk"]).reshape(batch, rows, k, h), pos)
        vv = (xn @ lp["wv"]).reshape(batch, rows, k, h)
        ck = jax.lax.dynamic_update_slice(ck, kk[None], (l, 0, fill, 0, 0))
        cv = jax.lax.dynamic_update_slice(cv, vv[None], (l, 0, fill, 0, 0))
        sc = jnp.einsum("brkgh,bskh->bkgrs", q, ck[l]) * h ** -0.5
        mask = jnp.arange(ck.shape[2]) < fill + rows
        pr = jax.nn.softmax(jnp.where(mask, sc, -1e30), -1)
        x = x + jnp.einsum("bkgrs,bskh->brkgh", pr, cv[l]).reshape(batch, rows, n * h) @ lp["wo"]
        xn = rms(x, lp["n2"])
        x = x + (jax.nn.silu(xn @ lp["gate"]) * (xn @ lp["up"])) @ lp["down"]
      nxt = jnp.argmax(rms(x, norm) @ embed.T, -1).astype(jnp.int32)
      return ck, cv, nxt

    cache = jnp.zeros((cfg.num_layers, batch, length + rows, k, h), jnp.float32)
    return jax.lax.fori_loop(0, steps, step, (cache, cache, tok0))[2]

  tok0 = jnp.zeros((batch, rows), jnp.int32)

  def once():
    start = time.perf_counter()
    jax.block_until_ready(run(layers, embed, norm, tok0))
    return time.perf_counter() - start

  once()
  return 1e3 * statistics.median(once() for _ in range(repeats)) / steps


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
      results[f"b{b}_cached_k{k}_ms_per_step"] = round(_tokens_per_s.ms_per_step, 3)
      print(f"batch {b}  cached     k={k}: {rate:9.1f} tokens/s", flush=True)
    k = FLAGS.recompute_group_size
    groups = decode.schedule(known, order="l2r", group_size=k)
    groups[:, FLAGS.prompt + recompute_tokens:] = -1
    rate = _tokens_per_s(params, cfg, tokens, groups, "recompute", repeats)
    results[f"b{b}_recompute_k{k}"] = round(rate, 1)
    print(f"batch {b}  recompute  k={k}: {rate:9.1f} tokens/s", flush=True)
    if f"b{b}_cached_k4" in results:  # a3 ms per step of group-4 vs the floor's
      a3_ms = results[f"b{b}_cached_k4_ms_per_step"]
      floor_ms = _floor_ms_per_step(cfg, b, FLAGS.length, FLAGS.prompt, 8, repeats)
      results[f"b{b}_floor_ms_per_step"] = round(floor_ms, 3)
      results[f"b{b}_group4_vs_floor"] = round(a3_ms / floor_ms, 3)
      print(f"batch {b}  group-4 {a3_ms:.3f} ms/step, plain-JAX floor {floor_ms:.3f} ms/step",
            flush=True)
    valid = np.ones_like(known)
    for block in (0, FLAGS.dynamic_block_size):
      name = f"b{b}_dynamic4" + (f"_block{block}" if block else "")
      for form, blanks in (("cached", FLAGS.length),
                           ("recompute", FLAGS.prompt + recompute_tokens)):
        valid_f = valid.copy()
        valid_f[:, blanks:] = False
        rate = _dynamic_tokens_per_s(params, cfg, tokens, known, valid_f, form, repeats, block)
        results[f"{name}_{form}"] = round(rate, 1)
        print(f"batch {b}  {name[len(f'b{b}_'):]}  {form}: {rate:9.1f} tokens/s", flush=True)
      results[f"{name}_cached_vs_recompute"] = round(
          results[f"{name}_cached"] / results[f"{name}_recompute"], 2)
  # Headline ratios: the smaller over the batch sizes.
  k = FLAGS.recompute_group_size
  for b in [int(x) for x in FLAGS.batch_sizes]:
    if f"b{b}_cached_k{k}" in results:
      results[f"b{b}_cached_vs_recompute_k{k}"] = round(
          results[f"b{b}_cached_k{k}"] / results[f"b{b}_recompute_k{k}"], 2)
    if f"b{b}_cached_k4" in results and f"b{b}_cached_k1" in results:
      results[f"b{b}_group4_vs_ar"] = round(
          results[f"b{b}_cached_k4"] / results[f"b{b}_cached_k1"], 2)
  block = f"dynamic4_block{FLAGS.dynamic_block_size}_cached_vs_recompute"
  for name in (f"cached_vs_recompute_k{k}", "group4_vs_ar", "dynamic4_cached_vs_recompute",
               block, "group4_vs_floor"):
    values = [v for key, v in results.items()
              if key.startswith("b") and key.split("_", 1)[1] == name]
    if values:
      results[name] = (max if name == "group4_vs_floor" else min)(values)
  print(json.dumps(results))


if __name__ == "__main__":
  cpu_tuning.apply()  # the XLA flags a3-generate runs with
  app.run(main)
