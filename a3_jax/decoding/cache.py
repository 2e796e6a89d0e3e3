"""The decoding KV cache: committed content keys/values in commit order.

Per row, slots [0, fill) hold the RoPE'd content K/V of committed tokens (known
tokens first, then each step's commits), with the group id (commit step) of
each slot; slots at or past fill have segment 0 and are invisible. Attention is
a set operation over keys, so original positions live only in the rotation
already applied to K.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from a3_jax.config import ModelConfig


class KVCache(NamedTuple):
  """Committed content keys/values, RoPE already applied, in commit order.

  k, v: [L, B, C, K, H]; group, seg: [B, C] (seg 0 = empty slot, never visible).
  """

  k: jax.Array
  v: jax.Array
  group: jax.Array
  seg: jax.Array


def empty(config: ModelConfig, batch: int, slots: int) -> KVCache:
  """A cache of `slots` empty slots per row: k, v [L, B, C, K, H]."""
  shape = (config.num_layers, batch, slots, config.num_kv_heads, config.head_dim)
  zeros = jnp.zeros(shape, config.compute_dtype)
  return KVCache(zeros, zeros, jnp.zeros((batch, slots), jnp.int32),
                 jnp.zeros((batch, slots), jnp.int32))


def slots(cache: KVCache, fill_B, ok_BxR):
  """Where rows with ok=True go: slots [fill, fill + count) of each row, in row order;
  ok=False rows get slot C (dropped by every write). Returns (slot [B, R], new fill [B])."""
  rank_BxR = jnp.cumsum(ok_BxR, axis=1, dtype=jnp.int32) - 1
  slot_BxR = jnp.where(ok_BxR, fill_B[:, None] + rank_BxR, cache.group.shape[1])
  return slot_BxR, fill_B + jnp.sum(ok_BxR, axis=1, dtype=jnp.int32)


def mark(cache: KVCache, slot_BxR, group):
  """(group, seg) of the cache with `slot` marked as used slots of group id `group`
  (scalar, [B] or [B, R])."""
  row_BxR = jnp.broadcast_to(jnp.arange(slot_BxR.shape[0])[:, None], slot_BxR.shape)
  group = jnp.asarray(group, jnp.int32)
  group_BxR = jnp.broadcast_to(group if group.ndim == 2 else group.reshape(-1, 1), slot_BxR.shape)
  return (cache.group.at[row_BxR, slot_BxR].set(group_BxR, mode="drop"),
          cache.seg.at[row_BxR, slot_BxR].set(1, mode="drop"))


def append(cache: KVCache, fill_B, k_LxBxRxKxH, v_LxBxRxKxH, ok_BxR, group):
  """Writes the rows with ok=True at slots [fill, fill + count) of each row.

  Rows keep their order; rows with ok=False are dropped. `group` (scalar, [B] or [B, R])
  is the group id the new slots get. Returns (cache, new fill [B]).
  (A decoding step writes in place instead: `slots`, A3LM.forward(cache_slots=), `mark`.)
  """
  slot_BxR, fill = slots(cache, fill_B, ok_BxR)
  row_BxR = jnp.broadcast_to(jnp.arange(slot_BxR.shape[0])[:, None], slot_BxR.shape)
  new = KVCache(
      cache.k.at[:, row_BxR, slot_BxR].set(k_LxBxRxKxH.astype(cache.k.dtype), mode="drop"),
      cache.v.at[:, row_BxR, slot_BxR].set(v_LxBxRxKxH.astype(cache.v.dtype), mode="drop"),
      *mark(cache, slot_BxR, group))
  return new, fill
