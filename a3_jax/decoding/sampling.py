"""Token samplers (greedy, temperature, top-k, top-p) and per-position keys.

A sample's randomness is a function of (seed, row id, step, position) only,
through `fold_in`: never of a row's place in the batch, the batch size, the
mesh, or how many other positions are sampled in the same call. So a row gives
the same sample alone or in a batch, and the cached and recomputing decoders
draw the same tokens from the same logits.
"""

from __future__ import annotations

import math

import dataclasses

import jax
import jax.numpy as jnp
from a3_jax.errors import UserError

# Independent random streams drawn from one position key.
SAMPLE_STREAM = 0
SCORE_STREAM = 1


@dataclasses.dataclass(frozen=True)
class SamplerConfig:
  """temperature 0 = greedy; top_k 0 = off; top_p 1.0 = off."""

  temperature: float = 1.0
  top_k: int = 0
  top_p: float = 1.0

  def __post_init__(self):
    # Field names are a3-generate's flag names; NaN fails every comparison below.
    if not (math.isfinite(self.temperature) and self.temperature >= 0):
      raise UserError(f"--temperature must be a finite number >= 0 (0 = greedy), "
                      f"got {self.temperature}")
    if self.top_k < 0:
      raise UserError(f"--top_k must be >= 0 (0 = off), got {self.top_k}")
    if not 0.0 < self.top_p <= 1.0:
      raise UserError(f"--top_p must be in (0, 1] (1 = off), got {self.top_p}")


def position_keys(seed, row_ids_B, step, pos_BxQ, stream: int):
  """Typed PRNG keys [B, Q], one per (seed, row id, step, position, stream)."""
  base = jax.random.key(seed)

  def one(row, pos):
    key = jax.random.fold_in(jax.random.fold_in(base, row), step)
    return jax.random.fold_in(jax.random.fold_in(key, pos), stream)

  return jax.vmap(jax.vmap(one, in_axes=(None, 0)))(row_ids_B, pos_BxQ)


def filter_logits(logits_BxQxV, temperature, top_k, top_p):
  """Temperature-scaled logits with tokens outside top-k / top-p set to -inf.

  temperature > 0, top_k (0 = off), top_p (1 = off): scalars, may be traced.
  """
  x = logits_BxQxV.astype(jnp.float32) / temperature

  def truncate(x):
    # One descending sort serves both cut-offs; ties with the last kept token stay.
    v = x.shape[-1]
    in_top_k = jnp.arange(v) < jnp.where(top_k > 0, top_k, v)
    sorted_x = jnp.where(in_top_k, -jnp.sort(-x, axis=-1), -jnp.inf)
    probs = jax.nn.softmax(sorted_x, axis=-1)  # top-p acts on the top-k distribution
    keep = in_top_k & (jnp.cumsum(probs, axis=-1) - probs < top_p)
    cutoff = jnp.min(jnp.where(keep, sorted_x, jnp.inf), axis=-1, keepdims=True)
    return jnp.where(x < cutoff, -jnp.inf, x)

  return jax.lax.cond((top_k > 0) | (top_p < 1.0), truncate, lambda x: x, x)


def _first_above(cum_NxM, mass_NxM, target_N):
  """First index whose cumulative mass exceeds target (it has mass > 0); if
  rounding left none, the last index with mass."""
  m = cum_NxM.shape[-1]
  first_N = jnp.sum(cum_NxM <= target_N[:, None], axis=-1)
  last_N = m - 1 - jnp.argmax((mass_NxM > 0)[:, ::-1], axis=-1)
  return jnp.where(first_N < m, first_N, last_N)


def inverse_cdf(x_NxV, u_N, block: int = 128):
  """Token of each row of logits x with CDF position u in [0, 1): exact categorical
  sampling from one uniform per row. Two-level (blocks of `block` tokens), so
  the cost is O(V) without a V-long prefix sum or V random numbers (a Gumbel
  draw over V costs ~40x more on CPU)."""
  n, v = x_NxV.shape
  p_NxV = jnp.exp(x_NxV - jnp.max(x_NxV, axis=-1, keepdims=True))
  p_NxBxK = jnp.pad(p_NxV, ((0, 0), (0, -v % block))).reshape(n, -1, block)
  mass_NxB = jnp.sum(p_NxBxK, axis=-1)
  cum_NxB = jnp.cumsum(mass_NxB, axis=-1)
  target_N = u_N * cum_NxB[:, -1]
  blk_N = _first_above(cum_NxB, mass_NxB, target_N)
  inner_NxK = jnp.take_along_axis(p_NxBxK, blk_N[:, None, None], axis=1)[:, 0]
  before_N = jnp.take_along_axis(cum_NxB - mass_NxB, blk_N[:, None], axis=1)[:, 0]
  i_N = _first_above(jnp.cumsum(inner_NxK, axis=-1), inner_NxK, target_N - before_N)
  return blk_N * block + i_N


def sample(logits_BxQxV, keys_BxQ, sampler):
  """One token per row of logits, int32 [B, Q].

  sampler: a SamplerConfig or `sampler_arrays(...)` (traced: one compile for all
  settings). temperature 0 is greedy.
  """
  temperature, top_k, top_p = sampler_arrays(sampler)
  b, q, v = logits_BxQxV.shape

  def draw(logits):
    x = filter_logits(logits, jnp.maximum(temperature, 1e-6), top_k, top_p)
    u = jax.vmap(jax.vmap(jax.random.uniform))(keys_BxQ)
    return inverse_cdf(x.reshape(b * q, v), u.reshape(b * q)).reshape(b, q)

  greedy = lambda logits: jnp.argmax(logits, axis=-1)
  return jax.lax.cond(temperature > 0, draw, greedy, logits_BxQxV).astype(jnp.int32)


def sampler_arrays(sampler):
  """(temperature f32, top_k i32, top_p f32) scalars of a SamplerConfig."""
  if isinstance(sampler, SamplerConfig):
    return (jnp.float32(sampler.temperature), jnp.int32(sampler.top_k),
            jnp.float32(sampler.top_p))
  return sampler
