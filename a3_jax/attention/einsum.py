"""Reference masked attention: dense scores [B, R, S] built from the visibility rule."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from a3_jax.attention.rule import MASKED, visibility


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
  scores_BxKxGxRxS = jnp.where(mask, scores_BxKxGxRxS, MASKED)
  row_max = jnp.max(scores_BxKxGxRxS, axis=-1, keepdims=True)
  p = jnp.exp(scores_BxKxGxRxS - jax.lax.stop_gradient(row_max)) * mask
  denom_BxKxGxRx1 = jnp.sum(p, axis=-1, keepdims=True)
  # Normalise after the value product: one pass over [R, H] instead of [R, S].
  out_BxKxGxRxH = jnp.einsum("BKGRS,BSKH->BKGRH", p.astype(v_BxSxKxH.dtype), v_BxSxKxH)
  out_BxKxGxRxH = out_BxKxGxRxH / jnp.where(denom_BxKxGxRx1 == 0, 1.0, denom_BxKxGxRx1
                                           ).astype(out_BxKxGxRxH.dtype)
  return out_BxKxGxRxH.transpose(0, 3, 1, 2, 4).reshape(b, r, n, h)
