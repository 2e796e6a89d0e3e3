"""Train steps side by side: a3_jax two-stream, a3_jax causal, and a plain-JAX floor.

The floor is a minimal two-stream step of the same shape written here with no
a3_jax code (jax + optax only): embeddings, RMSNorm, RoPE, GQA attention under a
group mask, SwiGLU, the LM head on the query stream, AdamW. Like a3_jax it skips
the content rows of the last layer (they feed nothing). The three steps are timed
alternately so that machine noise hits them alike. Last line: one JSON object,
`floor_ratio` = a3_jax two-stream tokens/s over the floor's.

  python benchmarks/step_ratio.py [--preset=small] [--batch=8] [--seq_len=256] [--iters=10]
      [--model=NAME=VALUE ...] [--noxla_tuning] [--scan_layers]
"""

from __future__ import annotations

import os
import sys

from a3_jax import cpu_tuning

if "--noxla_tuning" not in sys.argv:  # before JAX starts: the tuning a3-train applies
  cpu_tuning.apply()

import json
import statistics
import time

import jax
import jax.numpy as jnp
import optax
from absl import app, flags
from batches import one_document_rows

from a3_jax import sharding as shd
from a3_jax.config import get_preset
from a3_jax.grouping import parse_curriculum
from a3_jax.train.config import TrainConfig
from a3_jax.train.state import init_state, state_shardings
from a3_jax.train.step import make_train_step

_PRESET = flags.DEFINE_string("preset", "small", "model preset")
_MODEL = flags.DEFINE_multi_string("model", [], "preset override NAME=INT|true|false, e.g. "
                                    "vocab_size=8192")
_BATCH = flags.DEFINE_integer("batch", 8, "rows per step")
_SEQ = flags.DEFINE_integer("seq_len", 256, "tokens per row")
_ITERS = flags.DEFINE_integer("iters", 10, "timed steps per system")
_SCAN = flags.DEFINE_bool("scan_layers", False, "a3_jax with scanned layers (default unrolled, "
                          "as a3-train on CPU)")
flags.DEFINE_bool("xla_tuning", True, "append a3_jax.cpu_tuning.CPU_XLA_FLAGS (CPU only)")


def _setup(cfg, objective, batch, mesh):
  tc = TrainConfig(objective=objective, total_steps=1000)
  shardings = state_shardings(cfg, tc, mesh)
  state = init_state(cfg, tc, jax.random.key(0), mesh)
  step = make_train_step(cfg, tc, parse_curriculum("perm:4:1000"), mesh, shardings)
  with shd.axis_rules():
    compiled = step.jitted.lower(state, batch, jax.random.key(1)).compile()
  flops = compiled.cost_analysis()["flops"]
  return state, lambda s: step(s, batch, jax.random.key(1)), flops


# ---- the plain-JAX floor -------------------------------------------------------------

def _floor_params(cfg, key):
  d, n, k, h, f, v = (cfg.d_model, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim,
                      cfg.mlp_dim, cfg.vocab_size)
  keys = iter(jax.random.split(key, 8 * cfg.num_layers + 3))
  w = lambda *shape: 0.02 * jax.random.normal(next(keys), shape, jnp.float32)
  layers = [dict(n1=jnp.ones(d), wq=w(d, n * h), wk=w(d, k * h), wv=w(d, k * h),
                 wo=w(n * h, d), n2=jnp.ones(d), gate=w(d, f), up=w(d, f), down=w(f, d))
            for _ in range(cfg.num_layers)]
  p = dict(embed=w(v, d), query=w(d), layers=layers, norm=jnp.ones(d))
  if not cfg.tie_embeddings:
    p["head"] = w(d, v)
  return p


def _rms(x, scale, eps):
  return x * jax.lax.rsqrt(jnp.mean(x * x, -1, keepdims=True) + eps) * scale


def _rope(x, cos, sin):
  half = x.shape[-1] // 2
  return x * cos + jnp.concatenate([-x[..., half:], x[..., :half]], -1) * sin


def _floor_loss(cfg, p, tokens, groups):
  b, t = tokens.shape
  n, k, h = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
  x = jnp.concatenate([p["embed"][tokens], jnp.broadcast_to(p["query"], (b, t, cfg.d_model))], 1)
  limit = jnp.concatenate([groups, groups - 1], 1)
  inv = 1.0 / cfg.rope_theta ** (jnp.arange(0, h, 2) / h)
  ang = jnp.arange(t)[:, None] * inv
  ang = jnp.concatenate([ang, ang], -1)[None, :, None, :]
  cos, sin = jnp.cos(ang), jnp.sin(ang)
  cos2, sin2 = jnp.concatenate([cos, cos], 1), jnp.concatenate([sin, sin], 1)
  for i, lp in enumerate(p["layers"]):
    xn = _rms(x, lp["n1"], cfg.rms_eps)
    kk = _rope((xn[:, :t] @ lp["wk"]).reshape(b, t, k, h), cos, sin)
    vv = (xn[:, :t] @ lp["wv"]).reshape(b, t, k, h)
    if i == cfg.num_layers - 1:  # the last layer's content rows feed nothing
      x, xn, lim, c, s = x[:, t:], xn[:, t:], limit[:, t:], cos, sin
    else:
      lim, c, s = limit, cos2, sin2
    r = x.shape[1]
    q = _rope((xn @ lp["wq"]).reshape(b, r, k, n // k, h), c[:, :, :, None], s[:, :, :, None])
    mask = (groups[:, None, :] <= lim[:, :, None])[:, None, None]
    sc = jnp.einsum("brkgh,bskh->bkgrs", q, kk) * h ** -0.5
    pr = jax.nn.softmax(jnp.where(mask, sc, -1e30), -1) * mask
    o = jnp.einsum("bkgrs,bskh->brkgh", pr, vv).reshape(b, r, n * h)
    x = x + o @ lp["wo"]
    xn = _rms(x, lp["n2"], cfg.rms_eps)
    x = x + (jax.nn.silu(xn @ lp["gate"]) * (xn @ lp["up"])) @ lp["down"]
  head = p["embed"].T if cfg.tie_embeddings else p["head"]
  logits = _rms(x, p["norm"], cfg.rms_eps) @ head
  return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), tokens[..., None], -1))


def _floor_setup(cfg, tokens):
  tx = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(3e-4, b2=0.95, weight_decay=0.1))
  b, t = tokens.shape
  params = _floor_params(cfg, jax.random.key(0))

  def step(params, opt_state, tokens, i):
    # perm:4: each row's blocks of 4 in a random order; group = rank of the block.
    blocks = jax.random.permutation(jax.random.fold_in(jax.random.key(1), i),
                                    jnp.tile(jnp.arange(t // 4), (b, 1)), axis=1,
                                    independent=True)
    groups = jnp.repeat(jnp.argsort(blocks, axis=1), 4, axis=1).astype(jnp.int32)
    loss, grads = jax.value_and_grad(lambda p: _floor_loss(cfg, p, tokens, groups))(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  step = jax.jit(step, donate_argnums=(0, 1))
  box = {"params": params, "opt": tx.init(params), "i": 0}

  def run(_):  # tokens are an argument: as a constant, XLA spends seconds folding them
    box["params"], box["opt"], loss = step(box["params"], box["opt"], tokens, box["i"])
    box["i"] += 1
    return None, {"loss": loss}

  return None, run


# ---- timing ---------------------------------------------------------------------------

def _time_one(step, state):
  t0 = time.perf_counter()
  state, metrics = step(state)
  jax.block_until_ready(metrics["loss"])
  return state, time.perf_counter() - t0


def main(_):
  overrides = {k: (v.lower() == "true" if v.lower() in ("true", "false") else int(v))
               for k, v in (m.split("=") for m in _MODEL.value)}
  cfg = get_preset(_PRESET.value, scan_layers=_SCAN.value, **overrides)
  # XLA's cost analysis counts a while-loop body once: FLOPs from the unrolled form.
  flop_cfg = cfg.replace(scan_layers=False)
  mesh = shd.make_mesh("data:-1")
  b, t = _BATCH.value, _SEQ.value
  host = one_document_rows(cfg.vocab_size, b, t)
  with jax.set_mesh(mesh):
    batch = shd.shard_batch(host, mesh)
    runs = {name: _setup(cfg, name, batch, mesh) for name in ("a3", "ar")}
    flops = {name: (r[2] if cfg == flop_cfg else _setup(flop_cfg, name, batch, mesh)[2])
             for name, r in runs.items()}
    states = {name: r[0] for name, r in runs.items()}
    steps = {name: r[1] for name, r in runs.items()}
    states["floor"], steps["floor"] = _floor_setup(cfg, jnp.asarray(host["tokens"]))
    times = {name: [] for name in steps}
    for name in steps:  # warm-up (compile) outside the timed loop
      states[name], _ = _time_one(steps[name], states[name])
    for _ in range(_ITERS.value):
      for name in steps:
        states[name], dt = _time_one(steps[name], states[name])
        times[name].append(dt)
  ms = {name: 1e3 * statistics.median(ts) for name, ts in times.items()}
  flop_ratio = flops["a3"] / flops["ar"]
  result = {"preset": _PRESET.value, "model_overrides": overrides, "batch": b, "seq_len": t,
            "devices": len(jax.devices()), "scan_layers": cfg.scan_layers,
            "xla_flags": os.environ.get("XLA_FLAGS", ""),
            "two_stream_ms": round(ms["a3"], 2), "causal_ms": round(ms["ar"], 2),
            "floor_ms": round(ms["floor"], 2),
            "two_stream_tokens_per_s": round(b * t / ms["a3"] * 1e3, 1),
            "floor_tokens_per_s": round(b * t / ms["floor"] * 1e3, 1),
            "time_ratio": round(ms["a3"] / ms["ar"], 4), "flop_ratio": round(flop_ratio, 4),
            "floor_ratio": round(ms["floor"] / ms["a3"], 4),
            "two_stream_gflops": round(flops["a3"] / 1e9, 3),
            "causal_gflops": round(flops["ar"] / 1e9, 3)}
  print(f"two-stream {ms['a3']:.1f} ms, causal {ms['ar']:.1f} ms, plain-JAX floor "
        f"{ms['floor']:.1f} ms (medians of {_ITERS.value}); floor ratio (tokens/s) "
        f"{result['floor_ratio']}, time ratio {result['time_ratio']}, FLOP ratio "
        f"{result['flop_ratio']}")
  print(json.dumps(result))


if __name__ == "__main__":
  app.run(main)
