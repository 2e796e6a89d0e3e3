"""Token samplers (greedy, temperature, top-k, top-p) and per-position keys.

A sample's randomness is a function of (seed, row id, step, position) only,
through `fold_in`: never of a row's place in the batch, the batch size, the
mesh, or how many other positions are sampled in the same call. So a row gives
the same sample alone or in a batch, and the cached and recomputing decoders
draw the same tokens from the same logits.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

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
    if self.temperature < 0:
      raise ValueError(f"temperature must be >= 0 (0 = greedy), got {self.temperature}")
    if self.top_k < 0:
      raise ValueError(f"top_k must be >= 0 (0 = off), got {self.top_k}")
    if not 0.0 < self.top_p <= 1.0:
      raise ValueError(f"top_p must be in (0, 1] (1 = off), got {self.top_p}")


def position_keys(seed, row_ids_B, step, pos_BxQ, stream: int):
  """Typed PRNG keys [B, Q], one per (seed, row id, step, position, stream)."""
  base = jax.random.key(seed)

  def one(row, pos):
    key = jax.random.fold_in(jax.random.fold_in(base, row), step)
    return jax.random.fold_in(jax.random.fold_in(key, pos), stream)

  return jax.vmap(jax.vmap(one, in_axes=(None, 0)))(row_ids_B, pos_BxQ)


def filter_logits(logits_BxQxV, sampler: SamplerConfig):
  """Temperature-scaled logits with tokens outside top-k / top-p set to -inf."""
  x = logits_BxQxV.astype(jnp.float32) / sampler.temperature
  if sampler.top_k:
    kth = jax.lax.top_k(x, min(sampler.top_k, x.shape[-1]))[0][..., -1:]
    x = jnp.where(x < kth, -jnp.inf, x)
  if sampler.top_p < 1.0:
    sorted_x = -jnp.sort(-x, axis=-1)
    probs = jax.nn.softmax(sorted_x, axis=-1)
    # Keep the smallest prefix whose mass reaches top_p (the top token always).
    keep = jnp.cumsum(probs, axis=-1) - probs < sampler.top_p
    cutoff = jnp.min(jnp.where(keep, sorted_x, jnp.inf), axis=-1, keepdims=True)
    x = jnp.where(x < cutoff, -jnp.inf, x)
  return x


def sample(logits_BxQxV, keys_BxQ, sampler: SamplerConfig):
  """One token per row of logits, int32 [B, Q]."""
  if sampler.temperature == 0:
    return jnp.argmax(logits_BxQxV, axis=-1).astype(jnp.int32)
  x = filter_logits(logits_BxQxV, sampler)
  draw = jax.vmap(jax.vmap(jax.random.categorical))
  return draw(keys_BxQ, x).astype(jnp.int32)
