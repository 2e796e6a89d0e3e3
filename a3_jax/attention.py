"""Grouped two-stream attention: the visibility rule and its implementations.

Every attention call in a3_jax is described by per-row and per-key integers
instead of a dense mask, so that memory-efficient paths can build masks tile by
tile:

  query row r sees key s  iff  key_group[s] <= row_limit[r]
                               and key_seg[s] == row_seg[r] and key_seg[s] != 0

A content-stream row of group g has row_limit = g (it sees its own group); a
query-stream row has row_limit = g - 1 (strictly earlier groups; ids are ints).
Segment 0 marks padding (or an empty cache slot): never visible.
A row that sees no key gets a zero output (never NaN, never the mean of V).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

# Kept finite so that fully masked rows give exp(0) * 0 = 0, not NaN.
_MASKED = -1e30


def visibility(row_limit_BxR, row_seg_BxR, key_group_BxS, key_seg_BxS):
  """Boolean [B, R, S] mask of the rule in the module docstring."""
  group_ok = key_group_BxS[:, None, :] <= row_limit_BxR[:, :, None]
  seg_ok = (key_seg_BxS[:, None, :] == row_seg_BxR[:, :, None]) & (
      key_seg_BxS[:, None, :] != 0)
  return group_ok & seg_ok


def einsum_attention(q_BxRxNxH, k_BxSxKxH, v_BxSxKxH, row_limit_BxR, row_seg_BxR,
                     key_group_BxS, key_seg_BxS):
  """Reference masked attention with GQA (no K/V copy per query head group).

  Returns [B, R, N, H]. Softmax statistics are accumulated in fp32.
  """
  b, r, n, h = q_BxRxNxH.shape
  kv = k_BxSxKxH.shape[2]
  q_BxRxKxGxH = q_BxRxNxH.reshape(b, r, kv, n // kv, h)
  scores_BxKxGxRxS = jnp.einsum(
      "BRKGH,BSKH->BKGRS", q_BxRxKxGxH, k_BxSxKxH,
      preferred_element_type=jnp.float32) * (h ** -0.5)
  mask_BxRxS = visibility(row_limit_BxR, row_seg_BxR, key_group_BxS, key_seg_BxS)
  mask = mask_BxRxS[:, None, None, :, :]
  scores_BxKxGxRxS = jnp.where(mask, scores_BxKxGxRxS, _MASKED)
  row_max = jnp.max(scores_BxKxGxRxS, axis=-1, keepdims=True)
  p = jnp.exp(scores_BxKxGxRxS - jax.lax.stop_gradient(row_max)) * mask
  denom_BxKxGxRx1 = jnp.sum(p, axis=-1, keepdims=True)
  # Normalise after the value product: one pass over [R, H] instead of [R, S].
  out_BxKxGxRxH = jnp.einsum("BKGRS,BSKH->BKGRH", p.astype(v_BxSxKxH.dtype), v_BxSxKxH)
  out_BxKxGxRxH = out_BxKxGxRxH / jnp.where(denom_BxKxGxRx1 == 0, 1.0, denom_BxKxGxRx1
                                           ).astype(out_BxKxGxRxH.dtype)
  return out_BxKxGxRxH.transpose(0, 3, 1, 2, 4).reshape(b, r, n, h)


def attend(impl: str, q_BxRxNxH, k_BxSxKxH, v_BxSxKxH, row_limit_BxR, row_seg_BxR,
           key_group_BxS, key_seg_BxS, *, chunk: int = 512):
  """Dispatches to one attention implementation; all share the rule above."""
  args = (q_BxRxNxH, k_BxSxKxH, v_BxSxKxH, row_limit_BxR, row_seg_BxR,
          key_group_BxS, key_seg_BxS)
  if impl == "einsum":
    return einsum_attention(*args)
  if impl == "chunked":
    from a3_jax import attention_chunked  # here: it imports `visibility` from this module
    return attention_chunked.chunked_attention(*args, chunk=chunk)
  raise ValueError(f"unknown attention implementation {impl!r}")
